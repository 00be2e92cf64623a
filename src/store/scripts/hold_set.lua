-- Pauses or resumes a saga name on one trigger stream: its entry in the
-- stream's holds. A pause holds every start of the name read from then on;
-- a resume leaves the name 'draining' while its held stream has entries
-- (its new starts keep joining them, in order, until they are all taken),
-- or removes it.
--
-- KEYS[1]  the trigger stream's holds (a hash: name -> pause, or 'draining')
-- KEYS[2]  the name's held stream from that trigger stream
-- ARGV[1]  name
-- ARGV[2]  expected  the value the entry must have ('' for none), or '*'
--                    for any: a daemon mending the holds after a request
--                    half carried out changes nothing that moved since it
--                    looked
-- ARGV[3]  'pause' or 'resume'
-- ARGV[4]  the pause (JSON), for 'pause'
--
-- Returns 1 when done, 0 when the entry was not as expected.
local holds, held, name = KEYS[1], KEYS[2], ARGV[1]
local now = redis.call('HGET', holds, name)
if ARGV[2] ~= '*' and (now or '') ~= ARGV[2] then return 0 end
if ARGV[3] == 'pause' then
  redis.call('HSET', holds, name, ARGV[4])
elseif now and now ~= 'draining' then
  -- Entries taken already are trimmed by the time the name left the holds
  -- before: any entry is (most likely) one to take.
  if redis.call('TYPE', held).ok == 'stream' and redis.call('XLEN', held) > 0 then
    redis.call('HSET', holds, name, 'draining')
  else
    redis.call('HDEL', holds, name)
  end
end
return 1
