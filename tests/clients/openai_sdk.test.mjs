// The official OpenAI Node SDK against a real gateway (embedded mock): what a client app sees.
// Run from the repo root: TOLLGATE_BIN=target/debug/tollgate node --test tests/clients/
// Needs `npm ci` in tests/clients (the `openai` package from the npm registry).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import OpenAI from "openai";
import { BIN, startGateway, token as mint } from "../node_support/gateway.mjs";
const SECRET = "client-test-secret";

/** A fresh service key for the front end `webui` and its hash, from `tollgate key new`. */
const [KEY, KEY_SHA256] = (() => {
  const out = execFileSync(BIN, ["key", "new", "--name", "webui"]).toString();
  return [out.split("\n")[0], out.match(/key_sha256 = "([0-9a-f]{64})"/)[1]];
})();

/** The admin API's key (its SHA-256 in the gateway's config). */
const ADMIN_KEY = "sdk-test-admin-key-0b1d";

const ENV = {
  TOLLGATE__ADMIN__KEY_SHA256: createHash("sha256").update(ADMIN_KEY).digest("hex"),
  // Streams report every 16 tokens: an operator's block reaches an open stream within a moment.
  TOLLGATE__RELAY__METER_BATCH_TOKENS: "16",
  TOLLGATE__RELAY__METER_BATCH_MAX_TOKENS: "16",
  TOLLGATE_JWT_SECRET: SECRET,
  TOLLGATE__USERS__SNAPSHOT_PATH: "",
  TOLLGATE__MOCK__TOKENS: "12",
  TOLLGATE__MOCK__TOKENS_PER_SECOND: "0",
  TOLLGATE__MOCK__FIRST_TOKEN_DELAY_MS: "0",
  TOLLGATE__AUTH__SERVICE_KEYS__WEBUI__KEY_SHA256: KEY_SHA256,
  TOLLGATE__AUTH__SERVICE_KEYS__WEBUI__USER_HEADER: "x-openwebui-user-id",
  TOLLGATE__AUTH__SERVICE_KEYS__WEBUI__PLAN: "basic",
  // A plan whose daily cap no request fits: every request is refused `429 daily_budget`.
  TOLLGATE__PLANS__BROKE__FEATURES: '["chat_support"]',
  TOLLGATE__PLANS__BROKE__COST__MAX_DAILY_USD: "0.000001",
};

let gateway;
let base;
const logLines = [];

function token(user, plan) {
  return mint(SECRET, user, plan);
}

/** An SDK client as a JWT user, or as the front end naming `user` (no retries: exact counts). */
function client({ jwtUser, frontEndUser } = {}) {
  return new OpenAI({
    baseURL: `${base}/v1`,
    apiKey: jwtUser ? token(jwtUser, "pro") : KEY,
    defaultHeaders: frontEndUser ? { "x-openwebui-user-id": frontEndUser } : {},
    maxRetries: 0,
  });
}

before(async () => {
  ({ gateway, base } = await startGateway(ENV, (line) => logLines.push(line)));
});

after(() => gateway?.kill("SIGTERM"));

/** Waits (bounded) until the request log holds a line for `user`, and returns it. */
async function logLineOf(user) {
  for (let i = 0; i < 100; i++) {
    const line = logLines.find((l) => l.user_id === user);
    if (line) return line;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no log line for ${user}`);
}

test("a stream reaches the SDK whole, with the cost it was billed in its usage", async () => {
  const stream = await client({ jwtUser: "sdk-ann" }).chat.completions.create({
    model: "mock-gpt",
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: "user", content: "Say something." }],
  });
  let text = "";
  let usage;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(text.length > 0);
  const line = await logLineOf("sdk-ann");
  assert.equal(line.outcome, "completed");
  assert.equal(usage.completion_tokens, line.output_tokens);
  assert.equal(usage.cost, line.cost_usd);
  assert.ok(usage.cost > 0);
});

test("a budget refusal is not retried by an SDK that retries (x-should-retry: false)", async () => {
  // The SDK's defaults: two retries of a 429, unless the answer says not to.
  const sdk = new OpenAI({ baseURL: `${base}/v1`, apiKey: token("sdk-broke", "broke") });
  await assert.rejects(
    sdk.chat.completions.create({
      model: "mock-gpt",
      messages: [{ role: "user", content: "Say something." }],
    }),
    (e) => e instanceof OpenAI.RateLimitError && e.code === "daily_budget",
  );
  // Every attempt was answered (and logged) before the SDK gave up; a later request's line
  // comes after theirs on the same stdout.
  await client({ jwtUser: "sdk-after-broke" }).chat.completions.create({
    model: "mock-gpt",
    messages: [{ role: "user", content: "Say something." }],
  });
  await logLineOf("sdk-after-broke");
  assert.equal(logLines.filter((l) => l.user_id === "sdk-broke").length, 1);
});

test("a stream the upstream breaks raises in the SDK (never a silent success)", async () => {
  const stream = await client({ jwtUser: "sdk-bo" }).chat.completions.create({
    model: "mock-gpt:fault=error@3",
    stream: true,
    messages: [{ role: "user", content: "Say something." }],
  });
  await assert.rejects(
    (async () => { for await (const _ of stream) { /* read to the end */ } })(),
    (e) => e instanceof OpenAI.APIError && /upstream provider failed/.test(e.message),
  );
  assert.equal((await logLineOf("sdk-bo")).error_code, "upstream_failed");
});

test("a trusted front end's users are their own users; its model list is its key's plan", async () => {
  const reply = await client({ frontEndUser: "u-1" }).chat.completions.create({
    model: "mock-gpt",
    messages: [{ role: "user", content: "Say something." }],
  });
  assert.ok(reply.usage.cost > 0);
  const line = await logLineOf("webui:u-1");
  assert.equal(line.plan, "basic");
  assert.equal(reply.usage.cost, line.cost_usd);
  // The front end itself (no user header) lists models, as a chat UI does at start-up.
  const models = [];
  for await (const model of client().models.list()) models.push(model.id);
  assert.ok(models.includes("mock-gpt"), models.join(","));
  // A chat without a user header is refused before any upstream call.
  await assert.rejects(
    client().chat.completions.create({
      model: "mock-gpt",
      messages: [{ role: "user", content: "Say something." }],
    }),
    (e) => e.status === 400 && e.code === "missing_user",
  );
});

test("an operator's block: an open stream raises in the SDK, the next request is a 403", async () => {
  const sdk = client({ jwtUser: "sdk-mallory" });
  const body = { model: "mock-gpt:tokens=400,tps=100", messages: [{ role: "user", content: "Say something." }] };
  const stream = await sdk.chat.completions.create({ ...body, stream: true });
  const chunks = stream[Symbol.asyncIterator]();
  assert.equal((await chunks.next()).done, false);
  const blocked = await fetch(`${base}/admin/v1/users/sdk-mallory/block`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
  });
  assert.equal(blocked.status, 200);
  await assert.rejects(
    (async () => { while (!(await chunks.next()).done) { /* read to the end */ } })(),
    (e) => e instanceof OpenAI.APIError && /blocked by an operator/.test(e.message),
  );
  await assert.rejects(
    sdk.chat.completions.create(body),
    (e) => e instanceof OpenAI.PermissionDeniedError && e.code === "user_blocked",
  );
  const cut = logLines.find((l) => l.user_id === "sdk-mallory" && l.outcome === "cut_blocked");
  assert.ok(cut, "the cut stream's log line");
  assert.ok(cut.output_tokens > 0 && cut.output_tokens < 400, `${cut.output_tokens} tokens`);
});
