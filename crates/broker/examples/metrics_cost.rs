//! What the publish path pays per delivery for metrics (docs/admin.md), on one
//! thread and on two sharing the handles. A measurement, not a test:
//! `cargo run --release -p astramq-broker --example metrics_cost`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use astramq_broker::metrics::Metrics;

fn main() {
    let m = Arc::new(Metrics::new());
    let n: u32 = 20_000_000;
    let run = move |m: &Metrics| {
        let start = Instant::now();
        for i in 0..n {
            m.sent(mqtt::QoS::AtLeastOnce);
            m.delivery_latency
                .observe(Duration::from_nanos(u64::from(i % 5_000) * 997));
        }
        start.elapsed() / n
    };
    println!("one thread: {:?} per delivery (sent + latency)", run(&m));
    let other = {
        let m = m.clone();
        std::thread::spawn(move || run(&m))
    };
    let here = run(&m);
    let there = other.join().expect("measuring thread");
    println!("two threads, shared handles: {here:?} and {there:?} per delivery");
    assert_eq!(m.delivery_latency.count(), 3 * u64::from(n));
}
