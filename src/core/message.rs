//! Inbound messages and events: the XML body parsed (quick-xml) into typed values, with
//! every element also kept raw so unknown types and fields are never lost.

use std::borrow::Cow;

use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

use super::error::Rejection;

/// Deepest element nesting accepted (WeChat's deepest is 4: xml/SendPicsInfo/PicList/item).
pub const MAX_DEPTH: usize = 16;

/// The MsgType values this version parses into a typed [`Kind`] (docs/protocol.md §3).
pub const KNOWN_MSG_TYPES: &[&str] = &[
    "text",
    "image",
    "voice",
    "video",
    "shortvideo",
    "location",
    "link",
    "miniprogrampage",
    "event",
];

/// One XML element: its name and either its text or its child elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Field<'a> {
    /// The element's name.
    pub name: &'a str,
    /// Its content.
    pub value: Value<'a>,
}

/// An element's content. Whitespace between child elements is dropped; text is kept
/// exactly (CDATA and escaped text alike), with no end-of-line normalisation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Borrowed from the body unless it had escapes or several text/CDATA parts.
    Text(Cow<'a, str>),
    /// Child elements, in document order.
    Children(Vec<Field<'a>>),
}

/// A message or event as WeChat sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    /// The Official Account's original id (`gh_...`).
    pub to_user_name: Str<'a>,
    /// The follower's OpenID.
    pub from_user_name: Str<'a>,
    /// `CreateTime`: Unix seconds.
    /// `CreateTime`: Unix seconds; `None` when absent or not a number (the raw text
    /// stays in `fields`).
    pub create_time: Option<u64>,
    /// `MsgType` exactly as sent.
    pub msg_type: Str<'a>,
    /// The typed view of the message.
    pub kind: Kind<'a>,
    /// Every child of the root element, in document order (the raw view).
    pub fields: Vec<Field<'a>>,
}

/// Text borrowed from the request body where possible.
pub type Str<'a> = Cow<'a, str>;

/// A message's type and the values specific to it (docs/protocol.md §3).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // fields are the message elements of the same name (docs/protocol.md §3)
pub enum Kind<'a> {
    Text {
        content: Str<'a>,
        msg_id: Option<u64>,
    },
    Image {
        pic_url: Str<'a>,
        media_id: Str<'a>,
        msg_id: Option<u64>,
    },
    Voice {
        media_id: Str<'a>,
        format: Str<'a>,
        recognition: Option<Str<'a>>,
        msg_id: Option<u64>,
    },
    Video {
        media_id: Str<'a>,
        thumb_media_id: Str<'a>,
        msg_id: Option<u64>,
    },
    ShortVideo {
        media_id: Str<'a>,
        thumb_media_id: Str<'a>,
        msg_id: Option<u64>,
    },
    Location {
        location_x: Option<f64>,
        location_y: Option<f64>,
        scale: Option<f64>,
        label: Str<'a>,
        msg_id: Option<u64>,
    },
    Link {
        title: Str<'a>,
        description: Str<'a>,
        url: Str<'a>,
        msg_id: Option<u64>,
    },
    MiniProgramPage {
        title: Str<'a>,
        app_id: Str<'a>,
        page_path: Str<'a>,
        msg_id: Option<u64>,
    },
    Event(Event<'a>),
    /// A `MsgType` this version does not know; its fields are in `Message::fields`.
    Unknown,
}

