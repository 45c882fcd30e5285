// Abuse: bursts over the per-minute limit (k6 v1).
//
// Every VU is its own user (one token each) and fires BURST requests at once (one http.batch, all
// in flight together) while the gateway's `rate.requests_per_minute` is RPM. Admission is one
// atomic step per user, so of each burst exactly RPM requests must be admitted (200) and every
// other one refused with `429 requests_per_minute`, a `Retry-After` of 1..60 s and
// `x-ratelimit-remaining-requests: 0`. The admitted ones must carry remaining counts RPM-1 .. 0,
// each exactly once. With WINDOWS > 1 the user waits WINDOW_GAP_S after its burst (the rolling
// minute has then emptied) and bursts again: again exactly RPM admitted.
//
// Counted per user with k6 Counters tagged `user`; the thresholds require, per user and in
// total, admitted == RPM × WINDOWS and refused == (BURST − RPM) × WINDOWS, and no other answer.
//
// Environment:
//   BASE_URL      gateway base URL                                      (http://127.0.0.1:18080)
//   TOKENS        comma-separated JWTs, one per VU, distinct users (required, at least VUS)
//   VUS           users                                                 (10)
//   RPM           the gateway's rate.requests_per_minute                (10)
//   BURST         requests per user per burst, > RPM                    (40)
//   WINDOWS       bursts per user                                       (1)
//   WINDOW_GAP_S  pause after a burst before the next one, > 60         (62)
//   P99_MS        p99 bound of every answer's duration (ms)             (1000)

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import {
  BASE_URL, TOKENS, int, chatBody, errorCode, header, headers, subOf, logFailure,
} from './lib/common.js';

const VUS = int('VUS', 10);
const RPM = int('RPM', 10);
const BURST = int('BURST', 40);
const WINDOWS = int('WINDOWS', 1);
const WINDOW_GAP_S = int('WINDOW_GAP_S', 62);
const P99_MS = int('P99_MS', 1000);

if (!(RPM >= 1 && BURST > RPM)) throw new Error('need RPM >= 1 and BURST > RPM');
if (WINDOWS < 1) throw new Error('WINDOWS must be at least 1');
if (WINDOWS > 1 && WINDOW_GAP_S <= 60) throw new Error('WINDOW_GAP_S must be over 60');
if (TOKENS.length < VUS) {
  throw new Error(`TOKENS must hold at least VUS (${VUS}) distinct users' tokens, got ${TOKENS.length}`);
}

// The users, known at init so that every user gets its own thresholds.
const USERS = TOKENS.slice(0, VUS).map(subOf);
if (new Set(USERS).size !== USERS.length) throw new Error('TOKENS must name distinct users (sub)');

const admitted = new Counter('burst_admitted'); // 200s, tagged user
const refused = new Counter('burst_refused'); // 429 requests_per_minute with the right headers, tagged user
const unexpected = new Counter('burst_unexpected'); // any other answer (status, code or headers wrong)
const exactWindows = new Rate('burst_window_exact'); // per user per window: admitted == RPM

const thresholds = {
  checks: ['rate==1'],
  burst_admitted: [`count==${VUS * RPM * WINDOWS}`],
  burst_refused: [`count==${VUS * (BURST - RPM) * WINDOWS}`],
  burst_unexpected: ['count==0'],
  burst_window_exact: ['rate==1'],
  http_req_failed: ['rate==0'],
  http_reqs: [`count==${VUS * BURST * WINDOWS}`],
  http_req_duration: [`p(99)<${P99_MS}`],
};
for (const user of USERS) {
  thresholds[`burst_admitted{user:${user}}`] = [`count==${RPM * WINDOWS}`];
  thresholds[`burst_refused{user:${user}}`] = [`count==${(BURST - RPM) * WINDOWS}`];
}

// 200 and 429 are the answers this test expects: http_req_failed then counts only real failures
// (other statuses, connection errors, timeouts).
http.setResponseCallback(http.expectedStatuses(200, 429));

export const options = {
  scenarios: {
    abuse_burst: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: WINDOWS,
      maxDuration: `${WINDOWS * (WINDOW_GAP_S + 30) + 60}s`,
    },
  },
  // The whole burst in flight at once.
  batch: BURST,
  batchPerHost: BURST,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const token = TOKENS[__VU - 1];
  const user = USERS[__VU - 1];
  const window = String(__ITER + 1);
  if (__ITER > 0) sleep(WINDOW_GAP_S);
  // Zero samples, so that every per-user threshold has data even for a user with no 200 at all.
  admitted.add(0, { user });
  refused.add(0, { user });

  const body = JSON.stringify(chatBody({ tokens: 2, tps: 0, delay_ms: 0 }, { stream: false, max_tokens: 16 }));
  const requests = [];
  for (let i = 0; i < BURST; i += 1) {
    requests.push({
      method: 'POST',
      url: `${BASE_URL}/v1/chat/completions`,
      body,
      params: { headers: headers(token), timeout: '30s', tags: { name: 'burst', user, window } },
    });
  }
  const responses = http.batch(requests);

  let ok = 0;
  const remainingSeen = [];
  for (const res of responses) {
    const remaining = header(res, 'x-ratelimit-remaining-requests');
    const limit = header(res, 'x-ratelimit-limit-requests');
    if (res.status === 200) {
      ok += 1;
      remainingSeen.push(Number(remaining));
      const good = check(res, {
        '200: x-ratelimit-limit-requests == RPM': () => Number(limit) === RPM,
        '200: x-ratelimit-remaining-requests in 0..RPM-1': () =>
          /^\d+$/.test(String(remaining)) && Number(remaining) < RPM,
      });
      if (good) admitted.add(1, { user, window });
      else {
        unexpected.add(1, { user });
        logFailure(`200 with limit=${limit} remaining=${remaining}`);
      }
      continue;
    }
    const retryAfter = header(res, 'retry-after');
    const code = errorCode(res);
    const good = check(res, {
      'refusal: status is 429': () => res.status === 429,
      'refusal: error.code is requests_per_minute': () => code === 'requests_per_minute',
      'refusal: Retry-After is 1..60 s': () =>
        /^\d+$/.test(String(retryAfter)) && Number(retryAfter) >= 1 && Number(retryAfter) <= 60,
      'refusal: x-ratelimit-remaining-requests is 0': () => remaining === '0',
      'refusal: x-ratelimit-limit-requests == RPM': () => Number(limit) === RPM,
    });
    if (good) refused.add(1, { user, window });
    else {
      unexpected.add(1, { user });
      logFailure(
        `status=${res.status} error=${res.error || '-'} code=${code} retry-after=${retryAfter} ` +
          `remaining=${remaining} body=${JSON.stringify(String(res.body || '').slice(0, 200))}`,
      );
    }
  }

  // Every remaining count RPM-1 .. 0 handed out exactly once: no two admissions saw the same state.
  remainingSeen.sort((a, b) => a - b);
  const distinct = remainingSeen.length === RPM && remainingSeen.every((v, i) => v === i);
  check(null, {
    'window: admitted == RPM': () => ok === RPM,
    'window: remaining counts of the admitted are RPM-1..0, once each': () => distinct,
  });
  exactWindows.add(ok === RPM, { user });
  if (ok !== RPM || !distinct) {
    logFailure(`user ${user} window ${window}: ${ok} admitted (want ${RPM}), remaining seen ${remainingSeen}`);
  }
}
