//! Client identity: a bearer that is a trusted front end's service key names its end user in
//! headers ([`service_keys`]); any other bearer must be a JWT. Either way the caller's
//! [`Identity`] comes out; mints tokens for `tollgate token`. Only this module touches
//! `jsonwebtoken`.
//!
//! Rules: exactly the configured algorithms (HS256 with the secret; RS256 / ES256 with the
//! configured PEM public key); `exp` required and checked with the configured leeway; `nbf` checked when present; `iss`/`aud` checked when configured; `sub` and `plan`
//! required; tokens that live longer than `auth.max_token_lifetime_secs` and oversized tokens
//! are refused before they are trusted.

mod authorize;
pub mod service_keys;

pub use authorize::{authorize_feature, authorize_model, models_in_plan};
pub use service_keys::new_key;
use service_keys::{Named, ServiceKeys};

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
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

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    plan: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    /// A string or a list (RFC 7519); jsonwebtoken validates it against the configured audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
}

/// Verifies bearer tokens against one configuration.
pub struct Authenticator {
    /// One (algorithm, key, validation) per accepted algorithm.
    accepted: Vec<(Algorithm, DecodingKey, Validation)>,
    service_keys: ServiceKeys,
    max_lifetime_secs: u64,
    leeway_secs: u64,
    max_token_bytes: usize,
}

/// The configured key material could not be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.public_key_path: {0}")]
pub struct KeyError(String);

impl Authenticator {
    /// Builds the verifier; fails if a configured public key cannot be read or parsed.
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let mut accepted = Vec::new();
        for name in &config.algorithms {
            let (algorithm, key) = match name.as_str() {
                "HS256" => (
                    Algorithm::HS256,
                    DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
                ),
                "RS256" => (
                    Algorithm::RS256,
                    DecodingKey::from_rsa_pem(&read_pem(&config.public_key_path)?)
                        .map_err(|e| KeyError(format!("not an RSA public key: {e}")))?,
                ),
                "ES256" => (
                    Algorithm::ES256,
                    DecodingKey::from_ec_pem(&read_pem(&config.public_key_path)?)
                        .map_err(|e| KeyError(format!("not an EC public key: {e}")))?,
                ),
                other => return Err(KeyError(format!("unsupported algorithm {other}"))),
            };
            accepted.push((algorithm, key, validation(config, algorithm)));
        }
        Ok(Self {
            accepted,
            service_keys: ServiceKeys::new(&config.service_keys, config.leeway_secs),
            max_lifetime_secs: config.max_token_lifetime_secs,
            leeway_secs: config.leeway_secs,
            max_token_bytes: config.max_token_bytes,
        })
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

    /// Verifies a client JWT.
    fn verify_jwt(&self, token: &str) -> Result<Identity, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the bearer token is not valid"))?;
        let (_, key, validation) = self
            .accepted
            .iter()
            .find(|(algorithm, _, _)| *algorithm == header.alg)
            .ok_or_else(|| invalid("the bearer token's algorithm is not accepted"))?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::new(ErrorCode::TokenExpired, "the bearer token has expired")
                }
                _ => invalid("the bearer token is not valid"),
            })?
            .claims;
        self.check_lifetime(&claims)?;
        if claims.sub.is_empty() || claims.plan.is_empty() {
            return Err(invalid(
                "the bearer token needs non-empty sub and plan claims",
            ));
        }
        Ok(Identity {
            user_id: claims.sub,
            plan: claims.plan,
            session_id: None,
            max_message_chars: None,
        })
    }

    fn check_lifetime(&self, claims: &Claims) -> Result<(), ApiError> {
        let now = unix_now();
        if claims.iat.is_some_and(|iat| iat > now + self.leeway_secs) {
            return Err(invalid(
                "the bearer token claims to be issued in the future",
            ));
        }
        // A token lives from when it was issued (never later than now) until it expires.
        let issued = claims.iat.unwrap_or(now).min(now);
        let lifetime = claims.exp.saturating_sub(issued);
        if lifetime > self.max_lifetime_secs + self.leeway_secs {
            return Err(invalid(
                "the bearer token lives longer than this gateway allows",
            ));
        }
        Ok(())
    }
}

fn validation(config: &AuthConfig, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // A configured iss/aud must also be present: jsonwebtoken checks them only when present.
    let mut required = vec!["exp", "sub"];
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

fn read_pem(path: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError(format!("cannot read {path}: {e}")))
}

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

/// Signs an HS256 token for `sub` on `plan`, valid for `ttl_secs` from now.
pub fn mint(
    config: &AuthConfig,
    sub: &str,
    plan: &str,
    ttl_secs: u64,
) -> Result<String, MintError> {
    let now = unix_now();
    let claims = Claims {
        sub: sub.to_string(),
        plan: plan.to_string(),
        exp: now + ttl_secs,
        iat: Some(now),
        iss: (!config.issuer.is_empty()).then(|| config.issuer.clone()),
        aud: (!config.audience.is_empty())
            .then(|| serde_json::Value::from(config.audience.clone())),
    };
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
        let no_plan = sign(
            serde_json::json!({"sub":"a","exp": now + 60}),
            "test-secret",
        );
        assert_eq!(check(&no_plan), Err(ErrorCode::InvalidToken));
        assert_eq!(check("not.a.jwt"), Err(ErrorCode::InvalidToken));
        let huge = "a".repeat(9000);
        assert_eq!(check(&huge), Err(ErrorCode::InvalidToken));
    }
}
