-- KEYS the entry's stream, leases. ARGV group, consumer, id, pel, lease ms, priority. Pushes
-- the lease out and resets the entry's idle time (XCLAIM JUSTID: the delivery counter stays).
-- 1, or 0 if the delivery was lost.
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])) then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[6] .. ':' .. ARGV[3])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
