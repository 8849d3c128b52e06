-- add.lua: append a task's entry to its stream and remember the entry id by job id.
--
-- KEYS[1]  the stream (a priority level's queue or a node's own queue)
-- KEYS[2]  {prefix}:streams:entries, hash job id -> stream entry id
-- ARGV[1]  task id (field t)
-- ARGV[2]  job id (field j): the task's engine_job_id, which a spore checks before running it
-- Returns the new entry id.
local id = redis.call('XADD', KEYS[1], '*', 't', ARGV[1], 'j', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], id)
return id
