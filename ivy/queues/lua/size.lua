-- KEYS stream (priority 0), levels, delayed. Messages waiting or reserved in every stream of
-- the queue, plus the delayed ones.
local n = redis.call('ZCARD', KEYS[3])
for _, p in ipairs(levels(KEYS[2])) do n = n + redis.call('XLEN', stream_of(KEYS[1], p)) end
return n
