-- guarded.lua: record a spore's progress on a task unless the task was cancelled, in one step.
--
-- KEYS[1]  {prefix}:cancelled:{task id}: when it exists nothing is written and false is returned
-- KEYS[2]  {prefix}:task:{task id}, the task record (read only, for the fence)
-- ARGV[1..4]  the fence: status, attempt, engine job id, node id ('' for none). When ARGV[1] is not empty
--          the record must still show exactly these, else nothing is written and 'fenced' is returned (an
--          outcome whose lease lapsed and a newer attempt owns the task; an attempt begun over a record that
--          moved on since it was read). A record that does not decode is fenced too.
-- ARGV[5..] a flat list of commands, each as: argument count, command name, arguments...
--          The commands are the task record's status writes (SET/PSETEX {prefix}:task:{id}, ZADD/ZREM on
--          {prefix}:status:*, {prefix}:dead, RPUSH/PEXPIRE {prefix}:done:{id}, XADD/PEXPIRE the job's
--          events stream), then the settling of its stream entry (XACK + XDEL on the entry's stream, HDEL
--          {prefix}:streams:entries), a retry's schedule (ZADD {prefix}:streams:delayed), and last SMEMBERS
--          {prefix}:dependents:{id} when the task became final. Keys in ARGV are all under the prefix;
--          they are built by the broker, never from wire data.
--          One pseudo-command, HIVE.REQUEUE stream entries-hash task-id job-id, appends the task's entry
--          to its stream again and remembers its entry id (a handed-back task): add.lua inlined, as a
--          script cannot call another.
-- Returns {reply of the last command}.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if ARGV[1] ~= '' then
  local raw = redis.call('GET', KEYS[2])
  if not raw then return 'fenced' end
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' then return 'fenced' end
  local job, node = rec['engine_job_id'], rec['assigned_node']
  if job == nil or job == cjson.null then job = '' end
  if node == nil or node == cjson.null then node = '' end
  if rec['status'] ~= ARGV[1] or tostring(rec['attempt']) ~= ARGV[2] or job ~= ARGV[3] or node ~= ARGV[4] then
    return 'fenced'
  end
end
local i = 5
local reply = true
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if ARGV[i + 1] == 'HIVE.REQUEUE' then
    local id = redis.call('XADD', ARGV[i + 2], '*', 't', ARGV[i + 4], 'j', ARGV[i + 5])
    reply = redis.call('HSET', ARGV[i + 3], ARGV[i + 5], id)
  else
    reply = redis.call(unpack(ARGV, i + 1, i + n))
  end
  i = i + n + 1
end
return {reply}
