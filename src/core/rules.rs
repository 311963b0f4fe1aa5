//! Reply rules: which configured reply answers a message (first match wins, then the
//! default for user messages, else none and the caller answers `success`), with text
//! templates, random picks and reply programs.

use std::sync::Arc;

use rand_core::RngCore;
use regex::Regex;

use super::message::{Event, Kind, Message};
use super::reply::Reply;

/// The configured rules, in order, and the default reply.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The rules, tried in order; the first match answers.
    pub rules: Vec<Rule>,
    /// Answers user messages (text, image, voice, file, any type but `event`) that no
    /// rule matched. Events are never answered by the default: replying "I did not
    /// understand" to an unfollow or a template-send report would be wrong.
    pub default: Option<Action>,
}

/// One `[[rule]]`: what it matches and what it does.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `name` from the config, or `rule[N]`, for logs and config errors.
    pub name: Arc<str>,
    /// What it matches.
    pub matcher: Matcher,
    /// What it does.
    pub action: Action,
}

/// What a rule matches.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// A text message whose trimmed Content equals one of these.
    Text {
        /// The words (trimmed; lowercased with `ignore_case`).
        words: Vec<String>,
        /// Compare ignoring case.
        ignore_case: bool,
    },
    /// A text message whose trimmed Content contains one of these.
    Contains {
        /// The words (trimmed; lowercased with `ignore_case`).
        words: Vec<String>,
        /// Compare ignoring case.
        ignore_case: bool,
    },
    /// A text message whose trimmed Content starts with one of these.
    Prefix {
        /// The words (trimmed; lowercased with `ignore_case`).
        words: Vec<String>,
        /// Compare ignoring case.
        ignore_case: bool,
    },
    /// A text message whose trimmed Content matches; captures feed the templates.
    Regex(Regex),
    /// An event of this name (case-insensitive); with `key`, only when the event's key
    /// equals it (the scene for subscribe/SCAN, EventKey otherwise).
    Event {
        /// The `Event` value.
        event: String,
        /// The key it must have, if any.
        key: Option<String>,
    },
    /// A message of this MsgType (case-insensitive).
    MsgType(String),
}

/// What a matching rule does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer with one of these (picked at random when there are several).
    Replies(Vec<TemplateReply>),
    /// Run a program; its output is the reply. `fallback` answers when it fails.
    Run {
        /// The program.
        program: Arc<Program>,
        /// The reply when it fails.
        fallback: Option<TemplateReply>,
    },
}

/// A reply whose text may hold `{from}`, `{to}`, `{content}`, `{scene}`, `{1}`, `{name}`.
#[derive(Debug, Clone)]
pub struct TemplateReply {
    /// The reply, as configured.
    pub reply: Arc<Reply>,
    /// The parsed template of a text reply's content.
    pub text: Option<Template>,
}

/// A reply program: the command, the folder it runs in (the config file's), and how
/// long it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The program and its arguments; the first is an absolute path after `Config::load`.
    /// Empty for an HTTP reply hook.
    pub command: Vec<String>,
    /// An HTTP reply hook's URL: the message JSON is POSTed there instead.
    pub url: Option<String>,
    /// Where it runs: the config file's folder.
    pub dir: std::path::PathBuf,
    /// How long it may take, from when it asks for a slot.
    pub timeout_ms: u64,
    /// `run.env`: variables set for it beside the documented few.
    pub env: Vec<(String, String)>,
}

/// What the rules decided for one message.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Answer with this reply (templates already filled in).
    Reply {
        /// The rule that matched.
        rule: Arc<str>,
        /// The reply.
        reply: Arc<Reply>,
    },
    /// Run this program with the message as JSON on stdin.
    Run {
        /// The rule that matched.
        rule: Arc<str>,
        /// The program.
        program: Arc<Program>,
        /// The rule's fallback, templates filled in.
        fallback: Option<Arc<Reply>>,
    },
    /// No rule and no default: `success`.
    Nothing,
}

/// Every MsgType WeChat documents for Official Account callbacks. Any MsgType can be
/// matched by a rule; this list only serves typo warnings (docs/protocol.md §3).
pub const DOCUMENTED_MSG_TYPES: &[&str] = &[
    "text",
    "image",
    "voice",
    "video",
    "shortvideo",
    "location",
    "link",
    "miniprogrampage",
    "file",
    "event",
    "device_text",
    "device_event",
    "device_status",
    "hardware",
];

