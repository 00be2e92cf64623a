-- Keeps a signal for a running saga, once per name.
--
-- KEYS[1]  the saga's record (hash: phase, ...)
-- KEYS[2]  the saga's signals (hash: name -> the signal as JSON)
--
-- ARGV[1]  name       the signal's name
-- ARGV[2]  signal     the signal as JSON (with its signal_id)
-- ARGV[3]  signal_id  what makes a repeat a duplicate
-- ARGV[4]  max        the most signals kept for one saga
--
-- Returns {code, detail}:
--   1 kept;
--   2 a duplicate: a signal of this name and id was kept before (also
--     once the saga has ended: a repeat gets the answer the first got);
--   3 refused: a signal of this name with another id was kept before
--     (detail: its id);
--   4 refused: the saga has `max` signals already;
--   0 no such saga; 5 the saga is not running (detail: its phase);
--   6 a key of the wrong kind (detail: the key).
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {0, ''} end
if kind ~= 'hash' then return {6, KEYS[1]} end
local phase = redis.call('HGET', KEYS[1], 'phase')
if not phase then return {0, ''} end
kind = redis.call('TYPE', KEYS[2]).ok
if kind ~= 'hash' and kind ~= 'none' then return {6, KEYS[2]} end
local kept = redis.call('HGET', KEYS[2], ARGV[1])
if kept then
  local ok, d = pcall(cjson.decode, kept)
  if ok and type(d) == 'table' and d.signal_id == ARGV[3] then return {2, ''} end
  if phase ~= 'running' then return {5, phase} end
  return {3, ok and type(d) == 'table' and tostring(d.signal_id) or ''}
end
if phase ~= 'running' then return {5, phase} end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return {4, ''} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1, ''}
