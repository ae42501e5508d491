-- A tunnel closed: this instance's count for the client key - 1; a count
-- at zero is removed, so the hash holds only clients with open tunnels.
-- KEYS[1] sluice:tun:{instance}; ARGV[1] client key.
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return n
