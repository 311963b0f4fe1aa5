//! The async answer path both shells share: the core's decision, then the answer
//! protocol ([`crate::protocol`]) driven over the stores: once per message however
//! often WeChat retries, reply programs and hooks (run once, killed on timeout,
//! capped), the reply budget, late answers.
//!
//! The engine decides nothing the protocol decides: it turns each action into IO
//! ([`stores`], [`program`], [`http`], [`api`]) and each outcome back into an event.
//! Time is tokio's clock, so tests pause and advance it.

pub mod api;
mod drive;
pub mod http;
pub mod program;
mod rng;
pub mod store;
pub mod stores;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::defaults;
use crate::core::late::LateMode;
use crate::core::reply::Reply;
use crate::core::rules::{Action as RuleAction, Decision, Program};
use crate::core::{Answer, Pending, Rejection, Request, Responder, Response, Step, Via};
use crate::protocol::{Job, LatePolicy, Ms, Work, LEASE_MARGIN};
pub use rng::ThreadRng;
use store::{MemoryStore, Sealer, Shared};
pub use stores::Stores;

/// Settings of the answer path (`[server]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// The whole answer goes out within this time from the request's first byte.
    pub reply_budget: Duration,
    /// Reply programs running at once.
    pub max_programs: usize,
    /// Reply programs one follower may have running at once (in one process).
    pub max_programs_per_sender: usize,
    /// Entries the in-memory store holds at most.
    pub cache_entries: usize,
    /// Bytes the in-memory store holds at most (about).
    pub cache_bytes: usize,
    /// How long an answer is kept for retries and replays.
    pub cache_retention: Duration,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            reply_budget: Duration::from_millis(defaults::REPLY_BUDGET_MS),
            max_programs: defaults::MAX_PROGRAMS,
            max_programs_per_sender: defaults::MAX_PROGRAMS_PER_SENDER.default as usize,
            cache_entries: defaults::RETRY_CACHE_ENTRIES,
            cache_bytes: defaults::RETRY_CACHE_BYTES,
            cache_retention: defaults::retention(defaults::TIMESTAMP_WINDOW_SECS),
        }
    }
}

