//! Client-id takeover across nodes (invariant 2): a CONNECT on one node takes over the
//! id connected on another; racing connects leave exactly one live connection.

use super::*;

// Invariant 2, [MQTT-3.1.4-3]: a CONNECT on n2 with the id of a client connected to
// n1 takes the session over: n1 disconnects the old connection (MQTT 5: DISCONNECT
// 0x8E Session taken over, then close; 3.1.1: close), the new one lives and owns
// the id in Redis, and messages reach it.
async fn takeover_across_nodes(v: Version) {
    let c = TestCluster::start(2).await;
    let mut old = c.client(0, v, "dup-id").await;
    assert_eq!(c.session_owner("dup-id").as_deref(), Some(c.id(0)));
    let mut new = c.client(1, v, "dup-id").await;
    old.expect_disconnect(rc::SESSION_TAKEN_OVER, T).await;
    new.ping().await;
    assert_eq!(c.session_owner("dup-id").as_deref(), Some(c.id(1)));

    new.sub("tk/#", 1).await;
    c.sync_feed(1, 0).await;
    let mut p = c.client(0, v, "pub").await;
    p.publish("tk/x", b"to-new", 1, false).await;
    assert_eq!(new.recv_publish(T).await.payload, b"to-new");
}

#[tokio::test]
async fn takeover_across_nodes_v5_0x8e() {
    takeover_across_nodes(Version::V5).await
}

#[tokio::test]
async fn takeover_across_nodes_v311_closed() {
    takeover_across_nodes(Version::V311).await
}

// Invariant 2: two clients racing to connect with one id on two nodes end with
// exactly one live connection, and Redis names that connection's node as the owner
// (epoch fencing). The loser, if it had been accepted, is told 0x8E (MQTT 5). Sixteen
// ids race at once.
async fn racing_connects_same_id_two_nodes_leave_one_live(v: Version) {
    let c = TestCluster::start(2).await;
    let (a, b) = (c.node(0).addr(), c.node(1).addr());
    let mut races = Vec::new();
    for r in 0..16 {
        let id = format!("race-{r}");
        races.push(tokio::spawn(async move {
            let ((mut ca, acka), (mut cb, ackb)) = tokio::join!(
                try_connect(a, Connect::new(v, &id), T),
                try_connect(b, Connect::new(v, &id), T)
            );
            let accepted = [
                acka.is_some_and(|x| x.code == 0),
                ackb.is_some_and(|x| x.code == 0),
            ];
            assert!(accepted.iter().any(|x| *x), "{id}: both CONNECTs refused");
            let mut discs = [Vec::new(), Vec::new()];
            let deadline = Instant::now() + T;
            let winner = loop {
                let live = [
                    answers_ping(&mut ca, &mut discs[0]).await,
                    answers_ping(&mut cb, &mut discs[1]).await,
                ];
                match live {
                    [true, false] => break 0,
                    [false, true] => break 1,
                    [false, false] => panic!("{id}: no connection left alive"),
                    [true, true] => assert!(
                        Instant::now() < deadline,
                        "{id}: two live connections {T:?} after racing CONNECTs"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let loser = 1 - winner;
            if v.is_v5() && accepted[loser] {
                assert_eq!(
                    discs[loser],
                    [rc::SESSION_TAKEN_OVER],
                    "{id}: the accepted loser is told 0x8E"
                );
            }
            // The winner stays.
            tokio::time::sleep(ABSENCE).await;
            let survivor = if winner == 0 { &mut ca } else { &mut cb };
            assert!(
                answers_ping(survivor, &mut Vec::new()).await,
                "{id}: the surviving connection was closed later"
            );
            (id, winner, ca, cb)
        }));
    }
    let mut keep = Vec::new();
    for r in races {
        let (id, winner, ca, cb) = r.await.unwrap();
        assert_eq!(
            c.session_owner(&id).as_deref(),
            Some(c.id(winner)),
            "{id}: Redis owner is the node of the live connection"
        );
        keep.push((ca, cb));
    }
}
versions_test!(racing_connects_same_id_two_nodes_leave_one_live);
