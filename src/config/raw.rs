//! The config file's shapes as serde reads them, before validation.

use serde::Deserialize;

use crate::core::reply::Reply;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    /// `[account]` (one) or `[[account]]` (several).
    pub(super) account: RawAccounts,
    #[serde(default)]
    pub(super) rule: Vec<RawRule>,
    #[serde(default)]
    pub(super) default: Option<RawAction>,
    #[serde(default)]
    pub(super) state: RawState,
    pub(super) archive: Option<RawArchive>,
    #[serde(default)]
    pub(super) late: RawLate,
    #[serde(default)]
    pub(super) log: RawLog,
}

/// `[log]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) file: Option<String>,
    pub(super) format: Option<String>,
}

/// A rules file (`rules = "FILE"` of an account): `[[rule]]`s and `[default]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRulesFile {
    #[serde(default)]
    pub(super) rule: Vec<RawRule>,
    pub(super) default: Option<RawAction>,
}

/// `[late]`.
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLate {
    pub(super) mode: Option<String>,
    pub(super) pending: Option<Reply>,
    pub(super) pickup: Option<Vec<String>>,
    pub(super) pickup_ttl_secs: Option<u64>,
    pub(super) still_running: Option<Reply>,
}

/// `[archive]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArchive {
    pub(super) to: String,
}

/// `[state]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) store: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) ca_file: Option<String>,
}

/// `[server]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) socket_mode: Option<String>,
    pub(super) listen_backlog: Option<u64>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_params_bytes: Option<u64>,
    pub(super) max_connections: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) read_timeout_secs: Option<u64>,
    pub(super) write_timeout_secs: Option<u64>,
    pub(super) drain_timeout_secs: Option<u64>,
    pub(super) reply_budget_ms: Option<u64>,
    pub(super) max_programs: Option<u64>,
    pub(super) max_programs_per_sender: Option<u64>,
    pub(super) retry_cache_entries: Option<u64>,
    pub(super) retry_cache_bytes: Option<u64>,
    pub(super) timestamp_window_secs: Option<u64>,
    pub(super) allowed_clients: Option<Vec<String>>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) socket_owner: Option<String>,
    pub(super) socket_group: Option<String>,
    pub(super) status_path: Option<String>,
    pub(super) ping_path: Option<String>,
    pub(super) status_allowed: Option<Vec<String>>,
}

/// `[account]` or `[[account]]`s, read in the same pass as the file (so an error in
/// them has its line and key).
pub(super) enum RawAccounts {
    One(Box<RawAccount>),
    Many(Vec<RawAccount>),
}

impl<'de> Deserialize<'de> for RawAccounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawAccounts, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RawAccounts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table ([account]) or tables ([[account]])")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawAccounts, A::Error> {
                RawAccount::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|a| RawAccounts::One(Box::new(a)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<RawAccounts, A::Error> {
                Vec::<RawAccount>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawAccounts::Many)
            }
        }
        d.deserialize_any(Either)
    }
}

/// `[account]`, or one `[[account]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub(super) name: Option<String>,
    pub(super) path: Option<String>,
    /// A file with this account's `[[rule]]`s and `[default]`.
    pub(super) rules: Option<String>,
    #[serde(default)]
    pub(super) rule: Vec<RawRule>,
    pub(super) default: Option<RawAction>,
    pub(super) late: Option<RawLate>,
    pub(super) token: String,
    pub(super) appid: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) encoding_aes_key: Option<String>,
    pub(super) previous_encoding_aes_key: Option<String>,
    pub(super) appsecret: Option<String>,
    pub(super) api_base: Option<String>,
    pub(super) api_ca_file: Option<String>,
}

/// One `[[rule]]`: what it matches (one of the matcher keys) and what it does.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<String>,
    pub(super) text: Option<OneOrMany>,
    pub(super) contains: Option<OneOrMany>,
    pub(super) prefix: Option<OneOrMany>,
    pub(super) regex: Option<String>,
    pub(super) ignore_case: Option<bool>,
    pub(super) event: Option<String>,
    pub(super) key: Option<String>,
    pub(super) msg_type: Option<String>,
    pub(super) reply: Option<Reply>,
    pub(super) replies: Option<Vec<Reply>>,
    pub(super) run: Option<RawRun>,
    pub(super) fallback: Option<Reply>,
}

/// What a rule (or `[default]`) does: exactly one of `reply`, `replies`, `run`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAction {
    pub(super) reply: Option<Reply>,
    pub(super) replies: Option<Vec<Reply>>,
    pub(super) run: Option<RawRun>,
    pub(super) fallback: Option<Reply>,
}

/// `run = { command = [..], timeout_ms = .. }` or `run = { url = "..", timeout_ms = .. }`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRun {
    pub(super) command: Option<Vec<String>>,
    pub(super) url: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) env: std::collections::BTreeMap<String, String>,
}

/// A string or a list of strings.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(w) => vec![w],
            OneOrMany::Many(ws) => ws,
        }
    }
}

/// The matcher keys of a rule, as given.
pub(super) enum RawMatcher {
    Text(OneOrMany),
    Contains(OneOrMany),
    Prefix(OneOrMany),
    Regex(String),
    Event(String),
    MsgType(String),
}

impl RawMatcher {
    /// The key this matcher was written with.
    pub(super) fn key(&self) -> &'static str {
        match self {
            RawMatcher::Text(_) => "text",
            RawMatcher::Contains(_) => "contains",
            RawMatcher::Prefix(_) => "prefix",
            RawMatcher::Regex(_) => "regex",
            RawMatcher::Event(_) => "event",
            RawMatcher::MsgType(_) => "msg_type",
        }
    }
}

impl RawRule {
    /// Split into the matchers given (in key order), and the action.
    pub(super) fn split(self) -> (Vec<RawMatcher>, RawAction) {
        let matchers = [
            self.text.map(RawMatcher::Text),
            self.contains.map(RawMatcher::Contains),
            self.prefix.map(RawMatcher::Prefix),
            self.regex.map(RawMatcher::Regex),
            self.event.map(RawMatcher::Event),
            self.msg_type.map(RawMatcher::MsgType),
        ]
        .into_iter()
        .flatten()
        .collect();
        let action = RawAction {
            reply: self.reply,
            replies: self.replies,
            run: self.run,
            fallback: self.fallback,
        };
        (matchers, action)
    }
}
