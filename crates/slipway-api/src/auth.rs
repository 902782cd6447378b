//! Authentication: API tokens, given as `Authorization: Bearer TOKEN` (API clients) or as the
//! password of HTTP Basic auth (git). Only the SHA-256 of a token is stored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use slipway_store::User;

use crate::error::ApiError;
use crate::state::Shared;

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: 32 bytes, hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The token a request carries, if any.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// The authenticated user of a request. Rejects with 401 otherwise.
pub struct Auth(pub User);

impl FromRequestParts<Shared> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = presented_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        if token.is_empty() || token.len() > 256 {
            return Err(ApiError::unauthorized());
        }
        match state.store.user_by_token_hash(&token_hash(&token)).await? {
            Some(user) => Ok(Auth(user)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_basic_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(presented_token(&h).as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("git:s3cret");
        h.insert(
            "authorization",
            format!("Basic {basic}").parse().expect("header"),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("s3cret"));
        h.insert("authorization", "Digest x".parse().expect("header"));
        assert_eq!(presented_token(&h), None);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
