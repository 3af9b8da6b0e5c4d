//! `astramq cluster`: a whole cluster on loopback, for development (issue #4, item 6).
//!
//! Starts, as child processes:
//!
//! 1. a `redis-server` from `PATH` on a free port (unless `--redis` names one),
//! 2. `--nodes` broker nodes of this same binary (`std::env::current_exe`), node *i*
//!    listening for MQTT on `127.0.0.1:(base-port + i - 1)` plus a PROXY v2 listener on
//!    a free port, gossiping on a free UDP port, all joining node 1,
//! 3. one load balancer (`astramq lb`) on `127.0.0.1:lb-port` joining the same gossip.
//!
//! It prints the endpoints on standard output, then waits. Ctrl-C or SIGTERM (or any
//! child dying) stops everything it started: SIGTERM to the nodes and the balancer,
//! SIGKILL to whoever is still running after the grace period, and `redis-server`
//! last, so the nodes can still remove their routes while shutting down.
//!
//! Children get `PR_SET_PDEATHSIG` (SIGTERM) on Linux: if this process is killed
//! outright, they do not outlive it.
//!
//! Output (stable, the end-to-end test reads it):
//!
//! ```text
//! redis redis://127.0.0.1:40123 pid 4242
//! node node1 mqtt 127.0.0.1:1883 proxy 127.0.0.1:40125 gossip 127.0.0.1:40126 pid 4243
//! ...
//! lb mqtt 127.0.0.1:1880 pid 4250
//! ready
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

/// How long a child gets to print its addresses (debug builds on a busy machine
/// take a while to connect to Redis and bind).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long children get to exit after SIGTERM before they are killed. Longer than
/// a broker's default shutdown grace period.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the supervisor checks that every child is still running.
const POLL: Duration = Duration::from_millis(200);

/// Flags of `astramq cluster`.
#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// Number of broker nodes.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Use this Redis instead of starting a `redis-server` (which must be in `PATH`).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// MQTT port of node 1; node i listens on base-port + i - 1.
    #[arg(long, value_name = "PORT", default_value_t = 1883)]
    pub base_port: u16,
    /// Port of the load balancer in front of the nodes.
    #[arg(long, value_name = "PORT", default_value_t = 1880)]
    pub lb_port: u16,
    /// Do not start the load balancer.
    #[arg(long)]
    pub no_lb: bool,
    /// Log level of the children (their logs go to this command's standard error).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: String,
}

/// Runs `astramq cluster` until Ctrl-C, SIGTERM, or a child's death.
pub fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    let last_port = u32::from(args.base_port) + u32::from(args.nodes) - 1;
    if args.base_port == 0 || last_port > u32::from(u16::MAX) {
        bail!(
            "--base-port {} with --nodes {} goes past port 65535",
            args.base_port,
            args.nodes
        );
    }
    let exe = std::env::current_exe().context("cannot locate the astramq binary")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Children are spawned from this (the main) thread: PR_SET_PDEATHSIG fires when
    // the thread that forked them exits, which for the main thread is process exit.
    let mut cluster = Supervisor::default();
    let started = start(&mut cluster, &args, &exe);
    let outcome = match started {
        Ok(()) => runtime.block_on(cluster.wait()),
        Err(e) => Err(e),
    };
    cluster.stop();
    outcome
}

fn start(cluster: &mut Supervisor, args: &DevClusterArgs, exe: &Path) -> anyhow::Result<()> {
    let redis = match &args.redis {
        Some(url) => {
            println!("redis {url}");
            url.clone()
        }
        None => {
            let (url, pid) = cluster.start_redis()?;
            println!("redis {url} pid {pid}");
            url
        }
    };

    let mut seed: Option<SocketAddr> = None;
    for i in 1..=args.nodes {
        let node_id = format!("node{i}");
        let mqtt = SocketAddr::from(([127, 0, 0, 1], args.base_port + (i - 1)));
        let mut cmd = Command::new(exe);
        cmd.args(["broker", "--node-id", &node_id, "--redis", &redis])
            .args(["--listen", &mqtt.to_string()])
            .args(["--proxy-listen", "127.0.0.1:0"])
            .args(["--gossip-listen", "127.0.0.1:0"])
            .args(["--log-level", &args.log_level]);
        if let Some(seed) = seed {
            cmd.args(["--join", &seed.to_string()]);
        }
        let child = cluster.spawn(&node_id, cmd)?;
        let lines = child.lines_until(|l| l.starts_with("gossip on "))?;
        let field = |prefix: &str, suffix: &str| {
            lines.iter().find_map(|l| {
                l.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(suffix))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            })
        };
        let proxy = field("listening on ", " (proxy)")
            .with_context(|| format!("{node_id} printed no proxy listener"))?;
        let gossip = field("gossip on ", "")
            .with_context(|| format!("{node_id} printed no gossip address"))?;
        println!(
            "node {node_id} mqtt {mqtt} proxy {proxy} gossip {gossip} pid {}",
            child.pid()
        );
        seed.get_or_insert(gossip);
    }

    if !args.no_lb {
        let seed = seed.context("no node started")?;
        let listen = SocketAddr::from(([127, 0, 0, 1], args.lb_port));
        let mut cmd = Command::new(exe);
        cmd.args(["lb", "--listen", &listen.to_string()])
            .args(["--join", &seed.to_string()])
            .args(["--gossip-listen", "127.0.0.1:0"])
            .args(["--node-id", "lb"])
            .args(["--log-level", &args.log_level]);
        let child = cluster.spawn("lb", cmd)?;
        let lines = child.lines_until(|l| l.starts_with("listening on "))?;
        let addr = lines
            .iter()
            .find_map(|l| l.strip_prefix("listening on "))
            .context("lb printed no listener")?
            .to_string();
        println!("lb mqtt {addr} pid {}", child.pid());
    }
    println!("ready");
    eprintln!("astramq cluster: running; Ctrl-C or SIGTERM stops everything");
    Ok(())
}