/// One account the engine answers for: its rules and keys, the path it is served at,
/// its API credentials.
pub struct AccountEntry {
    /// The account's name (`default` for the single `[account]` form): in logs, keys,
    /// the archive and metrics.
    pub name: Arc<str>,
    /// The request path (`DOCUMENT_URI` or `SCRIPT_NAME`) it answers; `None`: any path
    /// (the single `[account]` form).
    pub path: Option<String>,
    /// Its token, mode, keys, rules and late-answer settings.
    pub responder: Arc<Responder>,
    /// WeChat's API credentials (customer-service pushes), if configured.
    pub api: Option<Arc<crate::config::ApiSpec>>,
    /// Its keys for the shared store.
    seal: Sealer,
    /// `[late]`, as the protocol reads it (`None`: off).
    late: Option<LatePolicy>,
    /// The HTTP client (hooks and the API), made on first use.
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl AccountEntry {
    /// An account answering at `path` (`None`: any path). Its shared-store keys come
    /// from `secret` (`[state] secret`), or from its token.
    pub fn new(
        name: &str,
        path: Option<String>,
        responder: Responder,
        api: Option<crate::config::ApiSpec>,
        secret: Option<&str>,
    ) -> AccountEntry {
        let key = secret.map_or(responder.account.token.as_bytes(), str::as_bytes);
        let seal = Sealer::new(key, name);
        let late = &responder.late;
        let late = (late.mode != LateMode::Off).then(|| LatePolicy {
            mode: late.mode,
            pickup_ttl: late.pickup_ttl_secs.saturating_mul(1000),
        });
        AccountEntry {
            name: Arc::from(name),
            path,
            responder: Arc::new(responder),
            api: api.map(Arc::new),
            seal,
            late,
            http: std::sync::OnceLock::new(),
        }
    }

    /// The HTTP client, made on first use (trusting this account's `api_ca_file`).
    fn http(&self) -> Result<reqwest::Client, String> {
        self.http
            .get_or_init(|| {
                let ca = self.api.as_ref().and_then(|a| a.ca_file.as_deref());
                http::client(ca).map_err(|e| e.to_string())
            })
            .clone()
    }

    /// The program of the rule named `rule` (`default` for the default), if it runs
    /// one.
    fn program(&self, rule: &str) -> Option<Arc<Program>> {
        let rules = &self.responder.rules;
        let named = rules
            .rules
            .iter()
            .find(|r| &*r.name == rule)
            .map(|r| &r.action);
        let action = named.or(if rule == "default" {
            rules.default.as_ref()
        } else {
            None
        })?;
        match action {
            RuleAction::Run { program, .. } => Some(program.clone()),
            RuleAction::Replies(_) => None,
        }
    }

    /// A store key of this account: `KIND/ACCOUNT/REST`.
    fn key(&self, kind: &str, rest: &str) -> Arc<str> {
        let mut key = String::with_capacity(kind.len() + self.name.len() + rest.len() + 2);
        key.push_str(kind);
        key.push('/');
        key.push_str(&self.name);
        key.push('/');
        key.push_str(rest);
        Arc::from(key)
    }
}

/// The answer path: the accounts (swapped together on reload), the stores, the program
/// cap.
pub struct Engine {
    accounts: RwLock<Arc<Vec<Arc<AccountEntry>>>>,
    stores: Arc<Stores>,
    programs: Arc<Semaphore>,
    /// Programs running per follower (only followers with one running are listed).
    per_sender: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Where accepted messages are archived, if anywhere.
    archive: Option<crate::archive::Archive>,
    /// The tasks running programs and pushes (finished ones are pruned as new ones
    /// start).
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    config: EngineConfig,
    /// The status and ping paths, if configured.
    status: Option<crate::config::StatusConfig>,
}

impl Engine {
    /// An engine for one account (at any path), in memory only, sized by `config`.
    pub fn new(responder: Responder, config: EngineConfig) -> Engine {
        let account = AccountEntry::new("default", None, responder, None, None);
        Engine::with_shared(vec![account], config, None)
    }

    /// An engine over the store `spec` names (opening a SQLite file blocks: call at
    /// start-up).
    pub fn open(
        accounts: Vec<AccountEntry>,
        config: EngineConfig,
        spec: &crate::config::StoreSpec,
    ) -> anyhow::Result<Engine> {
        let shared = match spec {
            crate::config::StoreSpec::Memory => None,
            crate::config::StoreSpec::Sqlite(path) => {
                Some(Shared::Sqlite(store::SqliteStore::open(path)?))
            }
            crate::config::StoreSpec::Redis {
                url,
                prefix,
                ca_file,
            } => Some(Shared::Redis(store::RedisStore::open(
                url,
                prefix,
                ca_file.as_deref(),
            )?)),
        };
        Ok(Engine::with_shared(accounts, config, shared))
    }

    /// An engine over this process's memory and, if given, a shared store.
    pub fn with_shared(
        accounts: Vec<AccountEntry>,
        config: EngineConfig,
        shared: Option<Shared>,
    ) -> Engine {
        let local = MemoryStore::new(
            config.cache_entries,
            config.cache_bytes,
            config.cache_retention.as_millis() as Ms,
        );
        let stores = Stores::new(local, shared, config.cache_retention.as_millis() as Ms);
        Engine {
            accounts: RwLock::new(Arc::new(accounts.into_iter().map(Arc::new).collect())),
            stores: Arc::new(stores),
            programs: Arc::new(Semaphore::new(config.max_programs.max(1))),
            per_sender: Arc::default(),
            tasks: std::sync::Mutex::default(),
            archive: None,
            config,
            status: None,
        }
    }

    /// Answer the status and ping paths (and count requests for the status).
    /// Counting for the status page starts with [`crate::metrics::Metrics::enable`].
    pub fn with_status(mut self, status: Option<crate::config::StatusConfig>) -> Engine {
        self.status = status;
        self
    }

