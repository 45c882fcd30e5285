//! Test support for tollgate, shared by its unit tests, integration tests and benches (the way
//! linkerd2-proxy's `linkerd-app-test` serves its crates): one home for what used to be
//! included file by file with `#[path]`.
//!
//! - [`process`]: the compiled `tollgate` binary as a child process, killed on drop.
//! - [`redis`]: a real `redis-server` per test, which a test can stop, kill, restart or pause.
//!
//! [`redis`] knows nothing of tollgate, so the `tollgate` crate's own unit tests may use it (a
//! tollgate type from here would be another copy of the crate than the one under test).

pub mod process;
pub mod redis;
