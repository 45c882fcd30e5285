// End-to-end: the demo chat page in headless Chromium against a real gateway (embedded mock).
// Run from the repo root: TOLLGATE_BIN=target/debug/tollgate node --test tests/browser/
// Needs Debian's chromium (/usr/bin/chromium) and `npm ci` in tests/browser; no browser download.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { startGateway, token as mint } from "../node_support/gateway.mjs";

const SECRET = "browser-test-secret";
const ENV = {
  TOLLGATE_JWT_SECRET: SECRET,
  TOLLGATE__USERS__SNAPSHOT_PATH: "",
  // The embedded mock: 30 tokens at 15 per second, so a reply takes 2 s to generate.
  TOLLGATE__MOCK__TOKENS: "30",
  TOLLGATE__MOCK__TOKENS_PER_SECOND: "15",
  TOLLGATE__MOCK__FIRST_TOKEN_DELAY_MS: "50",
  // A plan with a tiny daily cap: 150 micro-USD, passed at the first metering report (16
  // output tokens of mock-gpt = 160 micro-USD).
  TOLLGATE__PLANS__TINY__FEATURES: '["chat_support"]',
  TOLLGATE__PLANS__TINY__COST__MAX_DAILY_USD: "0.00015",
};

let gateway;
let base;
let browser;

function token(user, plan) {
  return mint(SECRET, user, plan);
}

before(async () => {
  ({ gateway, base } = await startGateway(ENV));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  gateway?.kill();
});

async function openChat(user, plan) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 820 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  await page.goto(`${base}/chat`);
  await page.fill("#token", token(user, plan));
  await page.dispatchEvent("#token", "change");
  return { page, errors };
}

test("tokens arrive progressively and the page says the reply is done", async () => {
  const { page, errors } = await openChat("browser-alice", "pro");
  await page.fill("#prompt", "Tell me something.");
  await page.click("#send");
  const reply = page.locator(".msg.assistant").last();
  // The first token is on the page while the stream is still open.
  await reply.locator(".body").filter({ hasText: /\S/ }).waitFor({ timeout: 10_000 });
  const early = await reply.evaluate((el) => ({
    chunks: Number(el.dataset.chunks || 0),
    ended: el.dataset.ended || null,
  }));
  assert.equal(early.ended, null, "the first token arrived after the stream had ended");
  assert.ok(early.chunks >= 1 && early.chunks < 30, `chunks when first seen: ${early.chunks}`);
  await page.waitForSelector(".msg.assistant[data-ended]", { timeout: 20_000 });
  const final = await reply.evaluate((el) => ({ chunks: Number(el.dataset.chunks), ended: el.dataset.ended }));
  assert.equal(final.ended, "done");
  assert.equal(final.chunks, 30);
  assert.match(await reply.locator(".end").textContent(), /done/);
  await page.waitForFunction(() => document.querySelector("#usage dt")?.textContent.startsWith("Requests"));
  assert.match(await page.locator("#usage").textContent(), /Spend today/);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  assert.deepEqual(errors, []);
});

test("a tiny spend cap cuts the stream and the page says why", async () => {
  const { page, errors } = await openChat("browser-bob", "tiny");
  await page.fill("#prompt", "Talk for a while.");
  await page.click("#send");
  await page.waitForSelector(".msg.assistant[data-ended]", { timeout: 20_000 });
  const reply = page.locator(".msg.assistant").last();
  assert.equal(await reply.getAttribute("data-ended"), "cut");
  assert.match(await reply.locator(".end").textContent(), /spend limit/);
  // The next message is refused outright, with the reason and when it resets.
  await page.fill("#prompt", "Again?");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant[data-ended]").length === 2);
  assert.match(await page.locator(".msg.assistant").last().textContent(), /429 daily_budget.*resets in \d+ s/);
  assert.deepEqual(errors.filter((e) => !e.includes("429")), []);
});
