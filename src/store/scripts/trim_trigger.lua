-- Trims a trigger stream: starters write it, so no XADD of ours caps it.
-- Entries go when they are older than the retention or beyond the cap on
-- the stream's length, but never an entry the daemons' group has not
-- finished with (unread, or read and not acknowledged). The cap works by
-- count, so an entry id from the future (which stops trimming by age until
-- Redis's clock passes it) cannot keep the stream from being capped.
--
-- KEYS[1]  the trigger stream
-- ARGV[1]  below_age   entries with ids below this are past the retention
-- ARGV[2]  keep_from   the oldest entry the group has not finished with
-- ARGV[3]  maxlen      the cap on the stream's length
-- ARGV[4]  pages       pages of 1,000 entries looked at, at most, to find
--                      where the cap cuts: bounds the work of one call
--
-- Returns the number of entries removed.
local below_age, keep_from = ARGV[1], ARGV[2]
local maxlen, pages = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return 0 end

-- Stream ids compared and stepped as text: their parts go up to 2^64 - 1,
-- past what a Lua number holds exactly.
local MAX = '18446744073709551615'
local function split(id)
  return string.match(id, '^(%d+)-(%d+)$')
end
local function num_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function less(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  if am ~= bm then return num_less(am, bm) end
  return num_less(as, bs)
end
local function incr(n)
  local digits = {string.byte(n, 1, -1)}
  for i = #digits, 1, -1 do
    if digits[i] < 57 then
      digits[i] = digits[i] + 1
      return string.char(unpack(digits))
    end
    digits[i] = 48
  end
  return '1' .. string.char(unpack(digits))
end
-- The id right after `id`.
local function after(id)
  local ms, seq = split(id)
  if seq ~= MAX then return ms .. '-' .. incr(seq) end
  if ms ~= MAX then return incr(ms) .. '-0' end
  return id
end

local cut = below_age
local excess = redis.call('XLEN', KEYS[1]) - maxlen
if excess > 0 then
  -- The id after the last entry beyond the cap, found a page at a time.
  local from = '-'
  for _ = 1, pages do
    if excess <= 0 then break end
    local page = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', math.min(excess, 1000))
    if #page == 0 then break end
    local last = page[#page][1]
    excess = excess - #page
    if less(cut, after(last)) then cut = after(last) end
    if not less(last, keep_from) then break end
    from = '(' .. last
  end
end
if less(keep_from, cut) then cut = keep_from end
return redis.call('XTRIM', KEYS[1], 'MINID', cut)
