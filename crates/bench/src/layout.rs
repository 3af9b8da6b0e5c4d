//! Which clients a scenario needs: their roles, topics, nodes and source addresses.
//!
//! Pure: [`layout`] turns a [`Plan`] into client specifications; the runner connects
//! them. Subscribers are placed round robin from the first host, publishers from the
//! second, so with several `--hosts` publisher *i* and its subscriber *i* sit on
//! different nodes and every message crosses the cluster.

use std::net::{IpAddr, SocketAddr};

use crate::args::{Plan, Scenario};

/// What one connection does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Connects and holds the connection (keep alive only).
    Idle,
    /// Publishes to `topic`.
    Publisher {
        /// Index of the publisher, carried in every payload.
        index: u32,
        /// Topic name.
        topic: String,
    },
    /// Subscribes to `filter`.
    Subscriber {
        /// Index of the subscriber.
        index: u32,
        /// Topic filter.
        filter: String,
        /// Whose messages it must receive.
        expects: Expects,
    },
}

/// The publishers a subscriber must hear from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expects {
    /// These publisher indices, every acknowledged message of each.
    Publishers(Vec<u32>),
    /// Whoever publishes (the `sub` scenario: publishers run elsewhere).
    Any,
}

/// One connection to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// Client identifier.
    pub client_id: String,
    /// Broker address.
    pub host: SocketAddr,
    /// Local address to bind, if any.
    pub source: Option<IpAddr>,
    /// What it does once connected.
    pub role: Role,
}

/// All connections of a run, in the order they are made.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Connected and subscribed first, so no message precedes its subscription.
    pub subscribers: Vec<ClientSpec>,
    /// Connected next.
    pub publishers: Vec<ClientSpec>,
    /// `conn` scenario connections.
    pub idle: Vec<ClientSpec>,
    /// For each publisher index, how many subscribers must receive its messages.
    pub fan: Vec<u32>,
}

/// The connections `plan` calls for.
pub fn layout(plan: &Plan) -> Layout {
    let n = plan.count;
    let t = &plan.topic;
    let mut b = Builder {
        plan,
        made: 0,
        out: Layout::default(),
        // `flood`: every subscriber on the first host, every publisher on the second.
        fixed: plan.scenario == Scenario::Flood,
    };
    match plan.scenario {
        Scenario::Conn => {
            for i in 0..n {
                let spec = b.spec(format!("c{i}"), i as usize, Role::Idle);
                b.out.idle.push(spec);
            }
        }
        Scenario::Pub => b.publishers(n, |i| format!("{t}/pub/{i}")),
        Scenario::Sub => b.subscribers(n, |_| t.clone(), |_| Expects::Any),
        Scenario::Fanin => {
            b.subscribers(
                1,
                |_| format!("{t}/fanin/#"),
                |_| Expects::Publishers((0..n).collect()),
            );
            b.publishers(n, |i| format!("{t}/fanin/{i}"));
        }
        Scenario::Fanout => {
            b.subscribers(
                n,
                |_| format!("{t}/fanout"),
                |_| Expects::Publishers(vec![0]),
            );
            b.publishers(1, |_| format!("{t}/fanout"));
        }
        // `flood` runs as two `pairs` plans (see `crate::flood`).
        Scenario::Pairs | Scenario::Flood => {
            b.subscribers(
                n,
                |i| format!("{t}/pairs/{i}"),
                |i| Expects::Publishers(vec![i]),
            );
            b.publishers(n, |i| format!("{t}/pairs/{i}"));
        }
    }
    let mut out = b.out;
    out.fan = vec![0; out.publishers.len()];
    for s in &out.subscribers {
        if let Role::Subscriber {
            expects: Expects::Publishers(ps),
            ..
        } = &s.role
        {
            for &p in ps {
                out.fan[p as usize] += 1;
            }
        }
    }
    out
}

struct Builder<'a> {
    plan: &'a Plan,
    made: usize,
    out: Layout,
    /// Subscribers all on the first host and publishers all on the second, instead of
    /// round robin.
    fixed: bool,
}

