//! Keys from an identity provider's JWKS (`auth.jwks_url`) and the claim mapping
//! (`auth.user_claim`, `auth.plan_claim`, `auth.default_plan`), against a fake provider whose
//! document the test changes and whose fetches it counts.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate::config::Config;
use tollgate_testkit::app::idp::FakeIdp;
use tollgate_testkit::app::jwt::{fixture_key, hs256, signed, unix_now};
use tollgate_testkit::app::*;

/// The public half of a fixture key as a JWK (`n`/`e` or `x`/`y`), published under `kid`.
fn public_jwk(algorithm: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&fixture_key(algorithm), algorithm).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn jwks(keys: &[(Algorithm, &str)]) -> Value {
    json!({"keys": keys.iter().map(|(alg, kid)| public_jwk(*alg, kid)).collect::<Vec<_>>()})
}

/// A token signed with the fixture key of `algorithm`, naming `kid`.
fn claims() -> Value {
    json!({"sub": "zoe", "plan": "pro", "exp": unix_now() + 300, "iat": unix_now(), "aud": "tollgate"})
}

/// A gateway that takes keys from `idp` (and HS256 with the test secret).
async fn spawn_with_idp(idp: &FakeIdp, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let url = idp.url.clone();
    spawn_app(fast_mock(), |c| {
        c.auth.algorithms = vec!["HS256".into(), "RS256".into(), "ES256".into()];
        c.auth.jwks_url = url;
        c.auth.audience = "tollgate".into();
        tweak(c);
    })
    .await
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let mut response = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    let body = response.json::<Value>().await.unwrap();
    (response.status().as_u16(), body)
}

/// Polls `/readyz` (bounded by `within`) until its `jwks` field says `want`.
async fn wait_for_jwks(app: &TestApp, want: &str, within: Duration) -> (u16, Value) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (status, body) = readyz(app).await;
        if body["jwks"] == want {
            return (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never said jwks {want}: {body}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The request log line of the one request that got a 200.
async fn served_line(app: &TestApp) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(line) = app.log_lines().into_iter().find(|l| l["status"] == 200) {
            return line;
        }
        assert!(std::time::Instant::now() < deadline, "no log line of a 200");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn tokens_signed_by_a_published_key_are_accepted_by_kid() {
    let idp = FakeIdp::start(Some(jwks(&[
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
    ])))
    .await;
    let app = spawn_with_idp(&idp, |_| {}).await;
    let (status, body) = wait_for_jwks(&app, "ok", WAIT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["status"], &body["redis"], &body["upstream"]),
        (&json!("ready"), &json!("not_configured"), &json!("ok"))
    );
    assert_eq!(
        chat_status(&app, &signed(Algorithm::RS256, Some("rsa-1"), &claims())).await,
        (200, String::new())
    );
    assert_eq!(
        chat_status(&app, &signed(Algorithm::ES256, Some("ec-1"), &claims())).await,
        (200, String::new())
    );
    // Key confusion: an RS256 token naming the EC key, a token signed by another key.
    assert_eq!(
        chat_status(&app, &signed(Algorithm::RS256, Some("ec-1"), &claims())).await,
        (401, "invalid_token".into())
    );
    assert_eq!(
        chat_status(&app, &signed(Algorithm::ES256, Some("rsa-1"), &claims())).await,
        (401, "invalid_token".into())
    );
    assert_eq!(idp.fetches(), 1, "one fetch at start-up, none per request");

    // Only the accepted algorithms' keys count: without ES256 the EC key is ignored.
    let app = spawn_with_idp(&idp, |c| c.auth.algorithms = vec!["RS256".into()]).await;
    wait_for_jwks(&app, "ok", WAIT).await;
    assert_eq!(
        chat_status(&app, &signed(Algorithm::ES256, Some("ec-1"), &claims())).await,
        (401, "invalid_token".into())
    );
    assert_eq!(
        chat_status(&app, &hs256(&claims())).await,
        (401, "invalid_token".into())
    );
    assert_eq!(
        chat_status(&app, &signed(Algorithm::RS256, Some("rsa-1"), &claims())).await,
        (200, String::new())
    );
}

#[actix_web::test]
async fn rotated_keys_are_used_after_an_unknown_kid_asks_for_them() {
    let idp = FakeIdp::start(Some(jwks(&[(Algorithm::RS256, "key-a")]))).await;
    let app = spawn_with_idp(&idp, |_| {}).await;
    wait_for_jwks(&app, "ok", WAIT).await;
    let token_a = signed(Algorithm::RS256, Some("key-a"), &claims());
    let token_b = signed(Algorithm::ES256, Some("key-b"), &claims());
    assert_eq!(chat_status(&app, &token_a).await.0, 200);

    // The provider rotates to key B (and drops A).
    idp.publish(jwks(&[(Algorithm::ES256, "key-b")]));
    // The first B token finds no key: refused at once, and a fetch is asked for.
    assert_eq!(
        chat_status(&app, &token_b).await,
        (401, "invalid_token".into())
    );
    let deadline = std::time::Instant::now() + WAIT;
    while chat_status(&app, &token_b).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "key B never accepted");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        idp.fetches(),
        2,
        "start-up, then one fetch for the unknown kid"
    );
    // The new set replaced the old one whole.
    assert_eq!(
        chat_status(&app, &token_a).await,
        (401, "invalid_token".into())
    );
}

