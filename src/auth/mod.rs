//! Client identity: a bearer that is a trusted front end's service key names its end user in
//! headers ([`service_keys`]); any other bearer must be a JWT. Either way the caller's
//! [`Identity`] comes out; mints tokens for `tollgate token`. Only this module touches
//! `jsonwebtoken`.
//!
//! Rules: exactly the configured algorithms (HS256 with the secret; RS256 / ES256 with the
//! identity provider's JWKS key named by the token's `kid` ([`jwks`]), else with the configured
//! PEM public key); `exp` required and checked with the configured leeway; `nbf` checked when
//! present; `iss`/`aud` checked when configured; the user in `auth.user_claim` (default `sub`)
//! and the plan in `auth.plan_claim` (default `plan`, else `auth.default_plan`) as strings;
//! tokens that live longer than `auth.max_token_lifetime_secs` and oversized tokens are refused
//! before they are trusted. A token that verified is remembered for up to a minute
//! ([`verified`]): the same bearer again skips the signature and claims check.

mod authorize;
mod failures;
mod jwks;
pub mod service_keys;
mod verified;

pub use authorize::{authorize_feature, authorize_model, authorize_parameters, models_in_plan};
pub use failures::FailureLimiter;
use jwks::Jwks;
pub use jwks::{JwksRefresher, JwksStatus};
pub use service_keys::new_key;
use service_keys::{Named, ServiceKeys};
use verified::Verified;

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Who is calling, as proven by the token (or by a front end's key and its headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub plan: String,
    /// The front end's session (its `session_header`), when it names one.
    pub session_id: Option<String>,
    /// The front end's own per-message limit, when it has one.
    pub max_message_chars: Option<usize>,
}

/// Who is calling, for a route a front end may call before any user (`/v1/models`).
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    User(Identity),
    /// A trusted front end naming no user: its key's plan applies. `refusal` is the answer of
    /// a route that needs a user.
    FrontEnd {
        plan: String,
        refusal: ApiError,
    },
}

/// The request headers, by lower-case name (actix-web's map in `http`; a map in tests).
pub trait Headers {
    fn get(&self, name: &str) -> Option<&[u8]>;
}

/// Headers as a plain list of (name, value), e.g. in tests.
impl<const N: usize> Headers for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// Where a client JWT names its user and plan (`auth.user_claim`, `auth.plan_claim`,
/// `auth.default_plan`).
struct ClaimMapping {
    user: String,
    plan: String,
    /// The plan of a token without the plan claim; `None` = such tokens are refused.
    default_plan: Option<String>,
}

/// Verifies bearer tokens against one configuration.
pub struct Authenticator {
    /// One (algorithm, validation) per accepted algorithm.
    accepted: Vec<(Algorithm, Validation)>,
    /// Keys held in the config: the HS256 secret and the PEM public key (RS256 / ES256).
    configured_keys: Vec<(Algorithm, DecodingKey)>,
    /// The identity provider's keys, by `kid` (`auth.jwks_url`).
    jwks: Option<Jwks>,
    claims: ClaimMapping,
    service_keys: ServiceKeys,
    max_lifetime_secs: u64,
    leeway_secs: u64,
    max_token_bytes: usize,
    /// Tokens verified in the last minute (see [`verified`]).
    verified: Verified,
}

/// The configured key material could not be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.public_key_path: {0}")]
pub struct KeyError(String);

