-- Meter: add the output tokens a stream relayed (within its allowance) and grant its next
-- allowance, in place of the last (Book::meter).
-- ARGV: rid, tokens, needed, batch_min, batch_max, daily_cap, monthly_cap, call (this call's
--       id: the same call applied twice adds its tokens once), admin_version
-- Returns {code, spend_today, spend_month, now, allowance}; code 0 = metered, 2 = no such open
-- request (settled, or its lease ended), 3 = the operator's settings changed (nothing done:
-- read them and ask again). allowance: output tokens the request may relay from
-- here before it reports again: from the spend the caps leave after the running spend and the
-- other requests' allowances, at its output price (the rule `share`), and no more than its
-- grant still allows. Less than `needed`: a cap is reached.
local rid = ARGV[1]
local tokens, needed = tonumber(ARGV[2]), tonumber(ARGV[3])
local batch_min, batch_max = tonumber(ARGV[4]), tonumber(ARGV[5])
local daily_cap, monthly_cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local call = ARGV[8]
local now = now_ms()
if admin_changed(tonumber(ARGV[9])) then return { 3, 0, 0, now, 0 } end
local s = redis.call('HGET', P .. 'open', rid)
if not s then return { 2, 0, 0, now, 0 } end
local o = decode(s)
if o.last ~= call then
  o.metered = o.metered + tokens
  o.last = call
end
-- Its own allowance is replaced: the running figures count only the others'.
o.promised = 0
redis.call('HSET', P .. 'open', rid, encode(o))
local r = running(now)
local free = math.max(0, math.min(daily_cap - r.spend_today - r.promised_today,
  monthly_cap - r.spend_month - r.promised_month))
local free_tokens = math.floor(free * 1000 / math.max(o.out_nano, 1))
local grant_left = math.max(0, o.reserved - o.input - o.metered)
local allowance = math.min(share(free_tokens, r.open, needed, batch_min, batch_max), grant_left)
o.promised = allowance
redis.call('HSET', P .. 'open', rid, encode(o))
return { 0, r.spend_today, r.spend_month, now, allowance }
