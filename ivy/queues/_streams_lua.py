"""The Lua scripts of the Redis Streams queue backend (:mod:`ivy.queues.redis_streams`).

Every operation that reads and then writes runs as one script, so that it is atomic on the
server: no lock key is ever taken (a lock whose holder was SIGKILLed is how taskiq-redis #131
stops reclaiming for good), and no two consumers can claim one entry between a check and a
claim (taskiq-redis #123). Times come from the server's clock (``TIME``), so hosts whose clocks
disagree still agree on when a lease ran out or a delayed message is due.

Keys of queue Q, all with the hash tag ``{Q}`` so that one queue's keys share a cluster slot
(the scripts compute the names of the priority streams from the key of priority 0):

* ``ivy:{Q}``: the stream of priority 0, ``ivy:{Q}:p<P>`` the stream of priority P (1-255);
  each entry has ``b`` (the body) and, after a retry, ``n`` (the deliveries that came before
  this entry). Every stream has the consumer group ``ivy``;
* ``ivy:{Q}:levels``: set of the priorities above 0 that have a stream;
* ``ivy:{Q}:leases``: sorted set, ``<P>:<entry id>`` -> the time its reservation ends (ms);
* ``ivy:{Q}:delayed``: sorted set, ``<16-char tag><n>:<P>:<body>`` -> the time it is due (ms);
* ``ivy:{Q}.dead``: the dead letters, a stream of ``b`` body, ``r`` reason, ``t`` time (ms),
  ``n`` deliveries, ``p`` priority.
"""

from __future__ import annotations

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

_COMMON = """
local function stream_of(base, p)
    if p == '0' then return base end
    return base .. ':p' .. p
end
-- the priorities that have a stream, highest first, 0 last
local function levels(levelkey)
    local ps = redis.call('SMEMBERS', levelkey)
    table.sort(ps, function(a, b) return tonumber(a) > tonumber(b) end)
    table.insert(ps, '0')
    return ps
end
-- the stream and group of priority p exist (that of 0 is made by the consumer)
local function ensure_level(base, levelkey, group, p)
    if p ~= '0' and redis.call('SADD', levelkey, p) == 1 then
        pcall(redis.call, 'XGROUP', 'CREATE', stream_of(base, p), group, '0', 'MKSTREAM')
    end
end
local function field(fields, name)
    for i = 1, #fields, 2 do
        if fields[i] == name then return fields[i + 1] end
    end
    return nil
end
-- A pending entry belongs to a delivery while its owner is this consumer and its delivery
-- counter is the one it had when handed out (a reclaim by the same consumer increments it).
local function owned(stream, group, me, id, pel)
    local p = redis.call('XPENDING', stream, group, id, id, 1)
    return #p == 1 and p[1][2] == me and tonumber(p[1][4]) == pel
end
"""

#: KEYS stream (priority 0), leases, delayed, dead, levels. ARGV group, consumer, count,
#: lease ms, look for orphans (0/1), orphan idle ms, forget idle consumers after ms.
#: Returns {ms until the next due message or lease end (-1: none), {priorities, highest
#: first}, {id, body, n, pel, priority, ...}}.
FETCH = _NOW + _COMMON + """
local S, L, D, X, V = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, me, count, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
-- delayed messages and retries that are due move into their stream
local due = redis.call('ZRANGEBYSCORE', D, '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(due) do
    local c1 = string.find(m, ':', 17, true)
    local c2 = string.find(m, ':', c1 + 1, true)
    local p = string.sub(m, c1 + 1, c2 - 1)
    ensure_level(S, V, group, p)
    redis.call('XADD', stream_of(S, p), '*', 'b', string.sub(m, c2 + 1),
               'n', string.sub(m, 17, c1 - 1))
    redis.call('ZREM', D, m)
end
local ps = levels(V)
local out = {}
local taken = 0
-- entries whose reservation ended are claimed for this consumer
local claims = redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, count)
if ARGV[5] == '1' then
    for _, p in ipairs(ps) do
        local s = stream_of(S, p)
        -- pending entries without a lease (their consumer died between reading and leasing)
        for _, e in ipairs(redis.call('XPENDING', s, group, 'IDLE', ARGV[6], '-', '+', 100)) do
            local member = p .. ':' .. e[1]
            if #claims < count and not redis.call('ZSCORE', L, member) then
                table.insert(claims, member)
            end
        end
        -- consumers that hold nothing and were idle for long (SIGKILLed workers) are forgotten
        for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', s, group)) do
            local name, pending, idle = field(c, 'name'), field(c, 'pending'), field(c, 'idle')
            if pending == 0 and idle > tonumber(ARGV[7]) and name ~= me then
                redis.call('XGROUP', 'DELCONSUMER', s, group, name)
            end
        end
    end
end
for _, member in ipairs(claims) do
    local colon = string.find(member, ':', 1, true)
    local p, id = string.sub(member, 1, colon - 1), string.sub(member, colon + 1)
    local s = stream_of(S, p)
    local entry = redis.call('XCLAIM', s, group, me, 0, id)[1]
    redis.call('ZREM', L, member)
    if not entry then
        redis.call('XACK', s, group, id)  -- acknowledged or deleted meanwhile
    else
        local body, n = field(entry[2], 'b'), tonumber(field(entry[2], 'n') or '0')
        local pel = tonumber(redis.call('XPENDING', s, group, id, id, 1)[1][4])
        if not body then
            redis.call('XADD', X, '*', 'b', '', 'r', 'a stream entry without a body field',
                       't', now, 'n', n + pel - 1, 'p', p)
            redis.call('XACK', s, group, id)
            redis.call('XDEL', s, id)
        else
            redis.call('ZADD', L, now + lease, member)
            table.insert(out, id); table.insert(out, body)
            table.insert(out, n); table.insert(out, pel); table.insert(out, p)
            taken = taken + 1
        end
    end
end
-- then new entries, the highest priority first
for _, p in ipairs(ps) do
    if taken >= count then break end
    local s = stream_of(S, p)
    local read = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count - taken,
                            'STREAMS', s, '>')
    if read then
        for _, entry in ipairs(read[1][2]) do
            local body = field(entry[2], 'b')
            if body then
                redis.call('ZADD', L, now + lease, p .. ':' .. entry[1])
                table.insert(out, entry[1]); table.insert(out, body)
                table.insert(out, tonumber(field(entry[2], 'n') or '0')); table.insert(out, 1)
                table.insert(out, p)
                taken = taken + 1
            else
                redis.call('XADD', X, '*', 'b', '', 'r', 'a stream entry without a body field',
                           't', now, 'n', 1, 'p', p)
                redis.call('XACK', s, group, entry[1])
                redis.call('XDEL', s, entry[1])
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
return {wake, ps, out}
"""

