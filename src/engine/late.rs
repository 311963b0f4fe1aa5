//! Late answers (`[late]`), carried out over the shared store so that every process
//! (and machine) sees the same state:
//!
//! - `attempts:KEY` counts WeChat's attempts at a message whose answer was not ready at
//!   once. In hold mode attempts before the last are held until the answer is ready
//!   (WeChat gives up on them and retries); the last gets the `pending` reply at the
//!   budget.
//! - `late:KEY` marks a message whose answer went late: `W` (waiting for a pick-up, the
//!   answer still in the answer store or being made), `A<answer>` (kept for a pick-up
//!   for `pickup_ttl_secs`, longer than the answer store keeps it), `C` (being pushed
//!   with the customer-service API), `D` (delivered). A retry of such a message gets
//!   `success`.
//! - `late-list:FOLLOWER` lists a follower's waiting messages, oldest first. Removing an
//!   item is atomic, so exactly one pick-up delivers it, whichever process runs it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::store::{Claim, Store};
use super::Engine;
use crate::core::late::{LateMode, LatePlan, WECHAT_ATTEMPTS};
use crate::core::rules::Decision;
use crate::core::{Answer, Pending, Via};

/// Most waiting answers a pick-up looks through.
const PICKUP_SCAN: usize = 16;

fn late_name(key: &str) -> String {
    format!("late:{key}")
}

fn list_name(follower: &str) -> String {
    format!("late-list:{follower}")
}

fn attempts_name(key: &str) -> String {
    format!("attempts:{key}")
}

/// `scheme://host[:port]` of a URL, for logs (a query may hold a secret).
pub(super) fn url_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find(['/', '?', '#']) {
        Some(end) => &url[..after_scheme + end],
        None => url,
    }
}

/// Keep a program's answer for a pick-up when its message went late meanwhile.
pub(super) async fn keep_if_late(store: &Store, key: &str, answer: &Answer, ttl: Duration) {
    if store.get(&late_name(key)).await.as_deref() == Some(b"W") {
        keep_for_pickup(store, key, answer, ttl).await;
    }
}

async fn keep_for_pickup(store: &Store, key: &str, answer: &Answer, ttl: Duration) {
    let mut value = b"A".to_vec();
    value.extend_from_slice(&answer.encode());
    store.set(&late_name(key), &value, ttl).await;
}

/// What a message's answer is now, without claiming it.
async fn peek(store: &Store, key: &str) -> Claim {
    store.claim(key, Instant::now(), Duration::ZERO).await
}

fn rule_of(pending: &Pending) -> Arc<str> {
    match &pending.decision {
        Decision::Run { rule, .. } | Decision::Reply { rule, .. } => rule.clone(),
        _ => Arc::from("late"),
    }
}

impl Engine {
    /// Whether `key`'s answer went late (a retry then gets `success`).
    pub(super) async fn went_late(&self, key: &str) -> bool {
        self.store.get(&late_name(key)).await.is_some()
    }

    /// Count this attempt (hold mode); before WeChat's last attempt, hold the request
    /// until the answer's lease ends instead of answering at the budget.
    pub(super) async fn hold_until(
        &self,
        key: &str,
        plan: &LatePlan,
        started: Instant,
        lease: Duration,
    ) -> Option<Instant> {
        if plan.mode != LateMode::Hold || plan.pickup {
            return None;
        }
        let ttl = self.config.cache_retention.max(lease);
        let attempt = self.store.incr(&attempts_name(key), ttl).await?;
        (attempt < WECHAT_ATTEMPTS).then_some(started + lease)
    }

