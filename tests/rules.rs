//! The rule engine in the core, table-driven: matchers, templates, random picks,
//! program decisions, program output, retry keys.

use wechat_fcgi::config::Config;
use wechat_fcgi::core::message::Message;
use wechat_fcgi::core::reply::Reply;
use wechat_fcgi::core::rules::{parse_program_output, Decision, Template};
use wechat_fcgi::core::Responder;

const RULES: &str = r#"
[[rule]]
name = "exact"
text = ["Hi", "你好"]
ignore_case = true
reply = { text = "Hello {from}, this is {to}!" }
[[rule]]
name = "contains"
contains = "price"
reply = { text = "Prices: see menu" }
[[rule]]
name = "prefix"
prefix = ["echo "]
reply = { text = "You said: {content}" }
[[rule]]
name = "regex"
regex = '^weather (?P<city>\w+)(?: (\d+))?$'
ignore_case = true
reply = { text = "{city} on day {2}; all: {0}; braces {{ok}}" }
[[rule]]
name = "click"
event = "CLICK"
key = "V1001"
reply = { text = "clicked" }
[[rule]]
name = "scene"
event = "subscribe"
key = "123123"
reply = { text = "Welcome from scene {scene}" }
[[rule]]
name = "scan"
event = "scan"
reply = { text = "Scanned {scene}" }
[[rule]]
name = "follow"
event = "subscribe"
reply = { text = "Welcome!" }
[[rule]]
name = "images"
msg_type = "image"
replies = [ { text = "A" }, { text = "B" }, { text = "C" } ]
[[rule]]
name = "bot"
prefix = "bot"
run = { command = ["/bin/cat"], timeout_ms = 500 }
fallback = { text = "bot is down, {from}" }
[default]
reply = { text = "default" }
"#;

