//! The TOML config file, parsed once into core values. Every problem names its key.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::core::crypto::AesKey;
use crate::core::reply::Reply;
use std::sync::Arc;

use crate::core::rules::{
    Action, Matcher, Program, Rule, Rules, Template, TemplateReply, KNOWN_EVENTS, KNOWN_MSG_TYPES,
};
use crate::core::signature::Token;
use crate::core::{Account, Crypto, Mode, Responder};
use crate::engine::EngineConfig;
use crate::listen::ListenAddr;

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub responder: Responder,
    /// Things that work but are probably not what the owner meant.
    pub warnings: Vec<String>,
}

/// `[server]`: where to listen and the limits that protect the process.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Option<ListenAddr>,
    /// Permission bits of a Unix socket we create.
    pub socket_mode: u32,
    /// Listen backlog for sockets we bind (inherited ones keep their spawner's).
    pub listen_backlog: u32,
    pub limits: Limits,
    pub engine: EngineConfig,
    /// Requests whose timestamp is further than this from our clock are refused
    /// (0: no check). The retry cache keeps answers at least this long.
    pub timestamp_window_secs: u64,
    /// TCP peers allowed to connect (PHP-FPM's listen.allowed_clients); None: any.
    pub allowed_clients: Option<Vec<std::net::IpAddr>>,
}

