//! Trusted front ends: a chat UI's backend calls with one service key and names its end user in
//! a header (or in a signed per-user JWT header). The header is trusted only because the key is:
//! a caller without a matching key never gets its headers read. Each front end's users live in
//! its own namespace, `<name>:<user>`, so one caller can never touch another caller's users or
//! a JWT user.
//!
//! Keys are kept as SHA-256 hashes and compared in constant time; a key, a user JWT or a
//! header value is never logged.

use super::Headers;
use crate::config::ServiceKeyConfig;
use crate::error::{ApiError, ErrorCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Longest end-user id accepted from a header, in bytes.
pub const MAX_USER_BYTES: usize = 256;
/// Longest session id kept from a session header, in characters.
const MAX_SESSION_CHARS: usize = 128;

/// The service keys of a gateway, ready to match.
pub(super) struct ServiceKeys {
    keys: Vec<ServiceKey>,
    /// Every configured front end's name (also those that are off): their users' namespaces.
    names: Vec<String>,
}

/// One trusted front end.
struct ServiceKey {
    name: String,
    key_sha256: [u8; 32],
    user: UserSource,
    role_header: String,
    role_plans: BTreeMap<String, String>,
    plan: String,
    session_header: String,
    max_message_chars: Option<usize>,
}

/// Where a front end names its user.
enum UserSource {
    /// A plain header, trusted because the key is.
    Header(String),
    /// A header holding an HS256 JWT whose `sub` is the user and `role` the role.
    Jwt {
        header: String,
        key: DecodingKey,
        validation: Box<Validation>,
    },
}

/// A front end's end user, as its headers name them.
pub(super) struct FrontEndUser {
    pub user_id: String,
    pub plan: String,
    pub session_id: Option<String>,
    pub max_message_chars: Option<usize>,
}

/// What a matching key's request says about its user.
pub(super) enum Named {
    User(FrontEndUser),
    /// The key's user header is absent: the front end itself calls (its plan applies).
    NoUser {
        plan: String,
        error: ApiError,
    },
}

#[derive(Deserialize)]
struct UserClaims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
}

impl ServiceKeys {
    /// Builds the matchers from validated config (a hash that is not 64 hex digits matches
    /// nothing; start-up validation refuses it before this).
    pub(super) fn new(config: &BTreeMap<String, ServiceKeyConfig>, leeway_secs: u64) -> Self {
        let keys = config
            .iter()
            .filter_map(|(name, key)| {
                if key.key_sha256.is_empty() {
                    tracing::warn!(service_key = %name, "service key is off: its key_sha256 is empty");
                    return None;
                }
                let mut hash = [0u8; 32];
                hex::decode_to_slice(key.key_sha256.to_ascii_lowercase(), &mut hash).ok()?;
                let user = if key.user_jwt_header.is_empty() {
                    UserSource::Header(key.user_header.to_ascii_lowercase())
                } else {
                    UserSource::Jwt {
                        header: key.user_jwt_header.to_ascii_lowercase(),
                        key: DecodingKey::from_secret(key.user_jwt_secret.expose().as_bytes()),
                        validation: Box::new(user_jwt_validation(key, leeway_secs)),
                    }
                };
                Some(ServiceKey {
                    name: name.clone(),
                    key_sha256: hash,
                    user,
                    role_header: key.role_header.to_ascii_lowercase(),
                    role_plans: key.role_plans.clone(),
                    plan: key.plan.clone(),
                    session_header: key.session_header.to_ascii_lowercase(),
                    max_message_chars: key.max_message_chars,
                })
            })
            .collect();
        Self {
            keys,
            names: config.keys().cloned().collect(),
        }
    }

    /// Whether `user_id` lies in a front end's namespace (`<name>:…`): no JWT may name it.
    pub(super) fn owns(&self, user_id: &str) -> bool {
        user_id
            .split_once(':')
            .is_some_and(|(prefix, _)| self.names.iter().any(|name| name == prefix))
    }

