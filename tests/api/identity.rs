//! Identity, authorization and input policy: every refusal happens before the upstream, with
//! its status and code; what passes reaches the upstream as the policy shaped it.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use tollgate_testkit::app::jwt::{fixture, hs256, signed, unix_now, JWT_FIXTURES};
use tollgate_testkit::app::*;

fn claims() -> Value {
    json!({"sub": "zoe", "plan": "pro", "exp": unix_now() + 300, "iat": unix_now()})
}

fn rs256(claims: &Value) -> String {
    signed(Algorithm::RS256, None, claims)
}

fn es256(claims: &Value) -> String {
    signed(Algorithm::ES256, None, claims)
}

#[actix_web::test]
async fn forged_malformed_and_stale_tokens_are_refused() {
    let app = spawn_app(fast_mock(), |c| {
        c.auth.issuer = "tollgate-tests".into();
        // Under the header bound (8 KiB), so the token's own bound is what refuses it.
        c.auth.max_token_bytes = 4096;
    })
    .await;
    let good =
        json!({"sub": "zoe", "plan": "pro", "exp": unix_now() + 300, "iss": "tollgate-tests"});
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let b64 = |v: &Value| base64_url(&serde_json::to_vec(v).unwrap());
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&good)
    );
    let valid = hs256(&good);
    let mut parts: Vec<&str> = valid.split('.').collect();
    let tampered_payload = b64(&with(json!({"plan": "enterprise"})));
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");

    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none_token, "invalid_token"),
        ("tampered payload", tampered, "invalid_token"),
        (
            "expired",
            hs256(&with(json!({"exp": unix_now() - 30}))),
            "token_expired",
        ),
        (
            "nbf in the future",
            hs256(&with(json!({"nbf": unix_now() + 120}))),
            "invalid_token",
        ),
        (
            "wrong iss",
            hs256(&with(json!({"iss": "someone-else"}))),
            "invalid_token",
        ),
        (
            "no iss",
            hs256(&with(json!({"iss": null}))),
            "invalid_token",
        ),
        (
            "exp as a string",
            hs256(&with(json!({"exp": (unix_now() + 300).to_string()}))),
            "invalid_token",
        ),
        (
            "missing sub",
            hs256(&with(json!({"sub": null}))),
            "invalid_token",
        ),
        (
            "missing plan",
            hs256(&with(json!({"plan": null}))),
            "invalid_token",
        ),
        (
            "lives too long",
            hs256(&with(json!({"exp": unix_now() + 7200}))),
            "invalid_token",
        ),
        (
            "oversized",
            hs256(&with(json!({"pad": "x".repeat(5000)}))),
            "invalid_token",
        ),
        (
            "RS256 when only HS256 is accepted",
            rs256(&good),
            "invalid_token",
        ),
    ];
    for (name, token, code) in cases {
        assert_eq!(
            chat_status(&app, &token).await,
            (401, code.to_string()),
            "{name}"
        );
    }
    // A token over the header bound is refused as an oversized header, before any route.
    let huge = hs256(&with(json!({"pad": "x".repeat(9000)})));
    assert_eq!(
        chat_status(&app, &huge).await,
        (431, "headers_too_large".into())
    );
    assert_eq!(
        chat_status(&app, &hs256(&with(json!({"plan": "platinum"})))).await,
        (403, "unknown_plan".to_string())
    );
    assert_eq!(
        chat_status(&app, &valid).await.0,
        200,
        "the untampered token works"
    );
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[actix_web::test]
async fn a_token_naming_critical_header_extensions_is_refused() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; tollgate knows none.
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["urn:example:must-understand".into()]);
    header
        .extras
        .insert("urn:example:must-understand", json!(true));
    let token = encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        chat_status(&app, &token).await,
        (401, "invalid_token".into())
    );
    // The same claims without `crit` pass.
    assert_eq!(chat_status(&app, &hs256(&claims())).await.0, 200);
}

#[actix_web::test]
async fn rs256_and_es256_accept_their_own_keys_only() {
    let app = spawn_app(fast_mock(), |c| {
        c.auth.algorithms = vec!["RS256".into()];
        c.auth.public_key_path = format!("{JWT_FIXTURES}/rsa_public.pem");
    })
    .await;
    assert_eq!(chat_status(&app, &rs256(&claims())).await.0, 200);
    assert_eq!(
        chat_status(&app, &hs256(&claims())).await.1,
        "invalid_token"
    );
    // Key confusion: an HS256 token whose HMAC key is the RSA public key.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&fixture("rsa_public.pem")),
    )
    .unwrap();
    assert_eq!(chat_status(&app, &confused).await.1, "invalid_token");
    assert_eq!(
        chat_status(&app, &es256(&claims())).await.1,
        "invalid_token"
    );

    let app = spawn_app(fast_mock(), |c| {
        c.auth.algorithms = vec!["ES256".into()];
        c.auth.public_key_path = format!("{JWT_FIXTURES}/ec_public.pem");
    })
    .await;
    assert_eq!(chat_status(&app, &es256(&claims())).await.0, 200);
    assert_eq!(
        chat_status(&app, &rs256(&claims())).await.1,
        "invalid_token"
    );
}

