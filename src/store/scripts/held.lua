-- Shared by the scripts of saga names paused (prepended to each): the
-- starts held of one name from one trigger stream are a stream of their
-- own (the held stream), read through the daemons' group once the name is
-- resumed.

-- Stream ids compared as text: their parts go up to 2^64 - 1, past what a
-- Lua number holds exactly.
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  local function num_less(x, y)
    if #x ~= #y then return #x < #y end
    return x < y
  end
  if am ~= bm then return num_less(am, bm) end
  return num_less(as, bs)
end

-- Where `group` stands in the held stream `held`: the oldest entry it has
-- not finished with (pending, or not read yet), or nil when it finished
-- with every entry. A stream without the group has finished with nothing.
local function held_unfinished(held, group)
  if redis.call('TYPE', held).ok ~= 'stream' then return nil end
  local first = redis.call('XRANGE', held, '-', '+', 'COUNT', 1)[1]
  if not first then return nil end
  local last_read = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', held)) do
    local info = {}
    for i = 1, #g - 1, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then last_read = info['last-delivered-id'] end
  end
  if not last_read then return first[1] end
  local oldest = nil
  local pending = redis.call('XPENDING', held, group)
  if pending[1] > 0 then oldest = pending[2] end
  local unread = redis.call('XRANGE', held, '(' .. last_read, '+', 'COUNT', 1)[1]
  if unread and (not oldest or id_less(unread[1], oldest)) then oldest = unread[1] end
  return oldest
end
