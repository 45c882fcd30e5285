//! Self-tests of the `redis-server` harness in `src/redis.rs`: that data survives a
//! graceful stop and a SIGKILL, that a restart gets its port back while old connections linger
//! in TIME_WAIT, that a paused server really hangs, and that nothing is left running on drop.
//! They talk to Redis through `redis-cli` or a raw socket, never through tollgate.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tollgate_testkit::redis::RedisServer;

/// Opens a connection to the server and sends one PING without waiting for the answer.
fn send_ping(server: &RedisServer) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    stream
}

/// Reads the answer to a PING, waiting at most `within`; `None` if nothing came in time.
fn read_pong(stream: &mut TcpStream, within: Duration) -> Option<String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0; 7];
    match stream.read_exact(&mut buf) {
        Ok(()) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("reading the PING answer: {e}"),
    }
}

/// Local TCP sockets on `port` in TIME_WAIT, from /proc/net/tcp (state 06, port in hex).
fn time_wait_sockets_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local_port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[1].ends_with(&local_port) && fields[3] == "06"
        })
        .count()
}

#[test]
fn a_started_server_stores_and_returns_keys() {
    let server = RedisServer::start();
    assert!(server.is_running());
    assert_ne!(server.port(), 0);
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(server.cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(server.cli(&["GET", "greeting"]), "hello world");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nyes"
    );
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendfsync"]),
        "appendfsync\nalways"
    );
}

#[test]
fn a_graceful_stop_and_restart_keeps_keys_on_the_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    server.cli(&["SET", "kept", "1"]);
    server.cli(&["HSET", "user:alice", "spent_usd", "0.25"]);

    server.stop();
    assert!(!server.is_running());
    let refused = TcpStream::connect(("127.0.0.1", port));
    assert!(refused.is_err(), "something still listens on {port}");

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(server.cli(&["GET", "kept"]), "1");
    assert_eq!(server.cli(&["HGET", "user:alice", "spent_usd"]), "0.25");
}

#[test]
fn a_kill_keeps_every_acknowledged_write() {
    let mut server = RedisServer::start();
    for _ in 0..50 {
        server.cli(&["INCR", "counter"]);
    }
    server.kill();
    assert!(!server.is_running());

    server.restart();
    assert_eq!(server.cli(&["GET", "counter"]), "50");
    // And the restarted server keeps persisting: a second crash loses nothing either.
    server.cli(&["INCR", "counter"]);
    server.kill();
    server.restart();
    assert_eq!(server.cli(&["GET", "counter"]), "51");
}

#[test]
fn a_restart_gets_its_port_back_while_old_connections_are_in_time_wait() {
    let mut server = RedisServer::start();
    let port = server.port();
    let mut client = send_ping(&server);
    assert_eq!(
        read_pong(&mut client, Duration::from_secs(5)).unwrap(),
        "+PONG\r\n"
    );

    // The server closes first (it exits), so its side of the connection ends in TIME_WAIT once
    // the client has read the EOF and closed too.
    server.stop();
    let mut rest = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_to_end(&mut rest).unwrap();
    drop(client);
    assert!(
        time_wait_sockets_on(port) > 0,
        "expected a socket on port {port} in TIME_WAIT"
    );

    // redis-server sets SO_REUSEADDR, so the port can be bound again right away.
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.cli(&["PING"]), "PONG");
}

#[test]
fn a_paused_server_accepts_but_answers_nothing_until_resumed() {
    let server = RedisServer::start();
    let mut before = send_ping(&server);
    assert_eq!(
        read_pong(&mut before, Duration::from_secs(5)).unwrap(),
        "+PONG\r\n"
    );

    server.pause();
    assert!(server.is_running(), "a paused server still runs");
    // The kernel still completes the handshake (the listen backlog), but no answer comes.
    let mut during = send_ping(&server);
    assert_eq!(read_pong(&mut during, Duration::from_millis(500)), None);
    before.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    assert_eq!(read_pong(&mut before, Duration::from_millis(200)), None);

    server.resume();
    // Both PINGs sent during the pause are answered now.
    assert_eq!(
        read_pong(&mut during, Duration::from_secs(5)).unwrap(),
        "+PONG\r\n"
    );
    assert_eq!(
        read_pong(&mut before, Duration::from_secs(5)).unwrap(),
        "+PONG\r\n"
    );
    assert_eq!(server.cli(&["PING"]), "PONG");
}

