-- Settle: replace a request's reservation with what it used, exactly once per request id
-- (a replayed or repeated settlement changes nothing).
-- ARGV: rid, input, output, cut, local, day, month, in_nano, out_nano, admitted_ms
-- `local` = 1: admitted by a replica while Redis was away; its request is counted now.
-- Returns {applied, cost}.
local rid = ARGV[1]
local done = P .. 'done:' .. rid
local input, output, cut = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local marker = redis.call('GET', done)
if marker then
  -- Settled already, or its lease ended and what it had metered was charged then: charge
  -- only what this settlement adds beyond that (and count no second cut).
  local charged_input, charged_output = string.match(marker, '^lease,(%d+),(%d+)$')
  if not charged_input then return { 0, 0 } end
  local o = { day = tonumber(ARGV[6]), month = tonumber(ARGV[7]), in_nano = tonumber(ARGV[8]),
    out_nano = tonumber(ARGV[9]) }
  -- The input estimate charged then may exceed the real input: the difference may be negative.
  local c = charge(o, input - tonumber(charged_input),
    math.max(0, output - tonumber(charged_output)), 0)
  -- The expiry counted the request as cut; it finished after all.
  if cut == 0 then redis.call('HINCRBY', P .. 'life', 'cut', -1) end
  mark_done(rid)
  return { 1, c }
end
local o
local s = redis.call('HGET', P .. 'open', rid)
if s then
  o = decode(s)
  redis.call('HDEL', P .. 'open', rid)
  redis.call('ZREM', P .. 'leases', rid)
else
  o = { day = tonumber(ARGV[6]), month = tonumber(ARGV[7]), in_nano = tonumber(ARGV[8]),
    out_nano = tonumber(ARGV[9]) }
  if tonumber(ARGV[5]) == 1 then
    local dk = P .. 'day:' .. int(o.day)
    redis.call('HINCRBY', dk, 'requests', 1)
    redis.call('PEXPIREAT', dk, int((o.day + 2) * DAY_MS))
    redis.call('HINCRBY', P .. 'life', 'requests', 1)
    local admitted = tonumber(ARGV[10])
    local now = now_ms()
    if admitted > now - MINUTE_MS then
      redis.call('ZADD', P .. 'minute', int(admitted), rid)
      redis.call('PEXPIRE', P .. 'minute', int(MINUTE_MS + 1000))
    end
  end
end
local c = charge(o, input, output, cut)
mark_done(rid)
return { 1, c }
