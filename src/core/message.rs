//! Inbound messages and events: the XML body parsed (quick-xml) into typed values, with
//! every element also kept raw so unknown types and fields are never lost.

use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

use super::error::Rejection;

/// Deepest element nesting accepted (WeChat's deepest is 4: xml/SendPicsInfo/PicList/item).
pub const MAX_DEPTH: usize = 16;

/// One XML element: its name and either its text or its child elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: Value,
}

/// An element's content. Whitespace between child elements is dropped; text is kept
/// exactly (CDATA and escaped text alike), with no end-of-line normalisation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Children(Vec<Field>),
}

/// A message or event as WeChat sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The Official Account's original id (`gh_...`).
    pub to_user_name: String,
    /// The follower's OpenID.
    pub from_user_name: String,
    pub create_time: u64,
    /// `MsgType` exactly as sent.
    pub msg_type: String,
    /// The typed view of the message.
    pub kind: Kind,
    /// Every child of the root element, in document order (the raw view).
    pub fields: Vec<Field>,
}

/// A message's type and the values specific to it (PROTOCOL.md §3).
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Text {
        content: String,
        msg_id: Option<u64>,
    },
    Image {
        pic_url: String,
        media_id: String,
        msg_id: Option<u64>,
    },
    Voice {
        media_id: String,
        format: String,
        recognition: Option<String>,
        msg_id: Option<u64>,
    },
    Video {
        media_id: String,
        thumb_media_id: String,
        msg_id: Option<u64>,
    },
    ShortVideo {
        media_id: String,
        thumb_media_id: String,
        msg_id: Option<u64>,
    },
    Location {
        location_x: f64,
        location_y: f64,
        scale: f64,
        label: String,
        msg_id: Option<u64>,
    },
    Link {
        title: String,
        description: String,
        url: String,
        msg_id: Option<u64>,
    },
    MiniProgramPage {
        title: String,
        app_id: String,
        page_path: String,
        msg_id: Option<u64>,
    },
    Event(Event),
    /// A `MsgType` this version does not know; its fields are in `Message::fields`.
    Unknown,
}

/// `MsgType=event`: the `Event` value and its specific fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Follow. `scene` is the EventKey without its `qrscene_` prefix when the follower
    /// came through a parameter QR code.
    Subscribe {
        scene: Option<String>,
        ticket: Option<String>,
    },
    Unsubscribe,
    /// A follower scanned a parameter QR code; `scene` is the EventKey.
    Scan {
        scene: String,
        ticket: Option<String>,
    },
    Location {
        latitude: f64,
        longitude: f64,
        precision: f64,
    },
    Click {
        key: String,
    },
    View {
        url: String,
        menu_id: Option<String>,
    },
    ScancodePush {
        key: String,
        scan_type: String,
        scan_result: String,
    },
    ScancodeWaitmsg {
        key: String,
        scan_type: String,
        scan_result: String,
    },
    PicSysphoto {
        key: String,
        pic_md5s: Vec<String>,
    },
    PicPhotoOrAlbum {
        key: String,
        pic_md5s: Vec<String>,
    },
    PicWeixin {
        key: String,
        pic_md5s: Vec<String>,
    },
    LocationSelect {
        key: String,
        location_x: String,
        location_y: String,
        scale: String,
        label: String,
        poiname: String,
    },
    ViewMiniprogram {
        key: String,
        menu_id: Option<String>,
    },
    /// Note WeChat spells this event's id `MsgID`.
    TemplateSendJobFinish {
        msg_id: Option<u64>,
        status: String,
    },
    MassSendJobFinish {
        msg_id: Option<u64>,
        status: String,
    },
    PublishJobFinish {
        publish_id: String,
        publish_status: Option<String>,
    },
    /// An `Event` this version does not know, as sent.
    Unknown {
        event: String,
    },
}

impl Message {
    /// Parse a message body. Refuses DOCTYPE and entity declarations, undefined entities,
    /// invalid UTF-8, nesting deeper than [`MAX_DEPTH`], and missing or malformed
    /// common fields; accepts any unknown type or field.
    pub fn parse(body: &[u8]) -> Result<Message, Rejection> {
        let fields = parse_fields(body)?;
        Message::from_fields(fields)
    }

