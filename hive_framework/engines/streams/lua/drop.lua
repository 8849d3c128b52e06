-- drop.lua: delete a job's entry from its stream, if it is still queued.
--
-- KEYS[1]  the stream
-- KEYS[2]  {prefix}:streams:entries, hash job id -> stream entry id
-- ARGV[1]  job id
-- Writes: XDEL on KEYS[1], HDEL on KEYS[2]. An entry a spore already took is left: its job id no longer
-- matches the task's, so the spore skips it.
-- Returns the entry id dropped, or false.
local id = redis.call('HGET', KEYS[2], ARGV[1])
if id then
  redis.call('XDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return id
