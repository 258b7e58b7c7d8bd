-- KEYS leases. ARGV lease ms, member, member, ...: the leases (<P>:<id>) of entries read by a
-- blocking XREADGROUP.
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
