//! [`LoadBalancer`]: bind, accept, complete the TLS handshake (when terminating
//! TLS), choose a node, connect (retrying on another node when one refuses), send
//! the PROXY header (when that node's backend takes one) and the bytes already
//! read, then copy both ways until either side closes, the node dies, or the
//! balancer stops.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use membership::{self, MembershipConfig, MembershipHandle, NodeMeta};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{ActiveGuard, Backend, Pool};
use crate::config::{Discovery, LbConfig, Strategy};
use crate::error::LbError;
use crate::{discovery, first_packet, proxy_v2};

/// A load balancer with its listener bound (and, in gossip mode, membership
/// started), ready to [`run`](Self::run).
pub struct LoadBalancer {
    config: LbConfig,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    pool: Arc<Pool>,
    membership: Option<MembershipHandle>,
}

impl std::fmt::Debug for LoadBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBalancer")
            .field("config", &self.config)
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("pool", &self.pool)
            .field("membership", &self.membership)
            .finish()
    }
}

impl LoadBalancer {
    /// Validates `config`, binds the client listener and, in gossip mode, joins the
    /// cluster as a [`Role::LoadBalancer`](membership::Role::LoadBalancer) member.
    pub async fn bind(config: LbConfig) -> Result<LoadBalancer, LbError> {
        config.validate()?;
        // Certificate and key first: a bad file is reported before anything binds.
        let tls = config.tls.as_ref().map(|t| t.acceptor()).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| LbError::Bind {
                addr: config.listen,
                source,
            })?;
        let (pool, membership) = match &config.discovery {
            // No metadata to go by: every address gets what `--proxy-protocol` says.
            Discovery::Static(addrs) => {
                let backends = addrs
                    .iter()
                    .map(|&a| Arc::new(Backend::new(a.to_string(), 0, a, config.proxy_protocol)))
                    .collect();
                (Pool::new(backends), None)
            }
            Discovery::Gossip(g) => {
                let handle = membership::spawn(MembershipConfig {
                    advertise: g.advertise,
                    join: g.join.clone(),
                    cluster_key: g.cluster_key.clone(),
                    ..MembershipConfig::new(g.node_id.clone(), g.listen, NodeMeta::load_balancer())
                })
                .await?;
                (Pool::default(), Some(handle))
            }
        };
        Ok(LoadBalancer {
            config,
            listener,
            tls,
            pool: Arc::new(pool),
            membership,
        })
    }

    /// The client listener's address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The gossip address, in gossip mode.
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.membership.as_ref().map(|m| m.local_addr())
    }

    /// Serves until `shutdown` resolves; then stops accepting, leaves the cluster,
    /// gives open connections the grace period to end, and closes the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop_discovery = CancellationToken::new();
        let discovery = self.membership.map(|handle| {
            tokio::spawn(discovery::run(
                handle,
                self.pool.clone(),
                self.config.proxy_protocol,
                self.config.backend_transport,
                stop_discovery.clone(),
            ))
        });
        let shared = Arc::new(Shared {
            config: self.config,
            tls: self.tls,
            pool: self.pool,
        });
        let close_all = CancellationToken::new();
        let tracker = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = &mut shutdown => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(serve(shared.clone(), stream, peer, close_all.clone()));
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        let grace = shared.config.grace_period;
        tracing::info!(open = tracker.len(), ?grace, "shutting down");
        stop_discovery.cancel();
        if let Some(d) = discovery {
            let _ = d.await;
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                open = tracker.len(),
                "grace period over: closing the remaining connections"
            );
            close_all.cancel();
            tracker.wait().await;
        }
    }
}

/// What every connection task reads.
struct Shared {
    config: LbConfig,
    tls: Option<TlsAcceptor>,
    pool: Arc<Pool>,
}

