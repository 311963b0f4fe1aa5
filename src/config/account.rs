//! `[account]`: the token, AppID, mode and keys, parsed into core values.

use super::raw::RawAccount;
use crate::core::crypto::AesKey;
use crate::core::signature::Token;
use crate::core::{Account, Crypto, Mode};

impl RawAccount {
    /// Validate; every problem goes to `problems`, naming its key. `None` when there
    /// was a problem.
    pub(super) fn validate(self, problems: &mut Vec<String>) -> Option<Account> {
        let token = match Token::parse(&self.token) {
            Err(_) if self.token.starts_with('<') => {
                problems.push(
                    "account.token: set it to the Token from the admin panel (this is the example's placeholder)"
                        .to_owned(),
                );
                None
            }
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
