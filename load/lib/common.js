// Shared helpers of the k6 scripts in load/ (k6 v1): environment parsing, request building, SSE
// body analysis and HS256 signing. stream_chat.js predates this file and keeps its own copies.

import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

export const env = (name, fallback) =>
  __ENV[name] === undefined || __ENV[name] === '' ? fallback : __ENV[name];

export const int = (name, fallback) => {
  const value = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isFinite(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(__ENV[name])}`);
  }
  return value;
};

export const num = (name, fallback) => {
  const value = Number(env(name, String(fallback)));
  if (!Number.isFinite(value) || value < 0) {
    throw new Error(`${name} must be a non-negative number, got ${JSON.stringify(__ENV[name])}`);
  }
  return value;
};

export const BASE_URL = env('BASE_URL', 'http://127.0.0.1:18080').replace(/\/+$/, '');
export const TOKENS = env('TOKENS', '')
  .split(',')
  .map((t) => t.trim())
  .filter((t) => t.length > 0);

/** The token of the current VU (VU n uses the n-th, wrapping). */
export function tokenOfVu() {
  return TOKENS[(__VU - 1) % TOKENS.length];
}

/** The `sub` claim of a JWT (no verification: only to name the user in tags and logs). */
export function subOf(token) {
  try {
    const payload = token.split('.')[1];
    return JSON.parse(encoding.b64decode(payload, 'rawurl', 's')).sub || '?';
  } catch (e) {
    return '?';
  }
}

export function requireTokens(count) {
  if (TOKENS.length === 0) {
    throw new Error('TOKENS is empty: pass comma-separated JWTs (load/run.sh mints them with `tollgate token`)');
  }
  if (count !== undefined && TOKENS.length < count) {
    console.warn(`only ${TOKENS.length} tokens for ${count} VUs: some VUs share a user`);
  }
}

export function headers(token, extra) {
  const h = { 'Content-Type': 'application/json', Accept: 'text/event-stream' };
  if (token !== null && token !== undefined) h.Authorization = `Bearer ${token}`;
  return Object.assign(h, extra || {});
}

/** The mock model the scripts ask for: `mock-gpt`, or `mock-claude` (MODEL) when the gateway
 * serves it through an Anthropic-format provider (`PROVIDER=anthropic load/run.sh`). */
export const MODEL = __ENV.MODEL || 'mock-gpt';

/** A chat request to the mock, with knobs in the model name. */
export function chatBody(knobs, opts) {
  const o = opts || {};
  const knobText = Object.entries(knobs)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  const body = {
    model: knobText ? `${MODEL}:${knobText}` : MODEL,
    stream: o.stream !== false,
    messages: o.messages || [{ role: 'user', content: 'Load test: say something.' }],
  };
  if (o.max_tokens !== undefined) body.max_tokens = o.max_tokens;
  return body;
}

/** The `error.code` of a JSON error answer, or null. */
export function errorCode(res) {
  try {
    const parsed = JSON.parse(res.body);
    return parsed && parsed.error ? parsed.error.code || null : null;
  } catch (e) {
    return null;
  }
}

export function header(res, name) {
  // k6 canonicalises header names (X-Ratelimit-Remaining-Requests); look them up case-insensitively.
  const wanted = name.toLowerCase();
  for (const [k, v] of Object.entries(res.headers || {})) {
    if (k.toLowerCase() === wanted) return v;
  }
  return undefined;
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

/**
 * Everything the checks need from one buffered SSE body: whether it ends with `data: [DONE]`,
 * how many `[DONE]`s and events after the first, content chunks before and after the end (an
 * error event or a finish_reason), the finish_reason, the error codes, and whether the error
 * event is the last event before `[DONE]`.
 */
export function analyse(body) {
  const payloads = dataPayloads(body || '');
  const result = {
    endsWithDone: /(^|\n)data: ?\[DONE\]\s*$/.test(body || ''),
    doneCount: 0,
    allJson: true,
    contentChunks: 0,
    contentAfterEnd: 0,
    eventsAfterError: 0, // any JSON event after the first error event
    eventsAfterDone: 0,
    finishReason: null,
    errorCode: null,
    errorCount: 0,
  };
  let ended = false;
  for (const payload of payloads) {
    if (payload === '[DONE]') {
      result.doneCount += 1;
      continue;
    }
    if (result.doneCount > 0) result.eventsAfterDone += 1;
    if (result.errorCount > 0) result.eventsAfterError += 1;
    let chunk;
    try {
      chunk = JSON.parse(payload);
    } catch (e) {
      result.allJson = false;
      continue;
    }
    if (chunk && chunk.error) {
      result.errorCount += 1;
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

/** A stream that was cut with `code`: one error event, last before one `[DONE]`, no content after. */
export function cutChecks(res, s, code) {
  return {
    'stream: status is 200': () => res.status === 200,
    'stream: content-type is text/event-stream': () =>
      String(header(res, 'content-type') || '').startsWith('text/event-stream'),
    [`stream: error event is ${code}`]: () => s.errorCode === code && s.errorCount === 1,
    'stream: error event is the last event, then [DONE]': () =>
      s.eventsAfterError === 0 && s.endsWithDone && s.doneCount === 1 && s.eventsAfterDone === 0,
    'stream: no content after the error': () => s.contentAfterEnd === 0,
    'stream: no finish_reason (cut, not finished)': () => s.finishReason === null,
    'stream: every data event is JSON': () => s.allJson,
  };
}

function b64url(text) {
  return encoding.b64encode(text, 'rawurl');
}

/** An HS256 JWT over `claims`, signed with `secret` (the gateway's TOLLGATE_JWT_SECRET as bytes). */
export function signHs256(claims, secret, headerOverride) {
  const head = b64url(JSON.stringify(headerOverride || { typ: 'JWT', alg: 'HS256' }));
  const body = b64url(JSON.stringify(claims));
  const signature = crypto.hmac('sha256', secret, `${head}.${body}`, 'base64rawurl');
  return `${head}.${body}.${signature}`;
}

export const nowSecs = () => Math.floor(Date.now() / 1000);

/** Logs the first few failures of a VU (k6 keeps module state per VU). */
let logged = 0;
export function logFailure(text, max) {
  if (logged < (max === undefined ? 3 : max)) {
    logged += 1;
    console.warn(`VU ${__VU} iter ${__ITER}: ${text}`);
  }
}
