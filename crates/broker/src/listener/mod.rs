//! What happens on an accepted connection before MQTT: the PROXY protocol header,
//! the TLS handshake, the WebSocket upgrade — each only where the listener asks for
//! it — then the one connection code path, [`client::serve`], over whatever stream
//! resulted.
//!
//! - [`tls`] — TLS handshakes, client-certificate user names, reloading.
//! - [`ws`] — the WebSocket upgrade and the binary-message byte stream.
//!
//! The whole set-up (header, handshake, upgrade) has `limits.connect_timeout_secs`;
//! CONNECT then has its own. A plain TCP connection does not come through here at
//! all (`server.rs` serves it directly, keeping its task small).

pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::client;
use crate::metrics::ListenerMetrics;
use crate::proxy;
use tls::TlsReloader;

/// How a listener's connections reach MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// MQTT straight over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    /// Whether connections are TLS (TLS or WSS).
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether connections start with a WebSocket upgrade.
    pub fn is_ws(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// Its name in logs and in the `listening on ADDR (NAME)` lines.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// One listener to bind: an address, its transport, and whether a PROXY protocol v2
/// header comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Where to listen.
    pub addr: SocketAddr,
    /// How its connections carry MQTT.
    pub transport: Transport,
    /// Whether each connection starts with a PROXY protocol v2 header.
    pub proxied: bool,
}

/// A byte stream MQTT runs over (TLS, WebSocket, WebSocket over TLS), boxed so that
/// the connection code is compiled once for all of them.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The stream left once the set-up is done.
enum Ready {
    /// Plain TCP (after a PROXY header).
    Tcp(TcpStream),
    /// TLS, WebSocket or both.
    Wrapped(Box<dyn Io>),
}

/// Serves one connection on a listener that needs set-up before MQTT.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    spec: ListenerSpec,
    metrics: &Arc<ListenerMetrics>,
    tls: Option<Arc<TlsReloader>>,
    stop: watch::Receiver<bool>,
) {
    let limit = Duration::from_secs(broker.config.limits.connect_timeout_secs);
    // Boxed: its buffers and timer do not size the connection's task for its life.
    let setup = Box::pin(tokio::time::timeout(
        limit,
        set_up(&broker, stream, peer, spec, metrics, tls.as_deref()),
    ));
    let (ready, peer, cert_user) = match setup.await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(_) => {
            metrics.setup_timed_out.inc();
            tracing::info!(
                %peer,
                listener = spec.transport.name(),
                "closing: connection set-up (PROXY header, TLS handshake, WebSocket upgrade) not done within limits.connect_timeout_secs"
            );
            return;
        }
    };
    let peer = peer.to_string();
    match ready {
        Ready::Tcp(s) => {
            let (r, w) = s.into_split();
            client::serve(broker, r, w, peer, None, metrics.clone(), stop).await
        }
        Ready::Wrapped(s) => {
            let (r, w) = tokio::io::split(s);
            client::serve(broker, r, w, peer, cert_user, metrics.clone(), stop).await
        }
    }
}

/// The PROXY header, TLS handshake and WebSocket upgrade the listener needs. `None`
/// (after logging why) when the connection is refused.
async fn set_up(
    broker: &Broker,
    mut stream: TcpStream,
    mut peer: SocketAddr,
    spec: ListenerSpec,
    metrics: &ListenerMetrics,
    tls: Option<&TlsReloader>,
) -> Option<(Ready, SocketAddr, Option<Box<str>>)> {
    let config = &broker.config;
    let name = spec.transport.name();
    if spec.proxied {
        match proxy::read_header(&mut stream).await {
            Ok(header) => peer = header.source.unwrap_or(peer),
            Err(e) => {
                metrics.setup_failed_proxy.inc();
                tracing::debug!(%peer, listener = name, error = %e, "closing: bad PROXY protocol header");
                return None;
            }
        }
    }
    // WebSocket frames may carry a packet of the largest size plus its fixed header.
    let max_message = config.limits.max_packet_size as usize + 5;
    let path = config.ws_path.as_str();
    let refused = |e: String| {
        metrics.setup_failed_ws.inc();
        tracing::info!(%peer, listener = name, "refusing: {e}");
    };
    let tls_failed = || metrics.setup_failed_tls.inc();
    let ready = match spec.transport {
        Transport::Tcp => return Some((Ready::Tcp(stream), peer, None)),
        Transport::Tls => {
            let Some((s, user)) = tls::accept(tls?, config, stream, peer, name).await else {
                tls_failed();
                return None;
            };
            return Some((Ready::Wrapped(Box::new(s)), peer, user));
        }
        Transport::Ws => match ws::accept(stream, path, max_message).await {
            Ok(s) => (Ready::Wrapped(Box::new(s)), None),
            Err(e) => {
                refused(e);
                return None;
            }
        },
        Transport::Wss => {
            let Some((s, user)) = tls::accept(tls?, config, stream, peer, name).await else {
                tls_failed();
                return None;
            };
            match ws::accept(s, path, max_message).await {
                Ok(s) => (Ready::Wrapped(Box::new(s)), user),
                Err(e) => {
                    refused(e);
                    return None;
                }
            }
        }
    };
    Some((ready.0, peer, ready.1))
}
