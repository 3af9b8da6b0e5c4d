//! `astramq bench`: a load generator for MQTT brokers, in the spirit of emqtt-bench.
//!
//! Scenarios `conn`, `pub`, `sub`, `fanin`, `fanout` and `pairs` run thousands of
//! connections per core on a lean client built on our own codec, and report what was
//! sent, acknowledged, received, duplicated and — exactly — lost, with end-to-end
//! latency percentiles and the CPU and memory of both the broker and the bench.
//!
//! - [`args`]: the flags ([`BenchArgs`]) and their check into a [`args::Plan`].
//! - [`layout`]: which clients a scenario needs, on which node, from which address.
//! - [`client`]: the lean MQTT client, one task per connection.
//! - [`tls`]: TLS for it (`--tls-ca`), rustls driven over the non-blocking socket.
//! - [`ws`]: WebSocket for it (`--ws-path`): the upgrade and binary frames.
//! - [`payload`]: the stamp (run, publisher, sequence, send time) in every payload.
//! - [`seqset`]: sequence bitmaps and the exact loss count.
//! - [`stats`]: counters and histograms shared by the connection tasks.
//! - [`procfs`]: RSS and CPU time from `/proc`, and the open-file limit.
//! - [`runner`]: one run — connect, publish, drain, account.
//! - [`flood`]: the `flood` scenario — a QoS 0 flood and QoS 1 probes, two runs at once.
//! - [`report`]: the [`Report`], as a JSON line and as a summary.

pub mod args;
pub mod client;
pub mod flood;
pub mod layout;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod seqset;
pub mod stats;
pub mod tls;
pub mod ws;

use std::io;

use thiserror::Error;

pub use args::BenchArgs;
pub use report::Report;

/// Why a run could not start or finish.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Arguments that parse but cannot be used.
    #[error("{0}")]
    InvalidArgs(String),
    /// The open-file limit could not be read or raised.
    #[error("cannot raise the open-file limit: {0}")]
    Limit(io::Error),
    /// `/proc` could not be read (for the bench itself or `--broker-pid`).
    #[error("cannot read /proc: {0}")]
    Proc(io::Error),
    /// The tokio runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
}

/// Runs `args` on a runtime of its own, printing progress on a terminal, a summary on
/// stderr and the JSON report on stdout.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    if plan.scenario == args::Scenario::Flood {
        let (flood, probe) = runtime.block_on(flood::execute(plan))?;
        eprintln!("flood:\n{}\nprobe:\n{}", flood.summary(), probe.summary());
        println!(
            "{{\"scenario\":\"flood\",\"flood\":{},\"probe\":{}}}",
            flood.to_json(),
            probe.to_json()
        );
        return Ok(());
    }
    let report = runtime.block_on(runner::execute(plan))?;
    eprintln!("{}", report.summary());
    println!("{}", report.to_json());
    Ok(())
}
