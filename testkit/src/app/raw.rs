//! Plain HTTP/1.1 over a blocking `TcpStream`, for what an HTTP client hides: a request head
//! without its body, a connection held open or closed by the server, oversized headers. Run it
//! inside `tokio::task::spawn_blocking`; every read is bounded by [`super::WAIT`].

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

/// One response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// The error body's `code`.
    pub fn code(&self) -> String {
        let body: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not a JSON error body: {self:?}"));
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A connection to `addr` (`host:port`) whose reads give up after [`super::WAIT`].
pub fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(super::WAIT)).unwrap();
    stream
}

/// Sends `GET path` on `stream` (keeping the connection) and reads the answer.
pub fn get(stream: &mut TcpStream, path: &str) -> RawResponse {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: tollgate\r\n\r\n").unwrap();
    read_response(stream).unwrap()
}

/// Reads one response: its head, then `Content-Length` bytes of body (none without it).
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("closed before a whole response head: {bytes:?}"),
            ));
        }
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {head}"));
    let mut response = RawResponse {
        status,
        head,
        body: bytes[end + 4..].to_vec(),
    };
    let length: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while response.body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        response.body.extend_from_slice(&chunk[..n]);
    }
    Ok(response)
}

/// Whether the server has closed `stream`: a read ends (or is reset) instead of timing out.
/// Bytes still arriving are read past.
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}
