//! The TOML config file, parsed once into core values. Every problem names its key.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::core::crypto::AesKey;
use crate::core::reply::Reply;
use crate::core::rules::{Matcher, Rule, Rules, KNOWN_EVENTS};
use crate::core::signature::Token;
use crate::core::{Account, Crypto, Mode, Responder};
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
    pub limits: Limits,
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
    /// Read and parse a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("config {}:\n{e}", path.display()))
    }

    /// Parse config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![e.to_string().trim_end().to_owned()],
        })?;
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let server = raw.server.validate(&mut problems);
        let account = raw.account.validate(&mut problems);
        let mut rules = Vec::new();
        for (i, rule) in raw.rule.into_iter().enumerate() {
            if let Some(rule) = rule.validate(i, &mut problems, &mut warnings) {
                rules.push(rule);
            }
        }
        let default = raw.default.map(|d| d.reply);
        if let Some(reply) = &default {
            check_reply(reply, "default.reply", &mut problems, &mut warnings);
        }
        match (server, account) {
            (Some(server), Some(account)) if problems.is_empty() => Ok(Config {
                server,
                responder: Responder {
                    account,
                    rules: Rules { rules, default },
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
    max_body_bytes: Option<usize>,
    max_params_bytes: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
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
    event: Option<String>,
    key: Option<String>,
    reply: Reply,
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
    reply: Reply,
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
        let mut positive = |key: &str, value: Option<usize>, default: usize| match value {
            Some(0) => {
                problems.push(format!("server.{key}: must be greater than 0"));
                default
            }
            Some(v) => v,
            None => default,
        };
        let max_body_bytes = positive(
            "max_body_bytes",
            self.max_body_bytes,
            defaults.max_body_bytes,
        );
        let max_params_bytes = positive(
            "max_params_bytes",
            self.max_params_bytes,
            defaults.max_params_bytes,
        );
        let max_connections = positive(
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
        Some(ServerConfig {
            listen,
            socket_mode,
            limits,
        })
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

impl RawRule {
    fn validate(
        self,
        index: usize,
        problems: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Option<Rule> {
        let label = match &self.name {
            Some(name) => format!("rule[{index}] ({name})"),
            None => format!("rule[{index}]"),
        };
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("rule[{index}]"));
        let before = problems.len();
        check_reply(&self.reply, &format!("{label}.reply"), problems, warnings);
        let matcher = match (self.text, self.event) {
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "{label}: has both `text` and `event`; a rule matches one thing"
                ));
                None
            }
            (None, None) => {
                problems.push(format!(
                    "{label}: matches nothing; give it `text` or `event`"
                ));
                None
            }
            (Some(text), None) => {
                if self.key.is_some() {
                    problems.push(format!("{label}.key: only goes with `event`"));
                }
                let words: Vec<String> = match text {
                    OneOrMany::One(w) => vec![w],
                    OneOrMany::Many(ws) => ws,
                };
                let words: Vec<String> = words.into_iter().map(|w| w.trim().to_owned()).collect();
                if words.is_empty() || words.iter().any(String::is_empty) {
                    problems.push(format!("{label}.text: needs at least one non-empty string"));
                }
                Some(Matcher::TextEquals(words))
            }
            (None, Some(event)) => {
                if !KNOWN_EVENTS.iter().any(|k| k.eq_ignore_ascii_case(&event)) {
                    problems.push(format!(
                        "{label}.event: {event:?} is not a known event (one of {})",
                        KNOWN_EVENTS.join(", ")
                    ));
                }
                Some(Matcher::Event {
                    event,
                    key: self.key,
                })
            }
        };
        if problems.len() > before {
            return None;
        }
        Some(Rule {
            name,
            matcher: matcher?,
            reply: self.reply,
        })
    }
}

fn check_reply(reply: &Reply, key: &str, problems: &mut Vec<String>, warnings: &mut Vec<String>) {
    for p in reply.problems() {
        problems.push(format!("{key}: {p}"));
    }
    if let Reply::News(articles) = reply {
        if articles.len() > 1 {
            warnings.push(format!(
                "{key}: news reply has {} articles; WeChat is reported to show only the first \
                 when answering a user's message",
                articles.len()
            ));
        }
    }
}
