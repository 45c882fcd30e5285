// Config reloads under steady streaming load (k6 v1): stream_chat.js's streams, while one more
// scenario asks the gateway to reload its config (POST /admin/v1/reload) every RELOAD_EVERY_MS.
// load/run.sh (script `reload`) starts the gateway with a config file whose mock-gpt price it
// flips every second, so most reloads really change something. Passes only when every stream
// passes stream_chat's checks (none cut by a reload) and every reload answers 200 with a newer
// generation.
//
// Environment: stream_chat.js's, plus
//   ADMIN_KEY        the admin bearer key (load/run.sh makes one per run)
//   RELOAD_EVERY_MS  pause between reloads                     (500)

import http from 'k6/http';
import { check, sleep, fail } from 'k6';
import { Counter } from 'k6/metrics';
import streamOne, { setup as streamSetup } from './stream_chat.js';

const env = (name, fallback) => (__ENV[name] === undefined || __ENV[name] === '' ? fallback : __ENV[name]);
const BASE_URL = env('BASE_URL', 'http://127.0.0.1:18080').replace(/\/+$/, '');
const ADMIN_KEY = env('ADMIN_KEY', '');
const VUS = Number.parseInt(env('VUS', '20'), 10);
const DURATION = env('DURATION', '30s');
const RELOAD_EVERY_MS = Number.parseInt(env('RELOAD_EVERY_MS', '500'), 10);

const reloadsApplied = new Counter('reloads_applied');

export const options = {
  scenarios: {
    streams: { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '30s', exec: 'streams' },
    reloads: { executor: 'constant-vus', vus: 1, duration: DURATION, gracefulStop: '5s', exec: 'reloads' },
  },
  thresholds: {
    // Every stream check and every reload check passed.
    checks: ['rate==1'],
    'checks{scenario:streams}': ['rate==1'],
    'checks{scenario:reloads}': ['rate==1'],
    http_req_failed: ['rate==0'],
    // The run really reloaded under load.
    reloads_applied: ['count>=10'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  if (ADMIN_KEY === '') fail('ADMIN_KEY is empty (load/run.sh reload sets it)');
  return streamSetup();
}

export function streams() {
  streamOne();
}

let lastGeneration = 0;

export function reloads() {
  const res = http.post(`${BASE_URL}/admin/v1/reload`, null, {
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
    tags: { name: 'reload' },
  });
  let body = {};
  try {
    body = JSON.parse(res.body);
  } catch (e) {
    body = {};
  }
  const ok = check(res, {
    'reload: 200': (r) => r.status === 200,
    'reload: a newer generation': () => typeof body.generation === 'number' && body.generation > lastGeneration,
    'reload: nothing needs a restart': () => Array.isArray(body.need_restart) && body.need_restart.length === 0,
  });
  if (ok) {
    lastGeneration = body.generation;
    reloadsApplied.add(1);
  } else {
    console.warn(`reload failed: status=${res.status} body=${String(res.body).slice(0, 300)}`);
  }
  sleep(RELOAD_EVERY_MS / 1000);
}
