-- commands.lua: run_commands(argv, first, reads_only) runs a flat list of commands from argv[first] on, each
-- as: argument count, command name, arguments... and returns the last command's reply.
--
-- It is the one place a task record's status writes (records.status_commands) become Redis calls: the
-- broker EVALs it with `return run_commands(ARGV, 1, false)` after it (records.add_to_pipeline), the streams
-- engine's guarded.lua starts with it and calls it after its fence. Keys in argv are all under the hive's
-- prefix, built by the broker, never from wire data.
--
-- Pseudo-commands:
--   HIVE.WAKE waiters-key done-key status ttl-ms
--       push status onto the done list only when a waiter set its marker; the list lives ttl-ms, or as long
--       as the marker when that is longer
--   HIVE.COUNT key ttl-ms
--       add one to a finished-tasks counter; its expiry is set when the count starts (the key's end is fixed
--       by its bucket), and a key that holds no count is counted afresh
--   HIVE.REQUEUE stream entries-hash task-id job-id
--       append the task's entry to its stream again and remember its entry id (a handed-back task)
-- reads_only: the save already landed (its reply was lost) and is sent again: only SMEMBERS runs.
--
-- A key that holds another type than a command needs (planted by hand, or left by a bug) is deleted and the
-- command run again, with a warning in the Redis log: failing instead would stop the save half way, the
-- record written but its stream entry unacknowledged and its dependents never released. Other errors fail
-- as usual.
local function replacing(...)
  local reply = redis.pcall(...)
  -- tostring: fakeredis (the embedded default) gives the error as a userdata, not a string
  if type(reply) == 'table' and reply.err and string.find(tostring(reply.err), 'WRONGTYPE', 1, true) then
    local key = select(2, ...)
    redis.log(redis.LOG_WARNING, 'hive: replaced ' .. key .. ', which held another type')
    redis.call('DEL', key)
    reply = redis.call(...)
  elseif type(reply) == 'table' and reply.err then
    error(reply)
  end
  return reply
end

local function run_commands(argv, first, reads_only)
  local i, reply = first, true
  while i <= #argv do
    local n, name = tonumber(argv[i]), argv[i + 1]
    if reads_only then
      if name == 'SMEMBERS' then reply = replacing('SMEMBERS', argv[i + 2]) end
    elseif name == 'HIVE.WAKE' then
      local marked = redis.call('PTTL', argv[i + 2])
      if marked ~= -2 then
        replacing('RPUSH', argv[i + 3], argv[i + 4])
        reply = redis.call('PEXPIRE', argv[i + 3], math.max(tonumber(argv[i + 5]), marked))
      end
    elseif name == 'HIVE.COUNT' then
      local added = redis.pcall('INCR', argv[i + 2])
      if type(added) == 'table' and added.err then
        redis.call('SET', argv[i + 2], 1)
        added = 1
      end
      if added == 1 then redis.call('PEXPIRE', argv[i + 2], argv[i + 3]) end
      reply = added
    elseif name == 'HIVE.REQUEUE' then
      local id = replacing('XADD', argv[i + 2], '*', 't', argv[i + 4], 'j', argv[i + 5])
      reply = replacing('HSET', argv[i + 3], argv[i + 5], id)
    else
      reply = replacing(unpack(argv, i + 1, i + n))
    end
    i = i + n + 1
  end
  return reply
end
