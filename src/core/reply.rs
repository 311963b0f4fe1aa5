//! Passive replies (docs/protocol.md §4): the types, their TOML/JSON shape, and rendering to
//! the XML WeChat expects, CDATA-safe.

use serde::{Deserialize, Serialize};

/// A passive reply. Deserialises from the shape used in the config file and by reply
/// programs: `{ text = "Hi" }`, `{ image = { media_id = "..." } }`, `{ news = [ {...} ] }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[allow(missing_docs)] // each variant and field is the reply element of the same name (docs/protocol.md §4)
pub enum Reply {
    Text(String),
    Image {
        media_id: String,
    },
    Voice {
        media_id: String,
    },
    Video {
        media_id: String,
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        description: Option<String>,
    },
    Music {
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        music_url: Option<String>,
        #[serde(default)]
        hq_music_url: Option<String>,
        thumb_media_id: String,
    },
    News(Vec<Article>),
    /// Hand the conversation to the customer-service system; `kf_account` picks an agent.
    TransferCustomerService {
        #[serde(default)]
        kf_account: Option<String>,
    },
}

/// One article of a news reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // the fields are the article elements of the same name (docs/protocol.md §4)
pub struct Article {
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub pic_url: String,
    #[serde(default)]
    pub url: String,
}

/// Most articles a news reply may carry (WeChat's current limit is 8; see docs/protocol.md §4).
pub const MAX_ARTICLES: usize = 8;

impl Reply {
    /// The bytes its text takes on the heap (what a cache of replies must count).
    pub fn heap_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        match self {
            Reply::Text(t) => t.len(),
            Reply::Image { media_id } | Reply::Voice { media_id } => media_id.len(),
            Reply::Video {
                media_id,
                title,
                description,
            } => media_id.len() + opt(title) + opt(description),
            Reply::Music {
                title,
                description,
                music_url,
                hq_music_url,
                thumb_media_id,
            } => {
                opt(title)
                    + opt(description)
                    + opt(music_url)
                    + opt(hq_music_url)
                    + thumb_media_id.len()
            }
            Reply::News(articles) => articles
                .iter()
                .map(|a| {
                    std::mem::size_of::<Article>()
                        + a.title.len()
                        + a.description.len()
                        + a.pic_url.len()
                        + a.url.len()
                })
                .sum(),
            Reply::TransferCustomerService { kf_account } => opt(kf_account),
        }
    }

    /// The `MsgType` of this reply.
    pub fn msg_type(&self) -> &'static str {
        match self {
            Reply::Text(_) => "text",
            Reply::Image { .. } => "image",
            Reply::Voice { .. } => "voice",
            Reply::Video { .. } => "video",
            Reply::Music { .. } => "music",
            Reply::News(_) => "news",
            Reply::TransferCustomerService { .. } => "transfer_customer_service",
        }
    }

    /// Problems that make this reply unusable (for config checks).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Reply::News(articles) if articles.is_empty() => {
                out.push("news reply has no articles".to_owned())
            }
            Reply::News(articles) if articles.len() > MAX_ARTICLES => out.push(format!(
                "news reply has {} articles, WeChat takes at most {MAX_ARTICLES}",
                articles.len()
            )),
            Reply::Image { media_id }
            | Reply::Voice { media_id }
            | Reply::Video { media_id, .. }
                if media_id.is_empty() =>
            {
                out.push("media_id is empty".to_owned())
            }
            _ => {}
        }
        out
    }

    /// Render as the reply XML. `to` is the follower (the message's FromUserName), `from`
    /// the account (the message's ToUserName); `create_time` comes from the caller's clock.
    pub fn render(&self, to: &str, from: &str, create_time: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<xml><ToUserName>");
        cdata(out, to);
        out.extend_from_slice(b"</ToUserName><FromUserName>");
        cdata(out, from);
        out.extend_from_slice(b"</FromUserName><CreateTime>");
        out.extend_from_slice(itoa::Buffer::new().format(create_time).as_bytes());
        out.extend_from_slice(b"</CreateTime><MsgType>");
        cdata(out, self.msg_type());
        out.extend_from_slice(b"</MsgType>");
        match self {
            Reply::Text(content) => element(out, "Content", content),
            Reply::Image { media_id } => {
                out.extend_from_slice(b"<Image>");
                element(out, "MediaId", media_id);
                out.extend_from_slice(b"</Image>");
            }
            Reply::Voice { media_id } => {
                out.extend_from_slice(b"<Voice>");
                element(out, "MediaId", media_id);
                out.extend_from_slice(b"</Voice>");
            }
            Reply::Video {
                media_id,
                title,
                description,
            } => {
                out.extend_from_slice(b"<Video>");
                element(out, "MediaId", media_id);
                optional(out, "Title", title);
                optional(out, "Description", description);
                out.extend_from_slice(b"</Video>");
            }
            Reply::Music {
                title,
                description,
                music_url,
                hq_music_url,
                thumb_media_id,
            } => {
                out.extend_from_slice(b"<Music>");
                optional(out, "Title", title);
                optional(out, "Description", description);
                optional(out, "MusicUrl", music_url);
                optional(out, "HQMusicUrl", hq_music_url);
                element(out, "ThumbMediaId", thumb_media_id);
                out.extend_from_slice(b"</Music>");
            }
            Reply::News(articles) => {
                out.extend_from_slice(b"<ArticleCount>");
                out.extend_from_slice(itoa::Buffer::new().format(articles.len()).as_bytes());
                out.extend_from_slice(b"</ArticleCount><Articles>");
                for a in articles {
                    out.extend_from_slice(b"<item>");
                    element(out, "Title", &a.title);
                    element(out, "Description", &a.description);
                    element(out, "PicUrl", &a.pic_url);
                    element(out, "Url", &a.url);
                    out.extend_from_slice(b"</item>");
                }
                out.extend_from_slice(b"</Articles>");
            }
            Reply::TransferCustomerService { kf_account } => {
                if let Some(account) = kf_account {
                    out.extend_from_slice(b"<TransInfo>");
                    element(out, "KfAccount", account);
                    out.extend_from_slice(b"</TransInfo>");
                }
            }
        }
        out.extend_from_slice(b"</xml>");
    }
}

