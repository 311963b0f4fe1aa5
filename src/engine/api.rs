//! WeChat's API, as much as late answers need: the access token from
//! `cgi-bin/stable_token` (which does not invalidate other holders' tokens), cached in
//! the shared store so that all processes share one and one refreshes it; and the
//! customer-service push (`cgi-bin/message/custom/send`). docs/protocol.md §7.

use std::time::Duration;

use super::unix_ms;

use crate::config::ApiSpec;
use crate::core::late::{api_outcome, custom_message, ApiOutcome};
use crate::core::reply::Reply;

use super::http::fetch;
use super::store::Sealer;
use super::stores::Stores;

/// Where an account's access token is kept, and who may use it.
pub struct TokenPlace<'a> {
    /// The stores.
    pub stores: &'a Stores,
    /// The account's keys for the shared store.
    pub seal: &'a Sealer,
    /// The account's name (the token's key is scoped by it).
    pub account: &'a str,
}

/// A token is refreshed this long before WeChat says it expires.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// One process refreshes the token; the others wait this long for it, then fetch
/// their own.
pub const TOKEN_LOCK: Duration = Duration::from_secs(5);
/// How often a process waiting for another's refresh looks.
const TOKEN_POLL: Duration = Duration::from_millis(50);
/// Tries of a push when the API cannot be reached, and the first pause between them
/// (doubled each time).
pub const PUSH_TRIES: u32 = 3;
/// See [`PUSH_TRIES`].
pub const PUSH_BACKOFF: Duration = Duration::from_millis(500);

/// Why a push did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// WeChat refused it: its `errcode` and `errmsg`.
    Refused(i64, String),
    /// The API could not be reached, or answered something else.
    Unreachable(String),
    /// The reply cannot be pushed (a transfer to customer service).
    NotPushable,
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Refused(code, msg) => write!(f, "WeChat refused it: errcode {code} {msg}"),
            PushError::Unreachable(why) => write!(f, "API unreachable: {why}"),
            PushError::NotPushable => f.write_str("this reply type cannot be pushed"),
        }
    }
}

fn token_name(account: &str, api: &ApiSpec) -> String {
    format!("t/{account}/{}", api.appid)
}

/// The cached token (`expires_ms token`) if it is still good for [`TOKEN_MARGIN`].
fn good_token(value: Option<Vec<u8>>) -> Option<String> {
    let value = String::from_utf8(value?).ok()?;
    let (expires, token) = value.split_once(' ')?;
    let expires: u64 = expires.parse().ok()?;
    (expires > unix_ms() + TOKEN_MARGIN.as_millis() as u64 && !token.is_empty())
        .then(|| token.to_owned())
}

/// The access token: from the store, or fetched (by one process at a time) and stored.
/// `stale` is a token WeChat just refused: a cached token equal to it is not used, and
/// the fetch forces a new one.
pub async fn access_token(
    client: &reqwest::Client,
    api: &ApiSpec,
    place: &TokenPlace<'_>,
    stale: Option<&str>,
) -> Result<String, PushError> {
    let (stores, seal) = (place.stores, place.seal);
    let name = token_name(place.account, api);
    let usable = |t: Option<String>| t.filter(|t| Some(t.as_str()) != stale);
    if let Some(token) = usable(good_token(stores.get_value(seal, &name).await)) {
        return Ok(token);
    }
    let lock = format!("{name}:refresh");
    if !stores.set_value(seal, &lock, b"1", TOKEN_LOCK, true).await {
        // Another process is refreshing: wait for its token.
        let until = tokio::time::Instant::now() + TOKEN_LOCK;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(TOKEN_POLL).await;
            if let Some(token) = usable(good_token(stores.get_value(seal, &name).await)) {
                return Ok(token);
            }
        }
    }
    let body = serde_json::json!({
        "grant_type": "client_credential",
        "appid": api.appid,
        "secret": api.appsecret,
        "force_refresh": stale.is_some(),
    });
    let answer = call(client, &format!("{}/cgi-bin/stable_token", api.base), &body).await?;
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
        expires_in: u64,
    }
    let token: Token = match api_outcome(&answer) {
        ApiOutcome::Ok => serde_json::from_slice(&answer)
            .map_err(|_| PushError::Unreachable("stable_token answered without a token".into()))?,
        ApiOutcome::Refused(code, msg) => return Err(PushError::Refused(code, msg)),
        ApiOutcome::BadToken(code) => return Err(PushError::Refused(code, String::new())),
        ApiOutcome::Unreadable | ApiOutcome::Busy => {
            return Err(PushError::Unreachable(
                "stable_token answered something else".into(),
            ))
        }
    };
    let lifetime = Duration::from_secs(token.expires_in.clamp(60, 7 * 86_400));
    let value = format!(
        "{} {}",
        unix_ms() + lifetime.as_millis() as u64,
        token.access_token
    );
    stores
        .set_value(seal, &name, value.as_bytes(), lifetime, false)
        .await;
    stores.delete_value(seal, &lock).await;
    tracing::info!(appid = %api.appid, expires_in = token.expires_in, "access token refreshed");
    Ok(token.access_token)
}

/// How long one API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// POST `body` as JSON to an API `url`; its answer's body.
async fn call(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<Vec<u8>, PushError> {
    let request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .timeout(CALL_TIMEOUT);
    fetch(request).await.map_err(PushError::Unreachable)
}

/// Push `reply` to `follower` with the customer-service API: a token error refreshes
/// the token and tries once more; an unreachable API is tried [`PUSH_TRIES`] times
/// with backoff.
pub async fn push(
    client: &reqwest::Client,
    api: &ApiSpec,
    place: &TokenPlace<'_>,
    follower: &str,
    reply: &Reply,
) -> Result<(), PushError> {
    let message = custom_message(follower, reply).ok_or(PushError::NotPushable)?;
    let mut stale: Option<String> = None;
    let mut refreshed = false;
    let mut tries = 0;
    let mut pause = PUSH_BACKOFF;
    loop {
        tries += 1;
        let outcome = async {
            let token = access_token(client, api, place, stale.as_deref()).await?;
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("access_token", &token)
                .finish();
            let url = format!("{}/cgi-bin/message/custom/send?{query}", api.base);
            let answer = call(client, &url, &message).await?;
            Ok::<_, PushError>((token, api_outcome(&answer)))
        }
        .await;
        match outcome {
            Ok((_, ApiOutcome::Ok)) => return Ok(()),
            Ok((token, ApiOutcome::BadToken(code))) => {
                if refreshed {
                    return Err(PushError::Refused(code, "access token refused".into()));
                }
                tracing::info!(errcode = code, "access token refused: refreshing it once");
                refreshed = true;
                stale = Some(token);
            }
            Ok((_, ApiOutcome::Refused(code, msg))) => return Err(PushError::Refused(code, msg)),
            Ok((_, ApiOutcome::Unreadable | ApiOutcome::Busy)) | Err(PushError::Unreachable(_))
                if tries < PUSH_TRIES =>
            {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Ok((_, ApiOutcome::Unreadable)) => {
                return Err(PushError::Unreachable(
                    "the API answered something else".into(),
                ))
            }
            Ok((_, ApiOutcome::Busy)) => {
                return Err(PushError::Unreachable(
                    "the API stayed busy (errcode -1)".into(),
                ))
            }
            Err(e) => return Err(e),
        }
    }
}
