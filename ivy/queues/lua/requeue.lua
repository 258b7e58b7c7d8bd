-- KEYS dead, stream (priority 0), levels. ARGV group, then id, body, priority, ...: each dead
-- letter that is still there is deleted and its body added to the stream of its priority as a
-- fresh message. Returns how many.
local moved = 0
for i = 2, #ARGV, 3 do
    if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
        ensure_level(KEYS[2], KEYS[3], ARGV[1], ARGV[i + 2])
        redis.call('XADD', stream_of(KEYS[2], ARGV[i + 2]), '*', 'b', ARGV[i + 1])
        moved = moved + 1
    end
end
return moved
