//! The Lua scripts that make each multi-step change atomic on the server: an owner- and
//! fence-checked finish (ack, result, wake-up) and lease renewal, the reclaim of expired
//! leases with their delivery counts, the promotion of due delayed tasks, idempotent and
//! delayed submission, cancellation, the scheduler's leader lease and dead-letter
//! requeue.
//!
//! Times come from Redis `TIME`, never from a machine's clock; every key a script
//! writes is in its queue's hash slot, passed in `KEYS` (the reply lists of other
//! clients waiting on an idempotent task are the one exception: their names are only
//! known inside the script).

use std::sync::LazyLock;

use redis::Script;

/// Parses `TIME` into milliseconds; shared by the scripts that need the time. And
/// `int`, which writes a number a script computed as the integer a command expects:
/// Redis 7.2.0 to 7.2.4 pass a Lua number to a command in its shortest form, `1e+08`
/// for 100,000,000, which `PX`, `PEXPIRE`, `IDLE` and `COUNT` refuse (Redis's issue
/// 13113).
const NOW: &str = "
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(x)
  return string.format('%d', x)
end
";

/// Whether entry `id` is pending for consumer `me` with delivery count `fence` (0:
/// any count). A stream or group that is gone (a server that lost its data, a queue
/// deleted) holds nothing pending: its entries are owned by no one, and the script goes
/// on. (An error there ended the whole script: a node's renewals failed until its
/// reader, which reads only when the node has room, made the group again, and a full
/// node went on running, and starting, tasks whose clients had been told to submit
/// them again.)
const OWNED: &str = "
local function owned(stream, group, id, me, fence)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if p.err or p[1] == nil or p[1][2] ~= me then return false end
  return fence == 0 or tonumber(p[1][4]) == fence
end
";

/// The longest gap between renewals that does not begin a new run of them (see
/// [`RECLAIM`]), for a lease of `lease` ms: two renewal periods. An entry's lease
/// lapses only after three without a renewal, so every gap that can make one look
/// lapsed (a stretch without renewals of more than two periods, after the period that
/// may have passed since the entry's last one) is longer.
const GAP: &str = "
local function gap_for(lease)
  return math.floor(lease * 2 / 3)
end
";

/// Submits a delayed and/or idempotent task.
///
/// KEYS: stream, delayed, idempotency record, result, waiters, leader, epoch.
/// ARGV: envelope, delay mode (`0` none, `c` countdown ms, `e` epoch ms), ms,
/// idempotent (`1`/`0`), ttl s, client id, leader id (`` for none), a fresh epoch
/// token (set if the queue has none).
/// An idempotency record lives the TTL from the task's time (its countdown or eta
/// included).
/// Returns `{1, entry id, epoch}` (queued), `{2, due ms, epoch}` (delayed),
/// `{0, '', epoch}` / `{0, outcome, epoch}` (a duplicate of a known task: its outcome
/// if there is one, else this client now waits for it too), `{3, '', epoch}` (the
/// caller no longer holds the leader lease); `epoch` is the queue's epoch token the
/// task was submitted under. An outcome still kept answers a repeat even after the
/// record lapsed. A duplicate joins the task's waiters, whose set then lives at least as
/// long as the record and this client's TTL (it is never shortened); a task may still
/// outlive it, so the client also reads the task's result key while it waits. The
/// client that made the record is a waiter too: a cancel by another client answers
/// every waiter, and only the set names the first one.
pub(crate) static SUBMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}
redis.call('SET', KEYS[7], ARGV[8], 'NX')
local epoch = redis.call('GET', KEYS[7])
if ARGV[7] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[7] then return {{3, '', epoch}} end
if ARGV[4] == '1' then
  local r = redis.call('GET', KEYS[4])
  if r then return {{0, r, epoch}} end
  -- The record lives the TTL from the task's time: a repeat during a countdown or
  -- until an eta longer than the TTL joins the task rather than make another.
  local life = tonumber(ARGV[5]) * 1000
  if ARGV[2] == 'c' then life = life + tonumber(ARGV[3]) end
  if ARGV[2] == 'e' then life = life + math.max(0, tonumber(ARGV[3]) - now_ms()) end
  local made = redis.call('SET', KEYS[3], '1', 'NX', 'PX', int(life))
  redis.call('SADD', KEYS[5], ARGV[6])
  -- Never shortened (by a client that keeps outcomes less long than others): as long
  -- as it had, as the record, as this client's TTL, whichever is longest.
  local keep = math.max(redis.call('PTTL', KEYS[5]), redis.call('PTTL', KEYS[3]),
    tonumber(ARGV[5]) * 1000)
  redis.call('PEXPIRE', KEYS[5], int(keep))
  if not made then return {{0, '', epoch}} end
