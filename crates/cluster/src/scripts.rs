//! Every Lua script the nodes run in Redis, in one place: each is one atomic step of
//! the cluster's protocols (claiming a client id and handing a session over, taking
//! over a failed node's sessions, journaling deliveries, session lifetimes). What each
//! script's KEYS and ARGV are is in its comment; the callers are in `node/claim.rs`,
//! `sessions.rs`, `sessions/changes.rs` and `lifetime.rs`.
//!
//! Sent with `EVAL` (the text each time, or `redis::Script`, which falls back from
//! `EVALSHA`): a Redis that restarted has no script cache. The two the data path
//! runs per round trip ([`JOURNAL_SCRIPT`], [`UPDATES_SCRIPT`]) go as `EVALSHA`;
//! a call answered `NOSCRIPT` is sent again as `EVAL` (`sessions/batch.rs`).

use crate::lifetime::keep_ttl_lua;

/// Claims a client id: bumps its ownership epoch and makes this node the owner,
/// returning the previous owner (or "") and the new epoch, atomically.
/// It also records the session's expiry and will (ARGV 2, 3; an empty will removes
/// it), discards the stored session on Clean Start (ARGV 4 = 1), and returns whether a
/// persistent session existed before.
/// Expiry handling (`crate::lifetime`): a new hash starts its epoch at Redis's clock
/// in µs (keys left by an expired one are dropped), and every session key gets TTL
/// expiry + grace (ARGV 5, ms).
pub(crate) const CLAIM_SCRIPT: &str = r"
local prev = redis.call('HGET', KEYS[1], 'owner')
local prev_exp = tonumber(redis.call('HGET', KEYS[1], 'exp') or '0')
if not redis.call('HGET', KEYS[1], 'epoch') then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'epoch', t[1] .. string.rep('0', 6 - #t[2]) .. t[2])
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'exp', ARGV[2])
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], 'will') else redis.call('HSET', KEYS[1], 'will', ARGV[3]) end
if ARGV[4] == '1' then redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5]) end
for i = 1, 5 do
  if tonumber(ARGV[2]) >= 4294967295 then redis.call('PERSIST', KEYS[i])
  else redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) * 1000 + tonumber(ARGV[5])) end
end
local existed = 0
if prev_exp > 0 and ARGV[4] ~= '1' then existed = 1 end
return {prev or '', epoch, existed}
";

/// The previous owner (ARGV[3]), kicked by the claim of ARGV[1] at epoch ARGV[2]:
/// 0 when Redis names it the owner again (that claim was given back, or it claimed the
/// id again since): it keeps the session. Otherwise 1: it hands the session over as
/// asked (a later claim takes it from there in turn), and when that claim is still the
/// latest it commits to it, so the claimer no longer gives the id back.
pub(crate) const BEGIN_HANDOVER_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[3] then return 0 end
if owner == ARGV[1] and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'handing', ARGV[2])
end
return 1
";

/// A claimer that got no handover gives the id back (owner ARGV[3]) unless the
/// previous owner committed to the handover (2) or another claim came since (0).
pub(crate) const RELEASE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  return 0
end
if redis.call('HGET', KEYS[1], 'handing') == ARGV[2] then return 2 end
redis.call('HSET', KEYS[1], 'owner', ARGV[3])
return 1
";

/// Takes over a session from a dead node, if that node still owns it and there is
/// something to take (a persistent session or a will): new epoch, new owner.
pub(crate) const ADOPT_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return false end
local exp = tonumber(redis.call('HGET', KEYS[1], 'exp') or '0')
local will = redis.call('HGET', KEYS[1], 'will')
if exp == 0 and not will then return false end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
return {epoch, exp, will or ''}
";

