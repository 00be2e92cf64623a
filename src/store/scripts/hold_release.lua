-- Once every start held of a resumed saga name is taken (acknowledged
-- through the group), the name leaves the trigger stream's holds: its new
-- starts are taken from the trigger stream again. Until then the entries
-- taken are trimmed from the held stream.
--
-- KEYS[1]  the trigger stream's holds
-- KEYS[2]  the name's held stream from that trigger stream
-- ARGV[1]  name
-- ARGV[2]  group
--
-- Returns 1 when the name left the holds, 0 otherwise.
local holds, held, name, group = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
if redis.call('HGET', holds, name) ~= 'draining' then return 0 end
local oldest = held_unfinished(held, group)
if oldest then
  redis.call('XTRIM', held, 'MINID', oldest)
  return 0
end
if redis.call('TYPE', held).ok == 'stream' then
  redis.call('XTRIM', held, 'MAXLEN', 0)
end
redis.call('HDEL', holds, name)
return 1