impl Authenticator {
    /// Builds the verifier; fails if a configured public key cannot be read or parsed. With
    /// `auth.jwks_url` set it starts with no JWKS keys: spawn [`Authenticator::jwks_refresher`].
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let mut accepted = Vec::new();
        let mut configured_keys = Vec::new();
        for name in &config.algorithms {
            let (algorithm, key) = match name.as_str() {
                "HS256" => (
                    Algorithm::HS256,
                    Some(DecodingKey::from_secret(
                        config.jwt_secret.expose().as_bytes(),
                    )),
                ),
                "RS256" => (Algorithm::RS256, pem_key(config, Algorithm::RS256)?),
                "ES256" => (Algorithm::ES256, pem_key(config, Algorithm::ES256)?),
                other => return Err(KeyError(format!("unsupported algorithm {other}"))),
            };
            accepted.push((algorithm, validation(config, algorithm)));
            configured_keys.extend(key.map(|key| (algorithm, key)));
        }
        let algorithms: Vec<Algorithm> = accepted.iter().map(|(alg, _)| *alg).collect();
        Ok(Self {
            accepted,
            configured_keys,
            jwks: (!config.jwks_url.is_empty())
                .then(|| Jwks::new(&config.jwks_url, config.jwks_refresh_secs, &algorithms)),
            claims: ClaimMapping {
                user: config.user_claim.clone(),
                plan: config.plan_claim.clone(),
                default_plan: (!config.default_plan.is_empty())
                    .then(|| config.default_plan.clone()),
            },
            service_keys: ServiceKeys::new(&config.service_keys, config.leeway_secs),
            max_lifetime_secs: config.max_token_lifetime_secs,
            leeway_secs: config.leeway_secs,
            max_token_bytes: config.max_token_bytes,
            verified: Verified::new(),
        })
    }

    /// Takes `previous`'s JWKS (its keys loaded, its refresher running) when this one reads the
    /// same set: same URL, refresh interval and algorithms. A reload then verifies tokens at
    /// once, with no fetch first.
    pub fn keeping_jwks_of(mut self, previous: &Authenticator) -> Self {
        if let (Some(new), Some(old)) = (&self.jwks, &previous.jwks) {
            if new.same_source(old) {
                self.jwks = Some(old.clone());
            }
        }
        self
    }

    /// Whether this authenticator reads `other`'s JWKS (no refresher of its own to start).
    pub fn shares_jwks_with(&self, other: &Authenticator) -> bool {
        match (&self.jwks, &other.jwks) {
            (Some(a), Some(b)) => a.is_same(b),
            _ => false,
        }
    }

    /// The JWKS fetch loop to spawn on the actix system; `None` without `auth.jwks_url`.
    pub fn jwks_refresher(&self) -> Option<JwksRefresher> {
        self.jwks.clone().map(JwksRefresher::new)
    }

    /// Whether the JWKS keys are loaded, for `/readyz`.
    pub fn jwks_status(&self) -> JwksStatus {
        self.jwks
            .as_ref()
            .map_or(JwksStatus::NotConfigured, Jwks::status)
    }

    /// Who is calling: a front end's end user (its service key, then its user headers) or a
    /// JWT's subject. A front end that names no user is refused (`missing_user`, or
    /// `invalid_token` for a user JWT header).
    pub fn authenticate(&self, headers: &dyn Headers) -> Result<Identity, ApiError> {
        match self.authenticate_caller(headers)? {
            Caller::User(identity) => Ok(identity),
            Caller::FrontEnd { refusal, .. } => Err(refusal),
        }
    }

    /// Like [`Authenticator::authenticate`], but a front end that names no user is answered
    /// as itself.
    pub fn authenticate_caller(&self, headers: &dyn Headers) -> Result<Caller, ApiError> {
        let token = self.bearer(headers.get("authorization"))?;
        match self.service_keys.identify(token, headers) {
            Some(Ok(Named::User(user))) => Ok(Caller::User(Identity {
                user_id: user.user_id,
                plan: user.plan,
                session_id: user.session_id,
                max_message_chars: user.max_message_chars,
            })),
            Some(Ok(Named::NoUser { plan, error })) => Ok(Caller::FrontEnd {
                plan,
                refusal: error,
            }),
            Some(Err(e)) => Err(e),
            None => self.verify_jwt(token).map(Caller::User),
        }
    }

    /// The bearer value of an `Authorization` header (None when absent).
    fn bearer<'h>(&self, authorization: Option<&'h [u8]>) -> Result<&'h str, ApiError> {
        let header = authorization.ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingToken,
                "missing bearer token in Authorization header",
            )
        })?;
        if header.len() > self.max_token_bytes + "Bearer ".len() {
            return Err(invalid("bearer token is too large"));
        }
        let header =
            std::str::from_utf8(header).map_err(|_| invalid("malformed Authorization header"))?;
        header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::MissingToken,
                    "expected Authorization: Bearer <token>",
                )
            })
    }

    /// Verifies a client JWT and maps its claims to an [`Identity`].
    fn verify_jwt(&self, token: &str) -> Result<Identity, ApiError> {
        let now = unix_now();
        let current_keys = self.jwks.as_ref().and_then(Jwks::current);
        if let Some(identity) = self.verified.get(token, now, current_keys.as_ref()) {
            return Ok(identity);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the bearer token is not valid"))?;
        refuse_critical(&header).map_err(|_| {
            invalid("the bearer token's header names critical extensions this gateway does not understand")
        })?;
        let (algorithm, validation) = self
            .accepted
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .ok_or_else(|| invalid("the bearer token's algorithm is not accepted"))?;
        // The JWKS set the key is borrowed from, when it is a JWKS key.
        let mut published = None;
        let key = match (&self.jwks, header.kid.as_deref()) {
            (Some(jwks), Some(kid)) if *algorithm != Algorithm::HS256 => {
                published = current_keys;
                match published.as_deref().and_then(|set| set.get(kid)) {
                    Some((alg, key)) if alg == *algorithm => key,
                    Some(_) => {
                        return Err(invalid(
                            "the bearer token's algorithm is not its key's algorithm",
                        ))
                    }
                    None => {
                        // Maybe the provider rotated its keys: fetch again (rate limited),
                        // without making this request wait.
                        jwks.want_refresh();
                        return Err(invalid("the bearer token's signing key is not known"));
                    }
                }
            }
            _ => self
                .configured_keys
                .iter()
                .find(|(alg, _)| alg == algorithm)
                .map(|(_, key)| key)
                .ok_or_else(|| invalid("no key is configured for the bearer token"))?,
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::new(ErrorCode::TokenExpired, "the bearer token has expired")
                }
                _ => invalid("the bearer token is not valid"),
            })?
            .claims;
        let exp = self.check_lifetime(&claims)?;
        let identity = Identity {
            user_id: self.user_of(&claims)?,
            plan: self.plan_of(&claims)?,
            session_id: None,
            max_message_chars: None,
        };
        let expires_after = exp.saturating_add(self.leeway_secs);
        self.verified
            .put(token, &identity, now, expires_after, published);
        Ok(identity)
    }

    /// The user claim: a non-empty string, at most 256 bytes, no control characters, and not
    /// in a trusted front end's namespace (`<name>:…` is that front end's users only).
    fn user_of(&self, claims: &Map<String, Value>) -> Result<String, ApiError> {
        match claims.get(&self.claims.user) {
            Some(Value::String(user)) if !user.is_empty() => {
                let user = service_keys::user_value(user.as_bytes())
                    .map_err(|_| invalid("the bearer token's user is not a usable id"))?;
                if self.service_keys.owns(&user) {
                    return Err(invalid(
                        "the bearer token names a user of a trusted front end",
                    ));
                }
                Ok(user)
            }
            _ => Err(ApiError::new(
                ErrorCode::InvalidToken,
                format!(
                    "the bearer token needs a non-empty string {} claim",
                    self.claims.user
                ),
            )),
        }
    }

    /// The plan claim (a non-empty string), or the default plan when the claim is absent.
    fn plan_of(&self, claims: &Map<String, Value>) -> Result<String, ApiError> {
        match (claims.get(&self.claims.plan), &self.claims.default_plan) {
            (Some(Value::String(plan)), _) if !plan.is_empty() => Ok(plan.clone()),
            (None | Some(Value::Null), Some(default)) => Ok(default.clone()),
            _ => Err(ApiError::new(
                ErrorCode::InvalidToken,
                format!(
                    "the bearer token needs a non-empty string {} claim",
                    self.claims.plan
                ),
            )),
        }
    }

    /// Checks `iat` and the token's lifetime; returns its `exp`.
    fn check_lifetime(&self, claims: &Map<String, Value>) -> Result<u64, ApiError> {
        // jsonwebtoken has checked that `exp` is present and a number; `iat` is optional.
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("the bearer token's exp is not a time"))?;
        let iat = match claims.get("iat") {
            None | Some(Value::Null) => None,
            Some(iat) => Some(
                iat.as_u64()
                    .ok_or_else(|| invalid("the bearer token's iat is not a time"))?,
            ),
        };
        let now = unix_now();
        if iat.is_some_and(|iat| iat > now + self.leeway_secs) {
            return Err(invalid(
                "the bearer token claims to be issued in the future",
            ));
        }
        // A token lives from when it was issued (never later than now) until it expires.
        let issued = iat.unwrap_or(now).min(now);
        let lifetime = exp.saturating_sub(issued);
        if lifetime > self.max_lifetime_secs + self.leeway_secs {
            return Err(invalid(
                "the bearer token lives longer than this gateway allows",
            ));
        }
        Ok(exp)
    }
}

