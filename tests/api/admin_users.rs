//! The admin API's user routes in embedded mode (Redis mode: `tests/redis.rs`): overrides that
//! raise a cap and lapse, a block that refuses new requests and cuts open streams, window
//! resets, top spenders, the inspection view, and refusals of bad input and bad keys.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate::calendar::rfc3339;
use tollgate::mock::MockOptions;
use tollgate_testkit::app::sse::{assert_error_ending, content_of, SseReader};
use tollgate_testkit::app::*;

const ADMIN_KEY: &str = "tg-admin-users-key-31f0c2";

fn with_admin(config: &mut tollgate::config::Config) {
    config.admin.key_sha256 = hex::encode(Sha256::digest(ADMIN_KEY.as_bytes()));
}

async fn admin_call(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}/admin/v1{path}", app.admin_base);
    let mut request = match method {
        "GET" => app.client.get(url),
        "PUT" => app.client.put(url),
        "POST" => app.client.post(url),
        "DELETE" => app.client.delete(url),
        other => panic!("{other}"),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let mut response = match body {
        Some(body) => request.send_json(&body).await.unwrap(),
        None => request.send().await.unwrap(),
    };
    let status = response.status().as_u16();
    (
        status,
        response.json::<Value>().await.unwrap_or(Value::Null),
    )
}

async fn admin(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = admin_call(app, method, path, Some(ADMIN_KEY), body).await;
    assert_eq!(status, 200, "{method} {path}: {answer}");
    answer
}

async fn chat(app: &TestApp, user: &str) -> (u16, String) {
    chat_status(app, &app.token(user)).await
}

fn audits(app: &TestApp) -> Vec<Value> {
    app.log_lines()
        .into_iter()
        .filter(|l| l["type"] == "audit")
        .collect()
}

#[actix_web::test]
async fn every_user_route_needs_the_admin_key_and_refusals_are_audited() {
    let app = spawn_app(fast_mock(), with_admin).await;
    let routes = [
        ("GET", "/users/alice"),
        ("PUT", "/users/alice/overrides"),
        ("DELETE", "/users/alice/overrides"),
        ("POST", "/users/alice/block"),
        ("DELETE", "/users/alice/block"),
        ("POST", "/users/alice/reset"),
        ("GET", "/top"),
    ];
    for (method, path) in routes {
        let (status, body) = admin_call(&app, method, path, None, None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("missing_token")),
            "{method} {path}"
        );
        let (status, body) = admin_call(&app, method, path, Some("wrong"), None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("invalid_token")),
            "{method} {path}"
        );
        // A user's own token is not the admin key.
        let (status, _) = admin_call(&app, method, path, Some(&app.token("alice")), None).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    let audits = audits(&app);
    assert_eq!(audits.len(), routes.len() * 3);
    assert!(audits
        .iter()
        .all(|a| a["who"].is_null() && a["status"] == 401));
    assert_upstream_untouched(&app).await;
}

