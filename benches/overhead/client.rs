//! The driver's requests: the request bytes of a stream (a [`Workload`] per phase, in each arm's
//! model), one stream on a fresh connection timed into [`Stats`] (time to first token, gaps
//! between chunks, chunks and completions in a [`Window`]), and a plain `GET` for a gateway's
//! `/readyz` and `/metrics`.

use crate::arms::Arm;
use crate::hist::Hist;
use crate::sse::Reader;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The stretch of a phase that counts (streams started, chunks and completions in it).
#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// What the streams of one arm in one phase (or round) recorded.
pub struct Stats {
    pub ttft: Hist,
    pub gap: Hist,
    pub chunks_in_window: u64,
    pub completed_in_window: u64,
    started_in_window: u64,
    /// Requests written and streams ended with `[DONE]`, window or not (Redis commands per
    /// request count the whole run).
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    error_samples: Vec<String>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            ttft: Hist::new(),
            gap: Hist::new(),
            chunks_in_window: 0,
            completed_in_window: 0,
            started_in_window: 0,
            sent: 0,
            completed: 0,
            errors: 0,
            error_samples: Vec::new(),
        }
    }
    pub fn merge(&mut self, o: &Self) {
        self.ttft.merge(&o.ttft);
        self.gap.merge(&o.gap);
        self.chunks_in_window += o.chunks_in_window;
        self.completed_in_window += o.completed_in_window;
        self.started_in_window += o.started_in_window;
        self.sent += o.sent;
        self.completed += o.completed;
        self.errors += o.errors;
        for e in &o.error_samples {
            if self.error_samples.len() < 3 {
                self.error_samples.push(e.clone());
            }
        }
    }
    pub fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 3 {
            self.error_samples.push(e);
        }
    }
}

/// One stream on a fresh connection. Records TTFT and gaps for streams started in the window,
/// chunks and completions by the time they happen. Returns the time to first token.
pub async fn one_stream(
    addr: SocketAddr,
    request: &[u8],
    stats: &RefCell<Stats>,
    window: Window,
    limit: Duration,
) -> Result<Duration, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut socket = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let in_window = window.contains(started);
    if in_window {
        stats.borrow_mut().started_in_window += 1;
    }
    socket
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    stats.borrow_mut().sent += 1;
    let mut reader = Reader::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut ttft = None;
    let mut last: Option<Instant> = None;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .map_err(|_| "stream timeout".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        let k = reader.feed(&buf[..n])?;
        if k > 0 {
            let mut st = stats.borrow_mut();
            if window.contains(now) {
                st.chunks_in_window += u64::from(k);
            }
            match last {
                None => {
                    ttft = Some(now - started);
                    if in_window {
                        st.ttft.record(now - started);
                    }
                }
                Some(prev) if in_window => st.gap.record(now - prev),
                Some(_) => {}
            }
            if in_window {
                for _ in 1..k {
                    st.gap.record(Duration::ZERO);
                }
            }
            last = Some(now);
        }
        if reader.finished {
            break;
        }
    }
    if reader.error_event {
        return Err("error event in the stream".into());
    }
    if !reader.done_seen {
        return Err("stream ended without [DONE]".into());
    }
    let mut st = stats.borrow_mut();
    st.completed += 1;
    if window.contains(Instant::now()) {
        st.completed_in_window += 1;
    }
    ttft.ok_or_else(|| "no content delta".into())
}

fn request_bytes(model: &str, max_tokens: u32, token: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"model":"{model}","stream":true,"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hello there"}}]}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One workload's requests, for each model the arms ask for: the same bytes but the model name.
pub struct Workload {
    by_model: Vec<(&'static str, Rc<Vec<Vec<u8>>>)>,
}

impl Workload {
    /// One request per simulated user (round robin over the tokens) for each arm's model, the
    /// mock's `knobs` (`tokens=10,tps=0`) after it.
    pub fn new(knobs: &str, max_tokens: u32, tokens: &[String]) -> Self {
        let mut by_model: Vec<(&'static str, Rc<Vec<Vec<u8>>>)> = Vec::new();
        for model in Arm::ALL.map(Arm::model) {
            if by_model.iter().all(|(m, _)| *m != model) {
                let named = format!("{model}:{knobs}");
                let requests = tokens
                    .iter()
                    .map(|t| request_bytes(&named, max_tokens, t))
                    .collect();
                by_model.push((model, Rc::new(requests)));
            }
        }
        Self { by_model }
    }

    /// The requests `arm` sends.
    pub fn of(&self, arm: Arm) -> &Rc<Vec<Vec<u8>>> {
        let model = arm.model();
        self.by_model
            .iter()
            .find_map(|(m, r)| (*m == model).then_some(r))
            .expect("every arm's model has requests")
    }
}

/// `GET path` on a fresh connection; the status code and the body (at most 5 s).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut socket = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut bytes = Vec::new();
        socket
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status code")?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer within 5 s"))?
}
