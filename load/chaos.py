#!/usr/bin/env python3
"""Chaos run (issue #20): two gateway replicas on one Redis, the mock provider upstream, steady
streaming load from several users while Redis is SIGKILLed and restarted, a replica is SIGKILLed
and restarted, and the load switches to mid-stream provider failures. Afterwards it reconciles
three ledgers -- the request log, the metrics and Redis -- against what the clients saw, prints
the table and exits non-zero if any check failed.

Python 3.11 standard library only. Run it through load/chaos.sh (which builds the release
binary); everything listens on 127.0.0.1 on ports the OS picked. See load/README.md#chaos-run.
"""

import argparse
import asyncio
import base64
import collections
import dataclasses
import datetime
import decimal
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid

# The mock's model, priced by the gateway's built-in table: nano-USD per token.
MODEL = "mock-gpt"
INPUT_NANO, OUTPUT_NANO = 2_500, 10_000
# The gateway settings of the run (every other key at its default).
DEADLINE_SECS = 8
LEASE_SECS = 12
IDLE_TIMEOUT_SECS = 2
OUTAGE_ALLOWANCE_USD = decimal.Decimal("0.05")
# A request must end this long after its deadline at the latest (a loaded 2-core machine).
HANG_SLACK_SECS = 3.0


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_token(secret, sub, plan="pro", ttl=1800):
    now = int(time.time())
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": sub, "plan": plan, "iat": now, "exp": now + ttl}).encode())
    signing = f"{header}.{claims}".encode()
    sig = b64url(hmac.new(secret.encode(), signing, hashlib.sha256).digest())
    return f"{header}.{claims}.{sig}"


