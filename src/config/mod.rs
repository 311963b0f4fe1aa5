//! The TOML config file: read (the only IO here: the file, its permissions, program
//! paths) and parsed into core values. Every problem names its key.
//!
//! - [`raw`]: the file's shapes as serde reads them.
//! - [`server`], [`account`], [`rules`]: validation of each part, pure.
//! - [`defaults`]: every default and range, in one place.

mod account;
mod accounts;
pub mod defaults;
mod late;
mod raw;
mod rules;
mod server;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::rules::{Action, Rules};
pub use accounts::{AccountConfig, ReadFile};
pub use late::ApiSpec;
use raw::RawConfig;
pub use server::{Limits, ServerConfig, StatusConfig};

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[state] store`: where answers are kept between a message and its retries.
    pub store: StoreSpec,
    /// `[archive] to`: where every accepted message is recorded, if anywhere.
    pub archive: Option<crate::archive::ArchiveSpec>,
    /// The accounts and their rules, ready to answer: one for `[account]`, several for
    /// `[[account]]`.
    pub accounts: Vec<AccountConfig>,
    /// `[log]`: where the log goes and in which format.
    pub log: LogSpec,
    /// Things that work but are probably not what the owner meant.
    pub warnings: Vec<String>,
}

/// Every problem found in a config, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read, parse and check a config file: at most [`defaults::MAX_CONFIG_BYTES`], a
    /// regular file, not writable by others. Program paths are resolved: one with a `/`
    /// is relative to the config file's folder (which is also where programs run); a
    /// bare name is looked up in `PATH`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let (text, mode, owner) = read_config(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => {
                p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
            }
            _ => std::env::current_dir().unwrap_or_else(|_| ".".into()),
        };
        let fail = |problems: Vec<String>| {
            anyhow::anyhow!("config {}:\n{}", path.display(), problems.join("\n"))
        };
        if mode & 0o002 != 0 {
            return Err(fail(vec![format!(
                "the file is writable by every user (mode {:o}); anyone could add a rule that runs a program: chmod o-w it",
                mode & 0o777
            )]));
        }
        if let Some(why) = crate::files::folder_open_to_others(&base) {
            return Err(fail(vec![format!(
                "the config: {why} (and add a rule that runs a program)"
            )]));
        }
        // A rules file gets the same checks as the config: it can run programs too.
        let read = |file: &Path| -> Result<String, String> {
            let (text, mode, _) = read_config(file).map_err(|e| e.to_string())?;
            if mode & 0o002 != 0 {
                return Err(format!(
                    "writable by every user (mode {:o}): chmod o-w it",
                    mode & 0o777
                ));
            }
            Ok(text)
        };
        let mut config = Config::parse_with(&text, &base, &read).map_err(|e| fail(e.problems))?;
        let mut problems = Vec::new();
        // Who may own what the server runs or trusts: root, the user it runs as, and
        // the config's owner (who could change the config anyway).
        let runs_as = config
            .server
            .user
            .as_deref()
            .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid.as_raw());
        let trust = Trust {
            runs_as,
            owner: Some(owner),
        };
        config.resolve_programs(&mut problems, &trust);
        for account in &config.accounts {
            let ca = account.api.as_ref().and_then(|a| a.ca_file.as_deref());
            if let Some(why) = ca.and_then(|f| crate::files::untrusted(f, runs_as, Some(owner))) {
                problems.push(format!(
                    "{}api_ca_file {}: {why} (a CA anyone can replace lets them read the AppSecret)",
                    account_prefix(&config.accounts, &account.name),
                    ca.unwrap_or(Path::new("")).display()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        if mode & 0o004 != 0 {
            config.warnings.push(format!(
                "{} is readable by every user (mode {:o}) and holds the token: chmod o-r it",
                path.display(),
                mode & 0o777
            ));
        }
        Ok(config)
    }

    /// The first account's responder: the only one in the `[account]` form.
    pub fn into_responder(self) -> crate::core::Responder {
        self.accounts
            .into_iter()
            .next()
            .map(|a| a.responder)
            .expect("a parsed config has at least one account")
    }

    /// Parse config text (no IO): programs run in the current folder, and their paths
    /// are checked only by [`Config::load`].
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, Path::new("."))
    }

    /// Parse config text (no IO); programs run in `base`; rules files are refused (only
    /// [`Config::load`] reads them).
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, base, &|path: &Path| {
            Err(format!(
                "{}: rules files are read when the config is loaded from a file",
                path.display()
            ))
        })
    }

    /// Parse config text; programs run in `base`; `read` reads rules files.
    pub fn parse_with(text: &str, base: &Path, read: ReadFile<'_>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![toml_problem(text, &e)],
        })?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let server = raw.server.validate(&mut problems);
        let mut store = match StoreSpec::parse(raw.state.store.as_deref().unwrap_or("memory"), base)
        {
            Ok(spec) => spec,
            Err(e) => {
                problems.push(format!("state.store: {e}"));
                StoreSpec::Memory
            }
        };
        match (&mut store, raw.state.key_prefix) {
            (StoreSpec::Redis { prefix, .. }, Some(given)) => *prefix = given,
            (_, Some(_)) => {
                problems.push("state.key_prefix: only goes with a redis:// store".into())
            }
            _ => {}
        }
        match (&mut store, raw.state.ca_file) {
            (StoreSpec::Redis { url, ca_file, .. }, Some(file)) if url.starts_with("rediss://") => {
                *ca_file = Some(base.join(file));
            }
            (_, Some(_)) => problems
                .push("state.ca_file: only goes with a rediss:// store (Redis over TLS)".into()),
            _ => {}
        }
        let state_secret = match raw.state.secret {
            Some(secret) if !(16..=256).contains(&secret.len()) => {
                problems.push(
                    "state.secret: 16 to 256 characters (a long random string; every process sharing the store needs the same)"
                        .into(),
                );
                None
            }
            Some(_) if !store.is_shared() => {
                problems.push("state.secret: only goes with a sqlite: or redis:// store".into());
                None
            }
            secret => secret.map(Secret),
        };
        let archive = match raw.archive.map(|a| a.to) {
            None => None,
            Some(to) => match crate::archive::ArchiveSpec::parse(
                &to,
                base,
                match &store {
                    StoreSpec::Redis {
                        url,
                        prefix,
                        ca_file,
                    } => Some((url.as_str(), prefix.as_str(), ca_file.as_deref())),
                    _ => None,
                },
            ) {
                Ok(spec) => Some(spec),
                Err(e) => {
                    problems.push(format!("archive.to: {e}"));
                    None
                }
            },
        };
        let accounts = accounts::accounts(
            raw.account,
            accounts::Shared {
                rule: raw.rule,
                default: raw.default,
                late: raw.late,
                timestamp_window: server.timestamp_window_secs,
                keep_json: archive.is_some(),
                base,
                read,
                state_secret,
            },
            &mut problems,
            &mut warnings,
        );
        let log = LogSpec {
            file: raw.log.file.map(|f| base.join(f)),
            json: match raw.log.format.as_deref().unwrap_or("text") {
                "text" => false,
                "json" => true,
                other => {
                    problems.push(format!(
                        "log.format: {other:?} is not one of \"text\", \"json\""
                    ));
                    false
                }
            },
        };
        if problems.is_empty() && !accounts.is_empty() {
            Ok(Config {
                accounts,
                log,
                server,
                store,
                archive,
                warnings,
            })
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Resolve every program's path (see [`Config::load`]) and check it is an
    /// executable file nobody untrusted can change.
    fn resolve_programs(&mut self, problems: &mut Vec<String>, trust: &Trust) {
        for account in &mut self.accounts {
            resolve_account_programs(&mut account.responder.rules, problems, trust);
        }
    }
}

/// Who may own a program or a CA file the server uses.
struct Trust {
    runs_as: u32,
    owner: Option<u32>,
}

/// `account.` or `account[NAME].` for a problem's key.
fn account_prefix(accounts: &[AccountConfig], name: &str) -> String {
    if accounts.len() > 1 {
        format!("account[{name}].")
    } else {
        "account.".to_owned()
    }
}

/// Resolve the program paths of one account's rules.
fn resolve_account_programs(rules: &mut Rules, problems: &mut Vec<String>, trust: &Trust) {
    let actions = rules
        .rules
        .iter_mut()
        .enumerate()
        .map(|(i, r)| (rules::rule_label(i, Some(&r.name)), &mut r.action))
        .chain(rules.default.as_mut().map(|d| ("default".to_owned(), d)));
    for (label, action) in actions {
        if let Action::Run { program, .. } = action {
            let program = Arc::make_mut(program);
            if let Some(first) = program.command.first_mut() {
                let key = format!("{label}.run.command");
                match resolve_program(first, &program.dir) {
                    Ok(path) => {
                        if let Some(why) =
                            crate::files::untrusted(&path, trust.runs_as, trust.owner)
                        {
                            problems.push(format!("{key}: {}: {why}", path.display()));
                        }
                        *first = path.to_string_lossy().into_owned();
                    }
                    Err(problem) => problems.push(format!("{key}: {problem}")),
                }
            }
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSpec {
    /// Write the log to this file (reopened on SIGUSR1 and SIGHUP) instead of stderr.
    pub file: Option<PathBuf>,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// A secret from the config: never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// The password (or the whole user part) of a URL like `redis://user:PASSWORD@host/0`,
