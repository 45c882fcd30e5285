//! JWKS: the signing keys an identity provider publishes (`auth.jwks_url`, RFC 7517), chosen by
//! a token's `kid`. Owns the fetch loop and the current key set; it knows nothing of claims or
//! requests (the [`Authenticator`](super::Authenticator) asks it for a key).
//!
//! - **Atomic sets.** A fetch parses the whole document into a new [`KeySet`] and swaps it in
//!   behind one `Arc`: readers hold the old set or the new one, never a mix. A failed fetch (or
//!   a document with no usable key) keeps the set loaded before.
//! - **The request path never waits** for the provider: an unknown `kid` wakes the fetch loop
//!   ([`Jwks::want_refresh`], one atomic notification) and the request is refused now.
//! - **Bounded load on the provider**: one fetch at start-up, one every
//!   `auth.jwks_refresh_secs`, retries after a failure backing off from 1 s to 30 s, and fetches
//!   for an unknown `kid` at most once per [`ON_DEMAND_GAP`] however many forged `kid`s arrive
//!   (requests inside the gap are served by one fetch at its end).
//! - **Only accepted keys**: RSA keys (RS256) and EC P-256 keys (ES256) whose algorithm is in
//!   `auth.algorithms`, with a `kid`, for signatures; any other key is ignored.
//!
//! The fetch is an awc GET (5 s timeout, at most 1 MiB, at most 3 redirects) from a task on the
//! actix system: awc's client is not `Send`, so the task builds its own.

use crate::telemetry::redact_url;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Fetches for an unknown `kid` are at least this far apart.
pub const ON_DEMAND_GAP: Duration = Duration::from_secs(30);
/// Longest wait for one fetch, response body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Retry after a failed fetch: the first wait, doubling up to the last.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The usable keys of one fetched JWKS, by `kid`.
#[cfg_attr(test, derive(Default))]
pub(super) struct KeySet {
    keys: BTreeMap<String, (Algorithm, DecodingKey)>,
    /// The published form of those keys, to tell whether a fetch changed anything.
    published: Vec<Jwk>,
}

impl KeySet {
    /// The key with this `kid` and the one algorithm it verifies.
    pub(super) fn get(&self, kid: &str) -> Option<(Algorithm, &DecodingKey)> {
        self.keys.get(kid).map(|(alg, key)| (*alg, key))
    }

    fn kids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }
}

/// Why a fetch produced no key set.
#[derive(Debug, thiserror::Error)]
pub(super) enum JwksError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("cannot read the body: {0}")]
    Body(String),
    #[error("no answer within {}s", FETCH_TIMEOUT.as_secs())]
    Timeout,
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    #[error("none of its {published} keys is usable (RS256/ES256 in auth.algorithms, with a kid, for signatures)")]
    NoUsableKey { published: usize },
}

/// Whether keys are loaded, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksStatus {
    /// No `auth.jwks_url`.
    NotConfigured,
    /// A key set is loaded (it may be older than the last failed fetch).
    Ok,
    /// No key set yet: tokens that need one are refused.
    Unavailable,
}

impl JwksStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JwksStatus::NotConfigured => "not_configured",
            JwksStatus::Ok => "ok",
            JwksStatus::Unavailable => "unavailable",
        }
    }
}

/// The shared handle: the current set and the fetch loop's wake-up.
#[derive(Clone)]
pub(super) struct Jwks {
    shared: Arc<Shared>,
    url: String,
    every: Duration,
    accepted: Vec<Algorithm>,
}

struct Shared {
    current: RwLock<Option<Arc<KeySet>>>,
    wanted: Notify,
}

