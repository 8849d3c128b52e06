-- claim.lua: take up to ARGV[3] new entries for one consumer, draining the streams in KEYS in order
-- (KEYS[1] first), so a lower-priority stream is read only when every higher one is empty.
--
-- KEYS[1..n]  the streams a spore serves, highest priority first (its node stream, then each level's
--             stream of each task type the spore serves: it never reads another type's stream)
-- ARGV[1]     the consumer group
-- ARGV[2]     the consumer name
-- ARGV[3]     how many entries at most
-- ARGV[4]     the prefix of task record keys ({prefix}:task:): each entry's record (its t field) is read
--             with it, saving the spore a round trip ('' to read none)
-- ARGV[5..4+n] (optional) per stream, the number of its limit group (0: none): the streams of one task
--             type with a cap or a rate share a group, so its levels together give at most the group's count
-- ARGV[5+n..] (optional) how many entries at most each limit group 1, 2... may give
-- Reads (XREADGROUP '>') add the entries to the consumer's pending list; writes nothing else.
-- Returns {{stream, entry id, {field, value, ...}, record or false}, ...} in priority order.
local want = tonumber(ARGV[3])
local records = ARGV[4]
local n = #KEYS
local room = {}
if #ARGV > 4 then
  for g = 1, #ARGV - 4 - n do room[g] = tonumber(ARGV[4 + n + g]) end
end
local function record(fields)
  if records == '' then return false end
  for f = 1, #fields - 1, 2 do
    if fields[f] == 't' then return redis.call('GET', records .. fields[f + 1]) end
  end
  return false
end
local out = {}
for i, key in ipairs(KEYS) do
  if want <= 0 then break end
  local group = tonumber(ARGV[4 + i] or '0') or 0
  local count = want
  if group > 0 and room[group] < count then count = room[group] end
  if count > 0 then
    local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, 'STREAMS', key, '>')
    if got then
      for _, entry in ipairs(got[1][2]) do
        table.insert(out, {key, entry[1], entry[2], record(entry[2])})
        want = want - 1
        if group > 0 then room[group] = room[group] - 1 end
      end
    end
  end
end
return out
