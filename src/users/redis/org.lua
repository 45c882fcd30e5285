-- Org: the organisation's daily spend, shared by every replica (cost.max_org_daily_usd). Its
-- keys have their own hash tag (KEYS[1] = "<prefix>:org:{org}:"): one Cluster slot, apart from
-- every user's, so the user's scripts never touch them; each step of a request is a separate
-- call. Per day, one hash: spend (settled and in flight), promised (allowances of open
-- requests), open (how many), r:<rid> = "cost,promised" of an open request, d:<rid> = settled,
-- x:<rid> = the cost charged when its lease ended. Open requests hold leases (`leases`, a
-- sorted set of "<day>:<rid>"): a dead replica's requests keep their cost and free their
-- promises once the lease ends, and a late settlement adds the rest.
-- The rule is the book's (users/org.rs, users/allowance.rs), in micro-USD.
-- ARGV: rid, op, day, cost, needed, min, want, cap, lease_ms
--   op 1 admit: a new request costing `cost` (its input) that needs `needed` promised (a whole
--        reply's smallest grant; 0 for a stream) and would like `want` (in batches of `min`);
--        day 0 = today by Redis' clock.
--   op 2 meter: the request now costs `cost`; its next allowance (no check: the cost was
--        promised).
--   op 3 reprice: the request's cost becomes `cost` and its promise `needed` (= want), if that
--        stays within the cap.
--   op 4 settle: the request's final cost is `cost`, once per request id (a request the org
--        never saw, one a replica admitted alone, is added).
-- Returns {code, spend, promised, day, granted}; code 0 = done, 1 = refused (past the cap), 2 =
-- no such open request, 3 = refused (only promises stand in the way: retry soon).
local rid, op = ARGV[1], tonumber(ARGV[2])
local day = tonumber(ARGV[3])
local cost, needed = tonumber(ARGV[4]), tonumber(ARGV[5])
local min, want, cap = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local lease_ms = tonumber(ARGV[9])
local now = now_ms()
if day == 0 then day = math.floor(now / DAY_MS) end
local lk = P .. 'leases'

-- Requests whose lease ended (their replica died): their cost stays, their promise is freed.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', lk, '-inf', int(now))) do
  local d, r = string.match(member, '^(%d+):(.*)$')
  local key = P .. 'day:' .. d
  local open_record = redis.call('HGET', key, 'r:' .. r)
  if open_record then
    local c, p = string.match(open_record, '^(%d+),(%d+)$')
    redis.call('HINCRBY', key, 'promised', -tonumber(p))
    redis.call('HINCRBY', key, 'open', -1)
    redis.call('HDEL', key, 'r:' .. r)
    redis.call('HSET', key, 'x:' .. r, c)
  end
  redis.call('ZREM', lk, member)
end

local k = P .. 'day:' .. int(day)
local member = int(day) .. ':' .. rid
local f = 'r:' .. rid
local spend = num(redis.call('HGET', k, 'spend'))
local promised = num(redis.call('HGET', k, 'promised'))
local open = num(redis.call('HGET', k, 'open'))
local function answer(code, granted)
  return { code, spend, promised, day, granted }
end
local function save()
  redis.call('HSET', k, 'spend', int(spend), 'promised', int(promised), 'open', int(open))
  redis.call('PEXPIREAT', k, int((day + 2) * DAY_MS))
end

local settled = redis.call('HEXISTS', k, 'd:' .. rid) == 1
local expired = redis.call('HGET', k, 'x:' .. rid)
local s = redis.call('HGET', k, f)
local old_cost, old_promised = 0, 0
if s then
  local c, p = string.match(s, '^(%d+),(%d+)$')
  old_cost, old_promised = tonumber(c), tonumber(p)
elseif expired then
  old_cost = tonumber(expired)
end

if op == 4 then
  if settled then return answer(0, 0) end
  spend = math.max(0, spend - old_cost + cost)
  promised = math.max(0, promised - old_promised)
  if s then
    open = math.max(0, open - 1)
    redis.call('HDEL', k, f)
    redis.call('ZREM', lk, member)
  end
  redis.call('HDEL', k, 'x:' .. rid)
  redis.call('HSET', k, 'd:' .. rid, 1)
  save()
  return answer(0, 0)
end
-- Settled already (a late copy of an admit), its lease ended, or not open (meter, reprice):
-- nothing to do.
if settled or expired or (op ~= 1 and not s) then return answer(2, 0) end

local others = math.max(0, promised - old_promised)
local new_spend = math.max(0, spend - old_cost + cost)
if op == 1 or op == 3 then
  if new_spend + needed > cap then return answer(1, 0) end
  if new_spend + others + needed > cap then return answer(3, 0) end
end
local requests = open
if not s then requests = open + 1 end
local granted = share(math.max(0, cap - new_spend - others), requests, needed, min, want)
spend, promised, open = new_spend, others + granted, requests
redis.call('HSET', k, f, int(cost) .. ',' .. int(granted))
if op == 1 then
  redis.call('ZADD', lk, int(now + lease_ms), member)
  redis.call('PEXPIRE', lk, int(2 * DAY_MS))
end
save()
return answer(0, granted)
