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
    let q = signed("12345");
    let text = |c: &str| wechat_fcgi::sample::text("gh_acct", "oUser", 1_700_000_000, c);
    let event = |e: &str| wechat_fcgi::sample::event("gh_acct", "oUser", 1_700_000_000, e, None);
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
            signed("12345"),
            text("hi"),
            200,
            "<Content><![CDATA[Hello!]]></Content>",
        ),
        (
            "subscribe",
            "POST",
            signed("12345"),
            event("subscribe"),
            200,
            "<Content><![CDATA[Welcome!]]></Content>",
        ),
        (
            "default",
            "POST",
            signed("12345"),
            text("what?"),
            200,
            "Sorry, I did not understand.",
        ),
        (
            // [default] answers every message that is not an event, known type or not.
            "unknown type",
            "POST",
            signed("12345"),
            unknown,
            200,
            "Sorry, I did not understand.",
        ),
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
            signed("12345"),
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
    // The handshake's signed query is never accepted with a body (it was bound to
    // the handshake): a forger cannot reuse a captured URL check.
    let (status, refused) = http(port, "POST", &format!("/wechat?{q}"), text("hi").as_bytes());
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&refused));
    // Reply names are swapped and it is a complete document.
    let (_, body) = http(
        port,
        "POST",
        &format!("/wechat?{}", signed("12")),
        text("hi").as_bytes(),
    );
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with("<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_acct]]></FromUserName><CreateTime>"));
    assert!(body.ends_with("</xml>"));
    // Every request logged one line; refusals name their cause.
    let log = wait_for_log(&server, "outcome=reply");
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

/// The wechatpy-made vector `text-emoji` (tests/data/message-crypto.json).
mod vector {
    pub(crate) const TOKEN: &str = "4yN275N7g3cY7t2znnG7U7h4MbU7wT42";
    pub(crate) const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    pub(crate) const APPID: &str = "wx0123456789abcdef";
}

#[test]
fn nginx_safe_and_compat_modes() {
    use wechat_fcgi::core::crypto::{self, AesKey};
    use wechat_fcgi::core::message::{parse_fields, Value};
    let key = AesKey::parse(vector::KEY).unwrap();
    let inner = wechat_fcgi::sample::text("gh_acct", "oUser", 1_700_000_000, "hi");
    let crypto = wechat_fcgi::core::Crypto {
        key: key.clone(),
        previous_key: None,
        appid: vector::APPID.to_owned(),
    };
    let sealed = wechat_fcgi::sample::encrypted_request(
        vector::TOKEN,
        &crypto,
        "gh_acct",
        &inner,
        unix_now(),
        "31337",
        &[5; 16],
    );
    let enc_query = format!("{}&openid=oUser", sealed.query);
    let envelope = sealed.body;
    let encrypt = parse_fields(envelope.as_bytes())
        .unwrap()
        .into_iter()
        .find_map(|f| match (f.name, f.value) {
            ("Encrypt", Value::Text(t)) => Some(t.into_owned()),
            _ => None,
        })
        .unwrap();
    // Compat mode also sends the plaintext fields beside <Encrypt>.
    let compat_envelope = inner.replace(
        "</xml>",
        &format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
    );
    for (mode, body) in [("safe", &envelope), ("compat", &compat_envelope)] {
        let dir = TempDir::new(&format!("nginx-{mode}"));
        let config = dir.path("c.toml");
        std::fs::write(
            &config,
            format!(
                "[account]\ntoken = \"{}\"\nappid = \"{}\"\nmode = \"{mode}\"\nencoding_aes_key = \"{}\"\n{RULES}",
                vector::TOKEN,
                vector::APPID,
                vector::KEY
            ),
        )
        .unwrap();
        let (server, fcgi) = start_server(&dir, &config);
        let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());

        let (status, reply) = http(
            port,
            "POST",
            &format!("/wechat?{enc_query}"),
            body.as_bytes(),
        );
        assert_eq!(
            status,
            200,
            "{mode}: {}\n{}",
            String::from_utf8_lossy(&reply),
            server.log()
        );
        let fields = parse_fields(&reply).unwrap();
        let get = |n: &str| match &fields
            .iter()
            .find(|f| f.name == n)
            .unwrap_or_else(|| panic!("{n}"))
            .value
        {
            Value::Text(t) => t.clone(),
            Value::Children(_) => panic!("{n}"),
        };
        crypto::verify_msg_signature(
            vector::TOKEN.as_bytes(),
            &get("TimeStamp"),
            &get("Nonce"),
            &get("Encrypt"),
            &get("MsgSignature"),
        )
        .unwrap_or_else(|e| panic!("{mode}: reply msg_signature: {e}"));
        let opened =
            String::from_utf8(crypto::decrypt(&key, vector::APPID, &get("Encrypt")).unwrap())
                .unwrap();
        assert!(
            opened.contains("<Content><![CDATA[Hello!]]></Content>"),
            "{mode}: {opened}"
        );
        assert!(
            opened.contains("<ToUserName><![CDATA[oUser]]></ToUserName>"),
            "{opened}"
        );

        // A plaintext POST: refused in safe mode, answered in plaintext in compat mode.
        let (status, text) = http(
            port,
            "POST",
            &format!(
                "/wechat?{}&openid=oUser",
                wechat_fcgi::sample::signed_query(vector::TOKEN, unix_now(), "4711")
            ),
            inner.as_bytes(),
        );
        let text = String::from_utf8_lossy(&text);
        match mode {
            "safe" => {
                assert_eq!(status, 403, "{text}");
                assert!(text.contains("plaintext message refused in safe mode"));
            }
            _ => {
                assert_eq!(status, 200);
                assert!(
                    text.contains("<Content><![CDATA[Hello!]]></Content>")
                        && !text.contains("<Encrypt>"),
                    "{text}"
                );
            }
        }
        // A tampered msg_signature: 403, logged with the SDK code.
        let tampered = enc_query.replace("msg_signature=", "msg_signature=f");
        let (status, _) = http(
            port,
            "POST",
            &format!("/wechat?{tampered}"),
            body.as_bytes(),
        );
        assert_eq!(status, 403);
        let log = wait_for_log(&server, "WXBizMsgCrypt -40001");
        assert!(!log.contains(vector::KEY), "the key is never logged");
    }
}

