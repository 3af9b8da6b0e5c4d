//! One run, start to finish: connect, publish, drain, account.
//!
//! 1. Subscribers connect and subscribe (paced by `--conn-rate`, at most
//!    `--conn-parallel` handshakes at once), then publishers, then idle connections.
//! 2. [`Phase::Running`] for `--duration`: publishers publish.
//! 3. [`Phase::Draining`]: publishers stop and settle their in-flight messages;
//!    subscribers read until every acknowledged message has arrived or `--drain`
//!    runs out.
//! 4. [`Phase::Done`]: everyone disconnects and hands back its sequence sets, from
//!    which [`crate::seqset::lost`] counts the losses exactly.

use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mqtt::QoS;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::{protocol_name, Plan, Scenario};
use crate::client::{drive, ClientOptions, Conn, Outcome, Phase};
use crate::layout::{layout, ClientSpec, Expects, Role};
use crate::procfs::{self, ProcSample};
use crate::report::{mib, BrokerUsage, Connections, Percentiles, Report};
use crate::seqset::{lost, SeqSet};
use crate::stats::{Shared, Snapshot};
use crate::BenchError;

/// How long one handshake (TCP, CONNECT, SUBSCRIBE) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `plan` on the current tokio runtime and returns its report.
pub async fn execute(plan: Plan) -> Result<Report, BenchError> {
    let nofile = procfs::raise_nofile_limit().map_err(BenchError::Limit)?;
    let total = plan.count as u64 + 1;
    if total + 64 > nofile {
        return Err(BenchError::InvalidArgs(format!(
            "{total} connections need more open files than the limit of {nofile}"
        )));
    }
    let layout = layout(&plan);
    let run = (procfs_seed() & 0xffff_ffff) as u32;
    let shared = Arc::new(Shared::new(run, layout.publishers.len()));
    let opts = Arc::new(ClientOptions {
        protocol: plan.protocol,
        clean: plan.clean,
        session_expiry: plan.session_expiry,
        keep_alive: plan.keep_alive,
        qos: plan.qos,
        payload: plan.payload,
        rate: plan.rate,
        inflight: plan.inflight,
        tls: plan.tls.clone(),
        ws_path: plan.ws_path.clone(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let mut watcher = Watcher::start(&plan)?;
    let progress = (plan.progress && std::io::stderr().is_terminal()).then(|| {
        let shared = shared.clone();
        let broker_pid = plan.broker_pid;
        let scenario = plan.scenario;
        tokio::spawn(progress_line(scenario, shared, broker_pid, total - 1))
    });

    // 1. Connect.
    let connect_start = Instant::now();
    let mut tasks = JoinSet::new();
    let sem = Arc::new(Semaphore::new(plan.conn_parallel));
    let mut pacer = Pacer::new(plan.conn_rate);
    let n_subs = layout.subscribers.len();
    let n_pubs = layout.publishers.len();
    shared.pubs_active.store(n_pubs, Relaxed);
    let mut started = 0u64;
    for group in [layout.subscribers, layout.publishers, layout.idle] {
        for spec in group {
            pacer.wait().await;
            let permit = sem.clone().acquire_owned().await.expect("never closed");
            let (opts, shared, phase) = (opts.clone(), shared.clone(), phase_rx.clone());
            tasks.spawn(async move { client_task(spec, opts, shared, phase, permit).await });
            started += 1;
        }
        // Every subscription is in place before the first publisher connects.
        wait_handshakes(&shared, started, &mut watcher).await;
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    watcher.sample_peak();

    // 2. Run.
    if plan.scenario == Scenario::Conn {
        watcher.restart_window_at_connect_start();
    } else {
        watcher.restart_window();
    }
    let before = shared.snapshot();
    let run_start = Instant::now();
    let _ = phase_tx.send(Phase::Running);
    let deadline = run_start + plan.duration;
    while Instant::now() < deadline {
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_secs(1))).await;
        watcher.sample_peak();
    }
    let run_secs = run_start.elapsed().as_secs_f64();
    let at_stop = shared.snapshot();
    let usage = watcher.end_window();

    // 3. Drain.
    let _ = phase_tx.send(Phase::Draining);
    drain(&plan, &shared, &layout.fan, n_subs).await;

    // 4. Done.
    let _ = phase_tx.send(Phase::Done);
    let mut outcomes = Vec::with_capacity(started as usize);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => shared.record_error(format!("client task failed: {e}")),
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[K");
    }
    Ok(build_report(
        &plan,
        &shared,
        outcomes,
        n_pubs,
        n_subs,
        Measured {
            started,
            connect_secs,
            run_secs,
            run_start,
            before,
            at_stop,
            usage,
        },
    ))
}

/// Connects one client, then drives it.
async fn client_task(
    spec: ClientSpec,
    opts: Arc<ClientOptions>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Outcome {
    let t = Instant::now();
    let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut conn = Conn::connect(&spec, &opts).await?;
        if let Role::Subscriber { filter, .. } = &spec.role {
            conn.subscribe(filter, opts.qos).await?;
        }
        Ok::<_, crate::client::ClientError>(conn)
    })
    .await;
    drop(permit);
    let is_pub = matches!(spec.role, Role::Publisher { .. });
    let conn = match connected {
        Ok(Ok(conn)) => conn,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "handshake timed out".to_string(),
            };
            shared.record_error(format!("connect to {}: {why}", spec.host));
            shared.conn_failed.fetch_add(1, Relaxed);
            if is_pub {
                shared.pubs_active.fetch_sub(1, Relaxed);
            }
            return Outcome::default();
        }
    };
    shared.record_handshake(t.elapsed().as_micros() as u64);
    shared.connected.fetch_add(1, Relaxed);
    let outcome = drive(conn, spec.role, opts, shared.clone(), phase).await;
    if is_pub {
        shared.pubs_active.fetch_sub(1, Relaxed);
    }
    outcome
}

