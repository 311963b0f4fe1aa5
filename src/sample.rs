//! Messages and signed requests as WeChat sends them: for `sign`, the tests and the
//! benchmarks (one builder, so they all send what WeChat sends).

use crate::core::crypto;
use crate::core::signature::sign;
use crate::core::Crypto;

/// `signature=..&timestamp=..&nonce=..` for this token.
pub fn signed_query(token: &str, timestamp: u64, nonce: &str) -> String {
    let ts = timestamp.to_string();
    let signature = sign(&mut [token.as_bytes(), ts.as_bytes(), nonce.as_bytes()]);
    let signature = String::from_utf8_lossy(&signature).into_owned();
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("signature", &signature)
        .append_pair("timestamp", &ts)
        .append_pair("nonce", nonce);
    q.finish()
}

/// A text message as WeChat sends it, with a MsgId derived from its other values (the
/// same message twice is a retry; different content is a different message).
pub fn text(to: &str, from: &str, create_time: u64, content: &str) -> String {
    // FNV-1a over the values: stable, and distinct for distinct messages in practice.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in from
        .bytes()
        .chain(content.bytes())
        .chain(create_time.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    text_with_id(to, from, create_time, content, h >> 8)
}

/// A text message as WeChat sends it, with this MsgId.
pub fn text_with_id(to: &str, from: &str, create_time: u64, content: &str, msg_id: u64) -> String {
    let mut out = head(to, from, create_time, "text");
    field(&mut out, "Content", content);
    // As WeChat sends it: a bare number, no CDATA.
    out.extend_from_slice(format!("<MsgId>{msg_id}</MsgId></xml>").as_bytes());
    String::from_utf8_lossy(&out).into_owned()
}

/// An event as WeChat sends it.
pub fn event(to: &str, from: &str, create_time: u64, event: &str, key: Option<&str>) -> String {
    let mut out = head(to, from, create_time, "event");
    field(&mut out, "Event", event);
    if let Some(key) = key {
        field(&mut out, "EventKey", key);
    }
    out.extend_from_slice(b"</xml>");
    String::from_utf8_lossy(&out).into_owned()
}

/// The fields every message starts with.
fn head(to: &str, from: &str, create_time: u64, msg_type: &str) -> Vec<u8> {
    let mut out = b"<xml>".to_vec();
    field(&mut out, "ToUserName", to);
    field(&mut out, "FromUserName", from);
    out.extend_from_slice(format!("<CreateTime>{create_time}</CreateTime>").as_bytes());
    field(&mut out, "MsgType", msg_type);
    out
}

/// `<name><![CDATA[text]]></name>`, CDATA-safe.
fn field(out: &mut Vec<u8>, name: &str, text: &str) {
    out.extend_from_slice(format!("<{name}>").as_bytes());
    crate::core::reply::cdata(out, text);
    out.extend_from_slice(format!("</{name}>").as_bytes());
}

/// A signed request: its query string (without `?`) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// `signature=..&timestamp=..&nonce=..` and, when encrypted, `encrypt_type=aes&msg_signature=..`.
    pub query: String,
    /// The body: the message XML, or its `<Encrypt>` envelope.
    pub body: String,
}

/// An encrypted (safe-mode) request carrying `message`: the envelope WeChat sends
/// (`ToUserName` and `Encrypt`) and the query with `encrypt_type=aes` and
/// `msg_signature`. `random` is the frame's 16-byte prefix.
pub fn encrypted_request(
    token: &str,
    crypto: &Crypto,
    to: &str,
    message: &str,
    timestamp: u64,
    nonce: &str,
    random: &[u8; 16],
) -> SignedRequest {
    let encrypt = crypto::encrypt(&crypto.key, &crypto.appid, message.as_bytes(), random);
    let mut digits = itoa::Buffer::new();
    let ts = digits.format(timestamp);
    let msg_signature = sign(&mut [
        token.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
        encrypt.as_bytes(),
    ]);
    let mut query = signed_query(token, timestamp, nonce);
    query.push_str("&encrypt_type=aes&msg_signature=");
    query.push_str(&String::from_utf8_lossy(&msg_signature));
    let mut body = b"<xml>".to_vec();
    field(&mut body, "ToUserName", to);
    field(&mut body, "Encrypt", &encrypt);
    body.extend_from_slice(b"</xml>");
    SignedRequest {
        query,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
