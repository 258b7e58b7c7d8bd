-- KEYS dead. Deletes the dead letters, returns how many there were.
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