/// `MsgType=event`: the `Event` value and its specific fields.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // fields are the event elements of the same name (docs/protocol.md §3)
pub enum Event<'a> {
    /// Follow. `scene` is the EventKey without its `qrscene_` prefix when the follower
    /// came through a parameter QR code.
    Subscribe {
        scene: Option<Str<'a>>,
        ticket: Option<Str<'a>>,
    },
    Unsubscribe,
    /// A follower scanned a parameter QR code; `scene` is the EventKey.
    Scan {
        scene: Str<'a>,
        ticket: Option<Str<'a>>,
    },
    Location {
        latitude: Option<f64>,
        longitude: Option<f64>,
        precision: Option<f64>,
    },
    Click {
        key: Str<'a>,
    },
    View {
        url: Str<'a>,
        menu_id: Option<Str<'a>>,
    },
    ScancodePush {
        key: Str<'a>,
        scan_type: Str<'a>,
        scan_result: Str<'a>,
    },
    ScancodeWaitmsg {
        key: Str<'a>,
        scan_type: Str<'a>,
        scan_result: Str<'a>,
    },
    PicSysphoto {
        key: Str<'a>,
        pic_md5s: Vec<Str<'a>>,
    },
    PicPhotoOrAlbum {
        key: Str<'a>,
        pic_md5s: Vec<Str<'a>>,
    },
    PicWeixin {
        key: Str<'a>,
        pic_md5s: Vec<Str<'a>>,
    },
    LocationSelect {
        key: Str<'a>,
        location_x: Str<'a>,
        location_y: Str<'a>,
        scale: Str<'a>,
        label: Str<'a>,
        poiname: Str<'a>,
    },
    ViewMiniprogram {
        key: Str<'a>,
        menu_id: Option<Str<'a>>,
    },
    /// Note WeChat spells this event's id `MsgID`.
    TemplateSendJobFinish {
        msg_id: Option<u64>,
        status: Str<'a>,
    },
    MassSendJobFinish {
        msg_id: Option<u64>,
        status: Str<'a>,
    },
    PublishJobFinish {
        publish_id: Str<'a>,
        publish_status: Option<Str<'a>>,
    },
    /// An `Event` this version does not know, as sent.
    Unknown {
        event: Str<'a>,
    },
}

impl<'a> Message<'a> {
    /// Parse a message body. Refuses DOCTYPE and entity declarations, undefined entities,
    /// invalid UTF-8, nesting deeper than [`MAX_DEPTH`], and missing or malformed
    /// common fields; accepts any unknown type or field.
    pub fn parse(body: &'a [u8]) -> Result<Message<'a>, Rejection> {
        let fields = parse_fields(body)?;
        Message::from_fields(fields)
    }

    /// Build the typed view from parsed fields. Only what a reply needs can refuse a
    /// message: ToUserName, FromUserName and MsgType missing (or not text). Any other
    /// field that is absent or does not parse as its type is `None` or empty in the
    /// typed view, and stays in `fields` as sent.
    pub fn from_fields(fields: Vec<Field<'a>>) -> Result<Message<'a>, Rejection> {
        let f = Lookup(&fields);
        // `f` borrows `fields`; the typed values are cheap clones of borrowed text.
        let to_user_name = f.required("ToUserName")?;
        let from_user_name = f.required("FromUserName")?;
        let create_time = f.number("CreateTime");
        let msg_type = f.required("MsgType")?;
        let kind = f.kind(&msg_type);
        Ok(Message {
            to_user_name,
            from_user_name,
            create_time,
            msg_type,
            kind,
            fields,
        })
    }

    /// The text of a top-level field, if present and textual.
    pub fn field(&self, name: &str) -> Option<&str> {
        Lookup(&self.fields).text(name)
    }

    /// The key that identifies this message across WeChat's retries: MsgId for
    /// messages; FromUserName + CreateTime + Event + EventKey for events (which have no
    /// MsgId, or one that names something else, like TEMPLATESENDJOBFINISH's MsgID).
    ///
    /// The part that grows with time comes first (MsgId, or CreateTime), the follower
    /// after it: a store that keeps keys in order (SQLite's B-tree) then adds each new
    /// message next to the last ones instead of at a random place.
    pub fn retry_key(&self) -> String {
        let from = &self.from_user_name;
        let mut key = String::with_capacity(from.len() + 48);
        let mut push = |parts: &[&str]| {
            for p in parts {
                key.push_str(p);
            }
        };
        let time = self.field("CreateTime").unwrap_or("").trim();
        match (&self.kind, self.field("MsgId")) {
            (Kind::Event(_), _) => push(&[
                "e:",
                time,
                ":",
                from,
                ":",
                self.field("Event").unwrap_or("").trim(),
                ":",
                self.field("EventKey").unwrap_or(""),
            ]),
            (_, Some(id)) if !id.trim().is_empty() => push(&["m:", id.trim(), ":", from]),
            _ => push(&["u:", time, ":", from, ":", &self.msg_type]),
        }
        key
    }

    /// A short name of the type for logs: `text`, `image`, `event:CLICK`, ...
    pub fn type_label(&self) -> Cow<'static, str> {
        match &self.kind {
            Kind::Event(_) => Cow::Owned(format!("event:{}", self.field("Event").unwrap_or(""))),
            _ => match KNOWN_MSG_TYPES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&self.msg_type))
            {
                Some(k) => Cow::Borrowed(k),
                None => Cow::Owned(self.msg_type.to_string()),
            },
        }
    }
}

