//! Late answers (`[late]`): what happens when a reply program or hook needs longer than
//! WeChat waits. The policy lives here (which message is a pick-up, which replies to
//! fill in); the engine carries it out over the shared store.

use std::sync::Arc;

use super::message::{Kind, Message};
use super::reply::Reply;
use super::rules::{Captures, Decision, TemplateReply};

/// WeChat's attempts at one message: the first and two retries (docs/protocol.md §5).
pub const WECHAT_ATTEMPTS: u64 = 3;

/// What to do with an answer not ready by `reply_budget_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateMode {
    /// Answer `success` at the budget; the answer is dropped.
    Off,
    /// Leave WeChat's first attempts unanswered so it retries; the last attempt gets
    /// the `pending` reply and the answer waits for a pick-up message.
    Hold,
    /// Answer `success` at the budget; push the answer with the customer-service
    /// message API when it is ready (pick-up when the push fails).
    CustomerService,
}

impl LateMode {
    /// The config word.
    pub fn label(self) -> &'static str {
        match self {
            LateMode::Off => "off",
            LateMode::Hold => "hold",
            LateMode::CustomerService => "customer_service",
        }
    }

    /// The mode a config word names.
    pub fn from_label(word: &str) -> Option<LateMode> {
        [LateMode::Off, LateMode::Hold, LateMode::CustomerService]
            .into_iter()
            .find(|m| m.label() == word)
    }
}

/// `[late]`.
#[derive(Debug, Clone)]
pub struct Late {
    /// The mode.
    pub mode: LateMode,
    /// The last attempt's reply when the answer is not ready (hold).
    pub pending: TemplateReply,
    /// Words (a whole text message, trimmed, ASCII case ignored) that fetch a waiting
    /// answer.
    pub pickup: Vec<String>,
    /// How long a late answer waits to be picked up, in seconds.
    pub pickup_ttl_secs: u64,
    /// The reply to a pick-up while the answer is still being made.
    pub still_running: TemplateReply,
}

/// One message's late-answer plan, its replies filled in (the message is gone by the
/// time they are needed).
#[derive(Debug, Clone)]
pub struct LatePlan {
    /// The mode.
    pub mode: LateMode,
    /// Whether the message is a pick-up word.
    pub pickup: bool,
    /// The `pending` reply for this follower.
    pub pending: Arc<Reply>,
    /// The `still_running` reply for this follower.
    pub still_running: Arc<Reply>,
    /// How long a late answer waits, in seconds.
    pub pickup_ttl_secs: u64,
}

impl Late {
    /// The plan for a message: `None` when late answers are off, or when the message
    /// can neither be late (no program or hook decides it) nor pick one up.
    pub fn plan(&self, message: &Message<'_>, decision: &Decision) -> Option<LatePlan> {
        if self.mode == LateMode::Off {
            return None;
        }
        let pickup = self.is_pickup(message);
        if !pickup && !matches!(decision, Decision::Run { .. }) {
            return None;
        }
        let none = Captures::default();
        Some(LatePlan {
            mode: self.mode,
            pickup,
            pending: self.pending.fill(message, &none),
            still_running: self.still_running.fill(message, &none),
            pickup_ttl_secs: self.pickup_ttl_secs,
        })
    }

    /// Whether the message is a text equal to a pick-up word.
    pub fn is_pickup(&self, message: &Message<'_>) -> bool {
        let Kind::Text { content, .. } = &message.kind else {
            return false;
        };
        // Trimmed as the rules trim it (`str::trim` on a long run of spaces took a third
        // of the CPU of a message padded to 16 KiB).
        let content = crate::core::rules::trim_content(content);
        self.pickup.iter().any(|w| w.eq_ignore_ascii_case(content))
    }
}

