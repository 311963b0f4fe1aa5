//! The async answer path both shells share: the core's decision, the retry cache (one
//! answer per message however often WeChat retries), reply programs (run once, killed
//! on timeout, capped in number), and the reply budget (answer before WeChat's 5 s).

use std::collections::{hash_map::RandomState, HashMap};
use std::hash::BuildHasher;
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use crate::core::reply::Reply;
use crate::core::rules::{parse_program_output, Decision, Program};
use crate::core::{Answer, Pending, Rejection, Request, Responder, Response, Step, Via};
use crate::http::{log_request, ThreadRng};

/// Largest program output read; more is a failure.
pub const MAX_PROGRAM_OUTPUT: usize = 64 * 1024;

/// Settings of the answer path (`[server]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// The whole answer goes out within this time from the request's first byte.
    pub reply_budget: Duration,
    /// Reply programs running at once.
    pub max_programs: usize,
    /// Entries the in-memory retry cache holds at most.
    pub cache_entries: usize,
    /// How long an answer is kept for retries and replays.
    pub cache_retention: Duration,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            reply_budget: Duration::from_millis(4500),
            max_programs: 8,
            // Two generations of 28 672: the most a 32 768-slot hash table holds
            // (7/8 full); one more entry would double the table.
            cache_entries: 57_344,
            cache_retention: Duration::from_secs(300 + 15),
        }
    }
}

/// The retry cache's interface: claim a message's key before answering it. A later
/// step puts a shared (Redis) implementation behind it for several instances.
pub trait RetryCache: Send + Sync {
    /// Claim `key`. `First`: nobody answered it yet; the caller must `finish` it.
    /// `Done`: the answer given before. `Running`: being answered now; wait.
    fn claim(&self, key: &str) -> Claim;
    /// Record the answer for `key` and wake everyone waiting for it.
    fn finish(&self, key: &str, answer: Answer);
    /// Claim `key` whose answer is already known (a rule's reply): `None` when it is
    /// now stored, or what an earlier claim of the same message left (`Done` or
    /// `Running`), which wins.
    fn claim_answered(&self, key: &str, answer: &Answer) -> Option<Claim> {
        match self.claim(key) {
            Claim::First(_) => {
                self.finish(key, answer.clone());
                None
            }
            earlier => Some(earlier),
        }
    }
}

/// What [`RetryCache::claim`] found.
pub enum Claim {
    First(watch::Receiver<Option<Answer>>),
    Running(watch::Receiver<Option<Answer>>),
    Done(Answer),
}

/// The in-memory retry cache: bounded, entries kept for `retention` (at least the
/// timestamp window, so a replay inside the window is always answered from it).
///
/// Two generations of entries: new ones go into `current`; lookups see both. When
/// `current` holds half the capacity or is `retention` old, it becomes `previous` and
/// the old `previous` is dropped whole. So every entry is kept at least `retention`
/// unless `capacity / 2` newer ones came first (then a warning says to raise the
/// capacity), and at most twice that. No entry is removed one by one: a hash table
/// churning at full load fills with tombstones and doubles (measured: a full
/// string-keyed map and age queue grew from 5 to 8.3 MiB that way).
///
/// Keys are held as 128-bit fingerprints (two SipHash-1-3 runs with this process's
/// random keys), not as strings. Two messages sharing a fingerprint has a chance of
/// about n² / 2¹²⁹ (n entries held), and nobody outside can aim at one: the hash keys
/// are secret. Full at the default capacity: 3.3 MiB (`examples/cache_mem.rs`).
pub struct MemoryCache {
    inner: Mutex<CacheInner>,
    /// Entries per generation: half the capacity.
    half: usize,
    retention: Duration,
    hashers: (RandomState, RandomState),
}

struct CacheInner {
    current: HashMap<u128, Entry>,
    previous: HashMap<u128, Entry>,
    /// When `current` began taking entries.
    current_since: Instant,
    /// Entries dropped before their retention since the last warning, and when that was.
    evicted: usize,
    warned: Option<Instant>,
}

/// At most one "retry cache full" warning per this interval: a cache too small for the
/// load drops entries again and again, and a line each time would flood the log.
pub const EVICTION_WARNING_INTERVAL: Duration = Duration::from_secs(60);

enum Entry {
    Running(watch::Sender<Option<Answer>>),
    Done(Answer),
}

