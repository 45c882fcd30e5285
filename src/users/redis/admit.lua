-- Admit: check every window and reserve, in one step (the book's rules, users/book.rs).
-- ARGV: rid, input, max_tokens, choices, stream, in_nano, out_nano, rpm, rpd, tpd,
--       max_concurrent, min_grant, daily_cap, monthly_cap, lease_ms, batch_min, batch_max,
--       admin_version (the version of the operator's settings the limits were computed with)
-- Returns {code, granted, retry_ms, minute_used, tokens_running, spend_today, spend_month,
--          expired_leases, now, allowance}; code 0 = admitted, 1 concurrency, 2 minute, 3 day
--          requests, 4 daily spend, 5 monthly spend, 6 tokens per day, 7 spend promised to
--          running requests (retry soon), 8 the operator's settings changed (nothing done: read
--          them and ask again). allowance: a stream's first (the rule `share`); a
--          non-streamed request's whole grant, its max_tokens capped by the spend left.
local rid = ARGV[1]
local input = tonumber(ARGV[2])
local max_tokens = tonumber(ARGV[3])
local choices = math.max(1, tonumber(ARGV[4]))
local stream = tonumber(ARGV[5])
local in_nano, out_nano = tonumber(ARGV[6]), tonumber(ARGV[7])
local rpm, rpd, tpd = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local max_concurrent, min_grant = tonumber(ARGV[11]), tonumber(ARGV[12])
local daily_cap, monthly_cap = tonumber(ARGV[13]), tonumber(ARGV[14])
local lease_ms = tonumber(ARGV[15])
local batch_min, batch_max = tonumber(ARGV[16]), tonumber(ARGV[17])
local admin_version = tonumber(ARGV[18])

local now = now_ms()
if admin_changed(admin_version) then
  return { 8, 0, 0, 0, 0, 0, 0, 0, now, 0 }
end
-- Settled already (a late copy of an admit whose caller was answered without Redis): refuse.
if redis.call('EXISTS', P .. 'done:' .. rid) == 1 then
  return { 1, 0, 1000, 0, 0, 0, 0, 0, now, 0 }
end
local expired = expire_leases(now)
local mk = P .. 'minute'
redis.call('ZREMRANGEBYSCORE', mk, '-inf', int(now - MINUTE_MS))
local minute = redis.call('ZCARD', mk)
local r = running(now)
-- Admitted already (a copy the client sent again after its connection broke): the same answer,
-- nothing counted twice.
local again = redis.call('HGET', P .. 'open', rid)
if again then
  local o = decode(again)
  return { 0, math.floor((o.reserved - o.input) / choices), 0, minute, r.tokens, r.spend_today,
    r.spend_month, expired, now, o.promised }
end

local function refuse(code, retry_ms)
  return { code, 0, retry_ms, minute, r.tokens, r.spend_today, r.spend_month, expired, now, 0 }
end
if r.open >= max_concurrent then return refuse(1, 1000) end
if minute >= rpm then
  local oldest = redis.call('ZRANGE', mk, 0, 0, 'WITHSCORES')
  local frees = (oldest[2] and tonumber(oldest[2]) or now) + MINUTE_MS
  return refuse(2, math.max(0, frees - now))
end
if r.requests_today >= rpd then return refuse(3, 0) end
local input_cost = cost(input, 0, in_nano, out_nano)
local floor = math.min(min_grant, max_tokens)
-- What must fit under the caps: the input, and for a request charged at its end the least
-- output it may be granted.
local needed_cost = input_cost
if stream == 0 then needed_cost = cost(input, floor * choices, in_nano, out_nano) end
if r.spend_today + needed_cost > daily_cap then return refuse(4, 0) end
if r.spend_month + needed_cost > monthly_cap then return refuse(5, 0) end
-- Spend promised to running requests (their allowances) is not free to take either; a refusal
-- for that alone says "soon" (7): promises end within a batch.
if r.spend_today + r.promised_today + needed_cost > daily_cap
  or r.spend_month + r.promised_month + needed_cost > monthly_cap then return refuse(7, 1000) end
local left = math.max(0, tpd - r.tokens)
if left < input + floor * choices then return refuse(6, 0) end
local granted = math.min(max_tokens, math.floor((left - input) / choices))
-- The spend the caps leave beside the running spend and promises, once the input is counted.
local free = math.max(0, math.min(daily_cap - r.spend_today - r.promised_today,
  monthly_cap - r.spend_month - r.promised_month) - input_cost)
local free_tokens = math.floor(free * 1000 / math.max(out_nano, 1))
local promised
if stream == 0 then
  granted = math.min(granted, math.floor(free_tokens / choices))
  promised = granted * choices
else
  promised = math.min(share(free_tokens, r.open + 1, 0, batch_min, batch_max), granted * choices)
end
local reserved = input + granted * choices

redis.call('ZADD', mk, int(now), rid)
redis.call('PEXPIRE', mk, int(MINUTE_MS + 1000))
local dk = P .. 'day:' .. int(r.day)
redis.call('HINCRBY', dk, 'requests', 1)
redis.call('PEXPIREAT', dk, int((r.day + 2) * DAY_MS))
redis.call('HINCRBY', P .. 'life', 'requests', 1)
redis.call('PEXPIRE', P .. 'life', int(400 * DAY_MS))
local o = { day = r.day, month = r.month, in_nano = in_nano, out_nano = out_nano,
  input = input, reserved = reserved, metered = 0, stream = stream, promised = promised }
redis.call('HSET', P .. 'open', rid, encode(o))
redis.call('ZADD', P .. 'leases', int(now + lease_ms), rid)
-- Open requests outlive their lease until a later script charges them (a dead replica's
-- request is charged when the user is next seen): keep them as long as the month's spend.
redis.call('PEXPIRE', P .. 'open', int(34 * DAY_MS))
redis.call('PEXPIRE', P .. 'leases', int(34 * DAY_MS))
return { 0, granted, 0, minute + 1, r.tokens + reserved, r.spend_today + input_cost,
  r.spend_month + input_cost, expired, now, promised }
