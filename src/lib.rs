//! wechat-fcgi: a FastCGI and CGI responder for a WeChat Official Account callback URL.
//!
//! Code map:
//! - [`core`]: sans-IO. `Responder::prepare(request, now, rng) -> Step` checks the
//!   query and signatures ([`core::query`], [`core::signature`]), the timestamp window,
//!   decrypts safe-mode envelopes ([`core::crypto`]), parses the message
//!   ([`core::message`]) and lets the rules decide ([`core::rules`]);
//!   `Responder::complete(..) -> Response` renders ([`core::reply`]) and seals the
//!   answer; `Response::write_cgi` is the one response writer. [`core::error`] is the
//!   one place that maps a refusal to a status. [`core::late`] is the late-answer
//!   policy (pick-up words, the `pending` reply, WeChat's custom-message JSON and API
//!   errcodes). The WeChat facts it relies on are in `docs/protocol.md`.
//! - [`protocol`]: sans-IO. The answer protocol as a state machine: one request
//!   ([`protocol::Attempt`]) and one finished program ([`protocol::Worker`]) read and
//!   write a message's record ([`protocol::record`]) by compare-and-swap, and return
//!   actions (open, load, swap, wait, spawn, push, respond). Once per message, leases,
//!   WeChat's attempts, hold, pick-ups, pushes and store outages are its transitions;
//!   `docs/answer-protocol.md` draws it, `tests/simulate.rs` simulates it.
//! - [`engine`]: the async path both shells share: the core's decision, then the
//!   protocol driven (`engine/drive.rs`) over the stores ([`engine::stores`]: this
//!   process's memory, and the shared `[state]` store: [`engine::store`], memory,
//!   SQLite or Redis, each offering the same atomic operations, sealed in the shared
//!   ones by [`engine::store::seal`]); reply programs ([`engine::program`]: killed
//!   with their process group on timeout, capped) and HTTP reply hooks
//!   ([`engine::http`]); customer-service pushes through [`engine::api`] with one
//!   access token shared in the store. Time is tokio's clock, so tests pause and
//!   advance it.
//! - [`config`]: the TOML config: one `[account]` or several `[[account]]`s
//!   (`config/accounts.rs`; the engine routes requests to them by path).
//!   `Config::load` does the IO (the file, rules files, permissions, program paths);
//!   parsing and validation are pure
//!   ([`config::defaults`] holds every default and range). Errors name the key.
//! - [`fcgi`]: our FastCGI protocol: the record codec and params decoder
//!   ([`fcgi::record`], [`fcgi::params`]), the per-connection state machine
//!   ([`fcgi::conn`], sans-IO, table-tested) and the tokio server ([`fcgi::server`]:
//!   connection cap, timeouts, allowed clients, SIGTERM drain).
//! - [`files`]: files opened for writing never through a symbolic link nor when others
//!   can write them; what programs and CA files may be trusted.
//! - [`listen`]: where the listening socket comes from (flag, systemd, fd 0, config).
//! - [`privileges`]: `[server] user`/`group`: root is given up after binding; the
//!   socket's owner and group.
//! - [`archive`]: every accepted message as a JSON record (a file, a SQLite table or a
//!   Redis stream), stored with group commit before its reply leaves.
//! - [`cgi`]: the CGI adapter: environment and stdin in, headers and body out; the
//!   config only from `WECHAT_FCGI_CONFIG`, never from argv.
//! - [`log`]: logging to stderr or `[log] file` (reopened for logrotate), text or JSON:
//!   `tracing` filtered by `WECHAT_FCGI_LOG`, a writer thread with a bounded buffer in
//!   the server (never blocks it), the per-request line, every line one line.
//! - [`metrics`]: the per-process counters behind `[server] status_path` (JSON with
//!   PHP-FPM's field names, or Prometheus text); off unless a status path is set.
//! - [`sample`]: messages and signed (or encrypted) requests as WeChat sends them, for
//!   `sign`, the tests and the benchmarks.
//! - [`cli`]: the command line (`serve`, `check-config`, `sign`), SIGHUP reload. The
//!   binary (`src/main.rs`) calls it and sets the allocator (mimalloc).
//!
//! Invariants:
//! - Only `core` decides status codes and bodies, and `core::Response::write_cgi` writes
//!   every response; the shells refuse what they must before the core sees a request
//!   (limits, timeouts, a config that cannot load) through `core::Response::rejected`.
//! - `core` reads no clock, socket, file, environment or randomness: `now` and `rng`
//!   are arguments, so every case is testable in process.
//! - Secrets (`Token`, `AesKey`, the AppSecret, the access token) are compared in
//!   constant time where compared and never logged (`Debug` redacts; config errors
//!   never quote the file; HTTP errors are logged without their URL).
//! - Nothing that came from the network or a file is `unwrap`ped.
//! - A message's answer is decided once, by `protocol` alone: the engine carries out
//!   its actions, the stores keep what it writes. The stores assume nothing about
//!   processes (leases on the store's clock, compare-and-swap, not channels).

pub mod archive;
pub mod cgi;
pub mod cli;
pub mod config;
pub mod core;
pub mod engine;
pub mod fcgi;
pub mod files;
pub mod listen;
pub mod log;
pub mod metrics;
pub mod privileges;
pub mod protocol;
pub mod sample;
