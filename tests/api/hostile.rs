//! Hostile clients from the test catalogue (`TEST_CATALOGUE.md`, audited in
//! `docs/catalogue-audit.md`): ambiguous framing (request smuggling), header bombs, malformed and
//! misplaced tokens, admin paths, encodings the gateway does not read, HTTP/2 prefaces, labels
//! built to break logs, and a token that expires mid-stream. Each is refused before the upstream
//! with its exact status (and code, where the gateway's own error body answers), or served as
//! the catalogue's audit says is deliberate.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::io::Write;
use tollgate_testkit::app::jwt::{hs256, unix_now};
use tollgate_testkit::app::raw::{self, closed_by_server};
use tollgate_testkit::app::*;

/// Writes `request` on a new connection and reads one response; also whether the gateway then
/// closed the connection.
async fn exchange_raw(app: &TestApp, request: Vec<u8>) -> (raw::RawResponse, bool) {
    let addr = app.addr();
    tokio::task::spawn_blocking(move || {
        let mut stream = raw::connect(&addr);
        stream.write_all(&request).unwrap();
        let response = raw::read_response(&mut stream).unwrap();
        let closed = closed_by_server(&mut stream);
        (response, closed)
    })
    .await
    .unwrap()
}

const BODY: &str = r#"{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}]}"#;

/// A chat request head with a valid token and `framing` as its body headers, then `body`.
fn chat_head(app: &TestApp, framing: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: tollgate\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\n{framing}\r\n",
        app.token("framer")
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Catalogue IN-3: a body whose length two headers disagree on (or that a front proxy could
/// read differently) is refused `400` and the connection closed, before any route runs.
#[actix_web::test]
async fn ambiguous_body_framing_is_refused_400_and_the_connection_closed() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let len = BODY.len();
    let chunked = format!("{len:x}\r\n{BODY}\r\n0\r\n\r\n");
    let cases = [
        (
            format!("Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n"),
            &chunked,
        ),
        (
            format!("Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n"),
            &chunked,
        ),
        (
            "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n".to_string(),
            &chunked,
        ),
        (
            format!("Content-Length: {len}\r\nContent-Length: {}\r\n", len + 5),
            &format!("{BODY}xxxxx"),
        ),
        (
            format!("Content-Length: {len}\r\nContent-Length: {len}\r\n"),
            &BODY.to_string(),
        ),
        ("Transfer-Encoding: gzip, chunked\r\n".to_string(), &chunked),
        (
            format!("Transfer-Encoding: identity\r\nContent-Length: {len}\r\n"),
            &BODY.to_string(),
        ),
        ("Transfer-Encoding:\r\n chunked\r\n".to_string(), &chunked),
        ("Transfer-Encoding: xchunked\r\n".to_string(), &chunked),
    ];
    for (framing, body) in cases {
        let (response, closed) =
            exchange_raw(&app, chat_head(&app, &framing, body.as_bytes())).await;
        assert_eq!(response.status, 400, "{framing:?}: {response:?}");
        assert!(closed, "{framing:?}: the connection stayed open");
    }
    // The same body, framed once, is served.
    let framing = format!("Content-Length: {len}\r\nConnection: close\r\n");
    let (response, _) = exchange_raw(&app, chat_head(&app, &framing, BODY.as_bytes())).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(app.recorder.requests().len(), 1);
}

/// Catalogue IN-5: more request headers than the parser takes (96) get `431`.
#[actix_web::test]
async fn more_headers_than_the_parser_takes_get_431() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let many = |n: usize| -> String {
        (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            + &format!("Content-Length: {}\r\nConnection: close\r\n", BODY.len())
    };
    let (response, closed) = exchange_raw(&app, chat_head(&app, &many(101), BODY.as_bytes())).await;
    assert_eq!(response.status, 431, "{response:?}");
    assert!(closed);
    let (response, _) = exchange_raw(&app, chat_head(&app, &many(80), BODY.as_bytes())).await;
    assert_eq!(response.status, 200, "{response:?}");
}

/// `header.claims.signature` over the raw (already encoded) segments, HS256 with the harness'
/// secret.
fn sign_raw(header: &str, claims: &str) -> String {
    sign_raw_with(JWT_SECRET, header, claims)
}

/// As [`sign_raw`], with `secret`.
fn sign_raw_with(secret: &str, header: &str, claims: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{signature}")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Catalogue AU-1, AU-3, AU-4, AU-6, AU-7, AU-8: tokens with `alg: none` in any case, odd `exp`
/// and `nbf` values, a key of their own (`jwk`, `jku`, `x5u`), the wrong number of segments,
/// padding or the standard base64 alphabet, duplicate claims, or sent in the query or the body
/// instead of the header: all `401`, none reaching the upstream.
#[actix_web::test]
async fn malformed_and_misplaced_tokens_are_refused_401() {
    // Every refusal here comes from one address: no per-address limit for this test.
    let app = spawn_app(fast_mock(), |c| c.auth.max_failures_per_minute = 0).await;
    let now = unix_now();
    let claims = json!({"sub": "mallory", "plan": "pro", "exp": now + 300});
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let with = |key: &str, value: Value| {
        let mut c = claims.clone();
        c[key] = value;
        sign_raw(&b64(&hs), &b64(&c))
    };
    let good = sign_raw(&b64(&hs), &b64(&claims));
    let parts: Vec<&str> = good.split('.').collect();
    let mut cases: Vec<(String, String)> = Vec::new();
    for alg in ["none", "None", "nOnE"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        cases.push((format!("alg {alg}"), format!("{header}.{}.", b64(&claims))));
        cases.push((
            format!("alg {alg}, signed"),
            sign_raw(&header, &b64(&claims)),
        ));
    }
    cases.extend([
        ("exp 1e308".into(), with("exp", json!(1e308))),
        ("exp -1".into(), with("exp", json!(-1))),
        ("exp null".into(), with("exp", Value::Null)),
        (
            "exp a fraction".into(),
            with("exp", json!(now as f64 + 300.5)),
        ),
        ("nbf a string".into(), with("nbf", json!("x"))),
        ("two segments".into(), format!("{}.{}", parts[0], parts[1])),
        ("four segments".into(), format!("{good}.x")),
        ("five segments (JWE)".into(), format!("{good}.x.y")),
        (
            "padded".into(),
            format!("{}==.{}.{}", parts[0], parts[1], parts[2]),
        ),
        ("standard base64 header".into(), {
            // "???" encodes with a '/' in the standard alphabet, '_' in the URL-safe one.
            let header = STANDARD.encode(r#"{"alg":"HS256","typ":"JWT","x":"???"}"#);
            assert!(header.contains('/'), "{header}");
            sign_raw(&header, parts[1])
        }),
        (
            "duplicate exp".into(),
            sign_raw(
                parts[0],
                &URL_SAFE_NO_PAD.encode(format!(
                    r#"{{"sub":"mallory","plan":"pro","exp":1,"exp":{}}}"#,
                    now + 300
                )),
            ),
        ),
    ]);
    // AU-6: keys a token points at or carries are never used: signed with the attacker's own
    // key, it is refused whatever its header says.
    let attacker = "attacker-secret";
    let jwk = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(attacker)});
    for (name, value) in [
        ("jwk", jwk),
        ("jku", json!("http://127.0.0.1:1/jwks.json")),
        ("x5u", json!("http://127.0.0.1:1/cert.pem")),
    ] {
        let mut header = hs.clone();
        header[name] = value;
        cases.push((
            format!("{name} with the attacker's key"),
            sign_raw_with(attacker, &b64(&header), &b64(&claims)),
        ));
    }
    for (case, token) in &cases {
        let code = chat_status(&app, token).await;
        assert_eq!(code.0, 401, "{case}: {code:?}");
        assert_ne!(code.1, "missing_token", "{case}");
    }
    // In the query string or the body, a token is not a token.
    let response = app
        .client
        .post(format!(
            "{}/v1/chat/completions?access_token={good}",
            app.base
        ))
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (401, "missing_token".into()));
    let mut body = chat_body("mock-gpt", false);
    body["access_token"] = json!(good);
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (401, "missing_token".into()));
    assert_upstream_untouched(&app).await;
    // The unaltered token is good, and so is that header in the URL-safe alphabet.
    assert_eq!(chat_status(&app, &good).await.0, 200);
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT","x":"???"}"#);
    assert_eq!(chat_status(&app, &sign_raw(&header, parts[1])).await.0, 200);
}