/// The customer-service message (`cgi-bin/message/custom/send`) carrying `reply` to
/// `follower`, as WeChat's custom-message JSON defines it (docs/protocol.md §7).
/// `None` for a reply that cannot be pushed (a transfer to customer service).
pub fn custom_message(follower: &str, reply: &Reply) -> Option<serde_json::Value> {
    use serde_json::{json, Map, Value};
    let optional = |pairs: &[(&str, &Option<String>)]| {
        let mut m = Map::new();
        for (k, v) in pairs {
            if let Some(v) = v {
                m.insert((*k).to_owned(), Value::String(v.clone()));
            }
        }
        m
    };
    let (kind, body) = match reply {
        Reply::Text(content) => ("text", json!({ "content": content })),
        Reply::Image { media_id } => ("image", json!({ "media_id": media_id })),
        Reply::Voice { media_id } => ("voice", json!({ "media_id": media_id })),
        Reply::Video {
            media_id,
            title,
            description,
        } => {
            let mut m = optional(&[("title", title), ("description", description)]);
            m.insert("media_id".into(), Value::String(media_id.clone()));
            ("video", Value::Object(m))
        }
        Reply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => {
            let mut m = optional(&[
                ("title", title),
                ("description", description),
                ("musicurl", music_url),
                ("hqmusicurl", hq_music_url),
            ]);
            m.insert(
                "thumb_media_id".into(),
                Value::String(thumb_media_id.clone()),
            );
            ("music", Value::Object(m))
        }
        Reply::News(articles) => {
            let list: Vec<Value> = articles
                .iter()
                .map(|a| {
                    json!({
                        "title": a.title,
                        "description": a.description,
                        "url": a.url,
                        "picurl": a.pic_url,
                    })
                })
                .collect();
            ("news", json!({ "articles": list }))
        }
        Reply::TransferCustomerService { .. } => return None,
    };
    let mut message = Map::new();
    message.insert("touser".into(), Value::String(follower.to_owned()));
    message.insert("msgtype".into(), Value::String(kind.to_owned()));
    message.insert(kind.to_owned(), body);
    Some(Value::Object(message))
}

/// What an API answer (`{"errcode":..,"errmsg":..}`) means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiOutcome {
    /// `errcode` 0 (or absent).
    Ok,
    /// The access token is invalid or expired (40001, 40014, 42001): refresh it and
    /// try once more.
    BadToken(i64),
    /// WeChat refuses this push for good (45015: outside the 48 h window; 45047: quota;
    /// 48001: no permission; any other code).
    Refused(i64, String),
    /// WeChat is busy (-1): try again later.
    Busy,
    /// Not an API answer at all.
    Unreadable,
}

