-- Fences a dead owner off one partition, first step of a claim there:
-- from now on its joins there are refused (transition.lua), so its set of
-- sagas there can only shrink. Returns the sagas in it, to be claimed.
--
-- KEYS[1]  the partition's fence (sorted set: owner, unix ms of the claim)
-- KEYS[2]  the dead owner's set of sagas in the partition
-- KEYS[3]  the claimer's set there (checked only)
-- KEYS[4]  the partition's registry of owners: the dead owner leaves it
--          when it has no saga there
-- ARGV[1]  dead     the dead owner token
-- ARGV[2]  claimer  the claiming owner token: it must not be fenced itself
--
-- Returns {code, saga id, ...}: 1 fenced (the ids follow), -1 the claimer
-- is fenced here (it was claimed: it claims nothing), {4, key} a key of
-- the wrong kind.
local kinds = { 'zset', 'set', 'set', 'set' }
for i, kind in ipairs(kinds) do
  local k = redis.call('TYPE', KEYS[i]).ok
  if k ~= kind and k ~= 'none' then return {4, KEYS[i]} end
end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {-1} end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_ms(), ARGV[1])
end
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[4], ARGV[1]) end
local out = {1}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  table.insert(out, id)
end
return out