/// One client connection, from accept to close: the TLS handshake first when
/// terminating TLS (a failed or slow handshake closes this connection only).
async fn serve(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr, stop: CancellationToken) {
    let _ = client.set_nodelay(true);
    let local = client.local_addr().unwrap_or(shared.config.listen);
    let Some(acceptor) = shared.tls.clone() else {
        return proxy(&shared, client, peer, local, stop).await;
    };
    let timeout = shared
        .config
        .tls
        .as_ref()
        .map_or(crate::tls::TlsFiles::DEFAULT_HANDSHAKE_TIMEOUT, |t| {
            t.handshake_timeout
        });
    let handshake = tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(client)) => r,
        _ = stop.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls)) => proxy(&shared, tls, peer, local, stop).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, ?timeout, "TLS handshake timed out"),
    }
}

/// Chooses a node, connects, and copies both ways; `client` is the plain TCP
/// stream or the decrypted TLS one.
async fn proxy<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut client: S,
    peer: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
) {
    let config = &shared.config;
    let (prefix, client_id) = if config.strategy == Strategy::ClientId {
        match first_packet::read_connect(
            &mut client,
            config.connect_packet_timeout,
            config.max_connect_size,
        )
        .await
        {
            Ok(first) => (first.bytes, Some(first.client_id)),
            Err(e) => {
                tracing::info!(%peer, error = %e, "refused: first packet is not a valid MQTT CONNECT");
                return;
            }
        }
    } else {
        (BytesMut::new(), None)
    };
    let Some((mut server, guard)) = connect(shared, client_id.as_deref()).await else {
        tracing::warn!(%peer, "no broker reachable: closing the connection");
        return;
    };
    let backend = guard.backend().clone();
    tracing::debug!(%peer, backend = %backend.key(), addr = %backend.addr(), client_id = ?client_id, "proxying");

    let mut head = Vec::with_capacity(52 + prefix.len());
    if backend.proxy_v2() {
        proxy_v2::encode(peer, local, &mut head);
    }
    head.extend_from_slice(&prefix);
    if !head.is_empty() {
        if let Err(e) = server.write_all(&head).await {
            tracing::debug!(%peer, backend = %backend.key(), error = %e, "broker closed before the first bytes");
            return;
        }
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => match r {
            Ok((up, down)) => tracing::debug!(%peer, backend = %backend.key(), up, down, "connection closed"),
            Err(e) => tracing::debug!(%peer, backend = %backend.key(), error = %e, "connection ended"),
        },
        _ = backend.gone().cancelled() => {
            tracing::debug!(%peer, backend = %backend.key(), "broker gone: closing so the client reconnects elsewhere");
        }
        _ = stop.cancelled() => {}
    }
    drop(guard);
}

/// Connects to a node chosen by the strategy; when it refuses or times out, marks
/// it failed and tries the next choice, until every node has been tried. With no
/// node known at all (gossip has not found one yet, or all are draining), waits up
/// to the connect timeout for one to appear.
async fn connect(shared: &Shared, client_id: Option<&str>) -> Option<(TcpStream, ActiveGuard)> {
    let config = &shared.config;
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    loop {
        let changed = shared.pool.changed();
        let pick = shared.pool.pick(
            config.strategy,
            client_id,
            config.hash_balance_factor,
            &tried,
        );
        let Some(backend) = pick else {
            if tried.is_empty() && tokio::time::timeout_at(deadline, changed).await.is_ok() {
                continue;
            }
            return None;
        };
        // Counted from the choice on, so concurrent choices see it.
        let guard = backend.track();
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(backend.addr())).await
        {
            Ok(Ok(stream)) => {
                backend.mark_ok();
                let _ = stream.set_nodelay(true);
                return Some((stream, guard));
            }
            Ok(Err(e)) => {
                tracing::debug!(backend = %backend.key(), error = %e, "connect failed");
                backend.mark_failed(config.backoff);
            }
            Err(_) => {
                tracing::debug!(backend = %backend.key(), "connect timed out");
                backend.mark_failed(config.backoff);
            }
        }
        drop(guard);
        tried.push(backend);
    }
}
