//! Gossip membership over real UDP on 127.0.0.1.
//!
//! Every wait is a condition with a deadline (`wait_members`, `wait_event`,
//! `wait_until`), never a fixed sleep. Timings are printed (`--nocapture`) so a
//! run doubles as a measurement.

use std::net::SocketAddr;
use std::time::Duration;

use astramq_membership::{
    spawn, Member, MemberEvent, MembershipConfig, MembershipHandle, NodeMeta, Role,
};
use tokio::sync::broadcast;
use tokio::time::{timeout, Instant};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn broker_meta(port: u16) -> NodeMeta {
    NodeMeta {
        role: Role::Broker,
        mqtt: vec![addr(&format!("127.0.0.1:{port}"))],
        admin: Some(addr(&format!("127.0.0.1:{}", port + 1000))),
        connections: 0,
        proxy: vec![addr(&format!("127.0.0.1:{}", port + 2000))],
        listeners: Vec::new(),
    }
}

fn config(id: &str, join: &[&MembershipHandle], meta: NodeMeta) -> MembershipConfig {
    MembershipConfig {
        join: join.iter().map(|h| h.local_addr()).collect(),
        meta,
        ..MembershipConfig::for_test(id)
    }
}

async fn start(config: MembershipConfig) -> MembershipHandle {
    spawn(config).await.expect("membership starts")
}

/// Waits until `pred` holds for `node`'s member list.
async fn wait_members(
    node: &MembershipHandle,
    within: Duration,
    what: &str,
    pred: impl Fn(&[Member]) -> bool,
) -> Vec<Member> {
    let mut rx = node.members();
    let deadline = Instant::now() + within;
    loop {
        {
            let members = rx.borrow_and_update();
            if pred(&members) {
                return members.clone();
            }
        }
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.changed(),
        )
        .await
        {
            Ok(Ok(())) => {}
            _ => panic!(
                "{}: timed out after {within:?} waiting for {what}; members: {:?}",
                node.node_id(),
                *rx.borrow()
            ),
        }
    }
}

/// Waits for the first event matching `pred`.
async fn wait_event(
    rx: &mut broadcast::Receiver<MemberEvent>,
    within: Duration,
    what: &str,
    pred: impl Fn(&MemberEvent) -> bool,
) -> MemberEvent {
    let deadline = Instant::now() + within;
    loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        {
            Ok(Ok(event)) if pred(&event) => return event,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream broke while waiting for {what}: {e}"),
            Err(_) => panic!("timed out after {within:?} waiting for {what}"),
        }
    }
}

/// Polls `cond` every 20 ms until it holds (for state that has no channel).
async fn wait_until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(members: &[Member]) -> Vec<&str> {
    members.iter().map(|m| m.node_id.as_str()).collect()
}

/// a, b (brokers) and lb (a load balancer); b and lb know only a.
async fn three_nodes() -> [MembershipHandle; 3] {
    let a = start(config("a", &[], broker_meta(1883))).await;
    let b = start(config("b", &[&a], broker_meta(1884))).await;
    let lb = start(config("lb", &[&a], NodeMeta::load_balancer())).await;
    for (node, others) in [(&a, ["b", "lb"]), (&b, ["a", "lb"]), (&lb, ["a", "b"])] {
        wait_members(node, Duration::from_secs(3), "the other two", |m| {
            ids(m) == others
        })
        .await;
    }
    [a, b, lb]
}

#[tokio::test]
async fn whole_cluster_is_discovered_from_one_seed_with_metadata() {
    let started = Instant::now();
    let [a, b, lb] = three_nodes().await;
    println!("3 nodes converged in {:?}", started.elapsed());

    // The load balancer sees both brokers with what they advertise.
    let seen = lb.members().borrow().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].node_id, "a");
    assert_eq!(seen[0].meta, broker_meta(1883));
    assert_eq!(seen[0].gossip_addr, a.local_addr());
    assert_eq!(seen[0].generation, a.generation());
    assert_eq!(seen[1].meta, broker_meta(1884));
    // b (which only knew a) sees the load balancer as such.
    let from_b = b.members().borrow().clone();
    let lb_seen = from_b.iter().find(|m| m.node_id == "lb").unwrap();
    assert_eq!(lb_seen.meta.role, Role::LoadBalancer);
    assert_eq!(lb_seen.gossip_addr, lb.local_addr());
}

