-- KEYS delayed. ARGV delay ms, priority, tag, body, tag, body, ...: messages published with a
-- delay.
for i = 3, #ARGV, 2 do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]),
               ARGV[i] .. '0:' .. ARGV[2] .. ':' .. ARGV[i + 1])
end
return (#ARGV - 2) / 2
