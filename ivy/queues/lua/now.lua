-- now: the server's clock in ms (hosts whose clocks disagree still agree on lease ends)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
