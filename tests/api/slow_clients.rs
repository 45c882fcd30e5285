//! Clients that send their body slowly or not at all: answered `408 request_timeout` and
//! disconnected once the body stops making progress (or the request's deadline passes), never
//! held open; nothing reaches the upstream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tollgate_testkit::app::*;

/// Sends the request head (declaring a 1,000-byte body) and `pieces` of the body, one every
/// `pace`, then reads until the gateway closes. Returns (the response text, seconds it took).
async fn send_slowly(app: &TestApp, pieces: Vec<&'static str>, pace: Duration) -> (String, f64) {
    let addr = app.base.trim_start_matches("http://").to_string();
    let token = app.token("sly");
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        );
        let started = Instant::now();
        stream.write_all(head.as_bytes()).unwrap();
        for piece in pieces {
            // The gateway may already have answered and closed: stop writing then.
            if stream.write_all(piece.as_bytes()).is_err() {
                break;
            }
            std::thread::sleep(pace);
        }
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        (
            String::from_utf8_lossy(&response).into_owned(),
            started.elapsed().as_secs_f64(),
        )
    })
    .await
    .unwrap()
}

fn assert_request_timeout(response: &str) {
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains(r#""code":"request_timeout""#),
        "{response}"
    );
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
}

#[actix_web::test]
async fn a_body_that_stops_arriving_is_answered_408_and_the_connection_closed() {
    let app = spawn_app(fast_mock(), |c| c.server.client_body_timeout_secs = 1).await;
    // Four bytes of a declared thousand, then nothing.
    let (response, secs) = send_slowly(&app, vec![r#"{"mo"#], Duration::ZERO).await;
    assert_request_timeout(&response);
    assert!((0.9..5.0).contains(&secs), "answered after {secs} s");
    let logs = app.wait_for_logs(1).await;
    assert_eq!(logs[0]["status"], 408);
    assert_eq!(logs[0]["error_code"], "request_timeout");
    assert_eq!(logs[0]["user_id"], "sly");
    assert_upstream_untouched(&app).await;
}

#[actix_web::test]
async fn a_body_trickling_in_is_cut_at_the_request_deadline() {
    let app = spawn_app(fast_mock(), |c| {
        c.server.client_body_timeout_secs = 1;
        c.limits.deadline_secs = 2;
    })
    .await;
    // A byte every 300 ms keeps the stall timer from firing; the deadline still does.
    let (response, secs) = send_slowly(&app, vec!["x"; 20], Duration::from_millis(300)).await;
    assert_request_timeout(&response);
    assert!((1.9..5.0).contains(&secs), "answered after {secs} s");
    assert_upstream_untouched(&app).await;
}

#[actix_web::test]
async fn a_client_that_stops_reading_its_stream_is_cut_as_gone_after_the_write_timeout() {
    let app = spawn_app(
        tollgate::mock::MockOptions {
            tokens: 500_000,
            ..fast_mock()
        },
        |c| {
            c.server.client_write_timeout_secs = 1;
            c.limits.max_output_tokens = 1_000_000;
            c.rate.tokens_per_day = 1_000_000_000;
            c.cost.max_daily_usd = 1000.0;
            c.cost.max_monthly_usd = 1000.0;
        },
    )
    .await;
    let body = serde_json::json!({
        "model": "mock-gpt",
        "stream": true,
        "max_tokens": 500_000,
        "messages": [{"role": "user", "content": "Say a lot."}],
    })
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.token("stalled-reader"),
        body.len()
    );
    // A small receive window, and after the first bytes of the answer, no more reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr().parse().unwrap()).await.unwrap();
    let started = Instant::now();
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut first)
        .await
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // The stream is cut (and logged, and settled) while the connection is still open.
    let logs = app.logs.wait_for(1, Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(logs.len(), 1, "not cut within 20 s");
    let log: serde_json::Value = serde_json::from_str(&logs[0]).unwrap();
    assert_eq!(log["outcome"], "client_gone", "{log}");
    assert!(log["output_tokens"].as_u64().unwrap() > 0, "{log}");
    assert!(took < Duration::from_secs(15), "cut after {took:?}");
    assert_eq!(
        app.settled_usage("stalled-reader").await["open_requests"],
        0
    );
    // The upstream request was dropped with it.
    let end = app.recorder.wait_for_end(0, WAIT).await;
    assert!(
        matches!(end, Some(tollgate::mock::StreamEnd::Dropped { .. })),
        "{end:?}"
    );
    drop(stream);
}
