//! Client tokens: any bearer value, and any header and claims JSON signed with the right secret
//! (so parsing past the signature is reached), is accepted or refused with an error, never a
//! panic. The first byte picks the shape.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use std::sync::OnceLock;
use tollgate::auth::{Authenticator, Headers};
use tollgate::config::{AuthConfig, Secret};

const SECRET: &str = "fuzz-secret";

struct Bearer(Vec<u8>);

impl Headers for Bearer {
    fn get(&self, name: &str) -> Option<&[u8]> {
        name.eq_ignore_ascii_case("authorization")
            .then_some(self.0.as_slice())
    }
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let config = AuthConfig {
            jwt_secret: Secret::new(SECRET),
            ..AuthConfig::default()
        };
        Authenticator::new(&config).expect("HS256 authenticator")
    })
}

/// `header.claims.signature`, signed with the secret.
fn signed(header: &[u8], claims: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let value = match mode % 3 {
        // Raw bytes as the whole header value.
        0 => rest.to_vec(),
        // A bearer token of raw bytes.
        1 => [b"Bearer ".as_slice(), rest].concat(),
        // Header and claims split at the first NUL, validly signed.
        _ => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (br#"{"alg":"HS256","typ":"JWT"}"#.as_slice(), rest),
            };
            format!("Bearer {}", signed(header, claims)).into_bytes()
        }
    };
    let _ = authenticator().authenticate(&Bearer(value));
});