    /// The budget ran out on WeChat's last attempt: mark the message late and answer
    /// `pending` (hold), or `success` and push the answer when ready (customer
    /// service). A message already late gets `success`.
    pub(super) async fn go_late(
        &self,
        account: &super::AccountEntry,
        pending: &Pending,
        plan: &LatePlan,
    ) -> Answer {
        let key = pending.key.as_str();
        let rule = rule_of(pending);
        let ttl = Duration::from_secs(plan.pickup_ttl_secs);
        if let Claim::Answered(answer) = peek(&self.store, key).await {
            return answer; // ready just now
        }
        let done = Answer {
            reply: None,
            rule: rule.clone(),
            via: Via::LateDone,
        };
        match plan.mode {
            LateMode::Off => done,
            LateMode::Hold => {
                if !self.store.set_new(&late_name(key), b"W", ttl).await {
                    return done;
                }
                let follower = &pending.context.follower;
                self.store.push(&list_name(follower), key, ttl).await;
                // Stored between the look above and the mark: keep it for the pick-up.
                if let Claim::Answered(answer) = peek(&self.store, key).await {
                    keep_for_pickup(&self.store, key, &answer, ttl).await;
                }
                tracing::info!(
                    key = %crate::log::Escaped(key),
                    follower = %crate::log::Escaped(follower),
                    "answer not ready on WeChat's last attempt: sent the pending reply, the answer waits for a pick-up"
                );
                Answer {
                    reply: Some(plan.pending.clone()),
                    rule,
                    via: Via::LateHold,
                }
            }
            LateMode::CustomerService => {
                if !self.store.set_new(&late_name(key), b"C", ttl).await {
                    return done;
                }
                self.spawn_push(
                    account,
                    pending.key.clone(),
                    pending.context.follower.clone(),
                    ttl,
                );
                Answer {
                    reply: None,
                    rule,
                    via: Via::CustomerService,
                }
            }
        }
    }

    /// A pick-up word: the follower's oldest waiting answer (removed, so it goes out
    /// once), or `still_running` while it is being made; `None` when nothing waits
    /// (the message is then answered by the rules).
    pub(super) async fn pick_up(&self, pending: &Pending, plan: &LatePlan) -> Option<Answer> {
        let list = list_name(&pending.context.follower);
        let ttl = Duration::from_secs(plan.pickup_ttl_secs);
        for item in self.store.items(&list, PICKUP_SCAN).await {
            let mark = self.store.get(&late_name(&item)).await;
            let answer = match mark.as_deref() {
                Some([b'A', rest @ ..]) => Answer::decode(rest),
                Some(b"W") => match peek(&self.store, &item).await {
                    Claim::Answered(answer) => Some(answer),
                    Claim::Held { .. } => {
                        return Some(Answer {
                            reply: Some(plan.still_running.clone()),
                            rule: rule_of(pending),
                            via: Via::StillRunning,
                        })
                    }
                    Claim::Won => None, // its process ended without an answer
                },
                _ => None, // delivered, pushed, or expired
            };
            let delivered = match answer {
                Some(answer) if answer.reply.is_some() => {
                    if self.store.remove(&list, &item).await {
                        self.store.set(&late_name(&item), b"D", ttl).await;
                        Some(answer)
                    } else {
                        None // another pick-up took it
                    }
                }
                _ => {
                    self.store.remove(&list, &item).await;
                    None
                }
            };
            if let Some(answer) = delivered {
                tracing::info!(
                    key = %crate::log::Escaped(&item),
                    follower = %crate::log::Escaped(&pending.context.follower),
                    "late answer picked up"
                );
                return Some(Answer {
                    via: Via::Pickup,
                    ..answer
                });
            }
        }
        None
    }

    /// Customer service: wait for the answer, push it; when the push fails, keep it
    /// for a pick-up. Runs with the programs (a CGI process waits for it).
    fn spawn_push(
        &self,
        account: &super::AccountEntry,
        key: String,
        follower: String,
        ttl: Duration,
    ) {
        let store = self.store.clone();
        let api = account.api.clone();
        let client = account.http();
        let archive = self.archive.clone();
        let task = tokio::spawn(async move {
            let answer = loop {
                match peek(&store, &key).await {
                    Claim::Answered(answer) => break answer,
                    Claim::Held { until } => store.wait(&key, until).await,
                    Claim::Won => {
                        tracing::warn!(
                            key = %crate::log::Escaped(&key),
                            "late answer lost: the process making it ended without one"
                        );
                        return;
                    }
                }
            };
            let Some(reply) = answer.reply.clone() else {
                store.set(&late_name(&key), b"D", ttl).await;
                return; // `success`: nothing to send
            };
            let pushed = match (&api, &client) {
                (Some(api), Ok(client)) => {
                    super::api::push(client, api, &store, &follower, &reply).await
                }
                (None, _) => Err(super::api::PushError::Unreachable(
                    "no account.appsecret".into(),
                )),
                (_, Err(e)) => Err(super::api::PushError::Unreachable(e.clone())),
            };
            crate::metrics::METRICS.push(pushed.is_ok());
            if let Some(archive) = &archive {
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
                    store.set(&late_name(&key), b"D", ttl).await;
                    tracing::info!(
                        key = %crate::log::Escaped(&key),
                        follower = %crate::log::Escaped(&follower),
                        via = "customer_service",
                        "late answer pushed"
                    );
                }
                Err(cause) => {
                    keep_for_pickup(&store, &key, &answer, ttl).await;
                    store.push(&list_name(&follower), &key, ttl).await;
                    tracing::warn!(
                        key = %crate::log::Escaped(&key),
                        follower = %crate::log::Escaped(&follower),
                        cause = %crate::log::Escaped(&cause.to_string()),
                        "customer-service push failed: the answer waits for a pick-up"
                    );
                }
            }
        });
        let mut tasks = self.program_tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

#[cfg(test)]
mod tests {
    use super::url_origin;
    use crate::config::Config;
    use crate::core::reply::Reply;
    use crate::core::{Answer, Outcome, Response, Via};
    use crate::engine::{unix_now, Engine};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    const TOKEN: &str = "testtoken123";

