//! The floor arm: what the chosen stack costs before tollgate does anything. This same bench
//! binary, started again with `OVERHEAD_ROLE=floor`, serves a bare actix-web + awc streaming
//! proxy (the server and client settings tollgate uses: one worker, `TCP_NODELAY`, a 4,096
//! backlog, redirects off, mimalloc as the bench's allocator) that forwards `POST
//! /v1/chat/completions` to the mock and relays the reply's bytes as they come, with no
//! authentication, parse, limits, guardrails, metering, log or metrics. tollgate's cost over
//! this arm is its own work; this arm's over nginx is the stack's.

use crate::process::{self, Running};
use crate::setup::{Pinning, PROXY_CPU};
use actix_service::ServiceExt;
use actix_tls::connect::{Connection, ConnectorService};
use actix_web::http::Uri;
use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::net::TcpStream;

/// The environment variable that makes this binary the floor proxy.
const ROLE: &str = "OVERHEAD_ROLE";
/// What the floor proxy logs (a JSON line with its `listen` address) once it serves.
const READY: &str = "stack floor is serving";

/// Starts the floor proxy in front of `mock` on the proxy's CPU.
pub fn start_floor(pin: Pinning, mock: SocketAddr) -> (Running, SocketAddr) {
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut command = pin.command(PROXY_CPU, exe.to_str().expect("utf8 path"));
    command
        .env_clear()
        .env(ROLE, "floor")
        .env(
            "FLOOR_UPSTREAM",
            format!("http://{mock}/v1/chat/completions"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let (running, listen) = process::start(command, READY, Some("floor"));
    (running, listen.parse().expect("addr"))
}

/// When this process was started as the floor proxy: serves until killed, then exits.
pub fn serve_if_asked() {
    if std::env::var(ROLE).as_deref() != Ok("floor") {
        return;
    }
    let upstream = std::env::var("FLOOR_UPSTREAM").expect("FLOOR_UPSTREAM");
    let served = actix_web::rt::System::new().block_on(serve(upstream));
    if let Err(e) = served {
        eprintln!("{{\"level\":\"ERROR\",\"message\":\"floor proxy: {e}\"}}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// The mock's chat URL, and the worker's client.
struct Upstream {
    client: awc::Client,
    url: String,
}

async fn serve(url: String) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    socket2::SockRef::from(&listener).listen(4096)?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(Upstream {
                client: upstream_client(),
                url: url.clone(),
            }))
            .route("/v1/chat/completions", web::post().to(relay))
    })
    .workers(1)
    .tcp_nodelay(true)
    .disable_signals()
    .listen(listener)?
    .run();
    eprintln!("{{\"message\":\"{READY}\",\"listen\":\"{addr}\"}}");
    server.await
}

/// A worker's client to the mock, built as tollgate's `UpstreamClient` builds its own:
/// `TCP_NODELAY` on each connection, a 5 s connect timeout, no request timeout (the caller
/// bounds the wait), redirects off.
fn upstream_client() -> awc::Client {
    let tcp = ConnectorService::default().map(|conn: Connection<Uri, TcpStream>| {
        let _ = conn.io_ref().set_nodelay(true);
        conn
    });
    let connector = awc::Connector::new()
        .connector(tcp)
        .timeout(Duration::from_secs(5))
        .limit(30_000);
    awc::Client::builder()
        .connector(connector)
        .disable_timeout()
        .disable_redirects()
        .finish()
}

/// Forwards the body and relays the reply (its status, its bytes) as it comes.
async fn relay(body: Bytes, upstream: web::Data<Upstream>) -> HttpResponse {
    let sent = upstream
        .client
        .post(&upstream.url)
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await;
    match sent {
        Ok(reply) => HttpResponse::build(reply.status())
            .content_type("text/event-stream")
            .streaming(reply),
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}
