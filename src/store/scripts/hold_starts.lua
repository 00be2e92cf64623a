-- Holds the starts of paused saga names: each entry read from a trigger
-- stream whose name the stream's holds list (paused, or resumed and still
-- taking its held starts, so that they keep their order) is copied to the
-- name's held stream and acknowledged, in one go. The copy begins with
-- `sagaflow_held_from`, the entry's id on the trigger stream (any field of
-- that name in the entry is left out), from which its saga id comes once
-- it is taken. Nothing about the held entry counts toward max_deliveries:
-- it is no longer pending on the trigger stream, and the held stream is
-- read by no one while the name is paused.
--
-- KEYS[1]     the trigger stream
-- KEYS[2]     its holds (a hash: name -> pause, or 'draining')
-- KEYS[3..]   the held streams of the names in ARGV, in the same order
-- ARGV[1]     group       the daemons' group, created on a held stream
--                         (at 0) the first time it holds an entry
-- ARGV[2]     max_bytes   an entry larger is not held: it is taken, and
--                         rejected for its size as it would be later
-- ARGV[3]     max_fields  an entry with more fields is not held either:
--                         it is answered 'many' (the daemon rejects it)
-- ARGV[4]     n           the number of names
-- ARGV[5..4+n]  the names
-- then pairs  entry id, the position of its name among the names (0: no
--             name that can be held)
--
-- Returns one outcome per entry, in order: 'take' (not held: start it),
-- 'held', or 'many'.
local stream, holds = KEYS[1], KEYS[2]
local group, max_bytes, max_fields = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local out = {}
local holding = redis.call('TYPE', holds).ok == 'hash' and redis.call('HLEN', holds) > 0
local held_here = {}
if holding then
  for i = 1, n do
    local kind = redis.call('TYPE', KEYS[2 + i]).ok
    held_here[i] = redis.call('HEXISTS', holds, ARGV[4 + i]) == 1
      and (kind == 'stream' or kind == 'none')
  end
end
for i = 5 + n, #ARGV - 1, 2 do
  local id, k = ARGV[i], tonumber(ARGV[i + 1])
  local outcome = 'take'
  if k > 0 and held_here[k] then
    local found = redis.call('XRANGE', stream, id, id)[1]
    if found then
      local fields = found[2]
      local size = 0
      for j = 1, #fields do size = size + #fields[j] end
      if #fields > 2 * max_fields then
        outcome = 'many'
      elseif size <= max_bytes then
        local held = KEYS[2 + k]
        local args = {held, '*', 'sagaflow_held_from', id}
        for j = 1, #fields - 1, 2 do
          if fields[j] ~= 'sagaflow_held_from' then
            table.insert(args, fields[j])
            table.insert(args, fields[j + 1])
          end
        end
        -- BUSYGROUP when the group is there already: nothing to do.
        redis.pcall('XGROUP', 'CREATE', held, group, '0', 'MKSTREAM')
        redis.call('XADD', unpack(args))
        redis.call('XACK', stream, group, id)
        outcome = 'held'
      end
    end
  end
  table.insert(out, outcome)
end
return out
