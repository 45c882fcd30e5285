// The official OpenAI Node SDK against a gateway whose model is served by a provider speaking
// Anthropic's Messages API (the mock's /v1/messages, split at every byte): the SDK's own stream
// helpers must see ordinary OpenAI replies — text, tool calls with exact arguments, usage, cost.
// Run from the repo root: TOLLGATE_BIN=target/debug/tollgate node --test tests/clients/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startGateway, startMock, token as mint } from "../node_support/gateway.mjs";

const SECRET = "anthropic-sdk-test-secret";
const TOOL = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city for some days",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, days: { type: "integer" } },
      required: ["city"],
    },
  },
};

let mock;
let gateway;
let base;
const logLines = [];

before(async () => {
  let url;
  ({ mock, url } = await startMock([
    "--format", "anthropic", "--tokens", "12", "--tokens-per-second", "0",
    "--first-token-delay-ms", "0", "--framing", "bytes+crlf+pings",
  ]));
  const model = (name, upstreamModel) => ({
    [`TOLLGATE__PRICING__${name}__INPUT_PER_MILLION_USD`]: "3.0",
    [`TOLLGATE__PRICING__${name}__OUTPUT_PER_MILLION_USD`]: "15.0",
    [`TOLLGATE__PRICING__${name}__UPSTREAM`]: "anthropic",
    [`TOLLGATE__PRICING__${name}__UPSTREAM_MODEL`]: upstreamModel,
  });
  ({ gateway, base } = await startGateway({
    TOLLGATE_JWT_SECRET: SECRET,
    TOLLGATE__USERS__SNAPSHOT_PATH: "",
    TOLLGATE__UPSTREAMS__ANTHROPIC__URL: url,
    TOLLGATE__UPSTREAMS__ANTHROPIC__FORMAT: "anthropic",
    TOLLGATE__UPSTREAMS__ANTHROPIC__API_KEY: "sk-ant-sdk-test",
    ...model("CLAUDE", "claude-test"),
    ...model("CLAUDE-TOOLS", "claude-test:tool=get_weather"),
  }, (line) => logLines.push(line)));
});

after(() => {
  gateway?.kill("SIGTERM");
  mock?.kill("SIGTERM");
});

function client(user) {
  return new OpenAI({ baseURL: `${base}/v1`, apiKey: mint(SECRET, user, "pro"), maxRetries: 0 });
}

async function logLineOf(user) {
  for (let i = 0; i < 100; i++) {
    const line = logLines.find((l) => l.user_id === user);
    if (line) return line;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no log line for ${user}`);
}

test("a streamed tool call is assembled by the SDK with its exact arguments", async () => {
  const runner = client("an-tool").chat.completions.stream({
    model: "claude-tools",
    stream_options: { include_usage: true },
    tools: [TOOL],
    messages: [
      { role: "system", content: "Use the tool." },
      { role: "user", content: "Weather in Paris for 3 days?" },
    ],
  });
  const final = await runner.finalChatCompletion();
  const choice = final.choices[0];
  assert.equal(choice.finish_reason, "tool_calls");
  assert.equal(choice.message.content.split(" ").length - 1, 12, choice.message.content);
  const [call] = choice.message.tool_calls;
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris", days: 3 });
  assert.match(call.id, /^toolu_/);
  const line = await logLineOf("an-tool");
  assert.equal(line.outcome, "completed");
  assert.equal(line.usage_source, "upstream");
  assert.equal(final.usage.completion_tokens, line.output_tokens);
  assert.equal(final.usage.cost, line.cost_usd);
});

test("a tool result goes back and a whole reply comes back as a chat completion", async () => {
  const reply = await client("an-whole").chat.completions.create({
    model: "claude",
    tools: [TOOL],
    messages: [
      { role: "user", content: "Weather in Paris?" },
      {
        role: "assistant",
        content: null,
        tool_calls: [{
          id: "toolu_1", type: "function",
          function: { name: "get_weather", arguments: '{"city":"Paris"}' },
        }],
      },
      { role: "tool", tool_call_id: "toolu_1", content: "Sunny, 21 C" },
    ],
  });
  assert.equal(reply.object, "chat.completion");
  assert.equal(reply.choices[0].finish_reason, "stop");
  assert.ok(reply.choices[0].message.content.length > 0);
  const line = await logLineOf("an-whole");
  assert.equal(reply.usage.cost, line.cost_usd);
  assert.equal(line.model, "claude");
});
