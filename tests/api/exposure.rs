//! Who can read `/metrics`: it names users and what they spent. By default it is a route of the
//! gateway's listener (the contract; that listener is loopback by default); `server.metrics_listen`
//! moves it to a listener of its own, and `metrics.bearer_token` guards it wherever it is served.

use tollgate::config::Secret;
use tollgate_testkit::app::*;

const TOKEN: &str = "scrape-token-for-tests";

/// A request that costs something, so `user` gets a per-user series.
async fn spend(app: &TestApp, user: &str) {
    let events = app.stream(user, &chat_body("mock-gpt", true)).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    app.wait_for_logs(1).await;
}

/// (status, body) of `GET url` with an optional bearer token.
async fn get(app: &TestApp, url: String, bearer: Option<&str>) -> (u16, String) {
    let mut request = app.client.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.unwrap();
    let body = response.body().limit(16 << 20).await.unwrap();
    (
        response.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[actix_web::test]
async fn the_public_listener_shows_no_per_user_series_and_the_metrics_listener_asks_its_token() {
    let app = spawn_app(fast_mock(), |c| {
        c.server.metrics_listen = "127.0.0.1:0".into();
        c.metrics.bearer_token = Secret::new(TOKEN);
    })
    .await;
    assert_ne!(
        app.metrics_base, app.base,
        "metrics have their own listener"
    );
    spend(&app, "exposed-alice").await;

    let (status, body) = get(&app, format!("{}/metrics", app.base), None).await;
    assert_eq!(status, 404);
    assert!(!body.contains("exposed-alice"), "{body}");
    let (status, body) = get(&app, format!("{}/metrics", app.base), Some(TOKEN)).await;
    assert_eq!(status, 404, "not even with the token: {body}");

    let url = format!("{}/metrics", app.metrics_base);
    let response = app.client.get(&url).send().await.unwrap();
    assert_eq!(error_code(response).await, (401, "missing_token".into()));
    let response = app
        .client
        .get(&url)
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (401, "invalid_token".into()));
    let (status, body) = get(&app, url, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"tollgate_user_cost_usd_total{user="exposed-alice"}"#),
        "{body}"
    );
}

#[actix_web::test]
async fn metrics_on_the_main_listener_ask_the_token_when_one_is_set() {
    let app = spawn_app(fast_mock(), |c| {
        c.server.metrics_listen = String::new();
        c.metrics.bearer_token = Secret::new(TOKEN);
    })
    .await;
    assert_eq!(app.metrics_base, app.base);
    spend(&app, "exposed-bob").await;
    let url = format!("{}/metrics", app.base);
    let (status, body) = get(&app, url.clone(), None).await;
    assert_eq!(status, 401);
    assert!(!body.contains("exposed-bob"), "{body}");
    let (status, body) = get(&app, url, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"user="exposed-bob""#), "{body}");
}

#[actix_web::test]
async fn by_default_metrics_are_a_route_of_the_gateway_listener() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    assert_eq!(app.metrics_base, app.base);
    spend(&app, "default-carol").await;
    let (status, body) = get(&app, format!("{}/metrics", app.base), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("tollgate_requests_total"), "{body}");
}