#[actix_web::test]
async fn forged_kids_cannot_make_tollgate_hammer_the_provider() {
    let idp = FakeIdp::start(Some(jwks(&[(Algorithm::RS256, "key-a")]))).await;
    let app = spawn_with_idp(&idp, |c| {
        // 40 bad tokens from one address: the per-address failure limit is not under test.
        c.auth.max_failures_per_minute = 0;
    })
    .await;
    wait_for_jwks(&app, "ok", WAIT).await;
    assert_eq!(idp.fetches(), 1);
    for i in 0..20 {
        let kid = format!("forged-{i}-{}", uuid_like(i));
        assert_eq!(
            chat_status(&app, &signed(Algorithm::RS256, Some(&kid), &claims())).await,
            (401, "invalid_token".into()),
            "{kid}"
        );
    }
    assert_upstream_untouched(&app).await;
    // The first unknown kid fetches at once; the rest wait out the 30 s gap together.
    assert!(
        idp.wait_for_fetches(2, WAIT).await,
        "no fetch for an unknown kid"
    );
    for i in 20..40 {
        let kid = format!("forged-{i}-{}", uuid_like(i));
        assert_eq!(
            chat_status(&app, &signed(Algorithm::RS256, Some(&kid), &claims()))
                .await
                .0,
            401
        );
    }
    assert!(
        !idp.wait_for_fetches(3, Duration::from_millis(500)).await,
        "{} fetches: unknown kids are fetched for at most once per 30 s",
        idp.fetches()
    );
    // The loaded key still works meanwhile.
    assert_eq!(
        chat_status(&app, &signed(Algorithm::RS256, Some("key-a"), &claims()))
            .await
            .0,
        200
    );
}

/// A different-looking id per request.
fn uuid_like(i: u64) -> String {
    format!(
        "{:016x}",
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ unix_now()
    )
}

#[actix_web::test]
async fn a_provider_down_at_start_up_does_not_stop_the_gateway() {
    let idp = FakeIdp::start(None).await;
    let app = spawn_with_idp(&idp, |_| {}).await;
    assert!(idp.wait_for_fetches(1, WAIT).await, "no fetch at start-up");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (&body["status"], &body["jwks"], &body["upstream"]),
        (&json!("not_ready"), &json!("unavailable"), &json!("ok"))
    );
    let token = signed(Algorithm::RS256, Some("key-a"), &claims());
    assert_eq!(
        chat_status(&app, &token).await,
        (401, "invalid_token".into())
    );
    assert_upstream_untouched(&app).await;
    // HS256 does not need the provider.
    assert_eq!(chat_status(&app, &hs256(&claims())).await.0, 200);

    // The provider comes up: the retries (1 s, 2 s, 4 s, … at most 30 s apart) find it.
    idp.publish(jwks(&[(Algorithm::RS256, "key-a")]));
    let (status, body) = wait_for_jwks(&app, "ok", Duration::from_secs(20)).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")));
    assert_eq!(chat_status(&app, &token).await, (200, String::new()));
}

#[actix_web::test]
async fn readyz_says_not_configured_without_a_jwks() {
    let app = spawn_app(fast_mock(), |_| {}).await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200);
    assert_eq!(body["jwks"], "not_configured");
}

#[actix_web::test]
async fn claims_name_the_user_and_the_plan() {
    let idp = FakeIdp::start(Some(jwks(&[(Algorithm::RS256, "key-a")]))).await;
    let mapped = |default_plan: &'static str| {
        move |c: &mut Config| {
            c.auth.user_claim = "email".into();
            c.auth.plan_claim = "tier".into();
            c.auth.default_plan = default_plan.into();
        }
    };
    let app = spawn_with_idp(&idp, mapped("basic")).await;
    wait_for_jwks(&app, "ok", WAIT).await;
    let person = |tier: Option<&str>| {
        let mut claims = json!({
            "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "email": "zoe@example.com",
            "exp": unix_now() + 300,
            "aud": "tollgate",
        });
        if let Some(tier) = tier {
            claims["tier"] = json!(tier);
        }
        claims
    };
    assert_eq!(
        chat_status(
            &app,
            &signed(Algorithm::RS256, Some("key-a"), &person(Some("pro")))
        )
        .await,
        (200, String::new())
    );
    let line = served_line(&app).await;
    assert_eq!(
        (&line["user_id"], &line["plan"]),
        (&json!("zoe@example.com"), &json!("pro"))
    );

    // No tier claim: the default plan (HS256 tokens are mapped the same way).
    let mut response = app
        .client
        .get(format!("{}/v1/usage", app.base))
        .bearer_auth(hs256(&person(None)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let usage = response.json::<Value>().await.unwrap();
    assert_eq!(
        (&usage["user_id"], &usage["plan"]),
        (&json!("zoe@example.com"), &json!("basic"))
    );
    // A user claim that is missing or not a string is refused.
    let mut no_email = person(Some("pro"));
    no_email.as_object_mut().unwrap().remove("email");
    let mut numeric_email = person(Some("pro"));
    numeric_email["email"] = json!(42);
    for claims in [no_email, numeric_email] {
        assert_eq!(
            chat_status(&app, &signed(Algorithm::RS256, Some("key-a"), &claims)).await,
            (401, "invalid_token".into()),
            "{claims}"
        );
    }

    // default_plan = "": a token without the plan claim is refused before the upstream.
    let app = spawn_with_idp(&idp, mapped("")).await;
    wait_for_jwks(&app, "ok", WAIT).await;
    assert_eq!(
        chat_status(
            &app,
            &signed(Algorithm::RS256, Some("key-a"), &person(None))
        )
        .await,
        (401, "invalid_token".into())
    );
    assert_eq!(
        chat_status(&app, &hs256(&person(None))).await,
        (401, "invalid_token".into())
    );
    assert_upstream_untouched(&app).await;
    assert_eq!(
        chat_status(
            &app,
            &signed(Algorithm::RS256, Some("key-a"), &person(Some("pro")))
        )
        .await,
        (200, String::new())
    );
}
