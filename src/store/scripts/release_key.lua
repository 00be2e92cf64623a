-- Gives a key back: removes it only if it still holds the value its holder
-- wrote (an idempotency key whose start could never be created, so that
-- the same start can be sent again once the cause is mended).
--
-- KEYS[1]  the key
-- ARGV[1]  the value it must hold
--
-- Returns 1 when removed, 0 when it held something else (or nothing).
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