    /// The status page or the ping answer, when `path` is one of theirs: JSON, or
    /// Prometheus' text format when the query says `format=prometheus` or the client
    /// accepts `text/plain; version=0.0.4`. 403 from an address not allowed.
    pub fn status_page(
        &self,
        path: &str,
        query: &str,
        remote_addr: &str,
        accept: &str,
    ) -> Option<Response> {
        let status = self.status.as_ref()?;
        let is = |p: &Option<String>| p.as_deref() == Some(path);
        let (is_status, is_ping) = (is(&status.status_path), is(&status.ping_path));
        if !is_status && !is_ping {
            return None;
        }
        let allowed = remote_addr
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| status.allowed.contains(&ip.to_canonical()));
        if !allowed {
            return Some(Response::rejected(Rejection::StatusForbidden));
        }
        if is_ping {
            return Some(Response::status_page(
                "text/plain; charset=utf-8",
                b"pong\n".to_vec(),
            ));
        }
        let others = crate::metrics::Others {
            archive: self.archive.as_ref().map(|a| (a.written(), a.lost())),
            log_dropped: crate::log::dropped(),
        };
        let prometheus = form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "format" && v == "prometheus")
            || (accept.contains("text/plain") && accept.contains("0.0.4"));
        Some(if prometheus {
            Response::status_page(
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::prometheus(others),
            )
        } else {
            Response::status_page("application/json", crate::metrics::json(others, unix_now()))
        })
    }

    /// Archive every message this engine decides before its reply leaves.
    pub fn with_archive(mut self, archive: crate::archive::Archive) -> Engine {
        self.archive = Some(archive);
        self
    }

    /// The archive, if one is configured.
    pub fn archive(&self) -> Option<&crate::archive::Archive> {
        self.archive.as_ref()
    }

    /// The stores answers are kept in.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The accounts in force now.
    pub fn accounts(&self) -> Arc<Vec<Arc<AccountEntry>>> {
        self.accounts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Put new accounts (rules, keys) in force, all at once; requests already running
    /// finish with the old ones.
    pub fn reload(&self, accounts: Vec<AccountEntry>) {
        let accounts = Arc::new(accounts.into_iter().map(Arc::new).collect());
        *self.accounts.write().unwrap_or_else(|p| p.into_inner()) = accounts;
    }

    /// The account serving `path`: the one whose `path` it is, or the single account
    /// that has none.
    fn route(&self, path: &str) -> Option<Arc<AccountEntry>> {
        let accounts = self.accounts();
        accounts
            .iter()
            .find(|a| a.path.as_deref().is_none_or(|p| p == path))
            .cloned()
    }

    /// Answer one request for the account at `path` and log it. `body` is the request
    /// body, or why the shell refused it; `started` is when its first byte arrived (the
    /// budget counts from it).
    pub async fn answer(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Result<&[u8], Rejection>,
        started: Instant,
    ) -> Response {
        let account = self.route(path);
        let response = match (body, &account) {
            (Err(rejection), _) => Response::rejected(rejection),
            (Ok(_), None) => {
                Response::rejected(Rejection::NoAccount(path.chars().take(100).collect()))
            }
            (Ok(body), Some(account)) => {
                let request = Request {
                    method,
                    query,
                    body,
                };
                match account
                    .responder
                    .prepare(&request, unix_now(), &mut ThreadRng)
                {
                    Step::Done(response) => response,
                    Step::Handshake {
                        response,
                        signed_query,
                    } => {
                        self.handshake(account, response, &signed_query, query, started)
                            .await
                    }
                    Step::Message(pending) => {
                        let digest = store::body_digest(body);
                        self.resolve(account, pending, started, digest).await
                    }
                }
            }
        };
        let latency = started.elapsed();
        let name = account.as_ref().map_or("-", |a| &a.name);
        crate::metrics::METRICS.request(name, &response, latency);
        crate::log::request(method, &response, latency);
        response
    }

    /// A valid handshake: bound like a message's query (to the echo it asked for), so
    /// that its signed query cannot be replayed as a POST.
    async fn handshake(
        &self,
        account: &Arc<AccountEntry>,
        response: Response,
        signed_query: &str,
        query: &str,
        started: Instant,
    ) -> Response {
        let mut marked = Vec::with_capacity(query.len() + 4);
        marked.extend_from_slice(b"GET\n");
        marked.extend_from_slice(&response.body);
        let digest = store::body_digest(&marked);
        let work = Work::Handshake;
        match self
            .drive(account, None, work, signed_query, "-", "-", digest, started)
            .await
        {
            crate::protocol::Final::QueryReused => Response::rejected(Rejection::QueryReused),
            _ => response,
        }
    }

    async fn resolve(
        &self,
        account: &Arc<AccountEntry>,
        pending: Pending,
        started: Instant,
        digest: crate::protocol::Digest,
    ) -> Response {
        use crate::protocol::Final;
        let work = work_of(&pending, self.config.reply_budget);
        let verdict = self
            .drive(
                account,
                Some(&pending),
                work,
                &pending.signed_query,
                &pending.key,
                &pending.context.follower,
                digest,
                started,
            )
            .await;
        let (answer, decided) = match verdict {
            Final::QueryReused => return Response::rejected(Rejection::QueryReused),
            Final::Handshake => return Response::rejected(Rejection::QueryReused),
            Final::Answer { answer, decided } => (Some(answer), decided),
            Final::Success { via, decided } => (
                Some(Answer {
                    reply: None,
                    rule: rule_of(&pending),
                    via,
                }),
                decided,
            ),
            Final::Pending { decided } => {
                let pending_reply = pending.late.as_ref().map(|p| p.pending.clone());
                tracing::info!(
                    key = %crate::log::Escaped(&pending.key),
                    follower = %crate::log::Escaped(&pending.context.follower),
                    "answer not ready on WeChat's last attempt: sent the pending reply, the answer waits for a pick-up"
                );
                (
                    Some(Answer {
                        reply: pending_reply,
                        rule: rule_of(&pending),
                        via: Via::LateHold,
                    }),
                    decided,
                )
            }
        };
        let answer = answer.filter(|a| a.via != Via::Deadline || a.reply.is_some());
        if decided {
            if let Some(archive) = &self.archive {
                // On disk before the reply leaves (retries are not archived again).
                let line =
                    archive_record(&account.name, &pending, answer.as_ref(), started.elapsed());
                archive.record(line).await;
            }
        }
        let Some(answer) = answer else {
            tracing::warn!(
                key = %crate::log::Escaped(&pending.key),
                budget_ms = self.config.reply_budget.as_millis() as u64,
                "reply budget ran out before the answer was ready: answering success"
            );
            return Response::success(pending.msg_type, Via::Deadline);
        };
        if answer.via == Via::Pickup {
            tracing::info!(
                follower = %crate::log::Escaped(&pending.context.follower),
                "late answer picked up"
            );
        }
        account.responder.complete(
            &pending.context,
            pending.msg_type,
            &answer,
            unix_now(),
            &mut ThreadRng,
        )
    }

    /// Whether a reply program (or a push) is still running.
    pub fn programs_running(&self) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().any(|t| !t.is_finished())
    }

    /// Wait until every running program has finished and its answer is stored (each
    /// is bounded by its own timeout), and every push is done.
    pub async fn finish_programs(&self) {
        loop {
            let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            if tasks.is_empty() {
                return;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }

    /// Count a program for `sender`, or `None` when it has as many running as allowed.
    fn sender_slot(&self, sender: &str) -> Option<SenderSlot> {
        let mut running = self.per_sender.lock().unwrap_or_else(|p| p.into_inner());
        let count = running.entry(sender.to_owned()).or_insert(0);
        if *count >= self.config.max_programs_per_sender {
            return None;
        }
        *count += 1;
        Some(SenderSlot {
            sender: sender.to_owned(),
            running: self.per_sender.clone(),
        })
    }
}

/// What deciding a message takes, from the rules' decision and the late plan.
fn work_of(pending: &Pending, _budget: Duration) -> Work {
    let work = match &pending.decision {
        Decision::Run {
            rule,
            program,
            fallback,
        } => Work::Run {
            job: Arc::new(Job {
                rule: rule.clone(),
                input: Arc::from(pending.json.as_deref().unwrap_or_default()),
                lease: program.timeout_ms + LEASE_MARGIN,
                fallback: fallback.clone(),
            }),
            fallback: Answer {
                reply: fallback.clone(),
                rule: rule.clone(),
                via: Via::Fallback,
            },
        },
        decision => Work::Known(Answer::from_decision(decision).unwrap_or(Answer {
            reply: None,
            rule: Arc::from("-"),
            via: Via::Rule,
        })),
    };
    match &pending.late {
        Some(plan) if plan.pickup => Work::Pickup {
            then: Box::new(work),
            still_running: plan.still_running.clone(),
        },
        _ => work,
    }
}

fn rule_of(pending: &Pending) -> Arc<str> {
    match &pending.decision {
        Decision::Run { rule, .. } | Decision::Reply { rule, .. } => rule.clone(),
        Decision::Nothing => Arc::from("-"),
    }
}

/// One running program counted for its follower; uncounted when dropped.
struct SenderSlot {
    sender: String,
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Drop for SenderSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = running.get_mut(&self.sender) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.sender);
            }
        }
    }
}