/// Explicit limits; see README "Limits" for what each protects against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest total size of one request's FastCGI params (431 beyond).
    pub max_params_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// How long one request may take to arrive once it started.
    pub read_timeout: Duration,
    /// How long in-flight requests get to finish after SIGTERM.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 256 * 1024,
            max_params_bytes: 64 * 1024,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Every problem found in a config, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read and parse a config file. Relative program paths are relative to its folder.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => {
                p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
            }
            _ => std::env::current_dir().unwrap_or_else(|_| ".".into()),
        };
        Config::parse_in(&text, &base)
            .map_err(|e| anyhow::anyhow!("config {}:\n{e}", path.display()))
    }

    /// Parse config text; relative program paths are relative to the current folder.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, Path::new("."))
    }

    /// Parse config text; relative program paths are relative to `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![e.to_string().trim_end().to_owned()],
        })?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let server = raw.server.validate(&mut problems);
        let account = raw.account.validate(&mut problems);
        let mut rules = Vec::new();
        let mut check = Check {
            problems: &mut problems,
            warnings: &mut warnings,
            base,
        };
        for (i, rule) in raw.rule.into_iter().enumerate() {
            if let Some(rule) = rule.validate(i, &mut check) {
                rules.push(rule);
            }
        }
        let default = raw.default.and_then(|d| {
            let raw = RawAction {
                reply: d.reply,
                replies: d.replies,
                run: d.run,
                fallback: d.fallback,
            };
            raw.validate("default", &TemplateVars::default(), &mut check)
        });
        match (server, account) {
            (Some(server), Some(account)) if problems.is_empty() => Ok(Config {
                server: server.clone(),
                responder: Responder {
                    account,
                    rules: Rules { rules, default },
                    timestamp_window: server.timestamp_window_secs,
                },
                warnings,
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    account: RawAccount,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    default: Option<RawDefault>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    socket_mode: Option<String>,
    listen_backlog: Option<u32>,
    max_body_bytes: Option<usize>,
    max_params_bytes: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    reply_budget_ms: Option<u64>,
    max_programs: Option<usize>,
    retry_cache_entries: Option<usize>,
    timestamp_window_secs: Option<u64>,
    allowed_clients: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    token: String,
    appid: Option<String>,
    mode: Option<String>,
    encoding_aes_key: Option<String>,
    previous_encoding_aes_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    text: Option<OneOrMany>,
    contains: Option<OneOrMany>,
    prefix: Option<OneOrMany>,
    regex: Option<String>,
    ignore_case: Option<bool>,
    event: Option<String>,
    key: Option<String>,
    msg_type: Option<String>,
    reply: Option<Reply>,
    replies: Option<Vec<Reply>>,
    run: Option<RawRun>,
    fallback: Option<Reply>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    command: Vec<String>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    reply: Option<Reply>,
    replies: Option<Vec<Reply>>,
    run: Option<RawRun>,
    fallback: Option<Reply>,
}

impl RawServer {
    fn validate(self, problems: &mut Vec<String>) -> Option<ServerConfig> {
        let defaults = Limits::default();
        let listen = match self.listen.as_deref().map(ListenAddr::parse) {
            None => None,
            Some(Ok(addr)) => Some(addr),
            Some(Err(e)) => {
                problems.push(format!("server.listen: {e}"));
                None
            }
        };
        let socket_mode = match self.socket_mode.as_deref() {
            None => 0o660,
            Some(s) => match u32::from_str_radix(s, 8) {
                Ok(mode) if mode <= 0o777 => mode,
                _ => {
                    problems.push(format!(
                        "server.socket_mode: {s:?} is not an octal permission like \"0660\""
                    ));
                    0
                }
            },
        };
        let max_body_bytes = positive_or(
            problems,
            "max_body_bytes",
            self.max_body_bytes,
            defaults.max_body_bytes,
        );
        let max_params_bytes = positive_or(
            problems,
            "max_params_bytes",
            self.max_params_bytes,
            defaults.max_params_bytes,
        );
        let max_connections = positive_or(
            problems,
            "max_connections",
            self.max_connections,
            defaults.max_connections,
        );
        for (key, value) in [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("read_timeout_secs", self.read_timeout_secs),
        ] {
            if value == Some(0) {
                problems.push(format!("server.{key}: must be at least 1"));
            }
        }
        let secs =
            |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
        let limits = Limits {
            max_body_bytes,
            max_params_bytes,
            max_connections,
            idle_timeout: secs(self.idle_timeout_secs, defaults.idle_timeout),
            read_timeout: secs(self.read_timeout_secs, defaults.read_timeout),
            drain_timeout: secs(self.drain_timeout_secs, defaults.drain_timeout),
        };
        let defaults = EngineConfig::default();
        let reply_budget_ms = self
            .reply_budget_ms
            .unwrap_or(defaults.reply_budget.as_millis() as u64);
        if !(100..=4900).contains(&reply_budget_ms) {
            problems.push(format!(
                "server.reply_budget_ms: {reply_budget_ms} must be 100 to 4900 (WeChat gives up after 5000)"
            ));
        }
        let max_programs = positive_or(
            problems,
            "max_programs",
            self.max_programs,
            defaults.max_programs,
        );
        let cache_entries = positive_or(
            problems,
            "retry_cache_entries",
            self.retry_cache_entries,
            defaults.cache_entries,
        );
        let timestamp_window_secs = self.timestamp_window_secs.unwrap_or(300);
        // Keep answers for the whole window (a replay inside it is answered from the
        // cache), and at least as long as WeChat's three tries.
        let retention = Duration::from_secs(timestamp_window_secs.max(300) + 15);
        let engine = EngineConfig {
            reply_budget: Duration::from_millis(reply_budget_ms),
            max_programs,
            cache_entries,
            cache_retention: retention,
        };
        let allowed_clients = self.allowed_clients.map(|list| {
            if list.is_empty() {
                problems.push("server.allowed_clients: empty list would refuse everyone; remove the key to allow any".to_owned());
            }
            list.iter()
                .filter_map(|a| match a.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) => Some(ip.to_canonical()),
                    Err(_) => {
                        problems.push(format!("server.allowed_clients: {a:?} is not an IPv4 or IPv6 address"));
                        None
                    }
                })
                .collect()
        });
        let listen_backlog = self.listen_backlog.unwrap_or(1024);
        if listen_backlog == 0 {
            problems.push("server.listen_backlog: must be greater than 0".to_owned());
        }
        Some(ServerConfig {
            listen,
            socket_mode,
            listen_backlog,
            limits,
            engine,
            timestamp_window_secs,
            allowed_clients,
        })
    }
}

