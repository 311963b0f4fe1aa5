//! What a shared store (SQLite, Redis) holds is sealed: another user of the same Redis
//! (or of the file) can neither read nor forge it.
//!
//! - Key names: the part that would name a follower, a message or a signed query is an
//!   HMAC of it (`m/live/3f9a…`), so keys tell a reader the account and the kind only.
//! - Values: AES-256-GCM with a fresh random nonce, the key's name as associated data
//!   (a value moved to another key does not open). A value that does not open
//!   (forged, altered, written under another secret) is refused and logged, never
//!   served.
//! - Query bindings: an HMAC of the body's digest (the store compares it atomically).
//!
//! The keys come from `[state] secret` when it is set, else from the account's token;
//! each account has its own.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand_core::RngCore;
use sha2::Sha256;

use crate::protocol::Digest;

type HmacSha256 = Hmac<Sha256>;

/// One account's keys for a shared store.
#[derive(Clone)]
pub struct Sealer {
    aead: Aes256Gcm,
    names: HmacSha256,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<keys hidden>)")
    }
}

/// Bytes a sealed value adds: the nonce and the tag.
pub const OVERHEAD: usize = 12 + 16;

impl Sealer {
    /// The keys of `account`, derived from `secret` (`[state] secret`, or the token).
    pub fn new(secret: &[u8], account: &str) -> Sealer {
        let derive = |purpose: &str| -> [u8; 32] {
            let mut mac =
                <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(b"wechat-fcgi state v1\0");
            mac.update(purpose.as_bytes());
            mac.update(b"\0");
            mac.update(account.as_bytes());
            mac.finalize().into_bytes().into()
        };
        let value_key = derive("values");
        let name_key = derive("names");
        Sealer {
            aead: Aes256Gcm::new(&value_key.into()),
            names: <HmacSha256 as Mac>::new_from_slice(&name_key)
                .expect("HMAC takes any key length"),
        }
    }

    /// The stored name of a logical key `KIND/ACCOUNT/REST`: `REST` replaced by its
    /// HMAC (hex, 128 bits). A key without that shape is hashed whole.
    pub fn name(&self, key: &str) -> String {
        let mut parts = key.splitn(3, '/');
        let (kind, account) = match (parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(account), Some(_)) => (kind, account),
            _ => ("x", "-"),
        };
        let mut mac = self.names.clone();
        mac.update(key.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut name = String::with_capacity(kind.len() + account.len() + 34);
        name.push_str(kind);
        name.push('/');
        name.push_str(account);
        name.push('/');
        name.push_str(&hex::encode(&digest[..16]));
        name
    }

    /// Seal `plain` for the key named `name`.
    pub fn seal(&self, name: &str, plain: &[u8], rng: &mut dyn RngCore) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: name.as_bytes(),
                },
            )
            // AES-GCM fails only past 64 GiB of plaintext.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// What [`Sealer::seal`] sealed for `name`; `None` when it does not open.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(12);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: name.as_bytes(),
                },
            )
            .ok()
    }

    /// A query binding's stored value: an HMAC of the body's digest.
    pub fn binding(&self, digest: &Digest) -> [u8; 16] {
        let mut mac = self.names.clone();
        mac.update(b"binding\0");
        mac.update(digest);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }
}

/// A stored value's version: the first 8 bytes of its SHA-1 (what the Redis scripts
/// compare, with `redis.sha1hex`).
pub fn rev_of(stored: &[u8]) -> crate::protocol::Rev {
    use sha1::Digest as _;
    let full = sha1::Sha1::digest(stored);
    let mut first = [0u8; 8];
    first.copy_from_slice(&full[..8]);
    crate::protocol::Rev(u64::from_be_bytes(first))
}

/// A version as the Redis scripts write it: 16 hex digits.
pub fn rev_hex(rev: crate::protocol::Rev) -> String {
    format!("{:016x}", rev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_with_their_keys_and_name() {
        let mut rng = rand_core::OsRng;
        let live = Sealer::new(b"token-of-live", "live");
        let test = Sealer::new(b"token-of-live", "test");
        let other = Sealer::new(b"another-secret", "live");
        let name = live.name("m/live/m:1:oF");
        let sealed = live.seal(&name, b"the answer", &mut rng);
        assert_eq!(
            live.open(&name, &sealed).as_deref(),
            Some(&b"the answer"[..])
        );
        assert_eq!(
            live.open(&live.name("m/live/m:2:oF"), &sealed),
            None,
            "moved"
        );
        assert_eq!(test.open(&name, &sealed), None, "another account");
        assert_eq!(other.open(&name, &sealed), None, "another secret");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(live.open(&name, &altered), None, "altered");
        assert_eq!(live.open(&name, b"short"), None);
        assert_ne!(
            sealed,
            live.seal(&name, b"the answer", &mut rng),
            "fresh nonce"
        );
    }

    #[test]
    fn names_hide_what_they_name() {
        let s = Sealer::new(b"t", "live");
        let name = s.name("m/live/m:24000000000000001:oFollower");
        assert!(name.starts_with("m/live/"), "{name}");
        assert_eq!(name.len(), "m/live/".len() + 32);
        assert!(!name.contains("oFollower"));
        assert_eq!(name, s.name("m/live/m:24000000000000001:oFollower"));
        assert_ne!(name, s.name("m/live/m:24000000000000002:oFollower"));
        assert_ne!(s.binding(&[1; 16]), s.binding(&[2; 16]));
    }
}
