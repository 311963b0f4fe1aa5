//! What the FastCGI server and the CGI adapter share: the random source, the CGI
//! response framing, and the one-line request log.

use std::cell::RefCell;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::core::{Outcome, Response};
use crate::log::{
    request_line,
    Value::{Num, Str},
};

/// The random source the shells give the core: ChaCha12 seeded once per thread from the
/// OS, so a reply's random prefix and nonce cost no system call.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRng;

thread_local! {
    static RNG: RefCell<ChaCha12Rng> = RefCell::new(ChaCha12Rng::from_entropy());
}

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|r| r.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        RNG.with(|r| r.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|r| r.borrow_mut().fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        RNG.with(|r| r.borrow_mut().try_fill_bytes(dest))
    }
}

/// Append the CGI/FastCGI response: `Status:`, `Content-Type:`, `Content-Length:`, body.
pub fn write_response(out: &mut Vec<u8>, response: &Response) {
    out.reserve(96 + response.body.len());
    out.extend_from_slice(b"Status: ");
    out.extend_from_slice(response.status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(response.status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(response.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(response.body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&response.body);
}

/// One line per request on stderr: method, outcome, status, message type, latency; a
/// refusal is a warning that also names its cause.
pub fn log_request(method: &str, response: &Response, latency: Duration) {
    let latency_us = latency.as_micros() as u64;
    match &response.outcome {
        Outcome::Rejected(cause) => tracing::warn!(
            %method,
            outcome = %response.outcome.label(),
            status = response.status,
            latency_us,
            %cause,
            "request refused"
        ),
        Outcome::Reply {
            msg_type,
            rule,
            reply_type,
            via,
        } => request_line(&[
            ("method", Str(method)),
            ("outcome", Str("reply")),
            ("status", Num(response.status.into())),
            ("msg_type", Str(msg_type)),
            ("rule", Str(rule)),
            ("reply_type", Str(reply_type)),
            ("via", Str(via.label())),
            ("latency_us", Num(latency_us)),
        ]),
        Outcome::Success { msg_type, via } => request_line(&[
            ("method", Str(method)),
            ("outcome", Str("success")),
            ("status", Num(response.status.into())),
            ("msg_type", Str(msg_type)),
            ("via", Str(via.label())),
            ("latency_us", Num(latency_us)),
        ]),
        other => request_line(&[
            ("method", Str(method)),
            ("outcome", Str(other.label())),
            ("status", Num(response.status.into())),
            ("latency_us", Num(latency_us)),
        ]),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}
