//! Requests refused before or at the upstream: exact status, OpenAI error code, headers, what
//! the upstream received (nothing, when the gateway refused) and what was logged.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate::mock::MockOptions;
use tollgate_testkit::app::*;

#[actix_web::test]
async fn authentication_failures_never_reach_the_upstream() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let url = format!("{}/v1/chat/completions", app.base);
    let body = chat_body("mock-gpt", true);

    let response = app.client.post(&url).send_json(&body).await.unwrap();
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
    assert_eq!(error_code(response).await, (401, "missing_token".into()));

    let response = app
        .client
        .post(&url)
        .bearer_auth("not-a-jwt")
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (401, "invalid_token".into()));

    let mut other = app.config.auth.clone();
    other.jwt_secret = tollgate::config::Secret::new("someone-else");
    let forged = tollgate::auth::mint(&other, "mallory", "pro", 60).unwrap();
    let response = app
        .client
        .post(&url)
        .bearer_auth(forged)
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (401, "invalid_token".into()));

    assert_upstream_untouched(&app).await;
    let logs = app.wait_for_logs(3).await;
    assert!(logs
        .iter()
        .all(|l| l["outcome"] == "rejected" && l["status"] == 401));
}

#[actix_web::test]
async fn malformed_bodies_get_400_with_their_code() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "invalid_json"),
        (b"[]".to_vec(), "invalid_json"),
        (json!({"model": 5, "messages": []}).to_string().into_bytes(), "invalid_json"),
        (json!({"model": "mock-gpt", "messages": []}).to_string().into_bytes(), "invalid_messages"),
        (
            json!({"model": "mock-gpt", "messages": [{"role": "robot", "content": "x"}]})
                .to_string()
                .into_bytes(),
            "invalid_messages",
        ),
        (
            json!({"model": "mock-gpt", "max_tokens": "100", "messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into_bytes(),
            "invalid_json",
        ),
    ];
    for (body, code) in cases {
        let response = app
            .post_chat("alice")
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .unwrap();
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(error_code(response).await, (400, code.to_string()));
    }
    assert_upstream_untouched(&app).await;
}

#[actix_web::test]
async fn oversized_bodies_get_413_whether_declared_or_not() {
    let app = spawn_app(fast_mock(), |c| c.limits.max_body_bytes = 1024).await;
    let mut body = chat_body("mock-gpt", true);
    body["messages"][0]["content"] = Value::String("x".repeat(2000));
    let response = app.post_chat("alice").send_json(&body).await.unwrap();
    assert_eq!(
        error_code(response).await,
        (413, "payload_too_large".into())
    );

    // Chunked (no Content-Length): the limit is counted on the bytes as they arrive.
    let chunks = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 512]))),
    );
    let response = app.post_chat("alice").send_stream(chunks).await.unwrap();
    assert_eq!(
        error_code(response).await,
        (413, "payload_too_large".into())
    );
    assert_upstream_untouched(&app).await;
}

#[actix_web::test]
async fn upstream_refusals_before_the_stream_map_to_5xx_and_bill_nothing() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt:fault=status@429", true))
        .await
        .unwrap();
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    assert_eq!(
        error_code(response).await,
        (503, "upstream_unavailable".into())
    );

    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt:fault=status@500", true))
        .await
        .unwrap();
    assert!(!response.headers().contains_key("x-should-retry"));
    assert_eq!(error_code(response).await, (502, "upstream_failed".into()));

    // A request the provider rejects will be rejected again: tell SDKs not to retry.
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt:fault=status@400", true))
        .await
        .unwrap();
    assert_eq!(response.headers().get("x-should-retry").unwrap(), "false");
    assert_eq!(error_code(response).await, (502, "upstream_failed".into()));

    let logs = app.wait_for_logs(3).await;
    assert!(logs
        .iter()
        .all(|l| l["outcome"] == "upstream_error" && l["output_tokens"] == 0));
    let usage = app.settled_usage("alice").await;
    assert_eq!(usage["output_tokens"], 0);
    assert_eq!(usage["input_tokens"], 0);
}

#[actix_web::test]
async fn an_unreachable_upstream_is_503_and_a_silent_one_504() {
    // A port that refuses connections.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_gateway(test_config(&closed_url), Default::default()).await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(response).await,
        (503, "upstream_unavailable".into())
    );

    let app = spawn_app(
        MockOptions {
            first_token_delay_ms: 5_000,
            ..fast_mock()
        },
        |c| c.limits.deadline_secs = 1,
    )
    .await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (504, "upstream_timeout".into()));
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "cut_deadline");
    assert_eq!(logs[0]["status"], 504);
    assert!(matches!(
        app.recorder
            .wait_for_end(0, std::time::Duration::from_secs(1))
            .await,
        Some(tollgate::mock::StreamEnd::Dropped { .. })
    ));
}

#[actix_web::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape_with_a_request_id() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .client
        .get(format!("{}/nope", app.base))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(error_code(response).await, (404, "not_found".into()));
    let response = app
        .client
        .get(format!("{}/v1/chat/completions", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (405, "method_not_allowed".into())
    );
    let mut health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
}