fn positive_or(
    problems: &mut Vec<String>,
    key: &str,
    value: Option<usize>,
    default: usize,
) -> usize {
    match value {
        Some(0) => {
            problems.push(format!("server.{key}: must be greater than 0"));
            default
        }
        Some(v) => v,
        None => default,
    }
}

impl RawAccount {
    fn validate(self, problems: &mut Vec<String>) -> Option<Account> {
        let token = match Token::parse(&self.token) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("account.token: {e}"));
                None
            }
        };
        if let Some(appid) = &self.appid {
            if appid.is_empty()
                || appid.len() > 32
                || !appid.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                problems.push(format!(
                    "account.appid: {appid:?} is not an AppID (ASCII letters and digits, like wx0123456789abcdef)"
                ));
            }
        }
        let mode = match self.mode.as_deref().unwrap_or("plain") {
            "plain" => Some(Mode::Plain),
            "compat" => Some(Mode::Compat),
            "safe" => Some(Mode::Safe),
            other => {
                problems.push(format!(
                    "account.mode: {other:?} is not one of \"plain\", \"compat\", \"safe\""
                ));
                None
            }
        };
        let mut key = |name: &str, value: Option<&str>| match value.map(AesKey::parse) {
            None => None,
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => {
                problems.push(format!("account.{name}: {e}"));
                None
            }
        };
        let current = key("encoding_aes_key", self.encoding_aes_key.as_deref());
        let previous = key(
            "previous_encoding_aes_key",
            self.previous_encoding_aes_key.as_deref(),
        );
        if self.encoding_aes_key.is_none() {
            if matches!(mode, Some(Mode::Compat | Mode::Safe)) {
                problems.push(format!(
                    "account.encoding_aes_key: required when mode = {:?} (the EncodingAESKey from the admin panel)",
                    self.mode.as_deref().unwrap_or_default()
                ));
            }
            if self.previous_encoding_aes_key.is_some() {
                problems.push(
                    "account.previous_encoding_aes_key: only goes with encoding_aes_key".to_owned(),
                );
            }
        }
        if self.encoding_aes_key.is_some() && self.appid.is_none() {
            problems.push(
                "account.appid: required with encoding_aes_key (every encrypted message ends with it)"
                    .to_owned(),
            );
        }
        let crypto = match (current, &self.appid) {
            (Some(key), Some(appid)) => Some(Crypto {
                key,
                previous_key: previous,
                appid: appid.clone(),
            }),
            _ => None,
        };
        Some(Account {
            token: token?,
            appid: self.appid,
            mode: mode?,
            crypto,
        })
    }
}

/// Where problems and warnings go while checking, and the folder programs are
/// relative to.
struct Check<'a> {
    problems: &'a mut Vec<String>,
    warnings: &'a mut Vec<String>,
    base: &'a Path,
}

/// What a rule's templates may use besides from/to/content/scene: regex captures.
#[derive(Default)]
struct TemplateVars {
    groups: usize,
    names: Vec<String>,
}

/// The part of a rule (or `[default]`) that says what to answer.
struct RawAction {
    reply: Option<Reply>,
    replies: Option<Vec<Reply>>,
    run: Option<RawRun>,
    fallback: Option<Reply>,
}

/// Largest `run.timeout_ms`: WeChat's three tries span 15 s.
pub const MAX_PROGRAM_TIMEOUT_MS: u64 = 15_000;
/// `run.timeout_ms` when not given.
pub const DEFAULT_PROGRAM_TIMEOUT_MS: u64 = 3_000;

