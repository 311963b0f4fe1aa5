//! Core tests, table-driven: every sample message under tests/data/messages parsed to
//! its typed value, refusals, reply rendering, and the responder's decisions.

use wechat_fcgi::config::Config;
use wechat_fcgi::core::message::{Event, Kind, Message};
use wechat_fcgi::core::reply::{Article, Reply};
use wechat_fcgi::core::{Outcome, Rejection, Request, Responder};

fn sample(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/messages/{name}.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn s(x: &str) -> String {
    x.to_owned()
}

fn c(x: &'static str) -> std::borrow::Cow<'static, str> {
    std::borrow::Cow::Borrowed(x)
}

#[test]
fn every_sample_message_parses_to_its_type() {
    let md5 = |x: &'static str| vec![c(x)];
    let rows: Vec<(&str, &str, Kind)> = vec![
        (
            "text",
            "text",
            Kind::Text {
                content: c("this is a test"),
                msg_id: Some(1234567890123456),
            },
        ),
        (
            "text-tricky",
            "text",
            Kind::Text {
                content: c("  你好 👋 \u{2}ctl\u{1d} ]]> end <&> "),
                msg_id: Some(24000000000000001),
            },
        ),
        (
            "text-escaped",
            "text",
            Kind::Text {
                content: c("a <b> & 😀 你"),
                msg_id: Some(2),
            },
        ),
        (
            "image",
            "image",
            Kind::Image {
                pic_url: c("http://mmbiz.qpic.cn/pic"),
                media_id: c("media_id_img"),
                msg_id: Some(1234567890123457),
            },
        ),
        (
            "voice",
            "voice",
            Kind::Voice {
                media_id: c("media_id_voice"),
                format: c("amr"),
                recognition: Some(c("腾讯微信团队")),
                msg_id: Some(1234567890123458),
            },
        ),
        (
            "video",
            "video",
            Kind::Video {
                media_id: c("media_id_video"),
                thumb_media_id: c("thumb_video"),
                msg_id: Some(1234567890123459),
            },
        ),
        (
            "shortvideo",
            "shortvideo",
            Kind::ShortVideo {
                media_id: c("media_id_sv"),
                thumb_media_id: c("thumb_sv"),
                msg_id: Some(1234567890123460),
            },
        ),
        (
            "location",
            "location",
            Kind::Location {
                location_x: Some(23.134521),
                location_y: Some(113.358803),
                scale: Some(20.0),
                label: c("位置信息"),
                msg_id: Some(1234567890123461),
            },
        ),
        (
            "link",
            "link",
            Kind::Link {
                title: c("公众平台官网链接"),
                description: c("公众平台官网链接"),
                url: c("https://mp.weixin.qq.com/"),
                msg_id: Some(1234567890123462),
            },
        ),
        (
            "miniprogrampage",
            "miniprogrampage",
            Kind::MiniProgramPage {
                title: c("Title"),
                app_id: c("wxabcdef0123456789"),
                page_path: c("pages/index"),
                msg_id: Some(1234567890123463),
            },
        ),
        ("unknown-type", "hologram", Kind::Unknown),
        (
            "event-subscribe",
            "event:subscribe",
            Kind::Event(Event::Subscribe {
                scene: None,
                ticket: None,
            }),
        ),
        (
            "event-subscribe-qrscene",
            "event:subscribe",
            Kind::Event(Event::Subscribe {
                scene: Some(c("123123")),
                ticket: Some(c("TICKET")),
            }),
        ),
        (
            "event-unsubscribe",
            "event:unsubscribe",
            Kind::Event(Event::Unsubscribe),
        ),
        (
            "event-scan",
            "event:SCAN",
            Kind::Event(Event::Scan {
                scene: c("SCENE_VALUE"),
                ticket: Some(c("TICKET")),
            }),
        ),
        (
            "event-location",
            "event:LOCATION",
            Kind::Event(Event::Location {
                latitude: Some(23.137466),
                longitude: Some(113.352425),
                precision: Some(119.38504),
            }),
        ),
        (
            "event-click",
            "event:CLICK",
            Kind::Event(Event::Click {
                key: c("V1001_TODAY_MUSIC"),
            }),
        ),
        (
            "event-view",
            "event:VIEW",
            Kind::Event(Event::View {
                url: c("https://www.qq.com/"),
                menu_id: Some(c("1")),
            }),
        ),
        (
            "event-scancode_push",
            "event:scancode_push",
            Kind::Event(Event::ScancodePush {
                key: c("6"),
                scan_type: c("qrcode"),
                scan_result: c("1"),
            }),
        ),
        (
            "event-scancode_waitmsg",
            "event:scancode_waitmsg",
            Kind::Event(Event::ScancodeWaitmsg {
                key: c("6"),
                scan_type: c("qrcode"),
                scan_result: c("2"),
            }),
        ),
        (
            "event-pic_sysphoto",
            "event:pic_sysphoto",
            Kind::Event(Event::PicSysphoto {
                key: c("6"),
                pic_md5s: md5("1b5f7c23b5bf75682a53e7b6d163e185"),
            }),
        ),
        (
            "event-pic_photo_or_album",
            "event:pic_photo_or_album",
            Kind::Event(Event::PicPhotoOrAlbum {
                key: c("6"),
                pic_md5s: vec![
                    c("5a75aaca956d97be686719218f275c6b"),
                    c("0f3ac7dc4ba4d2bb0bfb3c7d2e0a9a11"),
                ],
            }),
        ),
        (
            "event-pic_weixin",
            "event:pic_weixin",
            Kind::Event(Event::PicWeixin {
                key: c("6"),
                pic_md5s: md5("5a75aaca956d97be686719218f275c6b"),
            }),
        ),
        (
            "event-location_select",
            "event:location_select",
            Kind::Event(Event::LocationSelect {
                key: c("6"),
                location_x: c("23"),
                location_y: c("113"),
                scale: c("15"),
                label: c(" 广州市海珠区客村艺苑路 106号"),
                poiname: c(""),
            }),
        ),
        (
            "event-view_miniprogram",
            "event:view_miniprogram",
            Kind::Event(Event::ViewMiniprogram {
                key: c("pages/index/index"),
                menu_id: Some(c("MENUID")),
            }),
        ),
        (
            "event-TEMPLATESENDJOBFINISH",
            "event:TEMPLATESENDJOBFINISH",
            Kind::Event(Event::TemplateSendJobFinish {
                msg_id: Some(200163836),
                status: c("success"),
            }),
        ),
        (
            "event-MASSSENDJOBFINISH",
            "event:MASSSENDJOBFINISH",
            Kind::Event(Event::MassSendJobFinish {
                msg_id: Some(1000001625),
                status: c("err(30003)"),
            }),
        ),
        (
            "event-PUBLISHJOBFINISH",
            "event:PUBLISHJOBFINISH",
            Kind::Event(Event::PublishJobFinish {
                publish_id: c("2247503051"),
                publish_status: Some(c("0")),
            }),
        ),
        (
            "event-unknown",
            "event:brand_new_event",
            Kind::Event(Event::Unknown {
                event: c("brand_new_event"),
            }),
        ),
    ];
    let files = std::fs::read_dir(format!(
        "{}/tests/data/messages",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .count();
    assert_eq!(files, rows.len(), "every sample file has a row");
    for (name, label, kind) in rows {
        let body = sample(name);
        let m = Message::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.kind, kind, "{name}");
        assert_eq!(m.type_label(), label, "{name}");
        assert_eq!(m.to_user_name, "gh_0123456789ab", "{name}");
        assert_eq!(m.from_user_name, "oFollower0000000000000000001", "{name}");
        assert_eq!(m.create_time, Some(1700000000), "{name}");
    }
}

#[test]
fn unknown_fields_are_kept_raw() {
    let body = sample("unknown-type");
    let m = Message::parse(&body).unwrap();
    assert_eq!(m.field("Depth"), Some("3"));
    assert!(m.fields.iter().any(|f| f.name == "Nested"));
    let body = sample("text");
    let m = Message::parse(&body).unwrap();
    assert_eq!(m.field("MsgDataId"), Some("xxxx"));
}

/// Only what a reply needs refuses a message: ToUserName, FromUserName, MsgType.
#[test]
fn only_the_fields_a_reply_needs_can_refuse_a_message() {
    let head = "<ToUserName>a</ToUserName><FromUserName>b</FromUserName>";
    let refused: Vec<(String, Rejection)> = vec![
        (format!("<xml>{head}<CreateTime>1</CreateTime></xml>"), Rejection::MissingField("MsgType")),
        ("<xml><FromUserName>b</FromUserName><MsgType>text</MsgType></xml>".to_owned(), Rejection::MissingField("ToUserName")),
        ("<xml><ToUserName>a</ToUserName><MsgType>text</MsgType></xml>".to_owned(), Rejection::MissingField("FromUserName")),
        (
            "<xml><ToUserName><x>a</x></ToUserName><FromUserName>b</FromUserName><MsgType>text</MsgType></xml>".to_owned(),
            Rejection::BadField("ToUserName"),
        ),
    ];
    for (body, expected) in refused {
        assert_eq!(Message::parse(body.as_bytes()), Err(expected), "{body}");
    }
    // Everything else that is missing or malformed stays raw, and the message is read.
    let accepted: Vec<(String, &str)> = vec![
        (format!("<xml>{head}<MsgType>text</MsgType><Content>x</Content></xml>"), "no CreateTime"),
        (format!("<xml>{head}<CreateTime>soon</CreateTime><MsgType>text</MsgType><Content>x</Content></xml>"), "CreateTime not a number"),
        (format!("<xml>{head}<CreateTime>1</CreateTime><MsgType>text</MsgType></xml>"), "no Content"),
        (format!("<xml>{head}<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>x</Content><MsgId>x1</MsgId></xml>"), "MsgId not a number"),
        (format!("<xml>{head}<CreateTime>1</CreateTime><MsgType>event</MsgType></xml>"), "no Event"),
        // WxJava's test message.
        (format!("<xml>{head}<CreateTime>1</CreateTime><MsgType>location</MsgType><Location_X>xPos</Location_X><Location_Y>yPos</Location_Y><Scale>1</Scale><Label>l</Label><MsgId>3</MsgId></xml>"), "Location_X not a number"),
        (format!("<xml>{head}<CreateTime>1</CreateTime><MsgType>event</MsgType><Event>LOCATION</Event><Latitude>north</Latitude></xml>"), "Latitude not a number"),
    ];
    for (body, what) in accepted {
        let m = Message::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(m.from_user_name, "b", "{what}");
    }
    let body = format!("<xml>{head}<CreateTime>1</CreateTime><MsgType>location</MsgType><Location_X>xPos</Location_X><Location_Y>113.5</Location_Y></xml>");
    let m = Message::parse(body.as_bytes()).unwrap();
    let Kind::Location {
        location_x,
        location_y,
        ..
    } = m.kind
    else {
        panic!("{:?}", m.kind)
    };
    assert_eq!((location_x, location_y), (None, Some(113.5)));
    assert_eq!(m.field("Location_X"), Some("xPos"), "the raw value stays");
}

#[test]
fn hostile_xml_is_refused_as_malformed() {
    let deep = format!(
        "<xml>{}{}</xml>",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml><Content>&lol2;</Content></xml>"#;
    let rows: Vec<(&str, Vec<u8>, &str)> = vec![
        ("doctype", laughs.as_bytes().to_vec(), "DOCTYPE"),
        (
            "undefined entity",
            b"<xml><Content>&lol;</Content></xml>".to_vec(),
            "undefined entity",
        ),
        ("deep nesting", deep.into_bytes(), "nesting"),
        (
            "invalid utf-8",
            b"<xml><Content>\xff\xfe</Content></xml>".to_vec(),
            "UTF-8",
        ),
        (
            "invalid utf-8 in cdata",
            b"<xml><Content><![CDATA[\xc3]]></Content></xml>".to_vec(),
            "UTF-8",
        ),
        (
            "unclosed",
            b"<xml><Content>x</Content>".to_vec(),
            "end of document",
        ),
        ("mismatched", b"<xml><a></b></xml>".to_vec(), "at byte"),
        ("crossed", b"<xml><a><b></a></b></xml>".to_vec(), "at byte"),
        (
            "root end mismatched",
            b"<xml><a/></xmm>".to_vec(),
            "at byte",
        ),
        (
            "end before start",
            b"</xml>".to_vec(),
            "does not match any open tag",
        ),
        ("empty", b"".to_vec(), "no root"),
        (
            "two roots",
            b"<xml></xml><xml></xml>".to_vec(),
            "after the root",
        ),
        ("text outside", b"hello".to_vec(), "outside"),
    ];
    for (what, body, needle) in rows {
        match Message::parse(&body) {
            Err(Rejection::MalformedXml(why)) => assert!(why.contains(needle), "{what}: {why}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn every_reply_type_renders_exactly() {
    let head = "<xml><ToUserName><![CDATA[oF]]></ToUserName><FromUserName><![CDATA[gh]]></FromUserName><CreateTime>42</CreateTime>";
    let rows: Vec<(Reply, String)> = vec![
        (
            Reply::Text(s("Hi ]]> 👋")),
            format!("{head}<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[Hi ]]]]><![CDATA[> 👋]]></Content></xml>"),
        ),
        (
            Reply::Image { media_id: s("m1") },
            format!("{head}<MsgType><![CDATA[image]]></MsgType><Image><MediaId><![CDATA[m1]]></MediaId></Image></xml>"),
        ),
        (
            Reply::Voice { media_id: s("m2") },
            format!("{head}<MsgType><![CDATA[voice]]></MsgType><Voice><MediaId><![CDATA[m2]]></MediaId></Voice></xml>"),
        ),
        (
            Reply::Video { media_id: s("m3"), title: Some(s("T")), description: None },
            format!("{head}<MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[m3]]></MediaId><Title><![CDATA[T]]></Title></Video></xml>"),
        ),
        (
            Reply::Music {
                title: Some(s("T")),
                description: Some(s("D")),
                music_url: Some(s("http://m")),
                hq_music_url: Some(s("http://hq")),
                thumb_media_id: s("th"),
            },
            format!("{head}<MsgType><![CDATA[music]]></MsgType><Music><Title><![CDATA[T]]></Title><Description><![CDATA[D]]></Description><MusicUrl><![CDATA[http://m]]></MusicUrl><HQMusicUrl><![CDATA[http://hq]]></HQMusicUrl><ThumbMediaId><![CDATA[th]]></ThumbMediaId></Music></xml>"),
        ),
        (
            Reply::News(vec![Article { title: s("A"), description: s("B"), pic_url: s("http://p"), url: s("http://u") }]),
            format!("{head}<MsgType><![CDATA[news]]></MsgType><ArticleCount>1</ArticleCount><Articles><item><Title><![CDATA[A]]></Title><Description><![CDATA[B]]></Description><PicUrl><![CDATA[http://p]]></PicUrl><Url><![CDATA[http://u]]></Url></item></Articles></xml>"),
        ),
        (
            Reply::TransferCustomerService { kf_account: None },
            format!("{head}<MsgType><![CDATA[transfer_customer_service]]></MsgType></xml>"),
        ),
        (
            Reply::TransferCustomerService { kf_account: Some(s("kf@acct")) },
            format!("{head}<MsgType><![CDATA[transfer_customer_service]]></MsgType><TransInfo><KfAccount><![CDATA[kf@acct]]></KfAccount></TransInfo></xml>"),
        ),
    ];
    for (reply, expected) in rows {
        let mut out = Vec::new();
        reply.render("oF", "gh", 42, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{reply:?}");
    }
}

const TOKEN: &str = "testtoken123";

fn responder(rules: &str) -> Responder {
    let text = format!("[account]\ntoken = \"{TOKEN}\"\n{rules}");
    Config::parse(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_responder()
}

fn query(ts: &str, nonce: &str, extra: &str) -> String {
    let mut q = wechat_fcgi::sample::signed_query(TOKEN, ts.parse().unwrap(), nonce);
    q.push_str(extra);
    q
}

const RULES: &str = r#"
[[rule]]
text = ["hi", "你好"]
reply = { text = "Hello!" }
[[rule]]
event = "subscribe"
reply = { text = "Welcome!" }
[[rule]]
event = "CLICK"
key = "V1001"
reply = { image = { media_id = "MID" } }
[default]
reply = { text = "Sorry, I did not understand." }
"#;

#[test]
fn responder_decisions() {
    let r = responder(RULES);
    let good = query("1700000000", "42", "");
    let text = |c: &str| wechat_fcgi::sample::text("gh", "oF", 1, c);
    let event = |e: &str, k: Option<&str>| wechat_fcgi::sample::event("gh", "oF", 1, e, k);
    // (method, query, body, status, body contains, outcome label)
    let rows: Vec<(&str, String, String, u16, &str, &str)> = vec![
        (
            "GET",
            query("1700000000", "42", "&echostr=abc123"),
            s(""),
            200,
            "abc123",
            "handshake",
        ),
        (
            "GET",
            format!(
                "{}&echostr=abc123",
                good.replace("signature=", "signature=0")
            ),
            s(""),
            403,
            "bad signature",
            "bad_signature",
        ),
        (
            "GET",
            query("1700000000", "43", "&echostr=abc123"),
            s(""),
            200,
            "abc123",
            "handshake",
        ),
        (
            "GET",
            format!("{}&echostr=abc123", good.replace("nonce=42", "nonce=43")),
            s(""),
            403,
            "bad signature",
            "bad_signature",
        ),
        (
            "GET",
            good.clone(),
            s(""),
            403,
            "missing query parameter",
            "missing_param",
        ),
        (
            "GET",
            s("timestamp=1&nonce=2&echostr=x"),
            s(""),
            403,
            "missing",
            "missing_param",
        ),
        (
            "GET",
            format!("{good}&echostr=x&signature=a"),
            s(""),
            403,
            "duplicate",
            "duplicate_param",
        ),
        (
            "POST",
            good.clone(),
            text("hi"),
            200,
            "<Content><![CDATA[Hello!]]></Content>",
            "reply",
        ),
        (
            "POST",
            good.clone(),
            text("  你好\n"),
            200,
            "Hello!",
            "reply",
        ),
        (
            "POST",
            good.clone(),
            text("Hi"),
            200,
            "Sorry, I did not understand.",
            "reply",
        ),
        (
            "POST",
            good.clone(),
            event("subscribe", None),
            200,
            "Welcome!",
            "reply",
        ),
        (
            "POST",
            good.clone(),
            event("CLICK", Some("V1001")),
            200,
            "<MediaId><![CDATA[MID]]></MediaId>",
            "reply",
        ),
        (
            "POST",
            good.clone(),
            event("CLICK", Some("OTHER")),
            200,
            "success",
            "success",
        ),
        (
            "POST",
            good.clone(),
            event("unsubscribe", None),
            200,
            "success",
            "success",
        ),
        (
            "POST",
            good.clone(),
            String::from_utf8(sample("unknown-type")).unwrap(),
            200,
            // [default] answers every message that is not an event, known type or not.
            "Sorry, I did not understand.",
            "reply",
        ),
        (
            "POST",
            good.replace("nonce=42", "nonce=43"),
            text("hi"),
            403,
            "bad signature",
            "bad_signature",
        ),
        (
            "POST",
            s("openid=x"),
            text("hi"),
            403,
            "missing",
            "missing_param",
        ),
        (
            "POST",
            good.clone(),
            s("<xml>"),
            400,
            "malformed XML",
            "malformed_xml",
        ),
        (
            "PUT",
            good.clone(),
            s(""),
            405,
            "method not allowed",
            "bad_method",
        ),
    ];
    for (method, q, body, status, needle, label) in rows {
        let resp = r.handle(
            &Request {
                method,
                query: &q,
                body: body.as_bytes(),
            },
            1_700_000_000,
            &mut rand_core::OsRng,
        );
        let text = String::from_utf8_lossy(&resp.body);
        assert_eq!(resp.status, status, "{method} {q} {body}: {text}");
        assert!(text.contains(needle), "{method} {q} {body}: {text}");
        assert_eq!(resp.outcome.label(), label, "{method} {q} {body}");
        if status != 200 {
            assert!(!text.contains("abc123"), "a refusal never echoes: {text}");
        }
    }
}

#[test]
fn reply_swaps_names_and_uses_the_clock_passed_in() {
    let r = responder(RULES);
    let body = wechat_fcgi::sample::text("gh_acct", "oUser", 1, "hi");
    let resp = r.handle(
        &Request {
            method: "POST",
            query: &query("1234567", "6", ""),
            body: body.as_bytes(),
        },
        1_234_567,
        &mut rand_core::OsRng,
    );
    assert_eq!(
        String::from_utf8(resp.body).unwrap(),
        "<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_acct]]></FromUserName><CreateTime>1234567</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[Hello!]]></Content></xml>"
    );
    assert_eq!(
        resp.outcome,
        Outcome::Reply {
            msg_type: "text".into(),
            rule: "rule[0]".into(),
            reply_type: "text",
            via: wechat_fcgi::core::Via::Rule,
        }
    );
}

#[test]
fn no_default_means_success() {
    let r = responder("[[rule]]\ntext = \"hi\"\nreply = { text = \"x\" }\n");
    let body = wechat_fcgi::sample::text("gh", "oF", 1, "other");
    let resp = r.handle(
        &Request {
            method: "POST",
            query: &query("1", "2", ""),
            body: body.as_bytes(),
        },
        1,
        &mut rand_core::OsRng,
    );
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, b"success".as_slice())
    );
}

#[test]
fn timestamp_window() {
    let now = 1_700_000_000u64;
    let window = |w: u64| {
        let mut r = responder(RULES);
        r.timestamp_window = w;
        r
    };
    // The signature covers the timestamp: sign each row.
    let signed_at = |ts: &str| {
        let sig = wechat_fcgi::core::signature::sign(&mut [TOKEN.as_bytes(), ts.as_bytes(), b"n"]);
        format!(
            "signature={}&timestamp={ts}&nonce=n&echostr=e",
            String::from_utf8_lossy(&sig)
        )
    };
    // (window, timestamp, status, skew in the cause)
    let rows: Vec<(u64, String, u16, Option<&str>)> = vec![
        (300, (now - 300).to_string(), 200, None),
        (300, (now + 300).to_string(), 200, None),
        (300, (now - 301).to_string(), 403, Some("-301 s")),
        (300, (now + 3600).to_string(), 403, Some("+3600 s")),
        (300, "soon".to_owned(), 403, Some("not a number")),
        (
            300,
            "99999999999999999999999".to_owned(),
            403,
            Some("not a number"),
        ),
        (0, "1".to_owned(), 200, None),
        (10, now.to_string(), 200, None),
    ];
    for (w, ts, status, cause) in rows {
        let q = signed_at(&ts);
        let resp = window(w).handle(
            &Request {
                method: "GET",
                query: &q,
                body: b"",
            },
            now,
            &mut rand_core::OsRng,
        );
        assert_eq!(resp.status, status, "window {w}, ts {ts}");
        if let Some(needle) = cause {
            match &resp.outcome {
                Outcome::Rejected(r @ Rejection::StaleTimestamp { .. }) => {
                    assert!(r.to_string().contains(needle), "{r}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // A bad signature is reported as such even when the timestamp is stale too.
    let resp = window(300).handle(
        &Request {
            method: "GET",
            query: "signature=00&timestamp=1&nonce=n&echostr=e",
            body: b"",
        },
        now,
        &mut rand_core::OsRng,
    );
    assert_eq!(resp.outcome.label(), "bad_signature");
}
