//! The protocol's driver: each [`Action`] carried out, its outcome fed back as an
//! [`Event`], until the attempt responds (or the worker is done).

use std::sync::Arc;

use tokio::time::Instant;

use super::{AccountEntry, Engine, Stores, ThreadRng};
use crate::core::{Answer, Pending, Via};
use crate::protocol::{
    Action, Attempt, AttemptParams, Digest, Event, Final, Level, PushFailed, Spawn, Work, Worker,
    WorkerParams,
};

/// Whether a request's work runs a program (its answer may need reconciling after an
/// outage).
enum WorkKind {
    Run,
    Other,
}

impl Engine {
    /// Run one request's attempt to its end.
    #[allow(clippy::too_many_arguments)] // the request's parts, one by one
    pub(super) async fn drive(
        &self,
        account: &Arc<AccountEntry>,
        pending: Option<&Pending>,
        work: Work,
        signed_query: &str,
        key: &str,
        follower: &str,
        digest: Digest,
        started: Instant,
    ) -> Final {
        use rand_core::RngCore;
        let work_kind = match &work {
            Work::Run { .. } => WorkKind::Run,
            _ => WorkKind::Other,
        };
        let stores = &self.stores;
        let now = stores.now();
        let started_ms = now.saturating_sub(started.elapsed().as_millis() as u64);
        let params = AttemptParams {
            key: account.key("m", key),
            binding: account.key("q", signed_query),
            digest,
            list: account.key("w", follower),
            holder: ThreadRng.next_u64() | 1,
            work,
            late: account.late.clone(),
            started: started_ms,
            respond_by: started_ms + self.config.reply_budget.as_millis() as u64,
            retention: stores.retention,
            shared: stores.shared.is_some(),
            store_now: stores.store_now(),
        };
        let runs = matches!(work_kind, WorkKind::Run);
        let (mut attempt, mut action) = Attempt::new(params, now);
        let seal = &account.seal;
        loop {
            let event = match action {
                Action::Respond(verdict) => {
                    if runs
                        && attempt.level() == Level::Local
                        && matches!(verdict, Final::Answer { .. })
                    {
                        // Given from local memory in an outage: the shared store is
                        // told once it is back.
                        stores.given_in_outage(seal, &attempt.key());
                    }
                    return verdict;
                }
                Action::Open {
                    level,
                    binding,
                    digest,
                    key,
                    record,
                    ttl,
                } => Event::Opened(
                    stores
                        .open(seal, level, &binding, &digest, key.as_deref(), &record, ttl)
                        .await,
                ),
                Action::Load { level, key } => Event::Loaded(stores.load(seal, level, &key).await),
                Action::Swap {
                    level,
                    key,
                    expected,
                    record,
                    ttl,
                } => Event::Swapped(stores.swap(seal, level, &key, expected, record, ttl).await),
                Action::Put {
                    key, record, ttl, ..
                } => {
                    stores.put(&key, record, ttl);
                    Event::Put
                }
                Action::Wait {
                    level,
                    key,
                    seen,
                    until,
                } => {
                    stores.wait(seal, level, &key, seen, until).await;
                    Event::Woke
                }
                Action::Spawn(spawn) => self.spawn(account, spawn, pending, follower),
                // Not an attempt's actions.
                Action::Push { .. } | Action::Done => {
                    return Final::Success {
                        via: Via::Deadline,
                        decided: attempt.decided(),
                    }
                }
            };
            action = attempt.step(event, stores.now());
        }
    }

