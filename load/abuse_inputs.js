// Abuse: bad inputs and bad tokens (k6 v1).
//
// VUS virtual users loop for DURATION over a fixed list of abusive requests (each VU starts at a
// different place in the list). Every answer must have exactly the documented status and
// `error.code`, and come back quickly: all of these are refused before the upstream (or, for the
// long history, trimmed and answered by a short mock stream).
//
//   case                 request                                              expected
//   message_too_long     one user message of MAX_MESSAGE_CHARS + 1 characters 400 message_too_long
//   message_at_limit     one message of exactly MAX_MESSAGE_CHARS (2-byte chars) 200, whole stream
//   body_too_large       a body over MAX_BODY_BYTES (Content-Length)           413 payload_too_large
//   long_history         HISTORY_TURNS turns of HISTORY_CHARS chars (< body limit) 200, whole stream
//   forged_token         a token signed with another secret                    401 invalid_token
//   alg_none_token       an unsigned token (alg: none)                         401 invalid_token
//   too_long_lived_token a real signature, but exp 2 h after iat (> 1 h allowed) 401 invalid_token
//   garbage_token        `Bearer not-a-jwt`                                    401 invalid_token
//   expired_token        a real signature, exp an hour ago                     401 token_expired
//   missing_token        no Authorization header                               401 missing_token
//   not_bearer           `Authorization: Basic …`                              401 missing_token
//   invalid_json         a truncated JSON body                                 400 invalid_json
//   empty_messages       `messages: []`                                        400 invalid_messages
//
// The expired and too-long-lived tokens are signed here with HMAC-SHA256 (k6/crypto) under the
// gateway's secret, JWT_SECRET (load/run.sh passes the run's secret).
//
// Environment:
//   BASE_URL, TOKENS, VUS (10), DURATION (20s)   as in stream_chat.js
//   JWT_SECRET         the gateway's TOLLGATE_JWT_SECRET (required)
//   MAX_MESSAGE_CHARS  the gateway's limits.max_message_chars            (4000)
//   MAX_BODY_BYTES     the gateway's limits.max_body_bytes               (1048576)
//   HISTORY_TURNS      messages in the long history                      (300)
//   HISTORY_CHARS      characters per history message                    (2000)
//   THINK_MS           pause between a VU's requests                     (20)
//   P99_MS             p99 bound of every answer's duration (ms)         (500)

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import encoding from 'k6/encoding';
import {
  BASE_URL, TOKENS, env, int, analyse, chatBody, errorCode, header, headers, logFailure, nowSecs,
  requireTokens, signHs256,
} from './lib/common.js';

const VUS = int('VUS', 10);
const DURATION = env('DURATION', '20s');
const JWT_SECRET = env('JWT_SECRET', '');
const MAX_MESSAGE_CHARS = int('MAX_MESSAGE_CHARS', 4000);
const MAX_BODY_BYTES = int('MAX_BODY_BYTES', 1048576);
const HISTORY_TURNS = int('HISTORY_TURNS', 300);
const HISTORY_CHARS = int('HISTORY_CHARS', 2000);
const THINK_MS = int('THINK_MS', 20);
const P99_MS = int('P99_MS', 500);

if (JWT_SECRET === '') throw new Error('JWT_SECRET is required (the gateway\'s TOLLGATE_JWT_SECRET)');
requireTokens(VUS);

// Built once per VU at init: big strings are not rebuilt per request.
const MOCK = { tokens: 5, tps: 0, delay_ms: 0 };
const words = (n) => 'load test words '.repeat(Math.ceil(n / 16)).slice(0, n);
const TOO_LONG = JSON.stringify(chatBody(MOCK, { messages: [{ role: 'user', content: words(MAX_MESSAGE_CHARS + 1) }] }));
// 'é' is one character and two bytes in UTF-8: the limit counts characters, not bytes.
const AT_LIMIT = JSON.stringify(chatBody(MOCK, { messages: [{ role: 'user', content: 'é'.repeat(MAX_MESSAGE_CHARS) }] }));
// Many messages of at most MAX_MESSAGE_CHARS, adding up to more than the body limit.
const BIG_BODY = (() => {
  const per = Math.min(MAX_MESSAGE_CHARS, 4000);
  const count = Math.ceil((MAX_BODY_BYTES + 4096) / (per + 40));
  const messages = [];
  for (let i = 0; i < count; i += 1) messages.push({ role: i % 2 ? 'assistant' : 'user', content: words(per) });
  messages.push({ role: 'user', content: 'end' });
  return JSON.stringify(chatBody(MOCK, { messages }));
})();
const LONG_HISTORY = (() => {
  const messages = [{ role: 'system', content: 'You are a load-test assistant.' }];
  for (let i = 0; i < HISTORY_TURNS; i += 1) {
    messages.push({ role: i % 2 ? 'assistant' : 'user', content: words(HISTORY_CHARS) });
  }
  messages.push({ role: 'user', content: 'And the last question.' });
  return JSON.stringify(chatBody(MOCK, { messages, max_tokens: 64 }));
})();
if (BIG_BODY.length <= MAX_BODY_BYTES) throw new Error('internal: the big body is not big enough');
if (LONG_HISTORY.length >= MAX_BODY_BYTES) {
  throw new Error('HISTORY_TURNS × HISTORY_CHARS must stay under MAX_BODY_BYTES (the history is meant to be accepted)');
}
const SMALL = JSON.stringify(chatBody(MOCK));