impl RawRule {
    fn validate(self, index: usize, check: &mut Check<'_>) -> Option<Rule> {
        let label = match &self.name {
            Some(name) => format!("rule[{index}] ({name})"),
            None => format!("rule[{index}]"),
        };
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("rule[{index}]"));
        let before = check.problems.len();
        let ignore_case = self.ignore_case.unwrap_or(false);
        let given: Vec<&str> = [
            ("text", self.text.is_some()),
            ("contains", self.contains.is_some()),
            ("prefix", self.prefix.is_some()),
            ("regex", self.regex.is_some()),
            ("event", self.event.is_some()),
            ("msg_type", self.msg_type.is_some()),
        ]
        .iter()
        .filter(|(_, present)| *present)
        .map(|(k, _)| *k)
        .collect();
        if given.len() > 1 {
            check.problems.push(format!(
                "{label}: has {}; a rule matches one thing",
                given.join(" and ")
            ));
            return None;
        }
        if self.key.is_some() && self.event.is_none() {
            check
                .problems
                .push(format!("{label}.key: only goes with `event`"));
        }
        if self.ignore_case.is_some()
            && !matches!(
                given.first(),
                Some(&("text" | "contains" | "prefix" | "regex"))
            )
        {
            check.problems.push(format!(
                "{label}.ignore_case: only goes with text, contains, prefix or regex"
            ));
        }
        let mut vars = TemplateVars::default();
        let mut words = |key: &str, list: OneOrMany| -> Vec<String> {
            let words: Vec<String> = match list {
                OneOrMany::One(w) => vec![w],
                OneOrMany::Many(ws) => ws,
            };
            let words: Vec<String> = words
                .into_iter()
                .map(|w| {
                    if ignore_case {
                        w.trim().to_lowercase()
                    } else {
                        w.trim().to_owned()
                    }
                })
                .collect();
            if words.is_empty() || words.iter().any(String::is_empty) {
                check.problems.push(format!(
                    "{label}.{key}: needs at least one non-empty string"
                ));
            }
            words
        };
        let matcher = if let Some(list) = self.text {
            Some(Matcher::Text {
                words: words("text", list),
                ignore_case,
            })
        } else if let Some(list) = self.contains {
            Some(Matcher::Contains {
                words: words("contains", list),
                ignore_case,
            })
        } else if let Some(list) = self.prefix {
            Some(Matcher::Prefix {
                words: words("prefix", list),
                ignore_case,
            })
        } else if let Some(pattern) = self.regex {
            match regex::RegexBuilder::new(&pattern)
                .case_insensitive(ignore_case)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => {
                    vars.groups = re.captures_len() - 1;
                    vars.names = re.capture_names().flatten().map(str::to_owned).collect();
                    Some(Matcher::Regex(re))
                }
                Err(e) => {
                    let first = e.to_string().lines().last().unwrap_or("").trim().to_owned();
                    check.problems.push(format!(
                        "{label}.regex: {pattern:?} does not compile: {first}"
                    ));
                    None
                }
            }
        } else if let Some(event) = self.event {
            if !KNOWN_EVENTS.iter().any(|k| k.eq_ignore_ascii_case(&event)) {
                check.problems.push(format!(
                    "{label}.event: {event:?} is not a known event (one of {})",
                    KNOWN_EVENTS.join(", ")
                ));
            }
            Some(Matcher::Event {
                event,
                key: self.key,
            })
        } else if let Some(t) = self.msg_type {
            if !KNOWN_MSG_TYPES.iter().any(|k| k.eq_ignore_ascii_case(&t)) {
                check.problems.push(format!(
                    "{label}.msg_type: {t:?} is not a known MsgType (one of {})",
                    KNOWN_MSG_TYPES.join(", ")
                ));
            }
            Some(Matcher::MsgType(t))
        } else {
            check.problems.push(format!(
                "{label}: matches nothing; give it text, contains, prefix, regex, event or msg_type"
            ));
            None
        };
        let raw = RawAction {
            reply: self.reply,
            replies: self.replies,
            run: self.run,
            fallback: self.fallback,
        };
        let action = raw.validate(&label, &vars, check);
        if check.problems.len() > before {
            return None;
        }
        Some(Rule {
            name: name.into(),
            matcher: matcher?,
            action: action?,
        })
    }
}

