//! Memory of the in-memory store when full: opens messages in a `MemoryStore` of the
//! default capacity as requests do (a signed query bound, a rule's answer stored),
//! with keys shaped like real ones, then prints how much the process's RSS grew.
//!
//! Usage: cargo run --release --example cache_mem [CLAIMS]

use std::sync::Arc;
use wechat_fcgi::core::{Answer, Via};
use wechat_fcgi::engine::store::MemoryStore;
use wechat_fcgi::engine::EngineConfig;
use wechat_fcgi::protocol::{Late, Message, Record, State};

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
    let retention = 3_600_000;
    let cache = MemoryStore::new(capacity, usize::MAX, retention);
    for i in 0..claims {
        let key = format!(
            "m/default/m:{}:oFollower{i:017}",
            24_000_000_000_000_000u64 + i as u64
        );
        let query = format!("q/default/1764000000:{:040x}:{i}", i);
        let record = Record::Message(Message {
            first: 0,
            attempts: 1,
            state: State::Answered(Answer {
                reply: None,
                rule: rule.clone(),
                via: Via::Rule,
            }),
            late: Late::No,
            job: None,
        });
        let _ = cache.open(&query, &[0; 16], Some(&key), &record, retention, 0);
    }
    let grew = rss_kib().saturating_sub(before);
    println!(
        "{claims} messages into a store of {capacity}: {} entries held, RSS grew {grew} KiB ({} bytes per entry)",
        cache.len(),
        grew * 1024 / cache.len().max(1) as u64
    );
}
