//! wechat-fcgi: a FastCGI and CGI responder for a WeChat Official Account callback URL.
//!
//! Code map:
//! - [`core`]: sans-IO. `Responder::prepare(request, now, rng) -> Step` checks the
//!   query and signatures ([`core::query`], [`core::signature`]), the timestamp window,
//!   decrypts safe-mode envelopes ([`core::crypto`]), parses the message
//!   ([`core::message`]) and lets the rules decide ([`core::rules`]);
//!   `Responder::complete(..) -> Response` renders ([`core::reply`]) and seals the
//!   answer. [`core::error`] is the one place that maps a refusal to a status.
//! - [`engine`]: the async answer path both shells share: the retry cache (one answer
//!   per message; two generations of key fingerprints), reply programs (run once,
//!   killed on timeout, capped), the budget.
//! - [`config`]: the TOML config, parsed once into core values; errors name the key.
//! - [`fcgi`]: our FastCGI protocol: the record codec and params decoder
//!   ([`fcgi::record`], [`fcgi::params`]), the per-connection state machine
//!   ([`fcgi::conn`], sans-IO too) and the tokio server ([`fcgi::server`]: connection
//!   cap, timeouts, allowed clients, SIGTERM drain).
//! - [`listen`]: where the listening socket comes from (flag, systemd, fd 0, config).
//! - [`cgi`]: the CGI adapter: environment and stdin in, headers and body out.
//! - [`http`]: what the shells share: CGI response framing, the request log line, the
//!   per-thread random source.
//! - [`log`]: stderr logging: `tracing` filtered by `WECHAT_FCGI_LOG`, INFO lines
//!   batched in the server, the per-request line written without `tracing`'s formatter.
//! - [`cli`]: the command line (`serve`, `check-config`, `sign`), SIGHUP reload.
//!
//! Invariants:
//! - Only `core` decides status codes and bodies; the shells never build a response of
//!   their own except for limits they enforce before the core sees the request, and
//!   those go through `core::Response::rejected` too.
//! - `core` reads no clock, socket, file, environment or randomness: `now` and `rng`
//!   are arguments, so every case is testable in process.
//! - Secrets (`Token`, `AesKey`) are compared in constant time and never logged
//!   (`Debug` redacts).
//! - Nothing that came from the network or a file is `unwrap`ped.
//! - A message's answer is decided once: retries and replays get it from the engine's
//!   cache.

pub mod cgi;
pub mod cli;
pub mod config;
pub mod core;
pub mod engine;
pub mod fcgi;
pub mod listen;
pub mod log;
pub mod sample;
