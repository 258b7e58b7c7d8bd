-- KEYS the entry's stream, leases, delayed, dead. ARGV group, consumer, id, pel, action (ack,
-- retry, dead), delay ms or reason, n (deliveries the next entry counts as done), tag,
-- priority[, body (retry) or the dead letters' TTL in ms, '' for none (dead)]. A dead letter
-- trims the dead stream of the entries older than the TTL (XTRIM MINID). Returns 1, or 0 when
-- the delivery is no longer this consumer's (its lease ran out and another consumer, or this
-- one again, took the entry).
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
