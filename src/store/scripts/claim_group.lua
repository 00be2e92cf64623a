-- Takes over entries of a stream that another consumer of the group read
-- and left unacknowledged for at least min_idle ms (XAUTOCLAIM, which
-- counts the delivery), shrinking every entry over a size limit to a
-- marker before it leaves Redis.
--
-- KEYS[1]  the stream
-- ARGV[1]  group
-- ARGV[2]  consumer   the new owner of the entries
-- ARGV[3]  min_idle   ms
-- ARGV[4]  count      entries at most
-- ARGV[5]  max_bytes  an entry whose field names and values add up to more
--                     is returned as its marker (see shrink.lua)
--
-- Returns XAUTOCLAIM's reply: {next cursor, {{id, fields}, ...}, deleted ids}.
local max_bytes = tonumber(ARGV[5])
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return {'0-0', {}, {}} end
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
for _, entry in ipairs(reply[2]) do shrink(entry, max_bytes) end
return reply
