-- Admin: an operator's change to the user's settings, compare-and-set on their version, and
-- the window resets it asks for, in one step.
-- ARGV: state (JSON of the new settings), expected_version, resets (bits: 1 the minute's
--       requests, 2 today's requests, tokens and spend, 4 this month's spend)
-- Returns {applied (1, or 0 when the version moved: read again and retry), version}.
-- The settings live in the hash P .. 'admin' (v, state), kept 400 days from the last change.
local state = ARGV[1]
local expected, resets = tonumber(ARGV[2]), tonumber(ARGV[3])
local ak = P .. 'admin'
local v = num(redis.call('HGET', ak, 'v'))
if v ~= expected then return { 0, v } end
local now = now_ms()
local day = math.floor(now / DAY_MS)
if resets % 2 == 1 then redis.call('DEL', P .. 'minute') end
if math.floor(resets / 2) % 2 == 1 then
  redis.call('HDEL', P .. 'day:' .. int(day), 'requests', 'tokens', 'spend')
end
if math.floor(resets / 4) % 2 == 1 then
  redis.call('HDEL', P .. 'month:' .. int(month_of(day)), 'spend')
end
redis.call('HSET', ak, 'v', int(v + 1), 'state', state)
redis.call('PEXPIRE', ak, int(400 * DAY_MS))
return { 1, v + 1 }