    /// The front end whose key `bearer` is, if any. Every key is compared, each in constant
    /// time, so the timing says nothing about which (or how much of a) key matched.
    fn find(&self, bearer: &str) -> Option<&ServiceKey> {
        if self.keys.is_empty() {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            let difference = key
                .key_sha256
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(key);
            }
        }
        found
    }

    /// `None` when `bearer` is no service key; else who the front end names.
    pub(super) fn identify(
        &self,
        bearer: &str,
        headers: &dyn Headers,
    ) -> Option<Result<Named, ApiError>> {
        self.find(bearer).map(|key| key.identify(headers))
    }
}

impl ServiceKey {
    fn identify(&self, headers: &dyn Headers) -> Result<Named, ApiError> {
        let (user, jwt_role) = match &self.user {
            UserSource::Header(name) => {
                let Some(value) = headers.get(name).filter(|v| !v.trim_ascii().is_empty()) else {
                    return Ok(self.no_user(ApiError::new(
                        ErrorCode::MissingUser,
                        "this service key's requests must name their end user",
                    )));
                };
                (user_value(value)?, None)
            }
            UserSource::Jwt {
                header,
                key,
                validation,
            } => {
                let Some(token) = headers.get(header).filter(|v| !v.trim_ascii().is_empty()) else {
                    return Ok(self.no_user(bad_user_jwt()));
                };
                let token = std::str::from_utf8(token)
                    .map_err(|_| bad_user_jwt())?
                    .trim();
                let header = jsonwebtoken::decode_header(token).map_err(|_| bad_user_jwt())?;
                super::refuse_critical(&header).map_err(|_| bad_user_jwt())?;
                let claims = jsonwebtoken::decode::<UserClaims>(token, key, validation)
                    .map_err(|_| bad_user_jwt())?
                    .claims;
                (user_value(claims.sub.as_bytes())?, claims.role)
            }
        };
        // With a signed user JWT the role is the token's (a plain header is not signed).
        let role = match &self.user {
            UserSource::Jwt { .. } => jwt_role,
            UserSource::Header(_) => self.header_text(headers, &self.role_header),
        };
        let plan = role
            .and_then(|role| self.role_plans.get(&role))
            .unwrap_or(&self.plan)
            .clone();
        Ok(Named::User(FrontEndUser {
            user_id: format!("{}:{user}", self.name),
            plan,
            session_id: self
                .header_text(headers, &self.session_header)
                .map(|s| s.chars().take(MAX_SESSION_CHARS).collect()),
            max_message_chars: self.max_message_chars,
        }))
    }

    fn no_user(&self, error: ApiError) -> Named {
        Named::NoUser {
            plan: self.plan.clone(),
            error,
        }
    }

    /// A configured header's text, trimmed; `None` when unset, absent, empty or not text.
    fn header_text(&self, headers: &dyn Headers, name: &str) -> Option<String> {
        if name.is_empty() {
            return None;
        }
        let value = std::str::from_utf8(headers.get(name)?).ok()?.trim();
        (!value.is_empty() && !value.chars().any(char::is_control)).then(|| value.to_string())
    }
}

/// An end-user id from a header or a JWT: text, at most [`MAX_USER_BYTES`], no control
/// characters.
pub(super) fn user_value(raw: &[u8]) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::new(ErrorCode::InvalidUser, why);
    let text = std::str::from_utf8(raw.trim_ascii())
        .map_err(|_| invalid("the end-user id is not UTF-8 text"))?;
    if text.len() > MAX_USER_BYTES {
        return Err(invalid("the end-user id is longer than 256 bytes"));
    }
    if text.is_empty() || text.chars().any(char::is_control) {
        return Err(invalid(
            "the end-user id is empty or holds control characters",
        ));
    }
    Ok(text.to_string())
}

fn bad_user_jwt() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidToken,
        "the end-user token is missing or not valid",
    )
}

/// HS256, `exp` required (with the gateway's leeway), `iss` when configured; no audience.
fn user_jwt_validation(key: &ServiceKeyConfig, leeway_secs: u64) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    if key.user_jwt_issuer.is_empty() {
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.iss = None;
    } else {
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&[key.user_jwt_issuer.as_str()]);
    }
    validation
}

/// A fresh random service key and the `key_sha256` that names it in the config.
pub fn new_key() -> (String, String) {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let key = format!(
        "tgk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, hash)
}