end
if ARGV[2] ~= '0' then
  local now = now_ms()
  local due = tonumber(ARGV[3])
  if ARGV[2] == 'c' then due = now + due end
  if due > now then
    redis.call('ZADD', KEYS[2], due, ARGV[1])
    return {{2, tostring(due), epoch}}
  end
end
return {{1, redis.call('XADD', KEYS[1], '*', 'm', ARGV[1]), epoch}}
"
    ))
});

/// Finishes tasks: for each one still owned (consumer and delivery count), writes its
/// outcome once and wakes its waiters, or schedules its retry, or dead-letters it;
/// then acks and deletes its entry. Entries no longer owned are left alone (the lease
/// was lost: another worker has the task).
///
/// An idempotent task's record is made to lapse with its outcome: a repeat then finds
/// the outcome, or (both gone) runs the task again, never a record whose task will not
/// answer. A run of an idempotent task whose outcome was already written (a repeat
/// made after the record lapsed while the first run went on) still answers its own
/// client and those waiting with it, and makes the record lapse with the outcome
/// written first (a retry of that run made the record live longer: kept, it outlived
/// the outcome, and a repeat then waited on it for an answer no run would give).
///
/// A retry's delayed member is recorded under the task (`retry:<task>`, for as long as
/// it may wait there) so that a cancel finds it; any other end deletes that record. An
/// idempotent task's record and its waiters live as long (the record made again if it
/// lapsed): a repeat of the key while the retry waits joins it.
///
/// A task whose cancel flag is set (a cancel that returned true while it ran, or
/// waited where its client could not remove it) ends `Cancelled`, however its run
/// ended (a value, a failure, a retry, a dead letter): the cancel wins, as a pool's
/// does when it comes first.
///
/// KEYS: stream, delayed, dead; then per item: result, reply list (the none key for
/// none), waiters, cancel, idempotency record (the none key for none), retry record.
/// ARGV: group, consumer, ttl s, dead-letter cap, reply-list prefix, the cancelled
/// outcome, the none key (`Keys::none`); then per item: entry id, fence, action (`a`
/// outcome, `r` retry, `d` dead-letter), outcome (`` for none), reply, retry envelope,
/// retry delay ms, dead-letter reason, reply if cancelled.
/// Returns per item 1 (done) or 0 (not owned).
pub(crate) static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{OWNED}
local group, me, ttl, cap, rprefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cancelled, none = ARGV[6], ARGV[7]
local n = (#ARGV - 7) / 9
local out = {{}}
local now = nil
local function answer(list, waiters, reply)
  redis.call('RPUSH', list, reply)
  redis.call('EXPIRE', list, ttl)
  for _, w in ipairs(redis.call('SMEMBERS', waiters)) do
    local l = rprefix .. w
    if l ~= list then
      redis.call('RPUSH', l, reply)
      redis.call('EXPIRE', l, ttl)
    end
  end
  redis.call('DEL', waiters)
end
for i = 0, n - 1 do
  local a = 7 + i * 9
  local k = 3 + i * 6
  local id, action, outcome, reply = ARGV[a + 1], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if not owned(KEYS[1], group, id, me, tonumber(ARGV[a + 2])) then
    out[#out + 1] = 0
  else
    if cancelled ~= '' and redis.call('EXISTS', KEYS[k + 4]) == 1 then
      action, outcome, reply = 'a', cancelled, ARGV[a + 9]
    end
    if action == 'r' then
      if not now then now = now_ms() end
      local delay = tonumber(ARGV[a + 7])
      local life = delay + ttl * 1000
      redis.call('ZADD', KEYS[2], now + delay, ARGV[a + 6])
      redis.call('SET', KEYS[k + 6], ARGV[a + 6], 'PX', int(life))
      -- An idempotent task's record lives until its retry is due and the TTL after (a
      -- repeat while it waits joins it rather than run the key again), made again if
      -- it lapsed; so does the set of its waiters, its submitter in it again (the set
      -- may have lapsed with a short TTL, and a cancel by a client that joins the
      -- retry answers only those in it: the submitter would wait for ever).
      if KEYS[k + 5] ~= none then
        redis.call('SET', KEYS[k + 5], '1', 'NX', 'PX', int(life))
        local list = KEYS[k + 2]
        if list ~= none and string.sub(list, 1, #rprefix) == rprefix then
          redis.call('SADD', KEYS[k + 3], string.sub(list, #rprefix + 1))
        end
        for _, key in ipairs({{KEYS[k + 5], KEYS[k + 3]}}) do
          local left = redis.call('PTTL', key)
          if left == -1 or (left >= 0 and left < life) then
            redis.call('PEXPIRE', key, int(life))
          end
        end
      end
    else
      redis.call('DEL', KEYS[k + 6])
      if action == 'd' then
        local e = redis.call('XRANGE', KEYS[1], id, id)
        local fields = {{'reason', ARGV[a + 8], 'entry', id}}
        if e[1] then
          -- At most 1,000 of its fields and values: Lua unpacks no more than about
          -- 8,000 values, and an entry another program wrote may hold more.
          local f = e[1][2]
          local m = math.min(#f, 1000)
          for j = 1, m do fields[#fields + 1] = f[j] end
          if m < #f then
            fields[#fields + 1] = 'truncated'
            fields[#fields + 1] = tostring(#f - m)
          end
        end
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*', unpack(fields))
      end
      if outcome ~= '' then
        local record = KEYS[k + 5]
        if redis.call('SET', KEYS[k + 1], outcome, 'NX', 'EX', ttl) then
          if record ~= none then redis.call('EXPIRE', record, ttl) end
          if reply ~= '' then answer(KEYS[k + 2], KEYS[k + 3], reply) end
        elseif record ~= none then
          -- Another run wrote the outcome: the record, which a retry of this run
          -- made to live longer, lapses with it.
          local left = redis.call('PTTL', KEYS[k + 1])
          if left > 0 then redis.call('PEXPIRE', record, int(left)) end
          if reply ~= '' then answer(KEYS[k + 2], KEYS[k + 3], reply) end
        end
      end
    end
    if action ~= 'r' then redis.call('DEL', KEYS[k + 4]) end
    redis.call('XACK', KEYS[1], group, id)
    redis.call('XDEL', KEYS[1], id)
    out[#out + 1] = 1
  end
end
return out
"
    ))
});

/// Renews the leases of a worker's tasks (resets their idle time, which is the lease
/// clock, without counting a delivery) and records its heartbeat and the renewal (see
/// [`RECLAIM`]).
///
/// The heartbeat comes after the renewals: a server at its `maxmemory` refuses a
/// script's first write that may grow memory (`ZADD`, `SET`) and lets the later ones
/// through, and `XCLAIM` is not such a write. Heartbeat first, a node's renewals were
/// refused while an idle node's reclaims (`XCLAIM`) went on, and took its running
/// tasks. (An idle node's heartbeat is refused then; it has nothing to renew.)
///
/// A gap between renewals longer than two periods of the longest lease (the one
/// `RECLAIM` last used, or the caller's own if longer) begins a new run of them; so
/// does a clock that went back.
///
/// KEYS: stream, workers, worker info, renewals; then per item: cancel flag.
/// ARGV: group, consumer, info, info ttl s, the caller's lease ms; then per item: entry
/// id, fence.
/// Returns per item 1 (kept), 2 (kept, and its client asked to cancel it) or 0 (lost).
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{OWNED}{GAP}
local group, me = ARGV[1], ARGV[2]
local out = {{}}
local n = (#ARGV - 5) / 2
for i = 0, n - 1 do
  local id = ARGV[6 + 2 * i]
  if owned(KEYS[1], group, id, me, tonumber(ARGV[7 + 2 * i])) then
    redis.call('XCLAIM', KEYS[1], group, me, 0, id, 'JUSTID')
    if redis.call('EXISTS', KEYS[5 + i]) == 1 then out[#out + 1] = 2 else out[#out + 1] = 1 end
  else
    out[#out + 1] = 0
  end
end
local now = now_ms()
redis.call('ZADD', KEYS[2], now, me)
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
local r = redis.call('HMGET', KEYS[4], 'last', 'lease')
local gap = gap_for(math.max(tonumber(ARGV[5]), tonumber(r[2]) or 0))
local last = tonumber(r[1])
if not last or now - last > gap or now < last then redis.call('HSET', KEYS[4], 'since', now) end
redis.call('HSET', KEYS[4], 'last', now)
return out
"
    ))
});

/// Claims entries whose lease ran out, with their delivery counts. An entry's lease is
/// the longest among the queue's live workers: the claimer's own, or one another's
/// heartbeat key describes (`lease_ms=`, at most a day), so that a worker with a
/// shorter lease does not take the tasks of one that renews less often.
///
/// It claims nothing until renewals (`RENEW`, any worker's) have come for that lease
/// without a gap longer than two of its renewal periods (see [`GAP`]), nor while such
/// a gap runs since the last one: the lease clock is the server's, and it runs on while
/// no worker can renew (the server paused, restarting, refusing writes; its network
/// down), so after such a stretch every running task's lease looks lapsed until its
/// worker's renewal comes through. Each node also holds its own reclaims after
/// renewals of its own failed (`Worker`'s keeper); this covers a node that saw no
/// failure, one started just after the stretch. A queue whose workers all stopped and
/// come back (or whose server lost the key) reclaims a lease after their first
/// renewal. The lease it used is kept in the hash (`lease`), for `RENEW` to judge gaps
/// by; a count of 0 does only that (a node with no room runs it once a lease).
///
/// `XPENDING … IDLE` finds them wherever they are in the pending list, the server
/// walking the whole list if it must; `XAUTOCLAIM` looks at ten entries for each it may
/// claim, so a worker with room for one task walked a long list ten entries a call,
/// and a dead worker's tasks behind another's 10,000 waited 63 renewal periods. An
/// entry deleted meanwhile is dropped from the pending list by `XCLAIM` and not
/// returned.
///
/// KEYS: stream, workers, renewals. ARGV: group, consumer, own lease ms, count, the
/// prefix of the workers' heartbeat keys.
/// Returns `{the lease used (ms), {id, fields, deliveries}...}`.
pub(crate) static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{GAP}
local idle = tonumber(ARGV[3])
for _, name in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if name ~= ARGV[2] then
    local info = redis.call('GET', ARGV[5] .. name)
    local lease = info and tonumber(string.match(info, 'lease_ms=(%d+)'))
    if lease and lease > idle then idle = math.min(lease, 86400000) end
  end
end
local out = {{idle}}
local r = redis.call('HMGET', KEYS[3], 'last', 'since', 'lease')
local last, since, now = tonumber(r[1]), tonumber(r[2]), now_ms()
-- Refused at maxmemory (the script's first write): the reclaim goes on without it.
if tonumber(r[3]) ~= idle then pcall(redis.call, 'HSET', KEYS[3], 'lease', int(idle)) end
if ARGV[4] == '0' then return out end
if not last or not since or now - last > gap_for(idle) or now - since < idle then
  return out
end
local due = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', int(idle), '-', '+', ARGV[4])
for _, p in ipairs(due) do
  local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], int(idle), p[1])[1]
  if e and e[2] then
    out[#out + 1] = {{e[1], e[2], tonumber(p[4]) + 1}}
  end
end
return out
"
    ))
});

