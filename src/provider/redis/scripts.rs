//! The Lua scripts, each atomic on the server. Every key a script touches
//! is passed in `KEYS` (a cluster proxy or a future Redis Cluster mode can
//! route them); the server's clock (`TIME`) judges heartbeats, so hosts
//! with skewed clocks agree on who is dead. The byte forms they build and
//! read are described in [`super::stamp`]: `\30` is `RS`, `\31` is `US`.

use redis::Script;
use std::sync::LazyLock;

/// Lua helpers shared by the scripts that take deliveries apart.
///
/// `unstamp(v)` returns the delivery number and the queue entry of a
/// stamped delivery (`nil, v` for anything else); `carried(entry)` returns
/// the job id, recoveries and payload of a carried entry (`nil, 0, entry`
/// for a plain payload); `tag(consumer)` is the ULID that ends a consumer
/// id, so that `tag .. '.' .. n` is a delivery id.
const HELPERS: &str = r"
local function tag(consumer)
  return string.match(consumer, '([^:]*)$')
end
local function unstamp(v)
  if string.byte(v, 1) == 30 then
    local p = string.find(v, '\30', 2, true)
    if p then return string.sub(v, 2, p - 1), string.sub(v, p + 1) end
  end
  return nil, v
end
local function carried(e)
  if string.byte(e, 1) == 31 then
    local s, f, o, c = string.find(e, '^\31([^\30\31]+)\31(%d+)\30')
    if s then return o, tonumber(c), string.sub(e, f + 1) end
  end
  return nil, 0, e
end
local function own_id(payload)
  local ok, job = pcall(cjson.decode, payload)
  if ok and type(job) == 'table' and type(job.id) == 'string' and job.id ~= '' then
    return job.id
  end
  return nil
end
";

/// Takes up to `ARGV[1]` entries from the right of `KEYS[1]` (the queue),
/// oldest first, stopping before the one that would bring the batch over
/// `ARGV[3]` bytes (at least one is taken; the rest go back where they
/// were). Each is stamped `RS <ARGV[2] + i> RS <entry>` and pushed to the
/// left of `KEYS[2]` (the processing list). Returns the stamped deliveries.
/// Two commands per batch, not per job: `RPOP` with a count, one `LPUSH`
/// per thousand.
pub(super) static FETCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local items = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not items then return {} end
local seq, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local out, total, n = {}, 0, #items
for i = 1, n do
  local v = items[i]
  total = total + #v
  if i > 1 and total > cap then
    for j = n, i, -1 do redis.call('RPUSH', KEYS[1], items[j]) end
    break
  end
  out[i] = '\30' .. (seq + i) .. '\30' .. v
end
for a = 1, #out, 1000 do
  redis.call('LPUSH', KEYS[2], unpack(out, a, math.min(a + 999, #out)))
end
return out
",
    )
});

/// Moves up to `ARGV[2]` jobs of `KEYS[1]` (delayed set) due at `ARGV[1]`
/// to the back of `KEYS[2]` (the queue); returns how many.
pub(super) static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, v in ipairs(due) do
  redis.call('ZREM', KEYS[1], v)
  redis.call('LPUSH', KEYS[2], v)
end
return #due
",
    )
});

/// Records this consumer's heartbeat (`ARGV[1]`) at the server's time in
/// every consumers set in `KEYS`.
pub(super) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, now, ARGV[1])
end
return 1
",
    )
});

/// Up to `ARGV[2]` consumers of `KEYS[1]` whose last heartbeat is more
/// than `ARGV[1]` seconds old (server time).
pub(super) static STALE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'LIMIT', 0, tonumber(ARGV[2]))
",
    )
});

/// Recovers the processing list `KEYS[1]` of consumer `ARGV[1]` when that
/// consumer's heartbeat in `KEYS[3]` is missing or older than `ARGV[2]`
/// seconds. Each delivery goes back to the front of `KEYS[2]` (the queue),
/// in its order, as a carried entry (its job id and one more recovery),
/// unless it was recovered more than `ARGV[3]` times: then its dead-letter
/// record goes to `KEYS[4]` (trimmed to `ARGV[5]`) as a poison pill.
/// `ARGV[4]` is the provider name for the record. Returns `{recovered,
/// trimmed, record...}` (the poison pills' records, for the failure
/// handlers), or `{-1, 0}` when the consumer is alive.
pub(super) static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}{}",
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seen = redis.call('ZSCORE', KEYS[3], ARGV[1])
if seen and tonumber(seen) >= now - tonumber(ARGV[2]) then
  return {-1, 0}
