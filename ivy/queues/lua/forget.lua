-- KEYS stream (priority 0), levels. ARGV group, consumer: forget the consumer in every stream
-- of the queue where it holds nothing.
for _, p in ipairs(levels(KEYS[2])) do
    local s = stream_of(KEYS[1], p)
    if #redis.call('XPENDING', s, ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
        redis.call('XGROUP', 'DELCONSUMER', s, ARGV[1], ARGV[2])
    end
end
return 1
