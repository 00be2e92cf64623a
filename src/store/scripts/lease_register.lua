-- Registers the lease of a new owner token (one period of one daemon).
--
-- KEYS[1]  leases: sorted set, member = owner token, score = the unix ms
--          (Redis's clock) at which the lease runs out
-- KEYS[2]  owners: set of every owner token whose sagas may still exist,
--          so that a daemon gone without trace is still found
-- ARGV[1]  owner   the new owner token
-- ARGV[2]  ttl_ms  how long the lease lasts without renewal
--
-- Returns Redis's time, in unix ms.
local owner, ttl_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
redis.call('ZADD', KEYS[1], now + ttl_ms, owner)
redis.call('SADD', KEYS[2], owner)
return now