/// Call a reply hook within its timeout, counted against `max_programs` like a
/// program.
async fn hook(
    client: &reqwest::Client,
    url: &str,
    rule: &str,
    input: Vec<u8>,
    program: &Program,
    permits: &Semaphore,
) -> Result<Option<Reply>, String> {
    let (_permit, deadline) = program::slot(program, permits).await?;
    let left = deadline.saturating_duration_since(Instant::now());
    http::call_hook(client, url, rule, input, left).await
}

/// `scheme://host[:port]` of a URL, for logs (a query may hold a secret).
pub(crate) fn url_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find(['/', '?', '#']) {
        Some(end) => &url[..after_scheme + end],
        None => url,
    }
}

/// One archive line: when, who, the message as programs get it, the answer and how it
/// came about. Written straight from borrowed fields, in this order.
fn archive_record(
    name: &str,
    pending: &Pending,
    answer: Option<&Answer>,
    latency: Duration,
) -> Vec<u8> {
    /// `reply`: the reply in the config's shape, or the string `success`.
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum ReplyField<'a> {
        Reply(&'a Reply),
        Success(&'static str),
    }
    #[derive(serde::Serialize)]
    struct Record<'a> {
        received_ms: u64,
        account: &'a str,
        account_name: &'a str,
        from: &'a str,
        msg_type: &'a str,
        key: &'a str,
        via: &'static str,
        rule: &'a str,
        reply: ReplyField<'a>,
        latency_us: u64,
    }
    let (via, rule, reply) = match answer {
        Some(a) => (a.via, &*a.rule, a.reply.as_deref()),
        None => (Via::Deadline, "-", None),
    };
    let record = Record {
        received_ms: unix_ms().saturating_sub(latency.as_millis() as u64),
        account: &pending.context.account,
        account_name: name,
        from: &pending.context.follower,
        msg_type: &pending.msg_type,
        key: &pending.key,
        via: via.label(),
        rule,
        reply: reply.map_or(ReplyField::Success("success"), ReplyField::Reply),
        latency_us: latency.as_micros() as u64,
    };
    let mut line = Vec::with_capacity(256 + pending.json.as_ref().map_or(0, Vec::len));
    // Serializing borrowed strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, &record);
    // The message JSON, as a reply program gets it, added as the last member.
    if let (Some(message), Some(b'}')) = (&pending.json, line.last()) {
        line.pop();
        line.extend_from_slice(b",\"message\":");
        line.extend_from_slice(message);
        line.push(b'}');
    }
    line
}

/// The Unix time in milliseconds.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
