-- tollgate: shared helpers, prepended to every script (see scripts.rs).
-- KEYS[1] is the user's key prefix "<prefix>:{<user>}:" (one Cluster slot per user); KEYS[2]
-- its guard key, never written (while the slot moves between Cluster masters, Redis refuses
-- the call rather than run it on a node holding only some of the keys).
-- Time is Redis TIME, never a replica's clock. Every key written gets its expiry here.
local P = KEYS[1]
local DAY_MS = 86400000
local MINUTE_MS = 60000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x)
  return string.format('%d', x)
end

-- The UTC month of a day number, as year * 12 + (month - 1) (Howard Hinnant's algorithm,
-- the same as calendar.rs).
local function month_of(day)
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y * 12 + (m - 1)
end

-- Cost in micro-USD, rounded up (pricing.rs).
local function cost(input, output, in_nano, out_nano)
  return math.floor((input * in_nano + output * out_nano + 999) / 1000)
end

-- An open request: day,month,in_nano,out_nano,input,reserved,metered,stream,promised[,last]
-- (promised: output tokens it may still relay before it reports again: a stream's allowance,
-- a non-streamed request's whole grant; last: the id of the last meter call applied, so a call
-- the client sends again after a broken connection is not counted twice).
local function decode(s)
  local f = {}
  for v in string.gmatch(s, '[^,]+') do f[#f + 1] = v end
  return { day = tonumber(f[1]), month = tonumber(f[2]), in_nano = tonumber(f[3]),
    out_nano = tonumber(f[4]), input = tonumber(f[5]), reserved = tonumber(f[6]),
    metered = tonumber(f[7]), stream = tonumber(f[8]), promised = tonumber(f[9] or 0) or 0,
    last = f[10] }
end

local function encode(o)
  local s = table.concat({ int(o.day), int(o.month), int(o.in_nano), int(o.out_nano),
    int(o.input), int(o.reserved), int(o.metered), int(o.stream), int(o.promised or 0) }, ',')
  if o.last then s = s .. ',' .. o.last end
  return s
end

-- The allowance rule (allowance.rs `share`): half the free headroom split among the open
-- requests, within the batch bounds, at least `needed`, never more than `free`.
local function share(free, open, needed, batch_min, batch_max)
  if free < needed then return free end
  local split = math.floor(free / (2 * math.max(open, 1)))
  return math.min(math.max(math.min(math.max(split, batch_min), batch_max), needed), free)
end

local function num(v)
  return tonumber(v or 0) or 0
end

-- Charges usage to the day and month of admission and to the lifetime totals.
local function charge(o, input, output, cut)
  local c = cost(input, output, o.in_nano, o.out_nano)
  local dk = P .. 'day:' .. int(o.day)
  redis.call('HINCRBY', dk, 'tokens', int(input + output))
  redis.call('HINCRBY', dk, 'spend', int(c))
  redis.call('PEXPIREAT', dk, int((o.day + 2) * DAY_MS))
  local mk = P .. 'month:' .. int(o.month)
  redis.call('HINCRBY', mk, 'spend', int(c))
  redis.call('PEXPIRE', mk, int(34 * DAY_MS))
  local lk = P .. 'life'
  redis.call('HINCRBY', lk, 'input', int(input))
  redis.call('HINCRBY', lk, 'output', int(output))
  if cut == 1 then redis.call('HINCRBY', lk, 'cut', 1) end
  redis.call('PEXPIRE', lk, int(400 * DAY_MS))
  return c
end

local function mark_done(rid)
  redis.call('SET', P .. 'done:' .. rid, '1', 'PX', int(2 * DAY_MS))
end

-- Frees slots whose lease ended (their replica died): what was metered is charged.
local function expire_leases(now)
  local lk = P .. 'leases'
  local gone = redis.call('ZRANGEBYSCORE', lk, '-inf', int(now))
  for _, rid in ipairs(gone) do
    local s = redis.call('HGET', P .. 'open', rid)
    if s then
      local o = decode(s)
      charge(o, o.input, o.metered, 1)
      redis.call('HDEL', P .. 'open', rid)
      -- Remember what was charged: a settlement arriving later (a replica that was only cut
      -- off, its settlement journaled) adds what it used beyond this, once.
      redis.call('SET', P .. 'done:' .. rid, 'lease,' .. int(o.input) .. ',' .. int(o.metered),
        'PX', int(2 * DAY_MS))
    end
    redis.call('ZREM', lk, rid)
  end
  return #gone
end

-- The running figures: settled usage of today / this month plus open requests
-- (tokens as reserved, spend as metered so far).
local function running(now)
  local day = math.floor(now / DAY_MS)
  local month = month_of(day)
  local dk = P .. 'day:' .. int(day)
  local r = {
    day = day, month = month,
    requests_today = num(redis.call('HGET', dk, 'requests')),
    tokens = num(redis.call('HGET', dk, 'tokens')),
    spend_today = num(redis.call('HGET', dk, 'spend')),
    spend_month = num(redis.call('HGET', P .. 'month:' .. int(month), 'spend')),
    open = 0, streams = 0, open_input = 0, open_output = 0,
    -- allowances outstanding, as spend (see Book::grant_allowance)
    promised_today = 0, promised_month = 0,
  }
  local open = redis.call('HGETALL', P .. 'open')
  for i = 2, #open, 2 do
    local o = decode(open[i])
    local c = cost(o.input, o.metered, o.in_nano, o.out_nano)
    r.open = r.open + 1
    r.streams = r.streams + o.stream
    r.open_input = r.open_input + o.input
    r.open_output = r.open_output + o.metered
    local promised = cost(0, o.promised, o.in_nano, o.out_nano)
    if o.day == day then
      r.tokens = r.tokens + o.reserved
      r.spend_today = r.spend_today + c
      r.promised_today = r.promised_today + promised
    end
    if o.month == month then
      r.spend_month = r.spend_month + c
      r.promised_month = r.promised_month + promised
    end
  end
  return r
end

-- Whether the operator's settings for the user (block, overrides: the hash P .. 'admin', field
-- v counts changes) are newer than `known`, the version the caller computed its limits with.
local function admin_changed(known)
  return num(redis.call('HGET', P .. 'admin', 'v')) ~= num(known)
end
