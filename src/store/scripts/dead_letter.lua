-- Moves a stream entry that can never be processed to the dead-letter
-- stream as a bounded copy, and acknowledges it, in one go: the copy is
-- made here so that an entry of any size never travels to the daemon.
--
-- KEYS[1]  the stream the entry is on
-- KEYS[2]  the dead-letter stream; left out on a cluster, where it may be
--          in another slot: the copy is then returned, to be added and the
--          entry acknowledged by the caller, and nothing is written here
-- ARGV[1]  group       the consumer group to acknowledge it in ('' for none)
-- ARGV[2]  entry_id
-- ARGV[3]  reason      why it can never be processed
-- ARGV[4]  maxlen      the dead-letter stream's approximate cap
-- ARGV[5]  max_value   bytes kept of each field value
-- ARGV[6]  max_fields  fields kept
--
-- The copy: `stream`, `entry_id`, `reason`, `size` (the entry's bytes),
-- `fields` (JSON of the first fields, values cut to max_value bytes, bytes
-- outside printable ASCII shown as '?'), `truncated` ('1' if anything was
-- left out).
--
-- Returns 1 when copied, 0 when the dead-letter stream is not a stream
-- (the entry is acknowledged all the same: nothing would ever take it);
-- without KEYS[2], the copy's fields and values.
local group, id, reason = ARGV[1], ARGV[2], ARGV[3]
local maxlen, max_value, max_fields = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local function clean(s)
  return (string.gsub(string.sub(s, 1, max_value), '[^\32-\126]', '?'))
end
local copied = 0
local dead_type = KEYS[2] and redis.call('TYPE', KEYS[2]).ok or 'elsewhere'
if dead_type == 'stream' or dead_type == 'none' or dead_type == 'elsewhere' then
  local fields, size, truncated, kept = {}, 0, '0', 0
  if redis.call('TYPE', KEYS[1]).ok == 'stream' then
    local found = redis.call('XRANGE', KEYS[1], id, id)
    local entry = found[1]
    if entry and entry[2] then
      local raw = entry[2]
      for j = 1, #raw, 2 do
        local name, value = raw[j], raw[j + 1] or ''
        size = size + #name + #value
        if kept < max_fields then
          kept = kept + 1
          if #name > max_value or #value > max_value then truncated = '1' end
          fields[clean(name)] = clean(value)
        else
          truncated = '1'
        end
      end
    end
  end
  local copy = { 'stream', KEYS[1], 'entry_id', id, 'reason', reason,
    'size', tostring(size), 'fields', cjson.encode(fields), 'truncated', truncated }
  if dead_type == 'elsewhere' then return copy end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(copy))
  copied = 1
end
if group ~= '' and redis.call('TYPE', KEYS[1]).ok == 'stream' then
  redis.call('XACK', KEYS[1], group, id)
end
return copied
