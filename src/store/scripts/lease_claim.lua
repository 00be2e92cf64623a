-- Moves the sagas of a dead owner (lease run out on Redis's clock, or no
-- lease at all) to a live one, atomically: after it, the dead owner's
-- writes are fenced off.
--
-- KEYS[1]  leases (see lease_register.lua)
-- KEYS[2]  owners (see lease_register.lua)
-- KEYS[3]  the dead owner's set of sagas
-- KEYS[4]  the claimer's set of sagas
-- ARGV[1]  dead     the dead owner token
-- ARGV[2]  claimer  the claiming owner token; its lease must be alive
-- ARGV[3]  prefix   saga records are <prefix>{<saga id>}
--
-- A saga in the dead owner's set whose record names a third owner is
-- moved too when that owner has no live lease either (a record edited by
-- hand, or left by an older version): no saga stays without a live owner.
--
-- Returns {code, saga id, ...}: code 1 claimed (the ids moved follow),
-- 0 the lease is alive, -1 the claimer's own lease is not alive.
local dead, claimer, prefix = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local function alive(owner) return lease_alive(KEYS[1], owner, now) end
if not alive(claimer) then return {-1} end
if alive(dead) then return {0} end
redis.call('ZREM', KEYS[1], dead)
redis.call('SREM', KEYS[2], dead)
local out = {1}
if redis.call('TYPE', KEYS[3]).ok == 'set' then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local key = prefix .. '{' .. id .. '}'
    if redis.call('TYPE', key).ok == 'hash' then
      local owner = redis.call('HGET', key, 'owner')
      if owner == dead or (owner and owner ~= claimer and not alive(owner)) then
        redis.call('HSET', key, 'owner', claimer)
        redis.call('SADD', KEYS[4], id)
        table.insert(out, id)
      end
    end
  end
end
redis.call('DEL', KEYS[3])
return out
