-- Take: checks every limit of one request and, only when all admit it,
-- debits them all and takes a concurrency slot. The GCRA of gcra.go, line
-- for line. Times are microseconds.
-- KEYS[1..4]: the TATs of requests, tokens, input and output tokens.
-- KEYS[5]: the slots in flight, a sorted set scored by lease expiry.
-- ARGV[1]: now, or '' for the server's clock. ARGV[2..5]: the rates per
-- minute (0: unset). ARGV[6]: max concurrent requests (0: unset).
-- ARGV[7..10]: the amounts. ARGV[11]: the slot. ARGV[12]: the lease.
-- Returns {allowed, denied, oversize, over, remaining1, reset1, ... 4}.
-- now.lua, run first, sets P (a minute) and now.
local slack = P * 1e-9
local allowed, denied, oversize, worst = 1, -1, 0, -1
local tats, nexts = {}, {}
for i = 1, 4 do
  local rate = tonumber(ARGV[1 + i])
  if rate > 0 then
    local amount = tonumber(ARGV[6 + i])
    local per = P / rate
    tats[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
    nexts[i] = math.max(tats[i], now) + amount * per
    local over = nexts[i] - now - P
    if over > slack then
      allowed = 0
      local big = 0
      if amount > rate then big = 1 end
      if (big == 1 and oversize == 0) or (big == oversize and over > worst) then
        denied, oversize, worst = i - 1, big, over
      end
    end
  end
end
local maxc = tonumber(ARGV[6])
if allowed == 1 and maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  if redis.call('ZCARD', KEYS[5]) >= maxc then
    allowed, denied = 0, 4
  end
end
if allowed == 1 then
  for i = 1, 4 do
    if nexts[i] then
      tats[i] = nexts[i]
      if nexts[i] > now then
        redis.call('SET', KEYS[i], string.format('%.17g', nexts[i]), 'PX', math.ceil((nexts[i] - now) / 1000) + 1)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  end
  if maxc > 0 then
    local lease = tonumber(ARGV[12])
    redis.call('ZADD', KEYS[5], now + lease, ARGV[11])
    redis.call('PEXPIRE', KEYS[5], math.ceil(lease / 1000) + 1)
  end
end
local out = {allowed, denied, oversize, math.ceil(math.max(worst, 0))}
for i = 1, 4 do
  local rate = tonumber(ARGV[1 + i])
  if rate > 0 then
    local used = math.max(tats[i] - now, 0)
    local per = P / rate
    local remaining = math.floor((P - used) / per + 1e-9)
    out[#out + 1] = math.min(math.max(remaining, 0), rate)
    out[#out + 1] = math.ceil(used)
  else
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
end
return out
