//! Message encryption: the official vector and wechatpy-made vectors (tests/data/
//! message-crypto.json), a negative table, key rotation, and the three modes.

use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
use base64::Engine;
use serde::Deserialize;
use wechat_fcgi::config::Config;
use wechat_fcgi::core::crypto::{self, AesKey, CryptoError};
use wechat_fcgi::core::message::{parse_fields, Value};
use wechat_fcgi::core::signature::sign;
use wechat_fcgi::core::{Rejection, Request, Responder, Response};

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    token: String,
    encoding_aes_key: String,
    appid: String,
    timestamp: String,
    nonce: String,
    msg_signature: String,
    encrypt: String,
    plaintext: String,
    random_prefix_hex: Option<String>,
}

fn cases() -> Vec<Case> {
    #[derive(Deserialize)]
    struct File {
        cases: Vec<Case>,
    }
    let path = format!(
        "{}/tests/data/message-crypto.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let file: File = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(file.cases.len() >= 4);
    file.cases
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap()
}

#[test]
fn every_vector_verifies_decrypts_and_re_encrypts_byte_for_byte() {
    for c in cases() {
        let key = AesKey::parse(&c.encoding_aes_key).unwrap();
        crypto::verify_msg_signature(
            c.token.as_bytes(),
            &c.timestamp,
            &c.nonce,
            &c.encrypt,
            &c.msg_signature,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let plain = crypto::decrypt(&key, &c.appid, &c.encrypt)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(String::from_utf8(plain).unwrap(), c.plaintext, "{}", c.name);
        if let Some(prefix) = &c.random_prefix_hex {
            let random: [u8; 16] = hex::decode(prefix).unwrap().try_into().unwrap();
            let again = crypto::encrypt(&key, &c.appid, c.plaintext.as_bytes(), &random);
            assert_eq!(again, c.encrypt, "{}: re-encryption differs", c.name);
        }
    }
    // The full-padding case really is aligned: 16 + 4 + len + appid is a multiple of 32.
    let c = case("full-padding-block");
    assert_eq!((20 + c.plaintext.len() + c.appid.len()) % 32, 0);
}

/// Encrypt an arbitrary (possibly malformed) frame with raw AES-256-CBC, to build
/// ciphertexts our encoder would never make.
fn raw_encrypt(encoding_aes_key: &str, frame: &[u8]) -> String {
    let key = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    )
    .decode(format!("{encoding_aes_key}="))
    .unwrap();
    let mut buf = frame.to_vec();
    let len = buf.len();
    let cipher = cbc::Encryptor::<aes::Aes256>::new(key[..32].into(), key[..16].into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
        .unwrap()
        .to_vec();
    base64::engine::general_purpose::STANDARD.encode(cipher)
}

fn frame(msg: &[u8], len_field: u32, appid: &str, pad_byte: u8, pad_len: usize) -> Vec<u8> {
    let mut f = vec![7u8; 16];
    f.extend_from_slice(&len_field.to_be_bytes());
    f.extend_from_slice(msg);
    f.extend_from_slice(appid.as_bytes());
    f.extend(std::iter::repeat_n(pad_byte, pad_len));
    assert_eq!(f.len() % 32, 0, "test frame must be block-aligned");
    f
}

fn pad_len(msg: &[u8], appid: &str) -> usize {
    32 - (20 + msg.len() + appid.len()) % 32
}

/// Flip one bit of the ciphertext at `at` (negative: from the end). In CBC this garbles
/// the plaintext block holding `at` and flips the same bit 16 bytes later.
fn flip_bit(encrypt: &str, at: isize) -> String {
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(encrypt)
        .unwrap();
    let at = if at < 0 { raw.len() as isize + at } else { at } as usize;
    raw[at] ^= 0x01;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn truncate(encrypt: &str, by: usize) -> String {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encrypt)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(&raw[..raw.len() - by])
}

#[test]
fn negative_table() {
    let c = case("text-emoji");
    let key = AesKey::parse(&c.encoding_aes_key).unwrap();
    let msg = c.plaintext.as_bytes();
    let p = pad_len(msg, &c.appid);
    let other_key = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq";
    let rows: Vec<(&str, String, CryptoError)> = vec![
        (
            "flipped bit in the last block",
            flip_bit(&c.encrypt, -1),
            CryptoError::BadPadding,
        ),
        // Flips the third byte of the trailing AppID (and garbles message bytes before it).
        (
            "flipped bit reaching the appid",
            flip_bit(&c.encrypt, (20 + msg.len() + 2) as isize - 16),
            CryptoError::AppIdMismatch,
        ),
        // Garbles only the random prefix and flips the length field's high byte (+2^24).
        (
            "flipped bit reaching the length",
            flip_bit(&c.encrypt, 0),
            CryptoError::BadLength,
        ),
        // Garbles the length field itself.
        (
            "flipped bit in the length block",
            flip_bit(&c.encrypt, 16),
            CryptoError::BadLength,
        ),
        (
            "truncated by one AES block",
            truncate(&c.encrypt, 16),
            CryptoError::BadPadding,
        ),
        (
            "truncated mid-block",
            truncate(&c.encrypt, 5),
            CryptoError::BadCiphertext,
        ),
        (
            "wrong key",
            crypto::encrypt(&AesKey::parse(other_key).unwrap(), &c.appid, msg, &[1; 16]),
            CryptoError::BadPadding,
        ),
        (
            "wrong appid",
            crypto::encrypt(&key, "wx9999999999999999", msg, &[1; 16]),
            CryptoError::AppIdMismatch,
        ),
        (
            "padding byte 0",
            raw_encrypt(
                &c.encoding_aes_key,
                &frame(msg, msg.len() as u32, &c.appid, 0, p),
            ),
            CryptoError::BadPadding,
        ),
        (
            "padding byte 33",
            raw_encrypt(
                &c.encoding_aes_key,
                &frame(msg, msg.len() as u32, &c.appid, 33, p + 32),
            ),
            CryptoError::BadPadding,
        ),
        (
            "padding bytes disagree",
            {
                let mut f = frame(msg, msg.len() as u32, &c.appid, p as u8, p);
                let n = f.len();
                if p > 1 {
                    f[n - 2] ^= 0x40;
                }
                raw_encrypt(&c.encoding_aes_key, &f)
            },
            if p > 1 {
                CryptoError::BadPadding
            } else {
                CryptoError::AppIdMismatch
            },
        ),
        (
            "length field larger than the buffer",
            raw_encrypt(
                &c.encoding_aes_key,
                &frame(msg, 100_000, &c.appid, p as u8, p),
            ),
            CryptoError::BadLength,
        ),
        (
            "length field u32::MAX",
            raw_encrypt(
                &c.encoding_aes_key,
                &frame(msg, u32::MAX, &c.appid, p as u8, p),
            ),
            CryptoError::BadLength,
        ),
        (
            "not base64",
            "this is not base64!!".to_owned(),
            CryptoError::BadBase64,
        ),
        ("empty Encrypt", String::new(), CryptoError::BadCiphertext),
    ];
    for (what, encrypt, expected) in rows {
        assert_eq!(
            crypto::decrypt(&key, &c.appid, &encrypt),
            Err(expected.clone()),
            "{what}"
        );
        // And through the responder, with a valid msg_signature so decryption is reached:
        // the log's cause says which check failed, the client sees the same answer for
        // every one (no padding oracle).
        let r = responder(&c, "safe", None);
        let resp = post_encrypted(&r, &c, &encrypt, None);
        let cause = Rejection::AfterMsgSignature(Box::new(Rejection::Crypto(expected.clone())));
        assert_eq!(
            resp.outcome,
            wechat_fcgi::core::Outcome::Rejected(cause.clone()),
            "{what}"
        );
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (400, b"encrypted message refused\n".as_slice()),
            "{what}"
        );
        assert!(cause.to_string().contains(&expected.sdk_code().to_string()));
    }
}

const RULES: &str = "[[rule]]\ntext = \"你好 👋 <b>&amp;\"\nreply = { text = \"加密的回复 ]]> ok\" }\n[[rule]]\nevent = \"subscribe\"\nkey = \"123123\"\nreply = { text = \"Welcome from scene 123123\" }\n";

fn responder(c: &Case, mode: &str, previous: Option<&str>) -> Responder {
    let mut text = format!(
        "[account]\ntoken = \"{}\"\nappid = \"{}\"\nmode = \"{mode}\"\nencoding_aes_key = \"{}\"\n",
        c.token, c.appid, c.encoding_aes_key
    );
    if let Some(p) = previous {
        text = text.replace(&c.encoding_aes_key, p);
        text.push_str(&format!(
            "previous_encoding_aes_key = \"{}\"\n",
            c.encoding_aes_key
        ));
    }
    text.push_str(RULES);
    Config::parse(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_responder()
}

/// POST an encrypted envelope with correct `signature` and `msg_signature` (unless
/// `msg_signature` is given).
fn post_encrypted(r: &Responder, c: &Case, encrypt: &str, msg_signature: Option<&str>) -> Response {
    let signature = sign(&mut [
        c.token.as_bytes(),
        c.timestamp.as_bytes(),
        c.nonce.as_bytes(),
    ]);
    let computed = sign(&mut [
        c.token.as_bytes(),
        c.timestamp.as_bytes(),
        c.nonce.as_bytes(),
        encrypt.as_bytes(),
    ]);
    let computed = String::from_utf8(computed.to_vec()).unwrap();
    let query = format!(
        "signature={}&timestamp={}&nonce={}&openid=oX&encrypt_type=aes&msg_signature={}",
        String::from_utf8_lossy(&signature),
        c.timestamp,
        c.nonce,
        msg_signature.unwrap_or(&computed)
    );
    let body = format!("<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
    r.handle(
        &Request {
            method: "POST",
            query: &query,
            body: body.as_bytes(),
        },
        1_700_000_100,
        &mut rand_core::OsRng,
    )
}

/// Open an encrypted reply as WeChat would: verify MsgSignature, decrypt with `key`.
fn open_reply(body: &[u8], token: &str, key: &str, appid: &str) -> String {
    let fields = parse_fields(body).unwrap();
    let get = |n: &str| match &fields.iter().find(|f| f.name == n).unwrap().value {
        Value::Text(t) => t.clone(),
        Value::Children(_) => panic!("{n}"),
    };
    let (encrypt, sig, ts, nonce) = (
        get("Encrypt"),
        get("MsgSignature"),
        get("TimeStamp"),
        get("Nonce"),
    );
    assert_eq!(ts, "1700000100", "TimeStamp is the clock passed in");
    crypto::verify_msg_signature(token.as_bytes(), &ts, &nonce, &encrypt, &sig)
        .expect("reply MsgSignature verifies");
    String::from_utf8(crypto::decrypt(&AesKey::parse(key).unwrap(), appid, &encrypt).unwrap())
        .unwrap()
}

#[test]
fn safe_mode_round_trip_with_the_wechatpy_vectors() {
    for (name, expected) in [
        ("text-emoji", "加密的回复 ]]]]><![CDATA[> ok"),
        ("subscribe-qrscene", "Welcome from scene 123123"),
    ] {
        let c = case(name);
        for mode in ["safe", "compat", "plain"] {
            let r = responder(&c, mode, None);
            let resp = post_encrypted(&r, &c, &c.encrypt, Some(&c.msg_signature));
            assert_eq!(resp.status, 200, "{name} {mode}: {:?}", resp.outcome);
            let inner = open_reply(&resp.body, &c.token, &c.encoding_aes_key, &c.appid);
            assert!(inner.contains(expected), "{name} {mode}: {inner}");
            assert!(inner.contains("<ToUserName><![CDATA[oUser"), "{inner}");
        }
    }
}

#[test]
fn each_reply_gets_a_fresh_random_prefix_and_nonce() {
    let c = case("text-emoji");
    let r = responder(&c, "safe", None);
    let a = post_encrypted(&r, &c, &c.encrypt, None).body;
    let b = post_encrypted(&r, &c, &c.encrypt, None).body;
    assert_ne!(a, b);
    assert_eq!(
        open_reply(&a, &c.token, &c.encoding_aes_key, &c.appid),
        open_reply(&b, &c.token, &c.encoding_aes_key, &c.appid)
    );
}

#[test]
fn bad_msg_signature_is_403() {
    let c = case("text-emoji");
    let r = responder(&c, "safe", None);
    let resp = post_encrypted(
        &r,
        &c,
        &c.encrypt,
        Some("0000000000000000000000000000000000000000"),
    );
    assert_eq!(resp.status, 403);
    assert_eq!(
        resp.outcome,
        wechat_fcgi::core::Outcome::Rejected(Rejection::Crypto(CryptoError::BadMsgSignature))
    );
    let resp = post_encrypted(&r, &c, &c.encrypt, Some(""));
    assert_eq!(resp.status, 403);
}

#[test]
fn key_rotation_accepts_the_previous_key_and_answers_with_it() {
    let c = case("text-emoji");
    let new_key = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    let r = responder(&c, "safe", Some(new_key));
    let resp = post_encrypted(&r, &c, &c.encrypt, Some(&c.msg_signature));
    assert_eq!(resp.status, 200, "{:?}", resp.outcome);
    // Answered with the key that opened the message, as the docs say.
    assert!(open_reply(&resp.body, &c.token, &c.encoding_aes_key, &c.appid).contains("加密的回复"));
    // A message under the new key works too.
    let fresh = crypto::encrypt(
        &AesKey::parse(new_key).unwrap(),
        &c.appid,
        c.plaintext.as_bytes(),
        &[9; 16],
    );
    let resp = post_encrypted(&r, &c, &fresh, None);
    assert_eq!(resp.status, 200);
    assert!(open_reply(&resp.body, &c.token, new_key, &c.appid).contains("加密的回复"));
    // Without the previous key, the old message fails.
    let c2 = Case {
        encoding_aes_key: new_key.to_owned(),
        ..c.clone()
    };
    let r = responder(&c2, "safe", None);
    assert_eq!(
        post_encrypted(&r, &c, &c.encrypt, Some(&c.msg_signature)).status,
        400
    );
}

#[test]
fn modes_table() {
    let c = case("text-emoji");
    let plain_body = wechat_fcgi::sample::text("gh", "oUser", 1, "你好 👋 <b>&amp;");
    let signed =
        wechat_fcgi::sample::signed_query(&c.token, c.timestamp.parse().unwrap(), &c.nonce);
    let plain_cfg = format!("[account]\ntoken = \"{}\"\n{RULES}", c.token);
    let plain_no_key = Config::parse(&plain_cfg).unwrap().into_responder();
    // (what, responder, encrypted?, status, outcome label)
    let rows: Vec<(&str, Responder, bool, u16, &str)> = vec![
        (
            "plain, no key, encrypted",
            plain_no_key.clone(),
            true,
            403,
            "encrypted_without_key",
        ),
        (
            "plain, no key, plaintext",
            plain_no_key,
            false,
            200,
            "reply",
        ),
        (
            "safe, plaintext",
            responder(&c, "safe", None),
            false,
            403,
            "plaintext_in_safe_mode",
        ),
        (
            "safe, encrypted",
            responder(&c, "safe", None),
            true,
            200,
            "reply",
        ),
        (
            "compat, plaintext",
            responder(&c, "compat", None),
            false,
            200,
            "reply",
        ),
        (
            "compat, encrypted",
            responder(&c, "compat", None),
            true,
            200,
            "reply",
        ),
    ];
    for (what, r, encrypted, status, label) in rows {
        let resp = if encrypted {
            post_encrypted(&r, &c, &c.encrypt, Some(&c.msg_signature))
        } else {
            r.handle(
                &Request {
                    method: "POST",
                    query: &signed,
                    body: plain_body.as_bytes(),
                },
                1_700_000_000,
                &mut rand_core::OsRng,
            )
        };
        assert_eq!(
            (resp.status, resp.outcome.label()),
            (status, label),
            "{what}"
        );
        let body = String::from_utf8_lossy(&resp.body);
        if status == 200 {
            // Answered in the form the request came in.
            assert_eq!(body.contains("<Encrypt>"), encrypted, "{what}: {body}");
        }
        // The handshake is the same in every mode.
        let hs = format!("{signed}&echostr=hs");
        let resp = r.handle(
            &Request {
                method: "GET",
                query: &hs,
                body: b"",
            },
            1_700_000_000,
            &mut rand_core::OsRng,
        );
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, b"hs".as_slice()),
            "{what}"
        );
    }
}

#[test]
fn success_stays_plain_in_safe_mode() {
    let c = case("text-emoji");
    let key = AesKey::parse(&c.encoding_aes_key).unwrap();
    let unmatched = wechat_fcgi::sample::text("gh", "oUser", 1, "no rule for this");
    let encrypt = crypto::encrypt(&key, &c.appid, unmatched.as_bytes(), &[3; 16]);
    let resp = post_encrypted(&responder(&c, "safe", None), &c, &encrypt, None);
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, b"success".as_slice())
    );
}