/// if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let user = &rest[..rest.rfind('@')?];
    Some(user.split_once(':').map_or(user, |(_, password)| password))
}

/// A URL with its user part (and password) replaced by `…`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `[state] key_prefix` when not given.
pub const DEFAULT_KEY_PREFIX: &str = "wechat-fcgi:";

/// Where answers are kept (`[state] store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `memory`: this process only.
    Memory,
    /// `sqlite:PATH`: a database file every process on this machine shares (a relative
    /// path is relative to the config file's folder).
    Sqlite(PathBuf),
    /// `redis://HOST:PORT/DB`: shared by every instance that uses it; keys start with
    /// the prefix (`[state] key_prefix`).
    Redis {
        /// The URL as given.
        url: String,
        /// The prefix of every key.
        prefix: String,
        /// `rediss://`: a CA (PEM) to trust instead of the system's roots.
        ca_file: Option<PathBuf>,
    },
}

impl StoreSpec {
    /// Whether other processes see what the store holds (not `memory`).
    pub fn is_shared(&self) -> bool {
        !matches!(self, StoreSpec::Memory)
    }

    /// Parse `memory` or `sqlite:PATH` (pure: the path is only joined to `base`).
    pub fn parse(text: &str, base: &Path) -> Result<StoreSpec, String> {
        if text == "memory" {
            return Ok(StoreSpec::Memory);
        }
        if text.starts_with("redis://")
            || text.starts_with("rediss://")
            || text.starts_with("redis+unix://")
        {
            return Ok(StoreSpec::Redis {
                url: text.to_owned(),
                prefix: DEFAULT_KEY_PREFIX.to_owned(),
                ca_file: None,
            });
        }
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path, like \"sqlite:/var/lib/wechat-fcgi/state.db\""
                        .into(),
                );
            }
            return Ok(StoreSpec::Sqlite(base.join(path)));
        }
        Err(format!(
            "{:?} is not \"memory\", \"sqlite:PATH\" or \"redis://HOST:PORT/DB\"",
            redact_url(text)
        ))
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory"),
            StoreSpec::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            // Without a password that the URL may hold.
            StoreSpec::Redis { url, prefix, .. } => {
                write!(f, "{} (keys {prefix}*)", redact_url(url))
            }
        }
    }
}

