-- Gives a lease up at once, so that other daemons take its sagas over at
-- their next look instead of after the lease's time to live.
--
-- KEYS[1]  leases (see lease_register.lua)
-- ARGV[1]  owner   the owner token
--
-- Returns 1 when released, 0 when the lease was gone already.
return redis.call('ZADD', KEYS[1], 'XX', 'CH', 0, ARGV[1])
