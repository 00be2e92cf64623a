-- Shared by the read scripts (prepended to each).
--
-- The marker of an entry too large to read: `sagaflow_oversized` (its size
-- in bytes), and those of its identifying fields that are short, so that
-- the reader can still say what it refused and to whom.
local KEPT = {'saga', 'saga_id', 'request_id', 'correlation_id', 'event_type', 'status', 'idempotency_key'}
local function shrink(entry, max_bytes)
  local fields = entry[2]
  if not fields then return end
  local size = 0
  for j = 1, #fields do size = size + #fields[j] end
  if size <= max_bytes then return end
  local marker = {'sagaflow_oversized', tostring(size)}
  for j = 1, #fields - 1, 2 do
    for _, name in ipairs(KEPT) do
      if fields[j] == name and #fields[j + 1] <= 128 then
        table.insert(marker, name)
        table.insert(marker, fields[j + 1])
      end
    end
  end
  entry[2] = marker
end