    /// Start a program (or hook) in the background for the message `spawn.key`; when
    /// it ends, a worker stores its answer (and pushes it, in customer-service mode).
    fn spawn(
        &self,
        account: &Arc<AccountEntry>,
        spawn: Spawn,
        pending: Option<&Pending>,
        follower: &str,
    ) -> Event {
        let rule = spawn.job.rule.clone();
        // The program of the rule: the one this request decided on, or (a pick-up
        // running a waiting message again) the rule's in the config now.
        let own = pending.filter(|p| spawn.key == account.key("m", &p.key));
        let program = match own.map(|p| &p.decision) {
            Some(crate::core::rules::Decision::Run { program, .. }) => Some(program.clone()),
            _ => account.program(&rule),
        };
        let Some(program) = program else {
            tracing::warn!(
                %rule,
                "a waiting message's rule runs no program now (the config changed): it is not run again"
            );
            return Event::SpawnRefused;
        };
        let Some(slot) = self.sender_slot(follower) else {
            tracing::warn!(
                %rule,
                follower = %crate::log::Escaped(follower),
                limit = self.config.max_programs_per_sender,
                "this follower already has max_programs_per_sender programs running: answering with the fallback"
            );
            return Event::SpawnRefused;
        };
        let stores = self.stores.clone();
        let permits = self.programs.clone();
        let account = account.clone();
        let archive = self.archive.clone();
        let follower: Arc<str> = Arc::from(follower);
        let task = tokio::spawn(async move {
            let answer = run_program(&account, &program, &spawn, &permits).await;
            drop(slot);
            let params = WorkerParams {
                level: spawn.level,
                key: spawn.key.clone(),
                list: spawn.list.clone(),
                holder: spawn.holder,
                answer,
                follower,
                mirror: spawn.mirror,
                late: account.late.clone(),
                push: account.api.is_some(),
                retention: stores.retention,
            };
            work(&stores, &account, archive.as_ref(), params).await;
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Event::Spawned
    }
}

/// Run the program or call the hook; its answer, or the fallback when it fails.
async fn run_program(
    account: &AccountEntry,
    program: &crate::core::rules::Program,
    spawn: &Spawn,
    permits: &tokio::sync::Semaphore,
) -> Answer {
    let rule = spawn.job.rule.clone();
    let started = Instant::now();
    let input = &spawn.job.input;
    let (what, result) = match &program.url {
        Some(url) => {
            let result = match account.http() {
                Ok(client) => {
                    super::hook(&client, url, &rule, input.to_vec(), program, permits).await
                }
                Err(e) => Err(format!("no HTTP client: {e}")),
            };
            ("hook", result)
        }
        None => (
            "program",
            super::program::run(program, &rule, input, permits).await,
        ),
    };
    let target = match &program.url {
        Some(url) => crate::log::Escaped(super::url_origin(url)).to_string(),
        None => crate::log::Escaped(program.command.first().map_or("", String::as_str)).to_string(),
    };
    crate::metrics::METRICS.program(match &result {
        Ok(_) => crate::metrics::ProgramEnd::Answered,
        Err(cause) if cause.starts_with("timed out") => crate::metrics::ProgramEnd::TimedOut,
        Err(_) => crate::metrics::ProgramEnd::Failed,
    });
    match result {
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
                reply: spawn.job.fallback.clone(),
                rule,
                via: Via::Fallback,
            }
        }
    }
}

/// Drive a worker to its end: the answer stored, listed, pushed.
async fn work(
    stores: &Stores,
    account: &AccountEntry,
    archive: Option<&crate::archive::Archive>,
    params: WorkerParams,
) {
    let seal = &account.seal;
    let key = params.key.clone();
    let (mut worker, mut action) = Worker::new(params, stores.now());
    loop {
        let event = match action {
            Action::Done => break,
            Action::Load { level, key } => Event::Loaded(stores.load(seal, level, &key).await),
            Action::Swap {
                level,
                key,
                expected,
                record,
                ttl,
            } => Event::Swapped(stores.swap(seal, level, &key, expected, record, ttl).await),
            Action::Put {
                key, record, ttl, ..
            } => {
                stores.put(&key, record, ttl);
                Event::Put
            }
            Action::Wait {
                level,
                key,
                seen,
                until,
            } => {
                stores.wait(seal, level, &key, seen, until).await;
                Event::Woke
            }
            Action::Push { follower, answer } => {
                Event::Pushed(push(stores, account, archive, &key, &follower, &answer).await)
            }
            // Not a worker's actions.
            Action::Open { .. } | Action::Spawn(_) | Action::Respond(_) => break,
        };
        action = worker.step(event, stores.now());
    }
    if !worker.stored() {
        tracing::info!(
            key = %crate::log::Escaped(&key),
            "a program's answer came after another one for the same message: the first stands"
        );
    }
}

/// Push a late answer with the customer-service API; archive and log the outcome.
async fn push(
    stores: &Stores,
    account: &AccountEntry,
    archive: Option<&crate::archive::Archive>,
    key: &str,
    follower: &str,
    answer: &Answer,
) -> Result<(), PushFailed> {
    let Some(reply) = answer.reply.clone() else {
        return Ok(());
    };
    let place = super::api::TokenPlace {
        stores,
        seal: &account.seal,
        account: &account.name,
    };
    let pushed = match (&account.api, account.http()) {
        (Some(api), Ok(client)) => super::api::push(&client, api, &place, follower, &reply).await,
        (None, _) => Err(super::api::PushError::Unreachable(
            "no account.appsecret".into(),
        )),
        (_, Err(e)) => Err(super::api::PushError::Unreachable(e)),
    };
    crate::metrics::METRICS.push(pushed.is_ok());
    if let Some(archive) = archive {
        // The push's outcome, beside the message's own record.
        let record = serde_json::json!({
            "received_ms": super::unix_ms(),
            "from": follower,
            "key": key,
            "via": "customer_service",
            "rule": &*answer.rule,
            "reply": serde_json::to_value(&*reply).unwrap_or_default(),
            "pushed": pushed.is_ok(),
            "error": pushed.as_ref().err().map(ToString::to_string),
        });
        archive.record(record.to_string().into_bytes()).await;
    }
    match pushed {
        Ok(()) => {
            tracing::info!(
                follower = %crate::log::Escaped(follower),
                via = "customer_service",
                "late answer pushed"
            );
            Ok(())
        }
        Err(cause) => {
            tracing::warn!(
                follower = %crate::log::Escaped(follower),
                cause = %crate::log::Escaped(&cause.to_string()),
                "customer-service push failed: the answer waits for a pick-up"
            );
            Err(PushFailed(cause.to_string()))
        }
    }
}
