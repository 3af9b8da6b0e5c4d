//! TLS listeners (`tls_listen`, `wss_listen`): the handshake, the client
//! certificate's user name, and [`TlsReloader`], which swaps in new certificates,
//! keys and CA bundles without a restart.
//!
//! Every handshake takes the configuration in force when it starts, so a reload
//! touches no open connection: they keep the session they negotiated, and new ones
//! see the new files. The whole rustls configuration is rebuilt, the client CA
//! bundle included (Mosquitto reloads only the server certificate, so a rotated CA
//! needs a restart there).
//!
//! Reloads come from SIGHUP (`main.rs` calls [`TlsReloader::reload`]) and from a
//! poll of the files every `tls_reload_interval_secs` ([`TlsReloader::watch`]). Polling
//! reads the files through their paths and compares the bytes with the last reading,
//! so it sees every kind of replacement — an editor's rename, `cp` over the file, a
//! Kubernetes secret whose `..data` symlink is swapped — with no inotify subtleties
//! (a watch on a symlinked file follows the old target). A few small files every
//! few seconds cost nothing. A new reading that does not build (a key that does not
//! match, a half-written file) keeps the previous configuration and logs one line;
//! that reading is not tried again until the files change once more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tls::server::TlsFiles;
use tls::stream::TlsStream;
use tls::{ServerTls, TlsError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::ServerConfig;

use crate::config::Config;

/// The TLS configuration in force, and how to rebuild it from its files.
#[derive(Debug)]
pub struct TlsReloader {
    files: ServerTls,
    current: RwLock<Arc<ServerConfig>>,
    /// The files as last read by a reload, whether it succeeded or not.
    last_read: Mutex<TlsFiles>,
    /// Reloads that took effect.
    reloaded: std::sync::atomic::AtomicU64,
    /// Reloads that failed (the previous configuration stayed in force).
    failed: std::sync::atomic::AtomicU64,
}

impl TlsReloader {
    /// Reads the files and builds the first configuration; an error names the file
    /// (a start-up error).
    pub fn load(files: ServerTls) -> Result<TlsReloader, TlsError> {
        let read = files.read();
        let config = files.build(&read)?;
        Ok(TlsReloader {
            files,
            current: RwLock::new(config),
            last_read: Mutex::new(read),
            reloaded: Default::default(),
            failed: Default::default(),
        })
    }

    /// Reloads so far: (took effect, failed).
    pub fn reloads(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.reloaded.load(Relaxed), self.failed.load(Relaxed))
    }

    /// Adds `astramq_tls_reloads_total{outcome}` to `metrics` (once, at start).
    pub fn register_metrics(self: &Arc<Self>, metrics: &crate::metrics::Metrics) {
        metrics.register_collector(Box::new(ReloadMetrics(Arc::downgrade(self))));
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// A tokio-rustls acceptor with the configuration in force now (the HTTPS admin
    /// listener's; MQTT connections use [`tls::stream`]).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }

    /// Rebuilds the configuration from the files as they are now, even if they did
    /// not change (SIGHUP). On success new connections use it; on failure the
    /// previous one stays in force. Either way one line is logged.
    pub fn reload(&self) -> Result<(), TlsError> {
        let read = self.files.read();
        self.apply(read, "SIGHUP")
    }

    /// Rebuilds the configuration if the files changed since the last reading.
    /// Returns whether they had.
    pub fn reload_if_changed(&self) -> bool {
        let read = self.files.read();
        if *self.last_read.lock() == read {
            return false;
        }
        let _ = self.apply(read, "files changed");
        true
    }

    fn apply(&self, read: TlsFiles, why: &str) -> Result<(), TlsError> {
        let built = self.files.build(&read);
        *self.last_read.lock() = read;
        match built {
            Ok(config) => {
                *self.current.write() = config;
                self.reloaded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    trigger = why,
                    cert = %self.files.cert.display(),
                    "TLS configuration reloaded (certificate, key and client CA); new connections use it"
                );
                Ok(())
            }
            Err(e) => {
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    trigger = why,
                    "TLS reload failed, keeping the previous certificates: {e}"
                );
                Err(e)
            }
        }
    }

    /// Polls the files every `every` until the task is aborted.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // File reads block: off the runtime's worker threads.
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }
}

/// Completes the TLS handshake on `stream` and works out the user name the client's
/// certificate gives (`use_identity_as_username` / `use_subject_as_username`).
/// `None`, after logging why, when the client is refused.
pub(crate) async fn accept<S>(
    reloader: &TlsReloader,
    config: &Config,
    stream: S,
    peer: SocketAddr,
    listener: &'static str,
) -> Option<(TlsStream<S>, Option<Box<str>>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = match tls::stream::accept(stream, reloader.config()).await {
        Ok(tls) => tls,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // Closed before a ClientHello: a TCP health check, a port scan.
            tracing::debug!(%peer, listener, error = %e, "TLS handshake failed");
            return None;
        }
        Err(e) => {
            // rustls's reason: "peer sent no certificates", "invalid peer
            // certificate: UnknownIssuer", "received corrupt message", …
            tracing::info!(%peer, listener, error = %e, "TLS handshake failed");
            return None;
        }
    };
    let der = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    match der.map_or(Ok(None), |d| certificate_user(config, &d)) {
        Ok(user) => Some((tls, user)),
        Err(why) => {
            tracing::info!(%peer, listener, "refusing: {why}");
            None
        }
    }
}

/// The user name a verified client certificate gives under
/// `use_identity_as_username` (its Common Name) or `use_subject_as_username` (its
/// whole subject); `Ok(None)` when neither is set. An error, saying why, when the
/// certificate has no such name.
fn certificate_user(config: &Config, der: &[u8]) -> Result<Option<Box<str>>, &'static str> {
    let name = if config.use_identity_as_username {
        ::tls::identity::common_name(der).ok_or(
            "the client certificate has no Common Name to use as user name (use_identity_as_username)",
        )?
    } else if config.use_subject_as_username {
        ::tls::identity::subject_name(der).ok_or(
            "the client certificate's subject cannot be read as a user name (use_subject_as_username)",
        )?
    } else {
        return Ok(None);
    };
    Ok(Some(name.into_boxed_str()))
}

/// The reload counters as a metrics collector.
#[derive(Debug)]
struct ReloadMetrics(std::sync::Weak<TlsReloader>);

impl prometheus_client::collector::Collector for ReloadMetrics {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        let Some(tls) = self.0.upgrade() else {
            return Ok(());
        };
        let (ok, failed) = tls.reloads();
        crate::metrics::Scrape::new(encoder).counters(
            "astramq_tls_reloads",
            "TLS configuration reloads (SIGHUP or changed files), by outcome",
            "outcome",
            &[("ok", ok), ("failed", failed)],
        )
    }
}
