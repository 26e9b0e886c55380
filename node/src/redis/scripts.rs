//! The Lua scripts behind every store operation. Each runs atomically on the master, so a
//! compare-and-set cannot interleave with another writer, and each write announces itself on the
//! table's change channel in the same step. The layout they write is described in
//! `gatehouse_shared::store::redis_layout`; `KEYS` are always the data key, its revision key and
//! the revision counter.

use std::sync::LazyLock;

use redis::Script;

/// The body shared by [`GET`] and [`PROBE`] after the value was found: the value's revision,
/// given one here if it has none of its own (written by a Go node, or changed by one since).
const FOUND: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
local digest = redis.sha1hex(value)
local meta = redis.call('GET', KEYS[2])
local revision
if meta then
  local r, d = string.match(meta, '^(%d+) (%x+)$')
  if d == digest then revision = r end
end
if not revision then
  revision = tostring(redis.call('INCR', KEYS[3]))
  if ttl > 0 then
    redis.call('SET', KEYS[2], revision .. ' ' .. digest, 'PX', ttl)
  else
    redis.call('SET', KEYS[2], revision .. ' ' .. digest)
  end
end
return {value, revision, ttl}
";

/// `GET`: nil, or `{value, revision, pttl}`. A miss writes nothing (unless a revision outlived
/// its value), so that reads keep working where writes are refused (`min-replicas-to-write`
/// with the replica down).
pub static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
local value = redis.call('GET', KEYS[1])
if not value then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DEL', KEYS[2]) end
  return false
end
{FOUND}"
    ))
});

/// `PROBE`, after a keyspace notification of a change someone else made: like [`GET`], but a
/// missing value answers `{revision}`, a revision above every earlier one, so that the deletion
/// it reports is ordered after the writes before it.
pub static PROBE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('DEL', KEYS[2])
  return {{redis.call('INCR', KEYS[3])}}
end
{FOUND}"
    ))
});

/// `WRITE mode value ttl-ms expected channel key`: `mode` is `put`, `create` (no live entry) or
/// `update` (the current value's revision is `expected`). Returns the new revision, or 0 when
/// the condition does not hold.
pub static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local mode = ARGV[1]
if mode ~= 'put' then
  local current = redis.call('GET', KEYS[1])
  if mode == 'create' then
    if current then return 0 end
  else
    if not current then return 0 end
    local meta = redis.call('GET', KEYS[2])
    if not meta then return 0 end
    local r, d = string.match(meta, '^(%d+) (%x+)$')
    if r ~= ARGV[4] or d ~= redis.sha1hex(current) then return 0 end
  end
end
local revision = redis.call('INCR', KEYS[3])
local meta = revision .. ' ' .. redis.sha1hex(ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
  redis.call('SET', KEYS[2], meta, 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], meta)
  ttl = -1
end
redis.call('PUBLISH', ARGV[5], 'P ' .. revision .. ' ' .. ttl .. ' ' .. #ARGV[6] .. '\n' .. ARGV[6] .. ARGV[2])
return revision
",
    )
});

/// `DELETE channel key`: removes the entry and its revision; returns the deletion's revision.
pub static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1], KEYS[2])
local revision = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[1], 'D ' .. revision .. ' 0 ' .. #ARGV[2] .. '\n' .. ARGV[2])
return revision
",
    )
});
