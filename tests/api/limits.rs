//! Per-user windows and spend caps, held by the user's actor. Time comes from the test clock:
//! no test sleeps to cross a window.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate::mock::MockOptions;
use tollgate_testkit::app::sse::{assert_error_ending, content_of, SseReader};
use tollgate_testkit::app::*;

async fn send(app: &TestApp, user: &str) -> awc::ClientResponse {
    app.post_chat(user)
        .send_json(&chat_body("mock-gpt", false))
        .await
        .unwrap()
}

fn header(response: &awc::ClientResponse, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

#[actix_web::test]
async fn the_eleventh_request_in_any_rolling_minute_is_refused_until_the_window_frees() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    for i in 0..5 {
        let r = send(&app, "alice").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "10");
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests"),
            (9 - i).to_string()
        );
    }
    app.clock.advance_ms(30_000);
    for _ in 0..5 {
        assert_eq!(send(&app, "alice").await.status(), 200);
    }
    let refused = send(&app, "alice").await;
    assert_eq!(header(&refused, "retry-after"), "30");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    assert!(
        refused.headers().get("x-should-retry").is_none(),
        "waiting cures this one"
    );
    assert_eq!(
        error_code(refused).await,
        (429, "requests_per_minute".into())
    );

    // 60 s after the first five they leave the window; the second five are still in it.
    app.clock.advance_ms(30_000);
    for _ in 0..5 {
        assert_eq!(send(&app, "alice").await.status(), 200);
    }
    let refused = send(&app, "alice").await;
    assert_eq!(header(&refused, "retry-after"), "30");
    assert_eq!(
        error_code(refused).await,
        (429, "requests_per_minute".into())
    );
    assert_eq!(
        app.recorder.requests().len(),
        15,
        "refusals never reach the upstream"
    );
    // Another user has their own window.
    assert_eq!(send(&app, "bob").await.status(), 200);
}

#[actix_web::test]
async fn fifty_concurrent_requests_against_a_limit_of_ten_admit_exactly_ten() {
    let app = spawn_app(fast_mock(), |c| c.rate.max_concurrent_streams = 100).await;
    let requests = (0..50).map(|_| send(&app, "carol"));
    let statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        40,
        "{statuses:?}"
    );
    assert_eq!(app.recorder.requests().len(), 10);
}

#[actix_web::test]
async fn the_day_window_rolls_at_utc_midnight() {
    let app = spawn_app(fast_mock(), |c| c.rate.requests_per_day = 3).await;
    for _ in 0..3 {
        assert_eq!(send(&app, "dana").await.status(), 200);
        app.clock.advance_ms(120_000);
    }
    let refused = send(&app, "dana").await;
    // TEST_NOW is 12:00 UTC; six minutes later, midnight is 11 h 54 min away.
    assert_eq!(
        header(&refused, "retry-after"),
        (11 * 3600 + 54 * 60).to_string()
    );
    assert_eq!(header(&refused, "x-should-retry"), "false");
    assert_eq!(error_code(refused).await, (429, "requests_per_day".into()));

    app.clock.set_ms(TEST_NOW_MS + 12 * 3600 * 1000 - 1); // 23:59:59.999
    assert_eq!(
        error_code(send(&app, "dana").await).await.1,
        "requests_per_day"
    );
    app.clock.advance_ms(1); // 00:00:00.000 the next day
    assert_eq!(send(&app, "dana").await.status(), 200);
}

#[actix_web::test]
async fn a_tokens_per_day_shortfall_shrinks_max_tokens_then_refuses() {
    // The arithmetic below is sized for a bare prompt: the canary's ~25 input tokens a request
    // would leave room for one grant only.
    let app = spawn_app(fast_mock(), |c| {
        c.rate.tokens_per_day = 100;
        c.guardrails.canary = false;
    })
    .await;
    let mut used = 0;
    let mut grants = Vec::new();
    loop {
        let response = send(&app, "erin").await;
        if response.status() != 200 {
            assert_eq!(header(&response, "x-should-retry"), "false");
            assert_eq!(error_code(response).await, (429, "tokens_per_day".into()));
            break;
        }
        let granted: u64 = header(&response, "x-tollgate-max-tokens").parse().unwrap();
        let logs = app.wait_for_logs(grants.len() + 1).await;
        let line = logs.last().unwrap();
        let input = line["input_tokens_estimated"].as_u64().unwrap();
        assert_eq!(
            granted,
            (100 - used - input).min(1000),
            "granted what the day has left"
        );
        assert_eq!(
            app.recorder.requests().last().unwrap().body["max_tokens"],
            granted,
            "the upstream got the shrunk cap"
        );
        used += line["total_tokens"].as_u64().unwrap();
        grants.push(granted);
    }
    // Every grant was a shrunk one, and the refusal came when less than input + the floor
    // (16 tokens) was left.
    assert!(grants.len() >= 2, "{grants:?}");
    assert!(grants.windows(2).all(|w| w[1] < w[0]), "{grants:?}");
    let input = app.log_lines()[0]["input_tokens_estimated"]
        .as_u64()
        .unwrap();
    assert!(100 - used < input + 16, "refused with {} left", 100 - used);
    assert_eq!(app.recorder.requests().len(), grants.len());
}

