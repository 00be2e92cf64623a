-- Reads the starts held of resumed saga names through the daemons' group,
-- without blocking, each entry over a size limit shrunk to a marker (see
-- shrink.lua). A held stream is read only while its name is 'draining' in
-- its trigger stream's holds: once paused again, its entries wait.
--
-- KEYS     pairs: a trigger stream's holds, a held stream from it
-- ARGV[1]  group
-- ARGV[2]  consumer
-- ARGV[3]  count      entries at most, over all streams
-- ARGV[4]  max_bytes
-- ARGV[5..]  the name of each pair's held stream
--
-- Returns what XREADGROUP returns: nil, or {{stream, {{id, fields}, ...}}, ...}.
local group, consumer, count, max_bytes = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local args, streams = {'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS'}, 0
for i = 1, #KEYS - 1, 2 do
  local holds, held, name = KEYS[i], KEYS[i + 1], ARGV[4 + (i + 1) / 2]
  if redis.call('HGET', holds, name) == 'draining' and redis.call('TYPE', held).ok == 'stream' then
    table.insert(args, held)
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