#[tokio::test]
async fn connection_count_change_reaches_everyone_within_a_second() {
    let [a, b, lb] = three_nodes().await;
    let started = Instant::now();
    b.set_connections(42);
    for node in [&a, &lb] {
        wait_members(
            node,
            Duration::from_secs(1),
            "b advertising 42 connections",
            |m| {
                m.iter()
                    .any(|m| m.node_id == "b" && m.meta.connections == 42)
            },
        )
        .await;
    }
    println!("connection count propagated in {:?}", started.elapsed());
}

#[tokio::test]
async fn clean_leave_is_reported_as_left_promptly() {
    let [a, b, lb] = three_nodes().await;
    let mut a_events = a.events();
    let mut lb_events = lb.events();
    let started = Instant::now();
    b.leave().await;
    for events in [&mut a_events, &mut lb_events] {
        let event = wait_event(events, Duration::from_secs(1), "b left", |e| {
            matches!(e, MemberEvent::Left { node_id, .. } | MemberEvent::Down { node_id, .. } if node_id == "b")
        })
        .await;
        assert!(
            matches!(event, MemberEvent::Left { .. }),
            "expected Left, got {event:?}"
        );
    }
    println!("leave seen by both in {:?}", started.elapsed());
    assert_eq!(ids(&a.members().borrow()), ["lb"]);
    assert_eq!(ids(&lb.members().borrow()), ["a"]);
}

#[tokio::test]
async fn crashed_node_is_down_within_three_seconds_with_default_timers() {
    // Default timers (not for_test): this is the detection time the docs promise.
    let lan = |id: &str, join: &[&MembershipHandle]| MembershipConfig {
        join: join.iter().map(|h| h.local_addr()).collect(),
        ..MembershipConfig::new(id, addr("127.0.0.1:0"), NodeMeta::broker())
    };
    let a = start(lan("a", &[])).await;
    let b = start(lan("b", &[&a])).await;
    let c = start(lan("c", &[&a])).await;
    for node in [&a, &b, &c] {
        wait_members(node, Duration::from_secs(3), "3 members", |m| m.len() == 2).await;
    }
    let mut a_events = a.events();
    let mut b_events = b.events();

    // A crash: the task stops and the socket closes with nothing announced.
    let crashed_at = Instant::now();
    drop(c);
    for (name, events) in [("a", &mut a_events), ("b", &mut b_events)] {
        let event = wait_event(events, Duration::from_secs(3), "c down", |e| {
            matches!(e, MemberEvent::Down { node_id, .. } | MemberEvent::Left { node_id, .. } if node_id == "c")
        })
        .await;
        assert!(
            matches!(event, MemberEvent::Down { .. }),
            "a crash is not a leave: {event:?}"
        );
        println!("{name} detected the crash in {:?}", crashed_at.elapsed());
    }
    assert_eq!(ids(&a.members().borrow()), ["b"]);
}

#[tokio::test]
async fn members_with_another_cluster_key_never_see_each_other() {
    let keyed = |id: &str, join: &[&MembershipHandle], key: Option<&str>| MembershipConfig {
        cluster_key: key.map(str::to_owned),
        ..config(id, join, NodeMeta::broker())
    };
    let a = start(keyed("a", &[], Some("right key"))).await;
    let b = start(keyed("b", &[&a], Some("right key"))).await;
    for node in [&a, &b] {
        wait_members(node, Duration::from_secs(3), "its peer", |m| m.len() == 1).await;
    }
    // Both strangers try to join through a (and keep retrying while alone).
    let wrong = start(keyed("wrong", &[&a], Some("wrong key"))).await;
    let unkeyed = start(keyed("unkeyed", &[&a], None)).await;

    let before = a.stats().rejected_auth;
    wait_until(
        Duration::from_secs(3),
        "a rejecting several stranger datagrams",
        || a.stats().rejected_auth >= before + 6,
    )
    .await;
    assert_eq!(ids(&a.members().borrow()), ["b"]);
    assert_eq!(ids(&b.members().borrow()), ["a"]);
    // And the other way round: a's replies (if any) would not verify for them.
    assert!(wrong.members().borrow().is_empty());
    assert!(unkeyed.members().borrow().is_empty());
    assert_eq!(wrong.stats().rejected_invalid, 0);
}

