//! Listening sockets, the accept loop, and shutdown.
//!
//! [`Server::bind`] validates the configuration, loads the auth files and binds every
//! listener, so the binary can report what it listens on before serving.
//! [`Server::run`] serves until the given future resolves, then stops accepting, tells
//! every client (v5: DISCONNECT 0x8B) and waits for connections to flush, within the
//! grace period.
//!
//! Listeners from `proxy_listen` (and the `*_proxy_listen` keys) read a PROXY
//! protocol v2 header first (within `limits.connect_timeout_secs`) and report the
//! client address it carries. TLS and WebSocket listeners do their handshake or
//! upgrade in [`crate::listener`] before the same connection code runs.
//!
//! Each listener bounds its open connections (`limits.max_connections`) and how fast
//! it accepts new ones (`limits.max_connection_rate`). A connection beyond either is
//! closed as soon as it is accepted, before its CONNECT is read: refusing costs no
//! task, buffer or timer, which is what a connection flood must not get. (A CONNACK
//! 0x9F/0x97 would need the CONNECT read first, for its protocol version.)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthLoadError, Authenticator};
use crate::broker::Broker;
use crate::client;
use crate::config::{Config, ConfigError};
use crate::listener::{self, tls::TlsReloader, ListenerSpec, Transport};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::registry::KEEP_ALIVE_SWEEP;
use prometheus_client::metrics::counter::Counter;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A password or ACL file could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthLoadError),
    /// A TLS file could not be read or used (the message names the key and file).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not be bound.
    #[error("listen: cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// A broker with its listeners bound, ready to serve.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    listeners: Vec<(TcpListener, ListenerSpec)>,
    tls: Option<Arc<TlsReloader>>,
}