/// Read the file, refusing what is not a regular file or is larger than
/// [`defaults::MAX_CONFIG_BYTES`]; returns its text, permission bits and owner. Opened
/// without blocking (a FIFO put in its place would block the opening process forever)
/// and checked before anything is read.
fn read_config(path: &Path) -> std::io::Result<(String, u32, u32)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let max = defaults::MAX_CONFIG_BYTES;
    if meta.size() > max {
        return Err(invalid(format!("larger than {max} bytes")));
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(invalid(format!("larger than {max} bytes")));
    }
    Ok((text, meta.permissions().mode(), meta.uid()))
}

/// A TOML syntax or type error as one line, with its line, column and key but without
/// the source line toml would quote: that line may hold the token or an AES key.
pub(super) fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let Some(span) = e.span() else {
        return message.to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    // The key of that line, when it has a plain one (keys are never secret).
    let source = text[line_start..].lines().next().unwrap_or("");
    let key = source.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    });
    // A secret written with the wrong type (a token as a number) is quoted by the
    // type error: never print it.
    let secret = key.is_some_and(|k| {
        let last = k.rsplit('.').next().unwrap_or(k);
        SECRET_KEYS.contains(&last)
    });
    let message = if secret {
        redact_quoted(message)
    } else {
        message.to_owned()
    };
    match key {
        Some(key) => format!("line {line}, column {column} (`{key}`): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// Config keys that hold secrets: their values are never printed.
const SECRET_KEYS: &[&str] = &[
    "token",
    "encoding_aes_key",
    "previous_encoding_aes_key",
    "appsecret",
    "corp_secret",
    "secret",
    "store",
];

/// A message with every `quoted` part replaced by `…`.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("`…`");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Where a program is: a path with a `/` against `base`, a bare name in `PATH`. It must
/// be an executable file.
fn resolve_program(program: &str, base: &Path) -> Result<PathBuf, String> {
    let path = if program.contains('/') {
        Some(base.join(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    let Some(path) = path else {
        return Err(format!("{program:?} is not found in PATH"));
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(format!("{program:?} is not an executable file")),
        Err(e) => Err(format!("{program:?} cannot be read: {e}")),
    }
}
