//! The sans-IO core: a request's method, query and body in, a response out. No sockets,
//! clock, environment or randomness inside: `now` and the random source are arguments.

pub mod crypto;
pub mod error;
pub mod late;
pub mod message;
pub mod query;
pub mod reply;
pub mod rules;
pub mod signature;

use std::sync::Arc;

use rand_core::RngCore;

use crypto::{AesKey, CryptoError};
pub use error::Rejection;
use message::Message;
use query::CallbackQuery;
use reply::Reply;
use rules::{Decision, Rules};
use signature::Token;

/// A message's type for logs (`text`, `event:CLICK`, ...): static for the known ones.
pub type MsgTypeLabel = std::borrow::Cow<'static, str>;

/// Content type of reply XML (plain or encrypted envelope).
pub const REPLY_CONTENT_TYPE: &str = "application/xml; charset=utf-8";

/// How the account's messages travel (admin panel: 明文 / 兼容 / 安全模式).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 明文: plaintext only.
    Plain,
    /// 兼容: plaintext or encrypted; each request is answered in the form it came in.
    Compat,
    /// 安全: encrypted only; a plaintext POST is refused.
    Safe,
}

/// The account's identity and secrets, parsed at config load.
#[derive(Debug, Clone)]
pub struct Account {
    /// The Token from the admin panel: signs every request.
    pub token: Token,
    /// The AppID: every encrypted message ends with it.
    pub appid: Option<String>,
    /// How messages travel.
    pub mode: Mode,
    /// Present when an `encoding_aes_key` is configured (required in compat and safe).
    pub crypto: Option<Crypto>,
}

/// What message encryption needs: the key, the previous key during a rotation, and
/// the AppID every encrypted message must end with.
#[derive(Debug, Clone)]
pub struct Crypto {
    /// The current EncodingAESKey.
    pub key: AesKey,
    /// Tried when the current key fails (the docs recommend it during key rotation).
    pub previous_key: Option<AesKey>,
    /// The AppID every decrypted frame must end with.
    pub appid: String,
}

/// Everything the core needs to answer: the account, the rules, the freshness window.
#[derive(Debug, Clone)]
pub struct Responder {
    /// The account: token, mode and keys.
    pub account: Account,
    /// The reply rules and the default.
    pub rules: Rules,
    /// Refuse requests whose signed timestamp is further than this from `now`, in
    /// seconds; 0 turns the check off.
    pub timestamp_window: u64,
    /// Keep every message's JSON (for the archive), not only a program's.
    pub keep_json: bool,
    /// What happens to answers not ready in time (`[late]`).
    pub late: late::Late,
}

/// One HTTP request as the FastCGI server or the CGI adapter saw it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `REQUEST_METHOD`.
    pub method: &'a str,
    /// `QUERY_STRING`, without the `?`.
    pub query: &'a str,
    /// The request body (FastCGI STDIN / CGI stdin).
    pub body: &'a [u8],
}

/// The answer: status, content type and body, plus what happened, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// What happened, for the log.
    pub outcome: Outcome,
}

/// What the core did with a request, for the request log.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A valid GET handshake: echostr echoed.
    Handshake,
    /// A message answered with a reply chosen by `rule`.
    Reply {
        /// The message's type label (`text`, `event:CLICK`, ...).
        msg_type: MsgTypeLabel,
        /// The rule that chose the reply (`default` for the default).
        rule: Arc<str>,
        /// The reply's MsgType.
        reply_type: &'static str,
        /// How the answer came about.
        via: Via,
    },
    /// A message with no reply: body `success`.
    Success {
        /// The message's type label.
        msg_type: MsgTypeLabel,
        /// How the answer came about.
        via: Via,
    },
    /// Refused; the cause is logged, the client sees its short reason.
    Rejected(Rejection),
    /// The status page or the ping answer (`[server] status_path`, `ping_path`).
    Status,
}

impl Outcome {
    /// A short label for the log's `outcome=` field.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Handshake => "handshake",
            Outcome::Reply { .. } => "reply",
            Outcome::Success { .. } => "success",
            Outcome::Rejected(r) => r.code(),
            Outcome::Status => "status",
        }
    }

    /// The message type label, when a message was parsed.
    pub fn msg_type(&self) -> &str {
        match self {
            Outcome::Reply { msg_type, .. } | Outcome::Success { msg_type, .. } => msg_type,
            _ => "-",
        }
    }
}

