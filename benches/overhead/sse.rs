//! The client's side of one SSE stream over HTTP/1.1: the status line, chunked decoding, and a
//! count of the content deltas, `[DONE]` and error events as the bytes arrive.

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
pub struct Reader {
    head: Vec<u8>,
    headers_done: bool,
    chunked: bool,
    raw: Vec<u8>,
    remaining: usize,
    need_crlf: bool,
    pub finished: bool,
    body: Vec<u8>,
    pub done_seen: bool,
    pub error_event: bool,
}

impl Reader {
    /// Feeds bytes read from the socket; returns the number of content deltas completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<u32, String> {
        if self.headers_done {
            return self.body_bytes(bytes);
        }
        self.head.extend_from_slice(bytes);
        let Some(pos) = find(&self.head, b"\r\n\r\n") else {
            return if self.head.len() > 64 * 1024 {
                Err("no end of headers".into())
            } else {
                Ok(0)
            };
        };
        let head = String::from_utf8_lossy(&self.head[..pos]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            let text = String::from_utf8_lossy(&self.head);
            return Err(format!(
                "status: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        self.chunked = head.contains("transfer-encoding: chunked");
        self.headers_done = true;
        let rest = self.head.split_off(pos + 4);
        self.body_bytes(&rest)
    }

    fn body_bytes(&mut self, bytes: &[u8]) -> Result<u32, String> {
        if self.chunked {
            self.raw.extend_from_slice(bytes);
            self.dechunk()?;
        } else {
            self.body.extend_from_slice(bytes);
        }
        Ok(self.events())
    }

    fn dechunk(&mut self) -> Result<(), String> {
        let mut at = 0;
        while !self.finished {
            if self.remaining > 0 {
                let take = self.remaining.min(self.raw.len() - at);
                if take == 0 {
                    break;
                }
                self.body.extend_from_slice(&self.raw[at..at + take]);
                at += take;
                self.remaining -= take;
                self.need_crlf = self.remaining == 0;
            } else if self.need_crlf {
                if self.raw.len() - at < 2 {
                    break;
                }
                at += 2;
                self.need_crlf = false;
            } else {
                let Some(p) = find(&self.raw[at..], b"\r\n") else {
                    break;
                };
                let line = String::from_utf8_lossy(&self.raw[at..at + p]);
                let hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad chunk size line {line:?}"))?;
                at += p + 2;
                if size == 0 {
                    self.finished = true;
                } else {
                    self.remaining = size;
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    fn events(&mut self) -> u32 {
        let mut count = 0;
        let mut start = 0;
        while let Some(p) = find(&self.body[start..], b"\n\n") {
            let event = &self.body[start..start + p];
            if find(event, b"[DONE]").is_some() {
                self.done_seen = true;
            } else if let Some(c) = find(event, b"\"content\":\"") {
                if event.get(c + 11) != Some(&b'"') {
                    count += 1;
                }
            }
            if find(event, b"\"error\"").is_some() {
                self.error_event = true;
            }
            start += p + 2;
        }
        self.body.drain(..start);
        count
    }
}
