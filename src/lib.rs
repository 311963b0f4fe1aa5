//! wechat-fcgi: a FastCGI and CGI responder for a WeChat Official Account callback URL.
//!
//! Code map:
//! - [`core`]: sans-IO. `Responder::handle(request, now, rng) -> Response`: query and
//!   signature ([`core::query`], [`core::signature`]), message parsing ([`core::message`]),
//!   rules ([`core::rules`]), reply rendering ([`core::reply`]), and the one place that
//!   maps a refusal to a status ([`core::error`]).
//! - [`config`]: the TOML config, parsed once into core values; errors name the key.
//! - [`fcgi`]: our FastCGI protocol: the record codec and params decoder
//!   ([`fcgi::record`], [`fcgi::params`]), the per-connection state machine
//!   ([`fcgi::conn`], sans-IO too) and the tokio server ([`fcgi::server`]).
//! - [`listen`]: where the listening socket comes from (flag, systemd, fd 0, config).
//! - [`cgi`]: the CGI adapter: environment and stdin in, headers and body out.
//! - [`cli`]: the command line (`serve`, `check-config`, `sign`) and the request log.
//!
//! Invariants:
//! - Only `core` decides status codes and bodies; the shells never build a response of
//!   their own except for limits they enforce before the core sees the request, and
//!   those go through `core::Response::rejected` too.
//! - Secrets (`Token`) are compared in constant time and never logged (`Debug` redacts).
//! - Nothing that came from the network or a file is `unwrap`ped.

pub mod cgi;
pub mod cli;
pub mod config;
pub mod core;
pub mod engine;
pub mod fcgi;
pub mod http;
pub mod listen;
