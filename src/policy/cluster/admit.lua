-- One WebSocket handshake, atomically, on the Redis every sluice of a site
-- shares: the route's GCRA step for the client key, then the sum of the
-- client key's open tunnels over the live instances and, below the cap,
-- this instance's count + 1. Times come from Redis (TIME), so the instances'
-- clocks never matter.
--
-- KEYS[1]  sluice:hs:{route}:{client}   GCRA state: the theoretical arrival time, µs
-- KEYS[2]  sluice:instances             zset: instance id -> heartbeat expiry, ms
-- KEYS[3]  sluice:tun:{instance}        hash: client -> this instance's open tunnels
-- ARGV[1]  emission interval, µs (1e6 / handshakes_per_second)
-- ARGV[2]  handshake_burst
-- ARGV[3]  client key (IPv4 address or IPv6 /64)
-- ARGV[4]  max_connections_per_ip
-- ARGV[5]  "sluice:tun:" (the other instances' hashes are this plus their id)
-- ARGV[6]  instance TTL, ms
-- Returns {0} admitted, {1, retry_after_us} over the rate, {2} at the tunnel cap.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - emission * tonumber(ARGV[2])
if now < allow_at then
  return {1, math.ceil(allow_at - now)}
end
-- The key lives until its bucket is full again, like the local limiter's state.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
  'PX', math.floor((new_tat - now) / 1000) + 1)

-- A crashed instance stops heartbeating: its entry (and so its counts) drop out.
local now_ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
local open = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  open = open + (tonumber(redis.call('HGET', ARGV[5] .. id, ARGV[3])) or 0)
end
if open >= tonumber(ARGV[4]) then
  return {2}
end
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
-- A hash made by this HINCRBY has no TTL yet; it must never outlive the instance.
if redis.call('PTTL', KEYS[3]) < 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return {0}
