//! Shared subscriptions across nodes: each message reaches exactly one member of a
//! group whose members are on different nodes.

use super::*;

// 5:§4.8.2 a message published to a shared subscription goes to exactly one of the
// sessions in the group — cluster-wide, with one member on each of three nodes and
// publishers on every node. Every message reaches some member (invariant 1), none
// twice; an ordinary subscriber still gets everything.
async fn shared_subscription_exactly_one_member_cluster_wide(v: Version) {
    let c = TestCluster::start(3).await;
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = c.client(i, v, &format!("member-{i}")).await;
        m.sub("$share/g/s/#", 1).await;
        members.push(m);
    }
    let mut all = c.client(2, v, "observer").await;
    all.sub("s/#", 1).await;
    for i in 0..3 {
        c.sync_from(i).await;
    }

    const N: usize = 30;
    let mut want = HashSet::new();
    for i in 0..3 {
        let mut p = c.client(i, v, &format!("pub-{i}")).await;
        for k in 0..N {
            let m = format!("n{i}-{k}");
            p.publish(&format!("s/{i}"), m.as_bytes(), 1, false).await;
            want.insert(m);
        }
    }

    let mut got: Vec<(usize, String)> = Vec::new();
    let deadline = Instant::now() + T * 2;
    while got.len() < want.len() && Instant::now() < deadline {
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(p) = try_recv_publish(m, Duration::from_millis(20)).await {
                got.push((i, p.payload_str()));
            }
        }
    }
    for m in &mut members {
        m.expect_no_publish_default().await;
    }
    let mut per_member = BTreeMap::new();
    for (i, _) in &got {
        *per_member.entry(*i).or_insert(0) += 1;
    }
    eprintln!("messages per member: {per_member:?}");
    let unique: HashSet<String> = got.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "a message went to more than one member"
    );
    assert_eq!(unique, want, "every message reaches exactly one member");
    let seen: HashSet<String> = payloads(&all.recv_publishes(want.len(), T).await)
        .into_iter()
        .collect();
    assert_eq!(seen, want, "the ordinary subscriber gets every message");
}
versions_test!(shared_subscription_exactly_one_member_cluster_wide);