#[tokio::test]
async fn restarted_node_with_the_same_id_and_address_is_up_again() {
    let a = start(config("a", &[], broker_meta(1883))).await;
    let b = start(config("b", &[&a], broker_meta(1884))).await;
    wait_members(&a, Duration::from_secs(3), "b", |m| ids(m) == ["b"]).await;
    let (old_generation, b_addr) = (b.generation(), b.local_addr());
    let mut events = a.events();

    drop(b); // crash
    let restarted_at = Instant::now();
    // The crashed task releases the port as soon as it notices the drop.
    let mut b2 = None;
    while b2.is_none() {
        let restart = MembershipConfig {
            listen: b_addr,
            ..config("b", &[&a], broker_meta(1884))
        };
        match spawn(restart).await {
            Ok(handle) => b2 = Some(handle),
            Err(_) if restarted_at.elapsed() < Duration::from_secs(2) => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("cannot rebind {b_addr}: {e}"),
        }
    }
    let b2 = b2.unwrap();
    assert!(b2.generation() > old_generation);

    // The new generation's Up: under load `a` may first emit an Up of the old one
    // (it suspected the old `b` just before the crash, and a late message from it
    // refuted that), which says nothing about the restart.
    let generation = b2.generation();
    wait_event(
        &mut events,
        Duration::from_secs(3),
        "b up again",
        |e| matches!(e, MemberEvent::Up(m) if m.node_id == "b" && m.generation == generation),
    )
    .await;
    println!("restart seen as Up in {:?}", restarted_at.elapsed());
    wait_members(&a, Duration::from_secs(1), "only the new b", |m| {
        m.len() == 1 && m[0].generation == b2.generation()
    })
    .await;
    wait_members(&b2, Duration::from_secs(3), "a", |m| ids(m) == ["a"]).await;
}

/// Regression test for false failure detection: a member whose *caller's* runtime is
/// starved (every worker busy in synchronous code, as a debug build under load, a
/// big fan-out or a blocking call can do) must still answer probes, because the
/// protocol runs on its own thread. With the gossip task on the caller's runtime,
/// `b` declared `a` down after about a second of this.
#[test]
fn member_on_a_starved_runtime_is_not_declared_down() {
    // `b`, the observer, on a runtime of its own.
    let observer_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // `a` is started from a one-worker runtime that will then be kept busy.
    let busy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let b = observer_rt.block_on(start(config("b", &[], broker_meta(1884))));
    let a = busy_rt.block_on(start(config("a", &[&b], broker_meta(1883))));
    let mut events = observer_rt.block_on(async {
        wait_members(&b, Duration::from_secs(3), "a", |m| ids(m) == ["a"]).await;
        b.events()
    });

    // Starve `a`'s runtime: its only worker spins for several detection periods
    // (for_test timers: a silent member is down after ~1 s).
    let starve = Duration::from_secs(3);
    busy_rt.spawn(async move {
        let until = std::time::Instant::now() + starve;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    });
    observer_rt.block_on(async {
        let deadline = Instant::now() + starve + Duration::from_millis(500);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, events.recv()).await {
                Err(_) => break,
                Ok(Ok(MemberEvent::Down { node_id, .. })) => {
                    panic!("{node_id} declared down while its runtime was busy")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("event stream broke: {e}"),
            }
        }
        assert_eq!(ids(&b.members().borrow()), ["a"]);
    });
    let stats = a.stats();
    println!(
        "a's largest timer lag while its caller's runtime was starved: {:?}",
        stats.max_timer_lag
    );
    drop(a);
    drop(b);
}
