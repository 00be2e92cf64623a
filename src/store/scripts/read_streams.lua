-- Reads the entries of streams after the given ids, without blocking, and
-- shrinks every entry over a size limit to a marker before it leaves
-- Redis: a reader never holds more than count entries of max_bytes each.
-- Streams are read a few hundred at a time: Lua unpacks a bounded number
-- of arguments.
--
-- KEYS     the streams
-- ARGV[1]  count      entries at most, over all streams
-- ARGV[2]  max_bytes  an entry whose field names and values add up to more
--                     is returned as its marker (see shrink.lua)
-- ARGV[3..] the id after which to read each stream, in the order of KEYS
--
-- A key that is not a stream is skipped.
--
-- Returns what XREAD returns: nil, or {{stream, {{id, fields}, ...}}, ...}.
local count, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])

local out, left, CHUNK = {}, count, 200
for first = 1, #KEYS, CHUNK do
  if left <= 0 then break end
  local last = math.min(first + CHUNK - 1, #KEYS)
  -- A key that is not a stream (replaced by another kind) is skipped
  -- rather than failing the read of every other stream.
  local keys, ids = {}, {}
  for j = first, last do
    if redis.call('TYPE', KEYS[j]).ok == 'stream' then
      table.insert(keys, KEYS[j])
      table.insert(ids, ARGV[2 + j])
    end
  end
  local reply = false
  if #keys > 0 then
    local args = {'XREAD', 'COUNT', left, 'STREAMS'}
    for _, key in ipairs(keys) do table.insert(args, key) end
    for _, id in ipairs(ids) do table.insert(args, id) end
    reply = redis.call(unpack(args))
  end
  if reply then
    for _, stream in ipairs(reply) do
      for _, entry in ipairs(stream[2]) do
        shrink(entry, max_bytes)
        left = left - 1
      end
      table.insert(out, stream)
    end
  end
end
if #out == 0 then return false end
return out
