-- Describes a stream for an operator, within bounds: its kind, length and
-- last entry's `reason` (on a dead-letter stream, why it is there), and
-- its first consumer groups with their first consumers. XINFO builds its
-- replies whole inside Redis; only what is kept here crosses the network.
--
-- KEYS[1]  the stream
-- ARGV[1]  max_groups     groups described, at most
-- ARGV[2]  max_consumers  consumers described per group, at most
-- ARGV[3]  max_bytes      longest name or reason returned (longer ones cut)
--
-- Returns {kind, length, last_reason, group_count, group, ...}: kind is
-- Redis's TYPE ('none' when missing; nothing more is read unless it is
-- 'stream'); last_reason is '' when the last entry has none; each group
-- is {name, consumer_count, pending, lag, last_delivered_id, consumer, ...}
-- with lag -1 when Redis cannot tell it, and each consumer is
-- {name, pending, idle_ms}.
local max_groups, max_consumers = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])

local function cut(s) return string.sub(tostring(s), 1, max_bytes) end

-- XINFO replies are flat {name, value, name, value, ...} lists.
local function fields(flat)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end

local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'stream' then return {kind, 0, '', 0} end

local length = redis.call('XLEN', KEYS[1])
local last_reason = ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if last then
  local entry = last[2]
  for i = 1, #entry, 2 do
    if entry[i] == 'reason' then last_reason = cut(entry[i + 1]) break end
  end
end

local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local out = {kind, length, last_reason, #groups}
for g = 1, math.min(#groups, max_groups) do
  local group = fields(groups[g])
  local lag = group['lag']
  if type(lag) ~= 'number' then lag = -1 end
  local described = {cut(group['name']), group['consumers'], group['pending'], lag,
                     cut(group['last-delivered-id'])}
  if max_consumers > 0 then
    local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], group['name'])
    for c = 1, math.min(#consumers, max_consumers) do
      local consumer = fields(consumers[c])
      table.insert(described, {cut(consumer['name']), consumer['pending'], consumer['idle']})
    end
  end
  table.insert(out, described)
end
return out