/// Every event name WeChat documents, as it spells them. Any event name can be matched
/// (case-insensitively); this list only serves typo warnings (docs/protocol.md §3).
pub const KNOWN_EVENTS: &[&str] = &[
    // Following and scanning
    "subscribe",
    "unsubscribe",
    "SCAN",
    "LOCATION",
    // Menus
    "CLICK",
    "VIEW",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
    "view_miniprogram",
    "media_id",
    "view_limited",
    "article_id",
    "article_view_limited",
    // Sending jobs and publishing
    "TEMPLATESENDJOBFINISH",
    "MASSSENDJOBFINISH",
    "PUBLISHJOBFINISH",
    "subscribe_msg_popup_event",
    "subscribe_msg_change_event",
    "subscribe_msg_sent_event",
    // Customer-service sessions
    "kf_create_session",
    "kf_close_session",
    "kf_switch_session",
    // Cards and membership
    "card_pass_check",
    "card_not_pass_check",
    "user_get_card",
    "user_gifting_card",
    "user_del_card",
    "user_consume_card",
    "user_pay_from_pay_cell",
    "user_view_card",
    "user_enter_session_from_card",
    "update_member_card",
    "card_sku_remind",
    "card_pay_order",
    "submit_membercard_user_info",
    // Verification of the account
    "qualification_verify_success",
    "qualification_verify_fail",
    "naming_verify_success",
    "naming_verify_fail",
    "annual_renew",
    "verify_expired",
    // Stores, Wi-Fi, devices, shake
    "poi_check_notify",
    "WifiConnected",
    "ShakearoundUserShake",
    "ShakearoundLotteryBind",
    "device_text",
    "device_bind",
    "device_unbind",
    "device_subscribe_status",
    "device_unsubscribe_status",
    // Shops, products, invoices
    "merchant_order",
    "user_scan_product",
    "user_scan_product_enter_session",
    "user_scan_product_async",
    "user_scan_product_verify_action",
    "user_authorize_invoice",
    "update_invoice_status",
    "submit_invoice_title",
    // Mini programs and guides
    "weapp_audit_success",
    "weapp_audit_fail",
    "weapp_audit_delay",
    "wxa_nickname_audit",
    "guide_qrcode_scan_event",
];