impl Response {
    /// The response for a refused request: its status and short reason, as text.
    pub fn rejected(rejection: Rejection) -> Response {
        let mut body = rejection.reason().as_bytes().to_vec();
        body.push(b'\n');
        Response {
            status: rejection.status(),
            content_type: "text/plain; charset=utf-8",
            body,
            outcome: Outcome::Rejected(rejection),
        }
    }

    /// Append the response as a CGI (and FastCGI STDOUT) response: `Status:`,
    /// `Content-Type:`, `Content-Length:`, then the body. The one writer both shells use.
    pub fn write_cgi(&self, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        out.reserve(96 + self.body.len());
        out.extend_from_slice(b"Status: ");
        out.extend_from_slice(digits.format(self.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(digits.format(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
    }

    /// The status page or the ping answer.
    pub fn status_page(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type,
            body,
            outcome: Outcome::Status,
        }
    }

    /// `success`: the message was received and gets no reply.
    pub fn success(msg_type: MsgTypeLabel, via: Via) -> Response {
        Response {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: b"success".to_vec(),
            outcome: Outcome::Success { msg_type, via },
        }
    }
}

/// The HTTP reason phrase of the statuses this program sends.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// How an answer came about, for the log's `via=` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A rule's (or the default's) configured reply; or no rule matched.
    Rule,
    /// A reply program's output.
    Program,
    /// The program failed or timed out; the rule's fallback (or `success`).
    Fallback,
    /// A retry of a message already answered (or being answered): the same answer.
    Retry,
    /// The reply budget ran out before the answer was ready: `success`.
    Deadline,
    /// Hold: an earlier attempt left unanswered; or the last attempt's `pending`
    /// reply, the answer kept for a pick-up.
    LateHold,
    /// A pick-up word delivered a waiting answer.
    Pickup,
    /// A pick-up word while the answer is still being made: `still_running`.
    StillRunning,
    /// Customer service: `success` at the budget, the answer pushed when ready.
    CustomerService,
    /// A retry of a message whose answer went (or goes) out late: `success`.
    LateDone,
}

impl Via {
    /// Every `Via`, in a fixed order (the status page lists them so).
    pub const ALL: [Via; 10] = [
        Via::Rule,
        Via::Program,
        Via::Fallback,
        Via::Retry,
        Via::Deadline,
        Via::LateHold,
        Via::Pickup,
        Via::StillRunning,
        Via::CustomerService,
        Via::LateDone,
    ];

    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            Via::Rule => "rule",
            Via::Program => "program",
            Via::Fallback => "fallback",
            Via::Retry => "retry",
            Via::Deadline => "deadline",
            Via::LateHold => "late_hold",
            Via::Pickup => "pickup",
            Via::StillRunning => "still_running",
            Via::CustomerService => "customer_service",
            Via::LateDone => "late_done",
        }
    }

    /// The `Via` of a [`Via::label`].
    pub fn from_label(label: &str) -> Option<Via> {
        Via::ALL.into_iter().find(|v| v.label() == label)
    }
}

/// The answer to one message, as the retry cache keeps it: the reply (none for
/// `success`), the rule that chose it and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The reply; `None` answers `success`.
    pub reply: Option<Arc<Reply>>,
    /// The rule that decided it.
    pub rule: Arc<str>,
    /// How it was decided.
    pub via: Via,
}

/// First half of answering: either a final response, or a parsed message whose answer
/// may need a program, the retry cache, or both.
#[derive(Debug)]
pub enum Step {
    /// The response is final (a refusal).
    Done(Response),
    /// A valid handshake: echo it once its signed query is bound (so that it cannot
    /// be replayed as a POST with a body).
    Handshake {
        /// The echo.
        response: Response,
        /// `timestamp:signature:nonce`, as for a message.
        signed_query: String,
    },
    /// A message to answer: the engine settles its answer and completes it.
    Message(Pending),
}