#[actix_web::test]
async fn the_concurrency_cap_refuses_the_extra_stream_and_frees_slots_at_once() {
    let app = spawn_app(fast_mock(), |c| c.rate.max_concurrent_streams = 2).await;
    let open = |n: u32| {
        app.post_chat("fay")
            .send_json(&chat_body(&format!("mock-gpt:fault=stall@{n}"), true))
    };
    let first = SseReader::new(open(1).await.unwrap());
    let mut second = SseReader::new(open(1).await.unwrap());
    let refused = open(1).await.unwrap();
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(
        error_code(refused).await,
        (429, "concurrent_streams".into())
    );

    second.next_data().await.unwrap();
    drop(second); // disconnect frees its slot
    app.wait_for_logs(2).await; // the refusal and the disconnect
    let third = open(1).await.unwrap();
    assert_eq!(third.status(), 200);
    drop(first);
    drop(third);
    app.wait_for_logs(4).await;
    // A completed stream frees its slot too.
    let done = app
        .post_chat("fay")
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    SseReader::new(done).collect().await;
    app.wait_for_logs(5).await;
    assert_eq!(app.settled_usage("fay").await["open_streams"], 0);
}

/// A webhook that hands every POSTed body to the test.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let tx = tx.clone();
        App::new().route(
            "/hook",
            web::post().to(move |body: web::Json<Value>| {
                let _ = tx.send(body.into_inner());
                async { HttpResponse::Ok().finish() }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    (url, rx)
}

/// Reads a stream to its end: its data events, and the output tokens it carried (mock words
/// are one token each).
async fn relayed(app: &TestApp, user: &str) -> (Vec<String>, u64) {
    let response = app
        .post_chat(user)
        .send_json(&chat_body("mock-gpt", true))
        .await
        .unwrap();
    let events = SseReader::new(response).collect().await;
    let tokens = content_of(&events).split_whitespace().count() as u64;
    (events, tokens)
}

/// One stream and five concurrent streams of one user run into the daily cap mid-stream: each
/// is cut with `budget_exceeded` at the token that would cross it, the spend billed is within
/// the cap (less than a token below it), and every stream is billed exactly what it relayed.
#[actix_web::test]
async fn streams_are_cut_at_the_daily_cap_exactly_and_billed_what_they_relayed() {
    let (hook, mut alerts) = webhook().await;
    let app = spawn_app(
        MockOptions {
            tokens: 400,
            tokens_per_second: 50.0,
            ..fast_mock()
        },
        |c| {
            c.cost.max_daily_usd = 0.001; // 1000 micro-USD; mock-gpt output: 10 micro-USD/token
            c.cost.alert_webhook_url = hook;
            c.rate.max_concurrent_streams = 10;
            c.relay.meter_batch_tokens = 4;
            // Sized for a bare prompt: the canary's system message would add input to each of
            // the five admissions.
            c.guardrails.canary = false;
        },
    )
    .await;
    // One stream alone.
    let (events, tokens) = relayed(&app, "ida").await;
    assert_error_ending(&events, "budget_exceeded");
    let line = app.wait_for_logs(1).await[0].clone();
    assert_eq!(line["outcome"], "cut_budget", "{line}");
    assert_eq!(
        line["output_tokens"], tokens,
        "billed what it relayed: {line}"
    );
    let spent = micro_usd(&app.settled_usage("ida").await);
    assert!(spent <= 1000 && spent > 1000 - 10, "spent {spent} of 1000");

    // Five at once.
    let streams = (0..5).map(|_| relayed(&app, "gus"));
    let streams = futures::future::join_all(streams).await;
    for (events, _) in &streams {
        assert_error_ending(events, "budget_exceeded");
    }
    let logs: Vec<Value> = app.wait_for_logs(6).await[1..].to_vec();
    assert!(
        logs.iter().all(|l| l["outcome"] == "cut_budget"),
        "{logs:?}"
    );
    let relayed_tokens: u64 = streams.iter().map(|(_, tokens)| tokens).sum();
    let billed_tokens: u64 = logs
        .iter()
        .map(|l| l["output_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(relayed_tokens, billed_tokens, "billed what they relayed");
    let spent = micro_usd(&app.settled_usage("gus").await);
    let billed: f64 = logs.iter().map(|l| l["cost_usd"].as_f64().unwrap()).sum();
    assert_eq!(spent, (billed * 1e6).round() as u64);
    assert!(spent <= 1000, "past the cap: {spent}");
    assert!(spent > 1000 - 10, "stopped short of the cap: {spent}");

    // The next request is refused outright, without retries.
    let refused = send(&app, "gus").await;
    assert_eq!(header(&refused, "x-should-retry"), "false");
    assert_eq!(error_code(refused).await, (429, "daily_budget".into()));

    // Exactly one alert for the day window per user.
    let mut alerted = Vec::new();
    for _ in 0..2 {
        let alert = tokio::time::timeout(WAIT, alerts.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(alert["window"], "daily");
        assert_eq!(alert["percent"], 80);
        let user = alert["user"].as_str().unwrap().to_string();
        assert!(alert["text"].as_str().unwrap().contains(&user));
        alerted.push(user);
    }
    alerted.sort();
    assert_eq!(alerted, ["gus", "ida"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), alerts.recv())
            .await
            .is_err(),
        "a second alert in the same window"
    );
}

/// Embedded mode: streams of three users at once run into the organisation's cap mid-stream;
/// every one is cut with `budget_exceeded`, and the organisation's total billed is within the
/// cap (less than a token below it), each user billed what they got.
#[actix_web::test]
async fn streams_of_several_users_are_cut_at_the_organisation_cap_exactly() {
    let app = spawn_app(
        MockOptions {
            tokens: 400,
            tokens_per_second: 50.0,
            ..fast_mock()
        },
        |c| c.cost.max_org_daily_usd = 0.002,
    )
    .await;
    let users = ["kim", "kit", "kai"];
    let streams = futures::future::join_all(users.iter().map(|u| relayed(&app, u))).await;
    let mut billed = 0;
    for (user, (events, tokens)) in users.iter().zip(&streams) {
        assert_error_ending(events, "budget_exceeded");
        let usage = app.settled_usage(user).await;
        assert_eq!(
            usage["output_tokens"], *tokens,
            "{user}: billed what it got"
        );
        billed += micro_usd(&usage);
    }
    assert!(
        billed <= 2000 && billed > 2000 - 10,
        "billed {billed} of 2000"
    );
    let refused = send(&app, "kay").await;
    assert_eq!(error_code(refused).await, (429, "org_daily_budget".into()));
}

/// A whole (non-streamed) reply is charged at its end, so admission grants it only the output
/// the budget left covers: the provider is asked for no more, and the cap holds.
#[actix_web::test]
async fn a_whole_reply_is_granted_only_the_output_the_budget_covers() {
    let app = spawn_app(
        MockOptions {
            tokens: 1000,
            ..fast_mock()
        },
        |c| c.cost.max_daily_usd = 0.001, // 1000 micro-USD; mock-gpt output: 10 a token
    )
    .await;
    let mut body = chat_body("mock-gpt", false);
    body["max_tokens"] = json!(1000);
    let response = app.post_chat("lea").send_json(&body).await.unwrap();
    assert_eq!(response.status(), 200);
    let granted: u64 = header(&response, "x-tollgate-max-tokens").parse().unwrap();
    let line = app.wait_for_logs(1).await[0].clone();
    let input_cost = (line["input_tokens_estimated"].as_u64().unwrap() * 2500).div_ceil(1000);
    assert_eq!(
        granted,
        (1000 - input_cost) / 10,
        "what the budget left covers"
    );
    assert_eq!(app.recorder.requests()[0].body["max_tokens"], granted);
    assert_eq!(line["output_tokens"], granted);
    assert!(micro_usd(&app.settled_usage("lea").await) <= 1000);
}

#[actix_web::test]
async fn usage_reports_windows_and_spend() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    assert_eq!(send(&app, "hal").await.status(), 200);
    app.wait_for_logs(1).await;
    let usage = app.settled_usage("hal").await;
    assert_eq!(usage["requests_per_minute"]["used"], 1);
    assert_eq!(usage["requests_per_minute"]["remaining"], 9);
    assert_eq!(
        usage["requests_per_minute"]["resets_at"],
        "2026-11-25T12:01:00Z"
    );
    assert_eq!(usage["requests_per_day"]["limit"], 100);
    assert_eq!(
        usage["requests_per_day"]["resets_at"],
        "2026-11-26T00:00:00Z"
    );
    assert_eq!(usage["monthly_usd"]["resets_at"], "2026-12-01T00:00:00Z");
    assert_eq!(usage["daily_usd"]["limit_usd"], 0.5);
    let cost = app.log_lines()[0]["cost_usd"].as_f64().unwrap();
    assert_eq!(usage["daily_usd"]["used_usd"].as_f64().unwrap(), cost);
    assert_eq!(
        usage["tokens_per_day"]["used"],
        app.log_lines()[0]["total_tokens"]
    );
    let _ = json!(null);
}

/// A user's spend today, in micro-USD, from `/v1/usage`.
fn micro_usd(usage: &Value) -> u64 {
    (usage["daily_usd"]["used_usd"].as_f64().unwrap() * 1e6).round() as u64
}
