-- Meter: add relayed output tokens to an open request; say whether the user is still within
-- the spend caps. ARGV: rid, tokens, daily_cap, monthly_cap
-- Returns {verdict, spend_today, spend_month, now}; verdict 0 = go on, 1 = stop (cap passed),
-- 2 = no such open request (settled, or its lease ended).
local rid = ARGV[1]
local tokens = tonumber(ARGV[2])
local daily_cap, monthly_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local s = redis.call('HGET', P .. 'open', rid)
if not s then return { 2, 0, 0, now } end
local o = decode(s)
o.metered = o.metered + tokens
redis.call('HSET', P .. 'open', rid, encode(o))
local r = running(now)
local within = r.spend_today <= daily_cap and r.spend_month <= monthly_cap
return { within and 0 or 1, r.spend_today, r.spend_month, now }