impl Server {
    /// Validates `config`, loads auth and TLS files and binds the listeners.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let auth = Authenticator::load(&config)?;
        let tls = match config.server_tls() {
            Some(files) => Some(Arc::new(TlsReloader::load(files)?)),
            None => None,
        };
        let mut listeners = Vec::new();
        for mut spec in config.listeners() {
            let addr = spec.addr;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            spec.addr = l.local_addr().unwrap_or(addr);
            listeners.push((l, spec));
        }
        let broker = Broker::new(config, auth);
        if let Some(t) = &tls {
            t.register_metrics(&broker.metrics);
        }
        Ok(Server {
            broker,
            listeners,
            tls,
        })
    }

    /// The plain MQTT (`listen`) addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_of(Transport::Tcp, false)
    }

    /// The `proxy_listen` addresses actually bound (port 0 resolved).
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_of(Transport::Tcp, true)
    }

    /// Every listener bound, port 0 resolved, in the order of
    /// [`Config::listeners`].
    pub fn listeners(&self) -> Vec<ListenerSpec> {
        self.listeners.iter().map(|(_, s)| *s).collect()
    }

    fn addrs_of(&self, transport: Transport, proxied: bool) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, s)| s.transport == transport && s.proxied == proxied)
            .map(|(_, s)| s.addr)
            .collect()
    }

    /// The TLS configuration's reloader, when TLS is configured: SIGHUP calls
    /// [`TlsReloader::reload`].
    pub fn tls_reloader(&self) -> Option<Arc<TlsReloader>> {
        self.tls.clone()
    }

    /// The shared broker state (for metrics and tests).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for (listener, spec) in self.listeners {
            let broker = self.broker.clone();
            let stop = stop_rx.clone();
            let tracker = tracker.clone();
            let tls = self.tls.clone();
            accept_loops.push(tokio::spawn(accept_loop(
                broker, listener, spec, tls, stop, tracker,
            )));
        }
        let interval = self.broker.config.tls_reload_interval_secs;
        let tls_watch = match &self.tls {
            Some(t) if interval > 0 => {
                Some(tokio::spawn(t.clone().watch(Duration::from_secs(interval))))
            }
            _ => None,
        };
        let sys = match self.broker.config.sys_interval_secs {
            0 => None,
            secs => Some(tokio::spawn(crate::sys::run(
                self.broker.clone(),
                Duration::from_secs(secs),
            ))),
        };
        // One timer for every connection's keep alive, instead of one per connection.
        let broker = self.broker.clone();
        let keep_alive_sweep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEP_ALIVE_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = std::time::Instant::now();
            loop {
                tick.tick().await;
                let now = std::time::Instant::now();
                // After the whole process was paused (SIGSTOP, a stalled VM) clients'
                // packets may wait unread: the connections get one period to read
                // them before anyone's keep alive is judged.
                if now.duration_since(last) < KEEP_ALIVE_SWEEP * 4 {
                    broker.registry.expire_keep_alives(now);
                }
                last = now;
            }
        });
        shutdown.await;
        keep_alive_sweep.abort();
        if let Some(s) = sys {
            s.abort();
        }
        if let Some(w) = tls_watch {
            w.abort();
        }
        // Stop accepting first: a draining node takes no new clients.
        for a in &accept_loops {
            a.abort();
        }
        let config = &self.broker.config;
        let drain = config
            .shutdown
            .drain_secs
            .unwrap_or(if config.redis.is_some() { 5 } else { 0 });
        if drain > 0 {
            self.broker.drain(Duration::from_secs(drain)).await;
        }
        let grace = Duration::from_secs(config.shutdown.grace_period_secs);
        tracing::info!(grace_secs = grace.as_secs(), "shutting down");
        // Connections being set up see the flag; registered ones are asked to leave
        // (after the flag is set, so that none falls between the two).
        let _ = stop_tx.send(true);
        self.broker
            .registry
            .ask_all_to_leave(mqtt::ReasonCode::ServerShuttingDown);
        for a in accept_loops {
            let _ = a.await;
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                remaining = tracker.len(),
                "grace period over with connections still open"
            );
        }
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    spec: ListenerSpec,
    tls: Option<Arc<TlsReloader>>,
    mut stop: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    let limits = &broker.config.limits;
    // This listener's series; `open` also counts against `limits.max_connections`.
    let metrics = broker.metrics.listener(&spec);
    let rate = f64::from(limits.max_connection_rate);
    let mut bucket = (rate > 0.0).then(|| crate::rate::TokenBucket::new(rate, Instant::now()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let max = limits.max_connections;
                let open = usize::try_from(metrics.open.get()).unwrap_or(0);
                let refused = if max > 0 && open >= max {
                    Some(&metrics.refused_max_connections)
                } else if bucket
                    .as_mut()
                    .is_some_and(|b| !b.try_take_one(Instant::now()))
                {
                    Some(&metrics.refused_connection_rate)
                } else {
                    None
                };
                if let Some(counter) = refused {
                    drop(stream);
                    refuse(&broker.metrics, &metrics, counter);
                    continue;
                }
                metrics.open.inc();
                metrics.accepted.inc();
                tracker.spawn(serve_tcp(
                    broker.clone(),
                    stream,
                    OpenConnection(metrics.clone()),
                    peer,
                    spec,
                    tls.clone(),
                    stop.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a connection against its listener's `limits.max_connections` (and in
/// `astramq_listener_connections`) while alive.
struct OpenConnection(Arc<ListenerMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// Counts a connection closed at accept, and warns at most once a second with the
/// count since the last line and this listener's totals by reason.
fn refuse(m: &Metrics, listener: &ListenerMetrics, counter: &Counter) {
    counter.inc();
    if let Some(n) = m.refuse_log.due(1) {
        tracing::warn!(
            refused = n,
            max_connections = listener.refused_max_connections.get(),
            connection_rate = listener.refused_connection_rate.get(),
            "connections closed at accept since the last line (limits.max_connections, limits.max_connection_rate); this listener's totals by reason follow"
        );
    }
}

/// A connection's future, boxed: the task then holds a pointer, and its cell (which
/// tokio aligns to 128 bytes) stays at 128 bytes instead of rounding the future up.
type ConnectionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project_lite::pin_project! {
    /// A connection's future with the guard that counts it open. A struct rather than
    /// `async move { let _open = open; serve.await }`: an async block keeps the future
    /// it captured and the one it awaits in separate slots, doubling an idle
    /// connection's largest allocation (1,032 B instead of ~520 B, measured with heaptrack).
    struct Guarded<F> {
        #[pin]
        serve: F,
        _open: OpenConnection,
    }
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.project().serve.poll(cx)
    }
}

/// Serves one accepted TCP connection. A plain function returning the task's future,
/// so that on a plain MQTT listener that future is [`client::serve`]'s small one
/// alone, with none of this function's state (an idle connection's memory is mostly
/// its future). PROXY headers, TLS and WebSocket go through [`listener::serve`].
fn serve_tcp(
    broker: Arc<Broker>,
    stream: TcpStream,
    open: OpenConnection,
    peer: SocketAddr,
    spec: ListenerSpec,
    tls: Option<Arc<TlsReloader>>,
    stop: watch::Receiver<bool>,
) -> ConnectionFuture {
    let _ = stream.set_nodelay(true);
    if spec.transport == Transport::Tcp && !spec.proxied {
        let (r, w) = stream.into_split();
        let serve = client::serve(broker, r, w, peer.to_string(), None, open.0.clone(), stop);
        return Box::pin(Guarded { serve, _open: open });
    }
    Box::pin(async move {
        let metrics = open.0.clone();
        let _open = open;
        listener::serve(broker, stream, peer, spec, &metrics, tls, stop).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle plain connection's task holds (besides tokio's cell, its socket
    /// registration and the boxed client state) is this future: a size guard, so
    /// that a change which makes every idle connection bigger is noticed. Measured
    /// 520 B in the release build this was written with (an async block wrapping it
    /// made it 1,032 B; see `Guarded`).
    #[tokio::test]
    async fn an_idle_plain_connection_future_stays_small() {
        let config = Config::default();
        let auth = Authenticator::load(&config).expect("anonymous");
        let broker = Broker::new(config, auth);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let spec = ListenerSpec {
            addr,
            transport: Transport::Tcp,
            proxied: false,
        };
        let metrics = broker.metrics.listener(&spec);
        let (_tx, stop) = watch::channel(false);
        let open = OpenConnection(metrics.clone());
        metrics.open.inc();
        let fut = serve_tcp(broker, stream, open, peer, spec, None, stop);
        let size = std::mem::size_of_val(&*fut);
        assert!(size <= 600, "an idle connection's future grew to {size} B");
    }
}
