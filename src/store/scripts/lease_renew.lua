-- Renews a lease that is still alive on Redis's clock. A lease that ran out
-- is never renewed, even if no daemon has claimed it yet: its sagas may be
-- moved at any moment, so its owner must start a new period instead.
--
-- KEYS[1]  leases (see lease_register.lua)
-- ARGV[1]  owner   the owner token
-- ARGV[2]  ttl_ms  how long the lease lasts from now
--
-- Returns {kept, now}: kept is 1 when renewed, 0 when the lease is lost;
-- now is Redis's time in unix ms.
local owner, ttl_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
if not lease_alive(KEYS[1], owner, now) then
  return {0, now}
end
redis.call('ZADD', KEYS[1], now + ttl_ms, owner)
return {1, now}
