-- Reads new entries of streams through a consumer group, without blocking,
-- and shrinks every entry over a size limit to a marker before it leaves
-- Redis: a reader never holds more than count entries of max_bytes each.
--
-- KEYS     the streams
-- ARGV[1]  group
-- ARGV[2]  consumer
-- ARGV[3]  count      entries at most, over all streams
-- ARGV[4]  max_bytes  an entry whose field names and values add up to more
--                     is returned as its marker (see shrink.lua)
--
-- Returns what XREADGROUP returns: nil, or {{stream, {{id, fields}, ...}}, ...}.
local group, consumer, count, max_bytes = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

-- A key that is not a stream (replaced by another kind) is skipped rather
-- than failing the read of every other stream; a missing one fails with
-- NOGROUP, which the reader answers by creating its group again.
local args, streams = {'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS'}, 0
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key).ok
  if kind == 'stream' or kind == 'none' then
    table.insert(args, key)
    streams = streams + 1
  end
end
if streams == 0 then return false end
for _ = 1, streams do table.insert(args, '>') end
local reply = redis.call(unpack(args))
if not reply then return false end
for _, stream in ipairs(reply) do
  for _, entry in ipairs(stream[2]) do shrink(entry, max_bytes) end
end
return reply