impl RawAction {
    fn validate(self, label: &str, vars: &TemplateVars, check: &mut Check<'_>) -> Option<Action> {
        let before = check.problems.len();
        let given = [
            self.reply.is_some(),
            self.replies.is_some(),
            self.run.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            check.problems.push(format!(
                "{label}: needs exactly one of `reply`, `replies` or `run`"
            ));
            return None;
        }
        if self.fallback.is_some() && self.run.is_none() {
            check
                .problems
                .push(format!("{label}.fallback: only goes with `run`"));
        }
        let action = if let Some(reply) = self.reply {
            Action::Replies(vec![template(
                reply,
                &format!("{label}.reply"),
                vars,
                check,
            )])
        } else if let Some(replies) = self.replies {
            if replies.is_empty() {
                check
                    .problems
                    .push(format!("{label}.replies: needs at least one reply"));
            }
            let list = replies
                .into_iter()
                .enumerate()
                .map(|(i, r)| template(r, &format!("{label}.replies[{i}]"), vars, check))
                .collect();
            Action::Replies(list)
        } else {
            let run = self.run?;
            let fallback = self
                .fallback
                .map(|f| template(f, &format!("{label}.fallback"), vars, check));
            let timeout_ms = run.timeout_ms.unwrap_or(DEFAULT_PROGRAM_TIMEOUT_MS);
            if !(1..=MAX_PROGRAM_TIMEOUT_MS).contains(&timeout_ms) {
                check.problems.push(format!(
                    "{label}.run.timeout_ms: must be 1 to {MAX_PROGRAM_TIMEOUT_MS}"
                ));
            }
            let command = resolve_program(run.command, &format!("{label}.run.command"), check);
            Action::Run {
                program: Arc::new(Program {
                    command,
                    dir: check.base.to_path_buf(),
                    timeout_ms,
                }),
                fallback,
            }
        };
        (check.problems.len() == before).then_some(action)
    }
}

/// Check a reply and parse the template of its text.
fn template(reply: Reply, key: &str, vars: &TemplateVars, check: &mut Check<'_>) -> TemplateReply {
    check_reply(&reply, key, check);
    let text = match &reply {
        Reply::Text(t) => Template::parse(t, vars.groups, &vars.names).unwrap_or_else(|e| {
            check.problems.push(format!("{key}: {e}"));
            None
        }),
        _ => None,
    };
    TemplateReply {
        reply: Arc::new(reply),
        text,
    }
}

/// Check a program command: not empty, and its program readable and executable. A
/// relative path with a `/` is made absolute against the config's folder; a bare name
/// is looked up in PATH.
fn resolve_program(mut command: Vec<String>, key: &str, check: &mut Check<'_>) -> Vec<String> {
    let Some(program) = command.first().cloned() else {
        check.problems.push(format!(
            "{key}: is empty; give the program and its arguments"
        ));
        return command;
    };
    let path = if program.contains('/') {
        let p = Path::new(&program);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            check.base.join(p)
        })
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(&program))
                .find(|p| p.is_file())
        })
    };
    use std::os::unix::fs::PermissionsExt;
    match path.as_ref().map(std::fs::metadata) {
        Some(Ok(meta)) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
            if let Some(p) = path {
                command[0] = p.to_string_lossy().into_owned();
            }
        }
        Some(Ok(_)) => check
            .problems
            .push(format!("{key}: {program:?} is not an executable file")),
        Some(Err(e)) => check
            .problems
            .push(format!("{key}: {program:?} cannot be read: {e}")),
        None => check
            .problems
            .push(format!("{key}: {program:?} is not found in PATH")),
    }
    command
}

fn check_reply(reply: &Reply, key: &str, check: &mut Check<'_>) {
    for p in reply.problems() {
        check.problems.push(format!("{key}: {p}"));
    }
    if let Reply::News(articles) = reply {
        if articles.len() > 1 {
            check.warnings.push(format!(
                "{key}: news reply has {} articles; WeChat is reported to show only the first \
                 when answering a user's message",
                articles.len()
            ));
        }
    }
}
