//! Caps at the edge, before any route: the connection cap (`server.max_connections`), the
//! keep-alive idle timeout, and requests refused on their head alone, without waiting for a
//! body that may never come.

use std::io::Write;
use std::time::{Duration, Instant};
use tollgate_testkit::app::raw::{self, closed_by_server};
use tollgate_testkit::app::*;

/// The value of an unlabelled sample in a Prometheus exposition.
fn sample(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the exposition"))
}

/// `GET path` on a new connection, retried until a connection is served (within [`WAIT`]).
fn get_once_served(addr: &str, path: &str) -> raw::RawResponse {
    let until = Instant::now() + WAIT;
    loop {
        let mut stream = raw::connect(addr);
        let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: tollgate\r\n\r\n");
        match raw::read_response(&mut stream) {
            Ok(response) => return response,
            Err(_) => assert!(Instant::now() < until, "no connection is served"),
        }
    }
}

fn refusals_counted(metrics_addr: &str) -> f64 {
    let exposition = get_once_served(metrics_addr, "/metrics").body;
    sample(
        &String::from_utf8(exposition).unwrap(),
        "tollgate_connections_refused_total",
    )
}

#[actix_web::test]
async fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
    let app = spawn_app(fast_mock(), |c| {
        c.server.max_connections = 2;
        c.server.keep_alive_timeout_secs = 60;
    })
    .await;
    let addr = app.addr();
    let metrics = app.metrics_addr();
    tokio::task::spawn_blocking(move || {
        let refused_before = refusals_counted(&metrics);
        // Two connections, each proven accepted by an answer on it, kept open.
        let mut held: Vec<_> = (0..2)
            .map(|_| {
                let mut stream = raw::connect(&addr);
                assert_eq!(raw::get(&mut stream, "/healthz").status, 200);
                stream
            })
            .collect();
        let started = Instant::now();
        let mut third = raw::connect(&addr);
        // The gateway may have closed it already: the write may fail.
        let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\n\r\n");
        assert!(
            closed_by_server(&mut third),
            "the third connection was served"
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
        // Once one closes, a new connection is served again.
        drop(held.pop());
        assert_eq!(get_once_served(&addr, "/healthz").status, 200);
        drop(held);
        let refused = refusals_counted(&metrics);
        assert!(
            refused >= refused_before + 1.0,
            "{refused} refusals counted"
        );
    })
    .await
    .unwrap();
}

#[actix_web::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let app = spawn_app(fast_mock(), |c| c.server.keep_alive_timeout_secs = 1).await;
    let addr = app.addr();
    tokio::task::spawn_blocking(move || {
        let mut stream = raw::connect(&addr);
        let response = raw::get(&mut stream, "/healthz");
        assert_eq!(response.status, 200);
        let idle = Instant::now();
        assert!(closed_by_server(&mut stream), "still open after {WAIT:?}");
        let took = idle.elapsed();
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
            "closed after {took:?}"
        );
    })
    .await
    .unwrap();
}

/// Sends a chat request head declaring a 1 MB body (never sent) with `authorization`, and
/// returns the answer and how long it took.
async fn head_only(app: &TestApp, authorization: Option<String>) -> (raw::RawResponse, Duration) {
    let addr = app.addr();
    tokio::task::spawn_blocking(move || {
        let mut stream = raw::connect(&addr);
        let authorization = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: tollgate\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        );
        let started = Instant::now();
        stream.write_all(head.as_bytes()).unwrap();
        let response = raw::read_response(&mut stream).unwrap();
        (response, started.elapsed())
    })
    .await
    .unwrap()
}

#[actix_web::test]
async fn a_request_without_a_valid_token_is_refused_before_its_body_is_read() {
    let app = spawn_app(fast_mock(), |c| c.server.client_body_timeout_secs = 30).await;
    let cases = [
        (None, "missing_token"),
        (Some("Bearer not-a-jwt".to_string()), "invalid_token"),
    ];
    for (authorization, code) in cases {
        let (response, took) = head_only(&app, authorization).await;
        assert_eq!((response.status, response.code().as_str()), (401, code));
        assert!(took < Duration::from_secs(1), "answered after {took:?}");
    }
    let logs = app.wait_for_logs(2).await;
    assert!(logs.iter().all(|l| l["status"] == 401));
    assert_upstream_untouched(&app).await;
}

/// (status, code) of a chat request carrying `headers` of the given sizes (value bytes).
async fn with_headers(app: &TestApp, sizes: &[usize]) -> (u16, String) {
    let mut request = app.post_chat("bulky");
    for (i, size) in sizes.iter().enumerate() {
        request = request.insert_header((format!("x-filler-{i}"), "a".repeat(*size)));
    }
    let response = request
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    if response.status() == 200 {
        return (200, String::new());
    }
    error_code(response).await
}

#[actix_web::test]
async fn oversized_headers_get_431_before_any_route() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let too_large = (431, "headers_too_large".to_string());
    // One header over 8 KiB (name and value), however far over.
    assert_eq!(with_headers(&app, &[8 * 1024]).await, too_large);
    assert_eq!(with_headers(&app, &[64 * 1024]).await, too_large);
    // 17 KiB in all is fine; over 32 KiB in all is not, though each header is small.
    assert_eq!(
        with_headers(&app, &[6 * 1024, 6 * 1024, 5 * 1024]).await.0,
        200
    );
    assert_eq!(with_headers(&app, &[7 * 1024; 5]).await, too_large);
    // Only the request that fitted reached the upstream.
    assert!(app.recorder.wait_for_requests(1, WAIT).await);
    assert!(
        !app.recorder
            .wait_for_requests(2, std::time::Duration::from_millis(50))
            .await
    );
}
