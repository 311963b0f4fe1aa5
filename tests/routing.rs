//! Every message WeChat can send reaches a rule: messages shaped like those in other
//! SDKs' test suites and WeChat's documentation (tests/data/sdk-messages/), plain and
//! encrypted, each routed to the rule that should answer it.

use wechat_fcgi::config::Config;
use wechat_fcgi::core::message::{to_json, Message};
use wechat_fcgi::core::{Request, Responder};

const TOKEN: &str = "testtoken123";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx0123456789abcdef";
const NOW: u64 = 1_700_000_000;

const RULES: &str = r#"
[[rule]]
name = "greeting"
text = "hi"
reply = { text = "Hello!" }
[[rule]]
event = "user_get_card"
reply = { text = "card" }
[[rule]]
event = "kf_create_session"
reply = { text = "kf {from}" }
[[rule]]
event = "subscribe"
reply = { text = "welcome" }
[[rule]]
event = "pic_sysphoto"
key = "6"
reply = { text = "photo" }
[[rule]]
msg_type = "file"
reply = { text = "file" }
[[rule]]
msg_type = "DEVICE_TEXT"
reply = { text = "device" }
[[rule]]
msg_type = "event"
reply = { text = "some event" }
[default]
reply = { text = "default" }
"#;

fn sample(name: &str) -> String {
    let path = format!(
        "{}/tests/data/sdk-messages/{name}.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn responder(mode: &str) -> Responder {
    let text = format!(
        "[server]\ntimestamp_window_secs = 0\n[account]\ntoken = \"{TOKEN}\"\nappid = \"{APPID}\"\nmode = \"{mode}\"\nencoding_aes_key = \"{KEY}\"\n{RULES}"
    );
    Config::parse(&text).unwrap().into_responder()
}

/// The reply's Content, ToUserName and FromUserName.
fn reply_of(xml: &str) -> (String, String, String) {
    let fields = wechat_fcgi::core::message::parse_fields(xml.as_bytes()).unwrap();
    let m = Message::from_fields(fields).unwrap();
    (
        m.field("Content").unwrap_or("").to_owned(),
        m.to_user_name.to_string(),
        m.from_user_name.to_string(),
    )
}

#[test]
fn every_sdk_message_reaches_its_rule_plain_and_encrypted() {
    let rows = [
        ("card-user_get_card-spaced", "card"),
        ("location-xpos", "default"),
        ("file", "file"),
        ("device_text", "device"),
        ("event-capitalized", "welcome"),
        ("kf_create_session", "kf oFollower0000000000000000001"),
        ("header-spaced", "Hello!"),
        ("pic_sysphoto-one-item", "photo"),
        ("masssend-copyright", "some event"),
        ("future-type", "default"),
        ("text-stray-text", "Hello!"),
    ];
    let files = std::fs::read_dir(format!(
        "{}/tests/data/sdk-messages",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "xml")
    })
    .count();
    assert_eq!(files, rows.len(), "every sample has a row");
    let compat = responder("compat");
    let crypto = compat.account.crypto.clone().unwrap();
    for (name, want) in rows {
        let body = sample(name);
        // Plaintext.
        let query = wechat_fcgi::sample::signed_query(TOKEN, NOW, "1");
        let response = compat.handle(
            &Request {
                method: "POST",
                query: &query,
                body: body.as_bytes(),
            },
            NOW,
            &mut rand_core::OsRng,
        );
        let text = String::from_utf8_lossy(&response.body).into_owned();
        assert_eq!(response.status, 200, "{name}: {text}");
        let (content, to, from) = reply_of(&text);
        assert_eq!(content, want, "{name}: {text}");
        assert_eq!(
            to, "oFollower0000000000000000001",
            "{name}: the follower, trimmed"
        );
        assert_eq!(from, "gh_0123456789ab", "{name}: the account, trimmed");
        // The same message encrypted, as safe mode sends it.
        let sealed = wechat_fcgi::sample::encrypted_request(
            TOKEN,
            &crypto,
            "gh_0123456789ab",
            &body,
            NOW,
            "2",
            &[4; 16],
        );
        let response = responder("safe").handle(
            &Request {
                method: "POST",
                query: &sealed.query,
                body: sealed.body.as_bytes(),
            },
            NOW,
            &mut rand_core::OsRng,
        );
        assert_eq!(response.status, 200, "{name} (safe)");
        let envelope = String::from_utf8_lossy(&response.body).into_owned();
        let encrypt = envelope
            .split("<Encrypt><![CDATA[")
            .nth(1)
            .and_then(|e| e.split("]]>").next())
            .unwrap_or_else(|| panic!("{name}: {envelope}"));
        let inner = wechat_fcgi::core::crypto::decrypt(&crypto.key, APPID, encrypt).unwrap();
        assert_eq!(
            reply_of(&String::from_utf8_lossy(&inner)).0,
            want,
            "{name} (safe)"
        );
    }
}

/// Lists in WeChat's XML (`.../item`) are arrays in the JSON a program gets, even with
/// one item, so a program handles one shape.
#[test]
fn list_items_are_always_arrays_for_programs() {
    let rows = [
        (
            "pic_sysphoto-one-item",
            &["SendPicsInfo", "PicList", "item"][..],
        ),
        (
            "masssend-copyright",
            &["CopyrightCheckResult", "ResultList", "item"][..],
        ),
    ];
    for (name, path) in rows {
        let body = sample(name);
        let m = Message::parse(body.as_bytes()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&to_json(&m.fields)).unwrap();
        let mut at = &json;
        for key in path {
            at = &at[key];
        }
        let items = at.as_array().unwrap_or_else(|| panic!("{name}: {json}"));
        assert_eq!(items.len(), 1, "{name}");
        // Scalars stay strings, as sent; formatting whitespace is gone.
        assert_eq!(json["MsgType"], "event", "{name}");
    }
    let body = sample("location-xpos");
    let m = Message::parse(body.as_bytes()).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&to_json(&m.fields)).unwrap();
    assert_eq!(
        json["Location_X"], "xPos",
        "a value that is not a number stays as sent"
    );
    let body = sample("card-user_get_card-spaced");
    let m = Message::parse(body.as_bytes()).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&to_json(&m.fields)).unwrap();
    assert_eq!(json["Event"], "user_get_card");
    assert_eq!(json["UserCardCode"], "226009850808");
    assert_eq!(json["FriendUserName"], "");
}

/// The message JSON programs and the archive get is what serde_json itself writes for
/// that object (names in order, compact, its escaping), for every sample message,
/// including control characters and quotes in a value.
#[test]
fn message_json_is_canonical() {
    let mut bodies: Vec<String> = ["messages", "sdk-messages"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(format!("{}/tests/data/{d}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(bodies.len() >= 40, "{} samples", bodies.len());
    bodies.push(
        "<xml><ToUserName>gh</ToUserName><FromUserName>oF</FromUserName>\
         <CreateTime>1</CreateTime><MsgType>text</MsgType>\
         <Content><![CDATA[say \"hi\"\\ \u{1}\ttab 你好]]></Content><MsgId>9</MsgId></xml>"
            .to_owned(),
    );
    for body in bodies {
        let m = Message::parse(body.as_bytes()).unwrap();
        let written = to_json(&m.fields);
        let value: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&value).unwrap()).unwrap(),
            String::from_utf8(written).unwrap(),
            "{body}"
        );
    }
}
