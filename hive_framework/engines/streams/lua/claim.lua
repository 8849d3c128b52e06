-- claim.lua: take up to ARGV[3] new entries for one consumer, draining the streams in KEYS in order
-- (KEYS[1] first), so a lower-priority stream is read only when every higher one is empty.
--
-- KEYS[1..n]  the streams a spore serves, highest priority first (its node stream, then each level's
--             stream of each task type the spore serves: it never reads another type's stream)
-- ARGV[1]     the consumer group
-- ARGV[2]     the consumer name
-- ARGV[3]     how many entries at most
-- Reads (XREADGROUP '>') add the entries to the consumer's pending list; writes nothing else.
-- Returns {{stream, entry id, {field, value, ...}}, ...} in priority order.
local want = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if want <= 0 then break end
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
  if got then
    for _, entry in ipairs(got[1][2]) do
      table.insert(out, {key, entry[1], entry[2]})
      want = want - 1
    end
  end
end
return out
