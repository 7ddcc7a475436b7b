-- The prelude of take.lua and give.lua: P is the window (a minute) and now
-- the time, both in microseconds; ARGV[1] is now, or '' for the server's
-- clock, which every activator shares.
local P = 60000000
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
