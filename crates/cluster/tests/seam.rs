//! The seam between a broker and its cluster node, on a real `redis-server`: the
//! broker owns the node (its peers and session store), the node holds the broker
//! only through a `BrokerHandle`, so dropping the broker frees it and the node's
//! tasks stop using it — no reference cycle keeps either alive.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use astramq_cluster::ClusterNode;
use broker::auth::Authenticator;
use broker::broker::Broker;
use broker::config::Config;
use broker::handle::LocalBroker;
use common::redis_server;

#[tokio::test]
async fn a_dropped_broker_is_freed_although_its_cluster_node_runs() {
    let (_server, redis) = redis_server().await;
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = Config {
        node_id: Some("seam-1".into()),
        redis: Some(redis.url().to_string()),
        gossip_listen: gossip,
        ..Config::default()
    };
    let settings = config.cluster_settings().expect("redis is set");
    let auth = Authenticator::load(&config).expect("anonymous access");
    let broker = Broker::new(config, auth);
    let node = ClusterNode::start(&settings, &LocalBroker::of(&broker), vec![], vec![])
        .await
        .expect("joins the cluster");
    broker.set_cluster(node.clone());
    assert_eq!(broker.peers().mode(), "cluster");

    let weak = Arc::downgrade(&broker);
    drop(broker);
    // The node's tasks hold the broker only while they use it (the feed reader
    // across one blocking read of up to a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while weak.upgrade().is_some() {
        assert!(
            Instant::now() < deadline,
            "the broker is still alive 10 s after its last owner dropped it: something in the cluster holds it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;
}
