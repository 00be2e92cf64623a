-- Forgets a dead owner once its sagas were claimed in every partition. A
-- lease that ran out is never renewed, so the owner cannot have come back.
--
-- KEYS[1]  leases (see lease_register.lua)
-- KEYS[2]  owners (see lease_register.lua)
-- ARGV[1]  dead  the dead owner token
--
-- Returns 1 forgotten, 0 its lease is alive (nothing done).
if lease_alive(KEYS[1], ARGV[1], now_ms()) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
