-- Asks for a semantic lock for a saga, or asks again (the same question
-- twice has the same answer: a saga is in a lock's queue at most once).
--
-- KEYS[1]  the lock: a list of JSON entries (saga_id, saga, step,
--          since_ms); the first holds the lock, the others wait in order
--
-- ARGV[1]  saga_id   the saga asking
-- ARGV[2]  entry     its entry, JSON, added at the end when it is not in
--                    the queue yet
-- ARGV[3]  max       the most entries the queue may have
--
-- Returns {position, holder}: position 0 when the saga holds the lock,
-- n > 0 when n sagas are before it, -1 when the queue is full (the saga
-- was not added), -2 when the key is not a list (holder: '').
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'list' and kind ~= 'none' then return {-2, ''} end
local queue = redis.call('LRANGE', KEYS[1], 0, -1)
for i, e in ipairs(queue) do
  local ok, d = pcall(cjson.decode, e)
  if ok and type(d) == 'table' and d.saga_id == ARGV[1] then
    return {i - 1, queue[1]}
  end
end
if #queue >= tonumber(ARGV[3]) then return {-1, queue[1]} end
redis.call('RPUSH', KEYS[1], ARGV[2])
return {#queue, queue[1] or ARGV[2]}