fn validation(config: &AuthConfig, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // A configured iss/aud must also be present: jsonwebtoken checks them only when present.
    // The user claim is checked by the mapping (it need not be `sub`).
    let mut required = vec!["exp"];
    if !config.issuer.is_empty() {
        required.push("iss");
    }
    if !config.audience.is_empty() {
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    if config.issuer.is_empty() {
        validation.iss = None;
    } else {
        validation.set_issuer(&[config.issuer.as_str()]);
    }
    if config.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&[config.audience.as_str()]);
    }
    validation
}

/// The PEM public key of `algorithm` (RS256 or ES256). Optional with a JWKS, which can hold
/// all the keys; required without one.
fn pem_key(config: &AuthConfig, algorithm: Algorithm) -> Result<Option<DecodingKey>, KeyError> {
    if config.public_key_path.is_empty() && !config.jwks_url.is_empty() {
        return Ok(None);
    }
    let pem = read_pem(&config.public_key_path)?;
    let key = if algorithm == Algorithm::RS256 {
        DecodingKey::from_rsa_pem(&pem).map_err(|e| KeyError(format!("not an RSA public key: {e}")))
    } else {
        DecodingKey::from_ec_pem(&pem).map_err(|e| KeyError(format!("not an EC public key: {e}")))
    };
    key.map(Some)
}

