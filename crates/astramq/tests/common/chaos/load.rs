//! The load of a scenario ([`Load`]): subscribers and publishers running through the
//! balancer, started from a [`LoadSpec`], waited on and finished with its counts.

use super::*;

fn owned_by(c: &TestCluster, ids: &[String], node_id: &str) -> Vec<String> {
    ids.iter()
        .filter(|id| c.session_owner(id).as_deref() == Some(node_id))
        .cloned()
        .collect()
}

/// What load to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Scenario tag: client ids and topics are `chaos-{tag}-...`.
    pub tag: String,
    /// QoS of every publish and subscription (1 or 2).
    pub qos: u8,
    /// Subscribers whose session lives on each node, at least.
    pub subscribers_per_node: usize,
    pub publishers: usize,
    /// Messages per second, all publishers together.
    pub rate: u32,
    /// Subscribe as members of this shared subscription group (`$share/{group}/…`,
    /// MQTT 5 clients only) instead of each on its own.
    pub shared_group: Option<String>,
}

impl LoadSpec {
    pub fn new(tag: &str, qos: u8) -> LoadSpec {
        LoadSpec {
            tag: tag.to_string(),
            qos,
            subscribers_per_node: 2,
            publishers: 4,
            rate: 200,
            shared_group: None,
        }
    }
}

/// Subscribers and publishers running through the balancer.
pub struct Load {
    shared: Arc<Shared>,
    ctl: watch::Sender<Ctl>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub sub_ids: Vec<String>,
    pub pub_ids: Vec<String>,
}

impl Load {
    /// Connects subscribers one at a time through the balancer until every running
    /// node holds at least `subscribers_per_node` of their sessions (by the owner in
    /// Redis), makes sure every node applied every node's route, starts the
    /// publishers, and returns once every subscriber has received a message from every
    /// publisher.
    pub async fn start(ch: &Chaos, spec: &LoadSpec) -> Load {
        let (ctl, ctl_rx) = watch::channel(Ctl::Run);
        let shared = Arc::new(Shared {
            stats: Mutex::new(Stats::default()),
            changed: Notify::new(),
        });
        let mut load = Load {
            shared,
            ctl,
            tasks: Vec::new(),
            sub_ids: Vec::new(),
            pub_ids: Vec::new(),
        };
        let c = &ch.cluster;
        let filter = match &spec.shared_group {
            Some(g) => format!("$share/{g}/chaos/{}/#", spec.tag),
            None => format!("chaos/{}/#", spec.tag),
        };
        load.shared
            .update(|s| s.shared = spec.shared_group.is_some());
        let running: Vec<usize> = (0..c.len()).filter(|&i| c.is_running(i)).collect();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        let max_subs = 4 * running.len() * spec.subscribers_per_node;
        while running
            .iter()
            .any(|&i| per_node.get(c.id(i)).copied().unwrap_or(0) < spec.subscribers_per_node)
        {
            let index = load.sub_ids.len();
            assert!(
                index < max_subs,
                "the balancer placed {index} subscribers without covering every node: {per_node:?}"
            );
            let id = format!("chaos-{}-sub-{index}", spec.tag);
            // Both protocol versions: even subscribers MQTT 5, odd ones 3.1.1 (shared
            // subscriptions are MQTT 5's: all of a group's members are).
            let v = if spec.shared_group.is_some() {
                Version::V5
            } else {
                [Version::V5, Version::V311][index % 2]
            };
            load.shared.update(|s| {
                s.subs.push(SubStats {
                    id: id.clone(),
                    ..Default::default()
                })
            });
            load.spawn(Client::new(
                id.clone(),
                v,
                spec.qos,
                Role::Sub {
                    index,
                    filter: filter.clone(),
                },
                ch.lb.addr(),
                load.shared.clone(),
                ctl_rx.clone(),
            ));
            load.sub_ids.push(id.clone());
            load.wait(T, &format!("{id} subscribed"), |s| s.subs[index].ready)
                .await;
            let owner = c
                .session_owner(&id)
                .unwrap_or_else(|| panic!("{id}: no session owner in Redis after SUBACK"));
            *per_node.entry(owner).or_insert(0) += 1;
        }
        for &i in &running {
            c.wait_route_visible(i, &filter).await;
            c.sync_from(i).await;
        }
        let period = Duration::from_secs_f64(spec.publishers as f64 / f64::from(spec.rate));
        for index in 0..spec.publishers {
            let id = format!("chaos-{}-pub-{index}", spec.tag);
            let v = [Version::V311, Version::V5][index % 2];
            load.shared.update(|s| {
                s.pubs.push(PubStats {
                    id: id.clone(),
                    ..Default::default()
                })
            });
            load.spawn(Client::new(
                id.clone(),
                v,
                spec.qos,
                Role::Pub {
                    index,
                    topic: format!("chaos/{}/{index}", spec.tag),
                    period,
                },
                ch.lb.addr(),
                load.shared.clone(),
                ctl_rx.clone(),
            ));
            load.pub_ids.push(id);
        }
        if spec.shared_group.is_some() {
            // A group's member gets only some messages: every member receiving, and
            // the group receiving from every publisher.
            load.wait(T, "every member receiving, from every publisher", |s| {
                s.subs.iter().all(|sub| !sub.received.is_empty())
                    && (0..s.pubs.len()).all(|p| {
                        s.subs
                            .iter()
                            .any(|sub| sub.received.keys().any(|&(q, _)| q == p))
                    })
            })
            .await;
        } else {
            load.wait(T, "every subscriber receiving from every publisher", |s| {
                s.subs
                    .iter()
                    .all(|sub| (0..s.pubs.len()).all(|p| sub.received.keys().any(|&(q, _)| q == p)))
            })
            .await;
        }
        load
    }