/// The fields as a JSON object with WeChat's names (`MsgType`, `Content`, ...): text as
/// strings, child elements as objects, repeated children (`PicList/item`) as arrays.
pub fn to_json(fields: &[Field<'_>]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, text: &str) {
        // Escaping a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
    fn value(out: &mut Vec<u8>, v: &Value<'_>) {
        match v {
            Value::Text(t) => string(out, t),
            Value::Children(c) => object(out, c),
        }
    }
    // Members in name order (as a JSON map orders them), written straight out.
    fn object(out: &mut Vec<u8>, fields: &[Field<'_>]) {
        let mut names: Vec<&str> = Vec::with_capacity(fields.len());
        for f in fields {
            if !names.contains(&f.name) {
                names.push(f.name);
            }
        }
        names.sort_unstable();
        out.push(b'{');
        for (n, name) in names.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            string(out, name);
            out.push(b':');
            let mut same = fields.iter().filter(|f| f.name == *name);
            // `item` is how WeChat's XML writes a list element (PicList/item,
            // Articles/item, ResultList/item, ...): an array even with one item, so a
            // program sees one shape. Other repeated elements become arrays too.
            let count = same.clone().count();
            if count == 1 && *name != "item" {
                if let Some(f) = same.next() {
                    value(out, &f.value);
                }
                continue;
            }
            out.push(b'[');
            for (k, f) in same.enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                value(out, &f.value);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    let mut out = Vec::with_capacity(256);
    object(&mut out, fields);
    out
}

/// Parse an XML document into the children of its root element. Names and plain text
/// borrow from `body`.
///
/// Whitespace around CDATA is formatting, not content: `<MsgType> <![CDATA[event]]>
/// </MsgType>` (as WeChat's card-event documentation writes it) is `event`, while the
/// inside of a CDATA section is kept exactly. Text without CDATA is trimmed of
/// surrounding whitespace, as other SDKs read it. Text beside child elements (a stray
/// text node) is dropped.
pub fn parse_fields(body: &[u8]) -> Result<Vec<Field<'_>>, Rejection> {
    let bad = |why: String| Rejection::MalformedXml(why);
    // Validate UTF-8 once; every name and text below is then a slice of `text`.
    let text = utf8(body)?;
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Open<'_>> = Vec::with_capacity(4);
    let mut root: Option<Vec<Field<'_>>> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| bad(format!("at byte {}: {e}", reader.error_position())))?;
        match event {
            XmlEvent::Start(start) => {
                if root.is_some() {
                    return Err(bad("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(bad(format!("nesting deeper than {MAX_DEPTH}")));
                }
                let name = slice_of(text, start.name().as_ref())?;
                // The root of a WeChat message has about a dozen children.
                let children = if stack.is_empty() {
                    Vec::with_capacity(12)
                } else {
                    Vec::new()
                };
                stack.push(Open::new(name, children));
            }
            XmlEvent::Empty(start) => {
                let name = slice_of(text, start.name().as_ref())?;
                match stack.last_mut() {
                    Some(open) => open.children.push(Field {
                        name,
                        value: Value::Text(Cow::Borrowed("")),
                    }),
                    None if root.is_none() => root = Some(Vec::new()),
                    None => return Err(bad("content after the root element".into())),
                }
            }
            XmlEvent::End(_) => {
                // check_end_names guarantees a matching open element.
                let Some(open) = stack.pop() else {
                    return Err(bad("unexpected end tag".into()));
                };
                let name = open.name;
                let value = open.finish();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Field { name, value }),
                    None => {
                        root = Some(match value {
                            Value::Children(children) => children,
                            Value::Text(_) => Vec::new(),
                        })
                    }
                }
            }
            XmlEvent::Text(t) => {
                let piece = slice_of(text, &t)?;
                match stack.last_mut() {
                    Some(open) => open.text(piece),
                    None if piece.trim_ascii().is_empty() => {}
                    None => return Err(bad("text outside the root element".into())),
                }
            }
            XmlEvent::CData(cdata) => {
                let piece = slice_of(text, &cdata)?;
                match stack.last_mut() {
                    Some(open) => open.cdata(piece),
                    None => return Err(bad("CDATA outside the root element".into())),
                }
            }
            XmlEvent::GeneralRef(reference) => {
                let ch = match reference.resolve_char_ref() {
                    Ok(Some(ch)) => ch,
                    Ok(None) => match &*reference as &[u8] {
                        b"amp" => '&',
                        b"lt" => '<',
                        b"gt" => '>',
                        b"quot" => '"',
                        b"apos" => '\'',
                        other => {
                            return Err(bad(format!(
                                "undefined entity &{};",
                                String::from_utf8_lossy(other)
                            )))
                        }
                    },
                    Err(e) => return Err(bad(format!("character reference: {e}"))),
                };
                match stack.last_mut() {
                    Some(open) => open.char(ch),
                    None => return Err(bad("reference outside the root element".into())),
                }
            }
            XmlEvent::DocType(_) => return Err(bad("DOCTYPE is not allowed".into())),
            XmlEvent::Decl(_) | XmlEvent::PI(_) | XmlEvent::Comment(_) => {}
            XmlEvent::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(bad("unexpected end of document".into()));
    }
    root.ok_or_else(|| bad("no root element".into()))
}

/// An element being read: its name, its text so far, its children so far.
struct Open<'a> {
    name: &'a str,
    text: Cow<'a, str>,
    /// Whitespace-only text not yet known to be content: dropped if a CDATA section
    /// comes (it was formatting), kept if other text follows.
    pending: Cow<'a, str>,
    /// A CDATA section was seen: whitespace around it is formatting.
    cdata: bool,
    children: Vec<Field<'a>>,
}

impl<'a> Open<'a> {
    fn new(name: &'a str, children: Vec<Field<'a>>) -> Open<'a> {
        Open {
            name,
            text: Cow::Borrowed(""),
            pending: Cow::Borrowed(""),
            cdata: false,
            children,
        }
    }

    fn text(&mut self, piece: &'a str) {
        if piece.trim_ascii().is_empty() {
            if !self.cdata {
                append(&mut self.pending, piece);
            }
            return;
        }
        self.take_pending();
        append(&mut self.text, piece);
    }

    fn cdata(&mut self, piece: &'a str) {
        self.cdata = true;
        self.pending = Cow::Borrowed("");
        append(&mut self.text, piece);
    }

    fn char(&mut self, ch: char) {
        self.take_pending();
        self.text.to_mut().push(ch);
    }

    fn take_pending(&mut self) {
        if !self.pending.is_empty() {
            let pending = std::mem::replace(&mut self.pending, Cow::Borrowed(""));
            match pending {
                Cow::Borrowed(p) => append(&mut self.text, p),
                Cow::Owned(p) => self.text.to_mut().push_str(&p),
            }
        }
    }

    /// The element's value: its children, or its text (trimmed when it had no CDATA).
    fn finish(self) -> Value<'a> {
        if !self.children.is_empty() {
            return Value::Children(self.children);
        }
        if self.cdata {
            return Value::Text(self.text);
        }
        Value::Text(match self.text {
            Cow::Borrowed(t) => Cow::Borrowed(t.trim_ascii()),
            Cow::Owned(t) if t.trim_ascii().len() == t.len() => Cow::Owned(t),
            Cow::Owned(t) => Cow::Owned(t.trim_ascii().to_owned()),
        })
    }
}