/// Lists a page of the entries pending for a worker (delivered to it and not finished),
/// with their delivery counts, and restarts each one's lease clock as a renewal does
/// (`XCLAIM … JUSTID` counts no delivery). A worker runs it after a call that may have
/// given it entries whose reply it lost (a read, a reclaim), to take back those it does
/// not hold; their clocks restart so that no reclaim, its own or another worker's, takes
/// them meanwhile and counts their delivery as lost.
///
/// KEYS: stream. ARGV: group, consumer, first id (`-`, or `(id` after it), count.
/// Returns `{id, deliveries}...`, in id order.
pub(crate) static OWN_PENDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "
local out = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], '+', ARGV[4], ARGV[2])) do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, p[1], 'JUSTID')
  out[#out + 1] = {p[1], p[4]}
end
return out
",
    )
});

/// Moves due delayed tasks to the stream, marked as having waited there (field `p`):
/// their clients may no longer know their entries, so a cancel of one is only a flag,
/// which a worker looks for before it runs such a task.
///
/// KEYS: delayed, stream. ARGV: most to move.
/// Returns `{moved, ms until the next is due (-1: none)}`.
pub(crate) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', m, 'p', '1')
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {{#due, wait}}
"
    ))
});

/// Cancels a task: one still delayed (a countdown, or a retry waiting for its time) or
/// not yet delivered (before any worker made the queue's group too) is removed and ends
/// `Cancelled` at once; one held by a worker, or
/// whose entry the client no longer knows (it was retried or redelivered since), is
/// flagged for its worker (which also looks for the flag before it runs a retried or
/// redelivered task).
///
/// KEYS: stream, delayed, cancel flag, result, reply list, waiters, retry record,
/// idempotency record (the none key for none).
/// ARGV: group, entry id (`` if unknown), delayed member (`` if none), ttl s,
/// cancelled outcome, reply, reply-list prefix, the none key (`Keys::none`).
/// Returns 1 (cancelled, now or before: its outcome is `Cancelled`), 2 (flagged: stopped
/// at its worker's next renewal, and ended `Cancelled` by `FINISH` if its run ends
/// before) or 0 (finished already with another outcome, or an
/// idempotent task no worker is seen to hold whose record and outcome are gone). A cancelled
/// task's outcome goes to every client waiting for it (those that submitted it again
/// with its idempotency key), as a finish's does.
///
/// As with `FINISH`, an idempotency record lapses with the outcome a cancel writes
/// (the record may have been made by a client that keeps outcomes longer than this
/// one: a repeat after the outcome is gone would otherwise find a record whose task
/// will never answer). A flag lives as long as the record at least, and
/// [`CANCEL_FLAG_LIFE`] at least: the task it stops may still wait for its time (a
/// countdown another client made) or in a backlog, which no outcome's life bounds,
/// and a flag that lapsed first would let it run after its cancel was accepted. The
/// flag goes when the task ends (`FINISH`), so its life matters only for a task that
/// never ends (its queue deleted) or one that had ended, its outcome gone, when it was
/// cancelled.
pub(crate) static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}
local function deliver()
  if redis.call('SET', KEYS[4], ARGV[5], 'NX', 'EX', ARGV[4]) then
    redis.call('RPUSH', KEYS[5], ARGV[6])
    redis.call('EXPIRE', KEYS[5], ARGV[4])
    for _, w in ipairs(redis.call('SMEMBERS', KEYS[6])) do
      local l = ARGV[7] .. w
      if l ~= KEYS[5] then
        redis.call('RPUSH', l, ARGV[6])
        redis.call('EXPIRE', l, ARGV[4])
      end
    end
    redis.call('DEL', KEYS[6])
    if KEYS[8] ~= ARGV[8] then redis.call('EXPIRE', KEYS[8], ARGV[4]) end
  end