#[actix_web::test]
async fn features_and_models_follow_the_plan() {
    let app = spawn_app(fast_mock(), |c| {
        c.plans.get_mut("basic").unwrap().models = vec!["mock-gpt-mini".into()];
    })
    .await;
    let token = tollgate::auth::mint(&app.config.auth, "bo", "basic", 60).unwrap();
    let ask = |feature: &'static str, model: &'static str| {
        app.client
            .post(format!("{}/v1/chat/completions", app.base))
            .bearer_auth(&token)
            .insert_header(("x-tollgate-feature", feature))
            .send_json(&chat_body(model, false))
    };
    let (status, code) = error_code(ask("code_review", "mock-gpt-mini").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (403, "feature_not_in_plan"));
    let (status, code) = error_code(ask("time_travel", "mock-gpt-mini").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (403, "unknown_feature"));
    let (status, code) = error_code(ask("chat_support", "mock-gpt").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (403, "model_not_in_plan"));
    assert_upstream_untouched(&app).await;
    assert_eq!(
        ask("chat_support", "mock-gpt-mini").await.unwrap().status(),
        200
    );
}

#[actix_web::test]
async fn message_length_is_counted_in_characters() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut body = chat_body("mock-gpt", false);
    body["messages"][0]["content"] = json!("ß".repeat(4001));
    let response = app.post_chat("zoe").send_json(&body).await.unwrap();
    assert_eq!(error_code(response).await, (400, "message_too_long".into()));
    assert_upstream_untouched(&app).await;
    body["messages"][0]["content"] = json!("ß".repeat(4000)); // 8,000 bytes, 4,000 characters
    let response = app.post_chat("zoe").send_json(&body).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[actix_web::test]
async fn fifteen_turns_arrive_upstream_as_the_last_ten_plus_system() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut messages = vec![json!({"role": "system", "content": "be brief"})];
    for i in 0..15 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": format!("turn {i}")}));
    }
    let body = json!({"model": "mock-gpt", "messages": messages});
    assert_eq!(
        app.post_chat("zoe")
            .send_json(&body)
            .await
            .unwrap()
            .status(),
        200
    );
    let sent = app.recorder.requests()[0].body["messages"].clone();
    let sent = sent.as_array().unwrap();
    // The default canary's system message, the client's system message, the last ten turns.
    assert_eq!(sent.len(), 12);
    assert!(sent[0]["content"].as_str().unwrap().contains("qzcn-"));
    assert_eq!(sent[1], json!({"role": "system", "content": "be brief"}));
    let contents: Vec<&str> = sent[2..]
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        (5..15).map(|i| format!("turn {i}")).collect::<Vec<_>>()
    );
}

#[actix_web::test]
async fn an_oversized_context_is_refused() {
    let app = spawn_app(fast_mock(), |c| c.limits.max_context_tokens = 100).await;
    let mut body = chat_body("mock-gpt", false);
    body["messages"][0]["content"] = json!(" the".repeat(200));
    let response = app.post_chat("zoe").send_json(&body).await.unwrap();
    assert_eq!(error_code(response).await, (400, "context_too_long".into()));
    assert_upstream_untouched(&app).await;
}

#[actix_web::test]
async fn hostile_bodies_get_clear_errors_and_the_server_stays_up() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let send_raw = |bytes: Vec<u8>| {
        app.post_chat("zoe")
            .insert_header(("content-type", "application/json"))
            .send_body(bytes)
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        error_code(send_raw(deep.into_bytes()).await.unwrap()).await,
        (400, "invalid_json".into())
    );
    let mut nested_content =
        br#"{"model":"mock-gpt","messages":[{"role":"user","content":"#.to_vec();
    nested_content.extend(b"[".repeat(50_000));
    assert_eq!(
        error_code(send_raw(nested_content).await.unwrap()).await,
        (400, "invalid_json".into())
    );
    let invalid_utf8 =
        b"{\"model\":\"mock-gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"
            .to_vec();
    assert_eq!(
        error_code(send_raw(invalid_utf8).await.unwrap()).await,
        (400, "invalid_json".into())
    );
    let surrogate =
        br#"{"model":"mock-gpt","messages":[{"role":"user","content":"\ud800"}]}"#.to_vec();
    assert_eq!(
        error_code(send_raw(surrogate).await.unwrap()).await,
        (400, "invalid_json".into())
    );
    let ten_mb = vec![b' '; 10 * 1024 * 1024];
    assert_eq!(
        error_code(send_raw(ten_mb).await.unwrap()).await,
        (413, "payload_too_large".into())
    );
    assert_upstream_untouched(&app).await;
    assert_eq!(
        app.post_chat("zoe")
            .send_json(&chat_body("mock-gpt", false))
            .await
            .unwrap()
            .status(),
        200,
        "still serving"
    );
}

#[actix_web::test]
async fn max_tokens_is_clamped_to_the_plan_cap() {
    let app = spawn_app(fast_mock(), |c| {
        c.plans.get_mut("pro").unwrap().max_output_tokens = Some(300);
    })
    .await;
    let mut body = chat_body("mock-gpt", false);
    body["max_tokens"] = json!(100_000);
    let response = app.post_chat("zoe").send_json(&body).await.unwrap();
    assert_eq!(
        response.headers().get("x-tollgate-max-tokens").unwrap(),
        "300"
    );
    assert_eq!(app.recorder.requests()[0].body["max_tokens"], 300);
    // Without max_tokens the default (1000) is clamped too.
    let response = app
        .post_chat("zoe")
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("x-tollgate-max-tokens").unwrap(),
        "300"
    );
}
