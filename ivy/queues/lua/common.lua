-- Helpers of the scripts of the Redis Streams queue (docs/internals/redis.md).
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
