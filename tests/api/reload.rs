//! Hot reload through `POST /admin/v1/reload` (SIGHUP: `tests/cli.rs`) and the admin API's key:
//! a reload under open streams cuts none of them and they finish at the prices they were
//! admitted with, while new requests see the new prices, limits and provider, and users'
//! windows carry on; an invalid file changes nothing; restart-only keys are named and kept.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tollgate::mock::{self, MockOptions, MockRecorder};
use tollgate_testkit::app::sse::SseReader;
use tollgate_testkit::app::*;

const ADMIN_KEY: &str = "tg-admin-test-key-7f3a9c0d5e";

fn admin_hash() -> String {
    hex::encode(Sha256::digest(ADMIN_KEY.as_bytes()))
}

/// A mock provider on port 0: its `/v1` URL and what it received.
fn start_mock(options: MockOptions) -> (String, std::sync::Arc<MockRecorder>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mock = mock::serve(listener, options).unwrap();
    let recorder = mock.recorder.clone();
    let url = format!("http://{}/v1", mock.addr);
    actix_rt::spawn(mock.server);
    (url, recorder)
}

/// The gateway's config file: the test secret and admin key, `mock-gpt` at `output_price`
/// USD per million output tokens, `rpm` requests per minute per user, then `extra` lines.
fn config_text(upstream: &str, output_price: f64, rpm: u32, extra: &str) -> String {
    format!(
        r#"
[server]
workers = 1
[upstream]
url = "{upstream}"
api_key = "{UPSTREAM_KEY}"
[auth]
jwt_secret = "{JWT_SECRET}"
[admin]
key_sha256 = "{hash}"
{extra}
[rate]
requests_per_minute = {rpm}
max_concurrent_streams = 100
[pricing.mock-gpt]
input_per_million_usd = 2.5
output_per_million_usd = {output_price}
"#,
        hash = admin_hash(),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn config_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("tollgate.toml")
}

async fn post_reload(app: &TestApp, key: Option<&str>) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}/admin/v1/reload", app.admin_base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// A request log line's cost recomputed from its tokens at the given prices (USD per million).
fn cost_at(line: &Value, input_price: f64, output_price: f64) -> f64 {
    let input = line["input_tokens"].as_f64().unwrap();
    let output = line["output_tokens"].as_f64().unwrap();
    (input * input_price + output * output_price) / 1e6
}

fn assert_cost(line: &Value, input_price: f64, output_price: f64) {
    let logged = line["cost_usd"].as_f64().unwrap();
    let expected = cost_at(line, input_price, output_price);
    assert!(
        (logged - expected).abs() < 1e-6 && logged > 0.0,
        "cost {logged} is not {expected} at ${output_price}/M output: {line}"
    );
}

fn request_lines(app: &TestApp) -> Vec<Value> {
    app.log_lines()
        .into_iter()
        .filter(|l| l.get("type").is_none())
        .collect()
}

fn audit_lines(app: &TestApp) -> Vec<Value> {
    app.log_lines()
        .into_iter()
        .filter(|l| l["type"] == "audit")
        .collect()
}

#[actix_web::test]
async fn a_reload_under_fifty_open_streams_cuts_none_and_only_new_requests_see_the_new_config() {
    // One second per stream: every stream is open while the reload happens.
    let paced = MockOptions {
        tokens: 20,
        tokens_per_second: 20.0,
        ..fast_mock()
    };
    let (first_url, first_provider) = start_mock(paced);
    let (second_url, second_provider) = start_mock(fast_mock());
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir);
    write(&path, &config_text(&first_url, 10.0, 1000, ""));
    let app = spawn_gateway_from_file(&path, first_provider.clone()).await;

    let mut open = Vec::new();
    for i in 0..50 {
        let response = app
            .post_chat(&format!("streamer-{}", i % 5))
            .send_json(&chat_body("mock-gpt", true))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut reader = SseReader::new(response);
        let first = reader.next_data().await.expect("a first event");
        assert!(first.contains("chat.completion.chunk"), "{first}");
        open.push(reader);
    }
    // streamer-0 has used 10 requests of its minute: the new limit leaves it one more.
    write(
        &path,
        &config_text(&second_url, 20.0, 11, "[limits]\ndeadline_secs = 29"),
    );
    let (status, body) = post_reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"], 2);
    assert_eq!(
        body["changed"],
        json!([
            "limits.deadline_secs",
            "pricing.mock-gpt.output_per_million_usd",
            "rate.requests_per_minute",
            "upstream.url"
        ])
    );
    assert_eq!(body["need_restart"], json!([]));
    assert_eq!(app.live.current().config.limits.deadline_secs, 29);

    for reader in open {
        let events = reader.collect().await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert!(
            events.iter().all(|e| !e.contains("\"error\"")),
            "a stream open during the reload was cut: {events:?}"
        );
    }
    // 50 request lines and the reload's audit line.
    app.wait_for_logs(51).await;
    let lines = request_lines(&app);
    assert_eq!(lines.len(), 50);
    for line in &lines {
        assert_eq!(line["outcome"], "completed", "{line}");
        assert_eq!(line["output_tokens"], 20, "{line}");
        assert_cost(line, 2.5, 10.0);
    }
    assert_eq!(first_provider.received(), 50);

    // New requests: the new provider and price; streamer-0's minute carried over the reload.
    let (status, _) = chat_status(&app, &app.token("streamer-0")).await;
    assert_eq!(status, 200);
    assert_eq!(second_provider.received(), 1);
    assert_eq!(first_provider.received(), 50);
    app.wait_for_logs(52).await;
    assert_cost(&request_lines(&app)[50], 2.5, 20.0);
    let (status, code) = chat_status(&app, &app.token("streamer-0")).await;
    assert_eq!((status, code.as_str()), (429, "requests_per_minute"));
    let usage = app.settled_usage("streamer-0").await;
    assert_eq!(usage["requests_per_minute"]["used"], 11, "{usage}");
    assert_eq!(usage["requests_per_minute"]["limit"], 11, "{usage}");
}