/// Catalogue AU-9: no admin route on the public listener (without an admin key configured),
/// and a method swap on the chat route is `405`.
#[actix_web::test]
async fn admin_paths_are_not_served_and_method_swaps_get_405() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    for path in ["/v1/admin/users", "/admin/v1/users", "/admin"] {
        let response = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth(app.token("mallory"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(response).await,
            (404, "not_found".into()),
            "{path}"
        );
    }
    let response = app
        .client
        .delete(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(app.token("mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(response).await,
        (405, "method_not_allowed".into())
    );
}

/// Catalogue IN-8: a compressed body is refused `415` unread (no decompression bombs); a byte
/// order mark or overlong UTF-8 is `400 invalid_json`. The content type is not checked (a
/// deliberate choice, see the audit): a JSON body sent as `text/plain` is served.
#[actix_web::test]
async fn bodies_in_encodings_the_gateway_does_not_read_are_refused() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let send = |body: Vec<u8>, headers: &[(&str, &str)]| {
        let mut request = app.post_chat("encoder");
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        request.send_body(body)
    };
    let json = [("content-type", "application/json")];
    let gzip = send(
        BODY.as_bytes().to_vec(),
        &[json[0], ("content-encoding", "gzip")],
    )
    .await
    .unwrap();
    assert_eq!(
        error_code(gzip).await,
        (415, "unsupported_media_type".into())
    );
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(BODY.as_bytes());
    let refused = send(bom, &json).await.unwrap();
    assert_eq!(error_code(refused).await, (400, "invalid_json".into()));
    // "/" as an overlong two-byte sequence.
    let mut overlong = br#"{"model":"mock-gpt","messages":[{"role":"user","content":""#.to_vec();
    overlong.extend_from_slice(&[0xc0, 0xaf]);
    overlong.extend_from_slice(br#""}]}"#);
    let refused = send(overlong, &json).await.unwrap();
    assert_eq!(error_code(refused).await, (400, "invalid_json".into()));
    assert_upstream_untouched(&app).await;
    let served = send(BODY.as_bytes().to_vec(), &[("content-type", "text/plain")])
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}

/// Catalogue IN-10: the gateway speaks HTTP/1.1 only; an HTTP/2 preface is refused and closed.
#[actix_web::test]
async fn an_http2_preface_is_refused_and_closed() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let (response, closed) = exchange_raw(&app, preface).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert!(closed);
}

/// Catalogue OB-2: labels a client chooses (model, feature, session) built to break a log line
/// or a metric's cardinality: every line stays one JSON object with its client-chosen text cut
/// to 128 characters, and none of it reaches `/metrics`.
#[actix_web::test]
async fn hostile_labels_keep_log_lines_whole_and_out_of_metrics() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let models = [
        "mock-gpt\n{\"injected\":1}".to_string(),
        "mock-gpt\u{1b}[31mred".to_string(),
        "m".repeat(10_000),
    ];
    for model in &models {
        let mut body = chat_body("mock-gpt", false);
        body["model"] = json!(model);
        let response = app.post_chat("labeller").send_json(&body).await.unwrap();
        assert_eq!(error_code(response).await, (400, "unknown_model".into()));
    }
    let long = "f".repeat(6000);
    let response = app
        .post_chat("labeller")
        .insert_header(("x-tollgate-feature", long.as_str()))
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (403, "unknown_feature".into()));
    let session = "s".repeat(6000);
    let response = app
        .post_chat("labeller")
        .insert_header(("x-session-id", session.as_str()))
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = app.logs.wait_for(5, WAIT).await;
    assert_eq!(lines.len(), 5);
    for line in &lines {
        assert!(!line.contains('\n'), "{line}");
        let parsed: Value = serde_json::from_str(line).unwrap();
        for field in ["model", "requested_model", "feature", "session_id"] {
            let chars = parsed[field].as_str().map_or(0, |s| s.chars().count());
            assert!(chars <= 128, "{field} of {chars} characters: {line}");
        }
    }
    let exposition = app.scrape_metrics().await;
    for needle in [
        "injected",
        "\u{1b}",
        "mmmmmmmmmm",
        "ffffffffff",
        "ssssssssss",
    ] {
        assert!(!exposition.contains(needle), "{needle:?} in /metrics");
    }
}

