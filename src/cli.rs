//! The command line: `serve`, `check-config`, `sign`, and the automatic FastCGI / CGI
//! start-up when a spawner or web server runs the binary without a command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::engine::unix_now;
use crate::listen::{self, ListenAddr};

#[derive(Parser, Debug)]
#[command(
    name = "wechat-fcgi",
    version,
    about = "FastCGI/CGI responder for a WeChat Official Account callback URL"
)]
struct Cli {
    /// Config file (also WECHAT_FCGI_CONFIG); used when started without a command.
    #[arg(long, global = true, env = "WECHAT_FCGI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve FastCGI (listener: --listen, systemd, fd 0, or [server] listen).
    Serve {
        /// unix:PATH or tcp:HOST:PORT; overrides every other source.
        #[arg(long, value_parser = ListenAddr::parse)]
        listen: Option<ListenAddr>,
    },
    /// Check the config file and exit (0 when it is valid), like `nginx -t`.
    CheckConfig,
    /// Print a signed query string (and optionally a sample message or a curl line).
    Sign {
        /// The account token.
        #[arg(long)]
        token: String,
        /// Unix time to sign (default: now).
        #[arg(long)]
        timestamp: Option<u64>,
        /// Nonce to sign (default: random digits).
        #[arg(long)]
        nonce: Option<String>,
        /// Add an echostr, as WeChat's URL handshake does.
        #[arg(long)]
        echostr: Option<String>,
        /// Build a sample text message with this Content.
        #[arg(long, conflicts_with = "event")]
        text: Option<String>,
        /// Build a sample event (subscribe, CLICK, ...).
        #[arg(long)]
        event: Option<String>,
        /// EventKey for --event.
        #[arg(long, requires = "event")]
        event_key: Option<String>,
        /// The follower's OpenID in the sample message.
        #[arg(long, default_value = "oFollower0000000000000000001")]
        from: String,
        /// The account's original id in the sample message.
        #[arg(long, default_value = "gh_0123456789ab")]
        to: String,
        /// Print a complete curl command for this URL instead.
        #[arg(long)]
        url: Option<String>,
    },
}

