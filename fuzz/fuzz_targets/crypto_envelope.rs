//! The encrypted-envelope path after the signature check: the envelope XML, base64,
//! AES-CBC, padding, length and AppID checks, the inner message. The first byte picks
//! the input's form: an envelope body, or a plaintext frame (encrypted here with the
//! right key, so the checks after decryption see arbitrary frames).
#![no_main]
use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use wechat_fcgi::core::crypto::{self, AesKey};
use wechat_fcgi::core::message::{parse_fields, Message, Value};

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = AesKey::parse(KEY).expect("valid key");
    let encrypt = if mode % 2 == 0 {
        let Ok(fields) = parse_fields(rest) else {
            return;
        };
        match fields
            .iter()
            .find(|f| f.name == "Encrypt")
            .map(|f| &f.value)
        {
            Some(Value::Text(t)) => t.to_string(),
            _ => return,
        }
    } else {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let raw = engine.decode(format!("{KEY}=")).unwrap_or_default();
        if raw.len() < 32 {
            return;
        }
        let mut frame = rest[..rest.len() - rest.len() % 16].to_vec();
        let len = frame.len();
        let Ok(cipher) = cbc::Encryptor::<aes::Aes256>::new(raw[..32].into(), raw[..16].into())
            .encrypt_padded_mut::<NoPadding>(&mut frame, len)
        else {
            return;
        };
        base64::engine::general_purpose::STANDARD.encode(cipher)
    };
    if let Ok(inner) = crypto::decrypt(&key, APPID, &encrypt) {
        let _ = Message::parse(&inner);
    }
});