end
if ARGV[3] ~= '' and redis.call('ZREM', KEYS[2], ARGV[3]) == 1 then
  deliver()
  return 1
end
local retry = redis.call('GET', KEYS[7])
if retry and redis.call('ZREM', KEYS[2], retry) == 1 then
  redis.call('DEL', KEYS[7])
  deliver()
  return 1
end
local ended = redis.call('GET', KEYS[4])
-- Ended cancelled (a run of this cancel whose reply was lost, and which the client sent
-- again, or another's cancel): it will end as the cancel asks.
if ended == ARGV[5] then return 1 end
if ended then return 0 end
local held = false
if ARGV[2] ~= '' then
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  if type(p) == 'table' and p.err then
    -- No worker has made the group yet: nothing of the stream is delivered.
    if string.sub(p.err, 1, 7) ~= 'NOGROUP' then return redis.error_reply(p.err) end
    p = {{}}
  end
  held = p[1] ~= nil
  if not held and redis.call('XDEL', KEYS[1], ARGV[2]) == 1 then
    deliver()
    return 1
  end
end
-- An idempotent task that no worker is seen to hold, whose record and outcome are both
-- gone, is unknown here: it ended long ago (a flag would cancel the next run of its
-- key), or waits where a repeat would run it again anyway.
if not held and KEYS[8] ~= ARGV[8] and redis.call('EXISTS', KEYS[8]) == 0 then return 0 end
local life = math.max(tonumber(ARGV[4]) * 1000, {flag_ms})
if KEYS[8] ~= ARGV[8] then life = math.max(life, redis.call('PTTL', KEYS[8])) end
redis.call('SET', KEYS[3], '1', 'PX', int(life))
return 2
",
        flag_ms = CANCEL_FLAG_LIFE.as_millis()
    ))
});