def cost_micro(input_tokens, output_tokens):
    nano = input_tokens * INPUT_NANO + output_tokens * OUTPUT_NANO
    return -(-nano // 1000)


def usd_to_micro(value):
    return int((decimal.Decimal(str(value)) * 1_000_000).to_integral_value())


def micro_str(micro):
    return f"${decimal.Decimal(micro) / 1_000_000:.6f}"


# --- processes --------------------------------------------------------------------------------


class Proc:
    """A child process this run started (and only those are ever signalled)."""

    def __init__(self, name, argv, env, out_path, err_path):
        self.name = name
        self.out_path = out_path
        self.out = open(out_path, "wb")
        self.err = open(err_path, "wb")
        self.p = subprocess.Popen(argv, env=env, stdout=self.out, stderr=self.err,
                                  stdin=subprocess.DEVNULL)

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()
        self.err.close()


@dataclasses.dataclass
class Incarnation:
    """One life of a replica process: its request log file, when it was sent SIGKILL and when it
    was gone (reaped: its listening socket closed, so no connect can reach it any more)."""

    name: str
    proc: Proc
    started: float
    killed_at: float | None = None
    dead_at: float | None = None
    last_scrape: dict | None = None


class Replica:
    def __init__(self, letter, port, env, binary, workdir):
        self.letter, self.port, self.env, self.binary, self.workdir = letter, port, env, binary, workdir
        self.lives = []

    @property
    def current(self):
        return self.lives[-1]

    def start(self):
        n = len(self.lives) + 1
        name = f"{self.letter}{n}"
        proc = Proc(name, [self.binary, "serve"], self.env,
                    os.path.join(self.workdir, f"replica-{name}.log"),
                    os.path.join(self.workdir, f"replica-{name}.err"))
        self.lives.append(Incarnation(name, proc, time.monotonic()))
        return self.current

    def up(self):
        return self.current.killed_at is None and self.current.proc.p.poll() is None


# --- a minimal HTTP/1.1 client (one request per connection) -------------------------------------


@dataclasses.dataclass
class Response:
    status: int = 0
    headers: dict = dataclasses.field(default_factory=dict)
    body: bytes = b""
    # The body ended as its framing says (chunked terminator, Content-Length), not by a reset.
    complete: bool = False
    error: str | None = None


async def http(port, method, path, headers=None, body=None, timeout=30.0):
    """One request on a fresh connection. Never raises: failures are in `Response.error`
    (`refused` when nothing listens, `reset` when the connection broke, `timeout`)."""
    resp = Response()
    chunks = []

    async def run():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            resp.error = "refused"
            return
        except (ConnectionResetError, ConnectionAbortedError):
            # A replica killed with the connection still in its listen backlog.
            resp.error = "reset"
            return
        try:
            payload = body if body is not None else b""
            lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
            for k, v in (headers or {}).items():
                lines.append(f"{k}: {v}")
            if body is not None:
                lines.append(f"Content-Length: {len(payload)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            resp.status = int(status_line.split(" ")[1])
            for line in header_lines:
                if ":" in line:
                    k, v = line.split(":", 1)
                    resp.headers[k.strip().lower()] = v.strip()
            if resp.headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        # Trailers, up to the empty line.
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass
                        resp.complete = True
                        break
                    chunks.append(await reader.readexactly(size))
                    await reader.readexactly(2)
            elif "content-length" in resp.headers:
                chunks.append(await reader.readexactly(int(resp.headers["content-length"])))
                resp.complete = True
            else:
                chunks.append(await reader.read())
                resp.complete = True
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                ValueError, IndexError) as e:
            resp.error = f"reset ({type(e).__name__})"
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    try:
        await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        resp.error = "timeout"
    # What arrived, whole or not.
    resp.body = b"".join(chunks)
    return resp


def sse_events(body):
    """The data payloads of an SSE body."""
    events, data = [], []
    for line in body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        if line == "":
            if data:
                events.append("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line.startswith("data: ") else line[5:])
    if data:
        events.append("\n".join(data))
    return events


# --- the load -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    """One chat request as its client saw it."""

    session: str
    user: str
    replica: str
    incarnation: str
    kind: str
    started: float
    ended: float = 0.0
    # complete | cut | error | refused | reset | timeout | bad
    ending: str = ""
    status: int = 0
    code: str | None = None
    finish: str | None = None
    request_id: str | None = None
    content_chunks: int = 0
    cost_micro: int | None = None
    # Wall clock at sending, to compare with the replicas' own log timestamps.
    wall: float = 0.0
    detail: str = ""


# Request kinds: (name, weight in the steady phase, weight in the fault phase).
KINDS = [
    ("stream", 70, 15),      # 30 tokens at 30/s: a whole stream, usage asked
    ("capped", 10, 0),       # max_tokens 10 and a mock that ignores it: cut at the cap
    ("deadline", 4, 0),      # 400 tokens at 40/s: cut at the deadline
    ("whole", 16, 0),        # not streamed
    ("error", 0, 25),        # the provider sends an error event after 10 tokens
    ("close", 0, 25),        # the provider's connection is aborted after 10 tokens
    ("stall", 0, 25),        # the provider goes silent after 10 tokens (idle timeout)
    ("status503", 0, 10),    # the provider answers 503 before anything
]


def request_body(kind, n):
    knobs = {
        "stream": "tokens=30,tps=30",
        "capped": "tokens=60,tps=60,ignore_max_tokens=true",
        "deadline": "tokens=400,tps=40",
        "whole": "tokens=20",
        "error": "tokens=30,tps=30,fault=error@10",
        "close": "tokens=30,tps=30,fault=close@10",
        "stall": "tokens=30,tps=30,fault=stall@10",
        "status503": "tokens=30,fault=status@503",
    }[kind]
    body = {
        "model": f"{MODEL}:{knobs}",
        "stream": kind != "whole",
        "max_tokens": 10 if kind == "capped" else 1000,
        "messages": [{"role": "user", "content": f"Chaos request {n}: tell me about the weather."}],
    }
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def classify(sent, resp):
    sent.status = resp.status
    sent.request_id = resp.headers.get("x-request-id")
    if resp.error == "refused":
        sent.ending = "refused"
        return
    if resp.error == "timeout":
        sent.ending = "timeout"
        return
    if resp.error or not resp.complete:
        sent.ending = "reset"
        sent.detail = resp.error or "incomplete"
        # What the client got before the cut.
        for data in sse_events(resp.body):
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            for choice in obj.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    sent.content_chunks += 1
        return
    if resp.status != 200:
        try:
            sent.code = json.loads(resp.body)["error"]["code"]
            sent.ending = "error"
        except (ValueError, KeyError, TypeError):
            sent.ending = "bad"
            sent.detail = f"status {resp.status}, body {resp.body[:200]!r}"
        return
    if not resp.headers.get("content-type", "").startswith("text/event-stream"):
        try:
            reply = json.loads(resp.body)
            sent.finish = reply["choices"][0]["finish_reason"]
            sent.cost_micro = usd_to_micro(reply["usage"]["cost"])
            sent.ending = "complete"
        except (ValueError, KeyError, TypeError, IndexError):
            sent.ending = "bad"
            sent.detail = f"not a chat.completion: {resp.body[:200]!r}"
        return
    events = sse_events(resp.body)
    if not events or events[-1] != "[DONE]" or "[DONE]" in events[:-1]:
        sent.ending = "bad"
        sent.detail = f"no single closing [DONE]: {events[-3:]}"
        return
    error = None
    for i, data in enumerate(events[:-1]):
        try:
            obj = json.loads(data)
        except ValueError:
            sent.ending, sent.detail = "bad", f"not JSON: {data[:100]}"
            return
        if "error" in obj:
            if i != len(events) - 2:
                sent.ending, sent.detail = "bad", "an error event before the last one"
                return
            error = obj["error"].get("code")
            continue
        for choice in obj.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                sent.content_chunks += 1
            if choice.get("finish_reason"):
                sent.finish = choice["finish_reason"]
        if obj.get("usage") and "cost" in obj["usage"]:
            sent.cost_micro = usd_to_micro(obj["usage"]["cost"])
    if error:
        sent.ending, sent.code = "cut", error
    elif sent.finish:
        sent.ending = "complete"
    else:
        sent.ending, sent.detail = "bad", "[DONE] without a finish reason or an error"


class Load:
    def __init__(self, replicas, users, per_user, secret, deadline_at):
        self.replicas = replicas
        self.users = users
        self.per_user = per_user
        self.tokens = {u: hs256_token(secret, u) for u in users}
        self.sent = []
        self.phase = "steady"
        self.stop_at = deadline_at
        self.counter = 0

    def pick_kind(self, rng):
        weights = [w if self.phase == "steady" else f for _, w, f in KINDS]
        return rng.choices([k for k, _, _ in KINDS], weights)[0]

    async def client(self, user, slot):
        rng = random.Random(f"{user}-{slot}")
        while time.monotonic() < self.stop_at:
            self.counter += 1
            n = self.counter
            replica = self.replicas[n % len(self.replicas)]
            kind = self.pick_kind(rng)
            session = f"chaos-{uuid.uuid4().hex}"
            sent = Sent(session, user, replica.letter, replica.current.name, kind, time.monotonic(),
                        wall=time.time())
            self.sent.append(sent)
            headers = {
                "Authorization": f"Bearer {self.tokens[user]}",
                "Content-Type": "application/json",
                "X-Session-Id": session,
            }
            resp = await http(replica.port, "POST", "/v1/chat/completions", headers,
                              request_body(kind, n), timeout=DEADLINE_SECS + HANG_SLACK_SECS + 5)
            sent.ended = time.monotonic()
            classify(sent, resp)
            if sent.ending == "refused":
                # The replica is down: do not spin on it.
                await asyncio.sleep(0.2)
            else:
                await asyncio.sleep(rng.uniform(0, 0.1))

    async def run(self):
        await asyncio.gather(*(self.client(u, s) for u in self.users for s in range(self.per_user)))


# --- the scenario -------------------------------------------------------------------------------


async def wait_ready(replica, timeout=60):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        resp = await http(replica.port, "GET", "/readyz", timeout=2)
        if resp.status == 200:
            try:
                if json.loads(resp.body).get("redis") == "ok":
                    return True
            except ValueError:
                pass
        await asyncio.sleep(0.2)
    return False


async def scrape(replica):
    resp = await http(replica.port, "GET", "/metrics", timeout=5)
    if resp.status != 200 or resp.error:
        return None
    return parse_metrics(resp.body.decode())


def parse_metrics(text):
    """Sums of the series the reconciliation reads, as exact decimals."""
    out = {"cost": decimal.Decimal(0), "requests": decimal.Decimal(0), "user_cost": {},
           "redis_errors": decimal.Decimal(0), "state_lost": decimal.Decimal(0),
           "persistence": None}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            v = decimal.Decimal(value)
        except decimal.InvalidOperation:
            continue
        name = series.split("{", 1)[0]
        if name == "tollgate_cost_usd_total":
            out["cost"] += v
        elif name == "tollgate_requests_total":
            out["requests"] += v
        elif name == "tollgate_user_cost_usd_total":
            user = series.split('user="', 1)[1].split('"', 1)[0]
            out["user_cost"][user] = out["user_cost"].get(user, 0) + v
        elif name == "tollgate_redis_errors_total":
            out["redis_errors"] += v
            op = series.split('op="', 1)[1].split('"', 1)[0] if 'op="' in series else "?"
            if v:
                out.setdefault("redis_errors_by_op", {})[op] = int(v)
        elif name == "tollgate_redis_state_lost_total":
            out["state_lost"] += v
        elif name == "tollgate_redis_persistence" and v == 1:
            out["persistence"] = series.split('mode="', 1)[1].split('"', 1)[0]
    return out


class Resp:
    """Just enough RESP to read Redis."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")

    def cmd(self, *args):
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            a = str(a).encode()
            parts.append(f"${len(a)}\r\n".encode() + a + b"\r\n")
        self.sock.sendall(b"".join(parts))
        return self.read()

    def read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected RESP {line!r}")

    def scan(self, pattern):
        cursor, keys = "0", []
        while True:
            cursor, batch = self.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys += batch
            if cursor == "0":
                return keys


def start_redis(port, workdir):
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--protected-mode", "no"]
    n = len([f for f in os.listdir(workdir) if f.startswith("redis-") and f.endswith(".err")]) + 1
    return Proc(f"redis{n}", argv, os.environ.copy(), os.path.join(workdir, f"redis-{n}.out"),
                os.path.join(workdir, f"redis-{n}.err"))


def wait_redis(port, timeout=20):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            if Resp(port).cmd("PING") == "PONG":
                return True
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    return False


def read_log(path):
    lines = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict) and "request_id" in obj:
                lines.append(obj)
    return lines


def redis_windows(err_path):
    """A replica life's Redis circuit-open windows (wall clock, from its own log), and how many
    settlements it replayed from its journal."""
    windows, replayed = [], 0
    with open(err_path, "rb") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
                when = datetime.datetime.fromisoformat(obj["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            message = obj.get("message", "")
            if message.startswith("Redis is unavailable"):
                windows.append([when, None])
            elif message.startswith("Redis is back") and windows and windows[-1][1] is None:
                windows[-1][1] = when
            elif message.startswith("settlements replayed"):
                replayed += int(obj.get("replayed", 0))
    return windows, replayed


class Table:
    def __init__(self):
        self.rows = []
        self.failed = 0

    def row(self, ledger, check, result, ok=True):
        self.rows.append((ledger, check, result, "ok" if ok else "FAIL"))
        if not ok:
            self.failed += 1

    def print(self):
        print("\n| ledger | check | result | |")
        print("|---|---|---|---|")
        for r in self.rows:
            print("| " + " | ".join(r) + " |")
        print()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--duration", type=float, default=180.0,
                    help="seconds of load; the faults are placed proportionally")
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--streams-per-user", type=int, default=3)
    ap.add_argument("--redis-op-timeout-ms", type=int, default=50,
                    help="redis.op_timeout_ms of the replicas (50 is the production default; a "
                         "debug build on a busy machine needs more, or its calls time out)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    D = args.duration
    # The timeline, as fractions of the load's duration.
    at = {
        "redis_kill": 0.14 * D, "redis_restart": 0.14 * D + max(5.0, 0.08 * D),
        "replica_kill": 0.42 * D, "replica_restart": 0.42 * D + max(3.0, 0.05 * D),
        "faults_on": 0.60 * D, "faults_off": 0.80 * D,
    }
    run_id = uuid.uuid4().hex[:8]
    users = [f"chaos-{run_id}-u{i}" for i in range(args.users)]
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    procs = []

    redis_port, mock_port = free_port(), free_port()
    log(f"workdir {args.workdir}; redis :{redis_port}, mock :{mock_port}")
    redis = start_redis(redis_port, args.workdir)
    procs.append(redis)
    if not wait_redis(redis_port):
        sys.exit("redis-server did not start")
    mock = Proc("mock", [args.binary, "mock-provider", "--listen", f"127.0.0.1:{mock_port}"],
                os.environ.copy(), os.path.join(args.workdir, "mock.out"),
                os.path.join(args.workdir, "mock.err"))
    procs.append(mock)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE")}
    base_env.update({
        "TOLLGATE_UPSTREAM_URL": f"http://127.0.0.1:{mock_port}/v1",
        "TOLLGATE_UPSTREAM_API_KEY": "sk-chaos-upstream",
        "TOLLGATE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/",
        "TOLLGATE_JWT_SECRET": secret,
        "TOLLGATE__SERVER__WORKERS": "1",
        "TOLLGATE__REDIS__EXPECTED_REPLICAS": "2",
        "TOLLGATE__REDIS__LEASE_SECS": str(LEASE_SECS),
        "TOLLGATE__REDIS__OP_TIMEOUT_MS": str(args.redis_op_timeout_ms),
        "TOLLGATE__LIMITS__DEADLINE_SECS": str(DEADLINE_SECS),
        "TOLLGATE__UPSTREAM__IDLE_TIMEOUT_SECS": str(IDLE_TIMEOUT_SECS),
        "TOLLGATE__UPSTREAM__FIRST_BYTE_TIMEOUT_SECS": "3",
        # Limits out of the way: this run is about what is lost, not who is refused.
        "TOLLGATE__RATE__REQUESTS_PER_MINUTE": "1000000",
        "TOLLGATE__RATE__REQUESTS_PER_DAY": "1000000000",
        "TOLLGATE__RATE__TOKENS_PER_DAY": "1000000000000",
        "TOLLGATE__RATE__MAX_CONCURRENT_STREAMS": "100",
        "TOLLGATE__COST__MAX_DAILY_USD": "1000.0",
        "TOLLGATE__COST__MAX_MONTHLY_USD": "10000.0",
        "TOLLGATE__USERS__SNAPSHOT_PATH": "",
        "RUST_LOG": "info",
    })
    replicas = []
    for letter in "ab":
        env = dict(base_env, TOLLGATE_LISTEN=f"127.0.0.1:{free_port()}")
        r = Replica(letter, int(env["TOLLGATE_LISTEN"].rsplit(":", 1)[1]), env, args.binary,
                    args.workdir)
        r.start()
        replicas.append(r)
    table = Table()
    try:
        for r in replicas:
            if not await wait_ready(r, 30):
                sys.exit(f"replica {r.current.name} never became ready")
        log(f"replicas a :{replicas[0].port}, b :{replicas[1].port} ready; "
            f"{len(users)} users x {args.streams_per_user} streams for {D:.0f} s")
        t0 = time.monotonic()
        load = Load(replicas, users, args.streams_per_user, secret, t0 + D)
        events = {}

        async def until(t):
            await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))

        async def scraper():
            while time.monotonic() < t0 + D:
                for r in replicas:
                    if r.up():
                        m = await scrape(r)
                        if m and r.up():
                            r.current.last_scrape = m
                await asyncio.sleep(1.0)

        async def chaos():
            nonlocal redis
            await until(at["redis_kill"])
            redis.kill()
            events["redis_killed"] = time.monotonic()
            log("SIGKILL redis-server")
            await until(at["redis_restart"])
            redis = start_redis(redis_port, args.workdir)
            procs.append(redis)
            await asyncio.to_thread(wait_redis, redis_port)
            events["redis_back"] = time.monotonic()
            log("redis-server restarted")
            ok = all(await asyncio.gather(*(wait_ready(r, 30) for r in replicas)))
            events["ready_after_redis"] = time.monotonic()
            log(f"both replicas ready again: {ok}, "
                f"{events['ready_after_redis'] - events['redis_back']:.1f} s after the restart")
            await until(at["replica_kill"])
            victim = replicas[1]
            victim.current.proc.kill()
            victim.current.killed_at = time.monotonic()
            events["replica_killed"] = victim.current.killed_at
            # The process dies some milliseconds after the signal: until then its listening
            # socket still takes connections into the backlog, and each is reset at its death.
            await asyncio.to_thread(victim.current.proc.p.wait)
            victim.current.dead_at = time.monotonic()
            log(f"SIGKILL replica {victim.current.name} "
                f"(gone {1000 * (victim.current.dead_at - victim.current.killed_at):.1f} ms later)")
            await until(at["replica_restart"])
            victim.start()
            ok = await wait_ready(victim, 30)
            events["replica_back"] = time.monotonic()
            log(f"replica {victim.current.name} started, ready: {ok}")
            await until(at["faults_on"])
            load.phase = "faults"
            log("load switched to mid-stream provider failures")
            await until(at["faults_off"])
            load.phase = "steady"
            log("load back to steady")

        await asyncio.gather(load.run(), chaos(), scraper())
        log(f"load over: {len(load.sent)} requests sent")

        # Leases of the killed replica's requests end LEASE_SECS after their last renewal; then
        # reading each user's usage (it frees ended leases) charges them.
        wait = events["replica_killed"] + LEASE_SECS + 2 - time.monotonic()
        if wait > 0:
            log(f"waiting {wait:.0f} s for the killed replica's leases to end")
            await asyncio.sleep(wait)
        open_after = {}
        for u in users:
            resp = await http(replicas[0].port, "GET", "/v1/usage",
                              {"Authorization": f"Bearer {load.tokens[u]}"}, timeout=10)
            usage = json.loads(resp.body)["usage"] if resp.status == 200 else {}
            open_after[u] = usage.get("open_requests", "?")
        final = {}
        for r in replicas:
            final[r.current.name] = await scrape(r)
        for r in replicas:
            r.current.proc.stop()
        with open(os.path.join(args.workdir, "clients.jsonl"), "w") as f:
            for s in load.sent:
                f.write(json.dumps(dataclasses.asdict(s)) + "\n")
        reconcile(table, load, replicas, users, events, final, open_after, redis_port)
    finally:
        for r in replicas:
            for life in r.lives:
                life.proc.stop(timeout=5)
        for p in procs:
            p.stop(timeout=5)
    table.print()
    print(f"logs: {args.workdir}")
    return 1 if table.failed else 0


def reconcile(table, load, replicas, users, events, final, open_after, redis_port):
    sent = load.sent
    by_session = {s.session: s for s in sent}
    lives = {life.name: life for r in replicas for life in r.lives}
    killed = {name for name, life in lives.items() if life.killed_at is not None}
    kill_at = {name: lives[name].killed_at for name in killed}
    dead_at = {name: lives[name].dead_at or lives[name].killed_at for name in killed}

    # What the clients saw.
    endings = collections.Counter(s.ending for s in sent)
    codes = collections.Counter(f"{s.ending}:{s.code}" for s in sent if s.code)

    def in_flight_on_killed(s):
        # Sent before the process was gone (a connect between the signal and the death lands in
        # its backlog), and not ended well before the signal.
        return (s.incarnation in killed and s.started <= dead_at[s.incarnation]
                and kill_at[s.incarnation] <= s.ended + 0.5)

    def when(s):
        """A request's times against its life's kill, for a row's detail."""
        if s.incarnation not in killed:
            return ""
        k = kill_at[s.incarnation]
        return (f" sent {1000 * (s.started - k):+.1f} ms, ended {1000 * (s.ended - k):+.1f} ms "
                f"from the SIGKILL (gone {1000 * (dead_at[s.incarnation] - k):+.1f} ms)")

    unclean = [s for s in sent if s.ending in ("reset", "bad", "timeout")
               and not (s.ending == "reset" and in_flight_on_killed(s))]
    killed_resets = [s for s in sent if s.ending == "reset" and in_flight_on_killed(s)]
    longest = max((s.ended - s.started for s in sent), default=0.0)
    table.row("clients", "requests sent (users x streams)", f"{len(sent)} ({len(users)} users)")
    table.row("clients", "endings", ", ".join(f"{k} {v}" for k, v in sorted(endings.items())))
    table.row("clients", "error codes (clean errors and cuts)",
              ", ".join(f"{k} {v}" for k, v in sorted(codes.items())) or "none")
    table.row("clients", "connections cut by the SIGKILL (in flight on the killed replica)",
              f"{len(killed_resets)} ({sum(1 for s in killed_resets if s.status == 200)} mid-stream, "
              f"{sum(s.content_chunks for s in killed_resets)} content chunks received)")
    unclean_shown = [(s.incarnation, s.kind, s.ending, s.detail + when(s)) for s in unclean[:5]]
    table.row("clients", "any other ending than a complete reply, a clean error or a clean cut",
              f"{len(unclean)}" + (f": {unclean_shown}" if unclean else ""), not unclean)
    table.row("clients", f"longest request (deadline {DEADLINE_SECS} s)", f"{longest:.2f} s",
              longest <= DEADLINE_SECS + HANG_SLACK_SECS)

    # Ledger 1: the request log.
    logs = {name: read_log(life.proc.out_path) for name, life in lives.items()}
    all_lines = [(name, line) for name, lines in logs.items() for line in lines]
    rids = collections.Counter(line["request_id"] for _, line in all_lines)
    sessions = collections.Counter(line.get("session_id") for _, line in all_lines)
    twice = [k for k, v in rids.items() if v > 1] + [k for k, v in sessions.items() if v > 1]
    strangers = [line["request_id"] for _, line in all_lines
                 if line.get("session_id") not in by_session]
    line_of = {line.get("session_id"): (name, line) for name, line in all_lines}
    reached = [s for s in sent if s.ending != "refused"]
    missing = [s for s in reached if s.session not in line_of]
    missing_live = [s for s in missing if s.incarnation not in killed]
    missing_killed = [s for s in missing if s.incarnation in killed]
    refused_logged = [s for s in sent if s.ending == "refused" and s.session in line_of]
    wrong_place = [s for s in sent if s.session in line_of and line_of[s.session][0] != s.incarnation]
    table.row("request log", "lines (per replica life)",
              f"{len(all_lines)} (" + ", ".join(f"{n} {len(v)}" for n, v in sorted(logs.items())) + ")")
    table.row("request log", "request ids or client session ids logged twice", str(len(twice)),
              not twice)
    table.row("request log", "lines of requests no client sent", str(len(strangers)), not strangers)
    table.row("request log", "refused at connect (replica down): logged", f"{len(refused_logged)} of "
              f"{endings['refused']}", not refused_logged)
    table.row("request log", "requests that reached a live replica life, not logged",
              str(len(missing_live)), not missing_live)
    table.row("request log", "requests in flight on the killed life, not logged (lost with it)",
              f"{len(missing_killed)} (client saw: "
              + ", ".join(f"{k} {v}" for k, v in
                          sorted(collections.Counter(s.ending for s in missing_killed).items()))
              + ")",
              all(in_flight_on_killed(s) for s in missing_killed))
    table.row("request log", "logged by another replica life than the one asked", str(len(wrong_place)),
              not wrong_place)

    # Client view vs the line: status, ending, request id, billed cost.
    disagree = []
    for s in sent:
        if s.session not in line_of or s.ending in ("reset", "refused", "timeout"):
            continue
        _, line = line_of[s.session]
        want_outcome = {
            ("complete", "stop"): "completed", ("complete", "length"): "cut_token_cap",
        }.get((s.ending, s.finish))
        problems = []
        if line["status"] != s.status:
            problems.append(f"status {line['status']} vs {s.status}")
        if s.request_id and line["request_id"] != s.request_id:
            problems.append("request id")
        if s.ending in ("cut", "error") and line.get("error_code") != s.code:
            problems.append(f"code {line.get('error_code')} vs {s.code}")
        if want_outcome and line["outcome"] != want_outcome:
            problems.append(f"outcome {line['outcome']} vs {want_outcome}")
        if s.cost_micro is not None and usd_to_micro(line["cost_usd"]) != s.cost_micro:
            problems.append(f"cost {line['cost_usd']} vs {s.cost_micro}")
        if problems:
            disagree.append((s.session, problems))
    with_cost = sum(1 for s in sent if s.cost_micro is not None)
    table.row("request log", "lines that disagree with what the client saw (status, code, outcome, "
              f"id; cost for the {with_cost} replies that carried usage.cost)",
              str(len(disagree)) + (f": {disagree[:3]}" if disagree else ""), not disagree)
    bad_price = [line["request_id"] for _, line in all_lines
                 if usd_to_micro(line["cost_usd"]) != cost_micro(line["input_tokens"], line["output_tokens"])]
    table.row("request log", "lines whose cost_usd is not their tokens at mock-gpt's price",
              str(len(bad_price)), not bad_price)

    # Ledger 2: the metrics, per replica life.
    for name, lines in sorted(logs.items()):
        logged = sum(usd_to_micro(line["cost_usd"]) for line in lines)
        if name in killed:
            last = lives[name].last_scrape
            got = usd_to_micro(last["cost"]) if last else None
            table.row("metrics", f"{name}: cost counter (SIGKILLed: its counters died with it)",
                      f"last scrape before the kill {micro_str(got) if got is not None else 'none'} "
                      f"<= logged {micro_str(logged)}", got is None or got <= logged)
            continue
        m = final.get(name)
        if m is None:
            table.row("metrics", f"{name}: scrape at the end", "failed", False)
            continue
        got = usd_to_micro(m["cost"])
        table.row("metrics", f"{name}: tollgate_cost_usd_total = sum of logged cost_usd",
                  f"{micro_str(got)} = {micro_str(logged)}", got == logged)
        table.row("metrics", f"{name}: tollgate_requests_total = lines", f"{m['requests']} = {len(lines)}",
                  m["requests"] == len(lines))
        per_user = collections.Counter()
        for line in lines:
            per_user[line["user_id"]] += usd_to_micro(line["cost_usd"])
        off = [u for u in users if usd_to_micro(m["user_cost"].get(u, 0)) != per_user[u]]
        table.row("metrics", f"{name}: tollgate_user_cost_usd_total per user = logged", f"{len(users) - len(off)} of {len(users)} users equal",
                  not off)
        table.row("metrics", f"{name}: tollgate_redis_state_lost_total, persistence",
                  f"{m['state_lost']}, {m['persistence']}", m["state_lost"] == 0 and m["persistence"] == "aof")
    for name in sorted(lives):
        m = lives[name].last_scrape if name in killed else final.get(name)
        if m:
            table.row("metrics", f"{name}: failed Redis calls (tollgate_redis_errors_total by op"
                      + (", last scrape" if name in killed else "") + ")",
                      ", ".join(f"{k} {v}" for k, v in sorted(m.get("redis_errors_by_op", {}).items()))
                      or "none")

    # Ledger 3: Redis.
    rd = Resp(redis_port)
    logged_rids = {line["request_id"] for _, line in all_lines}
    windows = {name: redis_windows(life.proc.out_path.replace(".log", ".err"))
               for name, life in lives.items()}
    table.row("redis", "circuit-open windows per replica life (own log); settlements replayed",
              ", ".join(f"{n}: {len(w)} window(s) {sum((c or time.time()) - o for o, c in w):.1f} s, "
                        f"{r} replayed" for n, (w, r) in sorted(windows.items())))
    leases = {}
    total = collections.Counter()
    for u in users:
        spend = tokens = 0
        for key in rd.scan(f"tollgate:{{{u}}}:day:*"):
            spend += int(rd.cmd("HGET", key, "spend") or 0)
            tokens += int(rd.cmd("HGET", key, "tokens") or 0)
        lines = [line for _, line in all_lines if line["user_id"] == u]
        logged = sum(usd_to_micro(line["cost_usd"]) for line in lines)
        logged_tokens = sum(line["total_tokens"] for line in lines)
        lease_cost = lease_tokens = 0
        settled_unlogged = 0
        for key in rd.scan(f"tollgate:{{{u}}}:done:*"):
            rid = key.split(":done:", 1)[1]
            value = rd.cmd("GET", key) or ""
            if value.startswith("lease,"):
                _, i, o = value.split(",")
                leases[rid] = (int(i), int(o))
                lease_cost += cost_micro(int(i), int(o))
                lease_tokens += int(i) + int(o)
            elif rid not in logged_rids:
                settled_unlogged += 1
        unsettled = [line["request_id"] for line in lines
                     if usd_to_micro(line["cost_usd"]) > 0
                     and rd.cmd("GET", f"tollgate:{{{u}}}:done:{line['request_id']}") != "1"]
        total.update(spend=spend, logged=logged, lease=lease_cost, tokens=tokens,
                     logged_tokens=logged_tokens, lease_tokens=lease_tokens,
                     unsettled=len(unsettled), settled_unlogged=settled_unlogged)
        total["users_exact"] += spend == logged + lease_cost and tokens == logged_tokens + lease_tokens

    def in_window(name, wall, after=0.0):
        return any(o <= wall <= (c or time.time()) + after for o, c in windows[name][0])

    # A life killed inside one of its outage windows takes its journal (settlements not yet
    # replayed) with it: only then may Redis hold less than the log, by the documented outage
    # allowance (per user and replica).
    journal_lost = [n for n in killed if in_window(n, time.time() - time.monotonic() + kill_at[n])]
    allowance = usd_to_micro(OUTAGE_ALLOWANCE_USD) * len(users) * len(journal_lost)
    diff = total["spend"] - total["logged"] - total["lease"]
    table.row("redis", "day spend = logged cost + lease charges of the killed life's requests "
              f"(allowed difference {micro_str(allowance)}: killed during an outage {journal_lost or 'no'})",
              f"{micro_str(total['spend'])} = {micro_str(total['logged'])} + "
              f"{micro_str(total['lease'])} ({len(leases)} leases); difference {micro_str(diff)}",
              -allowance <= diff <= 0 if allowance else diff == 0)
    tdiff = total["tokens"] - total["logged_tokens"] - total["lease_tokens"]
    table.row("redis", "day tokens = logged total_tokens + leased tokens",
              f"{total['tokens']} = {total['logged_tokens']} + {total['lease_tokens']}; "
              f"difference {tdiff}", bool(allowance) or tdiff == 0)
    table.row("redis", "users whose spend and tokens match exactly",
              f"{total['users_exact']} of {len(users)}",
              bool(allowance) or total["users_exact"] == len(users))
    table.row("redis", "billed lines without a settlement marker (done:<request id>)",
              str(total["unsettled"]), total["unsettled"] == 0)
    table.row("redis", "settlements whose request has no line (settled, then the line died "
              "with the replica)", str(total["settled_unlogged"]))
    lease_logged = [rid for rid in leases if rid in logged_rids]
    table.row("redis", "lease charges for requests that were also logged", str(len(lease_logged)),
              not lease_logged)
    not_open = [u for u in users if open_after[u] != 0]
    table.row("redis", f"requests still open {LEASE_SECS} s after the kill (leases ended)",
              f"{len(users) - len(not_open)} of {len(users)} users at 0", not not_open)

    # The killed life's unlogged requests, one by one: each either had its lease charged, or
    # was admitted by the replica alone during an outage (no lease in Redis: it is billed
    # nowhere, within the outage allowance), or never got as far as an answer.
    lost = [s for s in missing_killed]
    leased = [s for s in lost if s.request_id in leases]
    local = [s for s in lost if s.request_id and s.request_id not in leases
             and in_window(s.incarnation, s.wall, after=0.5)]
    unexplained = [s for s in lost if s.request_id and s.request_id not in leases and s not in local]
    headless = [s for s in lost if not s.request_id]
    headless_leases = len(leases) - len(leased)
    table.row("redis", "killed life's unlogged requests: lease charged / admitted during an outage "
              "(no lease: billed nowhere) / no answer began / unexplained",
              f"{len(leased)} / {len(local)} / {len(headless)} (leases of requests no client "
              f"knew: {headless_leases}) / {len(unexplained)}", not unexplained)
    received = sum(s.content_chunks for s in leased)
    charged = sum(leases[s.request_id][1] for s in leased)
    table.row("redis", "  leased: output tokens their clients received / charged by the lease "
              "(metered before the kill)", f"{received} / {charged} "
              f"(+ {sum(leases[s.request_id][0] for s in leased)} input tokens charged)")
    if local:
        unbilled = collections.Counter()
        for s in local:
            unbilled[s.user] += cost_micro(0, s.content_chunks)
        table.row("redis", "  admitted during an outage: output its clients received, billed "
                  "nowhere (bound: the outage allowance, per user and replica)",
                  f"{sum(s.content_chunks for s in local)} tokens, "
                  f"{micro_str(sum(unbilled.values()))} + their input",
                  max(unbilled.values()) <= usd_to_micro(OUTAGE_ALLOWANCE_USD))
    rd.cmd("QUIT")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
