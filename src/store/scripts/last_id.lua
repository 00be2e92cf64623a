-- The id of the last entry of a stream, without the entry itself (which
-- may be of any size): where to start following the stream.
--
-- KEYS[1]  the stream
--
-- Returns the id, or '0-0' when the stream is empty or missing.
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return '0-0' end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then return last[1][1] end
return '0-0'
