//! Listening sockets with a deep accept queue. `std::net::TcpListener::bind` asks for a backlog
//! of 128: a burst of new connections larger than that (a page of chat UIs reconnecting after a
//! deploy) overflows it, and the kernel drops the extra SYNs, which clients resend only after a
//! second. Every listener tollgate serves (the gateway, `/metrics`, the admin API, the mock
//! provider) asks for [`BACKLOG`] instead, as nginx's `listen … backlog=` does; the kernel caps
//! it at `net.core.somaxconn` (4096 by default since Linux 5.4).

use std::net::TcpListener;

/// Connections the kernel may hold completed but not yet accepted.
pub const BACKLOG: i32 = 4096;

/// `listener`, listening again with a backlog of [`BACKLOG`] (`listen(2)` on a listening
/// socket only changes its backlog).
pub fn deepen(listener: TcpListener) -> std::io::Result<TcpListener> {
    socket2::SockRef::from(&listener).listen(BACKLOG)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// The kernel's cap on any backlog (`net.core.somaxconn`).
    fn somaxconn() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_deepened_listener_holds_more_than_128_unaccepted_connections() {
        if somaxconn() < 300 {
            eprintln!("net.core.somaxconn below 300: the kernel caps every backlog; skipped");
            return;
        }
        let listener = deepen(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts: with std's backlog of 128 the 130th connect would wait for a SYN
        // retry; here all 300 complete at once.
        let streams: Vec<TcpStream> = (0..300)
            .map(|_| {
                TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).unwrap()
            })
            .collect();
        assert_eq!(streams.len(), 300);
    }
}
