//! The CGI adapter: one request from the environment and stdin, the answer on stdout.
//! Used when fd 0 is not a listening socket and `GATEWAY_INTERFACE` starts with `CGI/`.

use std::io::{Read, Write};
use std::time::Instant;

use crate::config::Limits;
use crate::core::Rejection;
use crate::engine::Engine;
use crate::http;

/// Whether this process was started as a CGI program: fd 0 is not a listening socket
/// (checked first, as libfcgi does: some spawners set CGI variables too) and
/// `GATEWAY_INTERFACE` starts with `CGI/`.
pub fn is_cgi() -> bool {
    !crate::listen::fd_is_listening_socket(0)
        && std::env::var("GATEWAY_INTERFACE").is_ok_and(|g| g.starts_with("CGI/"))
}

/// Answer one CGI request: variables from `var`, the body from `stdin`, the response
/// (headers and body) returned as bytes for stdout.
pub async fn respond(
    engine: &Engine,
    limits: &Limits,
    var: impl Fn(&str) -> Option<String>,
    stdin: impl Read,
) -> Vec<u8> {
    let started = Instant::now();
    let method = var("REQUEST_METHOD").unwrap_or_default();
    let query = var("QUERY_STRING").unwrap_or_default();
    let body = read_body(var("CONTENT_LENGTH"), limits.max_body_bytes, stdin);
    let response = engine
        .answer(
            &method,
            &query,
            body.as_deref().map_err(Clone::clone),
            started,
        )
        .await;
    let mut out = Vec::with_capacity(128 + response.body.len());
    http::write_response(&mut out, &response);
    out
}

/// Run as a CGI program: answer the one request and return. (The retry cache lives
/// only as long as the process, so CGI answers each retry anew.)
pub fn run(engine: &Engine, limits: &Limits) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(respond(
        engine,
        limits,
        |k| std::env::var(k).ok(),
        std::io::stdin().lock(),
    ));
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(())
}

/// Read exactly CONTENT_LENGTH bytes (none when it is absent), refusing a length over
/// the limit without reading it.
fn read_body(
    content_length: Option<String>,
    max: usize,
    stdin: impl Read,
) -> Result<Vec<u8>, Rejection> {
    let len = match content_length.as_deref().map(str::trim) {
        None | Some("") => return Ok(Vec::new()),
        Some(s) => s.parse::<usize>().map_err(|_| Rejection::BadParams)?,
    };
    if len > max {
        return Err(Rejection::BodyTooLarge { limit: max });
    }
    let mut body = Vec::with_capacity(len);
    stdin
        .take(len as u64)
        .read_to_end(&mut body)
        .map_err(|_| Rejection::BodyLength {
            expected: len,
            got: 0,
        })?;
    if body.len() != len {
        return Err(Rejection::BodyLength {
            expected: len,
            got: body.len(),
        });
    }
    Ok(body)
}
