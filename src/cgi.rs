//! The CGI adapter: one request from the environment and stdin, the answer on stdout.
//! Used when fd 0 is not a listening socket and `GATEWAY_INTERFACE` starts with `CGI/`.
//!
//! In CGI mode the command line is not ours: a web server passes the words of a query
//! string without `=` as arguments (`?--config+/etc/passwd`), so argv is never read.
//! The config comes from `WECHAT_FCGI_CONFIG` only.

use std::io::{Read, Write};

use tokio::time::Instant;

use crate::config::{Config, Limits};
use crate::core::{Rejection, Response};
use crate::engine::{Engine, EngineConfig};
use crate::fcgi::conn::parse_content_length;

/// The environment variable naming the config file in CGI mode.
pub const CONFIG_VAR: &str = "WECHAT_FCGI_CONFIG";

/// Whether this process was started as a CGI program: fd 0 is not a listening socket
/// (checked first, as libfcgi does: some spawners set CGI variables too) and
/// `GATEWAY_INTERFACE` starts with `CGI/`.
pub fn is_cgi() -> bool {
    !crate::listen::stdin_is_listening_socket()
        && std::env::var("GATEWAY_INTERFACE").is_ok_and(|g| g.starts_with("CGI/"))
}

/// Run as a CGI program: load the config named by [`CONFIG_VAR`], answer the one
/// request, write the response to stdout. A config that cannot be loaded answers 503
/// (the cause goes to stderr, the web server's error log).
pub fn main() -> anyhow::Result<std::process::ExitCode> {
    crate::engine::program::adopt_orphans();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (config, engine) = match load().and_then(|config| {
            // One request per process: an in-memory cache of the configured size could
            // never answer a retry (a SQLite store can).
            let engine_config = EngineConfig {
                cache_entries: 2,
                ..config.server.engine
            };
            crate::log::configure(config.log.file.as_deref(), config.log.json)
                .map_err(|e| anyhow::anyhow!("log.file: {e}"))?;
            let mut accounts = config.accounts.clone();
            if !config.store.is_shared() {
                tracing::warn!(
                    "CGI with [state] store = \"memory\": every request is a new process, so \
                     WeChat's retries are not recognised (a reply program may run again) and a \
                     replayed signed query is not refused; set [state] store = \"sqlite:PATH\""
                );
                // Nothing outlives this process in memory: WeChat's attempts cannot be
                // counted nor an answer kept for a pick-up, and holding every attempt
                // would answer none. `check-config` says so.
                for account in &mut accounts {
                    account.responder.late.mode = crate::core::late::LateMode::Off;
                }
            }
            let entries = accounts.iter().map(|a| a.entry()).collect();
            let mut engine = Engine::open(entries, engine_config, &config.store)?;
            if let Some(spec) = &config.archive {
                engine = engine.with_archive(crate::archive::Archive::open(spec)?);
            }
            Ok((config, engine))
        }) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("CGI: {e:#}");
                let response = Response::rejected(Rejection::Misconfigured);
                crate::log::request(
                    &std::env::var("REQUEST_METHOD").unwrap_or_default(),
                    &response,
                    std::time::Duration::ZERO,
                );
                let mut out = Vec::new();
                response.write_cgi(&mut out);
                write_stdout(&out)?;
                return Ok(std::process::ExitCode::from(1));
            }
        };
        let out = respond(
            &engine,
            &config.server.limits,
            |k| std::env::var(k).ok(),
            std::io::stdin().lock(),
        )
        .await;
        write_stdout(&out)?;
        if engine.stores().shared.is_some() && engine.programs_running() {
            // A program outlived the reply budget: the response is out; close stdout so
            // the web server sends it now, and let the program finish so that its answer
            // is stored for WeChat's retry (which another process serves).
            close_stdout();
            engine.finish_programs().await;
        }
        // What a program left behind outside its process group ends with the request.
        crate::engine::program::kill_inherited();
        // The process ends here: everything the store needs is committed. Closing a
        // SQLite file as its last user would checkpoint and sync it (about 2 ms per
        // request); the next process picks the log up instead, and every few requests
        // one empties it, after its response is out.
        if let Some(crate::engine::store::Shared::Sqlite(store)) = &engine.stores().shared {
            close_stdout();
            store.end_of_process();
        }
        std::mem::forget(engine);
        Ok(std::process::ExitCode::SUCCESS)
    })
}

fn write_stdout(out: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out)?;
    stdout.flush()
}

/// Point fd 1 at /dev/null: the web server sees the response end while this process
/// goes on.
fn close_stdout() {
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    use std::os::fd::AsRawFd;
    // SAFETY: dup2(2) on two descriptors this process owns (the /dev/null file just
    // opened, and stdout, whose Rust handle is not writing now: its buffer was flushed);
    // it replaces fd 1 atomically and takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::dup2(null.as_raw_fd(), 1);
    }
}

fn load() -> anyhow::Result<Config> {
    let Some(path) = std::env::var_os(CONFIG_VAR) else {
        anyhow::bail!("no config file: set {CONFIG_VAR} (SetEnv in Apache) to its path");
    };
    let config = Config::load(std::path::Path::new(&path))?;
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    Ok(config)
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
    // Which account: DOCUMENT_URI when the server sets it, else SCRIPT_NAME.
    let path = var("DOCUMENT_URI")
        .or_else(|| var("SCRIPT_NAME"))
        .unwrap_or_default();
    let body = read_body(var("CONTENT_LENGTH"), limits.max_body_bytes, stdin);
    let response = engine
        .answer(
            &method,
            &path,
            &query,
            body.as_deref().map_err(Clone::clone),
            started,
        )
        .await;
    let mut out = Vec::with_capacity(128 + response.body.len());
    response.write_cgi(&mut out);
    out
}

/// Read exactly CONTENT_LENGTH bytes (none when it is absent), refusing a length over
/// the limit without reading it.
fn read_body(
    content_length: Option<String>,
    max: usize,
    stdin: impl Read,
) -> Result<Vec<u8>, Rejection> {
    let len = match content_length {
        None => return Ok(Vec::new()),
        Some(s) => match parse_content_length(s.as_bytes())? {
            None => return Ok(Vec::new()),
            Some(len) => len,
        },
    };
    if len > max {
        // Read the body and drop it, unstored: a web server still writing it would
        // turn a closed pipe into a 500 instead of this 413.
        let _ = std::io::copy(&mut stdin.take(len as u64), &mut std::io::sink());
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
