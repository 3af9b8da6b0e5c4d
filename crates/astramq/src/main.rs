//! The `astramq` command: `astramq broker` (the default), `astramq lb`, `astramq passwd`,
//! `astramq ctl`,
//! `astramq bench` (the load generator, in the `bench` crate), `astramq cluster` (a local
//! development cluster).
//!
//! - [`cli`] — command-line flags, and how flags, `ASTRAMQ_*` variables and the config
//!   file combine into one validated [`broker::Config`].
//! - [`passwd`] — `astramq passwd`, a `mosquitto_passwd` work-alike.
//! - [`ctl`] — `astramq ctl`: API keys, and the admin API from a terminal.
//! - [`devcluster`] — `astramq cluster`: redis-server, N nodes and a load balancer as
//!   child processes, stopped together.

mod cli;
mod ctl;
mod devcluster;
mod passwd;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use broker::handle::LocalBroker;
use clap::Parser;

use cli::{Cli, Command};

/// mimalloc rather than glibc's malloc: messages are allocated on the connections'
/// threads and freed on others (the disk store's writer, other connections), which
/// glibc handles poorly. Measured (docs/benchmarks.md, "Allocator"): QoS 1 pairs
/// +12 % in memory, +19 % with persistent sessions on disk, for +6.5 MiB at start and
/// about +250 B per idle connection.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` (its option number 4 in mimalloc 3). Off, arenas
/// are committed as they are used rather than all at once: measured (bench/tls.sh,
/// 2,000 idle TLS connections) RSS 24.9 MiB instead of 36.6 MiB, 11.1 MiB at start
/// instead of 18.5 MiB, with no loss of throughput (docs/benchmarks.md, Allocator).
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets mimalloc's options before anything is allocated: an ELF constructor runs
/// before the Rust runtime starts (and allocates). `MIMALLOC_*` environment variables
/// cannot override these. Linux only (elsewhere mimalloc keeps its defaults).
#[cfg(target_os = "linux")]
#[used]
#[allow(unsafe_code)]
#[unsafe(link_section = ".init_array")]
static MIMALLOC_OPTIONS: extern "C" fn() = {
    extern "C" fn set() {
        #[allow(unsafe_code)]
        // SAFETY: sets an option value; mimalloc reads it when it creates an arena.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0)
        };
    }
    set
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Broker(Box::new(cli.broker))) {
        Command::Broker(args) => run_broker(*args),
        Command::Passwd(args) => passwd::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Lb(args) => run_lb(args),
        Command::Cluster(args) => devcluster::run(args),
        Command::Ctl(args) => ctl::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what is wrong, as the README promises.
            eprintln!("astramq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_broker(args: cli::BrokerArgs) -> anyhow::Result<()> {
    let config = cli::load_config(&args, &cli::environment())?;
    init_logging(&config.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let cluster_settings = config.cluster_settings();
        let health_listen = config.health_listen;
        let admin_tls = config.admin_tls;
        let peers = admin_peers(&config)?;
        let keys = admin::keys::KeyStore::load(config.admin_keys_file.as_deref())
            .context("admin_keys_file")?;
        let data_dir = config.data_dir.clone();
        let store_tuning = config.store.clone();
        let server = broker::Server::bind(config).await?;
        // Sessions and retained messages come back before anyone is accepted.
        let disk = match (&data_dir, &cluster_settings) {
            (Some(dir), _) => {
                let started = std::time::Instant::now();
                let limits = server.broker().mailbox_limits();
                let (disk, loaded) = store::DiskStore::open(dir, &store_tuning, limits)?;
                server.broker().set_store(disk.clone());
                disk.register_metrics(server.broker());
                let (unreadable, waiting) = (loaded.unreadable, loaded.spilled());
                let done = store::install(&LocalBroker::of(server.broker()), loaded).await;
                tracing::info!(
                    path = %disk.path().display(),
                    sessions = done.sessions,
                    expired = done.expired,
                    messages = done.messages + waiting,
                    retained = done.retained,
                    unreadable,
                    ms = started.elapsed().as_millis() as u64,
                    sync = ?store_tuning.sync,
                    "data directory loaded"
                );
                Some(disk)
            }
            (None, None) => {
                tracing::info!("no data_dir: sessions and retained messages are kept in memory only and are lost when the process stops");
                None
            }
            (None, Some(_)) => None,
        };
        let health = match health_listen {
            Some(addr) => Some(
                admin::AdminServer::bind(addr)
                    .await
                    .with_context(|| format!("health_listen: cannot bind {addr}"))?,
            ),
            None => None,
        };
        // Join the cluster before accepting anyone, so no client sees a half-joined node.
        let node = match cluster_settings {
            Some(settings) => {
                let node = cluster::ClusterNode::start(
                    &settings,
                    &LocalBroker::of(server.broker()),
                    server.local_addrs(),
                    server.proxy_addrs(),
                )
                .await?;
                server.broker().set_cluster(node.clone());
                node.set_listeners(&server.listeners());
                Some(node)
            }
            None => None,
        };
        // Before the first `listening` line: from then on a SIGHUP reloads TLS
        // rather than ending the process (its default action).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let reload_task = tokio::spawn(reload_on_sighup(hup, server.tls_reloader()));
        let mut stdout = std::io::stdout();
        for addr in server.local_addrs() {
            tracing::info!(%addr, "listening");
            writeln!(stdout, "listening on {addr}")?;
        }
        // After the plain listeners: the test harness reads `--listen` lines first.
        for addr in server.proxy_addrs() {
            tracing::info!(%addr, "listening (PROXY protocol v2 required)");
            writeln!(stdout, "listening on {addr} (proxy)")?;
        }
        for l in server.listeners() {
            if l.transport == broker::listener::Transport::Tcp {
                continue;
            }
            let (addr, kind) = (l.addr, l.transport.name());
            let proxy = if l.proxied { ", proxy" } else { "" };
            tracing::info!(%addr, transport = kind, proxy = l.proxied, "listening");
            writeln!(stdout, "listening on {addr} ({kind}{proxy})")?;
        }

        let (health_task, stopping) = match health {
            Some(h) => {
                let addr = h.local_addr()?;
                tracing::info!(%addr, "health endpoint listening");
                writeln!(stdout, "health on {addr}")?;
                if let Some(n) = &node {
                    n.set_admin(addr);
                }
                let probe = match (&node, &disk) {
                    (Some(n), _) => Some(n.clone() as Arc<dyn broker::health::HealthProbe>),
                    (None, Some(d)) => Some(d.clone() as Arc<dyn broker::health::HealthProbe>),
                    (None, None) => None,
                };
                let stopping = h.stopping_flag();
                let tls = admin_tls.then(|| server.tls_reloader()).flatten();
                let task = h.spawn(
                    server.broker().clone(),
                    node.clone(),
                    probe,
                    Arc::new(keys),
                    tls,
                    peers,
                )?;
                (Some(task), Some(stopping))
            }
            None => (None, None),
        };
        if let Some(gossip) = node.as_ref().and_then(|n| n.gossip_addr()) {
            writeln!(stdout, "gossip on {gossip}")?;
        }
        stdout.flush()?;
        let drain_node = node.clone();
        server
            .run(async move {
                shutdown_signal().await;
                if let Some(s) = stopping {
                    s.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                // First out of the load balancers' rotation, then the clients move away.
                if let Some(n) = drain_node {
                    n.set_draining();
                }
            })
            .await;
        if let Some(node) = node {
            node.shutdown().await;
        }
        if let Some(disk) = disk {
            disk.close().await;
        }
        if let Some(t) = health_task {
            t.abort();
        }
        reload_task.abort();
        tracing::info!("stopped");
        Ok(())
    })
}

/// How this node's admin API reaches the other nodes' (for the cluster-wide
/// answers): as it serves its own, over HTTPS verified with `admin_tls_ca`.
fn admin_peers(config: &broker::Config) -> anyhow::Result<admin::client::PeerTransport> {
    use admin::client::PeerTransport;
    if !config.admin_tls {
        return Ok(PeerTransport::Http);
    }
    let (Some(ca), Some(cert), Some(key)) = (
        config.admin_tls_ca.as_deref(),
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
    ) else {
        tracing::warn!(
            "admin_tls without admin_tls_ca: the admin API answers for this node only (the other nodes' HTTPS listeners cannot be verified)"
        );
        return Ok(PeerTransport::Unverifiable);
    };
    let client = tls::client::client_config(
        "admin_tls_ca",
        ca,
        Some((("tls_cert", cert), ("tls_key", key))),
    )?;
    Ok(PeerTransport::Https(client))
}

fn run_lb(args: lb::LbArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    init_logging(&args.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let balancer = lb::LoadBalancer::bind(config).await?;
        let addr = balancer.local_addr();
        if let Some(gossip) = balancer.gossip_addr() {
            tracing::info!(%gossip, "gossip membership joined");
        }
        tracing::info!(%addr, "load balancer listening");
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
        balancer.run(shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    // The disk store's engine logs each flush and compaction at info, and each
    // failed write while the disk is full (the store logs that once): only its
    // other warnings, unless the filter names it.
    let directives = if level.contains('=') {
        level.to_string()
    } else {
        format!("{level},fjall=warn,fjall::batch=off,lsm_tree=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .map_err(|e| anyhow::anyhow!("invalid configuration: log_level: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// On each SIGHUP, reloads the TLS certificate, key and client CA (the reloader
/// logs the outcome). Without TLS it only logs that there is nothing to reload:
/// SIGHUP's default action would end the process.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    tls: Option<Arc<broker::listener::tls::TlsReloader>>,
) {
    while hup.recv().await.is_some() {
        match &tls {
            Some(t) => {
                let t = t.clone();
                let _ = tokio::task::spawn_blocking(move || t.reload()).await;
            }
            None => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The constructor ran before the first allocation of this (test) binary, which
    /// links it like the real one.
    #[test]
    fn mimalloc_commits_arenas_as_they_are_used() {
        #[allow(unsafe_code)]
        // SAFETY: reads an option value.
        let eager = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT) };
        assert_eq!(eager, 0);
    }
}
