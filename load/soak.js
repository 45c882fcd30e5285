// Bounded soak: a steady mix for DURATION (default 2 minutes) (k6 v1).
//
// VUS users (one token each) loop over a fixed mix:
//
//   normal      (the rest)        a whole stream of MOCK_TOKENS tokens: finish_reason stop,
//                                 exactly MOCK_TOKENS content chunks, one [DONE] at the end
//   capped      (CAPPED_PCT %)    max_tokens = CAP_TOKENS and a mock that ignores it: the gateway
//                                 cuts at the cap with finish_reason length, no content after it
//   disconnect  (DISCONNECT_PCT %) a long stream (DISCONNECT_STREAM_SECS) that k6 abandons after
//                                 DISCONNECT_AFTER_MS (request timeout): a client going away
//                                 mid-stream, which the gateway must notice and clean up
//
// and at the end (teardown) every user's `GET /v1/usage` must show no open stream or request
// left: abandoned streams must have freed their slots. The thresholds are on the rate of checks
// and on the error rate (requests whose outcome is not what their kind expects).
//
// Environment:
//   BASE_URL, TOKENS, VUS (20), DURATION (2m)   as in stream_chat.js
//   MOCK_TOKENS (40), MOCK_TPS (200), MOCK_DELAY_MS (50)   the normal stream
//   CAPPED_PCT (20), CAP_TOKENS (10)                       capped requests
//   DISCONNECT_PCT (10), DISCONNECT_AFTER_MS (300)         abandoned requests
//   DISCONNECT_STREAM_SECS (5)                             length of the abandoned streams
//   THINK_MS (100)           pause between a VU's requests
//   MIN_CHECK_RATE (1)       the checks threshold: rate >= this
//   MAX_ERROR_RATE (0)       the soak_errors threshold: rate <= this
//   P95_MS                   if set, p95 of the normal streams' duration must stay below it (ms)

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import {
  BASE_URL, TOKENS, env, int, num, analyse, chatBody, header, headers, logFailure, requireTokens,
} from './lib/common.js';

const VUS = int('VUS', 20);
const DURATION = env('DURATION', '2m');
const MOCK_TOKENS = int('MOCK_TOKENS', 40);
const MOCK_TPS = num('MOCK_TPS', 200);
const MOCK_DELAY_MS = int('MOCK_DELAY_MS', 50);
const CAPPED_PCT = int('CAPPED_PCT', 20);
const CAP_TOKENS = int('CAP_TOKENS', 10);
const DISCONNECT_PCT = int('DISCONNECT_PCT', 10);
const DISCONNECT_AFTER_MS = int('DISCONNECT_AFTER_MS', 300);
const DISCONNECT_STREAM_SECS = int('DISCONNECT_STREAM_SECS', 5);
const THINK_MS = int('THINK_MS', 100);
const MIN_CHECK_RATE = num('MIN_CHECK_RATE', 1);
const MAX_ERROR_RATE = num('MAX_ERROR_RATE', 0);
const P95_MS = env('P95_MS', '');

if (CAPPED_PCT + DISCONNECT_PCT > 100) throw new Error('CAPPED_PCT + DISCONNECT_PCT must be at most 100');
if (CAPPED_PCT > 0 && !(CAP_TOKENS > 0 && CAP_TOKENS < MOCK_TOKENS)) {
  throw new Error('CAP_TOKENS must be between 1 and MOCK_TOKENS - 1');
}
if (DISCONNECT_PCT > 0 && !(DISCONNECT_STREAM_SECS * 1000 > DISCONNECT_AFTER_MS + 1000)) {
  throw new Error('DISCONNECT_STREAM_SECS must outlast DISCONNECT_AFTER_MS by over a second');
}
requireTokens(VUS);

const KINDS = ['normal'];
if (CAPPED_PCT > 0) KINDS.push('capped');
if (DISCONNECT_PCT > 0) KINDS.push('disconnect');

const errors = new Rate('soak_errors'); // per request: its outcome is not what its kind expects
const contentChunks = new Counter('stream_content_chunks');
const leaked = new Counter('soak_open_after_end'); // open streams/requests left in /v1/usage at the end

const thresholds = {
  checks: [`rate>=${MIN_CHECK_RATE}`],
  soak_errors: [`rate<=${MAX_ERROR_RATE}`],
  soak_open_after_end: ['count==0'],
  'http_req_failed{kind:normal}': ['rate==0'],
  'http_reqs{kind:normal}': ['count>0'],
};
for (const kind of KINDS) thresholds[`checks{kind:${kind}}`] = [`rate>=${MIN_CHECK_RATE}`];
if (CAPPED_PCT > 0) thresholds['http_req_failed{kind:capped}'] = ['rate==0'];
if (P95_MS !== '') thresholds['http_req_duration{kind:normal}'] = [`p(95)<${Number(P95_MS)}`];

