-- depth.lua: the number of entries in the streams of one priority class, over every task type.
--
-- KEYS[1]     {prefix}:streams:types, the set of every task type that ever had a job queued
-- ARGV[1..n]  the base names of the class's levels; a level's stream of type T is "<base>:type:<T>"
-- Reads only (SMEMBERS, XLEN). Returns the sum.
local n = 0
local types = redis.call('SMEMBERS', KEYS[1])
for _, base in ipairs(ARGV) do
  for _, t in ipairs(types) do n = n + redis.call('XLEN', base .. ':type:' .. t) end
end
return n