#[test]
fn hostile_http_bodies_through_nginx_are_4xx_never_500() {
    let dir = TempDir::new("nginx-hostile");
    let config = write_config(&dir, &format!("[server]\nmax_body_bytes = 300000\n{RULES}"));
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let q = signed("77");
    let head = "<ToUserName>a</ToUserName><FromUserName>b</FromUserName>";
    let ok_text = |c: &str| wechat_fcgi::sample::text("gh", "oF", unix_now(), c);
    let deep = format!(
        "<xml>{}{}</xml>",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">{}]><xml>{head}<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&lol9;</Content></xml>",
        (1..10).map(|i| format!("<!ENTITY lol{i} \"{}\">", format!("&lol{};", if i == 1 { String::new() } else { (i - 1).to_string() }).repeat(10))).collect::<String>()
    );
    let mut bad_utf8 =
        format!("<xml>{head}<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>")
            .into_bytes();
    bad_utf8.extend_from_slice(b"\xff\xfe\xfd</Content></xml>");
    // (what, query, body, status, reason in the body, cause in the log)
    type Row = (
        &'static str,
        String,
        Vec<u8>,
        u16,
        &'static str,
        &'static str,
    );
    let rows: Vec<Row> = vec![
        ("body over max_body_bytes", q.clone(), vec![b'x'; 400_000], 413, "body too large", "max_body_bytes = 300000"),
        ("DOCTYPE with entities (billion laughs)", q.clone(), laughs.into_bytes(), 400, "malformed XML", "DOCTYPE is not allowed"),
        ("invalid UTF-8", q.clone(), bad_utf8, 400, "malformed XML", "invalid UTF-8"),
        ("missing MsgType", q.clone(), format!("<xml>{head}<CreateTime>1</CreateTime></xml>").into_bytes(), 400, "message field missing", "message has no <MsgType>"),
        ("10 000 nested elements", q.clone(), deep.into_bytes(), 400, "malformed XML", "nesting deeper than 16"),
        ("FromUserName with child elements", q.clone(), b"<xml><ToUserName>b</ToUserName><FromUserName><x>a</x></FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>x</Content></xml>".to_vec(), 400, "message field malformed", "<FromUserName> is malformed"),
        ("duplicate query keys", format!("{q}&nonce=1"), ok_text("hi").into_bytes(), 403, "duplicate query parameter", "appears more than once"),
        ("query without =", "signature&timestamp&nonce".to_owned(), ok_text("hi").into_bytes(), 403, "bad signature", "does not match"),
        ("empty body", q.clone(), Vec::new(), 400, "malformed XML", "no root element"),
    ];
    for (what, query, body, status, reason, cause) in rows {
        let (got, text) = http(port, "POST", &format!("/wechat?{query}"), &body);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(reason), "{what}: {text}");
        wait_for_log(&server, cause);
    }
    // A huge Content within the limit is a normal message.
    let huge = ok_text(&"长".repeat(80_000));
    let (status, text) = http(port, "POST", &format!("/wechat?{q}"), huge.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("Sorry, I did not understand."));
    assert!(!server.log().contains(" 500 ") && !server.log().contains("panicked"));
}

#[test]
fn stale_timestamps_are_refused_with_the_skew_logged() {
    let dir = TempDir::new("nginx-stale");
    let config = write_config(&dir, RULES);
    let (server, fcgi) = start_server(&dir, &config);
    let (_nginx, port) = start_nginx(&dir, &fcgi.to_string());
    let old = unix_now() - 3600;
    let q = wechat_fcgi::sample::signed_query(TOKEN, old, "5");
    let (status, text) = http(port, "GET", &format!("/wechat?{q}&echostr=e"), b"");
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("timestamp outside the allowed window"));
    let log = wait_for_log(&server, "from this server's clock");
    assert!(
        log.contains("timestamp is -3600 s from this server's clock (window 300 s)")
            || log.contains("timestamp is -3601 s"),
        "{log}"
    );
    // A replay inside the window is answered from the retry cache: same answer, no new decision.
    let body = wechat_fcgi::sample::text("gh", "oF", unix_now(), "hi");
    let q = signed("6");
    let first = http(port, "POST", &format!("/wechat?{q}"), body.as_bytes());
    let replay = http(port, "POST", &format!("/wechat?{q}"), body.as_bytes());
    let strip_time = |b: &[u8]| {
        let t = String::from_utf8_lossy(b).into_owned();
        match (t.find("<CreateTime>"), t.find("</CreateTime>")) {
            (Some(a), Some(z)) => format!("{}{}", &t[..a], &t[z..]),
            _ => t,
        }
    };
    assert_eq!(strip_time(&first.1), strip_time(&replay.1));
    wait_for_log(&server, "via=retry");
}
