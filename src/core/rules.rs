//! Reply rules: which configured reply answers a message (first match wins, then the
//! default for user messages, else none and the caller answers `success`).

use super::message::{Event, Kind, Message};
use super::reply::Reply;

/// The configured rules, in order, and the default reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub rules: Vec<Rule>,
    /// Answers user messages (text, image, voice, ...) that no rule matched. Events and
    /// unknown message types are never answered by the default: replying "I did not
    /// understand" to an unfollow or a template-send report would be wrong.
    pub default: Option<Reply>,
}

/// One `[[rule]]`: what it matches and what it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `name` from the config, or `rule[N]`, for logs and config errors.
    pub name: String,
    pub matcher: Matcher,
    pub reply: Reply,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// A text message whose trimmed Content equals one of these.
    TextEquals(Vec<String>),
    /// An event of this name (case-insensitive); with `key`, only when the event's key
    /// equals it (the scene for subscribe/SCAN, EventKey otherwise).
    Event { event: String, key: Option<String> },
}

/// Event names this version knows, as WeChat spells them (matching ignores case).
pub const KNOWN_EVENTS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "SCAN",
    "LOCATION",
    "CLICK",
    "VIEW",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
    "view_miniprogram",
    "TEMPLATESENDJOBFINISH",
    "MASSSENDJOBFINISH",
    "PUBLISHJOBFINISH",
];

impl Rules {
    /// The reply for this message, if any, and the name of the rule that chose it
    /// (`default` for the default reply).
    pub fn decide<'a>(&'a self, message: &Message) -> Option<(&'a str, &'a Reply)> {
        for rule in &self.rules {
            if rule.matcher.matches(message) {
                return Some((&rule.name, &rule.reply));
            }
        }
        let user_message = !matches!(message.kind, Kind::Event(_) | Kind::Unknown);
        match &self.default {
            Some(reply) if user_message => Some(("default", reply)),
            _ => None,
        }
    }
}

impl Matcher {
    /// Whether this matcher accepts the message.
    pub fn matches(&self, message: &Message) -> bool {
        match self {
            Matcher::TextEquals(words) => match &message.kind {
                Kind::Text { content, .. } => {
                    let content = content.trim();
                    words.iter().any(|w| w == content)
                }
                _ => false,
            },
            Matcher::Event { event, key } => {
                let Kind::Event(e) = &message.kind else {
                    return false;
                };
                let name = message.field("Event").unwrap_or("");
                if !name.eq_ignore_ascii_case(event) {
                    return false;
                }
                match key {
                    None => true,
                    Some(key) => event_key(e, message) == Some(key.as_str()),
                }
            }
        }
    }
}

/// The key a rule's `key` is compared with: the QR scene for subscribe and SCAN (so the
/// `qrscene_` prefix never matters), the raw EventKey for every other event.
pub fn event_key<'a>(event: &'a Event, message: &'a Message) -> Option<&'a str> {
    match event {
        Event::Subscribe { scene, .. } => scene.as_deref(),
        Event::Scan { scene, .. } => Some(scene),
        _ => message.field("EventKey"),
    }
}
