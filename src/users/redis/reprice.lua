-- Reprice: move an open request that metered nothing yet to another model's price (fallback
-- before the first token), if the spend checks admission made pass at it (Book::reprice): its
-- cost at the new price replacing its cost at the old one, the running spend must stay within
-- the caps, also with the spend promised to the other open requests (and a non-streamed
-- request's own grant at the new price). On a pass a stream's allowance is dropped (it asks
-- again, at the new price). The token reservation is unchanged. On a refusal nothing changes.
-- ARGV: rid, in_nano, out_nano, daily_cap, monthly_cap
-- Returns {code, spend_today, spend_month, now}; code 0 = re-priced, 1 = no such open request
-- (settled, or its lease ended), 2 = output metered already, 3 = daily cap, 4 = monthly cap,
-- 5 = spend promised to other running requests. The spend is the running spend after the call.
local rid = ARGV[1]
local in_nano, out_nano = tonumber(ARGV[2]), tonumber(ARGV[3])
local daily_cap, monthly_cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local s = redis.call('HGET', P .. 'open', rid)
if not s then return { 1, 0, 0, now } end
local o = decode(s)
local r = running(now)
local function refuse(code)
  return { code, r.spend_today, r.spend_month, now }
end
if o.metered > 0 then return refuse(2) end
local old = cost(o.input, o.metered, o.in_nano, o.out_nano)
local new = cost(o.input, o.metered, in_nano, out_nano)
-- The request counts in the windows it was admitted in; there its cost is replaced.
local today, month = r.spend_today, r.spend_month
local own = cost(0, o.promised, o.in_nano, o.out_nano)
local others_today, others_month = r.promised_today, r.promised_month
if o.day == r.day then
  today = today - old + new
  others_today = others_today - own
end
if o.month == r.month then
  month = month - old + new
  others_month = others_month - own
end
if today > daily_cap then return refuse(3) end
if month > monthly_cap then return refuse(4) end
local new_promise = 0
if o.stream == 0 then new_promise = cost(0, o.promised, in_nano, out_nano) end
if today + others_today + new_promise > daily_cap
  or month + others_month + new_promise > monthly_cap then
  return refuse(5)
end
o.in_nano, o.out_nano = in_nano, out_nano
if o.stream == 1 then o.promised = 0 end
redis.call('HSET', P .. 'open', rid, encode(o))
return { 0, today, month, now }
