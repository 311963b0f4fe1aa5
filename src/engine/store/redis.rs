//! The Redis store: shared by every instance on every machine that uses the same Redis.
//!
//! A message's key holds `L<until>` while it is being decided (a lease ending at Redis's
//! own clock, so machines need not agree on the time) and `A<answer>` once answered;
//! every key has a TTL. Claims and stores are one atomic script each (one round trip);
//! a signed query's binding is one `SET NX GET`. Waiting for another instance's answer
//! polls the key every [`POLL`]. The connection is redis-rs's connection manager, which
//! reconnects after a Redis restart.
//!
//! While Redis is unreachable, requests are answered without it (a claim is won
//! locally: a program message still runs once per process), for [`BACKOFF`] after each
//! failure no call is tried, and a WARN says so at most once a minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::{BodyDigest, Claim};
use crate::core::Answer;

/// How often a waiting request looks for an answer stored by another instance.
pub const POLL: Duration = Duration::from_millis(10);
/// How long one Redis call may take before the request goes on without it.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed call, how long the store is not tried again.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// At most one "Redis unreachable" warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Claim a message: `{'A', answer}`, `{'H', ms left}` or `{'W', ''}` (won: the lease
/// is set). KEYS[1] the message key; ARGV[1] lease ms; ARGV[2] retention ms.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local v = redis.call('GET', KEYS[1])
if v then
  local kind = string.sub(v, 1, 1)
  if kind == 'A' then return {'A', string.sub(v, 2)} end
  if kind == 'L' then
    local left = tonumber(string.sub(v, 2)) - now
    if left > 0 then return {'H', tostring(left)} end
  end
end
local lease = tonumber(ARGV[1])
redis.call('SET', KEYS[1], 'L' .. (now + lease), 'PX', math.max(lease, tonumber(ARGV[2])))
return {'W', ''}
";

/// Bind a signed query to its body and take the message's first step, in one round
/// trip: `{'R', ''}` (the query came with another body), `{'A', answer}`,
/// `{'H', ms left}`, `{'S', ''}` (the known answer stored) or `{'W', ''}` (claimed).
/// KEYS[1] the binding, KEYS[2] the message; ARGV[1] the body digest, ARGV[2] retention
/// ms, ARGV[3] `K` (ARGV[4] the known answer) or `C` (ARGV[4] the lease ms). A new
/// message with a known answer is two commands: the binding's `SET NX GET` and the
/// answer's.
const OPEN_MESSAGE: &str = r"
local bound = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
if bound and bound ~= ARGV[1] then return {'R', ''} end
local v
if ARGV[3] == 'K' then
  v = redis.call('SET', KEYS[2], 'A' .. ARGV[4], 'NX', 'GET', 'PX', ARGV[2])
  if not v then return {'S', ''} end
else
  v = redis.call('GET', KEYS[2])
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if v then
  local kind = string.sub(v, 1, 1)
  if kind == 'A' then return {'A', string.sub(v, 2)} end
  if kind == 'L' then
    local left = tonumber(string.sub(v, 2)) - now
    if left > 0 then return {'H', tostring(left)} end
  end
end
if ARGV[3] == 'K' then
  redis.call('SET', KEYS[2], 'A' .. ARGV[4], 'PX', tonumber(ARGV[2]))
  return {'S', ''}
end
local lease = tonumber(ARGV[4])
redis.call('SET', KEYS[2], 'L' .. (now + lease), 'PX', math.max(lease, tonumber(ARGV[2])))
return {'W', ''}
";