impl Jwks {
    /// A handle with no keys yet; [`JwksRefresher::run`] loads them.
    pub(super) fn new(url: &str, refresh_secs: u64, accepted: &[Algorithm]) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: RwLock::new(None),
                wanted: Notify::new(),
            }),
            url: url.to_string(),
            every: Duration::from_secs(refresh_secs.max(1)),
            accepted: accepted
                .iter()
                .copied()
                .filter(|alg| matches!(alg, Algorithm::RS256 | Algorithm::ES256))
                .collect(),
        }
    }

    /// The loaded key set (`None` until a fetch succeeded).
    /// Whether `other` reads the same key set the same way (URL, interval, algorithms).
    pub(super) fn same_source(&self, other: &Jwks) -> bool {
        self.url == other.url && self.every == other.every && self.accepted == other.accepted
    }

    /// Whether `other` is this very set (shared keys), not just the same source.
    pub(super) fn is_same(&self, other: &Jwks) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether an authenticator still holds this set besides its refresher (one reference).
    fn still_used(&self) -> bool {
        Arc::strong_count(&self.shared) > 1
    }

    pub(super) fn current(&self) -> Option<Arc<KeySet>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Asks the fetch loop for a fetch (an unknown `kid`); never waits.
    pub(super) fn want_refresh(&self) {
        self.shared.wanted.notify_one();
    }

    pub(super) fn status(&self) -> JwksStatus {
        match self.current() {
            Some(_) => JwksStatus::Ok,
            None => JwksStatus::Unavailable,
        }
    }

    /// Replaces the key set when it differs from the one before (true then). An unchanged
    /// set stays the same `Arc`, so tokens it verified stay remembered ([`super::verified`]).
    pub(super) fn install(&self, set: KeySet) -> bool {
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = current
            .as_ref()
            .is_none_or(|old| old.published != set.published);
        if changed {
            *current = Some(Arc::new(set));
        }
        changed
    }

    /// Whether a fetch was asked for since the last call (tests).
    #[cfg(test)]
    pub(super) fn refresh_wanted(&self) -> bool {
        use futures::FutureExt;
        self.shared.wanted.notified().now_or_never().is_some()
    }

    /// Parses a JWKS document into the keys this gateway accepts.
    pub(super) fn parse(&self, body: &[u8]) -> Result<KeySet, JwksError> {
        parse(body, &self.accepted)
    }
}

/// The fetch loop of one [`Jwks`]; spawn [`JwksRefresher::run`] on the actix system.
pub struct JwksRefresher {
    jwks: Jwks,
}

impl JwksRefresher {
    pub(super) fn new(jwks: Jwks) -> Self {
        Self { jwks }
    }

    /// Fetches now, then every `auth.jwks_refresh_secs` (sooner after a failure), and when an
    /// unknown `kid` asks (at most once per [`ON_DEMAND_GAP`]). Runs until the system stops,
    /// or until no authenticator holds the set any more (a reload replaced it).
    pub async fn run(self) {
        // awc is not Send: the client lives in this task.
        let client = awc::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .max_redirects(3)
            .finish();
        let mut retry = FIRST_RETRY;
        let mut last_on_demand: Option<Instant> = None;
        while self.jwks.still_used() {
            let wait = if self.refresh(&client).await {
                retry = FIRST_RETRY;
                self.jwks.every
            } else {
                let wait = retry.min(self.jwks.every);
                retry = (retry * 2).min(MAX_RETRY);
                wait
            };
            let not_before = last_on_demand.map(|at| at + ON_DEMAND_GAP);
            let wanted = &self.jwks.shared.wanted;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = async move {
                    wanted.notified().await;
                    if let Some(at) = not_before {
                        tokio::time::sleep_until(at).await;
                    }
                } => last_on_demand = Some(Instant::now()),
            }
        }
    }

    /// One fetch; true when a key set was installed.
    async fn refresh(&self, client: &awc::Client) -> bool {
        let fetched = fetch(client, &self.jwks.url).await;
        match fetched.and_then(|body| self.jwks.parse(&body)) {
            Ok(set) => {
                let kids: Vec<String> = set.kids().into_iter().map(str::to_string).collect();
                if self.jwks.install(set) {
                    tracing::info!(
                        url = %redact_url(&self.jwks.url),
                        keys = kids.len(),
                        kids = ?kids,
                        "JWKS signing keys loaded"
                    );
                } else {
                    tracing::debug!(url = %redact_url(&self.jwks.url), "JWKS unchanged");
                }
                true
            }
            Err(e) => {
                tracing::warn!(
                    url = %redact_url(&self.jwks.url),
                    error = %e,
                    keys_loaded = self.jwks.current().is_some(),
                    "cannot refresh the JWKS; the keys loaded before (if any) stay in use"
                );
                false
            }
        }
    }
}

