//! Matching one PUBLISH topic against a 100k-subscription [`TopicTree`]: the per-message
//! cost of fan-out lookup in the broker.

use std::hint::black_box;
use std::time::Duration;

use astramq_mqtt::topic::{parse_shared, TopicTree};
use criterion::{criterion_group, criterion_main, Criterion};

/// Subscriber key as the broker might use it: a client (or share group) id.
type Key = u32;

/// 100,000 subscriptions over 1,000 sites, mixing exact filters with `+`, `#`,
/// shared and root-wildcard ones, so a matching topic crosses several branches.
fn build() -> TopicTree<Key, u8> {
    let mut tree = TopicTree::new();
    let mut key: Key = 0;
    let mut add = |tree: &mut TopicTree<Key, u8>, filter: &str| {
        // Shared subscriptions are indexed under their inner filter.
        let filter = match parse_shared(filter) {
            Ok(Some((_, inner))) => inner.to_owned(),
            Ok(None) => filter.to_owned(),
            Err(()) => panic!("bad filter {filter}"),
        };
        tree.insert(&filter, key, 1);
        key += 1;
    };
    for i in 0..1_000 {
        // 90k exact device subscriptions.
        for j in 0..90 {
            add(&mut tree, &format!("site/{i}/device/{j}/temp"));
        }
        // 5k: five site dashboards with `+` levels.
        for _ in 0..5 {
            add(&mut tree, &format!("site/{i}/+/+/temp"));
        }
        // 2k: two per-site archivers with `#`.
        for _ in 0..2 {
            add(&mut tree, &format!("site/{i}/#"));
        }
        // 2k: shared-subscription workers, two groups per site.
        for g in 0..2 {
            add(&mut tree, &format!("$share/g{g}/site/{i}/device/+/temp"));
        }
        // 1k: filters starting with a wildcard.
        add(&mut tree, &format!("+/{i}/device/#"));
    }
    assert_eq!(tree.len(), 100_000);
    tree
}

fn bench(c: &mut Criterion) {
    let tree = build();
    let mut group = c.benchmark_group("topic_tree_100k");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));

    // (name, topic, expected matches)
    let cases = [
        // exact 1 + "+/+" 5 + "#" 2 + shared 2 + "+/{i}/device/#" 1
        ("hit", "site/500/device/42/temp", 11),
        ("hit_no_exact", "site/500/device/95/temp", 10),
        ("miss_site", "site/5000/device/42/temp", 0),
        ("miss_root", "factory/1/line/2/temp", 0),
        ("dollar", "$SYS/broker/load", 0),
    ];
    for (name, topic, expected) in cases {
        let mut n = 0;
        tree.for_each_match(topic, |_, _, _| n += 1);
        assert_eq!(n, expected, "{topic}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                tree.for_each_match(black_box(topic), |f, k, v| {
                    black_box((f, k, v));
                    n += 1;
                });
                n
            })
        });
    }

    // Subscription churn on the populated tree: subscribe then unsubscribe a filter
    // whose nodes must be created and pruned each time.
    let mut tree = tree;
    group.bench_function("insert_remove", |b| {
        b.iter(|| {
            tree.insert(black_box("site/7/device/new/temp"), 999_999, 1);
            tree.remove(black_box("site/7/device/new/temp"), &999_999)
        })
    });
    group.finish();
}

// `criterion_group!` defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, bench);
}
use group::benches;
criterion_main!(benches);
