"""The Lua scripts of the Redis Streams queue backend (:mod:`ivy.queues.redis_streams`).

Every operation that reads and then writes runs as one script, so that it is atomic on the
server: no lock key is ever taken (a lock whose holder was SIGKILLed is how taskiq-redis #131
stops reclaiming for good), and no two consumers can claim one entry between a check and a
claim (taskiq-redis #123). Times come from the server's clock (``TIME``), so hosts whose clocks
disagree still agree on when a lease ran out or a delayed message is due.

Keys of queue Q, all with the hash tag ``{Q}`` so that one queue's keys share a cluster slot:

* ``ivy:{Q}``: the stream; each entry has ``b`` (the body) and, after a retry, ``n`` (the
  deliveries that came before this entry);
* ``ivy:{Q}:leases``: sorted set, entry id -> the time its reservation ends (ms);
* ``ivy:{Q}:delayed``: sorted set, ``<16-char tag><n>:<body>`` -> the time it is due (ms);
* ``ivy:{Q}.dead``: the dead letters, a stream of ``b`` body, ``r`` reason, ``t`` time (ms),
  ``n`` deliveries.
"""

from __future__ import annotations

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# A pending entry belongs to a delivery while its owner is this consumer and its delivery
# counter is the one it had when handed out (a reclaim by the same consumer increments it).
_OWNED = """
local function owned(stream, group, me, id, pel)
    local p = redis.call('XPENDING', stream, group, id, id, 1)
    return #p == 1 and p[1][2] == me and tonumber(p[1][4]) == pel
end
local function field(fields, name)
    for i = 1, #fields, 2 do
        if fields[i] == name then return fields[i + 1] end
    end
    return nil
end
"""

#: KEYS stream, leases, delayed, dead. ARGV group, consumer, count, lease ms,
#: look for orphans (0/1), orphan idle ms, forget idle consumers after ms.
#: Returns {ms until the next due message or lease end (-1: none), id, body, n, pel, ...}.
FETCH = _NOW + _OWNED + """
local S, L, D, X = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, me, count, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
-- delayed messages and retries that are due move into the stream
local due = redis.call('ZRANGEBYSCORE', D, '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(due) do
    local colon = string.find(m, ':', 17, true)
    redis.call('XADD', S, '*', 'b', string.sub(m, colon + 1), 'n', string.sub(m, 17, colon - 1))
    redis.call('ZREM', D, m)
end
local out = {-1}
-- entries whose reservation ended are claimed for this consumer
local ids = redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, count)
if ARGV[5] == '1' then
    -- pending entries without a lease (their consumer died between reading and leasing)
    for _, p in ipairs(redis.call('XPENDING', S, group, 'IDLE', ARGV[6], '-', '+', 100)) do
        if #ids < count and not redis.call('ZSCORE', L, p[1]) then table.insert(ids, p[1]) end
    end
    -- consumers that hold nothing and were idle for long (SIGKILLed workers) are forgotten
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', S, group)) do
        local name, pending, idle = field(c, 'name'), field(c, 'pending'), field(c, 'idle')
        if pending == 0 and idle > tonumber(ARGV[7]) and name ~= me then
            redis.call('XGROUP', 'DELCONSUMER', S, group, name)
        end
    end
end
for _, id in ipairs(ids) do
    local claimed = redis.call('XCLAIM', S, group, me, 0, id)
    redis.call('ZREM', L, id)
    local entry = claimed[1]
    if not entry then
        redis.call('XACK', S, group, id)  -- acknowledged or deleted meanwhile
    else
        local body, n = field(entry[2], 'b'), tonumber(field(entry[2], 'n') or '0')
        local pel = tonumber(redis.call('XPENDING', S, group, id, id, 1)[1][4])
        if not body then
            redis.call('XADD', X, '*', 'b', '', 'r', 'a stream entry without a body field',
                       't', now, 'n', n + pel - 1)
            redis.call('XACK', S, group, id)
            redis.call('XDEL', S, id)
        else
            redis.call('ZADD', L, now + lease, id)
            table.insert(out, id); table.insert(out, body)
            table.insert(out, n); table.insert(out, pel)
        end
    end
end
-- then new entries
if #out < 4 * count + 1 then
    local read = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count - (#out - 1) / 4,
                            'STREAMS', S, '>')
    if read then
        for _, entry in ipairs(read[1][2]) do
            local body = field(entry[2], 'b')
            if body then
                redis.call('ZADD', L, now + lease, entry[1])
                table.insert(out, entry[1]); table.insert(out, body)
                table.insert(out, tonumber(field(entry[2], 'n') or '0')); table.insert(out, 1)
            else
                redis.call('XADD', X, '*', 'b', '', 'r', 'a stream entry without a body field',
                           't', now, 'n', 1)
                redis.call('XACK', S, group, entry[1])
                redis.call('XDEL', S, entry[1])
            end
        end
    end
end
-- how long until something falls due
local wake = -1
for _, key in ipairs({D, L}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then
        local left = math.max(tonumber(first[2]) - now, 0)
        if wake < 0 or left < wake then wake = left end
    end
end
out[1] = wake
return out
"""

