-- Writes one saga transition, all of it or none of it: the saga's record,
-- its place in its partition's indexes and sets, and the writes it makes to
-- shared keys (commands, audit events, the expiry of per-request reply
-- streams, the acknowledgement of the start entry it answers). Every key is
-- checked before anything is written, so that a key of the wrong kind
-- refuses the whole transition instead of leaving half of it behind.
--
-- The writes to shared keys are made here ('direct', on one Redis, where
-- every key is at hand), or recorded in the partition's outbox, for the
-- relay to make in each key's own slot ('outbox', on a cluster).
--
-- KEYS[1]    the saga's record (hash: owner, seq, phase, state)
-- KEYS[2]    the writer's set of sagas in the partition
-- KEYS[3]    the partition's registry of owners with a set there
-- KEYS[4]    the partition's fence: owners claimed there (sorted set)
-- KEYS[5]    the partition's outbox (stream)
-- KEYS[6-10] the partition's indexes: running, compensating, completed,
--            compensated, failed (sorted sets: saga id by the unix ms at
--            which it entered the phase)
-- KEYS[11]   in 'direct' mode: leases (see lease_register.lua): a join
--            also needs the writer's lease alive on Redis's clock
-- KEYS[12..] in 'direct' mode, the keys the writes name
--
-- ARGV[1]  owner      the writer's owner token: the record must name it
-- ARGV[2]  seq        this transition's number (1 creates the saga)
-- ARGV[3]  saga_id    '' for a write about no saga (a rejected start):
--                     only the writes are made
-- ARGV[4]  state      the saga's state as JSON; '' leaves it as it is
-- ARGV[5]  phase      the saga's phase (one of the indexes); '' for none
-- ARGV[6]  ownership  'join': the saga is (again) driven by the writer,
--                     which must not be fenced in the partition; it joins
--                     the writer's set and loses any expiry.
--                     'leave': it has ended; it leaves the set and expires.
--                     '': neither
-- ARGV[7]  expire_s   the record's expiry in seconds, for 'leave'
-- ARGV[8]  mode       'direct' or 'outbox'
-- ARGV[9]  outbox     for 'outbox': the writes, encoded, '' for none
-- ARGV[10] n          for 'direct': the number of writes (see writes.lua),
--                     from ARGV[11] on
--
-- Returns {code, detail}:
--   1 written; 2 written before (a retry after a lost answer);
--   0 not ours (another owner, or a creation of a saga that exists);
--   3 lease lost (a join by an owner whose sagas were claimed in the
--     partition, or, in 'direct' mode, whose lease ran out: nothing written);
--   4 wrong type (detail: the key that is not what it must be).
local owner_arg, seq_arg, saga_id, state = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local phase, ownership, expire_s, mode = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local PHASES = { running = 6, compensating = 7, completed = 8, compensated = 9, failed = 10 }

local function must_be(key, wanted)
  local k = redis.call('TYPE', key).ok
  return k == wanted or k == 'none'
end

local ops = {}
if mode == 'direct' then
  ops = read_writes(11, tonumber(ARGV[10]))
  local bad = check_writes(ops)
  if bad then return {4, bad} end
elseif ARGV[9] ~= '' and not must_be(KEYS[5], 'stream') then
  return {4, KEYS[5]}
end

if saga_id ~= '' then
  if not must_be(KEYS[1], 'hash') then return {4, KEYS[1]} end
  local record = redis.call('HMGET', KEYS[1], 'owner', 'seq', 'phase')
  local owner, seq, was = record[1], tonumber(record[2] or '0'), record[3]
  local creating = seq_arg == 1 and not owner
  if not creating and owner ~= owner_arg then return {0, ''} end
  if seq >= seq_arg then return {2, ''} end
  -- Only the keys this transition writes are checked, and all of them
  -- before any write.
  local moves = phase ~= '' and phase ~= was
  local wanted = {}
  if ownership == 'join' then
    wanted = { {2, 'set'}, {3, 'set'}, {4, 'zset'} }
    if mode == 'direct' then table.insert(wanted, {11, 'zset'}) end
  elseif ownership == 'leave' then
    wanted = { {2, 'set'} }
  end
  if moves then
    table.insert(wanted, {PHASES[phase], 'zset'})
    if was and PHASES[was] then table.insert(wanted, {PHASES[was], 'zset'}) end
  end
  for _, w in ipairs(wanted) do
    if not must_be(KEYS[w[1]], w[2]) then return {4, KEYS[w[1]]} end
  end
  if ownership == 'join' then
    if redis.call('ZSCORE', KEYS[4], owner_arg) then return {3, ''} end
    if mode == 'direct' and not lease_alive(KEYS[11], owner_arg, now_ms()) then
      return {3, ''}
    end
  end
  local fields = { 'seq', seq_arg }
  if creating then table.insert(fields, 'owner'); table.insert(fields, owner_arg) end
  if state ~= '' then table.insert(fields, 'state'); table.insert(fields, state) end
  if moves then table.insert(fields, 'phase'); table.insert(fields, phase) end
  redis.call('HSET', KEYS[1], unpack(fields))
  -- A saga is indexed under its phase, scored by when it entered it.
  if moves then
    if was and PHASES[was] then redis.call('ZREM', KEYS[PHASES[was]], saga_id) end
    redis.call('ZADD', KEYS[PHASES[phase]], now_ms(), saga_id)
  end
  if ownership == 'join' then
    redis.call('SADD', KEYS[2], saga_id)
    redis.call('SADD', KEYS[3], owner_arg)
    redis.call('PERSIST', KEYS[1])
  elseif ownership == 'leave' then
    redis.call('SREM', KEYS[2], saga_id)
    redis.call('EXPIRE', KEYS[1], expire_s)
  end
end

if mode == 'direct' then
  perform_writes(ops)
elseif ARGV[9] ~= '' then
  redis.call('XADD', KEYS[5], '*', 'w', ARGV[9])
end
return {1, ''}