/// A parsed, verified message waiting for its answer.
#[derive(Debug)]
pub struct Pending {
    /// The retry key: MsgId for messages; FromUserName + CreateTime + Event + EventKey
    /// for events (docs/protocol.md §5).
    pub key: String,
    /// `timestamp:signature:nonce` of the request: the signature does not cover the
    /// body, so the engine binds this query to the first body it came with. The signed
    /// timestamp comes first, so that a store keeping keys in order adds new ones
    /// together.
    pub signed_query: String,
    /// The type label for logs.
    pub msg_type: MsgTypeLabel,
    /// What rendering the reply needs.
    pub context: ReplyContext,
    /// What the rules decided.
    pub decision: Decision,
    /// The message as a JSON object (WeChat's field names), for a reply program.
    pub json: Option<Vec<u8>>,
    /// Its late-answer plan, when `[late]` is on and a program decides it or it is a
    /// pick-up.
    pub late: Option<late::LatePlan>,
}

/// What rendering a reply for this message needs, owned (the message is gone by then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyContext {
    /// The follower: the reply's ToUserName.
    pub follower: String,
    /// The account: the reply's FromUserName.
    pub account: String,
    /// How the message came, and so how its reply goes.
    pub seal: Seal,
}

/// How a message was encrypted, which is how its reply is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// A plaintext message: a plaintext reply.
    Plain,
    /// Opened with the current `encoding_aes_key`: the reply is sealed with it.
    CurrentKey,
    /// Opened with `previous_encoding_aes_key` (during a key change): the reply is
    /// sealed with that key too.
    PreviousKey,
}

impl Answer {
    /// The answer as bytes, for a store shared by processes: JSON
    /// `{"reply": <reply as in the config> | null, "rule": "...", "via": "..."}`.
    pub fn encode(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Record<'a> {
            reply: Option<&'a Reply>,
            rule: &'a str,
            via: &'static str,
        }
        let record = Record {
            reply: self.reply.as_deref(),
            rule: &self.rule,
            via: self.via.label(),
        };
        serde_json::to_vec(&record).unwrap_or_default()
    }

    /// An answer [`Answer::encode`] wrote; `None` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Answer> {
        #[derive(serde::Deserialize)]
        struct Record {
            reply: Option<Reply>,
            rule: String,
            via: String,
        }
        let record: Record = serde_json::from_slice(bytes).ok()?;
        Some(Answer {
            reply: record.reply.map(Arc::new),
            rule: record.rule.into(),
            via: Via::from_label(&record.via)?,
        })
    }

    /// About the memory this answer holds, for a cache bounded in bytes: the reply's
    /// text and the rule name (shared `Arc`s are counted as if not shared).
    pub fn heap_bytes(&self) -> usize {
        let reply = self
            .reply
            .as_ref()
            .map_or(0, |r| std::mem::size_of::<Reply>() + r.heap_bytes());
        reply + self.rule.len()
    }

    /// The answer a decision gives without running anything, or `None` for a program.
    pub fn from_decision(decision: &Decision) -> Option<Answer> {
        match decision {
            Decision::Reply { rule, reply } => Some(Answer {
                reply: Some(reply.clone()),
                rule: rule.clone(),
                via: Via::Rule,
            }),
            Decision::Nothing => Some(Answer {
                reply: None,
                rule: Arc::from("-"),
                via: Via::Rule,
            }),
            Decision::Run { .. } => None,
        }
    }
}

/// `timestamp:signature:nonce` of a request, lower-case: what its signature covers,
/// and so what a replay of it repeats. The signed timestamp comes first, so that a
/// store keeping keys in order adds new ones together.
fn signed_query(query: &CallbackQuery<'_>) -> String {
    let (signature, timestamp, nonce) = query.signed_triple().unwrap_or_default();
    let mut signed = String::with_capacity(64);
    for part in [timestamp, ":", signature, ":", nonce] {
        signed.push_str(part);
    }
    signed.make_ascii_lowercase();
    signed
}

impl Responder {
    /// Answer one request without running programs (a program rule answers with its
    /// fallback) and without a retry cache: for tests, benchmarks and tools. The
    /// servers use [`Responder::prepare`] and [`Responder::complete`].
    pub fn handle(&self, request: &Request<'_>, now: u64, rng: &mut dyn RngCore) -> Response {
        match self.prepare(request, now, rng) {
            Step::Done(response) | Step::Handshake { response, .. } => response,
            Step::Message(pending) => {
                let answer = Answer::from_decision(&pending.decision).unwrap_or_else(|| {
                    match &pending.decision {
                        Decision::Run { rule, fallback, .. } => Answer {
                            reply: fallback.clone(),
                            rule: rule.clone(),
                            via: Via::Fallback,
                        },
                        _ => Answer {
                            reply: None,
                            rule: Arc::from("-"),
                            via: Via::Rule,
                        },
                    }
                });
                self.complete(&pending.context, pending.msg_type, &answer, now, rng)
            }
        }
    }

