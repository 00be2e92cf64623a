-- Finds the sagas that failed lately, without a scan of the keyspace: the
-- `saga_failed` events among the last entries of the events stream, read
-- newest first a page at a time so that large entries are never held many
-- at once.
--
-- KEYS[1]  the events stream
-- ARGV[1]  look_back  entries looked through, at most
-- ARGV[2]  max_ids    saga ids returned, at most
--
-- Returns {saga_id, ...}: each once, newest failure first; ids longer than
-- 128 bytes (not ours) are left out.
local look_back, max_ids = tonumber(ARGV[1]), tonumber(ARGV[2])
local page = 100
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return {} end
local out, seen, looked, from = {}, {}, 0, '+'
while looked < look_back and #out < max_ids do
  local entries = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', math.min(page, look_back - looked))
  if #entries == 0 then break end
  for _, entry in ipairs(entries) do
    local f = entry[2]
    local event_type, saga_id
    for i = 1, #f, 2 do
      if f[i] == 'event_type' then event_type = f[i + 1]
      elseif f[i] == 'saga_id' then saga_id = f[i + 1] end
    end
    if event_type == 'saga_failed' and saga_id and #saga_id <= 128 and not seen[saga_id] then
      seen[saga_id] = true
      table.insert(out, saga_id)
      if #out >= max_ids then break end
    end
  end
  looked = looked + #entries
  from = '(' .. entries[#entries][1]
end
return out
