//! The broker against a fake session store, in process (no Redis, no disk, no
//! second process): what a publisher is told when the store is slow, full or failing,
//! through the `SessionStore` seam every real store (Redis, disk) sits behind. The
//! broker runs on a loopback port; clients are rumqttc.

use std::sync::Arc;
use std::time::Duration;

use astramq_broker::cluster::{
    BoxFuture, ClaimRequest, ClusterClaim, ClusterError, JournalOutcome, SessionChange,
};
use astramq_broker::config::Config;
use astramq_broker::mailbox::Mailbox;
use astramq_broker::message::Message;
use astramq_broker::router::Blocked;
use astramq_broker::store::SessionStore;
use astramq_broker::Server;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use tokio::sync::{oneshot, watch};

const T: Duration = Duration::from_secs(5);

/// What the fake store does with journal writes and stored changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Stores at once and queues (as a healthy store).
    Store,
    /// Holds every write until `release` is called.
    Hold,
    /// Refuses: the store is full.
    Full,
    /// Fails: the store is unreachable.
    Fail,
}

struct FakeStore {
    mode: Mutex<Mode>,
    /// Claims fail (the store is unreachable at CONNECT).
    refuse_claims: bool,
    held: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    seq: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for FakeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeStore")
            .field("mode", &*self.mode.lock())
            .field("held", &self.held.lock().len())
            .finish()
    }
}

impl FakeStore {
    fn new(mode: Mode) -> Arc<FakeStore> {
        Arc::new(FakeStore {
            mode: Mutex::new(mode),
            refuse_claims: false,
            held: Mutex::new(Vec::new()),
            seq: Default::default(),
        })
    }

    /// Completes every held write as stored.
    fn release(&self) {
        let held: Vec<_> = std::mem::take(&mut *self.held.lock());
        for done in held {
            done();
        }
    }

    /// Answers a write according to the mode; `ok` completes it as stored.
    fn answer<T: Send + 'static>(
        &self,
        tx: oneshot::Sender<Result<T, ClusterError>>,
        ok: impl FnOnce() -> T + Send + 'static,
    ) {
        match *self.mode.lock() {
            Mode::Store => {
                let _ = tx.send(Ok(ok()));
            }
            Mode::Hold => self.held.lock().push(Box::new(move || {
                let _ = tx.send(Ok(ok()));
            })),
            Mode::Full => {
                let _ = tx.send(Err(ClusterError::Full("disk full (fake)".into())));
            }
            Mode::Fail => {
                let _ = tx.send(Err(ClusterError::unavailable("fake store down")));
            }
        }
    }
}

impl SessionStore for FakeStore {
    fn claim<'a>(
        &'a self,
        _client_id: &'a str,
        _request: ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<ClusterClaim, ClusterError>> {
        Box::pin(async move {
            if self.refuse_claims {
                return Err(ClusterError::unavailable("fake store down"));
            }
            Ok(ClusterClaim {
                epoch: 1,
                ..Default::default()
            })
        })
    }

    fn journal(&self, entries: Vec<Blocked>) -> oneshot::Receiver<JournalOutcome> {
        let (tx, rx) = oneshot::channel();
        self.answer(tx, move || {
            for b in entries {
                b.mailbox.push(b.delivery);
            }
            Vec::new()
        });
        rx
    }

    fn resumed(&self, _client_id: &Arc<str>, mailbox: &Arc<Mailbox>) {
        mailbox.stop_tracking();
    }

    fn message_id<'m>(&self, msg: &'m Message) -> &'m str {
        msg.id.get_or_init(|| {
            let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("{n:016x}").into()
        })
    }

    fn session_changed(&self, _change: SessionChange) {}

    fn session_changed_stored(
        &self,
        _change: SessionChange,
    ) -> oneshot::Receiver<Result<(), ClusterError>> {
        let (tx, rx) = oneshot::channel();
        self.answer(tx, || ());
        rx
    }

    fn retained(&self, _msg: &Arc<Message>) {}
}

/// A broker on a free loopback port with `store`; stops when the sender drops.
async fn broker(store: Arc<FakeStore>) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    let server = Server::bind(config).await.expect("bind");
    server.broker().set_store(store);
    let addr = server.local_addrs()[0];
    let (stop, mut rx) = watch::channel(false);
    tokio::spawn(server.run(async move {
        let _ = rx.changed().await;
    }));
    (addr, stop)
}

/// A v5 client; `expiry` > 0 makes its session persistent.
fn client(addr: std::net::SocketAddr, id: &str, expiry: u32) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_start(expiry == 0);
    if expiry > 0 {
        let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
        props.session_expiry_interval = Some(expiry);
        o.set_connect_properties(props);
    }
    AsyncClient::new(o, 100)
}

