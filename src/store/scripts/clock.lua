-- Shared by the scripts that judge leases (prepended to each): Redis's own
-- clock, the only one two daemons ever compare, and whether a lease is
-- alive on it.

-- Redis's time, in unix ms.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether `owner` holds a lease in `leases` that runs out after `now`.
local function lease_alive(leases, owner, now)
  local expiry = redis.call('ZSCORE', leases, owner)
  return expiry ~= false and tonumber(expiry) > now
end