/// One started child and the lines of its standard output.
struct Proc {
    name: String,
    child: Child,
    /// Standard output, line by line, from a reader thread.
    stdout: mpsc::Receiver<String>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collects standard-output lines up to and including the first one `last`
    /// accepts. Fails if the child exits or stays silent for [`START_TIMEOUT`].
    fn lines_until(&self, last: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let done = last(&line);
                    lines.push(line);
                    if done {
                        return Ok(lines);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{} did not start within {START_TIMEOUT:?}", self.name)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{} exited during start-up (see its log above)", self.name)
                }
            }
        }
    }
}

/// Everything started so far, in start order. Stopping is best effort and happens
/// at most once per child; dropping the supervisor stops whatever is left.
#[derive(Default)]
struct Supervisor {
    /// Brokers and the balancer.
    procs: Vec<Proc>,
    /// Stopped last.
    redis: Option<Proc>,
}

impl Supervisor {
    fn spawn(&mut self, name: &str, cmd: Command) -> anyhow::Result<&Proc> {
        let proc = spawn(name, cmd)?;
        self.procs.push(proc);
        Ok(self.procs.last().expect("just pushed"))
    }

    /// Starts `redis-server` on a free port, without persistence, and waits until
    /// it accepts connections.
    fn start_redis(&mut self) -> anyhow::Result<(String, u32)> {
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        let proc = spawn("redis-server", cmd)
            .context("cannot start redis-server (is it in PATH? or pass --redis URL)")?;
        let pid = proc.pid();
        self.redis = Some(proc);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.redis.as_mut().and_then(|r| r.child.try_wait().ok()?) {
                bail!("redis-server exited during start-up: {status}");
            }
            if Instant::now() >= deadline {
                bail!("redis-server did not accept connections on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((format!("redis://{addr}"), pid))
    }

    /// Waits for Ctrl-C or SIGTERM (`Ok`), or for a child to exit (`Err`).
    async fn wait(&mut self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = poll.tick() => {
                    for p in self.procs.iter_mut().chain(self.redis.as_mut()) {
                        if let Ok(Some(status)) = p.child.try_wait() {
                            bail!("{} exited unexpectedly ({status}); stopping the cluster", p.name);
                        }
                    }
                }
            }
        }
    }

    /// SIGTERM to the nodes and the balancer, SIGKILL to stragglers after
    /// [`STOP_GRACE`], then the same for redis-server.
    fn stop(&mut self) {
        let procs = std::mem::take(&mut self.procs);
        if !procs.is_empty() {
            eprintln!("astramq cluster: stopping {} processes", procs.len());
        }
        terminate(procs);
        terminate(self.redis.take().into_iter().collect());
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops `procs`: SIGTERM to all, wait up to [`STOP_GRACE`], SIGKILL the rest, reap.
fn terminate(mut procs: Vec<Proc>) {
    for p in &mut procs {
        if matches!(p.child.try_wait(), Ok(None)) {
            signal(&p.child, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let mut running = 0;
        for p in &mut procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                running += 1;
            }
        }
        if running == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &mut procs {
        if matches!(p.child.try_wait(), Ok(None)) {
            eprintln!(
                "astramq cluster: {} did not stop within {STOP_GRACE:?}; killing it",
                p.name
            );
            let _ = p.child.kill();
        }
        let status: std::io::Result<ExitStatus> = p.child.wait();
        if let Ok(status) = status {
            if !status.success() && status.code().is_some() {
                eprintln!("astramq cluster: {} exited with {status}", p.name);
            }
        }
    }
}

#[allow(unsafe_code)]
fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own
    // unreaped child, so it cannot have been recycled for another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Spawns `cmd` with standard output captured line by line, standard error
/// inherited (the children's logs), and standard input closed.
#[allow(unsafe_code)]
fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Children must not pick up the ASTRAMQ_* settings meant for this command.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ASTRAMQ_") {
            cmd.env_remove(key);
        }
    }
    {
        use std::os::unix::process::CommandExt;
        // Own process group: a Ctrl-C in the terminal reaches only this command,
        // which then stops the children in order (redis-server last).
        cmd.process_group(0);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs between fork and exec and only calls prctl(2),
        // which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(format!("{thread_name}-stdout"))
        .spawn(move || forward_lines(stdout, tx))
        .context("cannot start a reader thread")?;
    Ok(Proc {
        name: name.to_string(),
        child,
        stdout: rx,
    })
}

/// Sends each line of `from` to `to` (until EOF), and keeps draining once nobody
/// listens, so a child never blocks on a full pipe.
fn forward_lines(from: impl Read, to: mpsc::Sender<String>) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { return };
        let _ = to.send(line);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
