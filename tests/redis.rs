//! Redis mode, black-box: real `tollgate` processes (two replicas where it matters) sharing one
//! real `redis-server`, each with its built-in mock provider. Limits that hold across replicas,
//! leases that free a dead replica's slots, the outage policy while Redis is stopped or hung,
//! recovery with every settlement counted once, and restarts that keep users' state. The limit
//! tests also run against a real three-master Redis Cluster, and [`redis_cluster`] holds what
//! only a cluster has: slots that move and masters that fail over under load, checks on every
//! master.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tollgate_testkit::process::{self, Running};
use tollgate_testkit::redis::{RedisServer, SharedRedis};
use tollgate_testkit::redis_cluster::RedisCluster;

mod redis_cluster;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const SECRET: &str = "redis-test-secret";
/// Longest a test waits for any one answer: far below the 30 s deadline, so a request that
/// hangs on a stopped or hung Redis fails the test.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

fn env_for(redis: &dyn SharedRedis, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("RUST_LOG", "info"),
        ("TOLLGATE_JWT_SECRET", SECRET),
        ("TOLLGATE_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE__SERVER__WORKERS", "2"),
        // `/metrics` on the (loopback) main listener: two replicas run side by side.
        ("TOLLGATE__SERVER__METRICS_LISTEN", ""),
        ("TOLLGATE__USERS__SNAPSHOT_PATH", ""),
        ("TOLLGATE__MOCK__FIRST_TOKEN_DELAY_MS", "0"),
        // Generous per-call timeout: a busy CI machine must not trip the outage path where a
        // test asserts shared (exact) limits. Outage tests lower it.
        ("TOLLGATE__REDIS__OP_TIMEOUT_MS", "2000"),
        ("TOLLGATE__REDIS__PROBE_INTERVAL_MS", "200"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("TOLLGATE_REDIS_URL".into(), redis.url()));
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn gateway(env: &[(String, String)]) -> (Running, String) {
    let mut command = Command::new(BIN);
    command.env_clear().envs(env.iter().cloned());
    command.stdout(Stdio::null());
    process::start(command, "tollgate is serving", Some("gateway"))
}

fn token(user: &str) -> String {
    token_on_plan(user, "pro")
}

fn token_on_plan(user: &str, plan: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--sub", user, "--plan", plan, "--ttl", "900"])
        .env_clear()
        .env("TOLLGATE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One HTTP/1.1 exchange (Connection: close): status, lower-cased headers, de-chunked body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn exchange(listen: &str, head: &str, body: &str) -> Answer {
    let mut socket = TcpStream::connect(listen).unwrap();
    socket.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let request = format!(
        "{head}\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    socket
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("no complete answer within {ANSWER_WITHIN:?}: {e}"));
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

fn chat(listen: &str, token: &str, body: &str) -> Answer {
    exchange(
        listen,
        &format!("POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer {token}"),
        body,
    )
}

fn small_request() -> &'static str {
    r#"{"model":"mock-gpt","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#
}

fn usage(listen: &str, token: &str) -> serde_json::Value {
    let answer = exchange(
        listen,
        &format!("GET /v1/usage HTTP/1.1\r\nAuthorization: Bearer {token}"),
        "",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["usage"].clone()
}

fn get(listen: &str, path: &str) -> Answer {
    exchange(listen, &format!("GET {path} HTTP/1.1"), "")
}

/// Waits (bounded) until `/readyz` answers `status`.
fn wait_ready(listen: &str, status: u16) -> Answer {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = get(listen, "/readyz");
        if answer.status == status {
            return answer;
        }
        assert!(
            Instant::now() < until,
            "/readyz stayed {}: {}",
            answer.status,
            answer.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No key tollgate wrote lives forever.
fn assert_every_key_expires(redis: &dyn SharedRedis) {
    let keys = redis.keys("tollgate:*");
    assert!(!keys.is_empty(), "tollgate wrote no keys");
    for key in &keys {
        let ttl: i64 = redis.cli(&["PTTL", key]).parse().unwrap();
        assert!(ttl > 0, "{key} has no expiry (PTTL {ttl})");
    }
}

#[test]
fn thirty_requests_across_two_replicas_admit_exactly_the_limit_of_ten() {
    thirty_requests_across_two_replicas(&RedisServer::start());
}

#[test]
fn thirty_requests_across_two_replicas_admit_exactly_the_limit_of_ten_on_a_cluster() {
    thirty_requests_across_two_replicas(&RedisCluster::start(3));
}

fn thirty_requests_across_two_replicas(redis: &dyn SharedRedis) {
    let env = env_for(redis, &[("TOLLGATE__RATE__MAX_CONCURRENT_STREAMS", "100")]);
    let (_a, a) = gateway(&env);
    let (_b, b) = gateway(&env);
    let token = token("ana");
    let barrier = Arc::new(Barrier::new(30));
    let answers: Vec<(usize, u16, String)> = (0..30)
        .map(|i| {
            let (listen, token, barrier) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                token.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let answer = chat(&listen, &token, small_request());
                let code = if answer.status == 200 {
                    String::new()
                } else {
                    answer.error_code()
                };
                (i % 2, answer.status, code)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let admitted = answers.iter().filter(|(_, s, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(_, s, _)| *s != 200).collect();
    assert_eq!(admitted, 10, "{answers:?}");
    assert_eq!(refused.len(), 20);
    assert!(refused
        .iter()
        .all(|(_, s, code)| *s == 429 && code == "requests_per_minute"));
    assert_eq!(redis.cli(&["ZCARD", "tollgate:{ana}:minute"]), "10");
    // Both replicas report the same shared windows.
    let (ua, ub) = (usage(&a, &token), usage(&b, &token));
    assert_eq!(ua, ub);
    assert_eq!(ua["requests_per_minute"]["used"], 10);
    assert_eq!(ua["requests"], 10);
    assert_eq!(ua["output_tokens"], 50);
    assert_every_key_expires(redis);
}

/// A stream's data events.
fn events(answer: &Answer) -> Vec<&str> {
    answer
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

/// Output tokens a stream carried (mock words are one token each).
fn relayed_tokens(answer: &Answer) -> u64 {
    events(answer)
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .map(|c| c.split_whitespace().count() as u64)
        .sum()
}

/// Asserts a stream ended with `budget_exceeded` + `[DONE]`.
fn assert_cut_at_the_cap(stream: &Answer) {
    assert_eq!(stream.status, 200, "{}", stream.body);
    let events = events(stream);
    assert_eq!(events.last(), Some(&"[DONE]"), "{}", stream.body);
    let error: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], "budget_exceeded", "{}", stream.body);
}

/// Runs `n` streams of `user` at once, on `replicas` in turn; returns them when all ended.
fn concurrent_streams(replicas: &[&str], user: &str, n: usize) -> Vec<Answer> {
    let token = token(user);
    let body = r#"{"model":"mock-gpt:tokens=1000,tps=400","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    let start = Arc::new(Barrier::new(n));
    (0..n)
        .map(|i| {
            let listen = replicas[i % replicas.len()].to_string();
            let (token, start) = (token.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                chat(&listen, &token, body)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect()
}

/// Streams of one user against a daily cap reached mid-stream, in Redis mode: one stream, five
/// at once on one replica, four over two replicas. Every stream admitted is cut with
/// `budget_exceeded` at the token that would cross the cap (one asking while the others'
/// allowances hold the headroom is refused `daily_budget`); the spend billed is within the cap
/// (less than a token below it), and the output billed is the output the clients got.
#[test]
fn streams_of_one_user_are_cut_at_the_daily_cap_exactly_on_one_replica_and_on_two() {
    streams_cut_at_the_daily_cap(&RedisServer::start());
}

#[test]
fn streams_of_one_user_are_cut_at_the_daily_cap_exactly_on_a_cluster() {
    streams_cut_at_the_daily_cap(&RedisCluster::start(3));
}

fn streams_cut_at_the_daily_cap(redis: &dyn SharedRedis) {
    // mock-gpt output costs 10 micro-USD a token: the cap is about 200 output tokens in all.
    let cap_micro = 2_000u64;
    let env = env_for(
        redis,
        &[
            ("TOLLGATE__COST__MAX_DAILY_USD", "0.002"),
            ("TOLLGATE__RATE__MAX_CONCURRENT_STREAMS", "10"),
        ],
    );
    let (_a, a) = gateway(&env);
    let (_b, b) = gateway(&env);
    for (user, replicas, n) in [
        ("ana", vec![a.as_str()], 1),
        ("bea", vec![a.as_str()], 5),
        ("cai", vec![a.as_str(), b.as_str()], 4),
    ] {
        let all = concurrent_streams(&replicas, user, n);
        // A stream that asks while the others' open allowances hold the whole headroom is
        // refused, as designed (how many do depends on timing: on a loaded machine the first
        // ones may relay before the last ones ask). Every stream admitted is cut at the cap.
        let (streams, refused): (Vec<Answer>, Vec<Answer>) =
            all.into_iter().partition(|s| s.status == 200);
        assert!(!streams.is_empty(), "{user}: no stream admitted");
        for r in &refused {
            assert_eq!(r.status, 429, "{}", r.body);
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["error"]["code"], "daily_budget", "{}", r.body);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("in flight"),
                "{}",
                r.body
            );
        }
        streams.iter().for_each(assert_cut_at_the_cap);
        let usage = usage(&b, &token(user));
        let spent_micro = (usage["daily_usd"]["used_usd"].as_f64().unwrap() * 1e6).round() as u64;
        assert!(
            spent_micro <= cap_micro && spent_micro > cap_micro - 10,
            "{user}: spent {spent_micro} micro-USD against a cap of {cap_micro}"
        );
        let relayed: u64 = streams.iter().map(relayed_tokens).sum();
        assert_eq!(
            usage["output_tokens"], relayed,
            "{user}: billed what was relayed"
        );
        assert_eq!(usage["open_requests"], 0);
    }
    let next = chat(&b, &token("cai"), small_request());
    assert_eq!(next.status, 429);
    assert_eq!(next.error_code(), "daily_budget");
    // Both replicas saw the 80 % threshold pass for cai; exactly one alert per user went out.
    let alerts = || {
        [&a, &b]
            .iter()
            .map(|l| metric(l, "tollgate_budget_alerts_total{window=\"daily\"}").unwrap_or(0.0))
            .sum::<f64>()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while alerts() < 3.0 {
        assert!(
            Instant::now() < until,
            "not every user's daily alert went out"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(alerts(), 3.0);
    assert_every_key_expires(redis);
}

/// The organisation cap, shared by every replica through one counter in Redis: six users on two
/// replicas stream at once into a cap reached mid-stream. Every stream is cut with
/// `budget_exceeded`; the organisation's total billed is within the cap (less than a token
/// below it), the counter in Redis holds exactly what was billed, and every user was billed
/// what they got.
#[test]
fn six_users_on_two_replicas_are_cut_at_the_organisation_cap_exactly() {
    six_users_cut_at_the_organisation_cap(&RedisServer::start());
}

#[test]
fn six_users_on_two_replicas_are_cut_at_the_organisation_cap_exactly_on_a_cluster() {
    six_users_cut_at_the_organisation_cap(&RedisCluster::start(3));
}

fn six_users_cut_at_the_organisation_cap(redis: &dyn SharedRedis) {
    // mock-gpt output costs 10 micro-USD a token: about 300 output tokens for everybody.
    let cap_micro = 3_000u64;
    let env = env_for(redis, &[("TOLLGATE__COST__MAX_ORG_DAILY_USD", "0.003")]);
    let (_a, a) = gateway(&env);
    let (_b, b) = gateway(&env);
    let users = ["oda", "oli", "ora", "oscar", "otto", "ozzy"];
    let start = Arc::new(Barrier::new(users.len()));
    let streams: Vec<Answer> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let listen = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (token, start) = (token(user), start.clone());
            std::thread::spawn(move || {
                start.wait();
                chat(
                    &listen,
                    &token,
                    r#"{"model":"mock-gpt:tokens=1000,tps=400","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#,
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    streams.iter().for_each(assert_cut_at_the_cap);
    let mut billed = 0;
    for (user, stream) in users.iter().zip(&streams) {
        let usage = usage(&a, &token(user));
        billed += (usage["daily_usd"]["used_usd"].as_f64().unwrap() * 1e6).round() as u64;
        assert_eq!(
            usage["output_tokens"],
            relayed_tokens(stream),
            "{user}: billed what it got"
        );
    }
    assert!(
        billed <= cap_micro && billed > cap_micro - 10,
        "billed {billed} micro-USD against an organisation cap of {cap_micro}"
    );
    // The organisation's counter: what was billed, nothing open or promised.
    let key = redis.keys("tollgate:org:*");
    // The day's hash and the leases (a sorted set, emptied: gone).
    assert_eq!(key.len(), 1, "{key:?}");
    let field = |name: &str| redis.cli(&["HGET", &key[0], name]);
    assert_eq!(field("spend"), billed.to_string());
    assert_eq!((field("promised"), field("open")), ("0".into(), "0".into()));
    // Nobody else gets in, on either replica.
    for listen in [&a, &b] {
        let refused = chat(listen, &token("pia"), small_request());
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.error_code(), "org_daily_budget");
    }
    assert_every_key_expires(redis);
}

#[test]
fn a_slot_held_by_a_killed_replica_frees_itself_after_the_lease() {
    let redis = RedisServer::start();
    let env = env_for(
        &redis,
        &[
            ("TOLLGATE__RATE__MAX_CONCURRENT_STREAMS", "1"),
            ("TOLLGATE__LIMITS__DEADLINE_SECS", "3"),
            ("TOLLGATE__REDIS__LEASE_SECS", "4"),
            // Allowances of 16 tokens: the stream reports every 16.
            ("TOLLGATE__RELAY__METER_BATCH_MAX_TOKENS", "16"),
        ],
    );
    let (mut a, a_listen) = gateway(&env);
    let (_b, b) = gateway(&env);
    let token = token("cy");

    // Replica A streams slowly; read until at least two meter batches went out, then kill A.
    let body = r#"{"model":"mock-gpt:tokens=1000,tps=50","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut socket = TcpStream::connect(&a_listen).unwrap();
    socket.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("data: ").count() < 40 {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    a.0.kill().unwrap();
    a.0.wait().unwrap();

    // The dead replica's slot still counts...
    let refused = chat(&b, &token, small_request());
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.error_code(), "concurrent_streams");
    // ...until its lease ends; then the other replica admits again.
    let until = Instant::now() + Duration::from_secs(15);
    let admitted = loop {
        let answer = chat(&b, &token, small_request());
        if answer.status == 200 {
            break answer;
        }
        assert_eq!(answer.error_code(), "concurrent_streams");
        assert!(Instant::now() < until, "the slot never freed");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(admitted.json()["usage"]["completion_tokens"], 5);
    // What the dead replica had reported (whole allowances of 16) was charged, as a cut request
    // (not the allowance it held when it died: it may or may not have relayed it).
    let u = usage(&b, &token);
    let dead_output = u["output_tokens"].as_u64().unwrap() - 5;
    assert!(
        dead_output >= 16 && dead_output % 16 == 0,
        "charged {dead_output}"
    );
    assert_eq!(u["cut_requests"], 1);
    assert_eq!(u["requests"], 2);
    assert_eq!(u["open_requests"], 0);
    assert_every_key_expires(&redis);
}

fn metric(listen: &str, line_start: &str) -> Option<f64> {
    get(listen, "/metrics")
        .body
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends small requests until one is refused; returns how many were admitted and the refusal.
fn admit_until_refused(listen: &str, token: &str) -> (u64, Answer) {
    for admitted in 0..100 {
        let answer = chat(listen, token, small_request());
        if answer.status != 200 {
            return (admitted, answer);
        }
        assert_eq!(answer.json()["usage"]["completion_tokens"], 5);
    }
    panic!("100 requests admitted during an outage");
}

#[test]
fn redis_stopped_mid_load_follows_the_outage_policy_and_recovery_counts_everything_once() {
    let mut redis = RedisServer::start();
    let env = env_for(
        &redis,
        &[
            ("TOLLGATE__REDIS__OP_TIMEOUT_MS", "300"),
            ("TOLLGATE__REDIS__BREAKER_FAILURES", "2"),
            ("TOLLGATE__REDIS__EXPECTED_REPLICAS", "2"),
            ("TOLLGATE__REDIS__OUTAGE_ALLOWANCE_TOKENS", "60"),
            ("TOLLGATE__RATE__REQUESTS_PER_MINUTE", "100"),
        ],
    );
    let (_a, a) = gateway(&env);
    let (_b, b) = gateway(&env);
    let token = token("dee");
    for listen in [&a, &b] {
        assert_eq!(chat(listen, &token, small_request()).status, 200);
    }
    assert_eq!(get(&a, "/readyz").json()["redis"], "ok");

    redis.stop();
    // Each replica admits on its own up to the token allowance, then fails closed.
    let mut during = 0;
    for listen in [&a, &b] {
        let (admitted, refusal) = admit_until_refused(listen, &token);
        assert!(admitted >= 1, "the allowance admitted nothing");
        assert_eq!(refusal.status, 503, "{}", refusal.body);
        assert_eq!(refusal.error_code(), "state_unavailable");
        assert_eq!(refusal.header("retry-after"), Some("5"));
        assert_ne!(refusal.header("x-should-retry"), Some("false"));
        during += admitted;
        let ready = wait_ready(listen, 503);
        assert_eq!(ready.json()["redis"], "unavailable");
        assert_eq!(metric(listen, "tollgate_redis_up "), Some(0.0));
        assert!(
            metric(
                listen,
                "tollgate_outage_decisions_total{decision=\"fail_closed\"}"
            )
            .unwrap_or(0.0)
                >= 1.0
        );
    }
    // The per-user view needs Redis: a clear 503, not stale numbers.
    let usage_during = exchange(
        &a,
        &format!("GET /v1/usage HTTP/1.1\r\nAuthorization: Bearer {token}"),
        "",
    );
    assert_eq!(usage_during.status, 503);

    redis.restart();
    for listen in [&a, &b] {
        assert_eq!(wait_ready(listen, 200).json()["redis"], "ok");
        assert_eq!(metric(listen, "tollgate_redis_journal_pending "), Some(0.0));
    }
    // Everything settled meanwhile is in Redis, counted once: 2 before, `during` in the outage.
    let u = usage(&b, &token);
    assert_eq!(u["requests"], 2 + during);
    assert_eq!(u["requests_per_day"]["used"], 2 + during);
    assert_eq!(u["output_tokens"], 5 * (2 + during));
    assert_eq!(u["open_requests"], 0);
    // And shared limits apply again.
    assert_eq!(chat(&a, &token, small_request()).status, 200);
    assert_every_key_expires(&redis);
}

#[test]
fn a_hung_redis_never_hangs_a_request_and_service_recovers_after_it() {
    let redis = RedisServer::start();
    let env = env_for(
        &redis,
        &[
            ("TOLLGATE__REDIS__OP_TIMEOUT_MS", "200"),
            ("TOLLGATE__REDIS__BREAKER_FAILURES", "3"),
        ],
    );
    let (_a, a) = gateway(&env);
    let token = token("eli");
    assert_eq!(chat(&a, &token, small_request()).status, 200);

    redis.pause();
    // Every request gets an answer (exchange() fails the test after 10 s; the deadline is 30 s).
    let statuses: Vec<u16> = (0..8)
        .map(|_| chat(&a, &token, small_request()).status)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&200),
        "the outage allowance admitted nothing"
    );
    assert_eq!(wait_ready(&a, 503).json()["redis"], "unavailable");
    let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;

    redis.resume();
    wait_ready(&a, 200);
    let u = usage(&a, &token);
    assert_eq!(u["requests"], 1 + admitted);
    assert_eq!(u["output_tokens"], 5 * (1 + admitted));
}

#[test]
fn a_restarted_gateway_in_redis_mode_keeps_windows_and_spend() {
    let redis = RedisServer::start();
    let env = env_for(&redis, &[]);
    let token = token("fay");
    let (mut first, listen) = gateway(&env);
    for _ in 0..3 {
        assert_eq!(chat(&listen, &token, small_request()).status, 200);
    }
    let before = usage(&listen, &token);
    // Even a crash loses nothing settled: it is all in Redis.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let (_second, listen) = gateway(&env);
    let after = usage(&listen, &token);
    for key in ["requests", "input_tokens", "output_tokens"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    for window in ["requests_per_minute", "requests_per_day", "tokens_per_day"] {
        assert_eq!(after[window]["used"], before[window]["used"], "{window}");
    }
    assert_eq!(
        after["daily_usd"]["used_usd"],
        before["daily_usd"]["used_usd"]
    );
    assert_eq!(after["requests_per_minute"]["used"], 3);
}

#[test]
fn streams_running_when_redis_stops_finish_and_are_billed_exactly_once_after_it_returns() {
    let mut redis = RedisServer::start();
    let env = env_for(
        &redis,
        &[
            ("TOLLGATE__REDIS__OP_TIMEOUT_MS", "300"),
            ("TOLLGATE__REDIS__BREAKER_FAILURES", "2"),
            // Allowances of 16 tokens: meter calls fail mid-stream, and the replica's own book
            // takes the streams over (granting allowances from the outage allowance).
            ("TOLLGATE__RELAY__METER_BATCH_MAX_TOKENS", "16"),
        ],
    );
    let (_a, a) = gateway(&env);
    let (_b, b) = gateway(&env);
    let token = token("gus");
    // Two slow streams (one per replica) of exactly 200 output tokens each (the cap).
    let body = r#"{"model":"mock-gpt:tokens=400,tps=100","stream":true,"max_tokens":200,"messages":[{"role":"user","content":"hi"}]}"#;
    let streams: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|listen| {
            let token = token.clone();
            std::thread::spawn(move || chat(&listen, &token, body))
        })
        .collect();
    // Stop Redis once both streams are under way: each has an open record in Redis that its
    // replica has already metered into (field 7 of the record).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let open = redis.cli(&["HVALS", "tollgate:{gus}:open"]);
        let metered = open
            .lines()
            .filter(|record| record.split(',').nth(6).is_some_and(|m| m != "0"))
            .count();
        if metered == 2 {
            break;
        }
        assert!(Instant::now() < until, "the streams never started: {open}");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.stop();
    for stream in streams {
        let stream = stream.join().unwrap();
        assert_eq!(stream.status, 200);
        assert!(
            stream.body.contains(r#""finish_reason":"length""#),
            "the stream did not run to its cap: {}",
            stream.body
        );
        assert!(stream.body.ends_with("data: [DONE]\n\n"));
    }
    redis.restart();
    // The settlements failed while Redis was down; each replica's probe replays its journal.
    for listen in [&a, &b] {
        wait_ready(listen, 200);
        let until = Instant::now() + Duration::from_secs(15);
        while metric(listen, "tollgate_redis_journal_pending ") != Some(0.0) {
            assert!(Instant::now() < until, "the journal was never replayed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let u = usage(&a, &token);
    assert_eq!(u["requests"], 2);
    assert_eq!(u["output_tokens"], 400);
    assert_eq!(
        u["tokens_per_day"]["used"],
        u["input_tokens"].as_u64().unwrap() + 400
    );
    assert_eq!(u["open_requests"], 0);
    assert_every_key_expires(&redis);
}

#[test]
fn refusals_only_time_lifts_are_repeated_without_asking_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plans.toml");
    std::fs::write(
        &config,
        "[plans.enterprise.rate]\nrequests_per_minute = 20\n",
    )
    .unwrap();
    let env = env_for(&redis, &[("TOLLGATE_CONFIG", config.to_str().unwrap())]);
    let (_a, a) = gateway(&env);
    let token = token("hal");
    for _ in 0..10 {
        assert_eq!(chat(&a, &token, small_request()).status, 200);
    }
    let calls = || redis.command_calls().get("evalsha").copied().unwrap_or(0);
    let first = chat(&a, &token, small_request());
    assert_eq!(first.error_code(), "requests_per_minute");
    let before = calls();
    for _ in 0..20 {
        let again = chat(&a, &token, small_request());
        assert_eq!(again.status, 429);
        assert_eq!(again.error_code(), "requests_per_minute");
        let retry: u64 = again.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(calls(), before, "the repeated refusals reached Redis");
    // The user's view (one script call) still shows exactly the ten admitted.
    assert_eq!(usage(&a, &token)["requests_per_minute"]["used"], 10);
    // The same user on a plan with a higher limit is not refused from the cache.
    let upgraded = token_on_plan("hal", "enterprise");
    assert_eq!(chat(&a, &upgraded, small_request()).status, 200);
}

#[test]
fn a_fallback_in_redis_mode_is_billed_once_at_the_price_of_the_model_that_served() {
    let redis = RedisServer::start();
    let env = env_for(
        &redis,
        &[
            // `primary` is overloaded (529) and falls back to `backup`, priced 1 / 2 USD per
            // million tokens (primary: 1000 / 1000, which would show at once).
            (
                "TOLLGATE__PRICING__PRIMARY__INPUT_PER_MILLION_USD",
                "1000.0",
            ),
            (
                "TOLLGATE__PRICING__PRIMARY__OUTPUT_PER_MILLION_USD",
                "1000.0",
            ),
            (
                "TOLLGATE__PRICING__PRIMARY__UPSTREAM_MODEL",
                "mock-gpt:fault=status@529",
            ),
            ("TOLLGATE__PRICING__PRIMARY__FALLBACK", r#"["backup"]"#),
            ("TOLLGATE__PRICING__BACKUP__INPUT_PER_MILLION_USD", "1.0"),
            ("TOLLGATE__PRICING__BACKUP__OUTPUT_PER_MILLION_USD", "2.0"),
            ("TOLLGATE__PRICING__BACKUP__UPSTREAM_MODEL", "mock-gpt"),
        ],
    );
    let (_replica, listen) = gateway(&env);
    let alice = token("fallback-alice");
    let answer = chat(
        &listen,
        &alice,
        r#"{"model":"primary","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let reply = answer.json();
    let (input, output) = (
        reply["usage"]["prompt_tokens"].as_u64().unwrap(),
        reply["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    let micro = (input * 1_000 + output * 2_000).div_ceil(1000);
    assert_eq!(reply["usage"]["cost"], micro as f64 / 1e6, "{reply}");
    let usage = usage(&listen, &alice);
    assert_eq!(usage["requests"], 1, "{usage}");
    assert_eq!(usage["open_requests"], 0, "{usage}");
    assert_eq!(
        usage["daily_usd"]["used_usd"],
        micro as f64 / 1e6,
        "Redis billed the backup's price: {usage}"
    );
}

#[test]
fn a_redis_without_persistence_is_reported_and_keys_lost_in_its_restart_are_counted() {
    let mut redis = RedisServer::start();
    // From here on nothing reaches the append-only file: a restart loses what follows.
    redis.cli(&["CONFIG", "SET", "appendonly", "no"]);
    redis.cli(&["CONFIG", "SET", "save", ""]);
    let env = env_for(&redis, &[("TOLLGATE__REDIS__OP_TIMEOUT_MS", "300")]);
    let (_a, a) = gateway(&env);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = wait_ready(&a, 200).json();
        if ready["redis_persistence"] == "none" {
            break;
        }
        assert!(Instant::now() < until, "/readyz: {ready}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(&a, "tollgate_redis_persistence{mode=\"none\"} "),
        Some(1.0)
    );
    assert_eq!(metric(&a, "tollgate_redis_state_lost_total "), Some(0.0));
    let token = token("forgotten");
    assert_eq!(chat(&a, &token, small_request()).status, 200);

    redis.kill();
    redis.restart();
    // Requests meet the broken connection; the probe task then finds tollgate's keys gone.
    let until = Instant::now() + Duration::from_secs(15);
    while metric(&a, "tollgate_redis_state_lost_total ") != Some(1.0) {
        assert!(Instant::now() < until, "the lost keys were never counted");
        let _ = chat(&a, &token, small_request());
        std::thread::sleep(Duration::from_millis(100));
    }
}

const ADMIN_KEY: &str = "redis-admin-test-key-5c1e";

fn admin(listen: &str, method: &str, path: &str, body: &str) -> Answer {
    exchange(
        listen,
        &format!("{method} /admin/v1{path} HTTP/1.1\r\nAuthorization: Bearer {ADMIN_KEY}"),
        body,
    )
}

/// An operator's settings live in Redis: an override set through one replica holds on the
/// other at the user's next request; a block set through one replica refuses on both and cuts
/// the user's open streams on both at their next report; both replicas list the same top
/// spenders; a reset through one replica frees the window on the other.
#[test]
fn operator_settings_reach_every_replica_and_a_block_cuts_streams_on_both() {
    operator_settings_on_two_replicas(&RedisServer::start());
}

/// The same on a three-master Redis Cluster (the settings hash shares the user's slot; the top
/// spenders are scanned on every master).
#[test]
fn operator_settings_reach_every_replica_and_a_block_cuts_streams_on_both_on_a_cluster() {
    operator_settings_on_two_replicas(&RedisCluster::start(3));
}

fn operator_settings_on_two_replicas(redis: &dyn SharedRedis) {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(ADMIN_KEY.as_bytes()));
    let env = env_for(
        redis,
        &[
            ("TOLLGATE__ADMIN__KEY_SHA256", hash.as_str()),
            // Streams report every 16 tokens: a block reaches them within a fraction of a second.
            ("TOLLGATE__RELAY__METER_BATCH_TOKENS", "16"),
            ("TOLLGATE__RELAY__METER_BATCH_MAX_TOKENS", "16"),
        ],
    );
    let (_a, a) = gateway(&env);
    let (_b, b) = gateway(&env);

    // Ten requests a minute by default; the eleventh on replica b is refused.
    let ida = token("ida");
    for _ in 0..10 {
        assert_eq!(chat(&b, &ida, small_request()).status, 200);
    }
    assert_eq!(
        chat(&b, &ida, small_request()).error_code(),
        "requests_per_minute"
    );
    let set = admin(
        &a,
        "PUT",
        "/users/ida/overrides",
        r#"{"rate":{"requests_per_minute":12}}"#,
    );
    assert_eq!(set.status, 200, "{}", set.body);
    // b learns of it at ida's next request: two more, then refused again.
    assert_eq!(chat(&b, &ida, small_request()).status, 200);
    assert_eq!(chat(&b, &ida, small_request()).status, 200);
    let refused = chat(&b, &ida, small_request());
    assert_eq!(refused.error_code(), "requests_per_minute");
    assert_eq!(refused.header("x-ratelimit-limit-requests"), Some("12"));
    let seen = admin(&b, "GET", "/users/ida", "");
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(
        seen.json()["settings"]["overrides"]["rate"]["requests_per_minute"],
        12
    );
    assert_eq!(seen.json()["usage"]["requests_per_minute"]["used"], 12);
    // A reset through a frees the minute on b.
    let reset = admin(&a, "POST", "/users/ida/reset", r#"{"windows":["minute"]}"#);
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert_eq!(chat(&b, &ida, small_request()).status, 200);

    // Two long streams of max, one per replica; blocked through a while they run.
    let max = token("max");
    let body = r#"{"model":"mock-gpt:tokens=1000,tps=200","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
    let streams: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|listen| {
            let max = max.clone();
            std::thread::spawn(move || chat(&listen, &max, body))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    let blocked = admin(&a, "POST", "/users/max/block", "");
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    let started = Instant::now();
    for stream in streams {
        let stream = stream.join().unwrap();
        assert_eq!(stream.status, 200);
        let events = events(&stream);
        assert_eq!(events.last(), Some(&"[DONE]"), "{}", stream.body);
        let error: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(error["error"]["code"], "user_blocked", "{}", stream.body);
        assert!(relayed_tokens(&stream) < 1000);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the streams ran on after the block"
    );
    for listen in [&a, &b] {
        let refused = chat(listen, &max, small_request());
        assert_eq!(
            (refused.status, refused.error_code().as_str()),
            (403, "user_blocked")
        );
    }
    // What max got was billed, once.
    let spent = usage(&a, &max);
    assert_eq!(spent["open_requests"], 0);
    assert!(spent["output_tokens"].as_u64().unwrap() > 0);
    let unblocked = admin(&b, "DELETE", "/users/max/block", "");
    assert_eq!(unblocked.status, 200);
    assert_eq!(chat(&a, &max, small_request()).status, 200);

    // Top spenders today, the same through either replica.
    let top_a = admin(&a, "GET", "/top?window=day&n=5", "");
    let top_b = admin(&b, "GET", "/top?window=day&n=5", "");
    assert_eq!(top_a.status, 200, "{}", top_a.body);
    assert_eq!(top_a.json(), top_b.json());
    let users: Vec<String> = top_a.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(users, ["max", "ida"]);
    let max_spend = usage(&b, &max)["daily_usd"]["used_usd"].clone();
    assert_eq!(top_a.json()["users"][0]["spend_usd"], max_spend);
    assert_every_key_expires(redis);
}
