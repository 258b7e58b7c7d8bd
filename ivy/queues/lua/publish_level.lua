-- KEYS stream (priority 0), levels. ARGV group, priority (above 0), body, body, ...: messages
-- with a priority, into their stream (made with its group if new).
ensure_level(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local s = stream_of(KEYS[1], ARGV[2])
for i = 3, #ARGV do redis.call('XADD', s, '*', 'b', ARGV[i]) end
return #ARGV - 2
