-- KEYS stream (priority 0), leases, delayed, dead, levels. ARGV group, consumer, count, lease
-- ms, look for orphans (0/1), orphan idle ms, forget idle consumers after ms. Returns {ms
-- until the next due message or lease end (-1: none), {priorities, highest first}, {id, body,
-- n, pel, priority, ...}}.
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
