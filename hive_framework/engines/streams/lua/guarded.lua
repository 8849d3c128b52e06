-- guarded.lua: record a spore's progress on a task unless the task was cancelled, in one step.
--
-- KEYS[1]  {prefix}:cancelled:{task id}: when it exists nothing is written and false is returned
-- KEYS[2]  {prefix}:task:{task id}, the task record (read only, for the fence)
-- ARGV[1..4]  the fence: status, attempt, engine job id, node id ('' for none). When ARGV[1] is not empty
--          the record must still show exactly these, else nothing is written and 'fenced' is returned (an
--          outcome whose lease lapsed and a newer attempt owns the task; an attempt begun over a record that
--          moved on since it was read). A record that does not decode is fenced too. ARGV[1] '=' asks instead
--          for the record to be exactly the bytes of ARGV[2] (an attempt begun from the copy of the record its
--          stream entry carried, which may be stale).
-- ARGV[5..8] what the record shows once this save is applied (status, attempt, engine job id, node): when the
--          fence does not hold but the record shows exactly these, with a node (a spore's attempt wrote it), this
--          very save landed before its reply was lost and is being sent again: nothing is written, and only the
--          read commands run (SMEMBERS).
-- ARGV[9..] a flat list of commands, each as: argument count, command name, arguments...
--          The commands are the task record's status writes (SET/PSETEX {prefix}:task:{id}, ZADD/ZREM on
--          {prefix}:status:*, {prefix}:dead, RPUSH/PEXPIRE {prefix}:done:{id}, XADD/PEXPIRE the job's
--          events stream), then the settling of its stream entry (XACK + XDEL on the entry's stream, HDEL
--          {prefix}:streams:entries), a retry's schedule (ZADD {prefix}:streams:delayed), and last SMEMBERS
--          {prefix}:dependents:{id} when the task became final. Keys in ARGV are all under the prefix;
--          they are built by the broker, never from wire data.
--          Run by run_commands (hive_framework/broker/commands.lua, which this script is sent after), with
--          its pseudo-commands (HIVE.WAKE, HIVE.COUNT, HIVE.REQUEUE).
-- Returns {reply of the last command}.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local landed = false
if ARGV[1] ~= '' then
  local raw = redis.call('GET', KEYS[2])
  if not raw then return 'fenced' end
  if not (ARGV[1] == '=' and raw == ARGV[2]) then
    local ok, rec = pcall(cjson.decode, raw)
    if not ok or type(rec) ~= 'table' then return 'fenced' end
    local job, node = rec['engine_job_id'], rec['assigned_node']
    if job == nil or job == cjson.null then job = '' end
    if node == nil or node == cjson.null then node = '' end
    local shows = {rec['status'], tostring(rec['attempt']), job, node}
    local holds = ARGV[1] ~= '=' and shows[1] == ARGV[1] and shows[2] == ARGV[2] and shows[3] == ARGV[3]
      and shows[4] == ARGV[4]
    if not holds then
      if ARGV[8] ~= '' and shows[1] == ARGV[5] and shows[2] == ARGV[6] and shows[3] == ARGV[7]
          and shows[4] == ARGV[8] then
        landed = true
      else
        return 'fenced'
      end
    end
  end
end
return {run_commands(ARGV, 9, landed)}