fn responder() -> Responder {
    Config::parse(&format!("[account]\ntoken = \"abc123\"\n{RULES}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .into_responder()
}

fn text(content: &str) -> String {
    wechat_fcgi::sample::text("gh_acct", "oUser", 1, content)
}

fn event(name: &str, key: Option<&str>) -> String {
    wechat_fcgi::sample::event("gh_acct", "oUser", 1, name, key)
}

/// (rule, reply text) the rules choose for a body, or ("-", "") for none.
fn decide(r: &Responder, body: &str) -> (String, String) {
    let message = Message::parse(body.as_bytes()).unwrap();
    match r.rules.decide(&message, &mut rand_core::OsRng) {
        Decision::Reply { rule, reply } => match &*reply {
            Reply::Text(t) => (rule.to_string(), t.clone()),
            other => (rule.to_string(), format!("{other:?}")),
        },
        Decision::Run { rule, fallback, .. } => (
            rule.to_string(),
            format!("run; fallback {:?}", fallback.as_deref()),
        ),
        Decision::Nothing => ("-".into(), String::new()),
    }
}

#[test]
fn rule_table() {
    let r = responder();
    let image = std::fs::read_to_string(format!(
        "{}/tests/data/messages/image.xml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let rows: Vec<(&str, String, &str, &str)> = vec![
        (
            "exact",
            text("hi"),
            "exact",
            "Hello oUser, this is gh_acct!",
        ),
        (
            "exact, case and spaces",
            text("  HI \n"),
            "exact",
            "Hello oUser, this is gh_acct!",
        ),
        (
            "exact, chinese",
            text("你好"),
            "exact",
            "Hello oUser, this is gh_acct!",
        ),
        (
            "exact is not contains",
            text("hi there"),
            "default",
            "default",
        ),
        (
            "contains",
            text("what is the price?"),
            "contains",
            "Prices: see menu",
        ),
        (
            "contains is case-sensitive by default",
            text("PRICE"),
            "default",
            "default",
        ),
        (
            "prefix",
            text("echo 你好 ]]> x"),
            "prefix",
            "You said: echo 你好 ]]> x",
        ),
        (
            "regex with captures",
            text("Weather Beijing 3"),
            "regex",
            "Beijing on day 3; all: Weather Beijing 3; braces {ok}",
        ),
        (
            "regex, optional group absent",
            text("weather Paris"),
            "regex",
            "Paris on day ; all: weather Paris; braces {ok}",
        ),
        ("regex no match", text("weather"), "default", "default"),
        (
            "click with key",
            event("CLICK", Some("V1001")),
            "click",
            "clicked",
        ),
        (
            "click other key: no default for events",
            event("CLICK", Some("V1002")),
            "-",
            "",
        ),
        (
            "subscribe via QR scene",
            event("subscribe", Some("qrscene_123123")),
            "scene",
            "Welcome from scene 123123",
        ),
        (
            "subscribe via another scene",
            event("subscribe", Some("qrscene_999")),
            "follow",
            "Welcome!",
        ),
        (
            "plain subscribe",
            event("subscribe", None),
            "follow",
            "Welcome!",
        ),
        (
            "SCAN: key is the scene, event name any case",
            event("SCAN", Some("777")),
            "scan",
            "Scanned 777",
        ),
        ("unsubscribe: nothing", event("unsubscribe", None), "-", ""),
        (
            "program rule",
            text("bot tell me a joke"),
            "bot",
            "run; fallback Some(Text(\"bot is down, oUser\"))",
        ),
    ];
    for (what, body, rule, reply) in rows {
        assert_eq!(
            decide(&r, &body),
            (rule.to_owned(), reply.to_owned()),
            "{what}"
        );
    }
    // msg_type with a random pick: always one of the set, and not always the same.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (rule, reply) = decide(&r, &image);
        assert_eq!(rule, "images");
        assert!(["A", "B", "C"].contains(&reply.as_str()), "{reply}");
        seen.insert(reply);
    }
    assert!(seen.len() > 1, "random pick always gave {seen:?}");
}

#[test]
fn program_gets_the_message_as_json_with_wechat_field_names() {
    let r = responder();
    let body = text("bot hello");
    let wechat_fcgi::core::Step::Message(p) = r.prepare(
        &wechat_fcgi::core::Request {
            method: "POST",
            query: &wechat_fcgi::sample::signed_query("abc123", 1, "2"),
            body: body.as_bytes(),
        },
        1,
        &mut rand_core::OsRng,
    ) else {
        panic!("not a message");
    };
    let json: serde_json::Value = serde_json::from_slice(&p.json.unwrap()).unwrap();
    assert_eq!(json["MsgType"], "text");
    assert_eq!(json["Content"], "bot hello");
    assert_eq!(json["FromUserName"], "oUser");
    assert_eq!(json["CreateTime"], "1");
    // Nested and repeated elements: objects and arrays.
    let pics = std::fs::read(format!(
        "{}/tests/data/messages/event-pic_photo_or_album.xml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let m = Message::parse(&pics).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&wechat_fcgi::core::message::to_json(&m.fields)).unwrap();
    assert_eq!(json["SendPicsInfo"]["Count"], "2");
    assert_eq!(
        json["SendPicsInfo"]["PicList"]["item"][1]["PicMd5Sum"],
        "0f3ac7dc4ba4d2bb0bfb3c7d2e0a9a11"
    );
}

#[test]
fn program_output_table() {
    type Row = (&'static [u8], Result<Option<Reply>, &'static str>);
    let rows: Vec<Row> = vec![
        (b"", Ok(None)),
        (b"  \n", Ok(None)),
        (b"Hello\n", Ok(Some(Reply::Text("Hello".into())))),
        (
            b"  two\nlines\n\n",
            Ok(Some(Reply::Text("  two\nlines".into()))),
        ),
        (
            br#"{"text": "from json"}"#,
            Ok(Some(Reply::Text("from json".into()))),
        ),
        (
            br#"{"image": {"media_id": "M1"}}"#,
            Ok(Some(Reply::Image {
                media_id: "M1".into(),
            })),
        ),
        (br#"{"news": []}"#, Err("no articles")),
        (br#"{"txt": "x"}"#, Err("not a reply")),
        (br#"{"text": 5}"#, Err("not a reply")),
        (b"\xff\xfe", Err("not UTF-8")),
    ];
    for (out, expected) in rows {
        match (parse_program_output(out), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{out:?}"),
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{out:?}: {e}"),
            (got, want) => panic!("{out:?}: {got:?} vs {want:?}"),
        }
    }
}

#[test]
fn template_errors() {
    let names = vec!["city".to_owned()];
    let rows: Vec<(&str, Result<bool, &str>)> = vec![
        ("no placeholders", Ok(false)),
        ("{{literal}}", Ok(false)),
        ("{from} {to} {content} {scene}", Ok(true)),
        ("{1} {city}", Ok(true)),
        ("{2}", Err("only 1 capture groups")),
        ("{nope}", Err("unknown placeholder `{nope}`")),
        ("{from", Err("unclosed")),
        ("a } b", Err("lone `}`")),
    ];
    for (t, expected) in rows {
        match (Template::parse(t, 1, &names), expected) {
            (Ok(got), Ok(has)) => assert_eq!(got.is_some(), has, "{t}"),
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{t}: {e}"),
            (got, want) => panic!("{t}: {got:?} vs {want:?}"),
        }
    }
}

#[test]
fn retry_keys() {
    let dir = format!("{}/tests/data/messages", env!("CARGO_MANIFEST_DIR"));
    let key = |name: &str| {
        let body = std::fs::read(format!("{dir}/{name}.xml")).unwrap();
        Message::parse(&body).unwrap().retry_key()
    };
    let rows = [
        ("text", "m:1234567890123456:oFollower0000000000000000001"),
        (
            "event-click",
            "e:1700000000:oFollower0000000000000000001:CLICK:V1001_TODAY_MUSIC",
        ),
        (
            "event-subscribe",
            "e:1700000000:oFollower0000000000000000001:subscribe:",
        ),
        // Its MsgID names the template send, not this push: the event key is used.
        (
            "event-TEMPLATESENDJOBFINISH",
            "e:1700000000:oFollower0000000000000000001:TEMPLATESENDJOBFINISH:",
        ),
        (
            "unknown-type",
            "u:1700000000:oFollower0000000000000000001:hologram",
        ),
    ];
    for (name, expected) in rows {
        assert_eq!(key(name), expected, "{name}");
    }
}
