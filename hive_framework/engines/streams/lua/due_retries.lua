-- due_retries.lua: move retries whose backoff has passed, and delayed tasks now due, onto their streams.
--
-- KEYS[1]  {prefix}:streams:delayed, a sorted set of JSON arrays [stream, task id, job id], scored by due ms
--          (members written before ids could hold any character are "stream \031 task id \031 job id")
-- KEYS[2]  {prefix}:streams:entries, hash job id -> stream entry id (so a queued job can be dropped)
-- ARGV[1]  now, in ms
-- ARGV[2]  how many at most
-- ARGV[3..] the prefixes of the hive's stream names (node queues, the high and background queues): a member
--          naming any other key is not followed
-- Writes: ZREM on KEYS[1], XADD on each member's stream, HSET on KEYS[2]. A member that does not decode
-- (or whose stream is not a stream of this hive) is removed and returned, for the caller to quarantine.
-- Returns {next due time in ms as a string, or false when nothing more is scheduled; {bad members...}}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local bad = {}
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local stream, task, job
    local ok, parts = pcall(cjson.decode, member)
    if ok and type(parts) == 'table' then
      stream, task, job = parts[1], parts[2], parts[3]
    else
      stream, task, job = string.match(member, '^(.-)\031(.-)\031(.*)$')
    end
    local added = false
    local ours = false
    if type(stream) == 'string' then
      for i = 3, #ARGV do
        if string.sub(stream, 1, string.len(ARGV[i])) == ARGV[i] then ours = true end
      end
    end
    if ours and type(task) == 'string' and type(job) == 'string' and task ~= '' and job ~= '' then
      local id = redis.pcall('XADD', stream, '*', 't', task, 'j', job)
      if type(id) ~= 'table' then
        redis.call('HSET', KEYS[2], job, id)
        added = true
      end
    end
    if not added then table.insert(bad, member) end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {nxt[2] or false, bad}
