"""The Lua scripts of ``RedisBroker``: streams (publish, position, read) and presence. One atomic step each.

A stream (a room's or a user's) is a Redis Stream whose entry ids are the offsets (``<offset>-0``)
plus a meta hash: ``e`` the epoch, ``s`` the top offset. Modelled on centrifuge's
``broker_history_add_stream.lua``: the publish script increments the offset, appends with
``XADD ... MAXLEN``, sets the expiries and publishes the live message in one step, so history
and live delivery always agree. A missing meta hash (expired, flushed, never written) gets a new
epoch and the stale stream is deleted: lost history always shows as an epoch change.

Every key of one stream and its channel share the stream's hash tag, so the scripts run on one
Redis Cluster master.
"""

from __future__ import annotations


def _epoch(new: str) -> str:
    """Lua: the stream's epoch; a missing meta hash gets ``new`` and the stale stream is deleted."""
    return f"""local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = {new}
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('del', KEYS[1])
end
"""


#: KEYS: stream, meta, and the idempotency key if there is one
#: ARGV: body, maxlen, ttl ms, channel, publish command, meta ttl s, new epoch, message header
#: Returns {offset, epoch, duplicate (0/1)}. The live message is
#: ``header .. offset .. " " .. epoch .. " " .. body``.
PUBLISH = (
    """
if KEYS[3] then
  local seen = redis.call('get', KEYS[3])
  if seen then
    local sp = string.find(seen, ' ')
    return {tonumber(string.sub(seen, 1, sp - 1)), string.sub(seen, sp + 1), 1}
  end
end
"""
    + _epoch("ARGV[7]")
    + """local offset = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[6])
local now = redis.call('time')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1], 't', ms)
redis.call('pexpire', KEYS[1], ARGV[3])
redis.call(ARGV[5], ARGV[4], ARGV[8] .. offset .. ' ' .. epoch .. ' ' .. ARGV[1])
if KEYS[3] then
  redis.call('set', KEYS[3], offset .. ' ' .. epoch, 'PX', ARGV[3])
end
return {offset, epoch, 0}
"""
)

#: KEYS: stream, meta. ARGV: meta ttl s, new epoch, since offset (-1: position only),
#: limit, ttl ms (entries older are gone). Returns {top, epoch, entries or 0}: entries are
#: XRANGE's answer after ``since`` (at most limit + 1), or 0 when the oldest one needed is older
#: than the ttl (expired).
READ = (
    _epoch("ARGV[2]")
    + """redis.call('expire', KEYS[2], ARGV[1])
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local since = tonumber(ARGV[3])
if since < 0 or since >= top then
  return {top, epoch, {}}
end
local entries = redis.call('xrange', KEYS[1], (since + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[4]) + 1)
if #entries > 0 then
  local now = redis.call('time')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local fields = entries[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' and tonumber(fields[i + 1]) + tonumber(ARGV[5]) <= ms then
      return {top, epoch, 0}
    end
  end
end
return {top, epoch, entries}
"""
)


# -- presence ----------------------------------------------------------------------------------
#
# A room's presence is two hashes under the room's hash tag: ``p`` maps a user id to its
# connections per node (``"<node>:<count> <node>:<count>"``, node ids are 16 hex digits) and
# ``pi`` a user id to the info the application exposes (JSON, the latest join's). Both keys
# expire ``presence_ttl`` after the last write or refresh (live nodes refresh the rooms they
# have members of). Counts change by deltas, so no node needs the others' numbers to write its
# own. Entries of a dead node are left out by the readers (its node key expired) and removed by
# ``PRESENCE_RESET``.

#: KEYS: counts, info. ARGV: user, node, delta, info ('' keeps it), key ttl ms.
#: Returns the user's counts after the change ('' when it has none left).
PRESENCE_CHANGE = """
local value = redis.call('hget', KEYS[1], ARGV[1])
local parts, mine = {}, 0
if value then
  for node, n in string.gmatch(value, '(%x+):(%d+)') do
    if node == ARGV[2] then mine = tonumber(n) else parts[#parts + 1] = node .. ':' .. n end
  end
end
mine = mine + tonumber(ARGV[3])
if mine > 0 then parts[#parts + 1] = ARGV[2] .. ':' .. mine end
if #parts == 0 then
  redis.call('hdel', KEYS[1], ARGV[1])
  redis.call('hdel', KEYS[2], ARGV[1])
  return ''
end
local out = table.concat(parts, ' ')
redis.call('hset', KEYS[1], ARGV[1], out)
if ARGV[4] ~= '' then redis.call('hset', KEYS[2], ARGV[1], ARGV[4]) end
redis.call('pexpire', KEYS[1], ARGV[5])
redis.call('pexpire', KEYS[2], ARGV[5])
return out
"""

#: KEYS: counts, info. ARGV: key ttl ms, k, k node ids whose entries go, then triples
#: (user, "<node>:<count>", info or '') to add. A node rewriting its own entries (after a
#: reconnect) passes itself and its users; a reader that found dead nodes passes them alone.
PRESENCE_RESET = """
local drop = {}
local k = tonumber(ARGV[2])
for i = 3, 2 + k do drop[ARGV[i]] = true end
local all = redis.call('hgetall', KEYS[1])
local users, changed = {}, {}
for i = 1, #all, 2 do
  local parts = {}
  for node, n in string.gmatch(all[i + 1], '(%x+):(%d+)') do
    if drop[node] then changed[all[i]] = true else parts[#parts + 1] = node .. ':' .. n end
  end
  users[all[i]] = parts
end
for i = 3 + k, #ARGV, 3 do
  local parts = users[ARGV[i]] or {}
  parts[#parts + 1] = ARGV[i + 1]
  users[ARGV[i]] = parts
  changed[ARGV[i]] = true
  if ARGV[i + 2] ~= '' then redis.call('hset', KEYS[2], ARGV[i], ARGV[i + 2]) end
end
for user in pairs(changed) do
  local parts = users[user]
  if #parts == 0 then
    redis.call('hdel', KEYS[1], user)
    redis.call('hdel', KEYS[2], user)
  else
    redis.call('hset', KEYS[1], user, table.concat(parts, ' '))
  end
end
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('pexpire', KEYS[1], ARGV[1])
  redis.call('pexpire', KEYS[2], ARGV[1])
end
return 0
"""

#: KEYS: counts, info. ARGV: 1 to read the info too. Returns {counts, info} (HGETALL answers).
PRESENCE_GET = """
local info = {}
if ARGV[1] == '1' then info = redis.call('hgetall', KEYS[2]) end
return {redis.call('hgetall', KEYS[1]), info}
"""