/// Appends journal entries to sessions (one or several: every session of a batch on
/// a single Redis, one on Redis Cluster, where a call reaches one slot). KEYS: per
/// session, its hash, `:j` and `:done`. ARGV: 1 if the new keys' TTLs are to be
/// checked in this call, then per session, in the same order, the epoch the writer
/// holds, the entry count n, then n × (key, value).
///
/// Returns one array per session: its epoch flag (0 when the session's epoch moved
/// on: another node claimed it meanwhile), then one flag per entry: 1 if it was new,
/// 0 if an entry with that key existed (the same inbox entry delivered again after a
/// crash: it is not queued twice) or was delivered, 2 if the owner replaced an entry
/// that no owner had queued. The entries are written either way: the journal belongs
/// to the session, not to a node, and a delivery racing a takeover travels with the
/// handed-over session or is found in Redis by the next owner. A writer that is not
/// the owner (a node still routing to a session that moved, a stale copy after a
/// partition) stores its entry as `F`: nobody queued it, so the owner's own copy of
/// that message, arriving later, is queued instead of being taken for a duplicate
/// (the new owner otherwise only found it by reading the journal, in the few seconds
/// after a takeover it does so). A repair's `P` entries are nobody's in the same way.
///
/// Three calls per new entry and one per session (`ZSCORE`, `HSETNX`; `HGET` of the
/// epoch): every `redis.call` costs about 2 µs of script overhead beyond the command.
/// The TTL check (`keep_ttl`) runs in the writer's first round trip of each second
/// only; a journal created in between gets its TTL then, or from its owner's refresh
/// (`crate::lifetime`).
pub(crate) const JOURNAL_SCRIPT: &str = concat!(
    keep_ttl_lua!(),
    r"
local out = {}
local ttl = ARGV[1] == '1'
local a = 2
for g = 1, #KEYS, 3 do
  local s, j, d = KEYS[g], KEYS[g + 1], KEYS[g + 2]
  local flags = {1}
  local owner = redis.call('HGET', s, 'epoch') == ARGV[a]
  if not owner then flags[1] = 0 end
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    local k, value = ARGV[a], ARGV[a + 1]
    a = a + 2
    if not owner then value = 'F' .. string.sub(value, 2) end
    if redis.call('ZSCORE', d, k) then
      flags[#flags + 1] = 0
    elseif redis.call('HSETNX', j, k, value) == 1 then
      flags[#flags + 1] = 1
    else
      local v = redis.call('HGET', j, k)
      if owner and (string.sub(v, 1, 1) == 'F' or string.sub(v, 1, 1) == 'P') then
        redis.call('HSET', j, k, value)
        flags[#flags + 1] = 2
      else
        flags[#flags + 1] = 0
      end
    end
  end
  if ttl then keep_ttl(j, s) end
  out[#out + 1] = flags
end
return out
"
);

/// Appends journal entries to a session whoever owns it, reserving packet ids from
/// the session's own counter: for messages a dead node held for a session that was
/// claimed elsewhere before the repair (its new owner loads them after the repair).
pub(crate) const JOURNAL_ANY_SCRIPT: &str = concat!(
    keep_ttl_lua!(),
    r"
local ids = {}
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 and not redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    local id = redis.call('HINCRBY', KEYS[1], 'rpid', 1) % 65535 + 1
    redis.call('HSET', KEYS[2], ARGV[i], 'P' .. string.char(math.floor(id / 256), id % 256) .. ARGV[i + 1])
  end
end
keep_ttl(KEYS[2], KEYS[1])
return 1
"
);

/// Applies what clients acknowledged to the journals of sessions (one or several,
/// as [`JOURNAL_SCRIPT`]), in order per session. KEYS: per session, `:j`, `:done` and
/// its hash (whose TTL a new `:done` takes). ARGV: now (Unix ms), how long a
/// delivered key is remembered (ms; 0: prune nothing and check no TTL in this call,
/// which the writer does in its first round trip of each second only), then per
/// session the update count n and n × (key, value): an empty value forgets a
/// delivered entry (PUBACK, PUBCOMP) and remembers its key; any other value replaces
/// the entry (`R` + packet id: PUBREC received).
pub(crate) const UPDATES_SCRIPT: &str = concat!(
    keep_ttl_lua!(),
    r"
local now, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local a = 3
for g = 1, #KEYS, 3 do
  local j, d, s = KEYS[g], KEYS[g + 1], KEYS[g + 2]
  local n = tonumber(ARGV[a])
  a = a + 1
  local done = false
  for _ = 1, n do
    local k, v = ARGV[a], ARGV[a + 1]
    a = a + 2
    if v == '' then
      redis.call('HDEL', j, k)
      redis.call('ZADD', d, now, k)
      done = true
    else
      redis.call('HSET', j, k, v)
    end
  end
  if done and keep > 0 then
    redis.call('ZREMRANGEBYSCORE', d, '-inf', now - keep)
    keep_ttl(d, s)
  end
end
return 1
"
);

/// Records an inbound QoS 2 packet id's message id, if the connection (ARGV 1, its
/// epoch) still owns the session: a node that was frozen and declared dead must not
/// route what it reads from its sockets afterwards.
pub(crate) const INBOUND_SCRIPT: &str = concat!(
    keep_ttl_lua!(),
    r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
keep_ttl(KEYS[2], KEYS[1])
return 1
"
);

/// Writes back a session after Redis lost its data, unless another node claimed the
/// client id since: owner, epoch (never lowered), expiry, will, subscriptions
/// (ARGV 5 says how many pairs), then journal entries (`HSETNX`).
pub(crate) const RESTORE_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= '' and owner ~= ARGV[1] then return 0 end
local e = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if e < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'epoch', ARGV[2]) end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'exp', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'will', ARGV[4]) end
local i = 6
for k = 1, tonumber(ARGV[5]) do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
";

/// `keep_ttl` on its own: KEYS 2 gets the TTL of KEYS 1 if it has none (after a
/// subscription created the session's `:subs` hash).
pub(crate) const KEEP_TTL_SCRIPT: &str =
    concat!(keep_ttl_lua!(), "keep_ttl(KEYS[2], KEYS[1])\nreturn 1\n");

/// Sets the TTL of a session's keys (KEYS 1–5: hash, subscriptions, journal, delivered
/// ids, inbound ids) from the hash's expiry plus ARGV 3 (grace, ms), if this node
/// (ARGV 1) owns the session; writes the hash back with the epoch the node holds
/// (ARGV 2) if it expired meanwhile. Returns 1 if refreshed, 2 if written back, 0
/// if another node owns it. Never-expiring sessions (u32::MAX) are made persistent.
pub(crate) const REFRESH_SCRIPT: &str = r"
local owner = redis.call('HGET', KEYS[1], 'owner')
local out = 1
if not owner then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', ARGV[2])
  out = 2
elseif owner ~= ARGV[1] then
  return 0
end
local exp = tonumber(redis.call('HGET', KEYS[1], 'exp') or '0')
for i = 1, #KEYS do
  if exp >= 4294967295 then
    redis.call('PERSIST', KEYS[i])
  else
    redis.call('PEXPIRE', KEYS[i], exp * 1000 + tonumber(ARGV[3]))
  end
end
return out
";

/// The session ended here: its hash (KEYS 1) lives ARGV 2 ms more, if this node
/// (ARGV 1) still owns it.
pub(crate) const ENDED_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";