/// Catalogue AU-4: the token is checked when a request arrives; one that expires while its
/// stream runs does not cut the stream (the deadline bounds it), and is refused afterwards.
#[actix_web::test]
async fn a_token_that_expires_mid_stream_does_not_cut_it() {
    let app = spawn_app(
        tollgate::mock::MockOptions {
            tokens: 30,
            tokens_per_second: 10.0,
            ..fast_mock()
        },
        |c| c.auth.leeway_secs = 0,
    )
    .await;
    // Valid for one to two seconds; the stream takes three.
    let token = hs256(&json!({"sub": "ephemeral", "plan": "pro", "exp": unix_now() + 2}));
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    let events = sse::SseReader::new(response).collect().await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(sse::content_of(&events).split_whitespace().count(), 30);
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["outcome"], "completed");
    assert_eq!(
        chat_status(&app, &token).await,
        (401, "token_expired".into())
    );
}

/// Catalogue IN-7: bodies built to amplify parsing work or memory (a hundred thousand empty
/// messages, a number past any float, 900 KiB of `\u0000` escapes) get `400` with their code,
/// never the upstream.
#[actix_web::test]
async fn amplifying_bodies_get_400_with_their_code() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let mut empty_messages = br#"{"model":"mock-gpt","messages":["#.to_vec();
    empty_messages.extend_from_slice(&b"{},".repeat(99_999));
    empty_messages.extend_from_slice(b"{}]}");
    let huge_number =
        br#"{"model":"mock-gpt","max_tokens":1e999999,"messages":[{"role":"user","content":"hi"}]}"#
            .to_vec();
    let mut nuls = br#"{"model":"mock-gpt","messages":[{"role":"user","content":""#.to_vec();
    nuls.extend_from_slice(&br"\u0000".repeat(150_000));
    nuls.extend_from_slice(br#""}]}"#);
    let cases = [
        (empty_messages, "invalid_messages"),
        (huge_number, "invalid_json"),
        (nuls, "message_too_long"),
    ];
    for (body, code) in cases {
        let response = app
            .post_chat("amplifier")
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(error_code(response).await, (400, code.to_string()));
    }
    assert_upstream_untouched(&app).await;
}