export const options = {
  scenarios: {
    soak: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '30s' },
  },
  thresholds,
  teardownTimeout: '60s',
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

function pickKind() {
  const x = Math.imul(__VU + 1, 2654435761) ^ Math.imul(__ITER + 1, 40503);
  const p = (x >>> 0) % 100;
  if (p < DISCONNECT_PCT) return 'disconnect';
  if (p < DISCONNECT_PCT + CAPPED_PCT) return 'capped';
  return 'normal';
}

export default function () {
  const token = TOKENS[(__VU - 1) % TOKENS.length];
  const kind = pickKind();
  let knobs = { tokens: MOCK_TOKENS, tps: MOCK_TPS, delay_ms: MOCK_DELAY_MS };
  let maxTokens = MOCK_TOKENS + 16;
  let timeout = '60s';
  if (kind === 'capped') {
    knobs.ignore_max_tokens = 'true';
    maxTokens = CAP_TOKENS;
  } else if (kind === 'disconnect') {
    const tps = 50;
    knobs = { tokens: DISCONNECT_STREAM_SECS * tps, tps, delay_ms: 0 };
    maxTokens = knobs.tokens + 16;
    timeout = `${DISCONNECT_AFTER_MS}ms`;
  }
  const res = http.post(
    `${BASE_URL}/v1/chat/completions`,
    JSON.stringify(chatBody(knobs, { max_tokens: maxTokens })),
    {
      headers: headers(token, { 'X-Session-Id': `k6-soak-vu-${__VU}` }),
      timeout,
      tags: { name: 'soak', kind },
    },
  );

  let checks;
  if (kind === 'disconnect') {
    checks = {
      'disconnect: k6 gave up at its timeout (no answer completed)': () => res.error_code === 1050,
      'disconnect: within timeout + 1 s': () => res.timings.duration < DISCONNECT_AFTER_MS + 1000,
    };
  } else {
    const s = analyse(res.body);
    contentChunks.add(s.contentChunks + s.contentAfterEnd, { kind });
    checks = {
      'status is 200': () => res.status === 200,
      'content-type is text/event-stream': () => String(header(res, 'content-type') || '').startsWith('text/event-stream'),
      'exactly one [DONE], at the end': () => s.endsWithDone && s.doneCount === 1 && s.eventsAfterDone === 0,
      'every data event is JSON': () => s.allJson,
      'no error event': () => s.errorCode === null,
      'no content after finish_reason': () => s.contentAfterEnd === 0,
    };
    if (kind === 'normal') {
      checks['normal: finish_reason stop, content chunks == mock tokens'] = () =>
        s.finishReason === 'stop' && s.contentChunks === MOCK_TOKENS;
    } else {
      checks['capped: finish_reason length, 0 < content chunks <= max_tokens'] = () =>
        s.finishReason === 'length' && s.contentChunks > 0 && s.contentChunks <= CAP_TOKENS;
    }
    if (!Object.values(checks).every((f) => f())) {
      logFailure(`${kind}: status=${res.status} error=${res.error || '-'} ${JSON.stringify(s)}`);
    }
  }
  const ok = check(res, checks, { kind });
  errors.add(!ok, { kind });
  if (THINK_MS > 0) sleep(THINK_MS / 1000);
}

// Every user's open streams and requests back to zero once the load stops: the abandoned streams
// freed their slots. The gateway notices a gone client when it next writes, so allow a few seconds.
export function teardown() {
  for (const token of TOKENS.slice(0, VUS)) {
    let usage = null;
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const res = http.get(`${BASE_URL}/v1/usage`, {
        headers: { Authorization: `Bearer ${token}` },
        tags: { name: 'usage', kind: 'teardown' },
      });
      try {
        usage = JSON.parse(res.body).usage;
      } catch (e) {
        usage = null;
      }
      if (usage && usage.open_streams === 0 && usage.open_requests === 0) break;
      sleep(0.5);
    }
    const clean = usage !== null && usage.open_streams === 0 && usage.open_requests === 0;
    check(usage, { 'end: no open stream or request left for the user': () => clean }, { kind: 'teardown' });
    if (!clean) {
      leaked.add(1);
      console.warn(`open after the soak: ${JSON.stringify(usage && { streams: usage.open_streams, requests: usage.open_requests })}`);
    }
  }
}
