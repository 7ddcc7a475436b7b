-- Give: credits a refund to a request's rate limits (a negative amount
-- debits, without a check; nothing moves a bucket past full) and frees its
-- concurrency slot. The arguments of take.lua, with the refund for amounts.
-- now.lua, run first, sets P (a minute) and now.
for i = 1, 4 do
  local rate = tonumber(ARGV[1 + i])
  local amount = tonumber(ARGV[6 + i])
  if rate > 0 and amount ~= 0 then
    local per = P / rate
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    local nt
    if amount > 0 then
      nt = math.max(now, tat - amount * per)
    else
      nt = math.max(tat, now) - amount * per
    end
    if nt > now then
      redis.call('SET', KEYS[i], string.format('%.17g', nt), 'PX', math.ceil((nt - now) / 1000) + 1)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
if tonumber(ARGV[6]) > 0 then
  redis.call('ZREM', KEYS[5], ARGV[11])
end
return 1