/// For a name not in `known` (compared without case): the known one it is probably a
/// typo of, if any (at most two letters added, dropped or changed).
pub fn did_you_mean<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let word = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&word, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over bytes (names here are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

impl Rules {
    /// Decide what answers this message; `rng` picks among several replies.
    pub fn decide(&self, message: &Message<'_>, rng: &mut dyn RngCore) -> Decision {
        let subject = Subject::new(message);
        for rule in &self.rules {
            if let Some(captures) = rule.matcher.matches_subject(&subject) {
                return rule.action.decide(&rule.name, message, &captures, rng);
            }
        }
        // Every message but an event, whether its type is known here or not.
        let user_message = !matches!(message.kind, Kind::Event(_));
        match &self.default {
            Some(action) if user_message => {
                action.decide(&Arc::from("default"), message, &Captures::default(), rng)
            }
            _ => Decision::Nothing,
        }
    }
}

/// Regex captures of a match, by number and by name.
#[derive(Debug, Default)]
pub struct Captures {
    numbered: Vec<String>,
    named: Vec<(String, String)>,
}

/// A text message's content without surrounding whitespace (Unicode's, so a full-width
/// space U+3000 goes too). Runs of spaces are cut eight bytes at a time, other ASCII
/// whitespace byte by byte, and only then `str::trim`, which decodes every char: alone
/// it took 50 µs on a 16 KiB run of spaces, `trim_ascii` 25 µs.
pub fn trim_content(content: &str) -> &str {
    const SPACES: [u8; 8] = [b' '; 8];
    let bytes = content.as_bytes();
    let (mut start, mut end) = (0, bytes.len());
    while end - start >= 8 && bytes[end - 8..end] == SPACES {
        end -= 8;
    }
    while end - start >= 8 && bytes[start..start + 8] == SPACES {
        start += 8;
    }
    // Cutting ASCII spaces keeps char boundaries.
    content[start..end].trim_ascii().trim()
}

/// What the matchers look at, worked out once per message rather than once per rule.
struct Subject<'m, 'a> {
    message: &'m Message<'a>,
    /// The trimmed content of a text message.
    text: Option<&'m str>,
    /// The same, lowercased, for `ignore_case` rules (made on first use).
    lowered: std::cell::OnceCell<Option<String>>,
}

impl<'m, 'a> Subject<'m, 'a> {
    fn new(message: &'m Message<'a>) -> Subject<'m, 'a> {
        let text = match &message.kind {
            Kind::Text { content, .. } => Some(trim_content(content)),
            _ => None,
        };
        Subject {
            message,
            text,
            lowered: std::cell::OnceCell::new(),
        }
    }

    fn lowered(&self) -> Option<&str> {
        self.lowered
            .get_or_init(|| self.text.map(str::to_lowercase))
            .as_deref()
    }
}

impl Matcher {
    fn matches_subject(&self, subject: &Subject<'_, '_>) -> Option<Captures> {
        let message = subject.message;
        let words_match = |words: &[String], ignore_case: bool, test: fn(&str, &str) -> bool| {
            let content = if ignore_case {
                subject.lowered()?
            } else {
                subject.text?
            };
            words
                .iter()
                .any(|w| test(content, w))
                .then(Captures::default)
        };
        match self {
            Matcher::Text { words, ignore_case } => words_match(words, *ignore_case, |c, w| c == w),
            Matcher::Contains { words, ignore_case } => {
                words_match(words, *ignore_case, |c, w| c.contains(w))
            }
            Matcher::Prefix { words, ignore_case } => {
                words_match(words, *ignore_case, |c, w| c.starts_with(w))
            }
            Matcher::Regex(re) => {
                let caps = re.captures(subject.text?)?;
                let numbered = caps
                    .iter()
                    .map(|m| m.map_or("", |m| m.as_str()).to_owned())
                    .collect();
                let named = re
                    .capture_names()
                    .flatten()
                    .map(|n| {
                        (
                            n.to_owned(),
                            caps.name(n).map_or("", |m| m.as_str()).to_owned(),
                        )
                    })
                    .collect();
                Some(Captures { numbered, named })
            }
            Matcher::Event { event, key } => {
                let Kind::Event(e) = &message.kind else {
                    return None;
                };
                let name = message.field("Event").unwrap_or("").trim();
                if !name.eq_ignore_ascii_case(event) {
                    return None;
                }
                match key {
                    Some(key) if event_key(e, message) != Some(key.as_str()) => None,
                    _ => Some(Captures::default()),
                }
            }
            Matcher::MsgType(t) => message
                .msg_type
                .eq_ignore_ascii_case(t)
                .then(Captures::default),
        }
    }
}

impl Action {
    fn decide(
        &self,
        rule: &Arc<str>,
        message: &Message<'_>,
        captures: &Captures,
        rng: &mut dyn RngCore,
    ) -> Decision {
        match self {
            Action::Replies(replies) => {
                let pick = match replies.len() {
                    0 => return Decision::Nothing,
                    1 => &replies[0],
                    n => &replies[(rng.next_u32() as usize) % n],
                };
                Decision::Reply {
                    rule: rule.clone(),
                    reply: pick.fill(message, captures),
                }
            }
            Action::Run { program, fallback } => Decision::Run {
                rule: rule.clone(),
                program: program.clone(),
                fallback: fallback.as_ref().map(|f| f.fill(message, captures)),
            },
        }
    }
}

impl TemplateReply {
    /// A reply without placeholders.
    pub fn plain(reply: Reply) -> TemplateReply {
        TemplateReply {
            reply: Arc::new(reply),
            text: None,
        }
    }

    /// The reply with its template filled in for this message (shared, not copied,
    /// when it has no placeholders).
    pub fn fill(&self, message: &Message<'_>, captures: &Captures) -> Arc<Reply> {
        match &self.text {
            Some(t) => Arc::new(Reply::Text(t.render(message, captures))),
            None => self.reply.clone(),
        }
    }
}

/// The key a rule's `key` is compared with: the QR scene for subscribe and SCAN (so the
/// `qrscene_` prefix never matters), the raw EventKey for every other event.
pub fn event_key<'a>(event: &'a Event<'_>, message: &'a Message<'_>) -> Option<&'a str> {
    match event {
        Event::Subscribe { scene, .. } => scene.as_deref().map(str::trim),
        Event::Scan { scene, .. } => Some(scene.trim()),
        _ => message.field("EventKey").map(str::trim),
    }
}

/// A parsed text template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    From,
    To,
    Content,
    Scene,
    Group(usize),
    Named(String),
}