/// The Redis store.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    retention: Duration,
    claim: redis::Script,
    open_message: redis::Script,
    /// Where `open_message` calls queue to go out together (see [`Batched`]); started
    /// with the first call, in its runtime.
    batched: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Batched>>,
    /// No call is tried before this (after a failure).
    down_until: Mutex<Option<Instant>>,
    warned: Mutex<Option<Instant>>,
    failures: AtomicU64,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://HOST:PORT/DB`), its keys starting with
    /// `prefix`. Connects lazily: a Redis that is down at start-up is tried again later.
    pub fn open(url: &str, prefix: &str, retention: Duration) -> anyhow::Result<RedisStore> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("state store {url}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("state store {url}: {e}"))?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            retention,
            claim: redis::Script::new(CLAIM),
            open_message: redis::Script::new(OPEN_MESSAGE),
            batched: std::sync::OnceLock::new(),
            down_until: Mutex::new(None),
            warned: Mutex::new(None),
            failures: AtomicU64::new(0),
        })
    }

    /// Calls that failed (Redis unreachable, slow or refusing) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// See [`super::Store::claim`].
    pub async fn claim(&self, key: &str, lease: Duration) -> Claim {
        let mut invocation = self.claim.key(self.answer_key(key));
        invocation.arg(ms(lease)).arg(ms(self.retention));
        let mut conn = self.conn.clone();
        let reply: Option<(String, String)> = self
            .call(async move { invocation.invoke_async(&mut conn).await })
            .await;
        match reply {
            Some(found) => held_or_answered(found).unwrap_or(Claim::Won),
            None => Claim::Won,
        }
    }

    /// See [`super::Store::open_message`]: one round trip, in a pipeline with the
    /// other requests' (see [`RedisStore::batched`]).
    pub async fn open_message(
        &self,
        signed_query: &str,
        body: &BodyDigest,
        key: &str,
        first: super::First<'_>,
    ) -> super::Opened {
        use super::{First, Opened};
        let known = matches!(first, First::Known(_));
        let evalsha = || {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.open_message.get_hash()).arg(2);
            cmd.arg(format!("{}q:{signed_query}", self.prefix))
                .arg(self.answer_key(key))
                .arg(hex::encode(body))
                .arg(ms(self.retention));
            match first {
                First::Known(answer) => cmd.arg("K").arg(answer.encode()),
                First::Claim(lease) => cmd.arg("C").arg(ms(lease)),
            };
            cmd
        };
        let queued = self.batched(evalsha());
        let mut conn = self.conn.clone();
        let script = &self.open_message;
        let reply: Option<(String, String)> = self
            .call(async move {
                let no_script = redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
                let value = match queued.await {
                    // After a Redis restart the script is gone: load it, send again.
                    Err(e) if e.kind() == no_script => {
                        script.load_async(&mut conn).await?;
                        evalsha().query_async(&mut conn).await?
                    }
                    other => other?,
                };
                redis::from_redis_value(value).map_err(redis::RedisError::from)
            })
            .await;
        match reply {
            Some((kind, _)) if kind == "R" => Opened::QueryReused,
            Some((kind, _)) if kind == "S" => Opened::Stored,
            Some(found) => match held_or_answered(found) {
                Some(claim) => Opened::Claim(claim),
                None => Opened::Claim(Claim::Won),
            },
            // Unreachable: decide here, without it.
            None if known => Opened::Stored,
            None => Opened::Claim(Claim::Won),
        }
    }

    /// See [`super::Store::finish`].
    pub async fn finish(&self, key: &str, answer: &Answer) {
        let mut value = b"A".to_vec();
        value.extend_from_slice(&answer.encode());
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.answer_key(key))
            .arg(value)
            .arg("PX")
            .arg(ms(self.retention));
        let mut conn = self.conn.clone();
        let _: Option<()> = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await;
    }

    /// See [`super::Store::wait`]: polls until the key is answered, gone, its lease
    /// over, or `until`.
    pub async fn wait(&self, key: &str, until: Instant) {
        let answer_key = self.answer_key(key);
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep_until((now + POLL).min(until)).await;
            let mut cmd = redis::cmd("GET");
            cmd.arg(&answer_key);
            let mut conn = self.conn.clone();
            let value: Option<Option<Vec<u8>>> = self
                .call(async move { cmd.query_async(&mut conn).await })
                .await;
            // Still leased: keep waiting (the caller's `until` is the lease's end, by
            // Redis's clock). Answered, gone or unreachable: claim again to see.
            match value {
                Some(Some(v)) if v.first() == Some(&b'L') => {}
                _ => return,
            }
        }
    }

    /// See [`super::Store::incr`].
    pub async fn incr(&self, name: &str, ttl: Duration) -> Option<u64> {
        let key = self.value_key("k:", name);
        let mut pipe = redis::pipe();
        // Each count renews the TTL (as the other stores do not: a counter lives at
        // least `ttl`, which is all its users need).
        pipe.atomic()
            .incr(&key, 1u64)
            .pexpire(&key, ms(ttl).max(1) as i64)
            .ignore();
        let mut conn = self.conn.clone();
        let counted: Option<(u64,)> = self
            .call(async move { pipe.query_async(&mut conn).await })
            .await;
        counted.map(|(n,)| n)
    }

    /// See [`super::Store::get`].
    pub async fn get(&self, name: &str) -> Option<Vec<u8>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.value_key("k:", name));
        let mut conn = self.conn.clone();
        self.call(async move { cmd.query_async::<Option<Vec<u8>>>(&mut conn).await })
            .await
            .flatten()
    }

    /// See [`super::Store::set`] and [`super::Store::set_new`] (`only_new`).
    pub async fn set(&self, name: &str, value: &[u8], ttl: Duration, only_new: bool) -> bool {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.value_key("k:", name))
            .arg(value)
            .arg("PX")
            .arg(ms(ttl).max(1));
        if only_new {
            cmd.arg("NX");
        }
        let mut conn = self.conn.clone();
        let set: Option<Option<String>> = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await;
        matches!(set, Some(Some(_)))
    }

    /// See [`super::Store::delete`].
    pub async fn delete(&self, name: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.value_key("k:", name));
        let mut conn = self.conn.clone();
        let _: Option<u64> = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await;
    }

    /// See [`super::Store::push`].
    pub async fn push(&self, list: &str, item: &str, ttl: Duration) {
        let key = self.value_key("l:", list);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .rpush(&key, item)
            .ignore()
            .pexpire(&key, ms(ttl).max(1) as i64)
            .ignore();
        let mut conn = self.conn.clone();
        let _: Option<()> = self
            .call(async move { pipe.query_async(&mut conn).await })
            .await;
    }

    /// See [`super::Store::items`].
    pub async fn items(&self, list: &str, max: usize) -> Vec<String> {
        let key = self.value_key("l:", list);
        let last = isize::try_from(max).unwrap_or(isize::MAX) - 1;
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(last);
        let mut conn = self.conn.clone();
        self.call(async move { cmd.query_async::<Vec<String>>(&mut conn).await })
            .await
            .unwrap_or_default()
    }

    /// See [`super::Store::remove`].
    pub async fn remove(&self, list: &str, item: &str) -> bool {
        let mut cmd = redis::cmd("LREM");
        cmd.arg(self.value_key("l:", list)).arg(1).arg(item);
        let mut conn = self.conn.clone();
        let removed: Option<u64> = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await;
        removed == Some(1)
    }

    fn value_key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}{name}", self.prefix)
    }

    fn answer_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 2 + key.len());
        k.push_str(&self.prefix);
        k.push_str("a:");
        k.push_str(key);
        k
    }

    /// Run one Redis call with [`TIMEOUT`], unless Redis failed within [`BACKOFF`];
    /// `None` on any failure (counted, and warned about at most once a minute).
    async fn call<T>(
        &self,
        work: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let now = Instant::now();
        if self
            .down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| now < t)
        {
            return None;
        }
        let error = match tokio::time::timeout(TIMEOUT, work).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", TIMEOUT.as_millis()),
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.store_error();
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + BACKOFF);
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            tracing::warn!(
                error = %crate::log::Escaped(&error),
                failures = self.failures(),
                "state store (Redis) unreachable: answering without it (a retry may be decided again)"
            );
            *warned = Some(now);
        }
        None
    }
}