/// The reason code of the next PUBACK or PUBREC (rumqttc reports a refusal as an
/// error of the connection).
async fn next_ack(ev: &mut EventLoop) -> String {
    let found = tokio::time::timeout(T, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(a))) => return format!("{:?}", a.reason),
                Ok(Event::Incoming(Packet::PubRec(r))) => return format!("{:?}", r.reason),
                Ok(_) => {}
                Err(ConnectionError::MqttState(StateError::PubAckFail { reason })) => {
                    return format!("{reason:?}")
                }
                Err(ConnectionError::MqttState(StateError::PubRecFail { reason })) => {
                    return format!("{reason:?}")
                }
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no PUBACK/PUBREC within {T:?}"))
}

/// Polls `ev` until `f` picks something out of an incoming packet.
async fn wait<R>(ev: &mut EventLoop, what: &str, mut f: impl FnMut(&Packet) -> Option<R>) -> R {
    let found = tokio::time::timeout(T, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(r) = f(&p) {
                        return r;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("{what}: connection failed: {e}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} within {T:?}"))
}

/// A persistent subscriber to `topic`, connected and subscribed, then disconnected
/// (its session waits: deliveries to it are journaled).
async fn persistent_subscriber(addr: std::net::SocketAddr, topic: &str) {
    let (c, mut ev) = client(addr, "sub", 600);
    c.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    wait(&mut ev, "SUBACK", |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(T, async { while ev.poll().await.is_ok() {} }).await;
}

/// Invariant 1: a QoS 1 message is acknowledged only once its copy for a persistent
/// session is stored ([MQTT-4.3.2-2] PUBACK after taking ownership).
#[tokio::test]
async fn puback_waits_for_the_store() {
    let store = FakeStore::new(Mode::Hold);
    let (addr, _stop) = broker(store.clone()).await;
    persistent_subscriber(addr, "t").await;
    let (p, mut ev) = client(addr, "pub", 0);
    p.publish("t", QoS::AtLeastOnce, false, "m").await.unwrap();
    wait(&mut ev, "CONNACK", |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await;
    // Held: no PUBACK (an absence, waited for a bounded time).
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = ev.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(early.is_err(), "PUBACK before the store answered");
    store.release();
    assert_eq!(next_ack(&mut ev).await, "Success");
}

/// A full store: v5 PUBACK 0x97 Quota exceeded [MQTT-3.4.2-1]; a store that fails:
/// 0x80 Unspecified error. Nothing is acknowledged as accepted.
#[tokio::test]
async fn a_full_or_failing_store_refuses_with_a_reason_code() {
    for (mode, want) in [
        (Mode::Full, "QuotaExceeded"),
        (Mode::Fail, "UnspecifiedError"),
    ] {
        let store = FakeStore::new(Mode::Store);
        let (addr, _stop) = broker(store.clone()).await;
        persistent_subscriber(addr, "t").await;
        *store.mode.lock() = mode;
        let (p, mut ev) = client(addr, "pub", 0);
        p.publish("t", QoS::AtLeastOnce, false, "m").await.unwrap();
        assert_eq!(next_ack(&mut ev).await, want, "{mode:?}");
    }
}

/// Deferred QoS 2: a persistent publisher's inbound packet id is stored before the
/// message is routed, so PUBREC waits for it; if it cannot be stored, PUBREC says so
/// (0x80) and nothing was routed ([MQTT-4.3.3-9] across a crash needs the id stored).
#[tokio::test]
async fn a_persistent_publishers_qos2_waits_for_its_packet_id_to_be_stored() {
    let store = FakeStore::new(Mode::Hold);
    let (addr, _stop) = broker(store.clone()).await;
    let (p, mut ev) = client(addr, "pub", 600);
    p.publish("q", QoS::ExactlyOnce, false, "m").await.unwrap();
    wait(&mut ev, "CONNACK", |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await;
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Packet::PubRec(_))) = ev.poll().await {
                return;
            }
        }
    })
    .await;
    assert!(early.is_err(), "PUBREC before the packet id was stored");
    store.release();
    // Accepted; nobody subscribed (0x10 is a success code).
    assert_eq!(next_ack(&mut ev).await, "NoMatchingSubscribers");

    let store = FakeStore::new(Mode::Fail);
    let (addr, _stop) = broker(store).await;
    let (p, mut ev) = client(addr, "pub2", 600);
    p.publish("q", QoS::ExactlyOnce, false, "m").await.unwrap();
    assert_eq!(next_ack(&mut ev).await, "UnspecifiedError");
}

/// A store that cannot claim the client id: CONNACK 0x88 Server unavailable.
#[tokio::test]
async fn a_store_that_cannot_claim_refuses_the_connection() {
    let store = Arc::new(FakeStore {
        mode: Mutex::new(Mode::Store),
        refuse_claims: true,
        held: Mutex::new(Vec::new()),
        seq: Default::default(),
    });
    let (addr, _stop) = broker(store).await;
    let (_c, mut ev) = client(addr, "c", 600);
    let code = tokio::time::timeout(T, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return Some(a.code),
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Some(code),
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("an answer to CONNECT");
    assert_eq!(
        code,
        Some(rumqttc::v5::mqttbytes::v5::ConnectReturnCode::ServerUnavailable)
    );
}