impl Builder<'_> {
    /// Subscribers `0..count`, placed from the first host.
    fn subscribers(
        &mut self,
        count: u32,
        filter: impl Fn(u32) -> String,
        expects: impl Fn(u32) -> Expects,
    ) {
        for i in 0..count {
            let role = Role::Subscriber {
                index: i,
                filter: filter(i),
                expects: expects(i),
            };
            let slot = if self.fixed { 0 } else { i as usize };
            let spec = self.spec(format!("s{i}"), slot, role);
            self.out.subscribers.push(spec);
        }
    }

    /// Publishers `0..count`, placed from the second host.
    fn publishers(&mut self, count: u32, topic: impl Fn(u32) -> String) {
        for i in 0..count {
            let role = Role::Publisher {
                index: i,
                topic: topic(i),
            };
            let slot = if self.fixed { 1 } else { i as usize + 1 };
            let spec = self.spec(format!("p{i}"), slot, role);
            self.out.publishers.push(spec);
        }
    }

    /// A spec on host `slot` (mod the host count) and the next source address.
    fn spec(&mut self, name: String, slot: usize, role: Role) -> ClientSpec {
        let hosts = &self.plan.hosts;
        let sources = &self.plan.source_addrs;
        let source = (!sources.is_empty()).then(|| sources[self.made % sources.len()]);
        self.made += 1;
        ClientSpec {
            client_id: format!("{}-{name}", self.plan.client_id_prefix),
            host: hosts[slot % hosts.len()],
            source,
            role,
        }
    }
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

    fn plan(line: &str) -> Plan {
        Cli::try_parse_from(std::iter::once("bench").chain(line.split_whitespace()))
            .unwrap()
            .args
            .plan()
            .unwrap()
    }

    #[test]
    fn pairs_put_publisher_and_subscriber_on_different_nodes() {
        let l = layout(&plan(
            "pairs -n 4 --hosts 127.0.0.1:1,127.0.0.1:2 --client-id-prefix x",
        ));
        assert_eq!((l.subscribers.len(), l.publishers.len()), (4, 4));
        for i in 0..4 {
            assert_ne!(l.subscribers[i].host, l.publishers[i].host);
            assert_eq!(
                l.subscribers[i].role,
                Role::Subscriber {
                    index: i as u32,
                    filter: format!("bench/pairs/{i}"),
                    expects: Expects::Publishers(vec![i as u32]),
                }
            );
        }
        assert_eq!(l.publishers[2].client_id, "x-p2");
        assert_eq!(l.fan, vec![1; 4]);
    }

    #[test]
    fn fanin_and_fanout() {
        let l = layout(&plan("fanin -n 3"));
        assert_eq!(l.subscribers.len(), 1);
        assert_eq!(l.fan, vec![1, 1, 1]);
        let Role::Subscriber { filter, .. } = &l.subscribers[0].role else {
            panic!()
        };
        assert_eq!(filter, "bench/fanin/#");
        let l = layout(&plan("fanout -n 5 --topic t"));
        assert_eq!((l.subscribers.len(), l.publishers.len()), (5, 1));
        assert_eq!(l.fan, vec![5]);
        assert_eq!(
            l.publishers[0].role,
            Role::Publisher {
                index: 0,
                topic: "t/fanout".into()
            }
        );
    }

    #[test]
    fn conn_rotates_source_addresses() {
        let l = layout(&plan("conn -n 5 --source-addrs 127.0.0.1,127.0.0.2"));
        let srcs: Vec<_> = l
            .idle
            .iter()
            .map(|s| s.source.unwrap().to_string())
            .collect();
        assert_eq!(
            srcs,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.1"
            ]
        );
        assert!(l.publishers.is_empty() && l.subscribers.is_empty());
    }

    #[test]
    fn pub_and_sub_alone() {
        let l = layout(&plan("pub -n 2"));
        assert_eq!(l.publishers.len(), 2);
        assert!(l.subscribers.is_empty());
        let l = layout(&plan("sub -n 2 --topic a/#"));
        assert_eq!(
            l.subscribers[1].role,
            Role::Subscriber {
                index: 1,
                filter: "a/#".into(),
                expects: Expects::Any
            }
        );
    }
}
