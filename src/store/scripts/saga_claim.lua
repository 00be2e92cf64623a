-- Makes a live daemon the owner of one saga, if its record still names the
-- owner the claimer read (whose lease the claimer found dead, or that it
-- takes the saga from on purpose: see lease_check.lua).
--
-- KEYS[1]  the saga's record (hash: owner, seq, phase, state)
-- KEYS[2]  the partition's fence (see partition_fence.lua)
-- KEYS[3]  the claimer's set of sagas in the partition
-- KEYS[4]  the partition's registry of owners (see transition.lua)
-- ARGV[1]  claimer   the claiming owner token: it must not be fenced
-- ARGV[2]  expected  the owner the record must still name
-- ARGV[3]  saga_id
-- ARGV[4]  join      '1': the saga joins the claimer's set (it will be
--                    driven); '': it does not (a saga that has ended, taken
--                    up to answer an operator; its expiry is kept too)
--
-- Returns 1 claimed, 0 not (no record, or another owner), -1 the claimer
-- is fenced.
local claimer, expected, saga_id, join = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('ZSCORE', KEYS[2], claimer) then return -1 end
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
if owner ~= expected then return 0 end
redis.call('HSET', KEYS[1], 'owner', claimer)
if join == '1' then
  redis.call('SADD', KEYS[3], saga_id)
  redis.call('SADD', KEYS[4], claimer)
end
return 1
