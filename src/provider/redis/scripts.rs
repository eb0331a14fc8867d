//! The Lua scripts, each atomic on the server. Every key a script touches
//! is passed in `KEYS` (a cluster proxy or a future Redis Cluster mode can
//! route them); the server's clock (`TIME`) judges heartbeats, so hosts
//! with skewed clocks agree on who is dead.

use redis::Script;
use std::sync::LazyLock;

/// Moves up to `ARGV[1]` jobs from the right of `KEYS[1]` (the queue) to
/// the left of `KEYS[2]` (this consumer's processing list), oldest first.
pub(super) static FETCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
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

/// Recovers the processing list `KEYS[1]` of consumer `ARGV[1]` when that
/// consumer's heartbeat in `KEYS[3]` is missing or older than `ARGV[2]`
/// seconds: each job goes back to the front of `KEYS[2]` (the queue), in
/// its order, unless it was recovered more than `ARGV[3]` times (counted in
/// the hash `KEYS[5]` by the payload's SHA-1), then it goes to `KEYS[4]`
/// (dead letters, trimmed to `ARGV[5]`) as a poison pill. `ARGV[4]` is the
/// provider name for the record. Returns `{recovered, dead}`, or `{-1, 0}`
/// when the consumer is alive.
pub(super) static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local seen = redis.call('ZSCORE', KEYS[3], ARGV[1])
if seen and tonumber(seen) >= now - tonumber(ARGV[2]) then
  return {-1, 0}
end
local max = tonumber(ARGV[3])
local recovered, dead = 0, 0
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then break end
  local h = redis.sha1hex(v)
  local n = redis.call('HINCRBY', KEYS[5], h, 1)
  if n > max then
    local rec = {raw = v, attempts = 0, provider = ARGV[4], failed_at = now,
      error = 'poison pill: its consumer died while holding it ' .. n .. ' times (max_recoveries ' .. max .. ')'}
    local ok, job = pcall(cjson.decode, v)
    if ok and type(job) == 'table' and type(job.id) == 'string' then rec.id = job.id end
    redis.call('LPUSH', KEYS[4], cjson.encode(rec))
    redis.call('HDEL', KEYS[5], h)
    dead = dead + 1
  else
    redis.call('RPUSH', KEYS[2], v)
    recovered = recovered + 1
  end
end
if dead > 0 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
end
redis.call('EXPIRE', KEYS[5], 86400)
redis.call('ZREM', KEYS[3], ARGV[1])
return {recovered, dead}
",
    )
});

/// Moves whatever is left in `KEYS[1]` (own processing list) back to the
/// front of `KEYS[2]` (the queue) in order, and removes consumer `ARGV[1]`
/// from `KEYS[3]`; returns how many jobs moved.
pub(super) static RETURN_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = 0
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then break end
  redis.call('RPUSH', KEYS[2], v)
  n = n + 1
end
redis.call('ZREM', KEYS[3], ARGV[1])
return n
",
    )
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

/// Settles one job held in `KEYS[1]` (processing list) atomically: removes
/// the payload `ARGV[1]` and, only if it was still there, stores `ARGV[3]`
/// into `KEYS[2]` as `ARGV[2]` says: `defer` (sorted set, score `ARGV[4]`)
/// or `dead` (list trimmed to `ARGV[4]` records). Returns 1, or 0 when the
/// job was no longer held (another process recovered it).
pub(super) const SETTLE: &str = r"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'defer' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
else
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
end
return 1
";

/// Removes consumers of `KEYS[1]` silent for more than `ARGV[1]` seconds
/// (server time); their processing lists, if any, are recovered by
/// [`RECOVER`] since a missing heartbeat counts as dead.
pub(super) static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))
",
    )
});
