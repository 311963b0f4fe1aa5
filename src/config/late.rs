//! `[late]` and the API settings of `[account]` (`appsecret`, `api_base`,
//! `api_ca_file`), parsed into core values. Pure.

use std::path::{Path, PathBuf};

use super::defaults;
use super::raw::RawLate;
use super::rules::{template_plain, Check};
use crate::core::late::{Late, LateMode};
use crate::core::reply::Reply;

/// What calling WeChat's API needs (customer-service pushes).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiSpec {
    /// The AppID.
    pub appid: String,
    /// The AppSecret: never logged (its `Debug` hides it).
    pub appsecret: String,
    /// `https://api.weixin.qq.com`, or a proxy or test stand-in.
    pub base: String,
    /// An extra CA certificate (PEM) trusted beside the built-in roots.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ApiSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSpec")
            .field("appid", &self.appid)
            .field("appsecret", &"<hidden>")
            .field("base", &self.base)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The API keys of `[account]` as given.
pub(super) struct RawApi {
    pub(super) appid: Option<String>,
    pub(super) appsecret: Option<String>,
    pub(super) api_base: Option<String>,
    pub(super) api_ca_file: Option<String>,
}

impl RawApi {
    /// `None` when no appsecret is given (the API is not used).
    pub(super) fn validate(self, base: &Path, problems: &mut Vec<String>) -> Option<ApiSpec> {
        let api_base = self
            .api_base
            .unwrap_or_else(|| defaults::API_BASE.to_owned());
        let api_base = api_base.trim_end_matches('/').to_owned();
        if let Err(e) = super::rules::check_hook_url(&api_base) {
            problems.push(format!("account.api_base: {e}"));
        } else if let Some(rest) = api_base.strip_prefix("http://") {
            // The AppSecret and the access token travel to it: in clear only on this
            // machine.
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            };
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback());
            if !loopback {
                problems.push(format!(
                    "account.api_base: {api_base:?} is plain http to another machine: the AppSecret and the access token would travel in clear; use https:// (http:// only to this machine)"
                ));
            }
        }
        let ca_file = self.api_ca_file.map(|f| base.join(f));
        let secret = self.appsecret?;
        if secret.is_empty()
            || secret.len() > 64
            || !secret.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            problems.push(
                "account.appsecret: is not an AppSecret (ASCII letters and digits, from the admin panel)"
                    .to_owned(),
            );
        }
        let Some(appid) = self.appid else {
            problems.push("account.appid: required with appsecret".to_owned());
            return None;
        };
        Some(ApiSpec {
            appid,
            appsecret: secret,
            base: api_base,
            ca_file,
        })
    }
}

impl RawLate {
    /// Check `[late]`; `api` says whether the customer-service API can be called.
    pub(super) fn validate(self, api: bool, check: &mut Check<'_>) -> Late {
        let word = self.mode.as_deref().unwrap_or(defaults::LATE_MODE);
        let mode = LateMode::from_label(word).unwrap_or_else(|| {
            check.problems.push(format!(
                "late.mode: {word:?} is not one of \"hold\", \"customer_service\", \"off\""
            ));
            LateMode::Off
        });
        if mode == LateMode::CustomerService && !api {
            check.problems.push(
                "late.mode: customer_service needs account.appid and account.appsecret (the API's credentials)"
                    .to_owned(),
            );
        }
        let (default_ttl, min, max) = defaults::PICKUP_TTL_SECS;
        let pickup_ttl_secs = match self.pickup_ttl_secs {
            None => default_ttl,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                check.problems.push(format!(
                    "late.pickup_ttl_secs: {v} is out of range: must be {min} to {max}"
                ));
                default_ttl
            }
        };
        let pickup: Vec<String> = self
            .pickup
            .unwrap_or_else(|| {
                defaults::LATE_PICKUP
                    .iter()
                    .map(|w| w.to_string())
                    .collect()
            })
            .into_iter()
            .map(|w| w.trim().to_owned())
            .collect();
        if pickup.iter().any(String::is_empty) {
            check
                .problems
                .push("late.pickup: a pick-up word is empty".to_owned());
        }
        if pickup.is_empty() && mode != LateMode::Off {
            check.warnings.push(
                "late.pickup: no pick-up words: a late answer can only be delivered by push"
                    .to_owned(),
            );
        }
        let reply = |given: Option<Reply>, default: &str, key: &str, check: &mut Check<'_>| {
            template_plain(
                given.unwrap_or_else(|| Reply::Text(default.to_owned())),
                key,
                check,
            )
        };
        Late {
            mode,
            pending: reply(self.pending, defaults::LATE_PENDING, "late.pending", check),
            still_running: reply(
                self.still_running,
                defaults::LATE_STILL_RUNNING,
                "late.still_running",
                check,
            ),
            pickup,
            pickup_ttl_secs,
        }
    }
}
