//! Why a request was refused: one variant per cause, and the one place that turns a
//! cause into the status code and short reason the client sees.

use std::fmt;

use super::crypto::CryptoError;

/// A request the core refuses. `Display` is the full cause for the log; `reason()` is
/// the short text for the client; `status()` is the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A query parameter the request needs is absent: one of `signature`, `timestamp`,
    /// `nonce`, or `echostr` for the handshake, or `msg_signature` for an encrypted
    /// message.
    MissingParam(&'static str),
    /// A parameter this program reads appears more than once in the query.
    DuplicateParam(&'static str),
    /// `signature` (or `msg_signature`) does not match the token.
    BadSignature(&'static str),
    /// The HTTP method is neither GET (handshake) nor POST (message).
    MethodNotAllowed(String),
    /// The body is larger than `[server] max_body_bytes`.
    BodyTooLarge {
        /// `max_body_bytes`.
        limit: usize,
    },
    /// The FastCGI params are larger than `[server] max_params_bytes`.
    ParamsTooLarge {
        /// `max_params_bytes`.
        limit: usize,
    },
    /// The FastCGI params do not decode as name-value pairs.
    BadParams,
    /// CONTENT_LENGTH is not a decimal number of bytes.
    BadContentLength,
    /// The config could not be loaded (CGI mode, where every request loads it): the
    /// log says why; the client only learns that the server is misconfigured.
    Misconfigured,
    /// The body's length differs from CONTENT_LENGTH.
    BodyLength {
        /// CONTENT_LENGTH.
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The request did not arrive within `[server] read_timeout_secs`.
    ReadTimeout,
    /// The signed `timestamp` is further from our clock than `timestamp_window_secs`
    /// (`skew` = their time - ours, in seconds), or is not a number (`skew` = None).
    StaleTimestamp {
        /// Their time minus ours, in seconds; `None` when not a number.
        skew: Option<i64>,
        /// `timestamp_window_secs`.
        window: u64,
    },
    /// An encrypted message failed a check (its own variant per cause, with SDK code).
    Crypto(CryptoError),
    /// `encrypt_type=aes` but no `encoding_aes_key` is configured.
    EncryptedWithoutKey,
    /// A plaintext POST while `mode = "safe"` (a downgrade is never accepted).
    PlaintextInSafeMode,
    /// `encrypt_type` is neither absent, `raw` nor `aes`.
    UnknownEncryptType(String),
    /// The body is not well-formed XML, or uses something we refuse (DOCTYPE, entities).
    MalformedXml(String),
    /// A field every message of this kind must have is absent.
    MissingField(&'static str),
    /// A field has a value of the wrong form (e.g. a non-numeric CreateTime).
    BadField(&'static str),
    /// An encrypted message whose `msg_signature` was right failed later (base64,
    /// padding, length, AppID, inner XML, fields). Whoever can sign (has the token) must
    /// not learn which: that would be a padding oracle that decrypts any captured
    /// message. One status and body for every such cause; the log names it.
    AfterMsgSignature(Box<Rejection>),
    /// A signed query seen before with a different body. The signature does not cover
    /// the body, so whoever saw a signed query (in an access log, say) could otherwise
    /// send any message with it while its timestamp is fresh.
    QueryReused,
    /// The status or ping path asked from an address not in `status_allowed`.
    StatusForbidden,
    /// No account is configured at this request path (several `[[account]]`s).
    NoAccount(String),
}

impl Rejection {
    /// The HTTP status code for this cause.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::MissingParam(_)
            | Rejection::DuplicateParam(_)
            | Rejection::BadSignature(_) => 403,
            Rejection::MethodNotAllowed(_) => 405,
            Rejection::BodyTooLarge { .. } => 413,
            Rejection::ParamsTooLarge { .. } => 431,
            Rejection::ReadTimeout => 408,
            Rejection::Crypto(e) => e.status(),
            Rejection::EncryptedWithoutKey | Rejection::PlaintextInSafeMode => 403,
            Rejection::StaleTimestamp { .. } => 403,
            Rejection::UnknownEncryptType(_) => 400,
            Rejection::Misconfigured => 503,
            Rejection::AfterMsgSignature(_) => 400,
            Rejection::QueryReused => 403,
            Rejection::StatusForbidden => 403,
            Rejection::NoAccount(_) => 404,
            Rejection::BadParams
            | Rejection::BadContentLength
            | Rejection::BodyLength { .. }
            | Rejection::MalformedXml(_)
            | Rejection::MissingField(_)
            | Rejection::BadField(_) => 400,
        }
    }

    /// A short reason for the client: enough to act on, nothing secret.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingParam(_) => "missing query parameter",
            Rejection::DuplicateParam(_) => "duplicate query parameter",
            Rejection::BadSignature(_) => "bad signature",
            Rejection::MethodNotAllowed(_) => "method not allowed",
            Rejection::BodyTooLarge { .. } => "body too large",
            Rejection::ParamsTooLarge { .. } => "request headers too large",
            Rejection::BadParams => "malformed request",
            Rejection::BadContentLength => "malformed Content-Length",
            Rejection::AfterMsgSignature(_) => "encrypted message refused",
            Rejection::QueryReused => "signed query already used",
            Rejection::StatusForbidden => "status not allowed from this address",
            Rejection::NoAccount(_) => "no account at this path",
            Rejection::Misconfigured => "server misconfigured",
            Rejection::BodyLength { .. } => "body length does not match Content-Length",
            Rejection::ReadTimeout => "request timed out",
            Rejection::Crypto(e) if e.status() == 403 => "bad encrypted message",
            Rejection::Crypto(_) => "malformed encrypted message",
            Rejection::StaleTimestamp { .. } => "timestamp outside the allowed window",
            Rejection::EncryptedWithoutKey => {
                "encrypted message but no encoding_aes_key configured"
            }
            Rejection::PlaintextInSafeMode => "plaintext message refused in safe mode",
            Rejection::UnknownEncryptType(_) => "unknown encrypt_type",
            Rejection::MalformedXml(_) => "malformed XML body",
            Rejection::MissingField(_) => "message field missing",
            Rejection::BadField(_) => "message field malformed",
        }
    }

    /// A short machine-friendly name for the log's `outcome=` field.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingParam(_) => "missing_param",
            Rejection::DuplicateParam(_) => "duplicate_param",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::MethodNotAllowed(_) => "bad_method",
            Rejection::BodyTooLarge { .. } => "body_too_large",
            Rejection::ParamsTooLarge { .. } => "params_too_large",
            Rejection::BadParams => "bad_params",
            Rejection::BadContentLength => "bad_content_length",
            Rejection::AfterMsgSignature(_) => "sealed_message_refused",
            Rejection::QueryReused => "query_reused",
            Rejection::StatusForbidden => "status_forbidden",
            Rejection::NoAccount(_) => "no_account",
            Rejection::Misconfigured => "misconfigured",
            Rejection::BodyLength { .. } => "body_length",
            Rejection::ReadTimeout => "read_timeout",
            Rejection::Crypto(CryptoError::BadMsgSignature) => "bad_msg_signature",
            Rejection::Crypto(CryptoError::Xml(_)) => "crypto_xml",
            Rejection::Crypto(CryptoError::AppIdMismatch) => "appid_mismatch",
            Rejection::Crypto(CryptoError::BadCiphertext) => "bad_ciphertext",
            Rejection::Crypto(CryptoError::BadPadding) => "bad_padding",
            Rejection::Crypto(CryptoError::BadLength) => "bad_length",
            Rejection::Crypto(CryptoError::BadBase64) => "bad_base64",
            Rejection::EncryptedWithoutKey => "encrypted_without_key",
            Rejection::StaleTimestamp { .. } => "stale_timestamp",
            Rejection::PlaintextInSafeMode => "plaintext_in_safe_mode",
            Rejection::UnknownEncryptType(_) => "unknown_encrypt_type",
            Rejection::MalformedXml(_) => "malformed_xml",
            Rejection::MissingField(_) => "missing_field",
            Rejection::BadField(_) => "bad_field",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::MissingParam(name) => write!(f, "query parameter `{name}` is missing"),
            Rejection::DuplicateParam(name) => {
                write!(f, "query parameter `{name}` appears more than once")
            }
            Rejection::BadSignature(name) => {
                write!(f, "`{name}` does not match the configured token")
            }
            Rejection::MethodNotAllowed(m) => write!(f, "method {m:?} is not GET or POST"),
            Rejection::BodyTooLarge { limit } => {
                write!(f, "body is larger than max_body_bytes = {limit}")
            }
            Rejection::ParamsTooLarge { limit } => {
                write!(
                    f,
                    "FastCGI params are larger than max_params_bytes = {limit}"
                )
            }
            Rejection::BadParams => f.write_str("FastCGI params do not decode as name-value pairs"),
            Rejection::BadContentLength => f.write_str("CONTENT_LENGTH is not a number of bytes"),
            Rejection::Misconfigured => f.write_str("the config could not be loaded (see the line before)"),
            Rejection::BodyLength { expected, got } => {
                write!(f, "body is {got} bytes but CONTENT_LENGTH says {expected}")
            }
            Rejection::ReadTimeout => {
                f.write_str("request did not arrive within read_timeout_secs")
            }
            Rejection::Crypto(e) => write!(f, "encrypted message: {e}"),
            Rejection::NoAccount(path) => write!(
                f,
                "no [[account]] has path = {:?} (the request's DOCUMENT_URI or SCRIPT_NAME)",
                crate::log::Escaped(path).to_string()
            ),
            Rejection::StatusForbidden => f.write_str(
                "the status or ping path from an address not in server.status_allowed",
            ),
            Rejection::QueryReused => f.write_str(
                "this signed query came before with a different body: a replayed query with a forged message",
            ),
            Rejection::AfterMsgSignature(inner) => {
                write!(f, "msg_signature valid, then: {inner} ({})", inner.code())
            }
            Rejection::EncryptedWithoutKey => f.write_str(
                "encrypt_type=aes but [account] encoding_aes_key is not set (admin panel in compat or safe mode?)",
            ),
            Rejection::PlaintextInSafeMode => f.write_str(
                "plaintext POST while mode = \"safe\" (a proxy dropping encrypt_type, or the admin panel not in safe mode?)",
            ),
            Rejection::UnknownEncryptType(t) => write!(f, "encrypt_type={t:?} is not aes or raw"),
            Rejection::StaleTimestamp { skew: Some(skew), window } => write!(
                f,
                "timestamp is {skew:+} s from this server's clock (window {window} s); a replay, or a wrong clock here"
            ),
            Rejection::StaleTimestamp { skew: None, .. } => f.write_str("timestamp is not a number of seconds"),
            Rejection::MalformedXml(why) => write!(f, "XML body: {why}"),
            Rejection::MissingField(name) => write!(f, "message has no <{name}>"),
            Rejection::BadField(name) => write!(f, "message field <{name}> is malformed"),
        }
    }
}

impl std::error::Error for Rejection {}