    fn spawn(&mut self, c: Client) {
        self.tasks.push(tokio::spawn(c.run()));
    }

    /// Waits until `cond` holds on the statistics (re-checked on every change);
    /// panics with `what` after `timeout`.
    pub async fn wait(&self, timeout: Duration, what: &str, cond: impl Fn(&Stats) -> bool) {
        if !self.wait_until(timeout, cond).await {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{:?}",
                self.counts()
            );
        }
    }

    /// Like [`Load::wait`] but returns whether `cond` held in time.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Stats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if cond(&self.shared.stats.lock().unwrap()) {
                return true;
            }
            // Periodic re-check as well: a condition may also depend on time.
            let step = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(step.min(deadline), changed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return cond(&self.shared.stats.lock().unwrap());
            }
        }
    }

    pub fn counts(&self) -> Counts {
        self.shared.stats.lock().unwrap().counts()
    }

    pub fn acknowledged(&self) -> u64 {
        self.counts().acknowledged
    }

    /// Waits until `n` more messages than now are acknowledged; false on timeout.
    pub async fn wait_more_acked(&self, n: u64, timeout: Duration) -> bool {
        let target = self.acknowledged() + n;
        self.wait_until(timeout, |s| {
            s.pubs.iter().map(|p| p.acked.len() as u64).sum::<u64>() >= target
        })
        .await
    }

    /// The subscribers whose session Redis says node `node_id` owns.
    pub fn sessions_on(&self, c: &TestCluster, node_id: &str) -> Vec<String> {
        owned_by(c, &self.sub_ids, node_id)
    }

    /// The publishers whose session Redis says node `node_id` owns.
    pub fn publishers_on(&self, c: &TestCluster, node_id: &str) -> Vec<String> {
        owned_by(c, &self.pub_ids, node_id)
    }

    /// Time from `since` until every subscriber in `ids` reconnected after `since`
    /// with Session Present 1 and received a PUBLISH on that connection; `Err` names
    /// the first that lost its session or has not recovered yet.
    pub fn recovery(&self, ids: &[String], since: Instant) -> Result<Duration, String> {
        let s = self.shared.stats.lock().unwrap();
        let mut worst = Duration::ZERO;
        for id in ids {
            let sub = s
                .subs
                .iter()
                .find(|x| &x.id == id)
                .expect("a load subscriber");
            let after: Vec<&ConnEvent> = sub.connects.iter().filter(|c| c.at > since).collect();
            if let Some(c) = after.iter().find(|c| !c.session_present) {
                return Err(format!(
                    "{id} reconnected {:?} after the fault with Session Present 0: its \
                     session was lost",
                    c.at - since
                ));
            }
            match after.iter().find_map(|c| c.first_publish) {
                Some(t) => worst = worst.max(t - since),
                None => return Err(format!("{id} has not resumed receiving yet")),
            }
        }
        Ok(worst)
    }

    /// Waits (event-driven) until [`Load::recovery`] succeeds or a session was lost;
    /// gives up after `timeout`.
    pub async fn wait_recovered(
        &self,
        ids: &[String],
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.recovery(ids, since);
            match &r {
                Ok(_) => return r,
                Err(e) if e.contains("was lost") => return r,
                Err(_) if Instant::now() >= deadline => return r,
                Err(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let changed = self.shared.changed.notified();
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), changed).await;
        }
    }

    /// Stops taking new sequence numbers, waits (up to `timeout` in all) until every
    /// publisher's window is empty and every subscriber received every acknowledged
    /// message, then stops every client and returns the counts. A message still
    /// unacknowledged at the end is not counted as lost (nothing was promised for it);
    /// an acknowledged one some subscriber lacks is.
    pub async fn finish(mut self, timeout: Duration) -> (Counts, Vec<String>) {
        let _ = self.ctl.send(Ctl::StopPublishing);
        let deadline = Instant::now() + timeout;
        self.wait_until(timeout, |s| s.pubs.iter().all(|p| p.outstanding == 0))
            .await;
        let left = deadline.saturating_duration_since(Instant::now());
        self.wait_until(left.max(Duration::from_secs(1)), Stats::all_received)
            .await;
        let _ = self.ctl.send(Ctl::Stop);
        // Clients end at once unless blocked connecting; those are aborted.
        let tasks: Vec<_> = self.tasks.drain(..).collect();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let joined = tokio::time::timeout(Duration::from_secs(3), async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
        if joined.is_err() {
            for a in aborts {
                a.abort();
            }
        }
        let s = self.shared.stats.lock().unwrap();
        (s.counts(), s.details())
    }

    /// Reasons of every DISCONNECT the server sent to load clients, with counts.
    pub fn disconnect_reasons(&self) -> BTreeMap<u8, usize> {
        let s = self.shared.stats.lock().unwrap();
        let mut m = BTreeMap::new();
        for r in s
            .subs
            .iter()
            .flat_map(|x| &x.disconnects)
            .chain(s.pubs.iter().flat_map(|x| &x.disconnects))
        {
            *m.entry(*r).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