// Tokens for the token cases. The forged one names a real user and plan, with another key.
const SUB = 'load-abuse-user';
const claims = (extra) => Object.assign({ sub: SUB, plan: 'pro', iat: nowSecs(), exp: nowSecs() + 600 }, extra || {});
const encodeB64 = (text) => encoding.b64encode(text, 'rawurl');

function requestOf(kase, token) {
  const post = (body, auth, extraHeaders) => ({
    body,
    params: { headers: headers(auth === undefined ? token : auth, extraHeaders) },
  });
  switch (kase) {
    case 'message_too_long': return post(TOO_LONG);
    case 'message_at_limit': return post(AT_LIMIT);
    case 'body_too_large': return post(BIG_BODY);
    case 'long_history': return post(LONG_HISTORY);
    case 'forged_token': return post(SMALL, signHs256(claims(), `${JWT_SECRET}-not`));
    case 'alg_none_token': {
      const unsigned = `${encodeB64(JSON.stringify({ typ: 'JWT', alg: 'none' }))}.${encodeB64(JSON.stringify(claims()))}.`;
      return post(SMALL, unsigned);
    }
    case 'too_long_lived_token':
      return post(SMALL, signHs256(claims({ exp: nowSecs() + 7200 }), JWT_SECRET));
    case 'garbage_token': return post(SMALL, 'not-a-jwt');
    case 'expired_token':
      return post(SMALL, signHs256(claims({ iat: nowSecs() - 4000, exp: nowSecs() - 3600 }), JWT_SECRET));
    case 'missing_token': return post(SMALL, null);
    case 'not_bearer':
      return post(SMALL, null, { Authorization: `Basic ${encodeB64('user:password')}` });
    case 'invalid_json': return post(SMALL.slice(0, SMALL.length - 5));
    case 'empty_messages': return post(JSON.stringify({ model: 'mock-gpt', stream: true, messages: [] }));
    default: throw new Error(`unknown case ${kase}`);
  }
}

// case → [status, error.code] (null code: a whole, successful stream).
const EXPECTED = {
  message_too_long: [400, 'message_too_long'],
  message_at_limit: [200, null],
  body_too_large: [413, 'payload_too_large'],
  long_history: [200, null],
  forged_token: [401, 'invalid_token'],
  alg_none_token: [401, 'invalid_token'],
  too_long_lived_token: [401, 'invalid_token'],
  garbage_token: [401, 'invalid_token'],
  expired_token: [401, 'token_expired'],
  missing_token: [401, 'missing_token'],
  not_bearer: [401, 'missing_token'],
  invalid_json: [400, 'invalid_json'],
  empty_messages: [400, 'invalid_messages'],
};
const CASES = Object.keys(EXPECTED);

const answers = new Counter('abuse_answers'); // tagged case and outcome (expected / unexpected)
const unexpected = new Counter('abuse_unexpected'); // answers with the wrong status, code or body

const thresholds = {
  checks: ['rate==1'],
  abuse_unexpected: ['count==0'],
  // Only real failures (statuses outside the expected set, connection errors, timeouts).
  http_req_failed: ['rate==0'],
  http_req_duration: [`p(99)<${P99_MS}`],
  http_reqs: [`count>=${CASES.length}`],
};
for (const kase of CASES) {
  thresholds[`checks{case:${kase}}`] = ['rate==1'];
  thresholds[`http_req_duration{case:${kase}}`] = [`p(99)<${P99_MS}`];
}

http.setResponseCallback(http.expectedStatuses(200, 400, 401, 413));

export const options = {
  scenarios: {
    abuse_inputs: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '30s' },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  // Every case at least once, whatever VUS and DURATION: the per-case thresholds need data.
  const token = TOKENS[0];
  for (const kase of CASES) run(kase, token);
}

function run(kase, token) {
  const req = requestOf(kase, token);
  req.params.timeout = '30s';
  req.params.tags = { name: 'abuse', case: kase };
  const res = http.post(`${BASE_URL}/v1/chat/completions`, req.body, req.params);
  const [status, code] = EXPECTED[kase];
  const got = errorCode(res);
  let ok;
  if (code === null) {
    const s = analyse(res.body);
    ok = check(res, {
      [`${kase}: status is ${status}`]: () => res.status === status,
      [`${kase}: whole stream (finish_reason stop, [DONE], no error)`]: () =>
        s.finishReason === 'stop' && s.errorCode === null && s.endsWithDone && s.doneCount === 1 &&
        s.contentChunks === MOCK.tokens,
    }, { case: kase });
  } else {
    ok = check(res, {
      [`${kase}: status is ${status}`]: () => res.status === status,
      [`${kase}: error.code is ${code}`]: () => got === code,
      [`${kase}: has x-request-id`]: () => Boolean(header(res, 'x-request-id')),
    }, { case: kase });
  }
  answers.add(1, { case: kase, outcome: ok ? 'expected' : 'unexpected' });
  if (!ok) {
    unexpected.add(1, { case: kase });
    logFailure(
      `${kase}: status=${res.status} error=${res.error || '-'} code=${got} (want ${status} ${code}) ` +
        `body=${JSON.stringify(String(res.body || '').slice(0, 200))}`,
      10,
    );
  }
}

export default function () {
  const kase = CASES[(__ITER + (__VU - 1) * 5) % CASES.length];
  run(kase, TOKENS[(__VU - 1) % TOKENS.length]);
  if (THINK_MS > 0) sleep(THINK_MS / 1000);
}