    #[test]
    fn url_origin_drops_path_and_query() {
        assert_eq!(
            url_origin("http://127.0.0.1:5000/x?k=s"),
            "http://127.0.0.1:5000"
        );
        assert_eq!(url_origin("https://h?k=s"), "https://h");
        assert_eq!(url_origin("https://h"), "https://h");
    }

    /// Budget 450 ms; "slow" runs a program (the tests hold its message from outside,
    /// as another process would, so the program itself never starts).
    fn engine(mode: &str) -> Arc<Engine> {
        let text = format!(
            "[server]\nreply_budget_ms = 450\n[account]\ntoken = \"{TOKEN}\"\n\
             [late]\nmode = \"{mode}\"\npickup = [\"1\", \"more\"]\npickup_ttl_secs = 60\n\
             pending = {{ text = \"wait, {{from}}\" }}\n\
             [[rule]]\ntext = \"slow\"\nrun = {{ command = [\"/bin/false\"], timeout_ms = 20000 }}\n\
             [default]\nreply = {{ text = \"default\" }}\n"
        );
        let config = Config::parse(&text).unwrap();
        Arc::new(Engine::new(
            config.accounts[0].responder.clone(),
            config.server.engine,
        ))
    }

    async fn post(engine: &Engine, content: &str, msg_id: u64) -> Response {
        let body = crate::sample::text_with_id("gh", "oF", unix_now(), content, msg_id);
        // A new nonce per attempt, as WeChat signs each attempt anew.
        let nonce = format!("{}", rand_nonce());
        crate::engine::tests::post_signed(engine, &body, &nonce).await
    }

    fn rand_nonce() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(1);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn via(response: &Response) -> Via {
        match &response.outcome {
            Outcome::Reply { via, .. } | Outcome::Success { via, .. } => *via,
            other => panic!("not an answer: {other:?}"),
        }
    }

    fn text(response: &Response) -> String {
        String::from_utf8_lossy(&response.body).into_owned()
    }

    /// Hold message `msg_id` from outside (as the process running its program would).
    async fn hold(engine: &Engine, msg_id: u64) -> String {
        let key = format!("m:{msg_id}:oF");
        let claim = engine
            .store()
            .claim(&key, Instant::now(), Duration::from_secs(30))
            .await;
        assert_eq!(claim, crate::engine::store::Claim::Won);
        key
    }

    async fn finish(engine: &Engine, key: &str, reply: &str) {
        let answer = Answer {
            reply: Some(Arc::new(Reply::Text(reply.into()))),
            rule: Arc::from("slow"),
            via: Via::Program,
        };
        engine.store().finish(key, answer, Instant::now()).await;
    }

