// What the Node test suites (tests/browser, tests/clients) share: starting the compiled gateway on
// a free loopback port and minting tokens for it. Plain ESM, imported by relative path.
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";

export const BIN = process.env.TOLLGATE_BIN || "target/debug/tollgate";

/**
 * Starts the gateway with `env` (TOLLGATE_LISTEN=127.0.0.1:0 and a free metrics port are added) and resolves once it
 * serves: `{ gateway, base }`. Each request log line (stdout) is passed to `onLogLine`, if given.
 */
export function startGateway(env, onLogLine) {
  const gateway = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      RUST_LOG: "info",
      TOLLGATE_LISTEN: "127.0.0.1:0",
      // `/metrics` on a free loopback port: suites run gateways side by side.
      TOLLGATE__SERVER__METRICS_LISTEN: "127.0.0.1:0",
      ...env,
    },
    stdio: ["ignore", onLogLine ? "pipe" : "ignore", "pipe"],
  });
  if (onLogLine) {
    createInterface({ input: gateway.stdout }).on("line", (line) => onLogLine(JSON.parse(line)));
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the gateway did not start")), 30_000);
    createInterface({ input: gateway.stderr }).on("line", (line) => {
      try {
        const entry = JSON.parse(line);
        if (entry.message === "tollgate is serving") {
          clearTimeout(timer);
          resolve({ gateway, base: `http://${entry.listen}` });
        }
      } catch { /* not JSON */ }
    });
    gateway.on("exit", (code) => reject(new Error(`the gateway exited with ${code}`)));
  });
}

/** An HS256 token from `tollgate token`, signed with `secret`. */
export function token(secret, user, plan) {
  return execFileSync(BIN, ["token", "--sub", user, "--plan", plan, "--ttl", "600"], {
    env: { PATH: process.env.PATH, TOLLGATE_JWT_SECRET: secret },
  }).toString().trim();
}

/**
 * Starts `tollgate mock-provider` with `args` on a free loopback port and resolves once it
 * serves: `{ mock, url }` (`url` is its root, e.g. `http://127.0.0.1:40123`).
 */
export function startMock(args) {
  const mock = spawn(BIN, ["mock-provider", "--listen", "127.0.0.1:0", ...args], {
    env: { PATH: process.env.PATH, RUST_LOG: "info" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the mock provider did not start")), 30_000);
    createInterface({ input: mock.stderr }).on("line", (line) => {
      try {
        const entry = JSON.parse(line);
        if (entry.message === "mock provider is serving") {
          clearTimeout(timer);
          resolve({ mock, url: `http://${entry.listen}` });
        }
      } catch { /* not JSON */ }
    });
    mock.on("exit", (code) => reject(new Error(`the mock provider exited with ${code}`)));
  });
}
