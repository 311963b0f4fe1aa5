//! Memory of the in-memory retry cache when full: fills a `MemoryStore` of the default
//! capacity with distinct keys shaped like real ones (`m:` + a 28-character OpenID +
//! a MsgId), then prints how much the process's RSS grew.
//!
//! Usage: cargo run --release --example cache_mem [CLAIMS]

use std::sync::Arc;
use std::time::Duration;

use wechat_fcgi::core::{Answer, Via};
use wechat_fcgi::engine::store::MemoryStore;
use wechat_fcgi::engine::EngineConfig;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let capacity = EngineConfig::default().cache_entries;
    let claims: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(capacity * 2);
    let rule: Arc<str> = Arc::from("keyword");
    let before = rss_kib();
    let cache = MemoryStore::new(capacity, usize::MAX, Duration::from_secs(3600));
    let now = tokio::time::Instant::now();
    for i in 0..claims {
        let key = format!(
            "m:oFollower{i:017}:{}",
            24_000_000_000_000_000u64 + i as u64
        );
        let answer = Answer {
            reply: None,
            rule: rule.clone(),
            via: Via::Rule,
        };
        let _ = cache.put_new(&key, &answer, now);
    }
    let grew = rss_kib().saturating_sub(before);
    println!(
        "{claims} claims into a cache of {capacity}: {} entries held, RSS grew {grew} KiB ({} bytes per entry)",
        cache.len(),
        grew * 1024 / cache.len().max(1) as u64
    );
}
