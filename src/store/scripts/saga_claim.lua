-- Makes a live daemon the owner of one saga.
--
-- KEYS[1]  the saga's record (hash: owner, seq, state)
-- KEYS[2]  leases (see lease_register.lua)
-- KEYS[3]  the claimer's set of sagas
-- ARGV[1]  claimer   the claiming owner token; its lease must be alive
-- ARGV[2]  expected  the owner the record must still name ('' for: any
--                    owner without a live lease)
-- ARGV[3]  saga_id
-- ARGV[4]  join      '1': the saga joins the claimer's set (it will be
--                    driven); '': it does not (a saga that has ended, taken
--                    up to answer an operator; its expiry is kept too)
--
-- Returns 1 claimed, 0 not (no record, another owner, or a live owner),
-- -1 the claimer's own lease is not alive.
local claimer, expected, saga_id, join = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local function alive(owner) return lease_alive(KEYS[2], owner, now) end
if not alive(claimer) then return -1 end
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
if expected ~= '' then
  if owner ~= expected then return 0 end
elseif owner == claimer or (owner ~= '' and alive(owner)) then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', claimer)
if join == '1' then redis.call('SADD', KEYS[3], saga_id) end
return 1
