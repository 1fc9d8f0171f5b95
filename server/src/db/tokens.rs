//! Bearer tokens and console session ids: random, and stored only as
//! SHA-256 hashes.

use sha2::{Digest, Sha256};

/// Hashes a bearer token for storage and lookup.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new user bearer token: `fs_` and 64 hex digits (256 random bits).
pub(super) fn user_token() -> String {
    format!("fs_{}", random_token())
}

pub(super) fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
