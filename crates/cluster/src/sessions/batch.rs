//! One round trip of the session store's writer: the commands for a batch of
//! operations, in order, with each stretch of consecutive journal writes and journal
//! updates (acknowledgements, PUBREC) merged into one script call of each kind — for
//! every session of the stretch on a single Redis, per session on Redis Cluster
//! (where one call reaches one slot). The two calls go as `EVALSHA`; one answered
//! `NOSCRIPT` (a Redis that restarted or failed over has no script cache) is sent
//! again as `EVAL` with the text, which also loads it.
//!
//! Order: any other change ends the stretch, so it stays in place relative to the
//! journal calls around it. Within a stretch the updates run before the writes; that
//! reorders nothing that matters: an update concerns a delivery journaled in an
//! earlier round trip, and a write of the same key again (a resend, a repair) is
//! answered "already there" (not queued twice) before the update and "delivered"
//! after it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::LazyLock;

use broker::cluster::SessionChange;
use broker::session::JournalUpdate;
use redis::Value;

use super::changes::change_cmds;
use super::{unix_ms, Entry};
use crate::conn::{query_per_key_lenient, Conn, Keys};
use crate::scripts::{JOURNAL_SCRIPT, UPDATES_SCRIPT};
use crate::wire::journal_received;

/// How long a delivered message's key is remembered per session.
const DONE_REMEMBERED: std::time::Duration = std::time::Duration::from_secs(600);

static JOURNAL: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(JOURNAL_SCRIPT));
static UPDATES: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(UPDATES_SCRIPT));

/// The two merged scripts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// [`JOURNAL_SCRIPT`]: journal writes.
    Journal,
    /// [`UPDATES_SCRIPT`]: acknowledgements and PUBREC marks.
    Updates,
}

impl Kind {
    fn script(self) -> (&'static redis::Script, &'static str) {
        match self {
            Kind::Journal => (&JOURNAL, JOURNAL_SCRIPT),
            Kind::Updates => (&UPDATES, UPDATES_SCRIPT),
        }
    }
}

/// One merged script call: its keys and arguments, for the sessions of one routing
/// key, and whose answers it carries.
#[derive(Debug, Default)]
pub(super) struct Call {
    /// `""` on a single Redis; the session's hash key on Redis Cluster.
    route: String,
    keys: Vec<String>,
    /// The arguments every session shares (set when the stretch ends), then the
    /// sessions' own.
    fixed: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
    /// Updates: the changes it stores.
    changes: Vec<usize>,
    /// Journal writes: per session, in the order of its answers, the operation and
    /// the entries of it.
    groups: Vec<(usize, Range<usize>)>,
}

impl Call {
    /// The call as `EVALSHA` (`sha`) or as `EVAL` with the script's text.
    fn cmd(&self, kind: Kind, sha: bool) -> redis::Cmd {
        let (script, text) = kind.script();
        let mut cmd = if sha {
            let mut c = redis::cmd("EVALSHA");
            c.arg(script.get_hash());
            c
        } else {
            let mut c = redis::cmd("EVAL");
            c.arg(text);
            c
        };
        cmd.arg(self.keys.len());
        for k in &self.keys {
            cmd.arg(k);
        }
        for a in self.fixed.iter().chain(&self.args) {
            cmd.arg(a.as_slice());
        }
        cmd
    }
}

/// The calls of one kind in the stretch being merged, by routing key.
#[derive(Debug, Default)]
struct Calls {
    list: Vec<Call>,
    by_route: HashMap<String, usize>,
}

impl Calls {
    /// The call of `route`, added if missing.
    fn get(&mut self, route: String) -> &mut Call {
        let list = &mut self.list;
        let i = *self.by_route.entry(route).or_insert_with_key(|route| {
            list.push(Call {
                route: route.clone(),
                ..Default::default()
            });
            list.len() - 1
        });
        &mut self.list[i]
    }

