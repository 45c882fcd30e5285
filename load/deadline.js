// Long streams against the gateway's deadline (k6 v1).
//
// Run against a gateway with a short `limits.deadline_secs` (DEADLINE_SECS; load/run.sh sets
// TOLLGATE__LIMITS__DEADLINE_SECS=3). VUS users loop for DURATION over two kinds of request:
//
//   slow_stream  (default) the mock streams STREAM_TOKENS tokens at MOCK_TPS, far longer than the
//                deadline. The stream must end with content, then exactly one `deadline_exceeded`
//                error event as its last event, then `[DONE]`; no content after the error, no
//                finish_reason, between 1 and (DEADLINE_SECS + 1) × MOCK_TPS content tokens.
//   slow_start   (SLOW_START_PCT % of requests) the mock waits DEADLINE_SECS + 2 s before its first
//                token: the gateway must answer `504 upstream_timeout` (a plain HTTP error, since
//                nothing was streamed yet).
//
// Every request, of either kind, must end between DEADLINE_SECS − 0.5 s and DEADLINE_SECS + 1 s
// after it was sent (thresholds on http_req_duration, whose end is the last byte here).
//
// Environment:
//   BASE_URL, TOKENS, VUS (10), DURATION (30s)   as in stream_chat.js
//   DEADLINE_SECS    the gateway's limits.deadline_secs                  (3)
//   MOCK_TPS         mock pace, tokens/second                            (10)
//   STREAM_TOKENS    tokens the mock would send                          (200: 20 s at 10/s)
//   SLOW_START_PCT   % of requests whose first token comes after the deadline (20)
//   THINK_MS         pause between a VU's requests                       (100)

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import {
  TOKENS, BASE_URL, env, int, num, analyse, chatBody, cutChecks, errorCode, headers, logFailure,
  requireTokens,
} from './lib/common.js';

const VUS = int('VUS', 10);
const DURATION = env('DURATION', '30s');
const DEADLINE_SECS = int('DEADLINE_SECS', 3);
const MOCK_TPS = num('MOCK_TPS', 10);
const STREAM_TOKENS = int('STREAM_TOKENS', 200);
const SLOW_START_PCT = int('SLOW_START_PCT', 20);
const THINK_MS = int('THINK_MS', 100);

if (!(MOCK_TPS > 0 && STREAM_TOKENS / MOCK_TPS > DEADLINE_SECS + 2)) {
  throw new Error('STREAM_TOKENS / MOCK_TPS must exceed DEADLINE_SECS + 2 (the stream must outlive the deadline)');
}
if (SLOW_START_PCT > 100) throw new Error('SLOW_START_PCT must be at most 100');
requireTokens(VUS);

const LOW_MS = (DEADLINE_SECS - 0.5) * 1000;
const HIGH_MS = (DEADLINE_SECS + 1) * 1000;
const MAX_CONTENT = Math.ceil((DEADLINE_SECS + 1) * MOCK_TPS);

const deadlineCuts = new Counter('deadline_cuts'); // streams cut with deadline_exceeded, well formed
const slowStartTimeouts = new Counter('deadline_slow_start_504s');
const unexpected = new Counter('deadline_unexpected');
const contentTokens = new Trend('deadline_stream_content_tokens');

const KINDS = ['slow_stream'];
if (SLOW_START_PCT > 0) KINDS.push('slow_start');

const thresholds = {
  checks: ['rate==1'],
  deadline_unexpected: ['count==0'],
  deadline_cuts: ['count>0'],
  http_req_failed: ['rate==0'],
  http_req_duration: [`max<${HIGH_MS}`, `min>${LOW_MS}`],
};
for (const kind of KINDS) {
  thresholds[`checks{kind:${kind}}`] = ['rate==1'];
  thresholds[`http_req_duration{kind:${kind}}`] = [`max<${HIGH_MS}`];
}

// The slow starts are expected to be 504s.
http.setResponseCallback(http.expectedStatuses(200, 504));

export const options = {
  scenarios: {
    deadline: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: `${DEADLINE_SECS + 30}s` },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

function pickKind() {
  const x = Math.imul(__VU + 1, 2654435761) ^ Math.imul(__ITER + 1, 40503);
  return (x >>> 0) % 100 < SLOW_START_PCT ? 'slow_start' : 'slow_stream';
}

export default function () {
  const token = TOKENS[(__VU - 1) % TOKENS.length];
  const kind = pickKind();
  const knobs = kind === 'slow_start'
    ? { tokens: STREAM_TOKENS, tps: MOCK_TPS, delay_ms: (DEADLINE_SECS + 2) * 1000 }
    : { tokens: STREAM_TOKENS, tps: MOCK_TPS, delay_ms: 0 };
  const res = http.post(
    `${BASE_URL}/v1/chat/completions`,
    JSON.stringify(chatBody(knobs, { max_tokens: STREAM_TOKENS + 16 })),
    { headers: headers(token), timeout: `${DEADLINE_SECS + 30}s`, tags: { name: 'deadline', kind } },
  );
  const took = res.timings.duration;
  const inTime = {
    [`${kind}: ended within deadline − 0.5 s .. deadline + 1 s`]: () => took > LOW_MS && took < HIGH_MS,
  };
  let ok;
  if (kind === 'slow_stream') {
    const s = analyse(res.body);
    contentTokens.add(s.contentChunks);
    ok = check(res, Object.assign(cutChecks(res, s, 'deadline_exceeded'), inTime, {
      'slow_stream: 0 < content tokens <= (deadline + 1) × tps': () => s.contentChunks > 0 && s.contentChunks <= MAX_CONTENT,
    }), { kind });
    if (ok) deadlineCuts.add(1);
    else logFailure(`slow_stream: status=${res.status} took=${took}ms ${JSON.stringify(s)}`);
  } else {
    ok = check(res, Object.assign({
      'slow_start: status is 504': () => res.status === 504,
      'slow_start: error.code is upstream_timeout': () => errorCode(res) === 'upstream_timeout',
    }, inTime), { kind });
    if (ok) slowStartTimeouts.add(1);
    else logFailure(`slow_start: status=${res.status} took=${took}ms body=${JSON.stringify(String(res.body).slice(0, 200))}`);
  }
  if (!ok) unexpected.add(1, { kind });
  if (THINK_MS > 0) sleep(THINK_MS / 1000);
}
