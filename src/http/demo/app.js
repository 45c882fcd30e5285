// tollgate demo chat: streams a reply with fetch() + ReadableStream and says why it ended.
// Everything the model writes is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ENDINGS = {
  stop: ["done", ""],
  length: ["stopped at the output token cap", "cut"],
  budget_exceeded: ["cut: your spend limit was reached", "cut"],
  deadline_exceeded: ["cut: the time limit was reached", "cut"],
  output_blocked: ["cut: the guardrail blocked the output", "cut"],
  upstream_failed: ["cut: the provider failed", "error"],
};

$("token").value = sessionStorage.getItem("tollgate-token") || "";
$("token").addEventListener("change", () => sessionStorage.setItem("tollgate-token", $("token").value.trim()));
$("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.appendChild(body);
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function ending(div, text, kind) {
  const end = document.createElement("span");
  end.className = `end ${kind}`;
  end.textContent = text;
  div.appendChild(end);
  div.dataset.ended = kind || "done";
}

function status(text, bad) {
  $("status").textContent = text;
  $("status").className = bad ? "bad" : "";
}

function headers() {
  return { "Authorization": `Bearer ${$("token").value.trim()}`, "Content-Type": "application/json" };
}

async function send() {
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  $("send").disabled = true;
  bubble("user", prompt);
  $("prompt").value = "";
  const reply = bubble("assistant", "");
  const body = reply.querySelector(".body");
  status("Waiting for the first token…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        model: $("model").value.trim(),
        stream: true,
        max_tokens: Number($("max-tokens").value) || undefined,
        messages: [{ role: "user", content: prompt }],
      }),
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      const code = error.error?.code || response.status;
      const retry = response.headers.get("retry-after");
      const noRetry = response.headers.get("x-should-retry") === "false";
      let text = `${response.status} ${code}: ${error.error?.message || "request refused"}`;
      if (retry) text += noRetry ? ` (resets in ${retry} s)` : ` (retry in ${retry} s)`;
      ending(reply, text, "error");
      status(text, true);
      return;
    }
    const granted = response.headers.get("x-tollgate-max-tokens");
    status(`Streaming (output cap ${granted} tokens)…`);
    let buffer = "";
    let finish = null;
    let chunks = 0;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data || data === "[DONE]") continue;
        const parsed = JSON.parse(data);
        if (parsed.error) { finish = parsed.error.code || "upstream_failed"; continue; }
        for (const choice of parsed.choices || []) {
          if (choice.delta?.content) { body.textContent += choice.delta.content; chunks += 1; reply.dataset.chunks = String(chunks); }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        $("log").scrollTop = $("log").scrollHeight;
      }
    }
    const [text, kind] = ENDINGS[finish] || [finish ? `ended: ${finish}` : "the stream ended without a finish", "error"];
    ending(reply, text, kind);
    status(text === "done" ? "Done." : text, kind === "error");
  } catch (err) {
    ending(reply, `network error: ${err.message}`, "error");
    status(`Network error: ${err.message}`, true);
  } finally {
    $("send").disabled = false;
    refreshUsage();
  }
}

async function refreshUsage() {
  const response = await fetch("/v1/usage", { headers: headers() }).catch(() => null);
  if (!response || !response.ok) return;
  const { usage } = await response.json();
  const rows = [
    ["Requests this minute", `${usage.requests_per_minute.used} / ${usage.requests_per_minute.limit}`],
    ["Requests today", `${usage.requests_per_day.used} / ${usage.requests_per_day.limit}`],
    ["Tokens today", `${usage.tokens_per_day.used} / ${usage.tokens_per_day.limit}`],
    ["Spend today", `$${usage.daily_usd.used_usd.toFixed(6)} of $${usage.daily_usd.limit_usd.toFixed(2)} (remaining $${usage.daily_usd.remaining_usd.toFixed(6)})`],
    ["Spend this month", `$${usage.monthly_usd.used_usd.toFixed(6)} of $${usage.monthly_usd.limit_usd.toFixed(2)}`],
  ];
  const list = $("usage");
  list.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
}