/// A command waiting to go out in the next pipeline, and who waits for its reply.
type Batched = (
    redis::Cmd,
    tokio::sync::oneshot::Sender<redis::RedisResult<redis::Value>>,
);

/// Most commands in one pipeline.
const MAX_PIPELINE: usize = 256;

impl RedisStore {
    /// Send `cmd` together with the others queued at the same moment: the requests in
    /// flight share one write to Redis and one read of the replies (one pipeline on the
    /// shared connection), instead of a system call each way per request.
    fn batched(
        &self,
        cmd: redis::Cmd,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> {
        let queue = self.batched.get_or_init(|| {
            let (queue, inbox) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(send_batches(self.conn.clone(), inbox));
            queue
        });
        let (done, reply) = tokio::sync::oneshot::channel();
        let queued = queue.send((cmd, done)).is_ok();
        async move {
            let gone = || redis::RedisError::from(std::io::Error::other("the pipeline task ended"));
            if !queued {
                return Err(gone());
            }
            reply.await.unwrap_or_else(|_| Err(gone()))
        }
    }
}

/// Everything queued goes out as one pipeline; the next batch does not wait for its
/// replies (the connection keeps them in order).
async fn send_batches(
    conn: ConnectionManager,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Batched>,
) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_PIPELINE {
            match inbox.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut waiting = Vec::with_capacity(batch.len());
            for (cmd, done) in batch {
                pipe.add_command(cmd);
                waiting.push(done);
            }
            let replies: redis::RedisResult<Vec<redis::RedisResult<redis::Value>>> =
                pipe.query_async(&mut conn).await;
            match replies {
                Ok(replies) if replies.len() == waiting.len() => {
                    for (done, reply) in waiting.into_iter().zip(replies) {
                        let _ = done.send(reply);
                    }
                }
                failed => {
                    let why = match failed {
                        Err(e) => e.to_string(),
                        Ok(_) => "a reply missing from the pipeline".to_owned(),
                    };
                    for done in waiting {
                        let _ = done.send(Err(redis::RedisError::from(std::io::Error::other(
                            why.clone(),
                        ))));
                    }
                }
            }
        });
    }
}

/// A script's `{'A', answer}` or `{'H', ms}`; `None` for `{'W', ''}` (won or stored).
fn held_or_answered((kind, value): (String, String)) -> Option<Claim> {
    match kind.as_str() {
        "A" => Answer::decode(value.as_bytes()).map(Claim::Answered),
        "H" => Some(Claim::Held {
            until: Instant::now() + Duration::from_millis(value.parse().unwrap_or(0)),
        }),
        _ => None,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}