#[actix_web::test]
async fn an_invalid_file_is_rejected_whole_naming_the_key_and_the_running_config_stays() {
    let (url, provider) = start_mock(fast_mock());
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir);
    write(&path, &config_text(&url, 10.0, 1000, ""));
    let app = spawn_gateway_from_file(&path, provider).await;
    let rejected_before = reloads(&app, "rejected").await;

    // A valid price change beside a fallback naming an unpriced model: none of it applies.
    let bad = config_text(&url, 40.0, 1000, "") + "fallback = [\"no-such-model\"]\n";
    write(&path, &bad);
    let (status, body) = post_reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("pricing.mock-gpt.fallback"), "{message}");
    assert_eq!(app.live.current().generation, 1);

    // Not TOML at all: also refused, naming the file.
    write(&path, "[rate\nrequests_per_minute = ");
    let (status, body) = post_reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tollgate.toml"),
        "{body}"
    );

    let (status, _) = chat_status(&app, &app.token("alice")).await;
    assert_eq!(status, 200);
    let lines = app.wait_for_logs(1).await;
    assert_cost(&request_lines(&app)[0], 2.5, 10.0);
    assert!(lines.len() >= 3);
    let audits = audit_lines(&app);
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert_eq!(audits[0]["action"], "reload");
    assert_eq!(audits[0]["status"], 400);
    assert_eq!(audits[0]["error"], "invalid_config");
    assert!(audits[0]["message"]
        .as_str()
        .unwrap()
        .contains("pricing.mock-gpt.fallback"));
    assert_eq!(audits[0]["before"]["generation"], 1);
    assert_eq!(audits[0]["after"]["generation"], 1);
    assert!(reloads(&app, "rejected").await >= rejected_before + 2.0);
}

/// `tollgate_config_reloads_total{result}` (process-wide: other tests may add to it).
async fn reloads(app: &TestApp, result: &str) -> f64 {
    let text = app.scrape_metrics().await;
    let series = format!("tollgate_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[actix_web::test]
async fn restart_only_keys_are_named_and_keep_their_running_values() {
    let (url, provider) = start_mock(fast_mock());
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir);
    write(&path, &config_text(&url, 10.0, 1000, ""));
    let app = spawn_gateway_from_file(&path, provider).await;
    let text = config_text(&url, 10.0, 1000, "").replace("workers = 1", "workers = 3")
        + "[redis]\nop_timeout_ms = 75\n";
    write(&path, &text);
    let (status, body) = post_reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!([]));
    assert_eq!(
        body["need_restart"],
        json!(["redis.op_timeout_ms", "server.workers"])
    );
    let running = app.live.current();
    assert_eq!(running.generation, 2);
    assert_eq!(running.config.server.workers, 1);
    assert_eq!(
        running.config.redis.op_timeout_ms,
        app.config.redis.op_timeout_ms
    );
}

#[actix_web::test]
async fn the_admin_api_needs_its_key_and_every_call_is_audited_without_secrets() {
    let (url, provider) = start_mock(fast_mock());
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(&dir);
    write(&path, &config_text(&url, 10.0, 1000, ""));
    let app = spawn_gateway_from_file(&path, provider).await;

    let (status, body) = post_reload(&app, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("missing_token"))
    );
    let (status, body) = post_reload(&app, Some("not-the-admin-key")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    // A user's JWT is not the admin key either.
    let (status, _) = post_reload(&app, Some(&app.token("alice"))).await;
    assert_eq!(status, 401);
    let (status, body) = post_reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!((status, body["generation"].as_u64()), (200, Some(2)));

    let audits = audit_lines(&app);
    let statuses: Vec<&Value> = audits.iter().map(|a| &a["status"]).collect();
    assert_eq!(
        statuses,
        [&json!(401), &json!(401), &json!(401), &json!(200)]
    );
    let who = format!("admin-key:{}", &admin_hash()[..8]);
    assert_eq!(audits[3]["who"], who.as_str());
    assert_eq!(audits[3]["client"], "127.0.0.1");
    assert_eq!(audits[3]["before"]["generation"], 1);
    assert_eq!(audits[3]["after"]["generation"], 2);
    assert!(audits[0]["who"].is_null());
    for line in app.logs.lines() {
        for secret in [ADMIN_KEY, JWT_SECRET, UPSTREAM_KEY, "not-the-admin-key"] {
            assert!(!line.contains(secret), "a secret in the log: {line}");
        }
    }
    // An unknown admin route answers 404 like any other.
    let response = app
        .client
        .get(format!("{}/admin/v1/nothing", app.admin_base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (404, "not_found".into()));
}

#[actix_web::test]
async fn without_an_admin_key_the_admin_api_is_not_there() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let (status, body) = post_reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(audit_lines(&app).is_empty());
}

#[actix_web::test]
async fn on_its_own_listener_the_admin_api_is_not_on_the_public_one() {
    let app = spawn_app(fast_mock(), |config| {
        config.admin.key_sha256 = admin_hash();
        config.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    assert_ne!(app.admin_base, app.base);
    let response = app
        .client
        .post(format!("{}/admin/v1/reload", app.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // Started from a config value, not a file: the admin listener answers, and says why it
    // cannot reload.
    let (status, body) = post_reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a file"));
}
