//! `[account]` (one account, any path) or `[[account]]` (several, each at its own
//! path): each account's token, mode, keys, API credentials, rules and late-answer
//! settings. Rules files (`rules = "FILE"`) are read through the reader the caller
//! gives (`Config::load` reads files; pure parsing refuses them).

use std::path::Path;

use super::raw::{RawAccount, RawAccounts, RawAction, RawLate, RawRule, RawRulesFile};
use super::{late, rules, ApiSpec};
use crate::core::rules::Rules;
use crate::core::Responder;

/// One account, ready to answer.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// Its name: `default` for the single `[account]` form.
    pub name: String,
    /// The request path it answers (`DOCUMENT_URI` or `SCRIPT_NAME`); `None`: any.
    pub path: Option<String>,
    /// Its token, mode, keys, rules and late-answer settings.
    pub responder: Responder,
    /// WeChat's API, when `appsecret` is given.
    pub api: Option<ApiSpec>,
    /// `[state] secret`: the shared store's keys come from it (else from the token).
    pub state_secret: Option<super::Secret>,
}

impl AccountConfig {
    /// The engine's view of it.
    pub fn entry(&self) -> crate::engine::AccountEntry {
        crate::engine::AccountEntry::new(
            &self.name,
            self.path.clone(),
            self.responder.clone(),
            self.api.clone(),
            self.state_secret.as_ref().map(|s| s.0.as_str()),
        )
    }
}

/// Reads a rules file: its text, or why not.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// What the accounts share from the top of the file.
pub(super) struct Shared<'a> {
    pub(super) rule: Vec<RawRule>,
    pub(super) default: Option<RawAction>,
    pub(super) late: RawLate,
    pub(super) timestamp_window: u64,
    pub(super) keep_json: bool,
    pub(super) base: &'a Path,
    pub(super) read: ReadFile<'a>,
    pub(super) state_secret: Option<super::Secret>,
}

/// Build every account; problems name the account (`account[live].token: ..`) when
/// there are several.
pub(super) fn accounts(
    value: RawAccounts,
    shared: Shared<'_>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Vec<AccountConfig> {
    match value {
        RawAccounts::Many(list) => {
            if !shared.rule.is_empty() || shared.default.is_some() {
                problems.push(
                    "rule, default: with several [[account]]s, rules go in each account ([[account.rule]], [account.default], or rules = \"FILE\")"
                        .to_owned(),
                );
            }
            if list.is_empty() {
                problems.push("account: no account".to_owned());
            }
            let mut built = Vec::new();
            for (i, raw) in list.into_iter().enumerate() {
                let label = raw.name.clone().unwrap_or_else(|| i.to_string());
                let mut own = Vec::new();
                if let Some(account) = one(raw, &shared, true, &mut own, warnings) {
                    built.push(account);
                }
                problems.extend(own.into_iter().map(|p| match p.strip_prefix("account.") {
                    Some(rest) => format!("account[{label}].{rest}"),
                    None => format!("account[{label}].{p}"),
                }));
            }
            for (i, a) in built.iter().enumerate() {
                if built[..i].iter().any(|b| b.name == a.name) {
                    problems.push(format!("account[{}].name: used twice", a.name));
                }
                if built[..i].iter().any(|b| b.path == a.path) {
                    problems.push(format!(
                        "account[{}].path: {:?} is another account's too",
                        a.name,
                        a.path.as_deref().unwrap_or_default()
                    ));
                }
            }
            built
        }
        RawAccounts::One(raw) => one(*raw, &shared, false, problems, warnings)
            .into_iter()
            .collect(),
    }
}

/// One account. `several`: it is one of `[[account]]` (then `name` and `path` are
/// required, and the top-level rules are not its).
fn one(
    mut raw: RawAccount,
    shared: &Shared<'_>,
    several: bool,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<AccountConfig> {
    let name = match (&raw.name, several) {
        (Some(n), _) => n.clone(),
        (None, true) => {
            problems.push("account.name: required with several [[account]]s".to_owned());
            String::new()
        }
        (None, false) => "default".to_owned(),
    };
    if !name.is_empty()
        && (name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        problems.push(format!(
            "account.name: {name:?}: letters, digits, `-` and `_`, at most 64"
        ));
    }
    match (&raw.path, several) {
        (None, true) => problems.push(
            "account.path: required with several [[account]]s (the callback URL's path, like \"/wechat\")"
                .to_owned(),
        ),
        (Some(p), _) if !p.starts_with('/') || p.contains(char::is_whitespace) => {
            problems.push(format!("account.path: {p:?} is not a path (like \"/wechat\")"))
        }
        _ => {}
    }
    let raw_api = late::RawApi {
        appid: raw.appid.clone(),
        appsecret: raw.appsecret.take(),
        api_base: raw.api_base.take(),
        api_ca_file: raw.api_ca_file.take(),
    };
    let (name_path, file, inline, default, own_late) = (
        raw.path.take(),
        raw.rules.take(),
        std::mem::take(&mut raw.rule),
        raw.default.take(),
        raw.late.take(),
    );
    raw.name = None;
    let account = raw.validate(problems);
    let api = raw_api.validate(shared.base, problems);
    // Its rules: from its file, then inline; the single form also takes the top-level ones.
    let mut rule_list: Vec<RawRule> = Vec::new();
    let mut default = default;
    if let Some(file) = file {
        let path = shared.base.join(&file);
        match (shared.read)(&path).and_then(|text| {
            toml::from_str::<RawRulesFile>(&text).map_err(|e| super::toml_problem(&text, &e))
        }) {
            Ok(parsed) => {
                rule_list.extend(parsed.rule);
                if parsed.default.is_some() {
                    if default.is_some() {
                        problems.push(format!("account.default: given here and in {file}"));
                    }
                    default = parsed.default;
                }
            }
            Err(e) => problems.push(format!("account.rules: {file}: {e}")),
        }
    }
    rule_list.extend(inline);
    // Its own [late], or the one at the top (the server's policy).
    let late_raw = own_late.unwrap_or_else(|| shared.late.clone());
    if !several {
        rule_list.extend(shared.rule.iter().cloned());
        if default.is_some() && shared.default.is_some() {
            problems.push("default: given in [account] and at the top".to_owned());
        }
        default = default.or_else(|| shared.default.clone());
    }
    let mut check = rules::Check {
        problems,
        warnings,
        base: shared.base,
    };
    let rule_set: Vec<_> = rule_list
        .into_iter()
        .enumerate()
        .filter_map(|(i, rule)| rule.validate(i, &mut check))
        .collect();
    let default = default.and_then(|d| rules::validate_default(d, &mut check));
    let late = late_raw.validate(api.is_some(), &mut check);
    Some(AccountConfig {
        name,
        path: name_path,
        responder: Responder {
            account: account?,
            rules: Rules {
                rules: rule_set,
                default,
            },
            timestamp_window: shared.timestamp_window,
            keep_json: shared.keep_json,
            late,
        },
        api,
        state_secret: shared.state_secret.clone(),
    })
}
