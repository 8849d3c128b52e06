-- add.lua: append a task's entry to its stream and remember the entry id by job id.
--
-- KEYS[1]  the stream (a priority level's queue or a node's own queue)
-- KEYS[2]  {prefix}:streams:entries, hash job id -> stream entry id
-- KEYS[3]  (optional) {prefix}:task:{task id}, the record just stored: copied into the entry (field r) when
--          the stream holds fewer than ARGV[3] entries and the record is at most ARGV[4] bytes, so an idle
--          spore's blocking read brings it and the spore saves a round trip. A backlog carries no copies (its
--          entries are claimed in batches that read the records), so the copies cost little memory.
-- ARGV[1]  task id (field t)
-- ARGV[2]  job id (field j): the task's engine_job_id, which a spore checks before running it
-- ARGV[3]  (with KEYS[3]) copy the record below this many entries in the stream
-- ARGV[4]  (with KEYS[3]) largest record copied, in bytes
-- Returns the new entry id.
local record = false
if KEYS[3] and redis.call('XLEN', KEYS[1]) < tonumber(ARGV[3]) then
  record = redis.call('GET', KEYS[3])
  if record and #record > tonumber(ARGV[4]) then record = false end
end
local id
if record then
  id = redis.call('XADD', KEYS[1], '*', 't', ARGV[1], 'j', ARGV[2], 'r', record)
else
  id = redis.call('XADD', KEYS[1], '*', 't', ARGV[1], 'j', ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[2], id)
return id