#[test]
fn a_paused_server_still_stops_gracefully() {
    let mut server = RedisServer::start();
    server.cli(&["SET", "kept", "yes"]);
    server.pause();
    server.stop();
    server.restart();
    assert_eq!(server.cli(&["GET", "kept"]), "yes");
}

#[test]
fn dropping_the_server_ends_its_process() {
    let server = RedisServer::start();
    let info = server.cli(&["INFO", "server"]);
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .to_string();
    server.pause(); // Drop must end a paused server too.
    let port = server.port();
    let dir = server.dir().to_path_buf();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(server);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} outlived its RedisServer"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!dir.exists(), "the temporary directory outlived its server");
}

#[test]
#[should_panic(expected = "redis-cli")]
fn an_error_reply_fails_the_cli_call() {
    let server = RedisServer::start();
    server.cli(&["NO-SUCH-COMMAND"]);
}

#[test]
#[should_panic(expected = "still running")]
fn restarting_a_running_server_is_refused() {
    let mut server = RedisServer::start();
    server.restart();
}

#[test]
#[should_panic(expected = "another process took port")]
fn a_restart_names_a_port_taken_meanwhile() {
    let mut server = RedisServer::start();
    server.kill();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", server.port())).unwrap();
    server.restart();
}

/// The cluster harness: three masters that split the slots, keys served where they hash, a
/// slot moved with its keys, and a master failed over to a replica that has its keys.
#[test]
fn a_cluster_spreads_slots_moves_one_and_fails_a_master_over() {
    use tollgate_testkit::redis::SharedRedis;
    use tollgate_testkit::redis_cluster::RedisCluster;
    let mut cluster = RedisCluster::start(3);
    assert_eq!(cluster.url().split(',').count(), 3);
    // Keys of one hash tag share a slot; three tags land on more than one master.
    for tag in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(cluster.cli(&["SET", &format!("{{{tag}}}:x"), tag]), "OK");
        assert_eq!(cluster.cli(&["SET", &format!("{{{tag}}}:y"), tag]), "OK");
    }
    let owners: std::collections::BTreeSet<usize> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|tag| cluster.owner_of(cluster.slot_of(tag)))
        .collect();
    assert!(owners.len() > 1, "every tag on one master: {owners:?}");
    assert_eq!(cluster.keys("{*").len(), 12);

    // Move the slot of {a} elsewhere: both keys go, and are served there.
    let slot = cluster.slot_of("a");
    let from = cluster.owner_of(slot);
    let to = (from + 1) % 3;
    assert_eq!(cluster.move_slot(slot, to, Duration::from_millis(0)), 2);
    assert_eq!(cluster.owner_of(slot), to);
    cluster.wait_until_ok();
    let slot_arg = slot.to_string();
    assert_eq!(
        cluster.nodes()[to].cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot_arg]),
        "2"
    );
    assert_eq!(
        cluster.nodes()[from].cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot_arg]),
        "0"
    );
    assert_eq!(cluster.cli(&["GET", "{a}:y"]), "a");

    // A replica of that master takes over, with the keys.
    let replica = cluster.add_replica(to);
    assert!(!cluster.is_master(replica));
    cluster.failover(replica);
    assert!(cluster.is_master(replica));
    assert!(!cluster.is_master(to));
    assert_eq!(cluster.owner_of(slot), replica);
    assert_eq!(cluster.cli(&["GET", "{a}:x"]), "a");
    assert_eq!(
        cluster.keys("{*").len(),
        12,
        "replicas are not scanned twice"
    );
}
