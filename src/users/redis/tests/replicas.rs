//! Limits hold across replicas: two ledgers (each on its own thread and runtime, as two
//! gateway processes would be) racing admissions for one user against one Redis admit exactly
//! what the limit allows between them.

use super::{config_for, ledger, request, roomy_limits, usage};
use crate::users::book::AdmitRequest;
use crate::users::limits::UserLimits;
use crate::users::refusal::Refusal;
use std::sync::Arc;
use tollgate_testkit::redis::RedisServer;

/// Runs `n` admits of fresh ids split between two ledgers (two "replicas", each on its own OS
/// thread and runtime, released together) and returns every decision.
fn admit_from_two_replicas(
    server: &RedisServer,
    user: &str,
    n: usize,
    limits: UserLimits,
) -> Vec<Result<u32, Refusal>> {
    let config = config_for(server);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|replica| {
            let (config, barrier, user) = (config.clone(), barrier.clone(), user.to_string());
            std::thread::spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let ledger = ledger(&config);
                    let prefix = ledger.user_prefix(&user);
                    // Connect (and load the script) before the race starts.
                    ledger.usage(&prefix).await.expect("Redis answers");
                    let requests: Vec<AdmitRequest> = (0..n)
                        .filter(|i| i % 2 == replica)
                        .map(|i| request(&format!("c{i}"), 10, 10, limits))
                        .collect();
                    barrier.wait();
                    futures::future::join_all(requests.iter().map(|r| ledger.admit(&prefix, r)))
                        .await
                        .into_iter()
                        .map(|a| a.expect("Redis answers").decision)
                        .collect::<Vec<_>>()
                })
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("a replica thread"))
        .collect()
}

#[actix_rt::test]
async fn two_replicas_admit_exactly_the_requests_per_minute_between_them() {
    let server = RedisServer::start();
    let limits = UserLimits {
        requests_per_minute: 10,
        ..roomy_limits()
    };
    let decisions = admit_from_two_replicas(&server, "race", 50, limits);
    assert_eq!(decisions.len(), 50);
    let admitted = decisions.iter().filter(|d| d.is_ok()).count();
    assert_eq!(admitted, 10, "{decisions:?}");
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Ok(10) | Err(Refusal::Minute { .. }))));
    let ledger = ledger(&config_for(&server));
    let counts = usage(&ledger, &ledger.user_prefix("race")).await;
    assert_eq!(
        (counts.requests, counts.minute_used, counts.open_requests),
        (10, 10, 10)
    );
}

#[actix_rt::test]
async fn two_replicas_share_the_concurrency_cap() {
    let server = RedisServer::start();
    let limits = UserLimits {
        max_concurrent_streams: 3,
        ..roomy_limits()
    };
    let decisions = admit_from_two_replicas(&server, "streams", 50, limits);
    let admitted = decisions.iter().filter(|d| d.is_ok()).count();
    assert_eq!(admitted, 3, "{decisions:?}");
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Ok(10) | Err(Refusal::Concurrency))));
}