/// `text` without surrounding whitespace, staying borrowed when it was.
fn trimmed(text: Str<'_>) -> Str<'_> {
    match text {
        Cow::Borrowed(t) => Cow::Borrowed(t.trim()),
        Cow::Owned(t) if t.trim().len() == t.len() => Cow::Owned(t),
        Cow::Owned(t) => Cow::Owned(t.trim().to_owned()),
    }
}

/// `text` without `prefix`, staying borrowed when it was.
fn strip_prefix<'a>(text: Str<'a>, prefix: &str) -> Option<Str<'a>> {
    match text {
        Cow::Borrowed(t) => t.strip_prefix(prefix).map(Cow::Borrowed),
        Cow::Owned(t) => t
            .strip_prefix(prefix)
            .map(|rest| Cow::Owned(rest.to_owned())),
    }
}

/// The part of `text` that `part` is. quick-xml's slice reader hands out names and text
/// that point into the body, but only with the event's lifetime; finding the same bytes
/// in `text` by address (safe arithmetic, bounds- and boundary-checked) keeps the body's
/// lifetime and skips validating UTF-8 again.
fn slice_of<'a>(text: &'a str, part: &[u8]) -> Result<&'a str, Rejection> {
    let offset = (part.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    match text.get(offset..offset.wrapping_add(part.len())) {
        Some(same) if same.as_ptr() == part.as_ptr() => Ok(same),
        _ => Err(Rejection::MalformedXml("text outside the body".into())),
    }
}

