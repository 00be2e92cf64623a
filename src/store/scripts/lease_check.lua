-- Whether a claimer may take a dead owner's sagas: the claimer's lease is
-- alive on Redis's clock and the owner's is not (run out, or none at all).
-- Nothing is written: the claim itself is made partition by partition
-- (partition_fence.lua, partition_claim.lua), then the owner is forgotten
-- (lease_forget.lua).
--
-- KEYS[1]  leases (see lease_register.lua)
-- ARGV[1]  dead     the dead owner token
-- ARGV[2]  claimer  the claiming owner token
--
-- Returns 1 go on, 0 the owner's lease is alive, -1 the claimer's is not.
local now = now_ms()
if not lease_alive(KEYS[1], ARGV[2], now) then return -1 end
if lease_alive(KEYS[1], ARGV[1], now) then return 0 end
return 1