#[actix_web::test]
async fn an_override_raises_the_daily_cap_until_it_expires() {
    let app = spawn_app(fast_mock(), |config| {
        with_admin(config);
        // About one request's worth of spend a day.
        config.cost.max_daily_usd = 0.0003;
    })
    .await;
    assert_eq!(chat(&app, "alice").await.0, 200);
    assert_eq!(chat(&app, "alice").await, (429, "daily_budget".into()));

    let expires = rfc3339(TEST_NOW_MS + 3_600_000);
    let body = json!({"cost": {"max_daily_usd": 1.0}, "expires_at": expires});
    let answer = admin(&app, "PUT", "/users/alice/overrides", Some(body)).await;
    assert_eq!(
        answer["settings"]["overrides"]["cost"]["max_daily_usd"],
        1.0
    );
    assert_eq!(
        answer["settings"]["overrides"]["expires_at"],
        expires.as_str()
    );
    for _ in 0..3 {
        assert_eq!(chat(&app, "alice").await.0, 200);
    }
    // Only alice's cap moved.
    assert_eq!(chat(&app, "bob").await.0, 200);
    assert_eq!(chat(&app, "bob").await, (429, "daily_budget".into()));
    let seen = admin(&app, "GET", "/users/alice", None).await;
    assert_eq!(seen["limits"]["max_daily_usd"], 1.0);
    assert_eq!(seen["usage"]["requests_per_day"]["used"], 4);
    assert_eq!(seen["last_refusal"]["code"], "daily_budget");

    // An hour later (the same day) the override has lapsed: the plan's cap is back.
    app.clock.advance_ms(3_600_000);
    assert_eq!(chat(&app, "alice").await, (429, "daily_budget".into()));
    let seen = admin(&app, "GET", "/users/alice", None).await;
    assert_eq!(seen["limits"]["max_daily_usd"], 0.0003);

    let audit = audits(&app)
        .into_iter()
        .find(|a| a["action"] == "user.overrides.set")
        .unwrap();
    assert_eq!(audit["user"], "alice");
    assert_eq!(audit["before"]["overrides"], Value::Null);
    assert_eq!(audit["after"]["overrides"]["cost"]["max_daily_usd"], 1.0);
    assert_eq!(audit["status"], 200);
}

