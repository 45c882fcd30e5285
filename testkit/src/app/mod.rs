//! The in-process gateway harness: a real gateway on port 0 in front of a real mock provider on
//! port 0 (or a scripted raw-TCP upstream), an awc client, an SSE reader, and the gateway's
//! request log. Used by the integration suite `tests/api/` and by `tests/metrics.rs`; the tests
//! run it on actix's runtime (`#[actix_web::test]`).

pub mod idp;
pub mod jwt;
pub mod raw;
pub mod scripted;
pub mod sse;

use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tollgate::clock::ManualClock;
use tollgate::config::{load, Config, ConfigSource, Secret};
use tollgate::mock::{self, MockOptions, MockRecorder};
use tollgate::reload::{Live, Source};
use tollgate::startup::{start, StartOptions};
use tollgate::telemetry::{LogSink, MemoryLog};

pub const JWT_SECRET: &str = "integration-test-secret";
pub const UPSTREAM_KEY: &str = "sk-upstream-test-key";

/// The tests' "now": 2026-11-25T12:00:00Z.
pub const TEST_NOW_MS: u64 = 1_795_608_000_000;

/// How long any single wait in a test may take before the test fails (never a sleep).
pub const WAIT: Duration = Duration::from_secs(5);

/// A running gateway and the mock behind it.
pub struct TestApp {
    pub base: String,
    /// `http://host:port` of `/metrics`: its own listener, or the gateway's.
    pub metrics_base: String,
    /// The windows' clock: tests move it instead of sleeping.
    pub clock: ManualClock,
    pub recorder: Arc<MockRecorder>,
    pub logs: Arc<MemoryLog>,
    pub config: Config,
    pub client: awc::Client,
    /// The config generation serving new requests (tests may reload it directly).
    pub live: Arc<Live>,
    /// `http://host:port` of `/admin/v1`: its own listener (`admin.listen`), or the gateway's.
    pub admin_base: String,
}

/// Mock options that answer fast unless a test slows them.
pub fn fast_mock() -> MockOptions {
    MockOptions {
        tokens: 20,
        tokens_per_second: 0.0,
        first_token_delay_ms: 0,
        ignore_max_tokens: false,
        fault: None,
        // Tests assert on what the upstream received: keep every request (the mock's default
        // is a bounded ring of the most recent).
        keep_requests: None,
        ..MockOptions::default()
    }
}

/// The config every test starts from: one worker, the test secret, the mock as upstream.
pub fn test_config(upstream_url: &str) -> Config {
    let mut config = Config::default();
    config.server.workers = 1;
    // `/metrics` on its own loopback listener, as by default, on a free port.
    config.auth.jwt_secret = Secret::new(JWT_SECRET);
    config.upstream.url = upstream_url.to_string();
    config.upstream.api_key = Secret::new(UPSTREAM_KEY);
    config
}

/// Starts a mock with `options` and a gateway in front of it, configured by `tweak`.
pub async fn spawn_app(options: MockOptions, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mock = mock::serve(listener, options).unwrap();
    let recorder = mock.recorder.clone();
    let mock_url = format!("http://{}/v1", mock.addr);
    actix_rt::spawn(mock.server);
    let mut config = test_config(&mock_url);
    tweak(&mut config);
    spawn_gateway(config, recorder).await
}

/// Starts a gateway with `config` (whose upstream is already set).
pub async fn spawn_gateway(config: Config, recorder: Arc<MockRecorder>) -> TestApp {
    spawn_gateway_reloading(config, recorder, Source::None).await
}

/// Starts a gateway from the TOML file `path` (and no environment), which reloads re-read.
pub async fn spawn_gateway_from_file(path: &Path, recorder: Arc<MockRecorder>) -> TestApp {
    let source = ConfigSource {
        file: Some(path.to_path_buf()),
        env: Default::default(),
    };
    let config = load(&source).unwrap();
    spawn_gateway_reloading(config, recorder, Source::Fixed(source)).await
}