async fn fetch(client: &awc::Client, url: &str) -> Result<bytes::Bytes, JwksError> {
    let request = async {
        let mut response = client
            .get(url)
            .insert_header(("accept", "application/json"))
            .send()
            .await
            .map_err(|e| JwksError::Request(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        response
            .body()
            .limit(MAX_JWKS_BYTES)
            .await
            .map_err(|e| JwksError::Body(e.to_string()))
    };
    tokio::time::timeout(FETCH_TIMEOUT, request)
        .await
        .map_err(|_| JwksError::Timeout)?
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document: each key is read on its own, so one key of a kind this
/// gateway does not know cannot hide the others.
fn parse(body: &[u8], accepted: &[Algorithm]) -> Result<KeySet, JwksError> {
    let document: Document =
        serde_json::from_slice(body).map_err(|e| JwksError::NotJwks(e.to_string()))?;
    let published = document.keys.len();
    let mut keys = BTreeMap::new();
    let mut usable = Vec::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let Some(algorithm) = signing_algorithm(&jwk).filter(|alg| accepted.contains(alg)) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        if keys.contains_key(&kid) {
            continue; // The first key of an id wins.
        }
        keys.insert(kid, (algorithm, key));
        usable.push(jwk);
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey { published });
    }
    usable.sort_by(|a, b| a.common.key_id.cmp(&b.common.key_id));
    Ok(KeySet {
        keys,
        published: usable,
    })
}

/// The algorithm a published key verifies, if it is a signing key this gateway can use: RSA →
/// RS256, EC P-256 → ES256 (a stated `alg` must agree).
fn signing_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let stated = jwk.common.key_algorithm;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) if matches!(stated, None | Some(KeyAlgorithm::RS256)) => {
            Some(Algorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(ec)
            if ec.curve == EllipticCurve::P256
                && matches!(stated, None | Some(KeyAlgorithm::ES256)) =>
        {
            Some(Algorithm::ES256)
        }
        _ => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::{json, Value};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

    /// The public JWK of a fixture's private key.
    pub(in crate::auth) fn public_jwk(algorithm: Algorithm, kid: &str) -> Value {
        let pem = |file: &str| std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem("rsa_private.pem")),
            _ => EncodingKey::from_ec_pem(&pem("ec_private.pem")),
        };
        let mut jwk = Jwk::from_encoding_key(&key.unwrap(), algorithm).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    fn kids(set: &KeySet) -> Vec<&str> {
        set.kids()
    }

    const BOTH: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];

    #[test]
    fn usable_keys_are_kept_and_the_rest_ignored() {
        let mut no_kid = public_jwk(Algorithm::RS256, "x");
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut for_encryption = public_jwk(Algorithm::RS256, "enc");
        for_encryption["use"] = json!("enc");
        let mut unstated_alg = public_jwk(Algorithm::ES256, "ec-no-alg");
        unstated_alg.as_object_mut().unwrap().remove("alg");
        let mut wrong_alg = public_jwk(Algorithm::RS256, "rsa-as-ps");
        wrong_alg["alg"] = json!("PS256");
        let document = json!({"keys": [
            public_jwk(Algorithm::RS256, "rsa-1"),
            public_jwk(Algorithm::ES256, "ec-1"),
            no_kid,
            for_encryption,
            unstated_alg,
            wrong_alg,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"},
            {"kid": "garbage"},
        ]});
        let set = parse(document.to_string().as_bytes(), BOTH).unwrap();
        assert_eq!(kids(&set), ["ec-1", "ec-no-alg", "rsa-1"]);
        assert_eq!(set.get("rsa-1").unwrap().0, Algorithm::RS256);
        assert_eq!(set.get("ec-1").unwrap().0, Algorithm::ES256);

        let rsa_only = parse(document.to_string().as_bytes(), &[Algorithm::RS256]).unwrap();
        assert_eq!(kids(&rsa_only), ["rsa-1"]);
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(matches!(parse(b"<html>", BOTH), Err(JwksError::NotJwks(_))));
        assert!(matches!(
            parse(
                br#"{"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]}"#,
                BOTH
            ),
            Err(JwksError::NoUsableKey { published: 1 })
        ));
        let ec = json!({"keys": [public_jwk(Algorithm::ES256, "ec-1")]});
        assert!(matches!(
            parse(ec.to_string().as_bytes(), &[Algorithm::RS256]),
            Err(JwksError::NoUsableKey { published: 1 })
        ));
    }

    #[test]
    fn a_new_set_replaces_the_old_whole() {
        let jwks = Jwks::new("https://idp.example/jwks", 300, BOTH);
        assert_eq!(jwks.status(), JwksStatus::Unavailable);
        let a = json!({"keys": [public_jwk(Algorithm::RS256, "a")]}).to_string();
        let b = json!({"keys": [public_jwk(Algorithm::ES256, "b")]}).to_string();
        assert!(jwks.install(jwks.parse(a.as_bytes()).unwrap()));
        let held = jwks.current().unwrap();
        assert!(
            !jwks.install(jwks.parse(a.as_bytes()).unwrap()),
            "unchanged"
        );
        assert!(jwks.install(jwks.parse(b.as_bytes()).unwrap()));
        assert_eq!(jwks.status(), JwksStatus::Ok);
        let now = jwks.current().unwrap();
        assert_eq!((kids(&held), kids(&now)), (vec!["a"], vec!["b"]));
    }
}
