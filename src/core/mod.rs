//! The sans-IO core: a request's method, query and body in, a response out. No sockets,
//! clock, environment or randomness inside: `now` and the random source are arguments.

pub mod error;
pub mod message;
pub mod query;
pub mod reply;
pub mod rules;
pub mod signature;

use rand_core::RngCore;

pub use error::Rejection;
use message::Message;
use query::CallbackQuery;
use rules::Rules;
use signature::Token;

/// How the account's messages travel (admin panel: 明文 / 兼容 / 安全模式).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Compat,
    Safe,
}

/// The account's identity and secrets, parsed at config load.
#[derive(Debug, Clone)]
pub struct Account {
    pub token: Token,
    pub appid: Option<String>,
    pub mode: Mode,
}

/// Everything the core needs to answer: the account and the rules.
#[derive(Debug, Clone)]
pub struct Responder {
    pub account: Account,
    pub rules: Rules,
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
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

/// What the core did with a request, for the request log.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A valid GET handshake: echostr echoed.
    Handshake,
    /// A message answered with a reply chosen by `rule`.
    Reply {
        msg_type: String,
        rule: String,
        reply_type: &'static str,
    },
    /// A message with no reply: body `success`.
    Success { msg_type: String },
    /// Refused; the cause is logged, the client sees its short reason.
    Rejected(Rejection),
}

impl Outcome {
    /// A short label for the log's `outcome=` field.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Handshake => "handshake",
            Outcome::Reply { .. } => "reply",
            Outcome::Success { .. } => "success",
            Outcome::Rejected(r) => r.code(),
        }
    }

    /// The message type label, when a message was parsed.
    pub fn msg_type(&self) -> &str {
        match self {
            Outcome::Reply { msg_type, .. } | Outcome::Success { msg_type } => msg_type,
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

    fn success(msg_type: String) -> Response {
        Response {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: b"success".to_vec(),
            outcome: Outcome::Success { msg_type },
        }
    }
}

impl Responder {
    /// Answer one request. `now` is the Unix time in seconds (reply CreateTime);
    /// `rng` supplies the random bytes encryption needs.
    pub fn handle(&self, request: &Request<'_>, now: u64, rng: &mut dyn RngCore) -> Response {
        match self.try_handle(request, now, rng) {
            Ok(response) => response,
            Err(rejection) => Response::rejected(rejection),
        }
    }

    fn try_handle(
        &self,
        request: &Request<'_>,
        now: u64,
        _rng: &mut dyn RngCore,
    ) -> Result<Response, Rejection> {
        let query = CallbackQuery::parse(request.query)?;
        match request.method {
            "GET" => {
                self.check_signature(&query)?;
                let echostr = query.echostr.ok_or(Rejection::MissingParam("echostr"))?;
                Ok(Response {
                    status: 200,
                    content_type: "text/plain; charset=utf-8",
                    body: echostr.into_bytes(),
                    outcome: Outcome::Handshake,
                })
            }
            "POST" => {
                self.check_signature(&query)?;
                let message = Message::parse(request.body)?;
                Ok(self.answer(&message, now))
            }
            other => Err(Rejection::MethodNotAllowed(other.to_owned())),
        }
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

    /// Pick the reply for a parsed message and render it.
    fn answer(&self, message: &Message, now: u64) -> Response {
        let msg_type = message.type_label();
        match self.rules.decide(message) {
            Some((rule, reply)) => {
                let mut body = Vec::with_capacity(256);
                reply.render(
                    &message.from_user_name,
                    &message.to_user_name,
                    now,
                    &mut body,
                );
                Response {
                    status: 200,
                    content_type: "application/xml; charset=utf-8",
                    body,
                    outcome: Outcome::Reply {
                        msg_type,
                        rule: rule.to_owned(),
                        reply_type: reply.msg_type(),
                    },
                }
            }
            None => Response::success(msg_type),
        }
    }
}
