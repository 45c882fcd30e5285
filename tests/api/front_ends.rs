//! Trusted front ends (`auth.service_keys`): a chat UI's backend calls with one key and names
//! its end user in a header or a signed user JWT; each of its users is a first-class user with
//! their own windows, and nobody without the key can name a user. Also `/v1/models` and the
//! cost the client is told.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate::config::{Config, Secret, ServiceKeyConfig};
use tollgate_testkit::app::jwt::unix_now;
use tollgate_testkit::app::sse::SseReader;
use tollgate_testkit::app::*;

const USER_HEADER: &str = "x-openwebui-user-id";
const ROLE_HEADER: &str = "x-openwebui-user-role";
const CHAT_HEADER: &str = "x-openwebui-chat-id";
const JWT_HEADER: &str = "x-openwebui-user-jwt";
const USER_JWT_SECRET: &str = "front-end-user-jwt-secret";

/// A front end's key: (the key its backend sends, its config).
fn front_end(user_header: &str) -> (String, ServiceKeyConfig) {
    let (key, hash) = tollgate::auth::new_key();
    let config = ServiceKeyConfig {
        key_sha256: hash,
        user_header: user_header.into(),
        role_header: ROLE_HEADER.into(),
        role_plans: BTreeMap::from([("admin".into(), "enterprise".into())]),
        plan: "pro".into(),
        session_header: CHAT_HEADER.into(),
        ..ServiceKeyConfig::default()
    };
    (key, config)
}

/// A front end that signs a JWT per user (Open WebUI's `FORWARD_USER_INFO_HEADER_JWT_SECRET`).
fn jwt_front_end() -> (String, ServiceKeyConfig) {
    let (key, mut config) = front_end("");
    config.user_jwt_header = JWT_HEADER.into();
    config.user_jwt_secret = Secret::new(USER_JWT_SECRET);
    config.user_jwt_issuer = "open-webui".into();
    (key, config)
}