fn element(out: &mut Vec<u8>, name: &str, text: &str) {
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    cdata(out, text);
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
}

fn optional(out: &mut Vec<u8>, name: &str, text: &Option<String>) {
    if let Some(text) = text {
        element(out, name, text);
    }
}

/// Write `text` as CDATA. A CDATA section cannot contain `]]>`, so each occurrence is
/// split across two sections: `]]` ends one, `>` starts the next. Characters XML 1.0
/// does not allow anywhere in a document (controls other than tab, LF and CR, and
/// U+FFFE, U+FFFF) are dropped: a template or a program can produce them, and a reply
/// holding one is not XML.
pub fn cdata(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"<![CDATA[");
    let text = xml_chars(text);
    let mut rest = text.as_ref();
    while let Some(at) = find_cdata_end(rest.as_bytes()) {
        out.extend_from_slice(&rest.as_bytes()[..at + 2]);
        out.extend_from_slice(b"]]><![CDATA[");
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    out.extend_from_slice(b"]]>");
}

/// `text` without the characters XML 1.0 forbids (borrowed when it has none).
pub fn xml_chars(text: &str) -> std::borrow::Cow<'_, str> {
    let forbidden = |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}');
    // One pass over the bytes without branches decides the common case: no control
    // byte and no 0xEF (the lead byte of U+FFFE and U+FFFF) means nothing to drop.
    let suspect = text.bytes().fold(false, |any, b| {
        any | ((b < 0x20) & !matches!(b, b'\t' | b'\n' | b'\r')) | (b == 0xEF)
    });
    if !suspect || !text.contains(forbidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().filter(|&c| !forbidden(c)).collect())
}

/// Where `]]>` starts in `bytes`: jump from `]` to `]` with memchr (most texts have
/// none at all, and one vectorised scan settles that).
fn find_cdata_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b']', &bytes[from..]) {
        let at = from + i;
        if bytes.get(at..at + 3) == Some(b"]]>") {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdata_string(text: &str) -> String {
        let mut out = Vec::new();
        cdata(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn characters_xml_forbids_are_dropped() {
        let rows = [
            ("plain 你好 👋", "plain 你好 👋"),
            ("tab\tline\ncr\r", "tab\tline\ncr\r"),
            ("a\u{1}b\u{1b}[31mc\u{0}", "ab[31mc"),
            ("x\u{fffe}y\u{ffff}z\u{fffd}", "xyz\u{fffd}"),
            ("\u{b}\u{c}\u{1f}", ""),
            ("\u{7f}\u{85}", "\u{7f}\u{85}"), // allowed by XML 1.0
            ("\u{ef}", "\u{ef}"),             // ï: lead byte 0xC3, not 0xEF
            ("\u{f000}", "\u{f000}"),         // lead byte 0xEF, allowed
        ];
        for (text, want) in rows {
            assert_eq!(xml_chars(text), want, "{text:?}");
        }
        assert_eq!(cdata_string("a\u{1}]]>b"), "<![CDATA[a]]]]><![CDATA[>b]]>");
    }

    #[test]
    fn cdata_table() {
        let rows = [
            ("", "<![CDATA[]]>"),
            ("plain", "<![CDATA[plain]]>"),
            ("a]]>b", "<![CDATA[a]]]]><![CDATA[>b]]>"),
            ("]]>]]>", "<![CDATA[]]]]><![CDATA[>]]]]><![CDATA[>]]>"),
            ("]]]>", "<![CDATA[]]]]]><![CDATA[>]]>"),
            ("]>", "<![CDATA[]>]]>"),
            ("<&>", "<![CDATA[<&>]]>"),
        ];
        for (text, expected) in rows {
            assert_eq!(cdata_string(text), expected, "{text:?}");
        }
    }
}