    fn take(&mut self) -> Vec<Call> {
        self.by_route.clear();
        std::mem::take(&mut self.list)
    }
}

/// Where a journal write's answer is: the command, and the session's place in it.
#[derive(Debug, Clone)]
pub(super) struct JournalAt {
    /// Index of the command in the round trip.
    pub cmd: usize,
    /// Index of the session's flags in the command's answer.
    pub session: usize,
    /// The entries of the operation those flags are for.
    pub entries: Range<usize>,
}

/// The commands of one round trip, built in order.
#[derive(Debug)]
pub(super) struct Batch<'k> {
    keys: &'k Keys,
    me_grace: (&'k str, std::time::Duration),
    cluster: bool,
    /// This round trip checks TTLs and prunes delivered ids (the first of a second).
    upkeep: bool,
    cmds: Vec<(String, redis::Cmd)>,
    /// The stretch being merged.
    updates: Calls,
    journals: Calls,
    /// The merged calls sent, with their command's index (for a `NOSCRIPT` answer).
    scripted: Vec<(usize, Kind, Call)>,
    /// Per change, its first command's index.
    change_at: Vec<Option<usize>>,
    /// Per journal operation, where its answers are.
    journal_at: Vec<Vec<JournalAt>>,
}

impl<'k> Batch<'k> {
    /// An empty round trip; `upkeep`: its calls check the TTLs of keys they create
    /// and prune delivered ids (see the scripts).
    pub fn new(
        keys: &'k Keys,
        me_grace: (&'k str, std::time::Duration),
        cluster: bool,
        upkeep: bool,
    ) -> Self {
        Batch {
            keys,
            me_grace,
            cluster,
            upkeep,
            cmds: Vec::new(),
            updates: Calls::default(),
            journals: Calls::default(),
            scripted: Vec::new(),
            change_at: Vec::new(),
            journal_at: Vec::new(),
        }
    }

    fn route(&self, client_id: &str) -> String {
        if self.cluster {
            self.keys.session(client_id)
        } else {
            String::new()
        }
    }

    /// Adds a change (the next in order).
    pub fn change(&mut self, c: &SessionChange) {
        let index = self.change_at.len();
        self.change_at.push(None);
        let SessionChange::Journal { client_id, updates } = c else {
            self.flush();
            self.change_at[index] = Some(self.cmds.len());
            change_cmds(self.keys, self.me_grace, c, &mut self.cmds);
            return;
        };
        let keys = self.keys;
        let call = self.updates.get(self.route(client_id));
        call.keys.push(keys.journal(client_id));
        call.keys.push(keys.done(client_id));
        call.keys.push(keys.session(client_id));
        call.args.push(updates.len().to_string().into_bytes());
        for u in updates {
            match u {
                JournalUpdate::Done(key) => {
                    call.args.push(key.as_bytes().to_vec());
                    call.args.push(Vec::new());
                }
                JournalUpdate::Received(j) => {
                    call.args.push(j.key.as_bytes().to_vec());
                    call.args.push(journal_received(j.packet_id));
                }
            }
        }
        call.changes.push(index);
    }

    /// Adds a journal operation (the next in order): its entries, in groups of one
    /// session and epoch each.
    pub(super) fn journal(&mut self, entries: &[Entry]) {
        let index = self.journal_at.len();
        self.journal_at.push(Vec::new());
        let keys = self.keys;
        for group in groups(entries) {
            let first = &entries[group.start];
            let call = self.journals.get(self.route(&first.client_id));
            call.keys.push(keys.session(&first.client_id));
            call.keys.push(keys.journal(&first.client_id));
            call.keys.push(keys.done(&first.client_id));
            call.args.push(first.epoch.to_string().into_bytes());
            call.args.push(group.len().to_string().into_bytes());
            for e in &entries[group.clone()] {
                call.args.push(e.key.as_bytes().to_vec());
                call.args.push(e.value.clone());
            }
            call.groups.push((index, group));
        }
    }

    /// Ends the stretch: its merged calls take their place in the round trip.
    fn flush(&mut self) {
        if self.updates.list.is_empty() && self.journals.list.is_empty() {
            return;
        }
        let now = unix_ms().to_string().into_bytes();
        let keep = match self.upkeep {
            true => DONE_REMEMBERED.as_millis() as u64,
            false => 0,
        };
        let keep = keep.to_string().into_bytes();
        let ttl = vec![if self.upkeep { b'1' } else { b'0' }];
        for mut call in self.updates.take() {
            let at = self.cmds.len();
            for &i in &call.changes {
                self.change_at[i] = Some(at);
            }
            call.fixed = vec![now.clone(), keep.clone()];
            self.push(Kind::Updates, call);
        }
        for mut call in self.journals.take() {
            let at = self.cmds.len();
            for (session, (op, entries)) in call.groups.iter().enumerate() {
                self.journal_at[*op].push(JournalAt {
                    cmd: at,
                    session,
                    entries: entries.clone(),
                });
            }
            call.fixed = vec![ttl.clone()];
            self.push(Kind::Journal, call);
        }
    }

    /// Adds `call` to the round trip as `EVALSHA`, keeping it for a `NOSCRIPT`.
    fn push(&mut self, kind: Kind, call: Call) {
        self.cmds.push((call.route.clone(), call.cmd(kind, true)));
        self.scripted.push((self.cmds.len() - 1, kind, call));
    }

    /// The round trip: its commands and where their answers are.
    pub fn finish(mut self) -> Round {
        self.flush();
        Round {
            cmds: self.cmds,
            scripted: self.scripted,
            change_at: self.change_at,
            journal_at: self.journal_at,
        }
    }
}

/// A round trip ready to send.
#[derive(Debug)]
pub(super) struct Round {
    /// Its commands, each with its routing key (taken by [`Round::send`]).
    cmds: Vec<(String, redis::Cmd)>,
    /// Its merged script calls, with their command's index.
    scripted: Vec<(usize, Kind, Call)>,
    /// Per change (in the order added), the command whose answer is its own.
    pub change_at: Vec<Option<usize>>,
    /// Per journal operation (in the order added), where its answers are.
    pub journal_at: Vec<Vec<JournalAt>>,
}

impl Round {
    /// Sends the commands (once); a merged call answered `NOSCRIPT` goes again as
    /// `EVAL` (it did not run: a script either runs whole or not at all). Any other
    /// error answer fails the round trip, as a failed connection does.
    pub async fn send(&mut self, conn: &Conn) -> Result<Vec<Value>, redis::RedisError> {
        let cmds = std::mem::take(&mut self.cmds);
        let mut values = query_per_key_lenient(conn, cmds).await?;
        let (at, again): (Vec<usize>, Vec<_>) = self
            .scripted
            .iter()
            .filter(|(i, ..)| {
                matches!(&values[*i], Value::ServerError(e)
                    if e.kind() == Some(redis::ServerErrorKind::NoScript))
            })
            .map(|(i, kind, call)| (*i, (call.route.clone(), call.cmd(*kind, false))))
            .unzip();
        if !again.is_empty() {
            tracing::info!(
                calls = again.len(),
                "session store: redis had no script cache (restarted or failed over); sent the scripts again"
            );
            let answers = query_per_key_lenient(conn, again).await?;
            for (i, v) in at.into_iter().zip(answers) {
                values[i] = v;
            }
        }
        for v in &values {
            if let Value::ServerError(e) = v {
                return Err(e.clone().into());
            }
        }
        Ok(values)
    }
}

/// Consecutive runs of entries for one session (and epoch): one group each.
fn groups(entries: &[Entry]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match out.last_mut() {
            Some(r)
                if entries[r.start].client_id == e.client_id
                    && entries[r.start].epoch == e.epoch =>
            {
                r.end = i + 1
            }
            _ => out.push(i..i + 1),
        }
    }
    out
}
