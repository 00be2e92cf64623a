-- Writes one saga transition, all of it or none of it: the saga's record,
-- the stream entries it adds (commands, audit events), the expiry of the
-- per-request reply streams it creates, and the acknowledgement of the
-- start entry it answers. Every key is checked before anything is
-- written, so that a key of the wrong kind refuses the whole transition
-- instead of leaving half of it behind.
--
-- Without KEYS the transition is about no saga (a rejected start): only
-- the entries and the acknowledgement are written.
--
-- KEYS[1]  the saga's record (hash: owner, seq, state)
-- KEYS[2]  leases (see lease_register.lua)
-- KEYS[3]  the writer's set of sagas
--
-- ARGV[1]  owner      the writer's owner token: the record must name it
-- ARGV[2]  seq        this transition's number (1 creates the saga)
-- ARGV[3]  saga_id
-- ARGV[4]  state      the saga's state as JSON; '' leaves it as it is
-- ARGV[5]  ownership  'join': the saga is (again) driven by the writer,
--                     whose lease must be alive on Redis's clock; it joins
--                     the writer's set and loses any expiry.
--                     'leave': it has ended; it leaves the set and expires.
--                     '': neither
-- ARGV[6]  expire_s   the record's expiry in seconds, for 'leave'
-- ARGV[7]  ack_stream the stream of the entry to acknowledge ('' for none)
-- ARGV[8]  ack_group
-- ARGV[9]  ack_id
-- ARGV[10] xadds      the number of XADDs, each given as its argument
--                     count then its arguments (the stream first)
-- then     expires    the number of EXPIREs, each as key then seconds
--
-- Returns {code, detail}:
--   1 written; 2 written before (a retry after a lost answer);
--   0 not ours (another owner, or a creation of a saga that exists);
--   3 lease lost (a join under a lease that ran out: nothing written);
--   4 wrong type (detail: the key that is not what it must be).
local owner_arg, seq_arg, saga_id, state = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local ownership, expire_s = ARGV[5], tonumber(ARGV[6])
local ack_stream, ack_group, ack_id = ARGV[7], ARGV[8], ARGV[9]

local function kind(key) return redis.call('TYPE', key).ok end
local function must_be(key, wanted)
  local k = kind(key)
  return k == wanted or k == 'none'
end

-- The stream writes, read once; every key checked before any write.
local xadds, i = {}, 11
for _ = 1, tonumber(ARGV[10]) do
  local n = tonumber(ARGV[i])
  table.insert(xadds, {i + 1, i + n})
  if not must_be(ARGV[i + 1], 'stream') then return {4, ARGV[i + 1]} end
  i = i + n + 1
end
local expires = {}
for _ = 1, tonumber(ARGV[i]) do
  table.insert(expires, {ARGV[i + 1], ARGV[i + 2]})
  i = i + 2
end
if ack_stream ~= '' and not must_be(ack_stream, 'stream') then return {4, ack_stream} end

if #KEYS > 0 then
  if not must_be(KEYS[1], 'hash') then return {4, KEYS[1]} end
  if not must_be(KEYS[2], 'zset') then return {4, KEYS[2]} end
  if not must_be(KEYS[3], 'set') then return {4, KEYS[3]} end
  local record = redis.call('HMGET', KEYS[1], 'owner', 'seq')
  local owner, seq = record[1], tonumber(record[2] or '0')
  local creating = seq_arg == 1 and not owner
  if not creating and owner ~= owner_arg then return {0, ''} end
  if seq >= seq_arg then return {2, ''} end
  if ownership == 'join' then
    if not lease_alive(KEYS[2], owner_arg, now_ms()) then return {3, ''} end
  end
  if creating then redis.call('HSET', KEYS[1], 'owner', owner_arg) end
  if state ~= '' then
    redis.call('HSET', KEYS[1], 'seq', seq_arg, 'state', state)
  else
    redis.call('HSET', KEYS[1], 'seq', seq_arg)
  end
  if ownership == 'join' then
    redis.call('SADD', KEYS[3], saga_id)
    redis.call('PERSIST', KEYS[1])
  elseif ownership == 'leave' then
    redis.call('SREM', KEYS[3], saga_id)
    redis.call('EXPIRE', KEYS[1], expire_s)
  end
end

for _, range in ipairs(xadds) do
  redis.call('XADD', unpack(ARGV, range[1], range[2]))
end
for _, e in ipairs(expires) do
  redis.call('EXPIRE', e[1], e[2])
end
if ack_stream ~= '' then redis.call('XACK', ack_stream, ack_group, ack_id) end
return {1, ''}
