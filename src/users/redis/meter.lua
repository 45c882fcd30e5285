-- Meter: add relayed output tokens to an open request; say whether the user is still within
-- the spend caps. ARGV: rid, tokens, daily_cap, monthly_cap, max_batch
-- Returns {verdict, spend_today, spend_month, now, allowance}; verdict 0 = go on, 1 = stop (cap
-- passed), 2 = no such open request (settled, or its lease ended). allowance: output tokens this
-- request may stream before the next report (half the headroom under the caps at its output
-- price, split among the user's open requests on every replica; as Book::allowance).
local rid = ARGV[1]
local tokens = tonumber(ARGV[2])
local daily_cap, monthly_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_batch = tonumber(ARGV[5])
local now = now_ms()
local s = redis.call('HGET', P .. 'open', rid)
if not s then return { 2, 0, 0, now, 0 } end
local o = decode(s)
o.metered = o.metered + tokens
redis.call('HSET', P .. 'open', rid, encode(o))
local r = running(now)
local within = r.spend_today <= daily_cap and r.spend_month <= monthly_cap
-- The new allowance (Book::grant_allowance): half the headroom left after the spend and the
-- other requests' allowances, at this request's output price, split among the open requests.
local own = cost(0, o.promised, o.in_nano, o.out_nano)
local own_today = (o.day == r.day) and own or 0
local own_month = (o.month == r.month) and own or 0
local headroom = math.max(0, math.min(
  daily_cap - r.spend_today - (r.promised_today - own_today),
  monthly_cap - r.spend_month - (r.promised_month - own_month)))
-- Never more than the relay's largest batch nor the output the request's grant still allows.
local grant_left = math.max(0, o.reserved - o.input - o.metered)
local allowance = math.min(max_batch, grant_left,
  math.floor(math.floor(headroom * 1000 / math.max(o.out_nano, 1)) / (2 * r.open)))
o.promised = allowance
redis.call('HSET', P .. 'open', rid, encode(o))
return { within and 0 or 1, r.spend_today, r.spend_month, now, allowance }
