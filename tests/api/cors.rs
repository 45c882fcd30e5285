//! Browser access: CORS preflights, headers on answers (errors included), and the demo page.

use tollgate_testkit::app::*;

const ALLOWED: &str = "https://chat.example.com";

async fn app() -> TestApp {
    spawn_app(fast_mock(), |c| {
        c.server.cors_allowed_origins = vec![ALLOWED.into()];
        c.rate.requests_per_minute = 1;
    })
    .await
}

fn preflight(app: &TestApp, origin: &str) -> awc::ClientRequest {
    app.client
        .request(
            awc::http::Method::OPTIONS,
            format!("{}/v1/chat/completions", app.base),
        )
        .insert_header(("origin", origin))
        .insert_header(("access-control-request-method", "POST"))
        .insert_header((
            "access-control-request-headers",
            "authorization, content-type, x-stainless-os, x-stainless-retry-count",
        ))
}

#[actix_web::test]
async fn a_preflight_from_an_allowed_origin_is_answered_without_auth_or_limits() {
    let app = app().await;
    for _ in 0..3 {
        // More preflights than the per-minute limit allows requests: they touch no limit.
        let response = preflight(&app, ALLOWED).send().await.unwrap();
        assert_eq!(response.status(), 204);
        let h = response.headers();
        assert_eq!(h.get("access-control-allow-origin").unwrap(), ALLOWED);
        assert!(h
            .get("access-control-allow-methods")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("POST"));
        let allowed = h
            .get("access-control-allow-headers")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"));
        assert!(
            allowed.contains("x-stainless-os"),
            "the OpenAI JS SDK's headers: {allowed}"
        );
        assert!(h.contains_key("x-request-id"));
    }
    assert_eq!(app.usage("alice").await["requests_per_minute"]["used"], 0);
    assert!(app.recorder.requests().is_empty());
}

#[actix_web::test]
async fn another_origin_gets_no_cors_headers() {
    let app = app().await;
    let response = preflight(&app, "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let response = app
        .post_chat("alice")
        .insert_header(("origin", "https://evil.example.net"))
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[actix_web::test]
async fn answers_and_refusals_carry_cors_headers_for_allowed_origins() {
    let app = app().await;
    let response = app
        .post_chat("alice")
        .insert_header(("origin", ALLOWED))
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        ALLOWED
    );
    let exposed = response
        .headers()
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for name in [
        "x-request-id",
        "retry-after",
        "x-ratelimit-remaining-requests",
        "x-tollgate-max-tokens",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    // The second request passes the 1/minute limit: the 429 carries CORS headers too.
    let refused = app
        .post_chat("alice")
        .insert_header(("origin", ALLOWED))
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        ALLOWED
    );
    assert_eq!(
        error_code(refused).await,
        (429, "requests_per_minute".into())
    );
    let unauthenticated = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .insert_header(("origin", ALLOWED))
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert_eq!(
        unauthenticated
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        ALLOWED
    );
    assert_eq!(error_code(unauthenticated).await.0, 401);
}

#[actix_web::test]
async fn the_demo_page_is_served_under_a_strict_csp_and_can_be_turned_off() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    for (path, kind) in [
        ("/chat", "text/html"),
        ("/chat/app.js", "text/javascript"),
        ("/chat/app.css", "text/css"),
    ] {
        let mut response = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let h = response.headers();
        assert!(h
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(kind));
        let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline"));
        let body = response.body().await.unwrap();
        assert!(!body.is_empty());
    }
    let js = app
        .client
        .get(format!("{}/chat/app.js", app.base))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    let js = String::from_utf8(js.to_vec()).unwrap();
    assert!(
        !js.contains("innerHTML"),
        "model output must never be inserted as HTML"
    );

    let off = spawn_app(fast_mock(), |c| c.server.demo_ui = false).await;
    let response = off
        .client
        .get(format!("{}/chat", off.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (404, "not_found".into()));
}
