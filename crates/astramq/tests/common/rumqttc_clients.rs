//! rumqttc clients ([`V4Client`] for MQTT 3.1.1, [`V5Client`] for MQTT 5) whose event
//! loop runs in a task that forwards events to a channel.

use std::time::Duration;

use super::*;

/// rumqttc MQTT 3.1.1 client with its event loop in a task.
pub struct V4Client {
    pub client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    events: Events<rumqttc::Event>,
    pub connack: rumqttc::ConnAck,
}

impl V4Client {
    pub fn options(broker: &Broker, id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(broker: &Broker, id: &str) -> V4Client {
        Self::connect_with(Self::options(broker, id)).await
    }

    pub async fn connect_with(opts: rumqttc::MqttOptions) -> V4Client {
        let (client, el) = rumqttc::AsyncClient::new(opts, 100);
        let (task, mut events) = forward(el);
        let connack = await_connack(&mut events, "v4", |ev| match ev {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c)) => Some(c),
            _ => None,
        })
        .await;
        V4Client {
            client,
            task,
            events,
            connack,
        }
    }

    /// Next incoming packet matching `f`, within `timeout`.
    pub async fn wait_incoming<R>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&rumqttc::Packet) -> Option<R>,
    ) -> R {
        wait_event(&mut self.events, timeout, what, |ev| match ev {
            rumqttc::Event::Incoming(p) => f(&p),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_incoming(T, "SUBACK", |p| match p {
            rumqttc::Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Stop the event loop (drops the socket; no DISCONNECT is sent).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    pub async fn recv_publish(&mut self, timeout: Duration) -> rumqttc::Publish {
        self.wait_incoming(timeout, "PUBLISH", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Wait `d` and assert no PUBLISH arrived (the one legitimate sleep).
    pub async fn expect_no_publish(&mut self, d: Duration) {
        expect_no_event(&mut self.events, d, |ev| match ev {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                Some(format!("unexpected PUBLISH: {p:?}"))
            }
            _ => None,
        })
        .await
    }
}

/// rumqttc MQTT 5 client with its event loop in a task.
pub struct V5Client {
    pub client: rumqttc::v5::AsyncClient,
    task: tokio::task::JoinHandle<()>,
    events: Events<rumqttc::v5::Event>,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
}

pub use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;

impl V5Client {
    pub fn options(broker: &Broker, id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(broker: &Broker, id: &str) -> V5Client {
        Self::connect_with(Self::options(broker, id)).await
    }

    pub async fn connect_with(opts: rumqttc::v5::MqttOptions) -> V5Client {
        let (client, el) = rumqttc::v5::AsyncClient::new(opts, 100);
        let (task, mut events) = forward(el);
        let connack = await_connack(&mut events, "v5", |ev| match ev {
            rumqttc::v5::Event::Incoming(V5Packet::ConnAck(c)) => Some(c),
            _ => None,
        })
        .await;
        V5Client {
            client,
            task,
            events,
            connack,
        }
    }

    pub async fn wait_incoming<R>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&V5Packet) -> Option<R>,
    ) -> R {
        wait_event(&mut self.events, timeout, what, |ev| match ev {
            rumqttc::v5::Event::Incoming(p) => f(&p),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_incoming(T, "SUBACK", |p| match p {
            V5Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Stop the event loop (drops the socket; no DISCONNECT is sent).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    pub async fn recv_publish(&mut self, timeout: Duration) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.wait_incoming(timeout, "PUBLISH", |p| match p {
            V5Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_no_publish(&mut self, d: Duration) {
        expect_no_event(&mut self.events, d, |ev| match ev {
            rumqttc::v5::Event::Incoming(V5Packet::Publish(p)) => {
                Some(format!("unexpected PUBLISH: {p:?}"))
            }
            _ => None,
        })
        .await
    }
}

/// What a client's task forwards: every event of its rumqttc event loop, the first
/// error last.
type Events<E> = tokio::sync::mpsc::UnboundedReceiver<Result<E, String>>;

/// A rumqttc event loop, MQTT 3.1.1 or 5, as [`forward`] polls it.
trait EventLoop: Send + 'static {
    type Event: Send + 'static;
    fn next(&mut self) -> impl std::future::Future<Output = Result<Self::Event, String>> + Send;
}

impl EventLoop for rumqttc::EventLoop {
    type Event = rumqttc::Event;
    async fn next(&mut self) -> Result<Self::Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

impl EventLoop for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    async fn next(&mut self) -> Result<Self::Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

/// Runs `el` in a task that forwards its events until the first error (or until the
/// receiver is dropped).
fn forward<L: EventLoop>(mut el: L) -> (tokio::task::JoinHandle<()>, Events<L::Event>) {
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let ev = el.next().await;
            let stop = ev.is_err();
            if tx.send(ev).is_err() || stop {
                break;
            }
        }
    });
    (task, events)
}

/// The CONNACK (`connack` picks it out of the events), each event within `T`.
async fn await_connack<E, C>(
    events: &mut Events<E>,
    version: &str,
    mut connack: impl FnMut(E) -> Option<C>,
) -> C {
    loop {
        match tokio::time::timeout(T, events.recv()).await {
            Ok(Some(Ok(ev))) => {
                if let Some(c) = connack(ev) {
                    return c;
                }
            }
            Ok(Some(Err(e))) => panic!("{version} connect failed: {e}"),
            Ok(None) => panic!("{version} event loop ended before CONNACK"),
            Err(_) => panic!("no CONNACK within {T:?}"),
        }
    }
}

/// The first event `f` maps to `Some`, within `timeout`.
async fn wait_event<E, R>(
    events: &mut Events<E>,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(E) -> Option<R>,
) -> R {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Ok(ev))) => {
                if let Some(r) = f(ev) {
                    return r;
                }
            }
            Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
            Ok(None) => panic!("event loop ended while waiting for {what}"),
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

/// Waits `d`; panics with what `unexpected` says about the first event it objects to.
async fn expect_no_event<E>(
    events: &mut Events<E>,
    d: Duration,
    mut unexpected: impl FnMut(E) -> Option<String>,
) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Ok(ev))) => {
                if let Some(why) = unexpected(ev) {
                    panic!("{why}")
                }
            }
            Ok(Some(Err(e))) => panic!("connection error: {e}"),
            Ok(None) => panic!("event loop ended"),
            Err(_) => return,
        }
    }
}