/// The entry point behind `main`: returns the process exit code.
pub fn run() -> anyhow::Result<ExitCode> {
    crate::listen::close_inherited_on_exec();
    if crate::cgi::is_cgi() {
        crate::log::init(false);
        return crate::cgi::main();
    }
    let cli = Cli::parse();
    // With no command, a listening socket on fd 0 (spawn-fcgi, mod_fcgid) means serve.
    let fd0_listens = cli.command.is_none() && listen::stdin_is_listening_socket();
    crate::log::init(fd0_listens || matches!(cli.command, Some(Command::Serve { .. })));
    match cli.command {
        Some(Command::Serve { listen }) => serve(cli.config.as_deref(), listen.as_ref()),
        None if fd0_listens => serve(cli.config.as_deref(), None),
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(ExitCode::from(2))
        }
        Some(Command::CheckConfig) => check_config(cli.config.as_deref()),
        Some(Command::Sign {
            token,
            timestamp,
            nonce,
            echostr,
            text,
            event,
            event_key,
            from,
            to,
            url,
        }) => {
            let timestamp = timestamp.unwrap_or_else(unix_now);
            let nonce = nonce.unwrap_or_else(|| {
                use rand_core::RngCore;
                (rand_core::OsRng.next_u32() % 1_000_000_000).to_string()
            });
            let message = match (text, event) {
                (Some(content), _) => Some(crate::sample::text_with_id(
                    &to,
                    &from,
                    timestamp,
                    &content,
                    {
                        use rand_core::RngCore;
                        rand_core::OsRng.next_u64() >> 8
                    },
                )),
                (None, Some(event)) => Some(crate::sample::event(
                    &to,
                    &from,
                    timestamp,
                    &event,
                    event_key.as_deref(),
                )),
                (None, None) => None,
            };
            let mut query = crate::sample::signed_query(&token, timestamp, &nonce);
            if let Some(e) = &echostr {
                query.push_str("&echostr=");
                query.extend(form_urlencoded::byte_serialize(e.as_bytes()));
            }
            if message.is_some() {
                query.push_str("&openid=");
                query.extend(form_urlencoded::byte_serialize(from.as_bytes()));
            }
            let text = match (url, message) {
                (Some(url), Some(body)) => format!(
                    "curl -sS -H 'Content-Type: text/xml' --data-binary {} {}\n",
                    shell_quote(&body),
                    shell_quote(&format!("{url}?{query}"))
                ),
                (Some(url), None) => {
                    format!("curl -sS {}\n", shell_quote(&format!("{url}?{query}")))
                }
                (None, Some(body)) => format!("{query}\n{body}\n"),
                (None, None) => format!("{query}\n"),
            };
            // A closed pipe (`| head -1`) is not worth a panic.
            use std::io::Write;
            match std::io::stdout().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let Some(path) = path else {
        anyhow::bail!("no config file: give --config FILE or set WECHAT_FCGI_CONFIG");
    };
    let config = Config::load(path)?;
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    Ok(config)
}

fn check_config(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let Some(path) = path else {
        anyhow::bail!("no config file: give --config FILE or set WECHAT_FCGI_CONFIG");
    };
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                println!("warning: {w}");
            }
            match &config.store {
                crate::config::StoreSpec::Memory => println!(
                    "state: memory (answers live in one process: under CGI, mod_fcgid or \
                     several instances, a retry reaching another process is not recognised \
                     and a program may run again; use [state] store = \"sqlite:PATH\")"
                ),
                spec => {
                    // Opening checks the file can be created and written.
                    if let crate::config::StoreSpec::Sqlite(db) = spec {
                        if let Err(e) = crate::engine::store::SqliteStore::open(
                            db,
                            config.server.engine.cache_retention,
                        ) {
                            eprintln!("{}: state.store: {e:#}", path.display());
                            return Ok(ExitCode::from(1));
                        }
                    }
                    println!("state: {spec} (shared by every process that uses it)");
                }
            }
            if let Some(archive) = &config.archive {
                if let Err(e) = archive.check_writable() {
                    eprintln!("{}: archive.to: {archive}: {e}", path.display());
                    return Ok(ExitCode::from(1));
                }
                println!("archive: {archive} (writable)");
            }
            println!(
                "{}: ok ({} rules, default reply: {})",
                path.display(),
                config.responder.rules.rules.len(),
                if config.responder.rules.default.is_some() {
                    "yes"
                } else {
                    "no"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

fn serve(config_path: Option<&Path>, flag: Option<&ListenAddr>) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let config_path = config_path.map(Path::to_path_buf);
    let (listener, source) = listen::acquire(
        flag,
        config.server.listen.as_ref(),
        config.server.socket_mode,
        config.server.listen_backlog,
    )?;
    // A Unix socket this process created is removed when it exits (an inherited one
    // belongs to whoever passed it).
    struct RemoveSocket(Option<PathBuf>);
    impl Drop for RemoveSocket {
        fn drop(&mut self) {
            if let Some(path) = &self.0 {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let _socket = RemoveSocket(source.created_socket().map(Path::to_path_buf));
    // Bound: give up root before serving anything.
    let run_as = match &config.server.user {
        Some(user) => Some(
            crate::privileges::RunAs::resolve(user, config.server.group.as_deref())
                .map_err(|e| anyhow::anyhow!("server.user: {e}"))?,
        ),
        None => None,
    };
    crate::privileges::drop_to(run_as.as_ref())?;
    // Request log lines are batched (see `crate::log`): the flusher task writes them,
    // and they are written at exit however serving ends.
    struct FlushLog;
    impl Drop for FlushLog {
        fn drop(&mut self) {
            crate::log::flush();
        }
    }
    let _flush = FlushLog;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
            let _ = stop_tx.send(true);
        });
        tracing::info!(listen = %source, rules = config.responder.rules.rules.len(), "wechat-fcgi serving");
        let mut engine =
            crate::engine::Engine::open(config.responder, config.server.engine, &config.store)?;
        if let Some(spec) = &config.archive {
            engine = engine.with_archive(crate::archive::Archive::open(spec)?);
        }
        let engine = Arc::new(engine);
        if let Some(archive) = engine.archive().cloned() {
            // logrotate: either signal reopens the file (SIGHUP also reloads the config).
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    archive.reopen();
                    tracing::info!("SIGUSR1: archive reopened");
                }
            });
        }
        let maintaining = engine.clone();
        tokio::spawn(async move { maintaining.store().maintain().await });
        let server_settings = config.server.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let reloading = engine.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Some(archive) = reloading.archive() {
                    archive.reopen();
                }
                reload(&reloading, config_path.as_deref(), &server_settings);
            }
        });
        if config.server.allowed_clients.is_some() && matches!(listener, listen::Listener::Unix(_)) {
            tracing::warn!("allowed_clients applies to TCP only; the Unix socket's mode guards it");
        }
        let allowed = config.server.allowed_clients.clone().map(Arc::from);
        crate::fcgi::server::serve(listener, engine, config.server.limits, allowed, stop_rx).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: load the config again and put its rules in force; keep the old ones when
/// the new file is invalid. `[server]` settings need a restart.
fn reload(
    engine: &crate::engine::Engine,
    path: Option<&Path>,
    running: &crate::config::ServerConfig,
) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no config file to reload");
        return;
    };
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                tracing::warn!("config: {w}");
            }
            if &config.server != running {
                tracing::warn!(
                    "SIGHUP: [server] settings changed; they take effect after a restart"
                );
            }
            let rules = config.responder.rules.rules.len();
            engine.reload(config.responder);
            tracing::info!(rules, "SIGHUP: config reloaded");
        }
        Err(e) => {
            tracing::error!("SIGHUP: config not reloaded, the previous one stays in force: {e:#}")
        }
    }
}