async fn spawn_gateway_reloading(
    config: Config,
    recorder: Arc<MockRecorder>,
    reload_source: Source,
) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (log_sink, logs) = LogSink::memory();
    let clock = ManualClock::new(TEST_NOW_MS);
    let gateway = start(
        config.clone(),
        listener,
        StartOptions {
            log_sink,
            handle_signals: false,
            clock: Arc::new(clock.clone()),
            snapshots: false,
            reload_source,
        },
    )
    .unwrap();
    let addr: SocketAddr = gateway.addr;
    let metrics_addr = gateway.metrics_addr.unwrap_or(addr);
    actix_rt::spawn(gateway.server);
    TestApp {
        live: gateway.live,
        admin_base: format!("http://{}", gateway.admin_addr.unwrap_or(addr)),
        base: format!("http://{addr}"),
        metrics_base: format!("http://{metrics_addr}"),
        clock,
        recorder,
        logs,
        config,
        client: awc::Client::builder().disable_timeout().finish(),
    }
}

impl TestApp {
    /// The gateway's `host:port`, for raw connections ([`raw`]).
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// The `host:port` serving `/metrics`.
    pub fn metrics_addr(&self) -> String {
        self.metrics_base.trim_start_matches("http://").to_string()
    }

    /// `GET /metrics` (200 expected), as text.
    pub async fn scrape_metrics(&self) -> String {
        let mut response = self
            .client
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.body().limit(16 << 20).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    pub fn token(&self, user: &str) -> String {
        tollgate::auth::mint(&self.config.auth, user, "pro", 600).unwrap()
    }

    pub fn post_chat(&self, user: &str) -> awc::ClientRequest {
        self.client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(self.token(user))
    }

    /// Sends a chat request as `user` and reads its whole event stream (each event's data).
    pub async fn stream(&self, user: &str, body: &Value) -> Vec<String> {
        let response = self.post_chat(user).send_json(body).await.unwrap();
        sse::SseReader::new(response).collect().await
    }

    /// The parsed request log lines so far.
    pub fn log_lines(&self) -> Vec<Value> {
        self.logs
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until the request log holds `n` lines, and returns them.
    pub async fn wait_for_logs(&self, n: usize) -> Vec<Value> {
        let lines = self.logs.wait_for(n, WAIT).await;
        assert!(lines.len() >= n, "expected {n} log lines, have {lines:?}");
        self.log_lines()
    }

    /// The user's counters from `GET /v1/usage`.
    pub async fn usage(&self, user: &str) -> Value {
        let mut response = self
            .client
            .get(format!("{}/v1/usage", self.base))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["usage"].clone()
    }

    /// The user's counters once every request is settled. Call it after the requests' log
    /// lines are in: a request is settled before its line is written.
    pub async fn settled_usage(&self, user: &str) -> Value {
        let usage = self.usage(user).await;
        assert_eq!(usage["open_requests"], 0, "requests still open: {usage}");
        usage
    }
}

/// A minimal chat body.
pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say something."}],
    })
}

/// Sends a non-streamed chat request with bearer `token`: (200, "") with the body read, or the
/// error's (status, code).
pub async fn chat_status(app: &TestApp, token: &str) -> (u16, String) {
    let mut response = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(token)
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    if response.status() == 200 {
        let _ = response.body().await;
        return (200, String::new());
    }
    error_code(response).await
}

/// Reads a JSON error response and returns (status, code).
pub async fn error_code(mut response: awc::ClientResponse) -> (u16, String) {
    let status = response.status().as_u16();
    let raw = response.body().await.unwrap();
    let body: Value = serde_json::from_slice(&raw)
        .unwrap_or_else(|_| panic!("status {status}, not a JSON error body: {raw:?}"));
    assert_eq!(
        body["error"]["param"],
        Value::Null,
        "OpenAI error shape: {body}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI error shape: {body}"
    );
    assert!(
        body["error"]["type"].is_string(),
        "OpenAI error shape: {body}"
    );
    (status, body["error"]["code"].as_str().unwrap().to_string())
}

/// Asserts that the upstream received nothing (the mock records no request within 50 ms): for
/// requests the gateway must refuse before forwarding them.
pub async fn assert_upstream_untouched(app: &TestApp) {
    assert!(
        !app.recorder
            .wait_for_requests(1, Duration::from_millis(50))
            .await,
        "the upstream received a refused request"
    );
}