/// Add a text piece to an element's text, allocating only when there are several.
fn append<'a>(buf: &mut Cow<'a, str>, piece: &'a str) {
    if buf.is_empty() {
        *buf = Cow::Borrowed(piece);
    } else {
        buf.to_mut().push_str(piece);
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(bytes).map_err(|_| Rejection::MalformedXml("invalid UTF-8".into()))
}

/// Field access by name over a list of fields (WeChat's messages have ~10 fields, so a
/// linear scan beats a map).
struct Lookup<'f, 'a>(&'f [Field<'a>]);

impl<'f, 'a> Lookup<'f, 'a> {
    fn get(&self, name: &str) -> Option<&'f Value<'a>> {
        self.0.iter().find(|f| f.name == name).map(|f| &f.value)
    }

    fn text(&self, name: &str) -> Option<&'f str> {
        match self.get(name)? {
            Value::Text(s) => Some(s),
            Value::Children(_) => None,
        }
    }

    /// The text as a cheap clone (free when it borrows the body).
    fn optional(&self, name: &str) -> Option<Str<'a>> {
        match self.get(name)? {
            Value::Text(s) => Some(s.clone()),
            Value::Children(_) => None,
        }
    }

    /// A field a reply needs, trimmed (it names someone or something, never text that
    /// could start or end with spaces).
    fn required(&self, name: &'static str) -> Result<Str<'a>, Rejection> {
        match self.get(name) {
            Some(Value::Text(s)) => Ok(trimmed(s.clone())),
            Some(Value::Children(_)) => Err(Rejection::BadField(name)),
            None => Err(Rejection::MissingField(name)),
        }
    }

    fn or_empty(&self, name: &str) -> Str<'a> {
        self.optional(name).unwrap_or(Cow::Borrowed(""))
    }

    /// A number, or `None` when absent or not a number (the raw text stays).
    fn number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.text(name)?.trim().parse().ok()
    }

    fn child(&self, name: &str) -> Lookup<'f, 'a> {
        match self.get(name) {
            Some(Value::Children(children)) => Lookup(children),
            _ => Lookup(&[]),
        }
    }

    fn pic_md5s(&self) -> Vec<Str<'a>> {
        let list = self.child("SendPicsInfo");
        let Some(Value::Children(items)) = list.get("PicList") else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match &item.value {
                Value::Children(c) => Lookup(c).optional("PicMd5Sum"),
                Value::Text(_) => None,
            })
            .collect()
    }

    fn kind(&self, msg_type: &str) -> Kind<'a> {
        let msg_id = || self.number::<u64>("MsgId");
        // Type names compare without regard to case, here and in the rules.
        let lower = msg_type.to_ascii_lowercase();
        match lower.as_str() {
            "text" => Kind::Text {
                content: self.or_empty("Content"),
                msg_id: msg_id(),
            },
            "image" => Kind::Image {
                pic_url: self.or_empty("PicUrl"),
                media_id: self.or_empty("MediaId"),
                msg_id: msg_id(),
            },
            "voice" => Kind::Voice {
                media_id: self.or_empty("MediaId"),
                format: self.or_empty("Format"),
                recognition: self.optional("Recognition"),
                msg_id: msg_id(),
            },
            "video" => Kind::Video {
                media_id: self.or_empty("MediaId"),
                thumb_media_id: self.or_empty("ThumbMediaId"),
                msg_id: msg_id(),
            },
            "shortvideo" => Kind::ShortVideo {
                media_id: self.or_empty("MediaId"),
                thumb_media_id: self.or_empty("ThumbMediaId"),
                msg_id: msg_id(),
            },
            "location" => Kind::Location {
                location_x: self.number("Location_X"),
                location_y: self.number("Location_Y"),
                scale: self.number("Scale"),
                label: self.or_empty("Label"),
                msg_id: msg_id(),
            },
            "link" => Kind::Link {
                title: self.or_empty("Title"),
                description: self.or_empty("Description"),
                url: self.or_empty("Url"),
                msg_id: msg_id(),
            },
            "miniprogrampage" => Kind::MiniProgramPage {
                title: self.or_empty("Title"),
                app_id: self.or_empty("AppId"),
                page_path: self.or_empty("PagePath"),
                msg_id: msg_id(),
            },
            "event" => Kind::Event(self.event()),
            _ => Kind::Unknown,
        }
    }

    fn event(&self) -> Event<'a> {
        let event = trimmed(self.or_empty("Event"));
        let key = || self.or_empty("EventKey");
        let scan = || {
            let info = self.child("ScanCodeInfo");
            (
                key(),
                info.or_empty("ScanType"),
                info.or_empty("ScanResult"),
            )
        };
        let e = event.to_ascii_lowercase();
        match e.as_str() {
            "subscribe" => Event::Subscribe {
                scene: self
                    .optional("EventKey")
                    .and_then(|k| strip_prefix(k, "qrscene_")),
                ticket: self.optional("Ticket"),
            },
            "unsubscribe" => Event::Unsubscribe,
            "scan" => Event::Scan {
                scene: key(),
                ticket: self.optional("Ticket"),
            },
            "location" => Event::Location {
                latitude: self.number("Latitude"),
                longitude: self.number("Longitude"),
                precision: self.number("Precision"),
            },
            "click" => Event::Click { key: key() },
            "view" => Event::View {
                url: key(),
                menu_id: self.optional("MenuId"),
            },
            "scancode_push" => {
                let (key, scan_type, scan_result) = scan();
                Event::ScancodePush {
                    key,
                    scan_type,
                    scan_result,
                }
            }
            "scancode_waitmsg" => {
                let (key, scan_type, scan_result) = scan();
                Event::ScancodeWaitmsg {
                    key,
                    scan_type,
                    scan_result,
                }
            }
            "pic_sysphoto" => Event::PicSysphoto {
                key: key(),
                pic_md5s: self.pic_md5s(),
            },
            "pic_photo_or_album" => Event::PicPhotoOrAlbum {
                key: key(),
                pic_md5s: self.pic_md5s(),
            },
            "pic_weixin" => Event::PicWeixin {
                key: key(),
                pic_md5s: self.pic_md5s(),
            },
            "location_select" => {
                let info = self.child("SendLocationInfo");
                Event::LocationSelect {
                    key: key(),
                    location_x: info.or_empty("Location_X"),
                    location_y: info.or_empty("Location_Y"),
                    scale: info.or_empty("Scale"),
                    label: info.or_empty("Label"),
                    poiname: info.or_empty("Poiname"),
                }
            }
            "view_miniprogram" => Event::ViewMiniprogram {
                key: key(),
                menu_id: self.optional("MenuId"),
            },
            "templatesendjobfinish" => Event::TemplateSendJobFinish {
                msg_id: self.number("MsgID"),
                status: self.or_empty("Status"),
            },
            "masssendjobfinish" => Event::MassSendJobFinish {
                msg_id: self.number("MsgID"),
                status: self.or_empty("Status"),
            },
            "publishjobfinish" => {
                let info = self.child("PublishEventInfo");
                Event::PublishJobFinish {
                    publish_id: info.or_empty("publish_id"),
                    publish_status: info.optional("publish_status"),
                }
            }
            _ => Event::Unknown { event },
        }
    }
}
