// Steady streaming chat against tollgate (k6 v1).
//
// Every virtual user (VU) is its own user with its own JWT and loops: POST a `stream: true` chat
// completion, buffer the whole SSE body, check it, think briefly, repeat. The reply comes from the
// mock provider (embedded or `tollgate mock-provider`), steered per request by knobs in the model
// name (`mock-gpt:tokens=40,tps=200,delay_ms=50`), so the expected body is known exactly.
//
// k6 cannot run commands, so it cannot mint tokens: pass them in TOKENS (comma-separated, one per
// VU). `load/run.sh` starts a gateway, mints VUS tokens with `tollgate token` and runs this script.
//
// Environment (all optional except TOKENS):
//   BASE_URL         gateway base URL                           (http://127.0.0.1:18080)
//   TOKENS           comma-separated JWTs; VU n uses token n (wrapping if there are fewer)
//   VUS, DURATION    virtual users and test length              (20, 30s)
//   MOCK_TOKENS      content tokens the mock generates           (40)
//   MOCK_TPS         mock token pace, tokens/second; 0 = no pause (200)
//   MOCK_DELAY_MS    mock delay before the first chunk           (50)
//   CAPPED_PCT       % of requests whose max_tokens (CAP_TOKENS) is below MOCK_TOKENS and whose
//                    mock ignores max_tokens, so the gateway itself must cut the stream   (20)
//   CAP_TOKENS       max_tokens of those capped requests         (10)
//   FAULT_PCT        % of requests where the mock fails mid-stream (fault=error@FAULT_AFTER)
//                    and the gateway must end with an error event (0: off; see README)
//   FAULT_AFTER      content tokens the mock sends before the fault (5)
//   THINK_MS         pause between a VU's requests               (100)
//   REQUEST_TIMEOUT  per-request timeout                         (60s)
//   P95_MS           if set, also fail when p95 of http_req_duration exceeds it (ms)
//   MODEL            the mock model asked for (mock-gpt; mock-claude with PROVIDER=anthropic)

import http from 'k6/http';
import { check, sleep, fail } from 'k6';
import { Counter } from 'k6/metrics';

