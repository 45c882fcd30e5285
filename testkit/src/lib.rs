//! Test support for tollgate, shared by its unit tests, integration tests and benches (the way
//! linkerd2-proxy's `linkerd-app-test` serves its crates): one home for what used to be
//! included file by file with `#[path]`.
//!
//! - [`app`]: the gateway in process ([`app::TestApp`], [`app::spawn_app`]) in front of the mock
//!   provider or a scripted upstream, with an SSE reader and shared assertions.
//! - [`process`]: the compiled `tollgate` binary as a child process, killed on drop.
//! - [`promtool`]: Prometheus' checker on the exposition and the shipped config, required in CI.
//! - [`redis`]: a real `redis-server` per test, which a test can stop, kill, restart or pause.
//! - [`redis_cluster`]: a real Redis Cluster of such servers, whose slots a test can move and
//!   whose masters it can fail over.
//!
//! Only [`redis`], [`redis_cluster`] and [`process`] know nothing of tollgate, so only they serve
//! the `tollgate` crate's own unit tests: a tollgate type from here would be another copy of the
//! crate than the one under test.

pub mod app;
pub mod process;
pub mod promtool;
pub mod redis;
pub mod redis_cluster;
