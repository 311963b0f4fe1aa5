//! The async answer path both shells share: the core's decision, the answer store (one
//! answer per message however often WeChat retries), reply programs (run once, killed on
//! timeout, capped in number), and the reply budget (answer before WeChat's 5 s).
//!
//! Time on this path is tokio's clock ([`tokio::time::Instant`]): the tests pause and
//! advance it. Unix time (the core's `now`) comes from [`unix_now`].

pub mod api;
pub mod http;
mod late;
pub mod program;
mod rng;
pub mod store;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::defaults;
use crate::core::reply::Reply;
use crate::core::rules::{Decision, Program};
use crate::core::{Answer, Pending, Rejection, Request, Responder, Response, Step, Via};
pub use rng::ThreadRng;
use store::{Claim, MemoryStore, Store};

/// Settings of the answer path (`[server]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// The whole answer goes out within this time from the request's first byte.
    pub reply_budget: Duration,
    /// Reply programs running at once.
    pub max_programs: usize,
    /// Reply programs one follower may have running at once.
    pub max_programs_per_sender: usize,
    /// Entries the in-memory store holds at most.
    pub cache_entries: usize,
    /// Bytes the in-memory store's answers take at most (about).
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

/// How long a program's claim on a message lasts past its timeout: the program is
/// killed at its timeout, so an unanswered lease means its process died.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

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
    /// The HTTP client (hooks and the API), made on first use.
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
}