const env = (name, fallback) => (__ENV[name] === undefined || __ENV[name] === '' ? fallback : __ENV[name]);
const int = (name, fallback) => {
  const value = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isFinite(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(__ENV[name])}`);
  }
  return value;
};

const BASE_URL = env('BASE_URL', 'http://127.0.0.1:18080').replace(/\/+$/, '');
const TOKENS = env('TOKENS', '').split(',').map((t) => t.trim()).filter((t) => t.length > 0);
const VUS = int('VUS', 20);
const DURATION = env('DURATION', '30s');
const MOCK_TOKENS = int('MOCK_TOKENS', 40);
const MOCK_TPS = Number(env('MOCK_TPS', '200'));
const MOCK_DELAY_MS = int('MOCK_DELAY_MS', 50);
const CAPPED_PCT = int('CAPPED_PCT', 20);
const CAP_TOKENS = int('CAP_TOKENS', 10);
const FAULT_PCT = int('FAULT_PCT', 0);
const FAULT_AFTER = int('FAULT_AFTER', 5);
const THINK_MS = int('THINK_MS', 100);
const REQUEST_TIMEOUT = env('REQUEST_TIMEOUT', '60s');
const P95_MS = env('P95_MS', '');
const MODEL = env('MODEL', 'mock-gpt');

if (CAPPED_PCT + FAULT_PCT > 100) {
  throw new Error('CAPPED_PCT + FAULT_PCT must be at most 100');
}
if (CAPPED_PCT > 0 && !(CAP_TOKENS > 0 && CAP_TOKENS < MOCK_TOKENS)) {
  throw new Error('CAP_TOKENS must be between 1 and MOCK_TOKENS - 1 when CAPPED_PCT > 0');
}
if (FAULT_PCT > 0 && !(FAULT_AFTER < MOCK_TOKENS)) {
  throw new Error('FAULT_AFTER must be below MOCK_TOKENS when FAULT_PCT > 0');
}

// Which kinds of request the mix contains; every kind present gets its own checks threshold, so
// the summary shows each kind's pass rate on its own line.
const KINDS = ['normal'];
if (CAPPED_PCT > 0) KINDS.push('capped');
if (FAULT_PCT > 0) KINDS.push('fault');

const thresholds = {
  // Every check of every response passed: any malformed, truncated or over-long stream fails the run.
  checks: ['rate==1'],
  // No request failed at the HTTP level (status >= 400, connection error or timeout).
  http_req_failed: ['rate==0'],
  // The run actually sent traffic (a run that never got going must not pass vacuously).
  http_reqs: ['count>0'],
};
for (const kind of KINDS) {
  thresholds[`checks{kind:${kind}}`] = ['rate==1'];
}
if (P95_MS !== '') {
  thresholds.http_req_duration = [`p(95)<${Number(P95_MS)}`];
}

export const options = {
  scenarios: {
    steady_stream_chat: {
      executor: 'constant-vus',
      vus: VUS,
      duration: DURATION,
      gracefulStop: '30s',
    },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

// Content tokens received, over all streams (throughput of the relay).
const contentChunks = new Counter('stream_content_chunks');

export function setup() {
  if (TOKENS.length === 0) {
    fail('TOKENS is empty: pass comma-separated JWTs (load/run.sh mints them with `tollgate token`)');
  }
  if (TOKENS.length < VUS) {
    console.warn(`only ${TOKENS.length} tokens for ${VUS} VUs: some VUs share a user`);
  }
  // No health probe here on purpose: every HTTP request k6 makes lands in http_req_duration and
  // http_reqs, which should describe chat streams only. load/run.sh waits for /healthz first.
}

// A stable pseudo-random percentile per (VU, iteration): the mix is the same on every run.
function percentile() {
  const x = Math.imul(__VU + 1, 2654435761) ^ Math.imul(__ITER + 1, 40503);
  return ((x >>> 0) % 100);
}

function pickKind() {
  const p = percentile();
  if (p < FAULT_PCT) return 'fault';
  if (p < FAULT_PCT + CAPPED_PCT) return 'capped';
  return 'normal';
}

function requestFor(kind) {
  const knobs = [`tokens=${MOCK_TOKENS}`, `tps=${MOCK_TPS}`, `delay_ms=${MOCK_DELAY_MS}`];
  // Normal requests leave headroom so the cap is never what ends them.
  let maxTokens = MOCK_TOKENS + 16;
  if (kind === 'capped') {
    knobs.push('ignore_max_tokens=true');
    maxTokens = CAP_TOKENS;
  } else if (kind === 'fault') {
    knobs.push(`fault=error@${FAULT_AFTER}`);
  }
  return {
    model: `${MODEL}:${knobs.join(',')}`,
    stream: true,
    max_tokens: maxTokens,
    messages: [
      { role: 'system', content: 'You are a load-test assistant.' },
      { role: 'user', content: `Steady streaming chat, VU ${__VU} iteration ${__ITER}.` },
    ],
  };
}

// Parses an SSE body into its data payloads, in order. Comments and other fields are ignored.
function dataPayloads(body) {
  const payloads = [];
  for (const event of body.split(/\r?\n\r?\n/)) {
    const lines = event.split(/\r?\n/).filter((l) => l.startsWith('data:'));
    if (lines.length > 0) {
      payloads.push(lines.map((l) => l.slice(5).replace(/^ /, '')).join('\n'));
    }
  }
  return payloads;
}

function contentOf(chunk) {
  const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
  return choices
    .map((c) => (c && c.delta && typeof c.delta.content === 'string' ? c.delta.content : ''))
    .join('');
}

function finishReasonOf(chunk) {
  const choices = Array.isArray(chunk.choices) ? chunk.choices : [];
  const reasons = choices.map((c) => c && c.finish_reason).filter((r) => r);
  return reasons.length > 0 ? reasons[0] : null;
}

// Everything the checks need, from one buffered body.
function analyse(body) {
  const payloads = dataPayloads(body || '');
  const result = {
    endsWithDone: /(^|\n)data: ?\[DONE\]\s*$/.test(body || ''),
    doneCount: 0,
    allJson: true,
    contentChunks: 0, // chunks carrying non-empty content before the terminal event
    contentAfterEnd: 0, // chunks carrying content after an error event or a finish_reason
    eventsAfterDone: 0,
    finishReason: null,
    errorCode: null,
  };
  let ended = false;
  for (const payload of payloads) {
    if (payload === '[DONE]') {
      result.doneCount += 1;
      continue;
    }
    if (result.doneCount > 0) result.eventsAfterDone += 1;
    let chunk;
    try {
      chunk = JSON.parse(payload);
    } catch (e) {
      result.allJson = false;
      continue;
    }
    if (chunk && chunk.error) {
      if (result.errorCode === null) result.errorCode = chunk.error.code || 'unknown';
      ended = true;
      continue;
    }
    if (contentOf(chunk).length > 0) {
      if (ended) result.contentAfterEnd += 1;
      else result.contentChunks += 1;
    }
    const reason = finishReasonOf(chunk);
    if (reason && result.finishReason === null) {
      result.finishReason = reason;
      ended = true;
    }
  }
  return result;
}

let failuresLogged = 0;

export default function () {
  const token = TOKENS[(__VU - 1) % TOKENS.length];
  const kind = pickKind();
  const request = requestFor(kind);
  const res = http.post(`${BASE_URL}/v1/chat/completions`, JSON.stringify(request), {
    headers: {
      Authorization: `Bearer ${token}`,
      'Content-Type': 'application/json',
      Accept: 'text/event-stream',
      'X-Session-Id': `k6-vu-${__VU}`,
    },
    timeout: REQUEST_TIMEOUT,
    tags: { name: 'chat_stream', kind },
  });

  const s = analyse(res.body);
  contentChunks.add(s.contentChunks + s.contentAfterEnd, { kind });

  const checks = {
    'status is 200': () => res.status === 200,
    'content-type is text/event-stream': () =>
      String(res.headers['Content-Type'] || '').startsWith('text/event-stream'),
    'body ends with data: [DONE]': () => s.endsWithDone,
    'exactly one [DONE], nothing after it': () => s.doneCount === 1 && s.eventsAfterDone === 0,
    'every data event is JSON': () => s.allJson,
    'no content after an error or finish_reason': () => s.contentAfterEnd === 0,
  };
  if (kind === 'normal') {
    checks['normal: no error event'] = () => s.errorCode === null;
    checks['normal: finish_reason is stop'] = () => s.finishReason === 'stop';
    checks['normal: content chunks == mock tokens'] = () => s.contentChunks === MOCK_TOKENS;
  } else if (kind === 'capped') {
    checks['capped: no error event'] = () => s.errorCode === null;
    checks['capped: finish_reason is length'] = () => s.finishReason === 'length';
    checks['capped: 0 < content chunks <= max_tokens'] = () =>
      s.contentChunks > 0 && s.contentChunks <= CAP_TOKENS;
  } else {
    checks['fault: ends with an error event'] = () => s.errorCode !== null && s.finishReason === null;
    checks['fault: content chunks <= fault point'] = () => s.contentChunks <= FAULT_AFTER;
  }

  const ok = check(res, checks, { kind });
  if (!ok && failuresLogged < 3) {
    failuresLogged += 1;
    const tail = String(res.body || '').slice(-400);
    console.warn(
      `VU ${__VU} iter ${__ITER} ${kind}: status=${res.status} error=${res.error || '-'} ` +
        `content=${s.contentChunks} after_end=${s.contentAfterEnd} finish=${s.finishReason} ` +
        `error_code=${s.errorCode} done=${s.doneCount} body_tail=${JSON.stringify(tail)}`,
    );
  }

  if (THINK_MS > 0) sleep(THINK_MS / 1000);
}