#[actix_web::test]
async fn an_unpriced_model_cannot_be_cost_capped_and_is_refused() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let response = app
        .post_chat("alice")
        .send_json(&chat_body("gpt-unheard-of", true))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (400, "unknown_model".into()));
    assert_upstream_untouched(&app).await;
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "rejected");
    assert_eq!(logs[0]["status"], 400);
}

/// (status, code) of a non-streamed chat request with `extra` fields; (200, "") when answered.
async fn chat_with(app: &TestApp, user: &str, extra: Value) -> (u16, String) {
    let mut body = chat_body("mock-gpt", false);
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let mut response = app.post_chat(user).send_json(&body).await.unwrap();
    if response.status() == 200 {
        let _ = response.body().await;
        return (200, String::new());
    }
    error_code(response).await
}

#[actix_web::test]
async fn sampling_parameters_out_of_range_get_400_before_the_upstream_and_unknown_fields_pass() {
    let app = spawn_app(fast_mock(), |c| c.rate.requests_per_minute = 100).await;
    let invalid = (400, "invalid_parameter".to_string());
    for extra in [
        json!({"temperature": "NaN"}),
        json!({"temperature": 99}),
        json!({"temperature": -5}),
        json!({"top_p": 7}),
        json!({"presence_penalty": 2.5}),
        json!({"frequency_penalty": -3}),
        json!({"logit_bias": {"50256": 300}}),
        json!({"top_logprobs": 21}),
    ] {
        assert_eq!(
            chat_with(&app, "sampler", extra.clone()).await,
            invalid,
            "{extra}"
        );
    }
    assert_upstream_untouched(&app).await;
    // In range, and a field the gateway does not know: forwarded as sent.
    let fine = json!({"temperature": 2, "top_p": 0.5, "logit_bias": {"50256": -100},
                      "top_logprobs": 20, "logprobs": true, "a_new_parameter": {"x": "NaN"}});
    assert_eq!(chat_with(&app, "sampler", fine).await.0, 200);
    assert!(app.recorder.wait_for_requests(1, WAIT).await);
    let sent = &app.recorder.requests()[0].body;
    assert_eq!(sent["temperature"], 2);
    assert_eq!(sent["a_new_parameter"], json!({"x": "NaN"}));
    let logs = app.wait_for_logs(9).await;
    assert_eq!(
        logs.iter()
            .filter(|l| l["error_code"] == "invalid_parameter" && l["status"] == 400)
            .count(),
        8
    );
}

#[actix_web::test]
async fn a_plan_denies_costly_parameters_with_403() {
    let app = spawn_app(fast_mock(), |c| {
        c.rate.requests_per_minute = 100;
        c.plans.get_mut("pro").unwrap().denied_parameters =
            ["n", "logprobs", "logit_bias", "tools"]
                .map(String::from)
                .to_vec();
    })
    .await;
    let denied = (403, "parameter_not_allowed".to_string());
    for extra in [
        json!({"n": 2}),
        json!({"n": 1}),
        json!({"logprobs": true}),
        json!({"logit_bias": {"1": 1}}),
        json!({"tools": []}),
    ] {
        assert_eq!(
            chat_with(&app, "frugal", extra.clone()).await,
            denied,
            "{extra}"
        );
    }
    assert_upstream_untouched(&app).await;
    // `null` is as good as absent; other parameters are untouched by the list.
    let fine = json!({"n": null, "logprobs": null, "temperature": 0.3});
    assert_eq!(chat_with(&app, "frugal", fine).await.0, 200);
}

#[actix_web::test]
async fn an_address_flooding_bad_tokens_is_limited_with_429_and_retry_after() {
    // The default limit: 30 failed authentications per address per minute.
    let app = spawn_app(fast_mock(), |_| {}).await;
    let url = format!("{}/v1/chat/completions", app.base);
    let body = chat_body("mock-gpt", false);
    let mut answers: BTreeMap<(u16, String), usize> = BTreeMap::new();
    let mut retry_after = Vec::new();
    for i in 0..200 {
        let response = app
            .client
            .post(&url)
            .bearer_auth(format!("guess-{i}"))
            .send_json(&body)
            .await
            .unwrap();
        if let Some(secs) = response.headers().get("retry-after") {
            retry_after.push(secs.to_str().unwrap().parse::<u64>().unwrap());
        }
        *answers.entry(error_code(response).await).or_default() += 1;
    }
    assert_eq!(
        answers,
        BTreeMap::from([
            ((401, "invalid_token".to_string()), 30),
            ((429, "auth_rate_limited".to_string()), 170),
        ])
    );
    assert_eq!(retry_after.len(), 170);
    assert!(
        retry_after.iter().all(|s| (1..=60).contains(s)),
        "{retry_after:?}"
    );
    // While limited, the address is refused whatever it sends, on every route.
    assert_eq!(
        chat_status(&app, &app.token("real-user")).await,
        (429, "auth_rate_limited".into())
    );
    let response = app
        .client
        .get(format!("{}/v1/usage", app.base))
        .bearer_auth(app.token("real-user"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (429, "auth_rate_limited".into())
    );
    assert_upstream_untouched(&app).await;
    let logs = app.wait_for_logs(201).await;
    assert_eq!(
        logs.iter()
            .filter(|l| l["error_code"] == "auth_rate_limited" && l["status"] == 429)
            .count(),
        171
    );
}
