-- Shared by the scripts that write streams (prepended to each): the writes
-- of a transition, given as a list of operations in ARGV, each naming its
-- key by its position in KEYS:
--
--   'xadd',   key index, n, then the n arguments of XADD after the key
--   'expire', key index, 1, seconds
--   'xack',   key index, 2, group, entry id
--   'unlock', key index, 1, saga id: the saga leaves the lock's queue
--             (see lock_acquire.lua), holder or waiter; a key that is no
--             list holds no lock of the saga and is left alone
--
-- read_writes(i, n) reads n operations from ARGV[i] on and returns them
-- with the index after them; check_writes(ops) returns the first key that
-- is not of the kind its operation needs (nil when all are);
-- perform_writes(ops) carries them out.

local WANTED = { xadd = 'stream', xack = 'stream', expire = nil }

local function read_writes(i, n)
  local ops = {}
  for _ = 1, n do
    local count = tonumber(ARGV[i + 2])
    table.insert(ops, { op = ARGV[i], key = KEYS[tonumber(ARGV[i + 1])], first = i + 3, last = i + 2 + count })
    i = i + 3 + count
  end
  return ops, i
end

local function check_writes(ops)
  for _, w in ipairs(ops) do
    local wanted = WANTED[w.op]
    if wanted then
      local kind = redis.call('TYPE', w.key).ok
      if kind ~= wanted and kind ~= 'none' then return w.key end
    end
  end
  return nil
end

local function perform_writes(ops)
  for _, w in ipairs(ops) do
    if w.op == 'xadd' then
      redis.call('XADD', w.key, unpack(ARGV, w.first, w.last))
    elseif w.op == 'expire' then
      redis.call('EXPIRE', w.key, ARGV[w.first])
    elseif w.op == 'xack' then
      redis.call('XACK', w.key, ARGV[w.first], ARGV[w.first + 1])
    elseif w.op == 'unlock' and redis.call('TYPE', w.key).ok == 'list' then
      for _, e in ipairs(redis.call('LRANGE', w.key, 0, -1)) do
        local ok, d = pcall(cjson.decode, e)
        if ok and type(d) == 'table' and d.saga_id == ARGV[w.first] then
          redis.call('LREM', w.key, 1, e)
        end
      end
    end
  end
end
