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

/// One merged script call being built: its keys and its arguments (after the
/// fixed ones), for the sessions of one routing key.
#[derive(Debug, Default)]
struct Call {
    /// `""` on a single Redis; the session's hash key on Redis Cluster.
    route: String,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    /// Sessions in the call so far (a journal call answers one array each).
    sessions: usize,
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
    updates: Vec<Call>,
    journals: Vec<Call>,
    /// Changes merged into the stretch's update calls: (change index, route).
    merged_changes: Vec<(usize, String)>,
    /// Journal groups merged into the stretch: (op index, route, session, entries).
    merged_journals: Vec<(usize, String, usize, Range<usize>)>,
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
            updates: Vec::new(),
            journals: Vec::new(),
            merged_changes: Vec::new(),
            merged_journals: Vec::new(),
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
        let route = self.route(client_id);
        let call = call_for(&mut self.updates, &route);
        call.keys.push(self.keys.journal(client_id));
        call.keys.push(self.keys.done(client_id));
        call.keys.push(self.keys.session(client_id));
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
        call.sessions += 1;
        self.merged_changes.push((index, route));
    }

    /// Adds a journal operation (the next in order): its entries, in groups of one
    /// session and epoch each.
    pub(super) fn journal(&mut self, entries: &[Entry]) {
        let index = self.journal_at.len();
        self.journal_at.push(Vec::new());
        for group in groups(entries) {
            let first = &entries[group.start];
            let route = self.route(&first.client_id);
            let call = call_for(&mut self.journals, &route);
            call.keys.push(self.keys.session(&first.client_id));
            call.keys.push(self.keys.journal(&first.client_id));
            call.keys.push(self.keys.done(&first.client_id));
            call.args.push(first.epoch.to_string().into_bytes());
            call.args.push(group.len().to_string().into_bytes());
            for e in &entries[group.clone()] {
                call.args.push(e.key.as_bytes().to_vec());
                call.args.push(e.value.clone());
            }
            let session = call.sessions;
            call.sessions += 1;
            self.merged_journals.push((index, route, session, group));
        }
    }

    /// Ends the stretch: its merged calls take their place in the round trip.
    fn flush(&mut self) {
        let now = unix_ms().to_string().into_bytes();
        let keep = match self.upkeep {
            true => DONE_REMEMBERED.as_millis() as u64,
            false => 0,
        };
        let keep = keep.to_string().into_bytes();
        let ttl = vec![if self.upkeep { b'1' } else { b'0' }];
        for call in std::mem::take(&mut self.updates) {
            let at = self.cmds.len();
            for (i, _) in self.merged_changes.iter().filter(|(_, r)| *r == call.route) {
                self.change_at[*i] = Some(at);
            }
            let fixed = [now.clone(), keep.clone()];
            self.cmds.push(evalsha(&UPDATES, call, &fixed));
        }
        self.merged_changes.clear();
        for call in std::mem::take(&mut self.journals) {
            let at = self.cmds.len();
            for (op, _, session, entries) in self
                .merged_journals
                .iter()
                .filter(|(_, r, _, _)| *r == call.route)
            {
                self.journal_at[*op].push(JournalAt {
                    cmd: at,
                    session: *session,
                    entries: entries.clone(),
                });
            }
            self.cmds
                .push(evalsha(&JOURNAL, call, std::slice::from_ref(&ttl)));
        }
        self.merged_journals.clear();
    }

    /// The round trip: its commands and where their answers are.
    pub fn finish(mut self) -> Round {
        self.flush();
        Round {
            cmds: self.cmds,
            change_at: self.change_at,
            journal_at: self.journal_at,
        }
    }
}

/// A round trip ready to send.
#[derive(Debug)]
pub(super) struct Round {
    /// Its commands, each with its routing key.
    pub cmds: Vec<(String, redis::Cmd)>,
    /// Per change (in the order added), the command whose answer is its own.
    pub change_at: Vec<Option<usize>>,
    /// Per journal operation (in the order added), where its answers are.
    pub journal_at: Vec<Vec<JournalAt>>,
}

/// The call of `route` in `calls`, added if missing.
fn call_for<'c>(calls: &'c mut Vec<Call>, route: &str) -> &'c mut Call {
    let i = match calls.iter().position(|c| c.route == route) {
        Some(i) => i,
        None => {
            calls.push(Call {
                route: route.to_string(),
                ..Default::default()
            });
            calls.len() - 1
        }
    };
    &mut calls[i]
}

/// `EVALSHA` of `script` with the call's keys, then `fixed`, then its arguments.
fn evalsha(script: &redis::Script, call: Call, fixed: &[Vec<u8>]) -> (String, redis::Cmd) {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(call.keys.len());
    for k in &call.keys {
        cmd.arg(k);
    }
    for a in fixed.iter().chain(&call.args) {
        cmd.arg(a.as_slice());
    }
    let route = match call.keys.first() {
        Some(k) if call.route.is_empty() => k.clone(),
        _ => call.route,
    };
    (route, cmd)
}

/// The same call as `EVAL` with the script's text, for one answered `NOSCRIPT`.
fn as_eval(cmd: &redis::Cmd) -> Option<redis::Cmd> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &b""[..],
    });
    if args.next() != Some(&b"EVALSHA"[..]) {
        return None;
    }
    let sha = args.next()?;
    let text = [&*JOURNAL, &*UPDATES]
        .into_iter()
        .zip([JOURNAL_SCRIPT, UPDATES_SCRIPT])
        .find(|(s, _)| s.get_hash().as_bytes() == sha)?
        .1;
    let mut eval = redis::cmd("EVAL");
    eval.arg(text);
    for a in args {
        eval.arg(a);
    }
    Some(eval)
}

/// Sends a round trip's commands; calls answered `NOSCRIPT` go again as `EVAL`
/// (they did not run: a script either runs whole or not at all). Any other error
/// answer fails the round trip, as a failed connection does.
pub(super) async fn send(
    conn: &Conn,
    cmds: Vec<(String, redis::Cmd)>,
) -> Result<Vec<Value>, redis::RedisError> {
    let mut again: Vec<(usize, (String, redis::Cmd))> = Vec::new();
    let mut values = query_per_key_lenient(conn, &cmds).await?;
    for (i, v) in values.iter().enumerate() {
        if let Value::ServerError(e) = v {
            if e.kind() == Some(redis::ServerErrorKind::NoScript) {
                if let Some(eval) = as_eval(&cmds[i].1) {
                    again.push((i, (cmds[i].0.clone(), eval)));
                }
            }
        }
    }
    if !again.is_empty() {
        tracing::info!(
            calls = again.len(),
            "session store: redis had no script cache (restarted or failed over); sent the scripts again"
        );
        let (at, retry): (Vec<usize>, Vec<_>) = again.into_iter().unzip();
        let answers = query_per_key_lenient(conn, &retry).await?;
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
