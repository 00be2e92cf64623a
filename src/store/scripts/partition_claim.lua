-- Moves sagas of a fenced dead owner to a live claimer, in one partition:
-- each record that still names the dead owner is given the claimer.
-- Once the dead owner's set there is empty, it leaves the partition's
-- registry of owners.
--
-- KEYS[1]  the partition's fence (see partition_fence.lua)
-- KEYS[2]  the dead owner's set of sagas in the partition
-- KEYS[3]  the claimer's set of sagas there
-- KEYS[4]  the partition's registry of owners (see transition.lua)
-- KEYS[5..] the records of the sagas to move
-- ARGV[1]  dead     the dead owner token
-- ARGV[2]  claimer  the claiming owner token: it must not be fenced
-- ARGV[3..] the ids of the sagas, in the order of KEYS[5..]
--
-- Returns {code, saga id, ...}: 1 claimed (the ids moved follow), -1 the
-- claimer is fenced here.
local dead, claimer = ARGV[1], ARGV[2]
if redis.call('ZSCORE', KEYS[1], claimer) then return {-1} end
local out = {1}
for i = 5, #KEYS do
  local id = ARGV[i - 2]
  if redis.call('SISMEMBER', KEYS[2], id) == 1 then
    redis.call('SREM', KEYS[2], id)
    if redis.call('TYPE', KEYS[i]).ok == 'hash' and redis.call('HGET', KEYS[i], 'owner') == dead then
      redis.call('HSET', KEYS[i], 'owner', claimer)
      redis.call('SADD', KEYS[3], id)
      redis.call('SADD', KEYS[4], claimer)
      table.insert(out, id)
    end
  end
end
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[4], dead) end
return out