    /// Build the typed view from parsed fields.
    pub fn from_fields(fields: Vec<Field>) -> Result<Message, Rejection> {
        let f = Lookup(&fields);
        let to_user_name = f.required("ToUserName")?;
        let from_user_name = f.required("FromUserName")?;
        let create_time = f
            .text("CreateTime")
            .ok_or(Rejection::MissingField("CreateTime"))?
            .trim()
            .parse::<u64>()
            .map_err(|_| Rejection::BadField("CreateTime"))?;
        let msg_type = f.required("MsgType")?;
        let kind = f.kind(&msg_type)?;
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

    /// A short name of the type for logs: `text`, `image`, `event:CLICK`, ...
    pub fn type_label(&self) -> String {
        match &self.kind {
            Kind::Event(_) => format!("event:{}", self.field("Event").unwrap_or("")),
            _ => self.msg_type.clone(),
        }
    }
}

/// Parse an XML document into the children of its root element.
pub fn parse_fields(body: &[u8]) -> Result<Vec<Field>, Rejection> {
    let bad = |why: String| Rejection::MalformedXml(why);
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_end_names = true;
    // Stack of open elements: (name, text so far, children so far).
    let mut stack: Vec<(String, String, Vec<Field>)> = Vec::new();
    let mut root: Option<Vec<Field>> = None;
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
                let name = utf8(start.name().as_ref())?.to_owned();
                stack.push((name, String::new(), Vec::new()));
            }
            XmlEvent::Empty(start) => {
                let name = utf8(start.name().as_ref())?.to_owned();
                match stack.last_mut() {
                    Some((_, _, children)) => children.push(Field {
                        name,
                        value: Value::Text(String::new()),
                    }),
                    None if root.is_none() => root = Some(Vec::new()),
                    None => return Err(bad("content after the root element".into())),
                }
            }
            XmlEvent::End(_) => {
                // check_end_names guarantees the stack is not empty here.
                let Some((name, text, children)) = stack.pop() else {
                    return Err(bad("unexpected end tag".into()));
                };
                let value = if children.is_empty() {
                    Value::Text(text)
                } else {
                    Value::Children(children)
                };
                match stack.last_mut() {
                    Some((_, _, siblings)) => siblings.push(Field { name, value }),
                    None => {
                        root = Some(match value {
                            Value::Children(children) => children,
                            Value::Text(_) => Vec::new(),
                        })
                    }
                }
            }
            XmlEvent::Text(text) => {
                let s = text.decode().map_err(|e| bad(format!("text: {e}")))?;
                match stack.last_mut() {
                    Some((_, buf, _)) => buf.push_str(&s),
                    None if s.trim_ascii().is_empty() => {}
                    None => return Err(bad("text outside the root element".into())),
                }
            }
            XmlEvent::CData(cdata) => {
                let s = utf8(&cdata)?;
                match stack.last_mut() {
                    Some((_, buf, _)) => buf.push_str(s),
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
                    Some((_, buf, _)) => buf.push(ch),
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

fn utf8(bytes: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(bytes).map_err(|_| Rejection::MalformedXml("invalid UTF-8".into()))
}

/// Field access by name over a list of fields (WeChat's messages have ~10 fields, so a
/// linear scan beats a map).
struct Lookup<'a>(&'a [Field]);

impl<'a> Lookup<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.iter().find(|f| f.name == name).map(|f| &f.value)
    }

    fn text(&self, name: &str) -> Option<&'a str> {
        match self.get(name)? {
            Value::Text(s) => Some(s),
            Value::Children(_) => None,
        }
    }

    fn required(&self, name: &'static str) -> Result<String, Rejection> {
        match self.get(name) {
            Some(Value::Text(s)) => Ok(s.clone()),
            Some(Value::Children(_)) => Err(Rejection::BadField(name)),
            None => Err(Rejection::MissingField(name)),
        }
    }

    fn or_empty(&self, name: &str) -> String {
        self.text(name).unwrap_or("").to_owned()
    }

    fn optional(&self, name: &str) -> Option<String> {
        self.text(name).map(str::to_owned)
    }

    fn number<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, Rejection> {
        match self.text(name) {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Rejection::BadField(name)),
        }
    }

    fn float(&self, name: &'static str) -> Result<f64, Rejection> {
        Ok(self.number::<f64>(name)?.unwrap_or(0.0))
    }

    fn child(&self, name: &str) -> Lookup<'a> {
        match self.get(name) {
            Some(Value::Children(children)) => Lookup(children),
            _ => Lookup(&[]),
        }
    }

    fn pic_md5s(&self) -> Vec<String> {
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

    fn kind(&self, msg_type: &str) -> Result<Kind, Rejection> {
        let msg_id = || self.number::<u64>("MsgId");
        Ok(match msg_type {
            "text" => Kind::Text {
                content: self.required("Content")?,
                msg_id: msg_id()?,
            },
            "image" => Kind::Image {
                pic_url: self.or_empty("PicUrl"),
                media_id: self.or_empty("MediaId"),
                msg_id: msg_id()?,
            },
            "voice" => Kind::Voice {
                media_id: self.or_empty("MediaId"),
                format: self.or_empty("Format"),
                recognition: self.optional("Recognition"),
                msg_id: msg_id()?,
            },
            "video" => Kind::Video {
                media_id: self.or_empty("MediaId"),
                thumb_media_id: self.or_empty("ThumbMediaId"),
                msg_id: msg_id()?,
            },
            "shortvideo" => Kind::ShortVideo {
                media_id: self.or_empty("MediaId"),
                thumb_media_id: self.or_empty("ThumbMediaId"),
                msg_id: msg_id()?,
            },
            "location" => Kind::Location {
                location_x: self.float("Location_X")?,
                location_y: self.float("Location_Y")?,
                scale: self.float("Scale")?,
                label: self.or_empty("Label"),
                msg_id: msg_id()?,
            },
            "link" => Kind::Link {
                title: self.or_empty("Title"),
                description: self.or_empty("Description"),
                url: self.or_empty("Url"),
                msg_id: msg_id()?,
            },
            "miniprogrampage" => Kind::MiniProgramPage {
                title: self.or_empty("Title"),
                app_id: self.or_empty("AppId"),
                page_path: self.or_empty("PagePath"),
                msg_id: msg_id()?,
            },
            "event" => Kind::Event(self.event()?),
            _ => Kind::Unknown,
        })
    }

    fn event(&self) -> Result<Event, Rejection> {
        let event = self.required("Event")?;
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
        Ok(match e.as_str() {
            "subscribe" => Event::Subscribe {
                scene: self
                    .text("EventKey")
                    .and_then(|k| k.strip_prefix("qrscene_"))
                    .map(str::to_owned),
                ticket: self.optional("Ticket"),
            },
            "unsubscribe" => Event::Unsubscribe,
            "scan" => Event::Scan {
                scene: key(),
                ticket: self.optional("Ticket"),
            },
            "location" => Event::Location {
                latitude: self.float("Latitude")?,
                longitude: self.float("Longitude")?,
                precision: self.float("Precision")?,
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
                msg_id: self.number("MsgID")?,
                status: self.or_empty("Status"),
            },
            "masssendjobfinish" => Event::MassSendJobFinish {
                msg_id: self.number("MsgID")?,
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
        })
    }
}
