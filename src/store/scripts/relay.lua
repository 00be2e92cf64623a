-- Makes, in one key's own slot, the writes a transition recorded for it in
-- its partition's outbox: exactly once for the writes that must be (the
-- commands and audit events, with a relay mark), at least once for the
-- others (expiries, acknowledgements, which are the same done twice).
--
-- A partition's outbox is always relayed from its oldest entry on, in
-- order, by whoever relays it; so an entry at or below the mark of its
-- partition was relayed into this key before, and is skipped.
--
-- KEYS[1]  the key written
-- KEYS[2]  (optional) its relay marks: a hash, field = partition, value =
--          the id of the last outbox entry relayed into KEYS[1]
--
-- ARGV[1]  partition  the outbox's partition
-- ARGV[2]  entry      the outbox entry's id
-- ARGV[3]  n          the number of writes (see writes.lua), from ARGV[4] on
--
-- Returns 1 relayed, 0 relayed before, {4, key} a key of the wrong kind.
local partition, entry = ARGV[1], ARGV[2]

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function after(id, mark)
  local ms, seq = parse(id)
  local mark_ms, mark_seq = parse(mark)
  if not mark_ms then return true end
  return ms > mark_ms or (ms == mark_ms and seq > mark_seq)
end

local ops = read_writes(4, tonumber(ARGV[3]))
if KEYS[2] then
  local kind = redis.call('TYPE', KEYS[2]).ok
  if kind ~= 'hash' and kind ~= 'none' then return {4, KEYS[2]} end
  local mark = redis.call('HGET', KEYS[2], partition)
  if mark and not after(entry, mark) then return 0 end
end
local bad = check_writes(ops)
if bad then return {4, bad} end
perform_writes(ops)
if KEYS[2] then redis.call('HSET', KEYS[2], partition, entry) end
return 1
