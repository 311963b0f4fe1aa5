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
    about = "FastCGI/CGI responder for a WeChat Official Account callback URL",
    after_help = "Started with no command and a listening socket on fd 0 (spawn-fcgi, \
                  mod_fcgid), it serves FastCGI with the config from --config or \
                  WECHAT_FCGI_CONFIG. Run as a CGI program, it reads the config from \
                  WECHAT_FCGI_CONFIG only."
)]
struct Cli {
    /// With no command (spawned with a socket on fd 0): the config file.
    #[arg(long, env = "WECHAT_FCGI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up; boxing buys nothing
enum Command {
    /// Serve FastCGI (listener: --listen, systemd, fd 0, or [server] listen).
    Serve {
        /// The config file.
        #[arg(long, env = "WECHAT_FCGI_CONFIG")]
        config: PathBuf,
        /// unix:PATH or tcp:HOST:PORT; overrides every other source.
        #[arg(long, value_parser = ListenAddr::parse)]
        listen: Option<ListenAddr>,
    },
    /// Check the config file and exit (0 when it is valid), like `nginx -t`.
    CheckConfig {
        /// The config file.
        #[arg(long, env = "WECHAT_FCGI_CONFIG")]
        config: PathBuf,
    },
    /// Print a signed request as WeChat would send it: the query string (and a sample
    /// message), or a complete curl line. With --config it uses the account's token,
    /// and in compat and safe mode encrypts the message as WeChat does.
    Sign {
        /// Take the token, mode, EncodingAESKey and AppID from this config.
        #[arg(long, required_unless_present = "token")]
        config: Option<PathBuf>,
        /// The account token (without --config).
        #[arg(long, conflicts_with = "config")]
        token: Option<String>,
        /// Unix time to sign (default: now; the server accepts it for
        /// timestamp_window_secs, 300 s by default).
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
        /// Print a complete curl command for this URL instead (a URL that already has a
        /// query gets the signature appended with `&`).
        #[arg(long)]
        url: Option<String>,
        /// Read an encrypted reply (the <Encrypt> envelope) on stdin and print the reply
        /// inside it, after checking its MsgSignature (needs --config with a key).
        #[arg(long, requires = "config", conflicts_with_all = ["text", "event", "echostr", "url"])]
        decrypt: bool,
    },
}

/// The entry point behind `main`: returns the process exit code.
pub fn run() -> anyhow::Result<ExitCode> {
    crate::listen::close_inherited_on_exec();
    if crate::cgi::is_cgi() {
        crate::log::init(false, "warn");
        return crate::cgi::main();
    }
    let cli = Cli::parse();
    // With no command, a listening socket on fd 0 (spawn-fcgi, mod_fcgid) means serve.
    let fd0_listens = cli.command.is_none() && listen::stdin_is_listening_socket();
    crate::log::init(
        fd0_listens || matches!(cli.command, Some(Command::Serve { .. })),
        "info",
    );
    match cli.command {
        Some(Command::Serve { config, listen }) => serve(Some(&config), listen.as_ref()),
        None if fd0_listens => serve(cli.config.as_deref(), None),
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(ExitCode::from(2))
        }
        Some(Command::CheckConfig { config }) => check_config(Some(&config)),
        Some(Command::Sign {
            config,
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
            decrypt,
        }) => {
            let account = match &config {
                // The first account's token, mode and keys (the only one in the
                // `[account]` form).
                Some(path) => Config::load(path)?
                    .accounts
                    .into_iter()
                    .next()
                    .map(|a| a.responder.account),
                None => None,
            };
            if decrypt {
                return decrypt_reply(account.as_ref());
            }
            let token = match (&account, token) {
                (Some(account), _) => {
                    String::from_utf8_lossy(account.token.as_bytes()).into_owned()
                }
                (None, Some(token)) => token,
                (None, None) => anyhow::bail!("give --config FILE or --token TOKEN"),
            };
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
            // In compat and safe mode, the message goes encrypted, as WeChat sends it.
            let crypto = account.as_ref().and_then(|a| match a.mode {
                crate::core::Mode::Plain => None,
                _ => a.crypto.clone(),
            });
            let (mut query, message) = match (message, &crypto) {
                (Some(message), Some(crypto)) => {
                    let mut random = [0u8; 16];
                    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
                    let sealed = crate::sample::encrypted_request(
                        &token, crypto, &to, &message, timestamp, &nonce, &random,
                    );
                    (sealed.query, Some(sealed.body))
                }
                (message, _) => (
                    crate::sample::signed_query(&token, timestamp, &nonce),
                    message,
                ),
            };
            if let Some(e) = &echostr {
                query.push_str("&echostr=");
                query.extend(form_urlencoded::byte_serialize(e.as_bytes()));
            }
            if message.is_some() {
                query.push_str("&openid=");
                query.extend(form_urlencoded::byte_serialize(from.as_bytes()));
            }
            let with_query = |url: &str| {
                let joiner = if url.contains('?') { '&' } else { '?' };
                format!("{url}{joiner}{query}")
            };
            let text = match (url, message) {
                (Some(url), Some(body)) => format!(
                    "curl -sS -H 'Content-Type: text/xml' --data-binary {} {}\n",
                    shell_quote(&body),
                    shell_quote(&with_query(&url))
                ),
                (Some(url), None) => format!("curl -sS {}\n", shell_quote(&with_query(&url))),
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

/// `sign --decrypt`: an encrypted reply on stdin, its MsgSignature checked, the reply
/// inside printed.
fn decrypt_reply(account: Option<&crate::core::Account>) -> anyhow::Result<ExitCode> {
    use crate::core::message::{parse_fields, Value};
    use std::io::Read;
    let Some(account) = account else {
        anyhow::bail!("--decrypt needs --config");
    };
    let Some(crypto) = &account.crypto else {
        anyhow::bail!("--decrypt: the config has no encoding_aes_key");
    };
    let mut envelope = Vec::new();
    std::io::stdin().read_to_end(&mut envelope)?;
    let fields = parse_fields(&envelope).map_err(|e| anyhow::anyhow!("not an envelope: {e}"))?;
    let get = |name: &str| {
        fields
            .iter()
            .find_map(|f| match (&f.value, f.name == name) {
                (Value::Text(t), true) => Some(t.to_string()),
                _ => None,
            })
    };
    let (Some(encrypt), Some(signature), Some(timestamp), Some(nonce)) = (
        get("Encrypt"),
        get("MsgSignature"),
        get("TimeStamp"),
        get("Nonce"),
    ) else {
        anyhow::bail!(
            "not an encrypted reply: it needs Encrypt, MsgSignature, TimeStamp and Nonce"
        );
    };
    crate::core::crypto::verify_msg_signature(
        account.token.as_bytes(),
        &timestamp,
        &nonce,
        &encrypt,
        &signature,
    )
    .map_err(|e| anyhow::anyhow!("MsgSignature: {e}"))?;
    let reply = crate::core::crypto::decrypt(&crypto.key, &crypto.appid, &encrypt)
        .or_else(|e| match &crypto.previous_key {
            Some(old) => crate::core::crypto::decrypt(old, &crypto.appid, &encrypt),
            None => Err(e),
        })
        .map_err(|e| anyhow::anyhow!("cannot decrypt: {e}"))?;
    use std::io::Write;
    let mut stdout = std::io::stdout();
    stdout.write_all(&reply)?;
    stdout.write_all(b"\n")?;
    Ok(ExitCode::SUCCESS)
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
                     and a program may run again, and a replayed signed query is refused \
                     only by the process that saw it (in CGI, by none); use [state] store = \
                     \"sqlite:PATH\")"
                ),
                spec => {
                    // Opening checks the file can be created and written, or the URL
                    // is one `serve` accepts (without connecting).
                    let opened = match spec {
                        crate::config::StoreSpec::Sqlite(db) => {
                            crate::engine::store::SqliteStore::open(db).map(drop)
                        }
                        crate::config::StoreSpec::Redis {
                            url,
                            prefix,
                            ca_file,
                        } => {
                            let runtime = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()?;
                            let _in_runtime = runtime.enter();
                            crate::engine::store::RedisStore::open(url, prefix, ca_file.as_deref())
                                .map(drop)
                        }
                        crate::config::StoreSpec::Memory => Ok(()),
                    };
                    if let Err(e) = opened {
                        eprintln!("{}: state.store: {e:#}", path.display());
                        return Ok(ExitCode::from(1));
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
            if let Some(file) = &config.log.file {
                if let Err(e) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                {
                    eprintln!("{}: log.file: {}: {e}", path.display(), file.display());
                    return Ok(ExitCode::from(1));
                }
                println!(
                    "log: {} ({})",
                    file.display(),
                    if config.log.json { "json" } else { "text" }
                );
            }
            let several = config.accounts.len() > 1;
            for account in &config.accounts {
                let prefix = match (several, &account.path) {
                    (true, Some(at)) => format!("account {} at {at}: ", account.name),
                    _ => String::new(),
                };
                let late = &account.responder.late;
                println!(
                    "{prefix}late answers: {}{}",
                    late.mode.label(),
                    match late.mode {
                        crate::core::late::LateMode::Off =>
                            " (a program slower than reply_budget_ms: its answer is dropped)"
                                .to_owned(),
                        _ => format!(
                            " (pick-up words: {:?}, kept {} s)",
                            late.pickup, late.pickup_ttl_secs
                        ),
                    }
                );
                if late.mode != crate::core::late::LateMode::Off
                    && matches!(config.store, crate::config::StoreSpec::Memory)
                {
                    println!("{prefix}note: late answers are kept in this process's memory: under mod_fcgid or several instances they need a shared [state] store, and in CGI mode they are off (each request is a new process) unless the store is sqlite: or redis://");
                }
                if let Some(api) = &account.api {
                    // Reading the CA file now rather than at the first push.
                    if let Err(e) = crate::engine::http::client(api.ca_file.as_deref()) {
                        eprintln!("{}: {prefix}{e:#}", path.display());
                        return Ok(ExitCode::from(1));
                    }
                    println!("{prefix}API: {} (AppID {})", api.base, api.appid);
                }
                let rules = &account.responder.rules;
                let summary = format!(
                    "{} rules, default reply: {}",
                    rules.rules.len(),
                    if rules.default.is_some() { "yes" } else { "no" }
                );
                if several {
                    println!("{prefix}{summary}");
                } else {
                    println!("{}: ok ({summary})", path.display());
                }
            }
            if several {
                println!(
                    "{}: ok ({} accounts)",
                    path.display(),
                    config.accounts.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Reopen the log file (`[log] file`) and the archive, for logrotate.
fn reopen_files(archive: Option<&crate::archive::Archive>) {
    if let Err(e) = crate::log::reopen() {
        tracing::error!(error = %e, "log file: cannot reopen it: still writing to the old one");
    }
    if let Some(archive) = archive {
        archive.reopen();
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
    if let Some(path) = source.created_socket() {
        crate::privileges::chown_socket(
            path,
            config.server.socket_owner.as_deref(),
            config.server.socket_group.as_deref(),
        )?;
        crate::privileges::warn_if_unreachable(path, &config.server);
    }
    // Bound: give up root before serving anything, and before opening any file.
    let run_as = match &config.server.user {
        Some(user) => Some(
            crate::privileges::RunAs::resolve(user, config.server.group.as_deref())
                .map_err(|e| anyhow::anyhow!("server.user: {e}"))?,
        ),
        None => None,
    };
    crate::privileges::drop_to(run_as.as_ref())?;
    // The log file is opened as the user the server runs as, never through a link.
    if let Err(e) = crate::log::configure(config.log.file.as_deref(), config.log.json) {
        anyhow::bail!(
            "log.file {}: {e}",
            config
                .log
                .file
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        );
    }
    // Request log lines are batched (see `crate::log`): the flusher task writes them,
    // and they are written at exit however serving ends.
    struct FlushLog;
    impl Drop for FlushLog {
        fn drop(&mut self) {
            crate::log::flush();
        }
    }
    let _flush = FlushLog;
    // What a reply program leaves behind outside its process group is handed to this
    // process, which ends it (after each program, every few seconds, and at exit).
    crate::engine::program::adopt_orphans();
    struct KillInherited;
    impl Drop for KillInherited {
        fn drop(&mut self) {
            crate::engine::program::kill_inherited();
        }
    }
    let _inherited = KillInherited;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::spawn(async {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let _ = tokio::task::spawn_blocking(crate::engine::program::kill_inherited).await;
            }
        });
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
        let entries = config.accounts.iter().map(|a| a.entry()).collect();
        let mut engine =
            crate::engine::Engine::open(entries, config.server.engine, &config.store)?;
        if let Some(spec) = &config.archive {
            engine = engine.with_archive(crate::archive::Archive::open(spec)?);
        }
        let rules: usize = config.accounts.iter().map(|a| a.responder.rules.rules.len()).sum();
        tracing::info!(listen = %source, accounts = config.accounts.len(), rules, "wechat-fcgi serving");
        if config.server.status.is_some() {
            crate::metrics::METRICS.enable(
                config.server.engine.reply_budget,
                config.server.limits.max_connections,
            );
        }
        let engine = Arc::new(engine.with_status(config.server.status.clone()));
        {
            // logrotate: SIGUSR1 reopens the log file and the archive (SIGHUP does too,
            // and also reloads the config).
            let archive = engine.archive().cloned();
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    reopen_files(archive.as_ref());
                    tracing::info!("SIGUSR1: log file and archive reopened");
                }
            });
        }
        let maintaining = engine.clone();
        tokio::spawn(async move {
            if let Some(shared) = &maintaining.stores().shared {
                shared.maintain().await;
            }
        });
        let running = config.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let reloading = engine.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reopen_files(reloading.archive());
                // Read off the serving thread: a slow disk (or a FIFO put in the file's
                // place) never stalls a request.
                let path = config_path.clone();
                let loaded = tokio::task::spawn_blocking(move || path.map(|p| Config::load(&p)))
                    .await
                    .unwrap_or(None);
                reload(&reloading, loaded, &running);
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
    loaded: Option<anyhow::Result<Config>>,
    running: &Config,
) {
    let Some(loaded) = loaded else {
        tracing::warn!("SIGHUP: no config file to reload");
        return;
    };
    match loaded {
        Ok(config) => {
            for w in &config.warnings {
                tracing::warn!("config: {w}");
            }
            for (changed, what) in [
                (config.server != running.server, "[server]"),
                (config.store != running.store, "[state]"),
                (config.archive != running.archive, "[archive]"),
                (config.log != running.log, "[log]"),
            ] {
                if changed {
                    tracing::warn!(
                        "SIGHUP: {what} settings changed; they take effect after a restart (the old ones stay in force)"
                    );
                }
            }
            let rules: usize = config
                .accounts
                .iter()
                .map(|a| a.responder.rules.rules.len())
                .sum();
            // Every account at once: requests see the old set or the new one.
            engine.reload(config.accounts.iter().map(|a| a.entry()).collect());
            crate::metrics::METRICS.reload(true);
            tracing::info!(rules, "SIGHUP: config reloaded");
        }
        Err(e) => {
            crate::metrics::METRICS.reload(false);
            tracing::error!("SIGHUP: config not reloaded, the previous one stays in force: {e:#}")
        }
    }
}
