//! Several Official Accounts in one process (`[[account]]`), behind one nginx: each at
//! its own path with its own token, mode, keys and rules; a request signed for one is
//! refused at the other's path; an unknown path is 404; SIGHUP reloads all of them at
//! once, and a broken one keeps the old config of all.

mod common;
use common::*;

use wechat_fcgi::core::crypto::{self, AesKey};

const LIVE_TOKEN: &str = "liveToken1";
const TEST_TOKEN: &str = "testToken2";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx0123456789abcdef";

fn config(live_reply: &str, test_reply: &str, test_mode: &str) -> String {
    format!(
        r#"[server]
status_path = "/wechat-status"
[archive]
to = "jsonl:archive.jsonl"

[[account]]
name = "live"
path = "/wechat"
token = "{LIVE_TOKEN}"
rules = "live-rules.toml"

[[account]]
name = "test"
path = "/wechat-test"
token = "{TEST_TOKEN}"
mode = "{test_mode}"
appid = "{APPID}"
encoding_aes_key = "{KEY}"
[[account.rule]]
text = "hi"
reply = {{ text = "{test_reply}" }}
[account.late]
mode = "off"
"#
    ) + &format!("# live: {live_reply}\n")
}

fn write(dir: &TempDir, live_reply: &str, test_reply: &str, test_mode: &str) -> std::path::PathBuf {
    std::fs::write(
        dir.path("live-rules.toml"),
        format!(
            "[[rule]]\ntext = \"hi\"\nreply = {{ text = \"{live_reply}\" }}\n\
             [default]\nreply = {{ text = \"live default\" }}\n"
        ),
    )
    .unwrap();
    let path = dir.path("wechat-fcgi.toml");
    std::fs::write(&path, config(live_reply, test_reply, test_mode)).unwrap();
    path
}

fn plain(port: u16, path: &str, token: &str, msg_id: u64) -> (u16, String) {
    let body = wechat_fcgi::sample::text_with_id("gh_live", "oF", unix_now(), "hi", msg_id);
    let query = wechat_fcgi::sample::signed_query(token, unix_now(), &format!("n{msg_id}{path}"));
    let (status, reply) = http(port, "POST", &format!("{path}?{query}"), body.as_bytes());
    (status, String::from_utf8_lossy(&reply).into_owned())
}

/// A safe-mode message to the test account; returns the status and the decrypted reply.
fn sealed(port: u16, path: &str, token: &str, msg_id: u64) -> (u16, String) {
    let key = AesKey::parse(KEY).unwrap();
    let crypto = wechat_fcgi::core::Crypto {
        key: key.clone(),
        previous_key: None,
        appid: APPID.to_owned(),
    };
    let inner = wechat_fcgi::sample::text_with_id("gh_test", "oF", unix_now(), "hi", msg_id);
    let request = wechat_fcgi::sample::encrypted_request(
        token,
        &crypto,
        "gh_test",
        &inner,
        unix_now(),
        &format!("s{msg_id}"),
        &[7; 16],
    );
    let (status, reply) = http(
        port,
        "POST",
        &format!("{path}?{}", request.query),
        request.body.as_bytes(),
    );
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let opened = match (
        reply.find("<Encrypt><![CDATA["),
        reply.find("]]></Encrypt>"),
    ) {
        (Some(a), Some(b)) => {
            String::from_utf8(crypto::decrypt(&key, APPID, &reply[a + 18..b]).unwrap()).unwrap()
        }
        _ => reply,
    };
    (status, opened)
}