/// The shortest life of a cancel flag (see [`CANCEL`]).
pub(crate) const CANCEL_FLAG_LIFE: std::time::Duration =
    std::time::Duration::from_secs(30 * 86_400);

/// Takes or keeps the scheduler's leader lease.
///
/// KEYS: lease, fence counter. ARGV: scheduler id, ttl ms.
/// Returns the fencing token (> 0) while the caller leads, else 0.
pub(crate) static LEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '1')
end
if cur then return 0 end
local f = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return f
",
    )
});

/// Puts a dead letter back on the stream. An idempotent task's kept outcome (the dead
/// letter's) goes, and its record is made anew for `ttl`: the new run's outcome is
/// then written and answers the repeats, which join the run meanwhile (the old outcome
/// stayed, so the new one was dropped and repeats got the dead letter).
///
///
/// The requeue's token is kept for 10 minutes: the same requeue sent again on a new
/// connection (the reply to the first was lost with its connection) finds the dead
/// letter gone and its own token, and says it requeued, where it said there was no such
/// dead letter (a requeue by hand after that ran the task twice).
///
/// KEYS: dead, stream, the task's result, its idempotency record (the none key for
/// none), the requeue marker.
/// ARGV: dead-letter id, envelope, ttl s, token, the none key (`Keys::none`).
/// Returns 1, or 0 if there was no such dead letter.
pub(crate) static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  if redis.call('GET', KEYS[5]) == ARGV[4] then return 1 end
  return 0
end
redis.call('SET', KEYS[5], ARGV[4], 'EX', 600)
if KEYS[4] ~= ARGV[5] then
  redis.call('DEL', KEYS[3])
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
end
redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
return 1
",
    )
});

/// Removes a consumer that holds no pending entries (a worker that stopped, or one
/// long dead whose tasks were all reclaimed). Another's (`ARGV[3]` = `1`) only once its
/// heartbeat key is gone: that lives three of its own leases, which may be longer than
/// the retiring worker's.
///
/// A stream or group that is gone (a server that lost its data, a queue deleted, the
/// group destroyed) holds nothing pending for anyone.
///
/// KEYS: stream, workers, worker info. ARGV: group, consumer, another's (`1`) or its own
/// (`0`).
/// Returns 1 if it was removed, 0 if it still holds entries or lives.
pub(crate) static RETIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not p.err and p[1] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});