/// Waits until `n` handshakes have succeeded or failed.
async fn wait_handshakes(shared: &Shared, n: u64, watcher: &mut Watcher) {
    let mut last_sample = Instant::now();
    loop {
        let s = shared.snapshot();
        if s.connected + s.conn_failed >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if last_sample.elapsed() >= Duration::from_secs(1) {
            watcher.sample_peak();
            last_sample = Instant::now();
        }
    }
}

/// Waits for publishers to settle and subscribers to receive what was acknowledged.
async fn drain(plan: &Plan, shared: &Shared, fan: &[u32], n_subs: usize) {
    if n_subs == 0 && shared.pubs_active.load(Relaxed) == 0 {
        return;
    }
    let deadline = Instant::now() + plan.drain;
    let mut last_unique = u64::MAX;
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        let pubs_done = shared.pubs_active.load(Relaxed) == 0;
        let unique = shared.unique.load(Relaxed);
        if pubs_done {
            if n_subs == 0 {
                return;
            }
            let per_pub = if plan.qos == QoS::AtMostOnce {
                &shared.sent_per_pub
            } else {
                &shared.acked_per_pub
            };
            let expected: u64 = per_pub
                .iter()
                .zip(fan)
                .map(|(n, &f)| n.load(Relaxed) * f as u64)
                .sum();
            if fan.is_empty() {
                // `sub` alone: nobody to wait for.
                return;
            }
            if unique >= expected {
                return;
            }
            // QoS 0 may drop: stop once deliveries have dried up.
            if plan.qos == QoS::AtMostOnce && still_since.elapsed() > Duration::from_millis(500) {
                return;
            }
        }
        if unique != last_unique {
            last_unique = unique;
            still_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Measured {
    started: u64,
    connect_secs: f64,
    run_secs: f64,
    run_start: Instant,
    before: Snapshot,
    at_stop: Snapshot,
    usage: Usage,
}

fn build_report(
    plan: &Plan,
    shared: &Shared,
    outcomes: Vec<Outcome>,
    n_pubs: usize,
    n_subs: usize,
    m: Measured,
) -> Report {
    let mut acked = vec![SeqSet::new(); n_pubs];
    let mut subs = Vec::new();
    for o in outcomes {
        if let Some((i, set)) = o.publisher {
            acked[i as usize] = set;
        }
        if let Some(s) = o.subscriber {
            subs.push(s);
        }
    }
    let fan_total = |per_pub: &[std::sync::atomic::AtomicU64]| -> u64 {
        let mut f = vec![0u64; n_pubs];
        for s in &subs {
            if let Expects::Publishers(ps) = &s.expects {
                for &p in ps {
                    f[p as usize] += 1;
                }
            }
        }
        per_pub
            .iter()
            .zip(&f)
            .map(|(n, f)| n.load(Relaxed) * f)
            .sum()
    };
    // Subscribers that failed to connect are not in `subs`: what they missed is
    // reported as connection failures, not as lost messages.
    let accounted = n_pubs > 0 && !subs.is_empty();
    let lost_total: u64 = subs
        .iter()
        .map(|s| match &s.expects {
            Expects::Publishers(ps) => lost(&acked, ps.iter().copied(), |p| s.received.get(&p)),
            Expects::Any => 0,
        })
        .sum();
    let unique = shared.unique.load(Relaxed);
    let qos0 = plan.qos == QoS::AtMostOnce;
    let (lost, not_received) = match (accounted, qos0) {
        (false, _) => (None, None),
        (true, false) => (Some(lost_total), None),
        (true, true) => (
            None,
            Some(fan_total(&shared.sent_per_pub).saturating_sub(unique)),
        ),
    };
    let s = shared.snapshot();
    let window = if plan.scenario == Scenario::Conn {
        m.connect_secs + m.run_secs
    } else {
        m.run_secs
    };
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / m.run_secs.max(1e-9);
    let hs = shared.handshake.lock().unwrap_or_else(|p| p.into_inner());
    let lat = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
    Report {
        scenario: plan.scenario,
        protocol: protocol_name(plan.protocol),
        qos: plan.qos as u8,
        payload: plan.payload,
        count: plan.count,
        publishers: n_pubs,
        subscribers: n_subs,
        rate: plan.rate.unwrap_or(0.0),
        inflight: plan.inflight,
        duration_s: window,
        connections: Connections {
            attempted: m.started,
            connected: s.connected,
            failed: s.conn_failed,
            dropped: shared.dropped.load(Relaxed),
            rate_per_s: s.connected as f64 / m.connect_secs.max(1e-9),
            handshake_ms: Percentiles::of_micros(&hs),
        },
        sent: s.sent,
        acknowledged: s.acked,
        rejected: shared.rejected.load(Relaxed),
        received: s.received,
        duplicates: shared.duplicates.load(Relaxed),
        unexpected: shared.unexpected.load(Relaxed),
        lost,
        not_received,
        sent_per_s: rate(m.before.sent, m.at_stop.sent),
        ingested_per_s: shared.drained_at(n_pubs).map(|t| {
            let secs = t
                .saturating_duration_since(m.run_start.into_std())
                .as_secs_f64();
            (m.at_stop.sent - m.before.sent) as f64 / secs.max(1e-9)
        }),
        received_per_s: rate(m.before.received, m.at_stop.received),
        latency_ms: Percentiles::of_micros(&lat),
        bench_cpu_percent: m.usage.bench_cpu,
        bench_threads: plan.threads,
        broker: m.usage.broker,
        errors: shared
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    }
}

/// Paces connection attempts at a fixed rate.
struct Pacer {
    period: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            period: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        if let Some(p) = self.period {
            tokio::time::sleep_until(self.next).await;
            self.next += p;
        }
    }
}

/// CPU and RSS of the bench and the broker over the measured window.
struct Watcher {
    broker_pid: Option<u32>,
    rss_start: u64,
    rss_peak: u64,
    connect_start: (Instant, ProcSample, Option<ProcSample>),
    window: (Instant, ProcSample, Option<ProcSample>),
}

/// What [`Watcher::end_window`] measured.
struct Usage {
    bench_cpu: f64,
    broker: Option<BrokerUsage>,
}

impl Watcher {
    fn start(plan: &Plan) -> Result<Watcher, BenchError> {
        let me = procfs::sample(None).map_err(BenchError::Proc)?;
        let broker = match plan.broker_pid {
            Some(pid) => Some(procfs::sample(Some(pid)).map_err(BenchError::Proc)?),
            None => None,
        };
        let now = (Instant::now(), me, broker);
        Ok(Watcher {
            broker_pid: plan.broker_pid,
            rss_start: broker.map_or(0, |b| b.rss_bytes),
            rss_peak: broker.map_or(0, |b| b.rss_bytes),
            connect_start: now,
            window: now,
        })
    }

    fn broker_sample(&self) -> Option<ProcSample> {
        self.broker_pid.and_then(|p| procfs::sample(Some(p)).ok())
    }

    fn sample_peak(&mut self) {
        if let Some(b) = self.broker_sample() {
            self.rss_peak = self.rss_peak.max(b.rss_bytes);
        }
    }

    fn restart_window(&mut self) {
        let me = procfs::sample(None).unwrap_or(self.window.1);
        self.window = (Instant::now(), me, self.broker_sample());
    }

    /// For `conn`: the window covers connecting and holding.
    fn restart_window_at_connect_start(&mut self) {
        self.window = self.connect_start;
    }

    fn end_window(&mut self) -> Usage {
        let secs = self.window.0.elapsed().as_secs_f64();
        let me = procfs::sample(None).unwrap_or(self.window.1);
        let bench_cpu = procfs::cpu_percent(&self.window.1, &me, secs);
        let broker = match (self.broker_pid, self.window.2, self.broker_sample()) {
            (Some(pid), Some(before), Some(now)) => {
                self.rss_peak = self.rss_peak.max(now.rss_bytes);
                Some(BrokerUsage {
                    pid,
                    cpu_percent: procfs::cpu_percent(&before, &now, secs),
                    rss_start: self.rss_start,
                    rss_peak: self.rss_peak,
                    rss_end: now.rss_bytes,
                })
            }
            _ => None,
        };
        Usage { bench_cpu, broker }
    }
}

/// A seed for the run id: time and PID.
fn procfs_seed() -> u64 {
    crate::payload::now_ns() ^ ((std::process::id() as u64) << 32)
}

/// Redraws one status line on stderr every second.
async fn progress_line(scenario: Scenario, shared: Arc<Shared>, broker_pid: Option<u32>, n: u64) {
    let start = Instant::now();
    let mut prev = (Instant::now(), shared.snapshot());
    let mut me_prev = procfs::sample(None).ok();
    let mut broker_prev = broker_pid.and_then(|p| procfs::sample(Some(p)).ok());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (Instant::now(), shared.snapshot());
        let secs = now.0.duration_since(prev.0).as_secs_f64().max(1e-9);
        let per_s = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
        let me = procfs::sample(None).ok();
        let broker = broker_pid.and_then(|p| procfs::sample(Some(p)).ok());
        let cpu = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.0}%", procfs::cpu_percent(&a, &b, secs)),
            _ => "?".into(),
        };
        let p99 = {
            let h = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
            Percentiles::of_micros(&h).map_or("-".into(), |p| format!("{:.2}ms", p.p99))
        };
        let mut line = format!(
            "{scenario:?} {:>5.0}s  conn {}/{n} ({} failed)  sent {:.0}/s  recv {:.0}/s  p99 {p99}  bench cpu {}",
            start.elapsed().as_secs_f64(),
            now.1.connected,
            now.1.conn_failed,
            per_s(prev.1.sent, now.1.sent),
            per_s(prev.1.received, now.1.received),
            cpu(me_prev, me),
        );
        if broker_pid.is_some() {
            line.push_str(&format!(
                "  broker cpu {} rss {:.1} MiB",
                cpu(broker_prev, broker),
                broker.map_or(0.0, |b| mib(b.rss_bytes))
            ));
        }
        eprint!("\r\x1b[K{line}");
        prev = now;
        me_prev = me;
        broker_prev = broker;
    }
}