#[actix_web::test]
async fn a_block_refuses_new_requests_and_cuts_an_open_stream_at_its_next_report() {
    let paced = MockOptions {
        tokens: 200,
        tokens_per_second: 100.0,
        ..fast_mock()
    };
    let app = spawn_app(paced, |config| {
        with_admin(config);
        // Report every 16 tokens, so the block reaches the stream within a fifth of a second.
        config.relay.meter_batch_tokens = 16;
        config.relay.meter_batch_max_tokens = 16;
    })
    .await;
    let response = app
        .post_chat("mallory")
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let mut events = vec![reader.next_data().await.unwrap()];
    let answer = admin(&app, "POST", "/users/mallory/block", None).await;
    assert_eq!(answer["settings"]["blocked"], true);
    while let Some(event) = reader.next_data().await {
        events.push(event);
    }
    assert_error_ending(&events, "user_blocked");
    let relayed = content_of(&events).split_whitespace().count();
    assert!(relayed < 200, "the stream ran to its end: {relayed} words");

    let (status, code) = chat(&app, "mallory").await;
    assert_eq!((status, code.as_str()), (403, "user_blocked"));
    // The cut stream, the refusal, and the block's audit line.
    let lines = app.wait_for_logs(3).await;
    let requests: Vec<&Value> = lines.iter().filter(|l| l.get("type").is_none()).collect();
    assert_eq!(requests[0]["outcome"], "cut_blocked");
    assert_eq!(requests[0]["error_code"], "user_blocked");
    assert!(requests[0]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(requests[1]["status"], 403);
    assert_eq!(requests[1]["error_code"], "user_blocked");
    // Billed for what was relayed: the usage counts the cut stream's tokens.
    let usage = app.settled_usage("mallory").await;
    assert_eq!(usage["output_tokens"], requests[0]["output_tokens"]);

    admin(&app, "DELETE", "/users/mallory/block", None).await;
    assert_eq!(chat(&app, "mallory").await.0, 200);
    let actions: Vec<Value> = audits(&app).iter().map(|a| a["action"].clone()).collect();
    assert_eq!(actions, [json!("user.block"), json!("user.unblock")]);
}

#[actix_web::test]
async fn a_reset_empties_only_the_windows_it_names() {
    let app = spawn_app(fast_mock(), with_admin).await;
    for _ in 0..10 {
        assert_eq!(chat(&app, "carol").await.0, 200);
    }
    assert_eq!(
        chat(&app, "carol").await,
        (429, "requests_per_minute".into())
    );
    admin(
        &app,
        "POST",
        "/users/carol/reset",
        Some(json!({"windows": ["minute"]})),
    )
    .await;
    assert_eq!(chat(&app, "carol").await.0, 200);
    let usage = app.settled_usage("carol").await;
    assert_eq!(usage["requests_per_minute"]["used"], 1);
    assert_eq!(usage["requests_per_day"]["used"], 11);
    assert!(usage["daily_usd"]["used_usd"].as_f64().unwrap() > 0.0);

    admin(
        &app,
        "POST",
        "/users/carol/reset",
        Some(json!({"windows": ["day", "month"]})),
    )
    .await;
    let usage = app.settled_usage("carol").await;
    assert_eq!(usage["requests_per_minute"]["used"], 1);
    assert_eq!(usage["requests_per_day"]["used"], 0);
    assert_eq!(usage["tokens_per_day"]["used"], 0);
    assert_eq!(usage["daily_usd"]["used_usd"], 0.0);
    assert_eq!(usage["monthly_usd"]["used_usd"], 0.0);
    // Lifetime totals are history, not a window.
    assert_eq!(usage["requests"], 11);
    let audit = audits(&app).pop().unwrap();
    assert_eq!(audit["reset"], json!(["day", "month"]));

    for bad in [
        json!({"windows": []}),
        json!({"windows": ["week"]}),
        json!({"window": ["day"]}),
    ] {
        let (status, _) = admin_call(
            &app,
            "POST",
            "/users/carol/reset",
            Some(ADMIN_KEY),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
    }
}

#[actix_web::test]
async fn top_spenders_are_listed_biggest_first_by_settled_spend() {
    let app = spawn_app(fast_mock(), with_admin).await;
    for (user, requests) in [("dave", 3), ("erin", 1), ("frank", 2)] {
        for _ in 0..requests {
            assert_eq!(chat(&app, user).await.0, 200);
        }
    }
    app.wait_for_logs(6).await;
    let top = admin(&app, "GET", "/top?window=day&n=2", None).await;
    assert_eq!(top["window"], "day");
    let users: Vec<&Value> = top["users"].as_array().unwrap().iter().collect();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["user_id"], "dave");
    assert_eq!(users[1]["user_id"], "frank");
    let dave = app.settled_usage("dave").await;
    assert_eq!(users[0]["spend_usd"], dave["daily_usd"]["used_usd"]);
    let month = admin(&app, "GET", "/top?window=month", None).await;
    assert_eq!(month["users"].as_array().unwrap().len(), 3);
    for bad in ["/top?window=week", "/top?n=0", "/top?n=5000"] {
        let (status, body) = admin_call(&app, "GET", bad, Some(ADMIN_KEY), None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_parameter")),
            "{bad}"
        );
    }
}

#[actix_web::test]
async fn bad_overrides_are_refused_naming_the_problem_and_change_nothing() {
    let app = spawn_app(fast_mock(), with_admin).await;
    let cases = [
        (json!({"rate": {"requests_per_minutes": 5}}), "invalid_json"),
        (
            json!({"cost": {"max_daily_usd": -1.0}}),
            "invalid_parameter",
        ),
        (
            json!({"cost": {"max_daily_usd": 1.0}, "expires_at": "2020-01-01T00:00:00Z"}),
            "invalid_parameter",
        ),
        (
            json!({"cost": {"max_daily_usd": 1.0}, "expires_at": "next week"}),
            "invalid_parameter",
        ),
        (json!({}), "invalid_parameter"),
        (
            json!({"rate": {"max_concurrent_streams": 0}}),
            "invalid_parameter",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = admin_call(
            &app,
            "PUT",
            "/users/gina/overrides",
            Some(ADMIN_KEY),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!(code)),
            "{body}: {answer}"
        );
    }
    let seen = admin(&app, "GET", "/users/gina?plan=pro", None).await;
    assert_eq!(
        seen["settings"],
        json!({"blocked": false, "overrides": null})
    );
    assert_eq!(seen["limits"]["requests_per_minute"], 10);
    assert_eq!(seen["last_refusal"], Value::Null);
    // A user id too long for any front end.
    let long = "u".repeat(300);
    let (status, _) = admin_call(
        &app,
        "GET",
        &format!("/users/{long}"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 400);
}
