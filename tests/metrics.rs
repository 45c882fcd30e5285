//! `/metrics` after a known mix of requests: exact counter deltas, cost equal to the request
//! log, bounded per-user series, and a clean `promtool check metrics`. Its own test binary: the
//! Prometheus recorder is process-wide, so no other test may move its counters meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate::config::{ModelPrice, PlanConfig};
use tollgate::mock::MockOptions;
use tollgate_testkit::app::sse::SseReader;
use tollgate_testkit::app::*;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap())
        })
        .collect()
}

/// Sum of `name` over samples whose labels include every pair in `want`.
fn total(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn scrape(app: &TestApp) -> (String, Vec<Sample>) {
    let mut response = app
        .client
        .get(format!("{}/metrics", app.metrics_base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(response.body().limit(16 << 20).await.unwrap().to_vec()).unwrap();
    let samples = parse(&text);
    (text, samples)
}

fn plan(features: &[&str]) -> PlanConfig {
    PlanConfig {
        features: features.iter().map(|f| f.to_string()).collect(),
        ..PlanConfig::default()
    }
}

#[actix_web::test]
async fn a_known_mix_moves_the_counters_by_exactly_its_deltas() {
    let app = spawn_app(
        MockOptions {
            tokens: 60,
            tokens_per_second: 400.0,
            ..fast_mock()
        },
        |c| {
            let mut mix = plan(&["chat_support"]);
            mix.rate.requests_per_minute = Some(3);
            c.plans.insert("mix".into(), mix);
            let mut tight = plan(&["chat_support"]);
            tight.cost.max_daily_usd = Some(0.0002); // 200 micro-USD: ~15 output tokens
            c.plans.insert("tight".into(), tight);
            c.relay.meter_batch_tokens = 2;
            c.metrics.max_user_series = 50;
            // `primary` is overloaded (529) and falls back to `backup`.
            c.pricing.insert(
                "primary".into(),
                ModelPrice {
                    input_per_million_usd: 1.0,
                    output_per_million_usd: 1.0,
                    upstream_model: "mock-gpt:fault=status@529".into(),
                    fallback: vec!["backup".into()],
                    ..ModelPrice::default()
                },
            );
            c.pricing.insert(
                "backup".into(),
                ModelPrice {
                    input_per_million_usd: 1.0,
                    output_per_million_usd: 1.0,
                    upstream_model: "mock-gpt".into(),
                    ..ModelPrice::default()
                },
            );
        },
    )
    .await;
    let (_, before) = scrape(&app).await;
    let token =
        |user: &str, plan: &str| tollgate::auth::mint(&app.config.auth, user, plan, 60).unwrap();
    let stream = |user: &str, plan: &str, body: Value| {
        app.client
            .post(format!("{}/v1/chat/completions", app.base))
            .bearer_auth(token(user, plan))
            .send_json(&body)
    };
    // 1 completed, 1 cut at the token cap, then the third passes the 3/min window.
    let events = SseReader::new(
        stream("m1", "mix", chat_body("mock-gpt", true))
            .await
            .unwrap(),
    )
    .collect()
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut capped = chat_body("mock-gpt:ignore_max_tokens=true", true);
    capped["max_tokens"] = json!(5);
    SseReader::new(stream("m1", "mix", capped).await.unwrap())
        .collect()
        .await;
    let mut third = chat_body("mock-gpt", false);
    third["max_tokens"] = json!(3);
    assert_eq!(
        stream("m1", "mix", third.clone()).await.unwrap().status(),
        200
    );
    let refused = stream("m1", "mix", third).await.unwrap();
    assert_eq!(
        error_code(refused).await,
        (429, "requests_per_minute".into())
    );
    // 1 cut by the budget.
    let events = SseReader::new(
        stream("m2", "tight", chat_body("mock-gpt", true))
            .await
            .unwrap(),
    )
    .collect()
    .await;
    assert!(events[events.len() - 2].contains("budget_exceeded"));
    // 1 refused by authentication.
    let anonymous = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    assert_eq!(error_code(anonymous).await.0, 401);

    let logs = app.wait_for_logs(6).await;
    let (text, after) = scrape(&app).await;
    let delta =
        |name: &str, want: &[(&str, &str)]| total(&after, name, want) - total(&before, name, want);
    let req = "tollgate_requests_total";
    assert_eq!(
        delta(req, &[("plan", "mix"), ("outcome", "completed")]),
        2.0
    );
    assert_eq!(
        delta(req, &[("plan", "mix"), ("outcome", "cut_token_cap")]),
        1.0
    );
    assert_eq!(delta(req, &[("plan", "mix"), ("outcome", "rejected")]), 1.0);
    assert_eq!(
        delta(req, &[("plan", "tight"), ("outcome", "cut_budget")]),
        1.0
    );
    assert_eq!(
        delta(req, &[("plan", "none"), ("outcome", "rejected")]),
        1.0
    );
    assert_eq!(delta(req, &[]), 6.0);
    assert_eq!(
        delta(
            "tollgate_rejections_total",
            &[("reason", "requests_per_minute")]
        ),
        1.0
    );
    assert_eq!(
        delta("tollgate_rejections_total", &[("reason", "missing_token")]),
        1.0
    );
    assert_eq!(
        delta("tollgate_stream_cuts_total", &[("reason", "token_cap")]),
        1.0
    );
    assert_eq!(
        delta("tollgate_stream_cuts_total", &[("reason", "budget")]),
        1.0
    );
    assert_eq!(delta("tollgate_active_streams", &[]), 0.0);
    assert_eq!(delta("tollgate_request_duration_seconds_count", &[]), 6.0);

    let logged_output: u64 = logs
        .iter()
        .map(|l| l["output_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        delta("tollgate_tokens_total", &[("direction", "output")]),
        logged_output as f64
    );
    let logged_cost: f64 = logs.iter().map(|l| l["cost_usd"].as_f64().unwrap()).sum();
    let counted_cost = delta("tollgate_cost_usd_total", &[]);
    assert!(
        (counted_cost - logged_cost).abs() < 1e-9,
        "{counted_cost} vs {logged_cost}"
    );
    let user_cost = total(&after, "tollgate_user_cost_usd_total", &[("user", "m1")]);
    let m1_cost: f64 = logs
        .iter()
        .filter(|l| l["user_id"] == "m1")
        .map(|l| l["cost_usd"].as_f64().unwrap())
        .sum();
    assert!((user_cost - m1_cost).abs() < 1e-9);

    tollgate_testkit::promtool::check_metrics(&text);
    a_fallback_is_counted_from_and_to(&app).await;
    many_users_stay_within_the_series_bound(&app).await;
}

async fn a_fallback_is_counted_from_and_to(app: &TestApp) {
    let (_, before) = scrape(app).await;
    let mut body = chat_body("primary", false);
    body["max_tokens"] = json!(3);
    let response = app.post_chat("f1").send_json(&body).await.unwrap();
    assert_eq!(response.status(), 200);
    let logs = app.wait_for_logs(7).await;
    assert_eq!(logs[6]["model"], "backup", "{}", logs[6]);
    let (_, after) = scrape(app).await;
    let delta =
        |name: &str, want: &[(&str, &str)]| total(&after, name, want) - total(&before, name, want);
    let fallbacks = "tollgate_upstream_fallbacks_total";
    assert_eq!(
        delta(fallbacks, &[("from", "primary"), ("to", "backup")]),
        1.0
    );
    assert_eq!(delta(fallbacks, &[]), 1.0);
    assert_eq!(
        delta(
            "tollgate_requests_total",
            &[("model", "backup"), ("outcome", "completed")]
        ),
        1.0,
        "the model that served is the label"
    );
    assert_eq!(
        delta("tollgate_upstream_errors_total", &[]),
        0.0,
        "it did not end in one"
    );
}

async fn many_users_stay_within_the_series_bound(app: &TestApp) {
    for batch in 0..100 {
        let requests = (0..50).map(|i| {
            let user = format!("crowd-{batch}-{i}");
            let mut body = chat_body("mock-gpt", false);
            body["max_tokens"] = json!(1);
            app.post_chat(&user).send_json(&body)
        });
        for response in futures::future::join_all(requests).await {
            assert_eq!(response.unwrap().status(), 200);
        }
    }
    let (_, samples) = scrape(app).await;
    let series = samples
        .iter()
        .filter(|(n, _, _)| n == "tollgate_user_cost_usd_total")
        .count();
    assert!(
        series <= 51,
        "{series} per-user series for a bound of 50 (+ _other)"
    );
    assert!(
        total(
            &samples,
            "tollgate_user_cost_usd_total",
            &[("user", "_other")]
        ) > 0.0
    );
}