#: KEYS leases. ARGV lease ms, member, member, ...: the leases (``<P>:<id>``) of entries read
#: by a blocking XREADGROUP.
LEASE = _NOW + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
"""

#: KEYS the entry's stream, leases, delayed, dead. ARGV group, consumer, id, pel, action (ack,
#: retry, dead), delay ms or reason, n (deliveries the next entry counts as done), tag,
#: priority[, body (retry) or the dead letters' TTL in ms, '' for none (dead)]. A dead letter
#: trims the dead stream of the entries older than the TTL (XTRIM MINID). Returns 1, or 0
#: when the delivery is no longer this consumer's (its lease ran out and another consumer, or
#: this one again, took the entry).
SETTLE = _NOW + _COMMON + """
local s, L, D, X = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, me, id, pel, action = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local p = ARGV[9]
if not owned(s, group, me, id, pel) then return 0 end
local body = action == 'retry' and ARGV[10] or nil
if action ~= 'ack' and not body then
    local entry = redis.call('XRANGE', s, id, id)[1]
    body = entry and field(entry[2], 'b') or ''
end
redis.call('XACK', s, group, id)
redis.call('XDEL', s, id)
redis.call('ZREM', L, p .. ':' .. id)
if action == 'retry' then
    local delay = tonumber(ARGV[6])
    if delay <= 0 then
        redis.call('XADD', s, '*', 'b', body, 'n', ARGV[7])
    else
        redis.call('ZADD', D, now + delay, ARGV[8] .. ARGV[7] .. ':' .. p .. ':' .. body)
    end
elseif action == 'dead' then
    redis.call('XADD', X, '*', 'b', body, 'r', ARGV[6], 't', now, 'n', ARGV[7], 'p', p)
    local ttl = tonumber(ARGV[10] or '')
    if ttl then redis.call('XTRIM', X, 'MINID', now - ttl) end
end
return 1
"""

#: KEYS the entry's stream, leases. ARGV group, consumer, id, pel, lease ms, priority. Pushes
#: the lease out and resets the entry's idle time (XCLAIM JUSTID: the delivery counter
#: stays). 1, or 0 if the delivery was lost.
EXTEND = _NOW + _COMMON + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[6] .. ':' .. ARGV[3])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

#: KEYS stream (priority 0), levels. ARGV group, priority (above 0), body, body, ...:
#: messages with a priority, into their stream (made with its group if new).
PUBLISH_LEVEL = _COMMON + """
ensure_level(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local s = stream_of(KEYS[1], ARGV[2])
for i = 3, #ARGV do redis.call('XADD', s, '*', 'b', ARGV[i]) end
return #ARGV - 2
"""

#: KEYS delayed. ARGV delay ms, priority, tag, body, tag, body, ...: messages published with a
#: delay.
PUBLISH_DELAYED = _NOW + """
for i = 3, #ARGV, 2 do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]),
               ARGV[i] .. '0:' .. ARGV[2] .. ':' .. ARGV[i + 1])
end
return (#ARGV - 2) / 2
"""

#: KEYS dead, stream (priority 0), levels. ARGV group, then id, body, priority, ...: each dead
#: letter that is still there is deleted and its body added to the stream of its priority as
#: a fresh message. Returns how many.
REQUEUE = _COMMON + """
local moved = 0
for i = 2, #ARGV, 3 do
    if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
        ensure_level(KEYS[2], KEYS[3], ARGV[1], ARGV[i + 2])
        redis.call('XADD', stream_of(KEYS[2], ARGV[i + 2]), '*', 'b', ARGV[i + 1])
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

#: KEYS stream (priority 0), levels. ARGV group, consumer: forget the consumer in every
#: stream of the queue where it holds nothing.
FORGET = _COMMON + """
for _, p in ipairs(levels(KEYS[2])) do
    local s = stream_of(KEYS[1], p)
    if #redis.call('XPENDING', s, ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
        redis.call('XGROUP', 'DELCONSUMER', s, ARGV[1], ARGV[2])
    end
end
return 1
"""

#: KEYS stream (priority 0), levels, delayed. Messages waiting or reserved in every stream of
#: the queue, plus the delayed ones.
SIZE = _COMMON + """
local n = redis.call('ZCARD', KEYS[3])
for _, p in ipairs(levels(KEYS[2])) do n = n + redis.call('XLEN', stream_of(KEYS[1], p)) end
return n
"""