impl Template {
    /// Parse `text`; `{{` and `}}` are literal braces. `groups` and `names` are what the
    /// rule's regex captures (none for other rules). Returns `None` when `text` has no
    /// placeholder.
    pub fn parse(text: &str, groups: usize, names: &[String]) -> Result<Option<Template>, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        let mut any = false;
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                    "unclosed `{{{name}` (write `{{{{` for a literal brace)"
                                ))
                            }
                        }
                    }
                    let piece = match name.as_str() {
                        "from" => Piece::From,
                        "to" => Piece::To,
                        "content" => Piece::Content,
                        "scene" => Piece::Scene,
                        n if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => {
                            let i: usize = n.parse().map_err(|_| format!("`{{{n}}}` is not a group number"))?;
                            if i > groups {
                                return Err(format!("`{{{n}}}`: the regex has only {groups} capture groups"));
                            }
                            Piece::Group(i)
                        }
                        n if names.iter().any(|x| x == n) => Piece::Named(n.to_owned()),
                        n => {
                            return Err(format!(
                                "unknown placeholder `{{{n}}}` (known: from, to, content, scene, and regex captures)"
                            ))
                        }
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                    any = true;
                }
                '}' => return Err("lone `}` (write `}}` for a literal brace)".to_owned()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(any.then_some(Template(pieces)))
    }

    /// Fill in the placeholders.
    pub fn render(&self, message: &Message<'_>, captures: &Captures) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::From => out.push_str(&message.from_user_name),
                Piece::To => out.push_str(&message.to_user_name),
                Piece::Content => match &message.kind {
                    Kind::Text { content, .. } => out.push_str(trim_content(content)),
                    Kind::Voice {
                        recognition: Some(r),
                        ..
                    } => out.push_str(r),
                    _ => {}
                },
                Piece::Scene => {
                    if let Kind::Event(
                        Event::Subscribe { scene: Some(s), .. } | Event::Scan { scene: s, .. },
                    ) = &message.kind
                    {
                        out.push_str(s);
                    }
                }
                Piece::Group(i) => {
                    out.push_str(captures.numbered.get(*i).map_or("", String::as_str))
                }
                Piece::Named(n) => out.push_str(
                    captures
                        .named
                        .iter()
                        .find(|(k, _)| k == n)
                        .map_or("", |(_, v)| v.as_str()),
                ),
            }
        }
        out
    }
}

/// Turn a program's stdout into a reply: empty → none (`success`); a JSON object → any
/// reply type, in the same shape as the config file; anything else → a text reply.
pub fn parse_program_output(stdout: &[u8]) -> Result<Option<Reply>, String> {
    let text = std::str::from_utf8(stdout).map_err(|_| "output is not UTF-8".to_owned())?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.starts_with('{') {
        let reply: Reply = serde_json::from_str(trimmed)
            .map_err(|e| format!("output JSON is not a reply: {e}"))?;
        if let Some(problem) = reply.problems().into_iter().next() {
            return Err(format!("output reply: {problem}"));
        }
        return Ok(Some(reply));
    }
    Ok(Some(Reply::Text(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_content_is_str_trim() {
        let long = format!("hi{}", " ".repeat(16_384));
        let rows = [
            "",
            " ",
            "hi",
            "  hi  ",
            "\t\r\nhi\n",
            "hi\u{3000}",
            "\u{3000} hi \u{3000}",
            "hi \u{3000} ",
            " \u{a0}hi\u{2003}\t",
            "你好　",
            "a b",
            &long,
        ];
        for row in rows {
            assert_eq!(trim_content(row), row.trim(), "{row:?}");
        }
    }
}
