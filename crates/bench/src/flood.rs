//! The `flood` scenario: what one set of flooding clients does to everyone else.
//!
//! Two runs of `pairs` clients at once, in one process: `--count` QoS 0 pairs publishing as fast
//! as the socket allows (the flood), and `--probes` QoS 1 pairs at `--probe-rate`
//! messages a second (the probe). The probe starts once the flood has run for a
//! second and stops a second before it, so every probe message crosses a flooded
//! broker. Every subscriber is on the first of `--hosts` and every publisher on the
//! second (see [`crate::layout`]): `--hosts N2,N1` floods from N1 to N2. The probe's latency and loss are
//! the numbers that matter; the flood's tell how much of it got through.

use std::time::Duration;

use mqtt::QoS;

use crate::args::Plan;
use crate::runner;
use crate::{BenchError, Report};

/// How long the flood runs before the probe starts, and after it stops.
const MARGIN: Duration = Duration::from_secs(1);

/// Runs the flood and the probe; returns their reports (flood, probe).
pub async fn execute(plan: Plan) -> Result<(Report, Report), BenchError> {
    let (flood, probe) = plans(&plan);
    let flood = tokio::spawn(runner::execute(flood));
    tokio::time::sleep(MARGIN).await;
    let probe = runner::execute(probe).await;
    let flood = flood
        .await
        .map_err(|e| BenchError::InvalidArgs(format!("flood run failed: {e}")))??;
    Ok((flood, probe?))
}

/// The two runs `plan` stands for (both keep the `flood` scenario: its layout).
fn plans(plan: &Plan) -> (Plan, Plan) {
    let flood = Plan {
        qos: QoS::AtMostOnce,
        rate: None,
        duration: plan.duration + MARGIN * 2,
        topic: format!("{}/flood", plan.topic),
        client_id_prefix: format!("{}-flood", plan.client_id_prefix),
        progress: false,
        ..plan.clone()
    };
    let probe = Plan {
        count: plan.probes,
        qos: QoS::AtLeastOnce,
        rate: Some(plan.probe_rate),
        topic: format!("{}/probe", plan.topic),
        client_id_prefix: format!("{}-probe", plan.client_id_prefix),
        // The broker's RSS and CPU are reported once, with the flood.
        broker_pid: None,
        progress: false,
        ..plan.clone()
    };
    (flood, probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::BenchArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn flood_is_two_pairs_runs_with_the_probe_inside_the_flood() {
        let args = Cli::try_parse_from(
            "bench flood -n 50 --probes 20 --probe-rate 10 -d 10s --hosts 127.0.0.1:1,127.0.0.1:2"
                .split_whitespace(),
        )
        .unwrap()
        .args;
        let (flood, probe) = plans(&args.plan().unwrap());
        assert_eq!((flood.count, flood.qos), (50, QoS::AtMostOnce));
        let l = crate::layout::layout(&flood);
        let (n2, n1) = (flood.hosts[0], flood.hosts[1]);
        assert!(l.subscribers.iter().all(|s| s.host == n2));
        assert!(l.publishers.iter().all(|p| p.host == n1));
        assert_eq!(flood.rate, None);
        assert_eq!(
            (probe.count, probe.qos, probe.rate),
            (20, QoS::AtLeastOnce, Some(10.0))
        );
        assert_eq!(flood.duration, probe.duration + MARGIN * 2);
        assert_ne!(flood.client_id_prefix, probe.client_id_prefix);
        assert_ne!(flood.topic, probe.topic);
        let bad = Cli::try_parse_from("bench flood --probes 0".split_whitespace())
            .unwrap()
            .args;
        assert!(bad.plan().is_err());
    }
}
