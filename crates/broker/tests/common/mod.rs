//! The broker's in-process test harness: a fake session store behind the
//! `SessionStore` seam (every real store, Redis or disk, sits behind it), a broker on
//! a loopback port using it, and rumqttc helpers.

#![allow(dead_code)] // each test file uses a part

use std::sync::Arc;
use std::time::Duration;

use astramq_broker::broker::Broker;
use astramq_broker::cluster::{
    BoxFuture, ClaimRequest, ClusterClaim, ClusterError, JournalOutcome, SessionChange,
};
use astramq_broker::config::Config;
use astramq_broker::mailbox::{Durability, Mailbox};
use astramq_broker::message::Message;
use astramq_broker::router::Blocked;
use astramq_broker::store::SessionStore;
use astramq_broker::Server;
use parking_lot::Mutex;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use tokio::sync::{oneshot, watch};

/// How long a test waits for an event before it fails.
pub const T: Duration = Duration::from_secs(5);

/// What the fake store does with journal writes and stored changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stores at once and queues (as a healthy store).
    Store,
    /// Holds every write until `release` is called.
    Hold,
    /// Refuses: the store is full.
    Full,
    /// Fails: the store is unreachable.
    Fail,
}

pub struct FakeStore {
    pub mode: Mutex<Mode>,
    /// Claims fail (the store is unreachable at CONNECT).
    pub refuse_claims: bool,
    held: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    seq: std::sync::atomic::AtomicU64,
    /// Every delivery journaled so far: its topic, and whether its session had
    /// moved to another node (forward-only) when it was written.
    pub journaled: Mutex<Vec<(String, bool)>>,
    /// Whether the store says it has no room for more changes (`changes_room`).
    gate: Arc<Gate>,
}

/// The fake store's room for changes, shared with the futures waiting for it.
#[derive(Default)]
struct Gate {
    full: std::sync::atomic::AtomicBool,
    room: tokio::sync::Notify,
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
    /// A store answering writes as `mode` says, claims with epoch 1.
    pub fn new(mode: Mode) -> Arc<FakeStore> {
        Self::with_claims(mode, false)
    }

    /// [`FakeStore::new`], its claims failing when `refuse_claims`.
    pub fn with_claims(mode: Mode, refuse_claims: bool) -> Arc<FakeStore> {
        Arc::new(FakeStore {
            mode: Mutex::new(mode),
            refuse_claims,
            held: Mutex::new(Vec::new()),
            seq: Default::default(),
            journaled: Mutex::new(Vec::new()),
            gate: Default::default(),
        })
    }

    /// Makes the store report no room for changes (`full`), or room again.
    pub fn set_changes_full(&self, full: bool) {
        self.gate
            .full
            .store(full, std::sync::atomic::Ordering::SeqCst);
        if !full {
            self.gate.room.notify_waiters();
        }
    }

    /// Completes every held write as stored.
    pub fn release(&self) {
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
        self.journaled.lock().extend(entries.iter().map(|b| {
            (
                b.delivery.msg.topic().to_string(),
                matches!(b.mailbox.durability(), Durability::Moved { .. }),
            )
        }));
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

    fn changes_room(&self) -> Option<BoxFuture<'static, ()>> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.gate.full.load(SeqCst) {
            return None;
        }
        let gate = self.gate.clone();
        Some(Box::pin(async move {
            loop {
                let room = gate.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if !gate.full.load(SeqCst) {
                    return;
                }
                room.await;
            }
        }))
    }
}

/// A broker on a free loopback port with `store`; stops when the sender drops.
pub async fn broker(store: Arc<FakeStore>) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let (addr, stop, _) = broker_handle(store).await;
    (addr, stop)
}

/// [`broker`], with the broker itself (to drive it as a cluster would).
pub async fn broker_handle(
    store: Arc<FakeStore>,
) -> (std::net::SocketAddr, watch::Sender<bool>, Arc<Broker>) {
    let config = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    let server = Server::bind(config).await.expect("bind");
    server.broker().set_store(store);
    let handle = server.broker().clone();
    let addr = server.local_addrs()[0];
    let (stop, mut rx) = watch::channel(false);
    tokio::spawn(server.run(async move {
        let _ = rx.changed().await;
    }));
    (addr, stop, handle)
}

/// A v5 client; `expiry` > 0 makes its session persistent.
pub fn client(addr: std::net::SocketAddr, id: &str, expiry: u32) -> (AsyncClient, EventLoop) {
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
pub async fn next_ack(ev: &mut EventLoop) -> String {
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
pub async fn wait<R>(ev: &mut EventLoop, what: &str, mut f: impl FnMut(&Packet) -> Option<R>) -> R {
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
pub async fn persistent_subscriber(addr: std::net::SocketAddr, topic: &str) {
    let (c, mut ev) = client(addr, "sub", 600);
    c.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    wait(&mut ev, "SUBACK", |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(T, async { while ev.poll().await.is_ok() {} }).await;
}
