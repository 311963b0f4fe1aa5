//! Writes request bodies for scripts/bench.sh: N distinct signed text messages (distinct
//! MsgIds), one per line, plaintext or sealed for safe mode, and one signed query per
//! body (queries.txt; the server binds a signed query to the body it came with), plus
//! the first body's query alone (query.txt).
//! Usage: bench_bodies plain|safe N CONTENT_BYTES OUT_DIR

use wechat_fcgi::core::crypto::AesKey;

const TOKEN: &str = "4yN275N7g3cY7t2znnG7U7h4MbU7wT42";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx0123456789abcdef";
/// Messages signed within one second.
const PER_SECOND: u64 = 2000;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, n, size, out) = match args.as_slice() {
        [m, n, s, o] => (
            m.as_str(),
            n.parse().unwrap_or(1000),
            s.parse().unwrap_or(2),
            std::path::PathBuf::from(o),
        ),
        _ => {
            eprintln!("usage: bench_bodies plain|safe N CONTENT_BYTES OUT_DIR");
            std::process::exit(2);
        }
    };
    // The keyword rule matches "hi"; a longer Content pads it with spaces (trimmed).
    let content = format!("hi{}", " ".repeat(size.max(2) - 2));
    // Signed as WeChat signs them, with the time each is sent: the timestamps advance
    // one second every PER_SECOND messages and the last is now (the server refuses
    // timestamps outside its window; the benchmark's window is two hours).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let first = now.saturating_sub((n as u64) / PER_SECOND);
    let crypto = wechat_fcgi::core::Crypto {
        key: AesKey::parse(KEY).map_err(std::io::Error::other)?,
        previous_key: None,
        appid: APPID.to_owned(),
    };
    let mut bodies = String::new();
    // One query per body, each with its own nonce, as WeChat sends them.
    let mut queries = String::new();
    for i in 0..n {
        let ts = first + (i as u64) / PER_SECOND;
        let msg = wechat_fcgi::sample::text_with_id(
            "gh_0123456789ab",
            "oBench",
            ts,
            &content,
            10_000_000 + i as u64,
        );
        let nonce = (1_000_000_000 + i).to_string();
        if mode == "safe" {
            let mut random = [0u8; 16];
            random[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let sealed = wechat_fcgi::sample::encrypted_request(
                TOKEN,
                &crypto,
                "gh_0123456789ab",
                &msg,
                ts,
                &nonce,
                &random,
            );
            bodies.push_str(&sealed.body);
            queries.push_str(&sealed.query);
            queries.push('\n');
        } else {
            bodies.push_str(&msg);
            queries.push_str(&wechat_fcgi::sample::signed_query(TOKEN, ts, &nonce));
            queries.push('\n');
        }
        bodies.push('\n');
    }
    let query = queries.lines().next().unwrap_or_default().to_owned();
    std::fs::write(out.join("queries.txt"), &queries)?;
    std::fs::write(out.join("bodies.txt"), bodies)?;
    std::fs::write(out.join("query.txt"), query)?;
    Ok(())
}
