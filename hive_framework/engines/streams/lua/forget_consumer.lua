-- forget_consumer.lua: delete a consumer from a stream's group only if it holds no pending entry, in one step
-- (a consumer deleted with entries pending would strand them: they would never be delivered again).
--
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the consumer name
-- Writes: XGROUP DELCONSUMER on KEYS[1]. Returns 1 when the consumer was deleted, 0 when it holds entries.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