#[test]
fn undecodable_inner_xml_and_bad_envelopes() {
    let c = case("text-emoji");
    let key = AesKey::parse(&c.encoding_aes_key).unwrap();
    let r = responder(&c, "safe", None);
    let encrypt = crypto::encrypt(&key, &c.appid, b"<xml><Content>unclosed", &[3; 16]);
    let resp = post_encrypted(&r, &c, &encrypt, None);
    assert_eq!(resp.status, 400);
    let wechat_fcgi::core::Outcome::Rejected(Rejection::AfterMsgSignature(cause)) = resp.outcome
    else {
        panic!("{:?}", resp.outcome)
    };
    assert!(matches!(*cause, Rejection::Crypto(CryptoError::Xml(_))));
    // An envelope without <Encrypt>.
    let q = format!(
        "{}&encrypt_type=aes&msg_signature=00",
        wechat_fcgi::sample::signed_query(&c.token, 1, "2")
    );
    let resp = r.handle(
        &Request {
            method: "POST",
            query: &q,
            body: b"<xml><A>1</A></xml>",
        },
        1,
        &mut rand_core::OsRng,
    );
    assert_eq!((resp.status, resp.outcome.label()), (400, "crypto_xml"));
    // No msg_signature at all.
    let q = format!(
        "{}&encrypt_type=aes",
        wechat_fcgi::sample::signed_query(&c.token, 1, "2")
    );
    let resp = r.handle(
        &Request {
            method: "POST",
            query: &q,
            body: b"<xml><Encrypt>x</Encrypt></xml>",
        },
        1,
        &mut rand_core::OsRng,
    );
    assert_eq!((resp.status, resp.outcome.label()), (403, "missing_param"));
}