/// Read an API answer.
pub fn api_outcome(body: &[u8]) -> ApiOutcome {
    #[derive(serde::Deserialize)]
    struct Error {
        #[serde(default)]
        errcode: i64,
        #[serde(default)]
        errmsg: String,
    }
    match serde_json::from_slice::<Error>(body) {
        Err(_) => ApiOutcome::Unreadable,
        Ok(e) if e.errcode == 0 => ApiOutcome::Ok,
        Ok(e) if e.errcode == -1 => ApiOutcome::Busy,
        Ok(e) if matches!(e.errcode, 40001 | 40014 | 42001) => ApiOutcome::BadToken(e.errcode),
        Ok(e) => ApiOutcome::Refused(e.errcode, e.errmsg.chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Message;

    fn late(mode: LateMode) -> Late {
        Late {
            mode,
            pending: TemplateReply::plain(Reply::Text("wait".into())),
            pickup: vec!["1".into(), "继续".into(), "continue".into()],
            pickup_ttl_secs: 60,
            still_running: TemplateReply::plain(Reply::Text("not yet".into())),
        }
    }

    fn text(content: &str) -> String {
        crate::sample::text_with_id("gh", "oF", 1, content, 7)
    }

    #[test]
    fn pickup_words_are_whole_messages_trimmed_and_case_blind() {
        let l = late(LateMode::Hold);
        let padded = format!("1{}", " ".repeat(16_384));
        let table = [
            ("1", true),
            (" 1\n", true),
            ("继续", true),
            ("Continue", true),
            ("11", false),
            ("continue please", false),
            ("", false),
            ("\u{3000}1\u{3000}", true),
            (&padded, true),
            (&padded[1..], false),
        ];
        for (content, expected) in table {
            let body = text(content);
            let message = Message::parse(body.as_bytes()).unwrap();
            assert_eq!(l.is_pickup(&message), expected, "{content:?}");
        }
    }

    #[test]
    fn a_plan_only_for_programs_and_pickups_and_never_when_off() {
        let body = text("1");
        let message = Message::parse(body.as_bytes()).unwrap();
        let reply = Decision::Reply {
            rule: Arc::from("r"),
            reply: Arc::new(Reply::Text("x".into())),
        };
        let plan = late(LateMode::Hold).plan(&message, &reply).unwrap();
        assert!(plan.pickup);
        assert_eq!(*plan.pending, Reply::Text("wait".into()));
        assert!(late(LateMode::Off).plan(&message, &reply).is_none());
        let other = text("hello");
        let message = Message::parse(other.as_bytes()).unwrap();
        assert!(late(LateMode::Hold).plan(&message, &reply).is_none());
        assert_eq!(
            LateMode::from_label("customer_service"),
            Some(LateMode::CustomerService)
        );
        assert_eq!(LateMode::from_label("Hold"), None);
    }

    #[test]
    fn custom_messages_follow_wechat_s_json() {
        use serde_json::json;
        let table: Vec<(Reply, serde_json::Value)> = vec![
            (
                Reply::Text("hi".into()),
                json!({"touser":"oF","msgtype":"text","text":{"content":"hi"}}),
            ),
            (
                Reply::Image {
                    media_id: "M".into(),
                },
                json!({"touser":"oF","msgtype":"image","image":{"media_id":"M"}}),
            ),
            (
                Reply::Voice {
                    media_id: "V".into(),
                },
                json!({"touser":"oF","msgtype":"voice","voice":{"media_id":"V"}}),
            ),
            (
                Reply::Video {
                    media_id: "D".into(),
                    title: Some("t".into()),
                    description: None,
                },
                json!({"touser":"oF","msgtype":"video","video":{"media_id":"D","title":"t"}}),
            ),
            (
                Reply::Music {
                    title: None,
                    description: None,
                    music_url: Some("http://m".into()),
                    hq_music_url: None,
                    thumb_media_id: "T".into(),
                },
                json!({"touser":"oF","msgtype":"music","music":{"musicurl":"http://m","thumb_media_id":"T"}}),
            ),
            (
                Reply::News(vec![crate::core::reply::Article {
                    title: "a".into(),
                    description: "b".into(),
                    pic_url: "p".into(),
                    url: "u".into(),
                }]),
                json!({"touser":"oF","msgtype":"news","news":{"articles":[
                    {"title":"a","description":"b","url":"u","picurl":"p"}]}}),
            ),
        ];
        for (reply, expected) in table {
            assert_eq!(custom_message("oF", &reply), Some(expected), "{reply:?}");
        }
        let transfer = Reply::TransferCustomerService { kf_account: None };
        assert_eq!(custom_message("oF", &transfer), None);
    }

    #[test]
    fn api_answers_are_read_by_errcode() {
        let table: &[(&[u8], ApiOutcome)] = &[
            (br#"{"errcode":0,"errmsg":"ok"}"#, ApiOutcome::Ok),
            (br#"{"access_token":"x","expires_in":7200}"#, ApiOutcome::Ok),
            (
                br#"{"errcode":40001,"errmsg":"invalid credential"}"#,
                ApiOutcome::BadToken(40001),
            ),
            (br#"{"errcode":42001}"#, ApiOutcome::BadToken(42001)),
            (br#"{"errcode":40014}"#, ApiOutcome::BadToken(40014)),
            (
                br#"{"errcode":45015,"errmsg":"response out of time limit"}"#,
                ApiOutcome::Refused(45015, "response out of time limit".into()),
            ),
            (
                br#"{"errcode":48001}"#,
                ApiOutcome::Refused(48001, String::new()),
            ),
            (
                br#"{"errcode":-1,"errmsg":"system error"}"#,
                ApiOutcome::Busy,
            ),
            (b"<html>502</html>", ApiOutcome::Unreadable),
        ];
        for (body, expected) in table {
            assert_eq!(
                &api_outcome(body),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