#: KEYS leases. ARGV lease ms, id, id, ...: the leases of entries read by a blocking XREADGROUP.
LEASE = _NOW + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
"""

#: KEYS stream, leases, delayed, dead. ARGV group, consumer, id, pel, action (ack, retry,
#: dead), delay ms or reason, n (deliveries the next entry counts as done), tag[, body].
#: Returns 1, or 0 when the delivery is no longer this consumer's (its lease ran out and
#: another consumer, or this one again, took the entry).
SETTLE = _NOW + _OWNED + """
local S, L, D, X = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, me, id, pel, action = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if not owned(S, group, me, id, pel) then return 0 end
local body = ARGV[9]
if action ~= 'ack' and not body then
    local entry = redis.call('XRANGE', S, id, id)[1]
    body = entry and field(entry[2], 'b') or ''
end
redis.call('XACK', S, group, id)
redis.call('XDEL', S, id)
redis.call('ZREM', L, id)
if action == 'retry' then
    local delay = tonumber(ARGV[6])
    if delay <= 0 then
        redis.call('XADD', S, '*', 'b', body, 'n', ARGV[7])
    else
        redis.call('ZADD', D, now + delay, ARGV[8] .. ARGV[7] .. ':' .. body)
    end
elseif action == 'dead' then
    redis.call('XADD', X, '*', 'b', body, 'r', ARGV[6], 't', now, 'n', ARGV[7])
end
return 1
"""

#: KEYS stream, leases. ARGV group, consumer, id, pel, lease ms. Pushes the lease out and
#: resets the entry's idle time (XCLAIM JUSTID: the delivery counter stays). 1, or 0 if lost.
EXTEND = _NOW + _OWNED + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[3])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

#: KEYS delayed. ARGV delay ms, tag, body, tag, body, ...: messages published with a delay.
PUBLISH_DELAYED = _NOW + """
for i = 2, #ARGV, 2 do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i] .. '0:' .. ARGV[i + 1])
end
return (#ARGV - 1) / 2
"""

#: KEYS dead, stream. ARGV id, body, id, body, ...: each dead letter that is still there is
#: deleted and its body added to the stream as a fresh message. Returns how many.
REQUEUE = """
local moved = 0
for i = 1, #ARGV, 2 do
    if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
        redis.call('XADD', KEYS[2], '*', 'b', ARGV[i + 1])
        moved = moved + 1
    end
end
return moved
"""

#: KEYS dead. Deletes the dead letters, returns how many there were.
PURGE = """
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"""

#: KEYS stream. ARGV group, consumer: forget the consumer if it holds nothing.
FORGET = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""
