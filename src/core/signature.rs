//! WeChat's SHA-1 signatures over sorted strings, and their constant-time check.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// The token shared with WeChat (admin panel "Token"). Never printed: `Debug` is redacted;
/// compared in constant time (length aside, which is not secret: 3 to 32).
#[derive(Clone)]
pub struct Token(String);

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl Eq for Token {}

impl Token {
    /// Accept a token as the admin panel does: 3 to 32 ASCII letters or digits.
    pub fn parse(s: &str) -> Result<Token, &'static str> {
        if !(3..=32).contains(&s.len()) {
            return Err("must be 3 to 32 characters long (as in the admin panel)");
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("must contain only ASCII letters and digits (as in the admin panel)");
        }
        Ok(Token(s.to_owned()))
    }

    /// The token's bytes, for signing.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A signature as WeChat sends it: 40 lowercase hex digits of a SHA-1.
pub type SignatureHex = [u8; 40];

/// `hex(sha1(concat(sort(parts))))`, the rule for both `signature` (token, timestamp,
/// nonce) and `msg_signature` (the same plus the `Encrypt` text). Sorting is by bytes.
pub fn sign(parts: &mut [&[u8]]) -> SignatureHex {
    parts.sort_unstable();
    let mut sha = Sha1::new();
    for part in parts.iter() {
        sha.update(part);
    }
    let digest = sha.finalize();
    let mut out = [0u8; 40];
    // Encoding 20 bytes into a 40-byte buffer cannot fail.
    hex::encode_to_slice(digest, &mut out).expect("40 = 2 * 20");
    out
}

/// Compare a received signature with the expected one in constant time. Upper-case hex
/// is accepted; a length mismatch is not secret and fails at once.
pub fn verify(expected: &SignatureHex, received: &str) -> bool {
    let received = received.as_bytes();
    if received.len() != expected.len() {
        return false;
    }
    // OR of the XORs of every byte pair: no branch on the data, one constant-time test
    // at the end (subtle's slice `ct_eq` pays an optimisation barrier per byte).
    let diff = received
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (r, e)| acc | (r.to_ascii_lowercase() ^ e));
    bool::from(diff.ct_eq(&0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(parts: &[&str]) -> String {
        let mut parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        String::from_utf8(sign(&mut parts).to_vec()).unwrap()
    }

    #[test]
    fn sign_matches_independent_values() {
        // (token, timestamp, nonce) -> signature, computed with Python's hashlib:
        // hashlib.sha1("".join(sorted([t, ts, n])).encode()).hexdigest()
        let table: &[(&[&str], &str)] = &[
            (
                &["QDG6eK", "1409659813", "1372623149"],
                "d2157f2f9079f4d6257b45edf665c43c62e60a0a",
            ),
            (
                &["abc", "1", "2"],
                "2809f5614d4b6b0c4e1bb4c3f67ef361c7ef7281",
            ),
        ];
        for (parts, python) in table {
            assert_eq!(signed(parts), *python);
            // Order of inputs must not matter.
            let mut reversed: Vec<&str> = parts.to_vec();
            reversed.reverse();
            assert_eq!(signed(parts), signed(&reversed));
        }
    }

    #[test]
    fn official_msg_signature_vector() {
        // From the official WXBizMsgCrypt sample (tests/data/message-crypto.json).
        let encrypt = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";
        assert_eq!(
            signed(&["QDG6eK", "1409659813", "1372623149", encrypt]),
            "477715d11cdb4164915debcba66cb864d751f3e6"
        );
    }

    #[test]
    fn verify_table() {
        let expected = sign(&mut [b"tok".as_slice(), b"1", b"2"]);
        let good = String::from_utf8(expected.to_vec()).unwrap();
        let upper = good.to_ascii_uppercase();
        let mut flipped = good.clone().into_bytes();
        flipped[39] = if flipped[39] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let rows: &[(&str, bool)] = &[
            (&good, true),
            (&upper, true),
            (&flipped, false),
            (&good[..39], false),
            ("", false),
            ("zz", false),
        ];
        for (received, ok) in rows {
            assert_eq!(verify(&expected, received), *ok, "{received:?}");
        }
    }

    #[test]
    fn token_rules() {
        let rows: &[(&str, bool)] = &[
            ("abc", true),
            ("QDG6eK", true),
            ("ab", false),
            ("a b c", false),
            ("tokentokentokentokentokentokento", true),
            ("tokentokentokentokentokentokentok", false),
            ("токен", false),
        ];
        for (s, ok) in rows {
            assert_eq!(Token::parse(s).is_ok(), *ok, "{s:?}");
        }
        assert_eq!(
            format!("{:?}", Token::parse("secret").unwrap()),
            "Token(<redacted>)"
        );
    }
}