#[test]
fn two_accounts_behind_one_nginx() {
    let dir = TempDir::new("accounts");
    let path = write(&dir, "Hello from live", "Hello from test", "safe");
    let (mut server, fcgi) = start_server(&dir, &path);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());

    let (status, reply) = plain(port, "/wechat", LIVE_TOKEN, 42);
    assert_eq!(status, 200);
    assert!(reply.contains("Hello from live"), "{reply}");
    // The same MsgId at the other account is its own message, not a retry.
    let (status, reply) = sealed(port, "/wechat-test", TEST_TOKEN, 42);
    assert_eq!(status, 200);
    assert!(reply.contains("Hello from test"), "{reply}");
    // Signed for one account, sent to the other: refused.
    assert_eq!(plain(port, "/wechat-test", LIVE_TOKEN, 43).0, 403);
    assert_eq!(sealed(port, "/wechat", TEST_TOKEN, 44).0, 403);
    // The test account is safe mode: a plaintext message is refused there.
    assert_eq!(plain(port, "/wechat-test", TEST_TOKEN, 45).0, 403);
    // A path no account has.
    let (status, reply) = plain(port, "/wechat-nope", LIVE_TOKEN, 46);
    assert_eq!((status, reply.as_str()), (404, "no account at this path\n"));
    wait_for_log(&server, "no_account");

    // Metrics and the archive carry the account's name.
    let (_, status_page) = http(port, "GET", "/wechat-status?format=prometheus", b"");
    let text = String::from_utf8_lossy(&status_page);
    assert!(
        text.contains(r#"wechat_fcgi_requests_total{account="live",status="200",outcome="reply",msg_type="text"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wechat_fcgi_requests_total{account="test",status="200",outcome="reply",msg_type="text"} 1"#),
        "{text}"
    );
    let archive = std::fs::read_to_string(dir.path("archive.jsonl")).unwrap();
    assert!(archive.contains(r#""account_name":"live""#), "{archive}");
    assert!(archive.contains(r#""account_name":"test""#), "{archive}");

    // SIGHUP with one account broken: neither changes.
    write(&dir, "Live again", "Test again", "secure");
    send_signal(server.child.id(), 1);
    wait_for_log(&server, "config not reloaded");
    assert!(plain(port, "/wechat", LIVE_TOKEN, 50)
        .1
        .contains("Hello from live"));
    assert!(sealed(port, "/wechat-test", TEST_TOKEN, 51)
        .1
        .contains("Hello from test"));
    // Fixed: both change at once.
    write(&dir, "Live again", "Test again", "safe");
    send_signal(server.child.id(), 1);
    wait_for_log(&server, "config reloaded");
    assert!(plain(port, "/wechat", LIVE_TOKEN, 52)
        .1
        .contains("Live again"));
    assert!(sealed(port, "/wechat-test", TEST_TOKEN, 53)
        .1
        .contains("Test again"));
    assert!(server.signal_and_wait(15).success());
}

#[test]
fn account_config_problems_name_the_account() {
    use wechat_fcgi::config::Config;
    let account = |name: &str, path: &str| {
        format!("[[account]]\nname = \"{name}\"\npath = \"{path}\"\ntoken = \"tok{name}\"\n")
    };
    let rows = [
        (
            format!("{}{}", account("a", "/x"), account("b", "/x")),
            "account[b].path: \"/x\" is another account's too",
        ),
        (
            format!("{}{}", account("a", "/x"), account("a", "/y")),
            "account[a].name: used twice",
        ),
        (
            "[[account]]\nname = \"a\"\ntoken = \"tok1\"\n".to_owned(),
            "account[a].path: required with several [[account]]s",
        ),
        (
            "[[account]]\npath = \"/a\"\ntoken = \"tok1\"\n".to_owned(),
            "account[0].name: required with several [[account]]s",
        ),
        (
            format!("{}mode = \"secure\"\n", account("a", "/x")),
            "account[a].mode: \"secure\" is not one of",
        ),
        (
            format!(
                "[[rule]]\ntext = \"x\"\nreply = {{ text = \"y\" }}\n{}",
                account("a", "/x")
            ),
            "with several [[account]]s, rules go in each account",
        ),
        (
            format!("{}rules = \"r.toml\"\n", account("a", "/x")),
            "account[a].rules: r.toml: ",
        ),
        (
            format!("{}tokn = \"x\"\n", account("a", "/x")),
            "line 5, column 1 (`tokn`): unknown field `tokn`",
        ),
        (
            format!("{}[[account.rule]]\ntext = \"x\"\n", account("a", "/x")),
            "account[a].rule[0]",
        ),
    ];
    for (text, needle) in rows {
        let err = Config::parse(&text).expect_err(&text).to_string();
        assert!(err.contains(needle), "{text}\n{err}\nexpected: {needle}");
    }
    // The single form keeps working, at any path, with top-level rules.
    let single = Config::parse(
        "[account]\ntoken = \"abc123\"\n[[rule]]\ntext = \"x\"\nreply = { text = \"y\" }\n",
    )
    .unwrap();
    assert_eq!(single.accounts.len(), 1);
    assert_eq!(single.accounts[0].name, "default");
    assert_eq!(single.accounts[0].path, None);
    assert_eq!(single.accounts[0].responder.rules.rules.len(), 1);
}

/// Two accounts, one follower's OpenID: a late answer of one waits for a pick-up at
/// that account's path only. A pick-up word sent to the other account (by the same
/// OpenID) gets that account's own answer and leaves the first one waiting; the
/// follower gets it once, at the first account's path.
#[test]
fn late_answers_and_pick_ups_are_kept_per_account() {
    let dir = TempDir::new("accounts-late");
    write_executable(
        &dir,
        "slow.sh",
        "#!/bin/sh\ncat >/dev/null\nsleep 0.6\necho \"the live answer\"\n",
    );
    let account = |name: &str, path: &str, token: &str| {
        format!(
            "[[account]]\nname = \"{name}\"\npath = \"{path}\"\ntoken = \"{token}\"\n\
             [account.late]\nmode = \"hold\"\npickup = [\"1\"]\n\
             [[account.rule]]\ntext = \"slow\"\nrun = {{ command = [\"./slow.sh\"], timeout_ms = 5000 }}\n\
             [account.default]\nreply = {{ text = \"{name} default\" }}\n"
        )
    };
    let config = dir.path("wechat-fcgi.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nreply_budget_ms = 100\n{}{}",
            account("live", "/wechat", LIVE_TOKEN),
            account("test", "/wechat-test", TEST_TOKEN)
        ),
    )
    .unwrap();
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let post = move |path: &str, token: &str, text: &str, msg_id: u64, nonce: &str| {
        let body = wechat_fcgi::sample::text_with_id("gh", "oSameOpenID", unix_now(), text, msg_id);
        let query = wechat_fcgi::sample::signed_query(token, unix_now(), nonce);
        let (status, reply) = http(port, "POST", &format!("{path}?{query}"), body.as_bytes());
        assert_eq!(status, 200);
        String::from_utf8_lossy(&reply).into_owned()
    };
    // WeChat's three attempts at a slow message to live (signed anew each time): the
    // last one gets `pending`, the answer waits for a pick-up.
    let attempts: Vec<_> = (0..3)
        .map(|n| {
            let handle = std::thread::spawn(move || {
                post("/wechat", LIVE_TOKEN, "slow", 77, &format!("a{n}"))
            });
            std::thread::sleep(std::time::Duration::from_millis(40));
            handle
        })
        .collect();
    let replies: Vec<String> = attempts.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        replies[2].contains("Send 1 to get the answer"),
        "{replies:?}"
    );
    wait_for_log(&server, "program answered");
    // The same OpenID sends `1` to the test account: its own default, nothing of live's.
    let other = post("/wechat-test", TEST_TOKEN, "1", 78, "t1");
    assert!(other.contains("test default"), "{other}");
    assert!(!other.contains("the live answer"), "{other}");
    // ... and at live's path, the answer, once.
    let picked = post("/wechat", LIVE_TOKEN, "1", 79, "l1");
    assert!(picked.contains("the live answer"), "{picked}");
    let again = post("/wechat", LIVE_TOKEN, "1", 80, "l2");
    assert!(again.contains("live default"), "{again}");
}
