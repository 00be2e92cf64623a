-- Lists owners whose sagas no live daemon drives: leases that ran out on
-- Redis's clock, and registered owners with no lease at all (given up and
-- claimed half-way, or removed by hand).
--
-- KEYS[1]  leases (see lease_register.lua)
-- KEYS[2]  owners (see lease_register.lua)
-- ARGV[1]  limit   at most this many owners
--
-- Returns {now, owner, ...}: Redis's time in unix ms, then the owners.
local limit = tonumber(ARGV[1])
local now = now_ms()
local out = {now}
for _, owner in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  table.insert(out, owner)
end
if redis.call('TYPE', KEYS[2]).ok == 'set' then
  for _, owner in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if #out > limit then break end
    if not redis.call('ZSCORE', KEYS[1], owner) then
      table.insert(out, owner)
    end
  end
end
return out
