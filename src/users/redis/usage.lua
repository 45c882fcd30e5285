-- Usage: the user's windows and totals for /v1/usage (frees expired leases first).
-- Returns {minute_used, minute_oldest_ms, requests_today, tokens_running, spend_today,
--          spend_month, requests, input, output, cut, open, open_streams, open_input,
--          open_output, now}
local now = now_ms()
expire_leases(now)
local mk = P .. 'minute'
redis.call('ZREMRANGEBYSCORE', mk, '-inf', int(now - MINUTE_MS))
local oldest = redis.call('ZRANGE', mk, 0, 0, 'WITHSCORES')
local r = running(now)
local lk = P .. 'life'
return { redis.call('ZCARD', mk), oldest[2] and tonumber(oldest[2]) or 0, r.requests_today,
  r.tokens, r.spend_today, r.spend_month, num(redis.call('HGET', lk, 'requests')),
  num(redis.call('HGET', lk, 'input')), num(redis.call('HGET', lk, 'output')),
  num(redis.call('HGET', lk, 'cut')), r.open, r.streams, r.open_input, r.open_output, now }