/// Open WebUI's user JWT: `sub`, `role`, `iss`, `iat`, `exp` = iat + 300.
fn user_jwt(sub: &str, role: &str, iss: &str, secret: &str, expires_in: i64) -> String {
    let now = unix_now() as i64;
    let claims = json!({
        "sub": sub, "email": format!("{sub}@example.com"), "name": "A User", "role": role,
        "iss": iss, "iat": now, "exp": now + expires_in,
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn app_with(keys: Vec<(&str, ServiceKeyConfig)>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app(fast_mock(), |c| {
        for (name, key) in keys {
            c.auth.service_keys.insert(name.into(), key);
        }
        tweak(c);
    })
    .await
}

/// A chat request from a front end with `key` and extra `headers`.
fn post_as(app: &TestApp, key: &str, headers: &[(&str, &str)]) -> awc::ClientRequest {
    let mut request = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(key);
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    request
}

async fn get_as(app: &TestApp, path: &str, key: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = app
        .client
        .get(format!("{}{path}", app.base))
        .bearer_auth(key);
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json::<Value>().await.unwrap())
}

fn streamed(max_tokens: u32) -> Value {
    let mut body = chat_body("mock-gpt", true);
    body["max_tokens"] = json!(max_tokens);
    body["stream_options"] = json!({"include_usage": true});
    body
}

#[actix_web::test]
async fn a_front_end_user_is_their_own_user_with_their_own_window() {
    let (key, config) = front_end(USER_HEADER);
    let app = app_with(vec![("openwebui", config)], |c| {
        c.rate.requests_per_minute = 2;
    })
    .await;
    for _ in 0..2 {
        let response = post_as(&app, &key, &[(USER_HEADER, "alice-uuid")])
            .send_json(&streamed(5))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        SseReader::new(response).collect().await;
    }
    // Alice's minute is full; Bob, behind the same key, still streams.
    let refused = post_as(&app, &key, &[(USER_HEADER, "alice-uuid")])
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(
        error_code(refused).await,
        (429, "requests_per_minute".into())
    );
    let bob = post_as(&app, &key, &[(USER_HEADER, "bob-uuid")])
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(bob.status(), 200);
    let events = SseReader::new(bob).collect().await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    let logs = app.wait_for_logs(4).await;
    let mut users: Vec<&str> = logs
        .iter()
        .map(|l| l["user_id"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(
        users,
        [
            "openwebui:alice-uuid",
            "openwebui:alice-uuid",
            "openwebui:alice-uuid",
            "openwebui:bob-uuid"
        ]
    );
    let (status, usage) = get_as(&app, "/v1/usage", &key, &[(USER_HEADER, "alice-uuid")]).await;
    assert_eq!(status, 200);
    assert_eq!(usage["user_id"], "openwebui:alice-uuid");
    assert_eq!(usage["usage"]["requests"], 2);
    let (_, usage) = get_as(&app, "/v1/usage", &key, &[(USER_HEADER, "bob-uuid")]).await;
    assert_eq!(usage["usage"]["requests"], 1);
    // Nothing about the key is logged.
    let everything = app.logs.lines().join("\n");
    assert!(
        !everything.contains(&key[4..]),
        "the key leaked into the log"
    );
}

#[actix_web::test]
async fn roles_choose_plans_and_the_session_header_is_logged() {
    let (key, config) = front_end(USER_HEADER);
    let app = app_with(vec![("openwebui", config)], |_| {}).await;
    for (user, role) in [("root", "admin"), ("ann", "user"), ("kim", "")] {
        let mut headers = vec![(USER_HEADER, user), (CHAT_HEADER, "chat-77")];
        if !role.is_empty() {
            headers.push((ROLE_HEADER, role));
        }
        let response = post_as(&app, &key, &headers)
            .send_json(&streamed(5))
            .await
            .unwrap();
        SseReader::new(response).collect().await;
    }
    let logs = app.wait_for_logs(3).await;
    let mut plans: Vec<(&str, &str)> = logs
        .iter()
        .map(|l| (l["user_id"].as_str().unwrap(), l["plan"].as_str().unwrap()))
        .collect();
    plans.sort_unstable();
    assert_eq!(
        plans,
        [
            ("openwebui:ann", "pro"),
            ("openwebui:kim", "pro"),
            ("openwebui:root", "enterprise")
        ]
    );
    assert!(
        logs.iter().all(|l| l["session_id"] == "chat-77"),
        "{logs:?}"
    );
}

#[actix_web::test]
async fn a_front_end_must_name_a_usable_user() {
    let (key, config) = front_end(USER_HEADER);
    let app = app_with(vec![("openwebui", config)], |_| {}).await;
    let long = "u".repeat(257);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "missing_user"),
        (&[(USER_HEADER, "   ")], "missing_user"),
        (&[(USER_HEADER, long.as_str())], "invalid_user"),
        (&[(USER_HEADER, "ann\tbob")], "invalid_user"),
    ];
    for (headers, code) in cases {
        let response = post_as(&app, &key, headers)
            .send_json(&streamed(5))
            .await
            .unwrap();
        assert_eq!(error_code(response).await, (400, code.to_string()));
    }
    // 256 bytes is still a user.
    let edge = "u".repeat(256);
    let response = post_as(&app, &key, &[(USER_HEADER, edge.as_str())])
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    SseReader::new(response).collect().await;
    let logs = app.wait_for_logs(5).await;
    assert_eq!(logs.len(), 5);
    assert_eq!(
        app.recorder.requests().len(),
        1,
        "only the good one went upstream"
    );
}

#[actix_web::test]
async fn only_the_key_makes_a_user_header_count() {
    let (_, config) = front_end(USER_HEADER);
    let app = app_with(vec![("openwebui", config)], |_| {}).await;
    // A wrong key is an invalid token, whatever headers come with it.
    let wrong = post_as(&app, "tgk_not-the-key", &[(USER_HEADER, "alice-uuid")])
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(error_code(wrong).await, (401, "invalid_token".into()));
    assert_upstream_untouched(&app).await;
    // A JWT caller's spoofed user header is ignored: the JWT's subject is the user.
    let response = app
        .post_chat("mallory")
        .insert_header((USER_HEADER, "alice-uuid"))
        .insert_header((ROLE_HEADER, "admin"))
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    SseReader::new(response).collect().await;
    let logs = app.wait_for_logs(2).await;
    assert_eq!(logs[1]["user_id"], "mallory");
    assert_eq!(logs[1]["plan"], "pro");
}

#[actix_web::test]
async fn two_front_ends_keep_their_users_apart() {
    let (key_a, config_a) = front_end(USER_HEADER);
    let (key_b, config_b) = front_end("x-librechat-user-id");
    let app = app_with(vec![("webui", config_a), ("libre", config_b)], |_| {}).await;
    for (key, header) in [(&key_a, USER_HEADER), (&key_b, "x-librechat-user-id")] {
        let response = post_as(&app, key, &[(header, "42")])
            .send_json(&streamed(5))
            .await
            .unwrap();
        SseReader::new(response).collect().await;
    }
    // Key B's header names no one under key A.
    let response = post_as(&app, &key_a, &[("x-librechat-user-id", "42")])
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (400, "missing_user".into()));
    let logs = app.wait_for_logs(3).await;
    let mut users: Vec<&str> = logs
        .iter()
        .map(|l| l["user_id"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["", "libre:42", "webui:42"]);
    let (_, usage) = get_as(&app, "/v1/usage", &key_a, &[(USER_HEADER, "42")]).await;
    assert_eq!(usage["usage"]["requests"], 1);
}

#[actix_web::test]
async fn a_signed_user_jwt_names_the_user_and_role() {
    let (key, config) = jwt_front_end();
    let app = app_with(vec![("openwebui", config)], |_| {}).await;
    let good = user_jwt("u-7", "admin", "open-webui", USER_JWT_SECRET, 300);
    let response = post_as(&app, &key, &[(JWT_HEADER, good.as_str())])
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    SseReader::new(response).collect().await;
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["user_id"], "openwebui:u-7");
    assert_eq!(logs[0]["plan"], "enterprise");

    let expired = user_jwt("u-7", "user", "open-webui", USER_JWT_SECRET, -60);
    let wrong_issuer = user_jwt("u-7", "user", "someone-else", USER_JWT_SECRET, 300);
    let wrong_secret = user_jwt("u-7", "user", "open-webui", "not-the-secret", 300);
    let critical = {
        let now = unix_now() as i64;
        let header = Header {
            crit: Some(vec!["urn:example:must-understand".into()]),
            ..Header::default()
        };
        let claims = json!({"sub": "u-7", "role": "user", "iss": "open-webui", "exp": now + 300});
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(USER_JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    for bad in [
        expired.as_str(),
        wrong_issuer.as_str(),
        wrong_secret.as_str(),
        critical.as_str(),
        "x.y.z",
    ] {
        let response = post_as(&app, &key, &[(JWT_HEADER, bad)])
            .send_json(&streamed(5))
            .await
            .unwrap();
        assert_eq!(error_code(response).await, (401, "invalid_token".into()));
    }
    // Missing, or a plain user header instead: no user.
    let response = post_as(&app, &key, &[(USER_HEADER, "u-7")])
        .send_json(&streamed(5))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (401, "invalid_token".into()));
    let logs = app.wait_for_logs(7).await;
    let everything = serde_json::to_string(&logs).unwrap();
    assert!(
        !everything.contains(&good),
        "the user JWT leaked into the log"
    );
    assert_eq!(app.recorder.requests().len(), 1);
}

#[actix_web::test]
async fn models_are_listed_per_plan_and_for_a_front_end_before_any_user() {
    let (key, config) = front_end(USER_HEADER);
    let app = app_with(vec![("openwebui", config)], |c| {
        c.plans.get_mut("basic").unwrap().models = vec!["mock-gpt-mini".into()];
        c.auth.service_keys.get_mut("openwebui").unwrap().plan = "basic".into();
    })
    .await;
    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The front end itself (no user yet): its key's plan.
    let (status, list) = get_as(&app, "/v1/models", &key, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(ids(&list), ["mock-gpt-mini"]);
    assert_eq!(
        list["data"][0],
        json!({"id":"mock-gpt-mini","object":"model","created":0,"owned_by":"tollgate"})
    );
    // A pro user (no allow-list): every priced model.
    let token = app.token("paula");
    let (_, list) = get_as(&app, "/v1/models", &token, &[]).await;
    let mut priced: Vec<String> = app.config.pricing.keys().cloned().collect();
    priced.sort();
    assert_eq!(ids(&list), priced);
    let (status, model) = get_as(&app, "/v1/models/gpt-4o", &token, &[]).await;
    assert_eq!((status, model["id"].clone()), (200, json!("gpt-4o")));
    let (status, error) = get_as(&app, "/v1/models/gpt-4o", &key, &[]).await;
    assert_eq!(
        (status, error["error"]["code"].clone()),
        (404, json!("model_not_found"))
    );
    let (status, error) = get_as(&app, "/v1/models", "tgk_wrong", &[]).await;
    assert_eq!(
        (status, error["error"]["code"].clone()),
        (401, json!("invalid_token"))
    );
}

#[actix_web::test]
async fn the_client_is_told_the_cost_it_was_billed() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let events = app.stream("carla", &streamed(7)).await;
    let usage_chunk: Value = events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .find(|e| e["usage"].is_object())
        .expect("a usage chunk");
    let mut response = app
        .post_chat("carla")
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    let reply: Value = response.json().await.unwrap();
    let logs = app.wait_for_logs(2).await;
    for (usage, line) in [
        (&usage_chunk["usage"], &logs[0]),
        (&reply["usage"], &logs[1]),
    ] {
        assert!(usage["cost"].as_f64().unwrap() > 0.0, "{usage}");
        assert_eq!(usage["cost"], line["cost_usd"], "{usage} / {line}");
        assert_eq!(usage["completion_tokens"], line["output_tokens"]);
    }
}

#[actix_web::test]
async fn a_front_end_may_lift_the_message_limit_for_its_background_tasks() {
    let (key, mut config) = front_end(USER_HEADER);
    config.max_message_chars = Some(32_000);
    let app = app_with(vec![("openwebui", config)], |_| {}).await;
    // Open WebUI's tags task: the last 6 messages quoted in one user message.
    let quoted = format!(
        "### Task:\nGenerate 1-3 broad tags.\n<chat_history>\n{}\n</chat_history>",
        "ASSISTANT: word ".repeat(400)
    );
    assert!(quoted.chars().count() > 6_000);
    let body =
        json!({"model":"mock-gpt","stream":false,"messages":[{"role":"user","content":quoted}]});
    let response = post_as(&app, &key, &[(USER_HEADER, "ann")])
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A JWT user is held to the global limit.
    let response = app.post_chat("jo").send_json(&body).await.unwrap();
    assert_eq!(error_code(response).await, (400, "message_too_long".into()));
}
