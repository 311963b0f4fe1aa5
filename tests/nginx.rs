//! End to end through a real nginx (`fastcgi_pass`, keepalive upstream) to the real
//! binary: handshake, rules, default, unknown types, refusals.

mod common;
use common::*;

#[test]
fn nginx_end_to_end() {
    let dir = TempDir::new("nginx");
    let config = write_config(&dir, RULES);
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let q = signed(1_700_000_000, "12345");
    let text = |c: &str| wechat_fcgi::cli::sample_text("gh_acct", "oUser", 1_700_000_000, c);
    let event =
        |e: &str| wechat_fcgi::cli::sample_event("gh_acct", "oUser", 1_700_000_000, e, None);
    let unknown = std::fs::read_to_string(format!(
        "{}/tests/data/messages/unknown-type.xml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let bad = q.replace("nonce=12345", "nonce=12346");
    // (what, method, query, body, status, exact body or contained text)
    let rows: Vec<(&str, &str, String, String, u16, &str)> = vec![
        (
            "handshake",
            "GET",
            format!("{q}&echostr=e5c4o3"),
            String::new(),
            200,
            "=e5c4o3",
        ),
        (
            "handshake bad signature",
            "GET",
            format!("{bad}&echostr=e5c4o3"),
            String::new(),
            403,
            "bad signature",
        ),
        (
            "handshake no signature",
            "GET",
            "echostr=e5c4o3&timestamp=1&nonce=2".into(),
            String::new(),
            403,
            "missing",
        ),
        (
            "text rule",
            "POST",
            q.clone(),
            text("hi"),
            200,
            "<Content><![CDATA[Hello!]]></Content>",
        ),
        (
            "subscribe",
            "POST",
            q.clone(),
            event("subscribe"),
            200,
            "<Content><![CDATA[Welcome!]]></Content>",
        ),
        (
            "default",
            "POST",
            q.clone(),
            text("what?"),
            200,
            "Sorry, I did not understand.",
        ),
        ("unknown type", "POST", q.clone(), unknown, 200, "=success"),
        (
            "bad signature on POST",
            "POST",
            bad.clone(),
            text("hi"),
            403,
            "bad signature",
        ),
        (
            "malformed body",
            "POST",
            q.clone(),
            "<xml><oops>".into(),
            400,
            "malformed XML",
        ),
    ];
    for (what, method, query, body, status, expect) in rows {
        let (got_status, got_body) =
            http(port, method, &format!("/wechat?{query}"), body.as_bytes());
        let got_body = String::from_utf8_lossy(&got_body);
        assert_eq!(got_status, status, "{what}: {got_body}\n{}", server.log());
        match expect.strip_prefix('=') {
            Some(exact) => assert_eq!(got_body, exact, "{what}"),
            None => assert!(got_body.contains(expect), "{what}: {got_body}"),
        }
    }
    // Reply names are swapped and it is a complete document.
    let (_, body) = http(port, "POST", &format!("/wechat?{q}"), text("hi").as_bytes());
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with("<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_acct]]></FromUserName><CreateTime>"));
    assert!(body.ends_with("</xml>"));
    // Every request logged one line; refusals name their cause.
    let log = server.log();
    assert!(
        log.contains("outcome=reply") && log.contains("msg_type=text"),
        "{log}"
    );
    assert!(
        log.contains("cause=`signature` does not match the configured token"),
        "{log}"
    );
    assert!(log.contains("outcome=handshake"), "{log}");
    assert!(!log.contains(TOKEN), "the token is never logged");
}