    /// Check, decrypt and parse a request, and decide its answer. `now` is the Unix
    /// time in seconds; `rng` picks among random replies.
    pub fn prepare(&self, request: &Request<'_>, now: u64, rng: &mut dyn RngCore) -> Step {
        match self.try_prepare(request, now, rng) {
            Ok(step) => step,
            Err(rejection) => Step::Done(Response::rejected(rejection)),
        }
    }

    /// Render (and seal, for an encrypted message) an answer. `now` is the reply's
    /// CreateTime; `rng` gives the encryption's random prefix and nonce.
    pub fn complete(
        &self,
        context: &ReplyContext,
        msg_type: MsgTypeLabel,
        answer: &Answer,
        now: u64,
        rng: &mut dyn RngCore,
    ) -> Response {
        let Some(reply) = &answer.reply else {
            return Response::success(msg_type, answer.via);
        };
        let mut body = Vec::with_capacity(256);
        reply.render(&context.follower, &context.account, now, &mut body);
        if let Some(crypto) = &self.account.crypto {
            let key = match (context.seal, &crypto.previous_key) {
                (Seal::Plain, _) => None,
                (Seal::PreviousKey, Some(old)) => Some(old),
                (Seal::CurrentKey | Seal::PreviousKey, _) => Some(&crypto.key),
            };
            if let Some(key) = key {
                body = self.seal(crypto, key, &body, now, rng);
            }
        }
        Response {
            status: 200,
            content_type: REPLY_CONTENT_TYPE,
            body,
            outcome: Outcome::Reply {
                msg_type,
                rule: answer.rule.clone(),
                reply_type: reply.msg_type(),
                via: answer.via,
            },
        }
    }

    fn try_prepare(
        &self,
        request: &Request<'_>,
        now: u64,
        rng: &mut dyn RngCore,
    ) -> Result<Step, Rejection> {
        let query = CallbackQuery::parse(request.query)?;
        match request.method {
            "GET" => {
                self.check_signature(&query)?;
                self.check_freshness(&query, now)?;
                let echostr = query
                    .echostr
                    .as_ref()
                    .ok_or(Rejection::MissingParam("echostr"))?;
                Ok(Step::Handshake {
                    response: Response {
                        status: 200,
                        content_type: "text/plain; charset=utf-8",
                        body: echostr.as_bytes().to_vec(),
                        outcome: Outcome::Handshake,
                    },
                    signed_query: signed_query(&query),
                })
            }
            "POST" => {
                self.check_signature(&query)?;
                self.check_freshness(&query, now)?;
                let encrypted = match query.encrypt_type.as_deref() {
                    None | Some("") | Some("raw") => false,
                    Some("aes") => true,
                    Some(other) => return Err(Rejection::UnknownEncryptType(other.to_owned())),
                };
                if !encrypted {
                    if self.account.mode == Mode::Safe {
                        return Err(Rejection::PlaintextInSafeMode);
                    }
                    let message = Message::parse(request.body)?;
                    return Ok(Step::Message(self.pending(
                        &query,
                        &message,
                        Seal::Plain,
                        rng,
                    )));
                }
                let crypto = self
                    .account
                    .crypto
                    .as_ref()
                    .ok_or(Rejection::EncryptedWithoutKey)?;
                let (inner, seal) = self.open_envelope(crypto, &query, request.body)?;
                let message = Message::parse(&inner).map_err(|e| {
                    let e = match e {
                        Rejection::MalformedXml(why) => {
                            Rejection::Crypto(CryptoError::Xml(format!("inner message: {why}")))
                        }
                        other => other,
                    };
                    Rejection::AfterMsgSignature(Box::new(e))
                })?;
                Ok(Step::Message(self.pending(&query, &message, seal, rng)))
            }
            other => Err(Rejection::MethodNotAllowed(other.to_owned())),
        }
    }

