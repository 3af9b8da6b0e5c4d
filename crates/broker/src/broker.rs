//! The state one broker node shares between its connections, and the operations that
//! span them: publishing, ending sessions, wills.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt::Publish;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::mailbox::MailboxLimits;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::registry::{Registry, Released};
use crate::retain::RetainStore;
use crate::router::{ReadCheck, Routed, Router, Subscriber, Target};
use crate::session::{PendingWill, Session};

/// Everything the connections of one broker share.
#[derive(Debug)]
pub struct Broker {
    /// Configuration in force.
    pub config: Config,
    /// The subscription index.
    pub router: Router,
    /// Retained messages.
    pub retained: RetainStore,
    /// Sessions and their owners.
    pub registry: Registry,
    /// Access control.
    pub auth: Authenticator,
    /// Counters.
    pub metrics: Metrics,
}

impl Broker {
    /// A broker with empty state.
    pub fn new(config: Config, auth: Authenticator) -> Arc<Broker> {
        Arc::new(Broker {
            config,
            router: Router::new(),
            retained: RetainStore::new(),
            registry: Registry::new(),
            auth,
            metrics: Metrics::default(),
        })
    }

    /// The bounds every session mailbox gets.
    pub fn mailbox_limits(&self) -> MailboxLimits {
        MailboxLimits {
            max_messages: self.config.limits.max_queued_messages,
            max_bytes: self.config.limits.max_queued_bytes,
            overflow: self.config.limits.queue_overflow,
        }
    }

    /// Publishes `msg`: updates the retained store if it is retained, and queues it for
    /// every matching subscription.
    pub fn publish(&self, msg: &Arc<Message>, scratch: &mut Vec<Target>) -> Routed {
        if msg.retain {
            self.retained.set(msg);
        }
        let read_check = |s: &Subscriber, topic: &str| {
            self.auth
                .can_read(&s.client_id, s.username.as_deref(), topic)
        };
        let check: Option<ReadCheck<'_>> = if self.auth.has_acl() {
            Some(&read_check)
        } else {
            None
        };
        let routed = self.router.route(msg, check, scratch);
        Metrics::add(&self.metrics.deliveries, routed.delivered as u64);
        if routed.overflowed > 0 {
            Metrics::add(
                &self.metrics.queue_overflow_dropped,
                routed.overflowed as u64,
            );
            tracing::warn!(
                topic = msg.topic(),
                dropped = routed.overflowed,
                "session queue full; message dropped per limits.queue_overflow"
            );
        }
        routed
    }

    /// Removes every subscription of a session that ends.
    pub fn end_session(&self, session: &Session) {
        for filter in session.subscriptions.keys() {
            self.router.unsubscribe(filter, &session.client_id);
        }
    }

    /// Called when a connection ends: parks or ends its session, and publishes or
    /// schedules its will (`will` is `None` when it was discarded by a normal
    /// DISCONNECT [MQTT-3.1.2-10]).
    pub fn disconnected(
        self: &Arc<Self>,
        conn_id: u64,
        session: Session,
        will: Option<PendingWill>,
    ) {
        let expiry = session.expiry_secs;
        let client_id = session.client_id.clone();
        session.mailbox.set_online(false);
        // The will waits for its delay or the end of the session, whichever comes first
        // [MQTT-3.1.3-9]; a will without delay goes now.
        let delay = will.as_ref().map(|w| {
            w.will
                .properties
                .will_delay_interval
                .unwrap_or(0)
                .min(expiry)
        });
        let (will_now, will_later) = match delay {
            Some(0) => (will, None),
            _ => (None, will),
        };
        if let Some(w) = will_now {
            self.publish_will(w);
        }
        let generation = match self.registry.release(conn_id, session, will_later) {
            Released::Stale => return,
            Released::Ended(ended) => {
                let (session, will) = *ended;
                self.end_session(&session);
                if let Some(w) = will {
                    self.publish_will(w);
                }
                return;
            }
            Released::Parked { generation } => generation,
        };
        if let Some(delay) = delay.filter(|d| *d > 0) {
            let broker = self.clone();
            let id = client_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                // A new connection for this client id took the will away.
                if let Some(w) = broker.registry.take_will(&id, generation) {
                    broker.publish_will(w);
                }
            });
        }
        if expiry != u32::MAX {
            let broker = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(expiry))).await;
                if let Some((session, will)) = broker.registry.expire(&client_id, generation) {
                    tracing::debug!(client_id = %client_id, "session expired");
                    // A will still waiting goes out when its session ends.
                    if let Some(w) = will {
                        broker.publish_will(w);
                    }
                    broker.end_session(&session);
                }
            });
        }
    }

    /// Publishes a will message, if the ACL lets its client write to the topic.
    pub fn publish_will(&self, pending: PendingWill) {
        let w = pending.will;
        if !self
            .auth
            .can_write(&pending.client_id, pending.username.as_deref(), &w.topic)
        {
            tracing::info!(client_id = %pending.client_id, topic = %w.topic, "will not published: ACL denies write");
            return;
        }
        let p = &w.properties;
        let publish = Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic,
            packet_id: None,
            properties: mqtt::PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                content_type: p.content_type.clone(),
                ..Default::default()
            },
            payload: w.payload,
        };
        let msg = Arc::new(Message::new(
            &publish,
            Some(pending.client_id),
            Instant::now(),
        ));
        self.publish(&msg, &mut Vec::new());
    }
}
