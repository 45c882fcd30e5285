//! A fake identity provider for the JWKS tests: a raw-TCP server on port 0 that serves a JWKS
//! document the test can replace or take down (then it answers 503), and counts every fetch.

use super::scripted::read_request;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A running fake provider. Its JWKS is at `url`.
pub struct FakeIdp {
    pub url: String,
    state: Arc<Mutex<State>>,
}

struct State {
    /// The document served; `None` = down (503).
    jwks: Option<Value>,
    fetches: usize,
}

impl FakeIdp {
    /// Starts serving `jwks` (`None`: down until [`FakeIdp::publish`]).
    pub async fn start(jwks: Option<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let state = Arc::new(Mutex::new(State { jwks, fetches: 0 }));
        let serving = state.clone();
        actix_rt::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let state = serving.clone();
                actix_rt::spawn(async move {
                    read_request(&mut socket).await;
                    let answer = {
                        let mut state = state.lock().unwrap();
                        state.fetches += 1;
                        state.jwks.as_ref().map(Value::to_string)
                    };
                    let response = match answer {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, state }
    }

    /// Serves `jwks` from now on (the provider is up, or rotated its keys).
    pub fn publish(&self, jwks: Value) {
        self.state.lock().unwrap().jwks = Some(jwks);
    }

    /// Requests received so far.
    pub fn fetches(&self) -> usize {
        self.state.lock().unwrap().fetches
    }

    /// Waits (polling, at most `within`) until `n` requests were received; false if they were
    /// not.
    pub async fn wait_for_fetches(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.fetches() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