    /// WeChat's attempt `n` (1-based) of message `msg_id`, at 5 s intervals from `t0`.
    fn attempt(
        engine: &Arc<Engine>,
        t0: Instant,
        n: u32,
        msg_id: u64,
    ) -> tokio::task::JoinHandle<(Response, Duration)> {
        let engine = engine.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + Duration::from_secs(5) * (n - 1)).await;
            let response = post(&engine, "slow", msg_id).await;
            (response, t0.elapsed())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn hold_answers_inline_on_the_attempt_that_is_waiting_when_the_answer_comes() {
        let engine = engine("hold");
        let key = hold(&engine, 1).await;
        let t0 = Instant::now();
        let first = attempt(&engine, t0, 1, 1);
        let second = attempt(&engine, t0, 2, 1);
        tokio::time::sleep(Duration::from_millis(6_000)).await;
        finish(&engine, &key, "answer at 6 s").await;
        for task in [first, second] {
            let (response, at) = task.await.unwrap();
            assert!(
                text(&response).contains("answer at 6 s"),
                "{}",
                text(&response)
            );
            assert_eq!(
                at,
                Duration::from_secs(6),
                "held until the answer, not the budget"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hold_sends_pending_on_the_last_attempt_and_a_pickup_delivers_once() {
        let engine = engine("hold");
        let key = hold(&engine, 2).await;
        let t0 = Instant::now();
        let attempts: Vec<_> = (1..=3).map(|n| attempt(&engine, t0, n, 2)).collect();
        let mut attempts = attempts.into_iter();
        let (first, second, third) = (
            attempts.next().unwrap(),
            attempts.next().unwrap(),
            attempts.next().unwrap(),
        );
        let (last, at) = third.await.unwrap();
        assert_eq!(via(&last), Via::LateHold);
        assert!(text(&last).contains("wait, oF"), "{}", text(&last));
        assert_eq!(
            at,
            Duration::from_millis(10_450),
            "the last attempt at the budget"
        );

        // A pick-up while the answer is still being made.
        let early = post(&engine, "1", 100).await;
        assert_eq!(via(&early), Via::StillRunning);
        // An unrelated message meanwhile is answered normally.
        let other = post(&engine, "hello", 101).await;
        assert_eq!(via(&other), Via::Rule);
        assert!(text(&other).contains("default"));

        tokio::time::sleep_until(t0 + Duration::from_secs(20)).await;
        finish(&engine, &key, "the late answer").await;
        // The held attempts wake to a message already answered late: `success`.
        for task in [first, second] {
            let (response, _) = task.await.unwrap();
            assert_eq!(via(&response), Via::LateDone);
            assert_eq!(response.body, b"success");
        }
        let picked = post(&engine, " More ", 102).await;
        assert_eq!(via(&picked), Via::Pickup);
        assert!(text(&picked).contains("the late answer"));
        // WeChat retrying the pick-up message gets the same answer, not the next one.
        let again = post(&engine, " More ", 102).await;
        assert_eq!(via(&again), Via::Retry);
        assert!(text(&again).contains("the late answer"));
        // Delivered once: a second pick-up finds nothing and goes to the rules.
        let nothing = post(&engine, "1", 103).await;
        assert_eq!(via(&nothing), Via::Rule);
        // A retry of the late message itself: `success`, never a second delivery.
        let retry = post(&engine, "slow", 2).await;
        assert_eq!(via(&retry), Via::LateDone);
        assert_eq!(retry.body, b"success");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_answers_go_out_in_order_and_expire_after_pickup_ttl() {
        let engine = engine("hold");
        for id in [10, 11, 12] {
            let t0 = Instant::now();
            let key = hold(&engine, id).await;
            let tasks: Vec<_> = (1..=3).map(|n| attempt(&engine, t0, n, id)).collect();
            tokio::time::sleep_until(t0 + Duration::from_secs(11)).await;
            finish(&engine, &key, &format!("answer {id}")).await;
            let mut vias = Vec::new();
            for t in tasks {
                vias.push(via(&t.await.unwrap().0));
            }
            assert_eq!(vias, [Via::LateDone, Via::LateDone, Via::LateHold]);
        }
        let first = post(&engine, "1", 200).await;
        assert!(text(&first).contains("answer 10"), "{}", text(&first));
        let second = post(&engine, "1", 201).await;
        assert!(text(&second).contains("answer 11"), "{}", text(&second));
        tokio::time::sleep(Duration::from_secs(61)).await;
        let expired = post(&engine, "1", 202).await;
        assert_eq!(
            via(&expired),
            Via::Rule,
            "answer 12 expired after pickup_ttl_secs"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn off_answers_success_at_the_budget_and_keeps_nothing() {
        let engine = engine("off");
        let _key = hold(&engine, 3).await;
        let t0 = Instant::now();
        let response = post(&engine, "slow", 3).await;
        assert_eq!(via(&response), Via::Deadline);
        assert_eq!(t0.elapsed(), Duration::from_millis(450));
        let pickup = post(&engine, "1", 300).await;
        assert_eq!(via(&pickup), Via::Rule);
    }
}