impl MemoryCache {
    pub fn new(capacity: usize, retention: Duration) -> MemoryCache {
        let half = (capacity / 2).max(1);
        MemoryCache {
            inner: Mutex::new(CacheInner {
                current: HashMap::with_capacity(half),
                previous: HashMap::new(),
                current_since: Instant::now(),
                evicted: 0,
                warned: None,
            }),
            half,
            retention,
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    fn fingerprint(&self, key: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        let c = self.lock();
        c.current.len() + c.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A poisoned lock only means another thread panicked mid-update; the maps are
        // still valid maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a new generation: `current` becomes `previous`, the old `previous` goes.
    fn rotate(&self, c: &mut CacheInner, now: Instant) {
        // The dropped generation's newest entry is as old as `current` is.
        if now.duration_since(c.current_since) < self.retention && !c.previous.is_empty() {
            c.evicted += c.previous.len();
            if c.warned
                .is_none_or(|at| now.duration_since(at) >= EVICTION_WARNING_INTERVAL)
            {
                tracing::warn!(
                    capacity = self.half * 2,
                    dropped = c.evicted,
                    "retry cache full: dropped answers younger than their retention \
                     (count since the last such warning); raise retry_cache_entries"
                );
                c.evicted = 0;
                c.warned = Some(now);
            }
        }
        // Free the old generation before allocating the new one.
        c.previous = HashMap::new();
        c.previous = std::mem::replace(&mut c.current, HashMap::with_capacity(self.half));
        c.current_since = now;
    }

    /// The claim both entry points share: what an earlier claim left (`Err`), or the
    /// entry `make` gives stored for a new key (in a new generation when the current
    /// one is full or old) and `make`'s other value (`Ok`).
    fn claim_or_insert<R>(&self, key: &str, make: impl FnOnce() -> (Entry, R)) -> Result<R, Claim> {
        let key = self.fingerprint(key);
        let mut c = self.lock();
        let found = c.current.get(&key).or_else(|| c.previous.get(&key));
        match found {
            Some(Entry::Done(answer)) => return Err(Claim::Done(answer.clone())),
            Some(Entry::Running(tx)) => return Err(Claim::Running(tx.subscribe())),
            None => {}
        }
        let now = Instant::now();
        if c.current.len() >= self.half || now.duration_since(c.current_since) >= self.retention {
            self.rotate(&mut c, now);
        }
        let (entry, made) = make();
        c.current.insert(key, entry);
        Ok(made)
    }
}

impl RetryCache for MemoryCache {
    fn claim(&self, key: &str) -> Claim {
        let new = || {
            let (tx, rx) = watch::channel(None);
            (Entry::Running(tx), rx)
        };
        match self.claim_or_insert(key, new) {
            Ok(rx) => Claim::First(rx),
            Err(earlier) => earlier,
        }
    }

    /// No channel for a message answered at once: nobody can be waiting for it yet.
    fn claim_answered(&self, key: &str, answer: &Answer) -> Option<Claim> {
        self.claim_or_insert(key, || (Entry::Done(answer.clone()), ()))
            .err()
    }

    fn finish(&self, key: &str, answer: Answer) {
        let key = self.fingerprint(key);
        let mut c = self.lock();
        let c = &mut *c;
        // Not found: dropped while it ran (a cache far too small); nothing to record.
        if let Some(entry) = c.current.get_mut(&key).or_else(|| c.previous.get_mut(&key)) {
            if let Entry::Running(tx) = entry {
                tx.send_replace(Some(answer.clone()));
            }
            *entry = Entry::Done(answer);
        }
    }
}

/// The answer path: the current rules (swapped on reload), the cache, the program cap.
pub struct Engine {
    responder: RwLock<Arc<Responder>>,
    cache: Arc<dyn RetryCache>,
    programs: Arc<Semaphore>,
    config: EngineConfig,
}

impl Engine {
    pub fn new(responder: Responder, config: EngineConfig) -> Engine {
        let cache = Arc::new(MemoryCache::new(
            config.cache_entries,
            config.cache_retention,
        ));
        Engine::with_cache(responder, config, cache)
    }

    pub fn with_cache(
        responder: Responder,
        config: EngineConfig,
        cache: Arc<dyn RetryCache>,
    ) -> Engine {
        Engine {
            responder: RwLock::new(Arc::new(responder)),
            cache,
            programs: Arc::new(Semaphore::new(config.max_programs.max(1))),
            config,
        }
    }

    /// The rules in force now.
    pub fn responder(&self) -> Arc<Responder> {
        self.responder
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Put new rules in force; requests already running finish with the old ones.
    pub fn reload(&self, responder: Responder) {
        *self.responder.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(responder);
    }

    /// Answer one request and log it. `body` is the request body, or why the shell
    /// refused it; `started` is when its first byte arrived (the budget counts from it).
    pub async fn answer(
        &self,
        method: &str,
        query: &str,
        body: Result<&[u8], Rejection>,
        started: Instant,
    ) -> Response {
        let response = match body {
            Err(rejection) => Response::rejected(rejection),
            Ok(body) => {
                let responder = self.responder();
                match responder.prepare(
                    &Request {
                        method,
                        query,
                        body,
                    },
                    unix_now(),
                    &mut ThreadRng,
                ) {
                    Step::Done(response) => response,
                    Step::Message(pending) => self.resolve(&responder, pending, started).await,
                }
            }
        };
        log_request(method, &response, started.elapsed());
        response
    }

    async fn resolve(&self, responder: &Responder, pending: Pending, started: Instant) -> Response {
        let deadline = started + self.config.reply_budget;
        // A rule's answer is stored at once; a program's is waited for.
        let known = Answer::from_decision(&pending.decision);
        let claim = match &known {
            Some(answer) => self.cache.claim_answered(&pending.key, answer),
            None => Some(self.cache.claim(&pending.key)),
        };
        let answer = match claim {
            None => known,
            Some(Claim::Done(answer)) => Some(Answer {
                via: Via::Retry,
                ..answer
            }),
            Some(Claim::Running(rx)) => wait(rx, deadline).await.map(|a| Answer {
                via: Via::Retry,
                ..a
            }),
            Some(Claim::First(rx)) => {
                if let Decision::Run {
                    rule,
                    program,
                    fallback,
                } = pending.decision.clone()
                {
                    let input = pending.json.clone().unwrap_or_default();
                    self.spawn_program(pending.key.clone(), rule, program, fallback, input);
                }
                wait(rx, deadline).await
            }
        };
        let Some(answer) = answer else {
            tracing::warn!(
                key = %pending.key,
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

    /// Run a program in the background; its answer goes to the cache, where the
    /// request (and any retry) waits for it. It keeps running past the request's budget
    /// up to its own timeout, so a slow answer still serves WeChat's retry.
    fn spawn_program(
        &self,
        key: String,
        rule: Arc<str>,
        program: Arc<Program>,
        fallback: Option<Arc<Reply>>,
        input: Vec<u8>,
    ) {
        let cache = self.cache.clone();
        let permits = self.programs.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = match run_program(&program, &input, &permits).await {
                Ok(reply) => {
                    tracing::info!(%rule, program = %program.command.first().map_or("", String::as_str), ms = started.elapsed().as_millis() as u64, "program answered");
                    Answer {
                        reply: reply.map(Arc::new),
                        rule,
                        via: Via::Program,
                    }
                }
                Err(cause) => {
                    tracing::warn!(%rule, program = %program.command.first().map_or("", String::as_str), %cause, "program failed: answering with the fallback");
                    Answer {
                        reply: fallback,
                        rule,
                        via: Via::Fallback,
                    }
                }
            };
            cache.finish(&key, answer);
        });
    }
}

/// Wait for an answer until `deadline`.
async fn wait(mut rx: watch::Receiver<Option<Answer>>, deadline: Instant) -> Option<Answer> {
    let ready = tokio::time::timeout_at(deadline.into(), rx.wait_for(Option::is_some)).await;
    match ready {
        Ok(Ok(answer)) => answer.clone(),
        _ => None,
    }
}

/// Run a reply program: the message JSON on stdin, the reply on stdout. Killed (with
/// its process group) on timeout and always reaped.
pub async fn run_program(
    program: &Program,
    input: &[u8],
    permits: &Semaphore,
) -> Result<Option<Reply>, String> {
    let timeout = Duration::from_millis(program.timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let _permit = tokio::time::timeout_at(deadline, permits.acquire())
        .await
        .map_err(|_| {
            format!(
                "no program slot free within {} ms (max_programs)",
                program.timeout_ms
            )
        })?
        .map_err(|_| "program slots closed".to_owned())?;
    let (name, args) = program.command.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(name)
        .args(args)
        .current_dir(&program.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let feed = async {
            if let Some(mut s) = stdin.take() {
                // A program that does not read its input is fine: ignore EPIPE.
                let _ = s.write_all(input).await;
            }
        };
        let (_, out, err, status) =
            tokio::join!(feed, read_capped(stdout), read_capped(stderr), child.wait());
        (out, err, status)
    };
    let result = tokio::time::timeout_at(deadline, work).await;
    let outcome = match result {
        Ok((out, err, status)) => {
            let status = status.map_err(|e| format!("wait: {e}"))?;
            if !status.success() {
                let err = String::from_utf8_lossy(&err.unwrap_or_default())
                    .trim()
                    .chars()
                    .take(300)
                    .collect::<String>();
                Err(format!("exited with {status}; stderr: {err:?}"))
            } else {
                match out {
                    Some(out) => parse_program_output(&out),
                    None => Err(format!("output larger than {MAX_PROGRAM_OUTPUT} bytes")),
                }
            }
        }
        Err(_) => Err(format!("timed out after {} ms", program.timeout_ms)),
    };
    // Kill what is left of the program's process group (a timed-out program, or
    // children it left behind), then reap the program itself.
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group; it has no
        // memory effects.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
    outcome
}

/// Read a pipe to its end, up to [`MAX_PROGRAM_OUTPUT`] bytes; `None` when larger.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let Some(pipe) = pipe else {
        return Some(out);
    };
    let mut limited = pipe.take(MAX_PROGRAM_OUTPUT as u64 + 1);
    let _ = limited.read_to_end(&mut out).await;
    (out.len() <= MAX_PROGRAM_OUTPUT).then_some(out)
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

    fn answer(text: &str) -> Answer {
        Answer {
            reply: Some(Arc::new(Reply::Text(text.to_owned()))),
            rule: Arc::from("r"),
            via: Via::Rule,
        }
    }

    #[test]
    fn cache_first_running_done() {
        let cache = MemoryCache::new(10, Duration::from_secs(60));
        let Claim::First(mut rx) = cache.claim("k") else {
            panic!("first claim")
        };
        let Claim::Running(mut waiting) = cache.claim("k") else {
            panic!("second claim while running")
        };
        cache.finish("k", answer("a"));
        assert_eq!(rx.borrow_and_update().clone(), Some(answer("a")));
        assert_eq!(waiting.borrow_and_update().clone(), Some(answer("a")));
        let Claim::Done(done) = cache.claim("k") else {
            panic!("claim after finish")
        };
        assert_eq!(done, answer("a"));
    }

    #[test]
    fn cache_is_bounded_oldest_first() {
        let cache = MemoryCache::new(2, Duration::from_secs(60));
        for k in ["a", "b", "c"] {
            assert!(matches!(cache.claim(k), Claim::First(_)));
            cache.finish(k, answer(k));
        }
        assert_eq!(cache.len(), 2);
        assert!(
            matches!(cache.claim("a"), Claim::First(_)),
            "the oldest was evicted"
        );
        assert!(matches!(cache.claim("c"), Claim::Done(_)));
    }

    #[test]
    fn cache_keeps_entries_for_the_retention_then_forgets() {
        let cache = MemoryCache::new(10, Duration::from_millis(50));
        assert!(matches!(cache.claim("k"), Claim::First(_)));
        cache.finish("k", answer("a"));
        assert!(matches!(cache.claim("k"), Claim::Done(_)));
        std::thread::sleep(Duration::from_millis(80));
        // A new message after the retention starts a new generation; "k" is kept.
        assert!(matches!(cache.claim("x"), Claim::First(_)));
        assert!(
            matches!(cache.claim("k"), Claim::Done(_)),
            "kept >= retention"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(cache.claim("y"), Claim::First(_)));
        assert_eq!(cache.len(), 2, "the generation holding k is gone");
        assert!(
            matches!(cache.claim("k"), Claim::First(_)),
            "forgotten after at most twice the retention"
        );
    }

    #[test]
    fn a_full_cache_keeps_at_least_the_newest_half() {
        let cache = MemoryCache::new(100, Duration::from_secs(60));
        for i in 0..1000usize {
            let k = format!("m{i}");
            assert!(matches!(cache.claim(&k), Claim::First(_)));
            cache.finish(&k, answer("a"));
            assert!(cache.len() <= 100, "bounded: {}", cache.len());
            // The newest 50 are always there.
            for j in i.saturating_sub(49)..=i {
                let k = format!("m{j}");
                assert!(matches!(cache.claim(&k), Claim::Done(_)), "m{j} at m{i}");
            }
        }
    }

    #[test]
    fn an_answer_known_at_once_is_stored_without_a_channel_and_earlier_claims_win() {
        let cache = MemoryCache::new(10, Duration::from_secs(60));
        assert!(cache.claim_answered("k", &answer("first")).is_none());
        match cache.claim_answered("k", &answer("second")) {
            Some(Claim::Done(a)) => assert_eq!(a, answer("first")),
            _ => panic!("the stored answer wins"),
        }
        assert!(matches!(cache.claim("k"), Claim::Done(_)));
        // A program's message still running: an immediate answer for it waits too.
        let Claim::First(_rx) = cache.claim("p") else {
            panic!("first")
        };
        assert!(matches!(
            cache.claim_answered("p", &answer("x")),
            Some(Claim::Running(_))
        ));
    }

    #[test]
    fn a_running_entry_survives_a_generation_change() {
        let cache = MemoryCache::new(4, Duration::from_secs(60));
        let Claim::First(mut rx) = cache.claim("slow") else {
            panic!("first")
        };
        // Two more messages: "slow" moves to the previous generation, still running.
        for k in ["a", "b"] {
            assert!(matches!(cache.claim(k), Claim::First(_)));
        }
        let Claim::Running(mut waiting) = cache.claim("slow") else {
            panic!("still running")
        };
        cache.finish("slow", answer("late"));
        assert!(rx.borrow_and_update().is_some() && waiting.borrow_and_update().is_some());
        assert!(matches!(cache.claim("slow"), Claim::Done(_)));
    }
}
