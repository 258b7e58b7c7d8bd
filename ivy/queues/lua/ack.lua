-- KEYS stream (priority 0), leases. ARGV group, consumer, then id, pel, priority of each
-- delivery to acknowledge. Each one still this consumer's (same owner, same delivery counter)
-- is acknowledged and deleted, and its lease dropped. Returns the ids of the others: their
-- lease ran out and another delivery of them is under way.
local S, L = KEYS[1], KEYS[2]
local group, me = ARGV[1], ARGV[2]
local skipped = {}
for i = 3, #ARGV, 3 do
    local id, pel, p = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    local s = stream_of(S, p)
    local ok, entry = pcall(redis.call, 'XPENDING', s, group, id, id, 1)
    if ok and #entry == 1 and entry[1][2] == me and tonumber(entry[1][4]) == pel then
        redis.call('XACK', s, group, id)
        redis.call('XDEL', s, id)
        redis.call('ZREM', L, p .. ':' .. id)
    else
        table.insert(skipped, id)
    end
end
return skipped
