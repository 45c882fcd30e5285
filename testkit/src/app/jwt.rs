//! Client tokens for tests: the PEM fixtures under `tests/fixtures/jwt`, signing with them (with
//! an optional `kid`) or with the harness' HS256 secret, and the wall-clock time claims use.

use super::JWT_SECRET;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// The directory of the PEM key fixtures (RSA and EC P-256, private and public).
pub const JWT_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/jwt");

/// Seconds since the epoch, for `exp`, `iat` and `nbf`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The bytes of fixture file `name`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{JWT_FIXTURES}/{name}")).unwrap()
}

/// The fixture private key of `algorithm` (RS256: the RSA key, ES256: the EC P-256 key).
pub fn fixture_key(algorithm: Algorithm) -> EncodingKey {
    match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec_private.pem")).unwrap(),
        other => panic!("no fixture for {other:?}"),
    }
}

/// `claims` signed with the fixture key of `algorithm`, naming `kid` when given.
pub fn signed(algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &fixture_key(algorithm)).unwrap()
}

/// `claims` signed HS256 with the harness' secret ([`JWT_SECRET`]).
pub fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}