#[test]
fn crypto_config_errors_name_the_key() {
    let base = "[account]\ntoken = \"abc123\"\n";
    let rows: Vec<(String, &str)> = vec![
        (format!("{base}mode = \"safe\"\nappid = \"wx1\"\n"), "account.encoding_aes_key: required when mode = \"safe\""),
        (format!("{base}mode = \"compat\"\nappid = \"wx1\"\n"), "account.encoding_aes_key: required when mode = \"compat\""),
        (format!("{base}mode = \"safe\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n"), "account.appid: required"),
        (format!("{base}appid = \"wx1\"\nencoding_aes_key = \"short\"\n"), "account.encoding_aes_key: must be exactly 43"),
        (format!("{base}appid = \"wx1\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEF+\"\n"), "account.encoding_aes_key: must contain only"),
        (
            format!("{base}appid = \"wx1\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\nprevious_encoding_aes_key = \"x\"\n"),
            "account.previous_encoding_aes_key: must be exactly 43",
        ),
        (format!("{base}previous_encoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n"), "only goes with encoding_aes_key"),
    ];
    for (text, needle) in rows {
        let err = Config::parse(&text).expect_err(&text).to_string();
        assert!(err.contains(needle), "{text}\n=> {err}");
        assert!(
            !err.contains("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
            "a key is never printed"
        );
    }
}