fn read_pem(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError(format!("cannot read {path}: {e}")))
}

/// RFC 7515 §4.1.11: a JWS whose header lists `crit` extensions the recipient does not
/// understand must be refused. tollgate understands none, so any `crit` (even an empty list,
/// which the RFC forbids) refuses the token; jsonwebtoken does not check it.
fn refuse_critical(header: &Header) -> Result<(), CriticalExtensions> {
    match header.crit {
        None => Ok(()),
        Some(_) => Err(CriticalExtensions),
    }
}

/// The token's header names critical extensions (see [`refuse_critical`]).
struct CriticalExtensions;

fn invalid(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidToken, message)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign token: {0}")]
pub struct MintError(String);

/// Signs an HS256 token for `sub` on `plan`, valid for `ttl_secs` from now. The user is in
/// `sub` and in `auth.user_claim`, the plan in `auth.plan_claim`, so the token verifies under
/// the configured claim mapping.
pub fn mint(
    config: &AuthConfig,
    sub: &str,
    plan: &str,
    ttl_secs: u64,
) -> Result<String, MintError> {
    let now = unix_now();
    let mut claims = Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert(config.user_claim.clone(), sub.into());
    claims.insert(config.plan_claim.clone(), plan.into());
    claims.insert("exp".into(), (now + ttl_secs).into());
    claims.insert("iat".into(), now.into());
    if !config.issuer.is_empty() {
        claims.insert("iss".into(), config.issuer.clone().into());
    }
    if !config.audience.is_empty() {
        claims.insert("aud".into(), config.audience.clone().into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
    )
    .map_err(|e| MintError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: Secret::new("test-secret"),
            ..AuthConfig::default()
        }
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// The request headers holding only `Authorization: <value>`.
    fn authorization(value: &str) -> [(&'static str, &str); 1] {
        [("authorization", value)]
    }

    fn check(token: &str) -> Result<Identity, ErrorCode> {
        let header = format!("Bearer {token}");
        Authenticator::new(&config())
            .unwrap()
            .authenticate(&authorization(&header))
            .map_err(|e| e.code)
    }

    #[test]
    fn an_audience_list_is_accepted_when_it_holds_ours() {
        let config = AuthConfig {
            audience: "tollgate".into(),
            ..config()
        };
        let now = unix_now();
        let token = sign(
            serde_json::json!({"sub":"a","plan":"pro","exp": now + 60, "aud": ["other", "tollgate"]}),
            "test-secret",
        );
        let header = format!("Bearer {token}");
        let a = Authenticator::new(&config).unwrap();
        assert!(a.authenticate(&authorization(&header)).is_ok());
        let wrong = sign(
            serde_json::json!({"sub":"a","plan":"pro","exp": now + 60, "aud": ["other"]}),
            "test-secret",
        );
        let header = format!("Bearer {wrong}");
        assert!(a.authenticate(&authorization(&header)).is_err());
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint(&config(), "alice", "pro", 600).unwrap();
        assert_eq!(
            check(&token),
            Ok(Identity {
                user_id: "alice".into(),
                plan: "pro".into(),
                session_id: None,
                max_message_chars: None,
            })
        );
    }

    #[test]
    fn refusals_have_the_right_code() {
        let now = unix_now();
        let a = Authenticator::new(&config()).unwrap();
        assert_eq!(
            a.authenticate(&[]).unwrap_err().code,
            ErrorCode::MissingToken
        );
        assert_eq!(
            a.authenticate(&authorization("Basic abc"))
                .unwrap_err()
                .code,
            ErrorCode::MissingToken
        );
        let expired = sign(
            serde_json::json!({"sub":"a","plan":"pro","exp": now - 60}),
            "test-secret",
        );
        assert_eq!(check(&expired), Err(ErrorCode::TokenExpired));
        let wrong_key = sign(
            serde_json::json!({"sub":"a","plan":"pro","exp": now + 60}),
            "other",
        );
        assert_eq!(check(&wrong_key), Err(ErrorCode::InvalidToken));
        let no_exp = sign(serde_json::json!({"sub":"a","plan":"pro"}), "test-secret");
        assert_eq!(check(&no_exp), Err(ErrorCode::InvalidToken));
        let string_exp = sign(
            serde_json::json!({"sub":"a","plan":"pro","exp": "9999999999"}),
            "test-secret",
        );
        assert_eq!(check(&string_exp), Err(ErrorCode::InvalidToken));
        let too_long = sign(
            serde_json::json!({"sub":"a","plan":"pro","exp": now + 86_400}),
            "test-secret",
        );
        assert_eq!(check(&too_long), Err(ErrorCode::InvalidToken));
        let not_yet = sign(
            serde_json::json!({"sub":"a","plan":"pro","exp": now + 600, "nbf": now + 300}),
            "test-secret",
        );
        assert_eq!(check(&not_yet), Err(ErrorCode::InvalidToken));
        let mut critical = Header::new(Algorithm::HS256);
        critical.crit = Some(vec!["http://example.com/must-understand".into()]);
        let crit = jsonwebtoken::encode(
            &critical,
            &serde_json::json!({"sub":"a","plan":"pro","exp": now + 60}),
            &EncodingKey::from_secret(b"test-secret"),
        )
        .unwrap();
        assert_eq!(check(&crit), Err(ErrorCode::InvalidToken));
        critical.crit = Some(Vec::new());
        let empty_crit = jsonwebtoken::encode(
            &critical,
            &serde_json::json!({"sub":"a","plan":"pro","exp": now + 60}),
            &EncodingKey::from_secret(b"test-secret"),
        )
        .unwrap();
        assert_eq!(check(&empty_crit), Err(ErrorCode::InvalidToken));
        let no_plan = sign(
            serde_json::json!({"sub":"a","exp": now + 60}),
            "test-secret",
        );
        assert_eq!(check(&no_plan), Err(ErrorCode::InvalidToken));
        assert_eq!(check("not.a.jwt"), Err(ErrorCode::InvalidToken));
        let huge = "a".repeat(9000);
        assert_eq!(check(&huge), Err(ErrorCode::InvalidToken));
    }

    /// An RS256 / ES256 token signed with a fixture key, with `kid` in its header.
    fn sign_with_fixture(algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
        let key = match algorithm {
            Algorithm::RS256 => {
                EncodingKey::from_rsa_pem(&std::fs::read(format!("{dir}/rsa_private.pem")).unwrap())
            }
            _ => EncodingKey::from_ec_pem(&std::fs::read(format!("{dir}/ec_private.pem")).unwrap()),
        }
        .unwrap();
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// A verifier whose JWKS holds the RSA fixture as `rsa-1` and the EC one as `ec-1`.
    fn with_jwks(algorithms: &[&str]) -> Authenticator {
        let config = AuthConfig {
            algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
            jwks_url: "https://idp.example/jwks".into(),
            ..config()
        };
        let a = Authenticator::new(&config).unwrap();
        let jwks = a.jwks.as_ref().unwrap();
        assert_eq!(a.jwks_status(), JwksStatus::Unavailable);
        let document = serde_json::json!({"keys": [
            jwks::tests::public_jwk(Algorithm::RS256, "rsa-1"),
            jwks::tests::public_jwk(Algorithm::ES256, "ec-1"),
        ]});
        jwks.install(jwks.parse(document.to_string().as_bytes()).unwrap());
        assert_eq!(a.jwks_status(), JwksStatus::Ok);
        a
    }

    fn verify(a: &Authenticator, token: &str) -> Result<Identity, ErrorCode> {
        let header = format!("Bearer {token}");
        a.authenticate(&authorization(&header)).map_err(|e| e.code)
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid_and_algorithm() {
        let claims = serde_json::json!({"sub": "ann", "plan": "pro", "exp": unix_now() + 60});
        let a = with_jwks(&["RS256", "ES256", "HS256"]);
        let ann = Ok(Identity {
            user_id: "ann".into(),
            plan: "pro".into(),
            session_id: None,
            max_message_chars: None,
        });
        let rsa = sign_with_fixture(Algorithm::RS256, Some("rsa-1"), &claims);
        assert_eq!(verify(&a, &rsa), ann);
        let ec = sign_with_fixture(Algorithm::ES256, Some("ec-1"), &claims);
        assert_eq!(verify(&a, &ec), ann);
        assert!(!a.jwks.as_ref().unwrap().refresh_wanted());
        // An RS256 token naming the EC key's id.
        let crossed = sign_with_fixture(Algorithm::RS256, Some("ec-1"), &claims);
        assert_eq!(verify(&a, &crossed), Err(ErrorCode::InvalidToken));
        assert!(!a.jwks.as_ref().unwrap().refresh_wanted());
        // No PEM key is configured: a token without a kid has no key.
        let no_kid = sign_with_fixture(Algorithm::RS256, None, &claims);
        assert_eq!(verify(&a, &no_kid), Err(ErrorCode::InvalidToken));
        // An unknown kid is refused now and asks for a fetch.
        let unknown = sign_with_fixture(Algorithm::RS256, Some("rsa-2"), &claims);
        assert_eq!(verify(&a, &unknown), Err(ErrorCode::InvalidToken));
        assert!(a.jwks.as_ref().unwrap().refresh_wanted());
        // HS256 keeps its secret, whatever kid it names.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let hs = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret("test-secret".as_bytes()),
        )
        .unwrap();
        assert_eq!(verify(&a, &hs), ann);

        // A JWKS key whose algorithm is not accepted is ignored.
        let a = with_jwks(&["RS256"]);
        assert_eq!(verify(&a, &ec), Err(ErrorCode::InvalidToken));
        assert_eq!(verify(&a, &rsa), ann);
    }

    #[test]
    fn a_pem_key_still_verifies_tokens_without_a_kid_beside_a_jwks() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
        let a = Authenticator::new(&AuthConfig {
            algorithms: vec!["RS256".into()],
            public_key_path: format!("{dir}/rsa_public.pem"),
            jwks_url: "https://idp.example/jwks".into(),
            ..config()
        })
        .unwrap();
        assert_eq!(a.jwks_status(), JwksStatus::Unavailable);
        let claims = serde_json::json!({"sub": "ann", "plan": "pro", "exp": unix_now() + 60});
        let no_kid = sign_with_fixture(Algorithm::RS256, None, &claims);
        assert!(verify(&a, &no_kid).is_ok());
        // A kid is looked up in the JWKS only (no keys loaded yet here).
        let with_kid = sign_with_fixture(Algorithm::RS256, Some("rsa-1"), &claims);
        assert_eq!(verify(&a, &with_kid), Err(ErrorCode::InvalidToken));
    }

    #[test]
    fn claims_map_to_user_and_plan() {
        let now = unix_now();
        let mapped = |default_plan: &str| {
            Authenticator::new(&AuthConfig {
                default_plan: default_plan.into(),
                ..lenient_config()
            })
            .unwrap()
        };
        let token = |claims: Value| {
            let mut claims = claims;
            claims["exp"] = (now + 60).into();
            sign(claims, "test-secret")
        };
        let identity = |user: &str, plan: &str| {
            Ok(Identity {
                user_id: user.into(),
                plan: plan.into(),
                session_id: None,
                max_message_chars: None,
            })
        };
        let strict = mapped("");
        let lenient = mapped("basic");
        let full =
            token(serde_json::json!({"sub": "u-1", "email": "ann@example.com", "tier": "pro"}));
        assert_eq!(verify(&strict, &full), identity("ann@example.com", "pro"));
        let no_sub = token(serde_json::json!({"email": "ann@example.com", "tier": "pro"}));
        assert_eq!(verify(&strict, &no_sub), identity("ann@example.com", "pro"));
        let no_tier = token(serde_json::json!({"email": "ann@example.com", "plan": "pro"}));
        assert_eq!(verify(&strict, &no_tier), Err(ErrorCode::InvalidToken));
        assert_eq!(
            verify(&lenient, &no_tier),
            identity("ann@example.com", "basic")
        );
        for bad in [
            serde_json::json!({"sub": "u-1", "tier": "pro"}),
            serde_json::json!({"email": 7, "tier": "pro"}),
            serde_json::json!({"email": "", "tier": "pro"}),
            serde_json::json!({"email": ["ann@example.com"], "tier": "pro"}),
            serde_json::json!({"email": "ann@example.com", "tier": ["pro"]}),
            serde_json::json!({"email": "ann@example.com", "tier": ""}),
        ] {
            assert_eq!(
                verify(&lenient, &token(bad.clone())),
                Err(ErrorCode::InvalidToken),
                "{bad}"
            );
        }
        let minted = mint(&lenient_config(), "bo@example.com", "enterprise", 60).unwrap();
        assert_eq!(
            verify(&lenient, &minted),
            identity("bo@example.com", "enterprise")
        );
    }

    fn lenient_config() -> AuthConfig {
        AuthConfig {
            user_claim: "email".into(),
            plan_claim: "tier".into(),
            default_plan: "basic".into(),
            ..config()
        }
    }
}
