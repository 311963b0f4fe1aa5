//! Runs the core's plaintext or safe-mode path N times, for instruction counting with
//! `valgrind --tool=callgrind` (stable on a noisy machine, unlike wall time).
//! Usage: cargo run --release --example core_loop -- plain|safe N

use wechat_fcgi::config::Config;
use wechat_fcgi::core::crypto::AesKey;
use wechat_fcgi::core::Request;

const TOKEN: &str = "4yN275N7g3cY7t2znnG7U7h4MbU7wT42";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx0123456789abcdef";

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "plain".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let text = format!(
        "[account]\ntoken = \"{TOKEN}\"\nappid = \"{APPID}\"\nmode = \"compat\"\nencoding_aes_key = \"{KEY}\"\n\
         [[rule]]\ntext = [\"hi\", \"你好\"]\nreply = {{ text = \"Hello!\" }}\n"
    );
    let responder = Config::parse(&text).expect("config").into_responder();
    let body = wechat_fcgi::sample::text(
        "gh_0123456789ab",
        "oFollower0000000000000000001",
        1_700_000_000,
        "hi",
    );
    let query = wechat_fcgi::sample::signed_query(TOKEN, 1_700_000_000, "1234567890");
    let (query, body) = if mode == "safe" {
        let crypto = wechat_fcgi::core::Crypto {
            key: AesKey::parse(KEY).expect("key"),
            previous_key: None,
            appid: APPID.to_owned(),
        };
        let sealed = wechat_fcgi::sample::encrypted_request(
            TOKEN,
            &crypto,
            "gh_0123456789ab",
            &body,
            1_700_000_000,
            "1234567890",
            &[7; 16],
        );
        (sealed.query, sealed.body)
    } else {
        (query, body)
    };
    let mut bytes = 0;
    for _ in 0..n {
        let r = responder.handle(
            &Request {
                method: "POST",
                query: &query,
                body: body.as_bytes(),
            },
            1_700_000_001,
            &mut wechat_fcgi::engine::ThreadRng,
        );
        bytes += r.body.len();
    }
    println!("{mode}: {n} requests, {bytes} reply bytes");
}
