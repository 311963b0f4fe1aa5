//! Criterion benches for the core, in process: a plaintext text message in → reply out,
//! and the safe-mode round trip (verify + decrypt + parse + reply + encrypt + sign).
//! The reference (wechatpy doing the same work) is scripts/bench-core.sh's Python part.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wechat_fcgi::config::Config;
use wechat_fcgi::core::crypto::{self, AesKey};
use wechat_fcgi::core::signature::sign;
use wechat_fcgi::core::Request;

const TOKEN: &str = "4yN275N7g3cY7t2znnG7U7h4MbU7wT42";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx0123456789abcdef";

fn config(mode: &str) -> wechat_fcgi::core::Responder {
    let text = format!(
        "[account]\ntoken = \"{TOKEN}\"\nappid = \"{APPID}\"\nmode = \"{mode}\"\nencoding_aes_key = \"{KEY}\"\n\
         [[rule]]\ntext = [\"hi\", \"你好\"]\nreply = {{ text = \"Hello!\" }}\n\
         [[rule]]\nevent = \"subscribe\"\nreply = {{ text = \"Welcome!\" }}\n\
         [default]\nreply = {{ text = \"Sorry, I did not understand.\" }}\n"
    );
    Config::parse(&text).unwrap().responder
}

fn message() -> String {
    wechat_fcgi::cli::sample_text(
        "gh_0123456789ab",
        "oFollower0000000000000000001",
        1_700_000_000,
        "hi",
    )
}

fn bench(c: &mut Criterion) {
    let plain = config("compat");
    let query = wechat_fcgi::cli::signed_query(TOKEN, 1_700_000_000, "1234567890");
    let body = message();
    c.bench_function("plaintext message -> reply", |b| {
        b.iter(|| {
            let r = plain.handle(
                &Request {
                    method: "POST",
                    query: black_box(&query),
                    body: black_box(body.as_bytes()),
                },
                1_700_000_001,
                &mut wechat_fcgi::engine::ThreadRng,
            );
            assert_eq!(r.status, 200);
            r
        })
    });

    let safe = config("safe");
    let encrypt = crypto::encrypt(
        &AesKey::parse(KEY).unwrap(),
        APPID,
        body.as_bytes(),
        &[7; 16],
    );
    let msg_signature = sign(&mut [
        TOKEN.as_bytes(),
        b"1700000000",
        b"1234567890",
        encrypt.as_bytes(),
    ]);
    let enc_query = format!(
        "{query}&encrypt_type=aes&msg_signature={}",
        String::from_utf8_lossy(&msg_signature)
    );
    let envelope = format!("<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
    c.bench_function("safe-mode round trip", |b| {
        b.iter(|| {
            let r = safe.handle(
                &Request {
                    method: "POST",
                    query: black_box(&enc_query),
                    body: black_box(envelope.as_bytes()),
                },
                1_700_000_001,
                &mut wechat_fcgi::engine::ThreadRng,
            );
            assert_eq!(r.status, 200);
            r
        })
    });
}

/// The same work as wechatpy's `parse_message` (XML to a typed message) and
/// `WeChatCrypto.decrypt_message` (envelope XML, msg_signature check, base64, AES,
/// padding/length/AppID checks), for a like-for-like comparison.
fn bench_parts(c: &mut Criterion) {
    let body = message();
    c.bench_function("parse only (wechatpy parse_message)", |b| {
        b.iter(|| {
            let m = wechat_fcgi::core::message::Message::parse(black_box(body.as_bytes())).unwrap();
            assert_eq!(m.msg_type, "text");
        })
    });
    let key = AesKey::parse(KEY).unwrap();
    let encrypt = crypto::encrypt(&key, APPID, body.as_bytes(), &[7; 16]);
    let sig = sign(&mut [
        TOKEN.as_bytes(),
        b"1700000000",
        b"1234567890",
        encrypt.as_bytes(),
    ]);
    let sig = String::from_utf8_lossy(&sig).into_owned();
    let envelope = format!("<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>");
    c.bench_function("decrypt only (wechatpy decrypt_message)", |b| {
        b.iter(|| {
            let fields =
                wechat_fcgi::core::message::parse_fields(black_box(envelope.as_bytes())).unwrap();
            let Some(wechat_fcgi::core::message::Value::Text(e)) = fields
                .iter()
                .find(|f| f.name == "Encrypt")
                .map(|f| &f.value)
            else {
                panic!("no Encrypt")
            };
            crypto::verify_msg_signature(TOKEN.as_bytes(), "1700000000", "1234567890", e, &sig)
                .unwrap();
            crypto::decrypt(&key, APPID, e).unwrap()
        })
    });
}

criterion_group!(benches, bench, bench_parts);
criterion_main!(benches);