impl AccountEntry {
    /// An account answering at `path` (`None`: any path).
    pub fn new(
        name: &str,
        path: Option<String>,
        responder: Responder,
        api: Option<crate::config::ApiSpec>,
    ) -> AccountEntry {
        AccountEntry {
            name: Arc::from(name),
            path,
            responder: Arc::new(responder),
            api: api.map(Arc::new),
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
}

/// The answer path: the accounts (swapped together on reload), the store, the program
/// cap.
pub struct Engine {
    accounts: RwLock<Arc<Vec<Arc<AccountEntry>>>>,
    store: Arc<Store>,
    programs: Arc<Semaphore>,
    /// Programs running per follower (only followers with one running are listed).
    per_sender: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Where accepted messages are archived, if anywhere.
    archive: Option<crate::archive::Archive>,
    /// The tasks running programs (finished ones are pruned as new ones start).
    program_tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    config: EngineConfig,
    /// The status and ping paths, if configured.
    status: Option<crate::config::StatusConfig>,
}

impl Engine {
    /// An engine for one account (at any path) over an in-memory store sized by
    /// `config`.
    pub fn new(responder: Responder, config: EngineConfig) -> Engine {
        let store = MemoryStore::new(
            config.cache_entries,
            config.cache_bytes,
            config.cache_retention,
        );
        let account = AccountEntry::new("default", None, responder, None);
        Engine::with_store(vec![account], config, Store::Memory(store))
    }

    /// An engine over the store `spec` names (opening a SQLite file blocks: call at
    /// start-up).
    pub fn open(
        accounts: Vec<AccountEntry>,
        config: EngineConfig,
        spec: &crate::config::StoreSpec,
    ) -> anyhow::Result<Engine> {
        let store = match spec {
            crate::config::StoreSpec::Memory => Store::Memory(MemoryStore::new(
                config.cache_entries,
                config.cache_bytes,
                config.cache_retention,
            )),
            crate::config::StoreSpec::Sqlite(path) => {
                Store::Sqlite(store::SqliteStore::open(path, config.cache_retention)?)
            }
            crate::config::StoreSpec::Redis { url, prefix } => Store::Redis(
                store::RedisStore::open(url, prefix, config.cache_retention)?,
            ),
        };
        Ok(Engine::with_store(accounts, config, store))
    }

    /// An engine over the given store.
    pub fn with_store(accounts: Vec<AccountEntry>, config: EngineConfig, store: Store) -> Engine {
        Engine {
            accounts: RwLock::new(Arc::new(accounts.into_iter().map(Arc::new).collect())),
            store: Arc::new(store),
            programs: Arc::new(Semaphore::new(config.max_programs.max(1))),
            per_sender: Arc::default(),
            program_tasks: std::sync::Mutex::default(),
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

    /// Archive every message this engine decides (the winner of its claim) before its
    /// reply leaves.
    pub fn with_archive(mut self, archive: crate::archive::Archive) -> Engine {
        self.archive = Some(archive);
        self
    }

    /// The archive, if one is configured.
    pub fn archive(&self) -> Option<&crate::archive::Archive> {
        self.archive.as_ref()
    }

    /// The store answers are kept in.
    pub fn store(&self) -> &Store {
        &self.store
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
                    Step::Message(mut pending) => {
                        if account.path.is_some() {
                            // Several accounts share the store: their keys never meet.
                            for key in [&mut pending.key, &mut pending.signed_query] {
                                key.insert(0, '/');
                                key.insert_str(0, &account.name);
                            }
                        }
                        let digest = store::body_digest(body);
                        self.resolve(account, pending, started, &digest).await
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

    async fn resolve(
        &self,
        account: &Arc<AccountEntry>,
        pending: Pending,
        started: Instant,
        body: &store::BodyDigest,
    ) -> Response {
        let responder = &account.responder;
        let Some((answer, decided_here)) = self.settle(account, &pending, started, body).await
        else {
            return Response::rejected(Rejection::QueryReused);
        };
        if decided_here {
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
        responder.complete(
            &pending.context,
            pending.msg_type,
            &answer,
            unix_now(),
            &mut ThreadRng,
        )
    }

    /// The message's answer, decided once across retries: stored at once when a rule
    /// gives it, else claimed and worked out (a program, a hook, a pick-up), or waited
    /// for when another request holds the claim. With `[late]` on, an answer not ready
    /// in time is held for WeChat's next attempt, or goes late (see [`late`]).
    ///
    /// Returns the answer (`None`: the budget ran out, answer `success`) and whether
    /// this request decided it (won the claim), which makes it the one that archives
    /// the message; `None` when the request's signed query came before with another
    /// body.
    async fn settle(
        &self,
        account: &Arc<AccountEntry>,
        pending: &Pending,
        started: Instant,
        body: &store::BodyDigest,
    ) -> Option<(Option<Answer>, bool)> {
        let key = pending.key.as_str();
        let plan = pending.late.as_ref();
        let pickup = plan.is_some_and(|p| p.pickup);
        // A pick-up claims its message like a program does, so that it happens once
        // however often WeChat retries it.
        let known = Answer::from_decision(&pending.decision).filter(|_| !pickup);
        let lease = match &pending.decision {
            Decision::Run { program, .. } => {
                Duration::from_millis(program.timeout_ms) + LEASE_MARGIN
            }
            _ => LEASE_MARGIN,
        };
        let first = match &known {
            Some(answer) => store::First::Known(answer),
            None => store::First::Claim(lease),
        };
        let opened = self
            .store
            .open_message(&pending.signed_query, body, key, first, Instant::now())
            .await;
        let mut claim = match opened {
            store::Opened::QueryReused => return None,
            store::Opened::Stored => return Some((known, true)),
            store::Opened::Claim(claim) => claim,
        };
        let mut deadline = started + self.config.reply_budget;
        let mut won = false;
        let mut counted = false;
        loop {
            match claim {
                Claim::Answered(answer) => {
                    // An answer that went (or goes) out late is delivered once, never
                    // again to a retry or to an attempt that was held meanwhile.
                    if plan.is_some() && (counted || !won) && self.went_late(key).await {
                        let done = Answer {
                            reply: None,
                            via: Via::LateDone,
                            ..answer
                        };
                        return Some((Some(done), won));
                    }
                    if won {
                        return Some((Some(answer), true));
                    }
                    let retry = Answer {
                        via: Via::Retry,
                        ..answer
                    };
                    return Some((Some(retry), false));
                }
                Claim::Won => {
                    won = true;
                    if let Some(plan) = plan.filter(|p| p.pickup) {
                        if let Some(answer) = self.pick_up(pending, plan).await {
                            self.store.finish(key, answer.clone(), Instant::now()).await;
                            return Some((Some(answer), true));
                        }
                    }
                    match (Answer::from_decision(&pending.decision), &pending.decision) {
                        (Some(answer), _) => {
                            self.store.finish(key, answer.clone(), Instant::now()).await;
                            return Some((Some(answer), true));
                        }
                        (
                            None,
                            Decision::Run {
                                rule,
                                program,
                                fallback,
                            },
                        ) => {
                            let sender = &pending.context.follower;
                            let Some(slot) = self.sender_slot(sender) else {
                                tracing::warn!(
                                    %rule,
                                    follower = %crate::log::Escaped(sender),
                                    limit = self.config.max_programs_per_sender,
                                    "this follower already has max_programs_per_sender programs running: answering with the fallback"
                                );
                                let answer = Answer {
                                    reply: fallback.clone(),
                                    rule: rule.clone(),
                                    via: Via::Fallback,
                                };
                                self.store.finish(key, answer.clone(), Instant::now()).await;
                                return Some((Some(answer), true));
                            };
                            self.spawn_program(
                                account,
                                pending,
                                rule.clone(),
                                program.clone(),
                                fallback.clone(),
                                slot,
                            )
                        }
                        (None, _) => return Some((None, true)), // from_decision covers the others
                    }
                }
                Claim::Held { until } => {
                    if let (Some(plan), false) = (plan, counted) {
                        counted = true;
                        if let Some(hold) = self.hold_until(key, plan, started, lease).await {
                            deadline = hold;
                        }
                    }
                    if Instant::now() >= deadline {
                        return match plan {
                            Some(plan) if !plan.pickup => {
                                Some((Some(self.go_late(account, pending, plan).await), won))
                            }
                            _ => Some((None, won)),
                        };
                    }
                    self.store.wait(key, until.min(deadline)).await;
                }
            }
            claim = self.store.claim(key, Instant::now(), lease).await;
        }
    }

    /// Run a program (or call a hook) in the background; its answer goes to the store,
    /// where the request (and any retry) waits for it. It keeps running past the
    /// request's budget up to its own timeout, so a slow answer still serves WeChat's
    /// retry, or goes late.
    fn spawn_program(
        &self,
        account: &AccountEntry,
        pending: &Pending,
        rule: Arc<str>,
        program: Arc<Program>,
        fallback: Option<Arc<Reply>>,
        slot: SenderSlot,
    ) {
        let key = pending.key.clone();
        let input = pending.json.clone().unwrap_or_default();
        let late_ttl = pending
            .late
            .as_ref()
            .map(|p| Duration::from_secs(p.pickup_ttl_secs));
        let store = self.store.clone();
        let permits = self.programs.clone();
        let client = program.url.as_ref().map(|_| account.http());
        let task = tokio::spawn(async move {
            let _slot = slot;
            let started = Instant::now();
            let (what, result) = match (&program.url, client) {
                (Some(url), Some(client)) => {
                    let result = match client {
                        Ok(client) => hook(&client, url, &rule, input, &program, &permits).await,
                        Err(e) => Err(format!("no HTTP client: {e}")),
                    };
                    ("hook", result)
                }
                _ => (
                    "program",
                    program::run(&program, &rule, &input, &permits).await,
                ),
            };
            let target = match &program.url {
                Some(url) => crate::log::Escaped(late::url_origin(url)).to_string(),
                None => crate::log::Escaped(program.command.first().map_or("", String::as_str))
                    .to_string(),
            };
            crate::metrics::METRICS.program(match &result {
                Ok(_) => crate::metrics::ProgramEnd::Answered,
                Err(cause) if cause.starts_with("timed out") => {
                    crate::metrics::ProgramEnd::TimedOut
                }
                Err(_) => crate::metrics::ProgramEnd::Failed,
            });
            let answer = match result {
                Ok(reply) => {
                    tracing::info!(
                        %rule,
                        %what,
                        %target,
                        ms = started.elapsed().as_millis() as u64,
                        "program answered"
                    );
                    Answer {
                        reply: reply.map(Arc::new),
                        rule,
                        via: Via::Program,
                    }
                }
                Err(cause) => {
                    tracing::warn!(
                        %rule,
                        %what,
                        %target,
                        cause = %crate::log::Escaped(&cause),
                        "program failed: answering with the fallback"
                    );
                    Answer {
                        reply: fallback,
                        rule,
                        via: Via::Fallback,
                    }
                }
            };
            store.finish(&key, answer.clone(), Instant::now()).await;
            if let Some(ttl) = late_ttl {
                late::keep_if_late(&store, &key, &answer, ttl).await;
            }
        });
        let mut tasks = self.program_tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Whether a reply program is still running (its answer not stored yet).
    pub fn programs_running(&self) -> bool {
        let tasks = self.program_tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().any(|t| !t.is_finished())
    }

    /// Wait until every running program has finished and its answer is stored (each
    /// is bounded by its own timeout).
    pub async fn finish_programs(&self) {
        let tasks =
            std::mem::take(&mut *self.program_tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Engine {
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
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::Outcome;

    const TOKEN: &str = "testtoken123";

    fn engine(budget_ms: u64) -> Engine {
        let text = format!(
            "[server]\nreply_budget_ms = {budget_ms}\n[account]\ntoken = \"{TOKEN}\"\n\
             [[rule]]\ntext = \"hi\"\nreply = {{ text = \"Hello!\" }}\n"
        );
        let config = Config::parse(&text).unwrap();
        Engine::new(config.accounts[0].responder.clone(), config.server.engine)
    }

    /// A text message "hi" with this MsgId, and its retry key.
    fn message(msg_id: u64) -> (String, String) {
        let body = crate::sample::text_with_id("gh", "oF", unix_now(), "hi", msg_id);
        (body, format!("m:{msg_id}:oF"))
    }

    async fn post(engine: &Engine, body: &str) -> Response {
        post_signed(engine, body, "1").await
    }

    /// POST `body` to `/wechat`, signed now with `nonce`.
    pub(super) async fn post_signed(engine: &Engine, body: &str, nonce: &str) -> Response {
        let query = crate::sample::signed_query(TOKEN, unix_now(), nonce);
        engine
            .answer(
                "POST",
                "/wechat",
                &query,
                Ok(body.as_bytes()),
                Instant::now(),
            )
            .await
    }

    fn via(response: &Response) -> Option<Via> {
        match &response.outcome {
            Outcome::Reply { via, .. } | Outcome::Success { via, .. } => Some(*via),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rule_answer_is_stored_at_once_and_a_retry_gets_it() {
        let engine = engine(4500);
        let (body, _) = message(1);
        let t0 = Instant::now();
        let first = post(&engine, &body).await;
        assert_eq!(via(&first), Some(Via::Rule));
        let again = post(&engine, &body).await;
        assert_eq!(via(&again), Some(Via::Retry));
        assert_eq!(t0.elapsed(), Duration::ZERO, "nothing waited");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_held_elsewhere_past_the_budget_gets_success_at_the_budget() {
        let engine = engine(1200);
        let (body, key) = message(2);
        // Another request (or process) holds the message for longer than the budget.
        let t0 = Instant::now();
        let held = engine
            .store()
            .claim(&key, t0, Duration::from_secs(10))
            .await;
        assert_eq!(held, Claim::Won);
        let response = post(&engine, &body).await;
        assert_eq!(via(&response), Some(Via::Deadline));
        assert_eq!(response.body, b"success");
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(1200),
            "answered at the budget"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_retry_gets_the_answer_the_moment_it_is_stored() {
        let engine = Arc::new(engine(4500));
        let (body, key) = message(3);
        let t0 = Instant::now();
        assert_eq!(
            engine
                .store()
                .claim(&key, t0, Duration::from_secs(10))
                .await,
            Claim::Won
        );
        let finisher = engine.clone();
        let stored = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let answer = Answer {
                reply: Some(Arc::new(Reply::Text("from the holder".into()))),
                rule: Arc::from("slow"),
                via: Via::Program,
            };
            finisher
                .store()
                .finish(&stored, answer, Instant::now())
                .await;
        });
        let response = post(&engine, &body).await;
        assert_eq!(via(&response), Some(Via::Retry));
        assert!(String::from_utf8_lossy(&response.body).contains("from the holder"));
        assert_eq!(t0.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_ends_unanswered_is_taken_over_by_the_waiting_request() {
        let engine = engine(4500);
        let (body, key) = message(4);
        let t0 = Instant::now();
        // The holder died: its lease ends at 2 s and nobody stores an answer.
        assert_eq!(
            engine.store().claim(&key, t0, Duration::from_secs(2)).await,
            Claim::Won
        );
        let response = post(&engine, &body).await;
        assert_eq!(
            via(&response),
            Some(Via::Rule),
            "decided here after the takeover"
        );
        assert!(String::from_utf8_lossy(&response.body).contains("Hello!"));
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(2),
            "as soon as the lease ended"
        );
        let retry = post(&engine, &body).await;
        assert_eq!(via(&retry), Some(Via::Retry));
    }
}
