//! Criterion benches for the core, in process: a plaintext text message in → reply out,
//! and the safe-mode round trip (verify + decrypt + parse + reply + encrypt + sign).
//! The reference (wechatpy doing the same work) is scripts/bench-core.sh's Python part.
#![allow(missing_docs)] // criterion_group! makes an undocumented function

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wechat_fcgi::config::Config;
use wechat_fcgi::core::crypto::{self, AesKey};
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
    Config::parse(&text).unwrap().into_responder()
}

fn message() -> String {
    wechat_fcgi::sample::text(
        "gh_0123456789ab",
        "oFollower0000000000000000001",
        1_700_000_000,
        "hi",
    )
}

/// The message sealed as WeChat sends it in safe mode.
fn encrypted(message: &str) -> wechat_fcgi::sample::SignedRequest {
    let crypto = wechat_fcgi::core::Crypto {
        key: AesKey::parse(KEY).unwrap(),
        previous_key: None,
        appid: APPID.to_owned(),
    };
    wechat_fcgi::sample::encrypted_request(
        TOKEN,
        &crypto,
        "gh_0123456789ab",
        message,
        1_700_000_000,
        "1234567890",
        &[7; 16],
    )
}

fn bench(c: &mut Criterion) {
    let plain = config("compat");
    let query = wechat_fcgi::sample::signed_query(TOKEN, 1_700_000_000, "1234567890");
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
    let sealed = encrypted(&body);
    let (enc_query, envelope) = (sealed.query, sealed.body);
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
    let sealed = encrypted(&body);
    let envelope = sealed.body;
    let sig = sealed
        .query
        .split_once("msg_signature=")
        .map(|(_, s)| s.to_owned())
        .unwrap();
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

/// What counting one request for the status page costs (`[server] status_path` set):
/// the part of a request's CPU the counters take.
fn bench_metrics(c: &mut Criterion) {
    use wechat_fcgi::metrics::METRICS;
    METRICS.enable(std::time::Duration::from_millis(4500), 1024);
    let plain = config("plain");
    let query = wechat_fcgi::sample::signed_query(TOKEN, 1_700_000_000, "1234567890");
    let body = message();
    let response = plain.handle(
        &Request {
            method: "POST",
            query: &query,
            body: body.as_bytes(),
        },
        1_700_000_001,
        &mut wechat_fcgi::engine::ThreadRng,
    );
    assert_eq!(response.status, 200);
    let latency = std::time::Duration::from_micros(900);
    c.bench_function("count one request (status page on)", |b| {
        b.iter(|| METRICS.request(black_box("default"), black_box(&response), latency))
    });
}

criterion_group!(benches, bench, bench_parts, bench_metrics);
criterion_main!(benches);