    /// Decide the answer for a parsed message and keep what completing it needs.
    fn pending(
        &self,
        query: &CallbackQuery<'_>,
        message: &Message<'_>,
        seal: Seal,
        rng: &mut dyn RngCore,
    ) -> Pending {
        let decision = self.rules.decide(message, rng);
        let late = self.late.plan(message, &decision);
        let json = (self.keep_json || matches!(decision, Decision::Run { .. }))
            .then(|| message::to_json(&message.fields));
        Pending {
            signed_query: signed_query(query),
            key: message.retry_key(),
            msg_type: message.type_label(),
            context: ReplyContext {
                follower: message.from_user_name.to_string(),
                account: message.to_user_name.to_string(),
                seal,
            },
            decision,
            json,
            late,
        }
    }

    /// Refuse a signed timestamp outside the window (after the signature check, so the
    /// skew in the log is WeChat's, not a scanner's).
    fn check_freshness(&self, query: &CallbackQuery, now: u64) -> Result<(), Rejection> {
        if self.timestamp_window == 0 {
            return Ok(());
        }
        let window = self.timestamp_window;
        let stale = |skew| Rejection::StaleTimestamp { skew, window };
        let ts: i64 = query
            .timestamp
            .as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or(stale(None))?;
        let skew = ts.saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        if skew.unsigned_abs() > window {
            return Err(stale(Some(skew)));
        }
        Ok(())
    }

    /// Check the plain `signature` over token, timestamp and nonce.
    fn check_signature(&self, query: &CallbackQuery) -> Result<(), Rejection> {
        let (signature, timestamp, nonce) = query.signed_triple()?;
        let expected = signature::sign(&mut [
            self.account.token.as_bytes(),
            timestamp.as_bytes(),
            nonce.as_bytes(),
        ]);
        if signature::verify(&expected, signature) {
            Ok(())
        } else {
            Err(Rejection::BadSignature("signature"))
        }
    }

    /// Verify `msg_signature` and decrypt `<Encrypt>`; returns the inner XML and which key
    /// opened it (the reply is sealed with the same key).
    fn open_envelope(
        &self,
        crypto: &Crypto,
        query: &CallbackQuery,
        body: &[u8],
    ) -> Result<(Vec<u8>, Seal), Rejection> {
        let (_, timestamp, nonce) = query.signed_triple()?;
        let msg_signature = query
            .msg_signature
            .as_deref()
            .ok_or(Rejection::MissingParam("msg_signature"))?;
        let fields = message::parse_fields(body).map_err(|e| match e {
            Rejection::MalformedXml(why) => {
                Rejection::Crypto(CryptoError::Xml(format!("envelope: {why}")))
            }
            other => other,
        })?;
        let encrypt = fields
            .iter()
            .find(|f| f.name == "Encrypt")
            .and_then(|f| match &f.value {
                message::Value::Text(t) => Some(t.as_ref()),
                message::Value::Children(_) => None,
            })
            .ok_or_else(|| {
                Rejection::Crypto(CryptoError::Xml("envelope has no <Encrypt>".into()))
            })?;
        crypto::verify_msg_signature(
            self.account.token.as_bytes(),
            timestamp,
            nonce,
            encrypt,
            msg_signature,
        )
        .map_err(Rejection::Crypto)?;
        // From here on the sender has the token: every failure looks the same to it
        // (see `Rejection::AfterMsgSignature`).
        let opaque = |e: CryptoError| Rejection::AfterMsgSignature(Box::new(Rejection::Crypto(e)));
        match crypto::decrypt(&crypto.key, &crypto.appid, encrypt) {
            Ok(inner) => Ok((inner, Seal::CurrentKey)),
            Err(first) => match &crypto.previous_key {
                // Base64 does not depend on the key: no point trying the other one.
                Some(previous) if first != CryptoError::BadBase64 => {
                    crypto::decrypt(previous, &crypto.appid, encrypt)
                        .map(|inner| (inner, Seal::PreviousKey))
                        .map_err(|_| opaque(first))
                }
                _ => Err(opaque(first)),
            },
        }
    }

    /// Encrypt a rendered reply into the signed envelope, with a fresh random prefix and
    /// nonce.
    fn seal(
        &self,
        crypto: &Crypto,
        key: &AesKey,
        reply: &[u8],
        now: u64,
        rng: &mut dyn RngCore,
    ) -> Vec<u8> {
        let mut random = [0u8; 16];
        rng.fill_bytes(&mut random);
        let encrypt = crypto::encrypt(key, &crypto.appid, reply, &random);
        let nonce = (rng.next_u32() % 1_000_000_000).to_string();
        crypto::envelope(self.account.token.as_bytes(), &encrypt, now, &nonce)
    }
}