end
local max = tonumber(ARGV[3])
local out = {0, 0}
local k = 0
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then break end
  k = k + 1
  local did, entry = unstamp(v)
  local origin, n, payload = carried(entry)
  origin = origin or (tag(ARGV[1]) .. '.' .. (did or ('x' .. k)))
  n = n + 1
  if n > max then
    local rec = {raw = payload, attempts = 0, provider = ARGV[4], failed_at = now,
      id = own_id(payload) or origin,
      error = 'poison pill: its consumer died while holding it ' .. n .. ' times (max_recoveries ' .. max .. ')'}
    local r = cjson.encode(rec)
    redis.call('LPUSH', KEYS[4], r)
    out[#out + 1] = r
  else
    redis.call('RPUSH', KEYS[2], '\31' .. origin .. '\31' .. n .. '\30' .. payload)
    out[1] = out[1] + 1
  end
end
if #out > 2 then
  local len, keep = redis.call('LLEN', KEYS[4]), tonumber(ARGV[5])
  if len > keep then
    redis.call('LTRIM', KEYS[4], 0, keep - 1)
    out[2] = len - keep
  end
end
redis.call('ZREM', KEYS[3], ARGV[1])
return out
"
    ))
});

/// Moves whatever is left in `KEYS[1]` (own processing list) back to the
/// front of `KEYS[2]` (the queue) in order, and removes consumer `ARGV[1]`
/// from `KEYS[3]`; returns how many jobs moved. A delivery goes back as
/// the entry it was taken as; a job without an id of its own goes back
/// carried, so that it keeps the id it was given.
pub(super) static RETURN_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}{}",
        r"
local n = 0
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then break end
  local did, entry = unstamp(v)
  if did and string.byte(entry, 1) ~= 31 and not own_id(entry) then
    local ok, job = pcall(cjson.decode, entry)
    if ok and type(job) == 'table' then
      entry = '\31' .. tag(ARGV[1]) .. '.' .. did .. '\31' .. 0 .. '\30' .. entry
    end
  end
  redis.call('RPUSH', KEYS[2], entry)
  n = n + 1
end
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"
    ))
});

/// Deletes `KEYS[1]` (a lock) when it still holds `ARGV[1]`.
pub(super) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Removes the stamped deliveries in `ARGV` from `KEYS[1]` (a processing
/// list). Jobs mostly finish in the order they were fetched, so the acked
/// ones are mostly the oldest, at the right end: those are cut off with
/// one `LTRIM`; the others are removed one by one with `LREM` from the
/// right. A delivery no longer there is skipped (a resent batch).
pub(super) const ACK: &str = r"
local want, n = {}, #ARGV
for i = 1, n do want[ARGV[i]] = true end
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
local cut = 0
for i = #tail, 1, -1 do
  local v = tail[i]
  if not want[v] then break end
  want[v] = nil
  cut = cut + 1
end
if cut > 0 then redis.call('LTRIM', KEYS[1], 0, -cut - 1) end
for v in pairs(want) do redis.call('LREM', KEYS[1], -1, v) end
return cut
";

/// Settles one delivery held in `KEYS[1]` (processing list) atomically:
/// removes the stamped delivery `ARGV[1]` and, only if it was still there,
/// stores `ARGV[3]` into `KEYS[2]` as `ARGV[2]` says: `defer` (sorted set,
/// score `ARGV[4]`) or `dead` (list trimmed to `ARGV[4]` records). Returns
/// how many old dead letters the trim removed, or -1 when the delivery was
/// no longer held (settled already, or recovered by another process).
pub(super) const SETTLE: &str = r"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return -1 end
if ARGV[2] == 'defer' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  return 0
end
local len, keep = redis.call('LPUSH', KEYS[2], ARGV[3]), tonumber(ARGV[4])
if len > keep then
  redis.call('LTRIM', KEYS[2], 0, keep - 1)
  return len - keep
end
return 0
";
