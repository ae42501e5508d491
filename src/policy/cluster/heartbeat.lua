-- Every few seconds: this instance is alive for another TTL, and so are its
-- counts. With ARGV[3] = "1" the hash is replaced by the true local counts
-- that follow (after an outage, a lost release, a reload, and once a minute),
-- so a lost update heals.
-- KEYS[1] sluice:instances; KEYS[2] sluice:tun:{instance}
-- ARGV[1] instance id; ARGV[2] TTL, ms; ARGV[3] "1" to replace the counts;
-- ARGV[4..] client key, count, client key, count, ...
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  for i = 4, #ARGV, 2 do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
