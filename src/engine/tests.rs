//! The engine driving the protocol in process: answers, retries, handshakes, accounts,
//! and late answers bounded in memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::Config;
use crate::core::Outcome;

const TOKEN: &str = "testtoken123";

fn engine_from(text: &str) -> Engine {
    let config = Config::parse(text).unwrap();
    let entries = config.accounts.iter().map(|a| a.entry()).collect();
    Engine::open(entries, config.server.engine, &config.store).unwrap()
}

fn engine() -> Engine {
    engine_from(&format!(
        "[account]\ntoken = \"{TOKEN}\"\n[[rule]]\ntext = \"hi\"\nreply = {{ text = \"Hello!\" }}\n"
    ))
}

async fn post(engine: &Engine, path: &str, token: &str, body: &str, nonce: &str) -> Response {
    let query = crate::sample::signed_query(token, unix_now(), nonce);
    engine
        .answer("POST", path, &query, Ok(body.as_bytes()), Instant::now())
        .await
}

fn via(response: &Response) -> Option<Via> {
    match &response.outcome {
        Outcome::Reply { via, .. } | Outcome::Success { via, .. } => Some(*via),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_rule_answer_is_stored_at_once_and_a_retry_gets_it() {
    let engine = engine();
    let body = crate::sample::text_with_id("gh", "oF", unix_now(), "hi", 1);
    let t0 = Instant::now();
    let first = post(&engine, "/wechat", TOKEN, &body, "1").await;
    assert_eq!(via(&first), Some(Via::Rule));
    let again = post(&engine, "/wechat", TOKEN, &body, "2").await;
    assert_eq!(via(&again), Some(Via::Retry));
    assert!(String::from_utf8_lossy(&again.body).contains("Hello!"));
    assert_eq!(t0.elapsed(), Duration::ZERO, "nothing waited");
}

/// A handshake's signed query, captured, cannot be used to post a body; and a POST's
/// query cannot be replayed with another body.
#[tokio::test(start_paused = true)]
async fn signed_queries_are_bound_to_their_first_use() {
    let engine = engine();
    let query = crate::sample::signed_query(TOKEN, unix_now(), "h");
    let echo = engine
        .answer(
            "GET",
            "/wechat",
            &format!("{query}&echostr=abc"),
            Ok(b""),
            Instant::now(),
        )
        .await;
    assert_eq!(echo.body, b"abc");
    // The same handshake again (WeChat may check the URL twice): echoed again.
    let again = engine
        .answer(
            "GET",
            "/wechat",
            &format!("{query}&echostr=abc"),
            Ok(b""),
            Instant::now(),
        )
        .await;
    assert_eq!(again.body, b"abc");
    let body = crate::sample::text_with_id("gh", "oF", unix_now(), "hi", 2);
    let forged = engine
        .answer(
            "POST",
            "/wechat",
            &query,
            Ok(body.as_bytes()),
            Instant::now(),
        )
        .await;
    assert_eq!(forged.outcome, Outcome::Rejected(Rejection::QueryReused));
    let real = post(&engine, "/wechat", TOKEN, &body, "p").await;
    assert_eq!(via(&real), Some(Via::Rule));
    let other = crate::sample::text_with_id("gh", "oF", unix_now(), "hi", 3);
    let replayed = post(&engine, "/wechat", TOKEN, &other, "p").await;
    assert_eq!(replayed.outcome, Outcome::Rejected(Rejection::QueryReused));
}

/// Two accounts in one process share no key: the same follower and MsgId at each get
/// each account's own answer.
#[tokio::test(start_paused = true)]
async fn accounts_share_no_key() {
    let engine = engine_from(
        "[[account]]\nname = \"live\"\npath = \"/live\"\ntoken = \"liveToken\"\n\
         [[account.rule]]\ntext = \"hi\"\nreply = { text = \"live\" }\n\
         [[account]]\nname = \"test\"\npath = \"/test\"\ntoken = \"testToken\"\n\
         [[account.rule]]\ntext = \"hi\"\nreply = { text = \"test\" }\n",
    );
    let body = crate::sample::text_with_id("gh", "oSame", unix_now(), "hi", 9);
    let live = post(&engine, "/live", "liveToken", &body, "n").await;
    let test = post(&engine, "/test", "testToken", &body, "n").await;
    assert_eq!(via(&live), Some(Via::Rule));
    assert_eq!(via(&test), Some(Via::Rule), "not a retry of live's message");
    assert!(String::from_utf8_lossy(&test.body).contains("<![CDATA[test]]>"));
}

/// Late answers kept in memory for a pick-up count against `retry_cache_bytes`: 100
/// slow messages with 60 KB answers (6 MB) fill at most half of a 1 MiB bound; the
/// oldest are dropped first, the newest still picked up.
#[tokio::test]
async fn late_answers_in_memory_are_bounded_in_bytes() {
    let dir = std::env::temp_dir().join(format!("wechat-fcgi-late-bytes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("big.sh");
    std::fs::write(
        &program,
        "#!/bin/sh\ncat >/dev/null\nsleep 0.2\nhead -c 60000 /dev/zero | tr '\\0' x\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let text = format!(
        "[server]\nreply_budget_ms = 100\nretry_cache_bytes = 1048576\nmax_programs = 32\n\
         max_programs_per_sender = 4\n\
         [account]\ntoken = \"{TOKEN}\"\n[late]\nmode = \"hold\"\npickup = [\"1\"]\n\
         [[rule]]\ntext = \"big\"\nrun = {{ command = [\"{}\"], timeout_ms = 5000 }}\n\
         [default]\nreply = {{ text = \"nothing waits\" }}\n",
        program.display()
    );
    let engine = Arc::new(engine_from(&text));
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let follower = format!("oF{i}");
        let body = crate::sample::text_with_id("gh", &follower, unix_now(), "big", i);
        for attempt in 0..3 {
            // WeChat's three attempts, each signed anew: the last gets `pending`.
            let (engine, body) = (engine.clone(), body.clone());
            let nonce = format!("{i}-{attempt}");
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(attempt * 20)).await;
                post(&engine, "/wechat", TOKEN, &body, &nonce).await
            }));
        }
    }
    let mut pending = 0;
    for task in tasks {
        if via(&task.await.unwrap()) == Some(Via::LateHold) {
            pending += 1;
        }
    }
    assert!(pending >= 100, "every message went late: {pending}");
    engine.finish_programs().await;
    let held = engine.stores().local.long_bytes();
    assert!(
        held <= (1 << 19) + 70_000,
        "late answers held {held} bytes with retry_cache_bytes = 1 MiB"
    );
    let pick = |i: u64| {
        let engine = engine.clone();
        async move {
            let body =
                crate::sample::text_with_id("gh", &format!("oF{i}"), unix_now(), "1", 1000 + i);
            post(&engine, "/wechat", TOKEN, &body, &format!("p{i}")).await
        }
    };
    let newest = pick(99).await;
    assert_eq!(via(&newest), Some(Via::Pickup), "the newest answer is kept");
    let oldest = pick(0).await;
    assert_eq!(
        via(&oldest),
        Some(Via::Rule),
        "the oldest was dropped first"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
