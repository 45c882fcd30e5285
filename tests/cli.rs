//! Black-box tests of the compiled `tollgate` binary: the command line, config errors, and the
//! embedded default (built-in mock, no upstream, no Redis) serving a real stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn tollgate(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        // No state file in the working tree unless a test asks for one.
        .env("TOLLGATE__USERS__SNAPSHOT_PATH", "")
        // `/metrics` on a free loopback port: tests run gateways side by side.
        .env("TOLLGATE__SERVER__METRICS_LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A 10-minute `pro` token for `sub`, signed with `secret` (`tollgate token`).
fn pro_token(secret: &str, sub: &str) -> String {
    let out = tollgate(
        &["token", "--sub", sub, "--plan", "pro", "--ttl", "600"],
        &[("TOLLGATE_JWT_SECRET", secret)],
    )
    .output()
    .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn an_invalid_config_file_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\ndeadline_secs = \"soon\"\n").unwrap();
    let out = tollgate(&["serve", "--config", path.to_str().unwrap()], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.deadline_secs"), "{stderr}");
}

#[test]
fn an_invalid_environment_override_stops_start_up_naming_the_key() {
    let out = tollgate(&[], &[("TOLLGATE__UPSTREAM__IDLE_TIMEOUT_SECS", "0")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream.idle_timeout_secs"), "{stderr}");

    let out = tollgate(&[], &[("TOLLGATE_UPSTREAM_URL", "ftp://nowhere")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.url"));
}

#[test]
fn token_prints_a_jwt_and_refuses_lifetimes_the_gateway_would_refuse() {
    let out = tollgate(
        &["token", "--sub", "alice", "--plan", "pro", "--ttl", "60"],
        &[],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{token}");

    let out = tollgate(
        &[
            "token", "--sub", "alice", "--plan", "pro", "--ttl", "999999",
        ],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn key_new_prints_a_key_and_the_config_that_trusts_it() {
    let out = tollgate(&["key", "new", "--name", "openwebui"], &[])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap();
    assert!(key.starts_with("tgk_") && key.len() > 40, "{text}");
    // The printed table is valid config and names the key's hash.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let table = text.replace("user_header = \"\"", "user_header = \"x-user\"");
    std::fs::write(&path, table.lines().skip(1).collect::<Vec<_>>().join("\n")).unwrap();
    let config = tollgate::config::load(&tollgate::config::ConfigSource {
        file: Some(path),
        env: Default::default(),
    })
    .unwrap();
    let expected: String = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    assert_eq!(config.auth.service_keys["openwebui"].key_sha256, expected);
    // Two runs, two keys.
    let again = tollgate(&["key", "new", "--name", "openwebui"], &[])
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8(again.stdout).unwrap().lines().next(),
        Some(key)
    );
    let bad = tollgate(&["key", "new", "--name", "a:b"], &[])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_service_key_that_names_no_user_header_stops_start_up() {
    let out = tollgate(
        &[],
        &[(
            "TOLLGATE__AUTH__SERVICE_KEYS__WEBUI__KEY_SHA256",
            "ab0f1e2d3c4b5a69788796a5b4c3d2e1f0ab0f1e2d3c4b5a69788796a5b4c3d2",
        )],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.service_keys.webui.user_header"),
        "{stderr}"
    );
}

use tollgate_testkit::process::{self, Running};

#[test]
fn the_embedded_default_serves_a_stream_from_its_built_in_mock() {
    let secret = [("TOLLGATE_JWT_SECRET", "cli-test-secret")];
    let mut child = tollgate(&[], &[secret[0], ("TOLLGATE_LISTEN", "127.0.0.1:0")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);

    // Drain stderr on a thread for the child's whole life (a closed pipe would fail its
    // writes), passing lines here until the start-up lines have been seen.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut mock_notice = false;
    let mut listen = None;
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(30)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"]
            .as_str()
            .unwrap_or("")
            .contains("built-in mock provider")
        {
            mock_notice = true;
        }
        if v["message"] == "tollgate is serving" {
            listen = v["listen"].as_str().map(String::from);
            break;
        }
    }
    assert!(mock_notice, "start-up must say it runs the built-in mock");
    let listen = listen.expect("the gateway never said it was serving");

    let out = tollgate(
        &["token", "--sub", "dana", "--plan", "pro", "--ttl", "60"],
        &secret,
    )
    .output()
    .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let body = r#"{"model":"mock-gpt","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut socket = TcpStream::connect(&listen).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {listen}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/event-stream"));
    assert!(response.contains("data: [DONE]"), "{response}");
    assert!(
        response.contains("\"finish_reason\":\"length\""),
        "{response}"
    );

    // The request log line on stdout (read on a thread so a missing line fails, not hangs).
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(line)) = BufReader::new(stdout).lines().next() {
            let _ = line_tx.send(line);
        }
    });
    let line = line_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no request log line on stdout");
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["user_id"], "dana");
    assert_eq!(log["output_tokens"], 5);
    drop(running);
}

#[test]
fn a_closed_stderr_does_not_take_the_gateway_down() {
    let mut child = tollgate(&[], &[("TOLLGATE_LISTEN", "127.0.0.1:0")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut running = Running(child);
    let mut listen = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "tollgate is serving" {
            listen = v["listen"].as_str().map(String::from);
            break;
        }
    } // stderr's read end is closed here; the gateway keeps logging into a broken pipe
    let listen = listen.unwrap();
    for _ in 0..3 {
        let mut socket = TcpStream::connect(&listen).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            socket,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        socket.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    assert!(
        running.0.try_wait().unwrap().is_none(),
        "the gateway exited"
    );
}

/// A one-shot upstream on a std thread: answers each connection with an SSE reply whose
/// content is `content`.
fn sse_upstream(content: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 65536];
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains("\"messages\"") {
                match socket.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let chunk = serde_json::json!({"id":"c","object":"chat.completion.chunk","created":1,
                "model":"gpt-4o","choices":[{"index":0,"delta":{"content":content},"finish_reason":"stop"}]});
            let body = format!("data: {chunk}\n\ndata: [DONE]\n\n");
            let _ = write!(
                socket,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn no_prompt_completion_token_or_key_reaches_any_output_even_at_trace_level() {
    const PROMPT_SENTINEL: &str = "prompt-sentinel-5c1d9e";
    const COMPLETION_SENTINEL: &str = "completion-sentinel-8a7f2b";
    const UPSTREAM_KEY: &str = "sk-upstream-sentinel-3e4f";
    let upstream = sse_upstream(COMPLETION_SENTINEL);
    let env = [
        ("TOLLGATE_JWT_SECRET", "trace-test-secret"),
        ("TOLLGATE_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE_UPSTREAM_URL", upstream.as_str()),
        ("TOLLGATE_UPSTREAM_API_KEY", UPSTREAM_KEY),
    ];
    let mut command = tollgate(&[], &env);
    command.env("RUST_LOG", "trace");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut running = Running(child);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let err_tx = lines_tx.clone();
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(format!("stdout: {line}"));
        }
    });
    let mut all = Vec::new();
    let mut listen = None;
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(30)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let serving = v["message"] == "tollgate is serving";
        if serving {
            listen = v["listen"].as_str().map(String::from);
        }
        all.push(line);
        if serving {
            break;
        }
    }
    let listen = listen.expect("the gateway never said it was serving");
    let token = {
        let out = tollgate(
            &["token", "--sub", "sam", "--plan", "pro", "--ttl", "60"],
            &env[..1],
        )
        .output()
        .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let body = format!(
        r#"{{"model":"gpt-4o","stream":true,"messages":[{{"role":"user","content":"{PROMPT_SENTINEL}"}}]}}"#
    );
    let mut socket = TcpStream::connect(&listen).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    assert!(
        response.contains(COMPLETION_SENTINEL),
        "the reply itself is relayed: {response}"
    );
    // Wait for the request's log line, then stop the gateway and collect everything it wrote.
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(10)) {
        let done = line.starts_with("stdout: ");
        all.push(line);
        if done {
            break;
        }
    }
    let _ = running.0.kill();
    let _ = running.0.wait();
    let _ = (err_reader.join(), out_reader.join());
    all.extend(lines_rx.try_iter());
    let output = all.join("\n");
    assert!(
        output.contains("stdout: "),
        "the request log line was written"
    );
    assert!(output.lines().count() > 10, "trace logging was on");
    for secret in [
        PROMPT_SENTINEL,
        COMPLETION_SENTINEL,
        UPSTREAM_KEY,
        token.as_str(),
        "trace-test-secret",
    ] {
        let hits: Vec<&str> = output
            .lines()
            .filter(|l| l.contains(secret))
            .take(3)
            .collect();
        assert!(
            hits.is_empty(),
            "{secret} appeared in the output: {hits:#?}"
        );
    }
}

/// Starts the gateway with `env` and waits for its bound address; stderr drained on a thread.
fn start_gateway(env: &[(&str, &str)]) -> (Running, String) {
    let mut command = tollgate(&[], env);
    command.stdout(Stdio::null());
    process::start(command, "tollgate is serving", None)
}

fn http(listen: &str, request: &str) -> String {
    let mut socket = TcpStream::connect(listen).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    response
}

fn usage_of(listen: &str, token: &str) -> serde_json::Value {
    let response = http(
        listen,
        &format!("GET /v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    );
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    serde_json::from_str::<serde_json::Value>(body).unwrap()["usage"].clone()
}

#[test]
fn a_restart_in_embedded_mode_keeps_windows_and_spend() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state.json");
    let env = [
        ("TOLLGATE_JWT_SECRET", "restart-secret"),
        ("TOLLGATE_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE__USERS__SNAPSHOT_PATH", snapshot.to_str().unwrap()),
        ("TOLLGATE__MOCK__FIRST_TOKEN_DELAY_MS", "0"),
    ];
    let token = pro_token("restart-secret", "rita");
    let (running, listen) = start_gateway(&env);
    let body = r#"{"model":"mock-gpt","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = http(
        &listen,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let before = usage_of(&listen, &token);
    assert_eq!(before["requests_per_day"]["used"], 1);

    // A graceful stop (SIGTERM) writes the snapshot; the next process starts from it.
    let status = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut running = running;
    let exit = running.0.wait().unwrap();
    assert!(exit.success(), "graceful stop: {exit:?}");
    assert!(snapshot.exists());
    let (_running, listen) = start_gateway(&env);
    let after = usage_of(&listen, &token);
    assert_eq!(after["requests_per_day"]["used"], 1);
    assert_eq!(
        after["tokens_per_day"]["used"],
        before["tokens_per_day"]["used"]
    );
    assert_eq!(
        after["daily_usd"]["used_usd"],
        before["daily_usd"]["used_usd"]
    );
    assert_eq!(after["output_tokens"], 5);
}

#[test]
fn a_provider_without_a_url_is_served_by_the_built_in_mock_in_its_own_format() {
    let secret = ("TOLLGATE_JWT_SECRET", "cli-test-secret");
    let (running, listen) = start_gateway(&[
        secret,
        ("TOLLGATE_LISTEN", "127.0.0.1:0"),
        ("TOLLGATE__USERS__SNAPSHOT_PATH", ""),
        ("TOLLGATE__UPSTREAMS__CLAUDE__FORMAT", "anthropic"),
        (
            "TOLLGATE__PRICING__MOCK-CLAUDE__INPUT_PER_MILLION_USD",
            "3.0",
        ),
        (
            "TOLLGATE__PRICING__MOCK-CLAUDE__OUTPUT_PER_MILLION_USD",
            "15.0",
        ),
        ("TOLLGATE__PRICING__MOCK-CLAUDE__UPSTREAM", "claude"),
    ]);
    let out = tollgate(
        &["token", "--sub", "erin", "--plan", "pro", "--ttl", "60"],
        &[secret],
    )
    .output()
    .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    let body = r#"{"model":"mock-claude:tokens=4,delay_ms=0","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = http(
        &listen,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Anthropic's message id, translated into OpenAI chunks that end normally.
    assert!(response.contains("\"id\":\"msg_mock_"), "{response}");
    assert!(response.contains("\"object\":\"chat.completion.chunk\""));
    assert!(
        response.contains("\"finish_reason\":\"stop\""),
        "{response}"
    );
    assert!(response.contains("data: [DONE]"), "{response}");
    // Settled right after the stream's last frame: wait for it (bounded), never sleep blindly.
    let mut usage = usage_of(&listen, token.trim());
    for _ in 0..100 {
        if usage["open_requests"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        usage = usage_of(&listen, token.trim());
    }
    assert_eq!(usage["output_tokens"], 4, "{usage}");
    drop(running);
}

/// Catalogue RL-10: a Redis that may evict keys (evicted limit keys would hand users fresh
/// windows and budgets, silently) is named in a warning at start-up; one that does not evict is
/// reported reachable without it.
#[test]
fn a_redis_that_may_evict_keys_is_named_at_start_up() {
    for (policy, evicts) in [("allkeys-lru", true), ("noeviction", false)] {
        let redis = tollgate_testkit::redis::RedisServer::start();
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", policy]);
        let mut child = tollgate(
            &[],
            &[
                ("TOLLGATE_JWT_SECRET", "cli-test-secret"),
                ("TOLLGATE_LISTEN", "127.0.0.1:0"),
                ("TOLLGATE_REDIS_URL", &redis.url()),
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let stderr = child.stderr.take().unwrap();
        let running = Running(child);
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        // The check runs once Redis answers: its one line says which.
        let mut verdict = None;
        while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(30)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["maxmemory_policy"] == policy {
                verdict = Some((v["level"].as_str().unwrap_or("").to_string(), line));
                break;
            }
        }
        let (level, line) = verdict.expect("no line named the eviction policy");
        assert_eq!(level == "WARN", evicts, "{line}");
        assert_eq!(line.contains("may evict keys"), evicts, "{line}");
        drop(running);
    }
}

/// Catalogue ST-10 (its shutdown half): SIGTERM while a stream runs. The gateway stops
/// accepting at once, lets the stream finish whole, logs it, and exits cleanly.
#[test]
fn sigterm_refuses_new_connections_and_lets_a_running_stream_finish() {
    let secret = ("TOLLGATE_JWT_SECRET", "cli-test-secret");
    let mut command = tollgate(
        &[],
        &[
            secret,
            ("TOLLGATE_LISTEN", "127.0.0.1:0"),
            ("TOLLGATE__MOCK__FIRST_TOKEN_DELAY_MS", "0"),
        ],
    );
    command.stdout(Stdio::piped());
    let (mut running, listen) = process::start(command, "tollgate is serving", None);
    let mut stdout = running.0.stdout.take().unwrap();
    let token = {
        let out = tollgate(&["token", "--sub", "tess", "--plan", "pro"], &[secret])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // Twenty tokens at ten a second: two seconds of stream.
    let body = r#"{"model":"mock-gpt:tokens=20,tps=10","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut socket = TcpStream::connect(&listen).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let status = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // New connections are refused (polled: the listener closes within moments).
    let refused = (0..100).any(|_| match TcpStream::connect(&listen) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(refused, "still accepting connections after SIGTERM");
    let mut rest = String::new();
    socket.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "not a whole chunked body: {rest}"
    );

    let exit = running.0.wait().unwrap();
    assert!(exit.success(), "graceful stop: {exit:?}");
    let mut log = String::new();
    stdout.read_to_string(&mut log).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert_eq!(lines[0]["outcome"], "completed");
    assert_eq!(lines[0]["output_tokens"], 20);
}

/// The value of the sample `name` (no labels) in a `/metrics` text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn scrape(listen: &str) -> String {
    http(
        listen,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
}

/// Waits (up to 10 s) for a log line with this `message`.
fn wait_for_log(log: &std::sync::mpsc::Receiver<String>, message: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Ok(line) =
        log.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == message {
            return v;
        }
    }
    panic!("no log line {message:?} within 10 s");
}

#[test]
fn sighup_reloads_the_config_file_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    let file = |rpm: u32, extra: &str| format!("[rate]\nrequests_per_minute = {rpm}\n{extra}");
    std::fs::write(&path, file(10, "")).unwrap();
    let mut command = tollgate(
        &["--config", path.to_str().unwrap()],
        &[
            ("TOLLGATE_JWT_SECRET", "sighup-secret"),
            ("TOLLGATE_LISTEN", "127.0.0.1:0"),
            // `/metrics` on the gateway's own (free) port, to read the reload metrics there.
            ("TOLLGATE__SERVER__METRICS_LISTEN", ""),
        ],
    );
    command.stdout(Stdio::null());
    let (running, listen, log) = process::start_reading_log(command, "tollgate is serving", None);
    assert_eq!(
        sample(&scrape(&listen), "tollgate_config_generation"),
        Some(1.0)
    );
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &running.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    std::fs::write(&path, file(25, "")).unwrap();
    hangup();
    let reloaded = wait_for_log(
        &log,
        "config reloaded: new requests use it, open streams keep theirs",
    );
    assert_eq!(reloaded["generation"], 2);
    assert_eq!(reloaded["changed"], "[\"rate.requests_per_minute\"]");
    let token = pro_token("sighup-secret", "hugo");
    assert_eq!(
        usage_of(&listen, &token)["requests_per_minute"]["limit"],
        25
    );

    // A bad file: the error names the key, the process keeps serving generation 2.
    std::fs::write(&path, file(25, "[limits]\ndeadline_secs = \"soon\"\n")).unwrap();
    hangup();
    let rejected = wait_for_log(
        &log,
        "config reload rejected: nothing changed, the running config stays",
    );
    assert_eq!(rejected["level"], "ERROR");
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("limits.deadline_secs"),
        "{rejected}"
    );
    let metrics = scrape(&listen);
    assert_eq!(sample(&metrics, "tollgate_config_generation"), Some(2.0));
    assert_eq!(
        sample(
            &metrics,
            "tollgate_config_reloads_total{result=\"rejected\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "tollgate_config_reloads_total{result=\"applied\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        usage_of(&listen, &token)["requests_per_minute"]["limit"],
        25
    );
    drop(running);
}
