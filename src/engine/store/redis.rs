//! The Redis store: shared by every instance on every machine that uses the same Redis.
//!
//! Keys are `<key_prefix><kind>/<account>/<hmac>` ([`super::seal`]); values are sealed;
//! every key has a TTL. Opening a message (bind the query, create the record unless
//! there is one), reading and compare-and-swap are one atomic script each, one round
//! trip, and every script returns Redis's own clock (`TIME`): leases and marks run on
//! it, so the machines' clocks need not agree. The requests in flight send their
//! scripts together, as one pipeline on the shared connection. Waiting for another
//! instance's write polls the key every [`POLL`]. The connection is redis-rs's
//! connection manager, which reconnects after a Redis restart.
//!
//! While Redis is unreachable, every call fails at once for [`BACKOFF`] after a failure
//! (a [`StoreError`]; the protocol goes on in this process's memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::seal::{rev_hex, rev_of, Sealer};
use crate::protocol::{Loaded, Ms, Opened, Record, Rev, StoreError, Swapped};

/// How often a waiting request looks for another instance's write.
pub const POLL: Duration = Duration::from_millis(10);
/// How long one Redis call may take before the request goes on without it.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed call, how long the store is not tried again.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// Redis's clock in milliseconds, as a Lua expression.
const NOW: &str = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)";

/// Bind a query and create a message's record unless there is one:
/// `{kind, value, now, fresh}` with kind `R` (the query came with another body:
/// nothing done), `C` (created; or the handshake's query bound) or `F` (found: value).
/// KEYS[1] the binding, KEYS[2] the record (absent for a handshake); ARGV[1] the
/// binding's value, ARGV[2] its TTL ms, ARGV[3] the record, ARGV[4] its TTL ms.
const OPEN: &str = r"
local bound = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
local fresh = 1
if bound then
  if bound ~= ARGV[1] then return {'R', false, now, 0} end
  fresh = 0
end
if #KEYS < 2 then return {'C', false, now, fresh} end
local v = redis.call('SET', KEYS[2], ARGV[3], 'NX', 'GET', 'PX', ARGV[4])
if v then return {'F', v, now, fresh} end
return {'C', false, now, fresh}
";

/// Read a key: `{'V', value, now}`.
const LOAD: &str = r"
return {'V', redis.call('GET', KEYS[1]), now}
";

/// Compare-and-swap: write ARGV[2] for ARGV[3] ms if the key's version (the first 16
/// hex digits of its value's SHA-1; '' for none) is ARGV[1]: `{'D', false, now}`, else
/// `{'X', value, now}`.
const SWAP: &str = r"
local v = redis.call('GET', KEYS[1])
local rev = ''
if v then rev = string.sub(redis.sha1hex(v), 1, 16) end
if rev ~= ARGV[1] then return {'X', v, now} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {'D', false, now}
";

/// The Redis store.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    open: redis::Script,
    load: redis::Script,
    swap: redis::Script,
    /// Where script calls queue to go out together (see [`Batched`]); started with the
    /// first call, in its runtime.
    batched: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Batched>>,
    /// No call is tried before this (after a failure).
    down_until: Mutex<Option<Instant>>,
    failures: AtomicU64,
    /// Redis's clock as last seen, and our clock then.
    clock: Mutex<Option<(Ms, Instant)>>,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://HOST:PORT/DB`, or `rediss://` for TLS,
    /// trusting `ca_file` when given, else the system's roots), its keys starting with
    /// `prefix`. Connects lazily: a Redis that is down at start-up is tried again later.
    /// Errors never quote the URL's password.
    pub fn open(
        url: &str,
        prefix: &str,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<RedisStore> {
        let shown = crate::config::redact_url(url);
        let refused = |e: anyhow::Error| anyhow::anyhow!("state store {shown}: {e}");
        let client = client(url, ca_file).map_err(refused)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| refused(anyhow::anyhow!(redact_error(&e, url))))?;
        let script = |body: &str| redis::Script::new(&format!("{NOW}\n{body}"));
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            open: script(OPEN),
            load: script(LOAD),
            swap: script(SWAP),
            batched: std::sync::OnceLock::new(),
            down_until: Mutex::new(None),
            failures: AtomicU64::new(0),
            clock: Mutex::new(None),
        })
    }

    /// Calls that failed (Redis unreachable, slow or refusing) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Redis's clock now, as estimated from its last answer (the wall clock before
    /// the first).
    pub fn now(&self) -> Ms {
        match *self.clock.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((then, at)) => then + at.elapsed().as_millis() as Ms,
            None => super::unix_ms(),
        }
    }

    fn saw(&self, now: Ms) {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, Instant::now()));
    }

    fn key(&self, name: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + name.len());
        k.push_str(&self.prefix);
        k.push_str(name);
        k
    }

    /// See [`crate::protocol::Action::Open`].
    pub async fn open_record(
        &self,
        seal: &Sealer,
        op: super::Opening<'_>,
        retention: Ms,
    ) -> Result<Opened, StoreError> {
        let super::Opening {
            binding,
            digest,
            key,
            record,
            ttl,
        } = op;
        let mut keys = vec![self.key(&seal.name(binding))];
        let mut args: Vec<Vec<u8>> = vec![
            seal.binding(digest).to_vec(),
            retention.max(1).to_string().into_bytes(),
        ];
        let mut sealed = Vec::new();
        if let Some(k) = key {
            let name = seal.name(k);
            sealed = seal.seal(&name, &record.encode(), &mut crate::engine::ThreadRng);
            keys.push(self.key(&name));
            args.push(sealed.clone());
            args.push(ttl.max(1).to_string().into_bytes());
        }
        let reply = ScriptReply::read(self.eval(&self.open, keys, args).await?, 4, "open")?;
        self.saw(reply.now);
        Ok(match reply.kind.as_slice() {
            b"R" => Opened::Reused,
            b"C" => Opened::Created {
                rev: rev_of(&sealed),
                now: reply.now,
            },
            _ => Opened::Found {
                loaded: super::unseal(seal, key.unwrap_or_default(), reply.value, reply.now),
                fresh: reply.fresh,
            },
        })
    }

    /// See [`crate::protocol::Action::Load`].
    pub async fn load(&self, seal: &Sealer, key: &str) -> Result<Loaded, StoreError> {
        let keys = vec![self.key(&seal.name(key))];
        let reply = ScriptReply::read(self.eval(&self.load, keys, vec![]).await?, 3, "load")?;
        self.saw(reply.now);
        Ok(super::unseal(seal, key, reply.value, reply.now))
    }

    /// See [`crate::protocol::Action::Swap`].
    pub async fn swap(
        &self,
        seal: &Sealer,
        key: &str,
        expected: Option<Rev>,
        record: &Record,
        ttl: Ms,
    ) -> Result<Swapped, StoreError> {
        let name = seal.name(key);
        let sealed = seal.seal(&name, &record.encode(), &mut crate::engine::ThreadRng);
        let rev = rev_of(&sealed);
        let args = vec![
            expected.map(rev_hex).unwrap_or_default().into_bytes(),
            sealed,
            ttl.max(1).to_string().into_bytes(),
        ];
        let keys = vec![self.key(&name)];
        let reply = ScriptReply::read(self.eval(&self.swap, keys, args).await?, 3, "swap")?;
        self.saw(reply.now);
        Ok(match reply.kind.as_slice() {
            b"D" => Swapped::Done {
                rev,
                now: reply.now,
            },
            _ => Swapped::Changed(super::unseal(seal, key, reply.value, reply.now)),
        })
    }

    /// See [`crate::protocol::Action::Wait`]: polls until the key no longer holds
    /// `seen`, or `until`.
    pub async fn wait(&self, seal: &Sealer, key: &str, seen: Option<Rev>, until: Instant) {
        let name = self.key(&seal.name(key));
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep_until((now + POLL).min(until)).await;
            let mut cmd = redis::cmd("GET");
            cmd.arg(&name);
            let mut conn = self.conn.clone();
            let value: Result<Option<Vec<u8>>, StoreError> = self
                .call(async move { cmd.query_async(&mut conn).await })
                .await;
            match value {
                Ok(v) if v.as_deref().map(rev_of) == seen => {}
                _ => return,
            }
        }
    }

    /// A small value (the access token): opened, if it is there and opens.
    pub async fn get(&self, seal: &Sealer, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = seal.name(key);
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(&name));
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await?;
        Ok(bytes.and_then(|b| seal.open(&name, &b)))
    }

    /// Set a small value for `ttl`; with `only_new`, only when none is there: whether
    /// it was set.
    pub async fn set(
        &self,
        seal: &Sealer,
        key: &str,
        value: &[u8],
        ttl: Ms,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let name = seal.name(key);
        let sealed = seal.seal(&name, value, &mut crate::engine::ThreadRng);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&name))
            .arg(sealed)
            .arg("PX")
            .arg(ttl.max(1));
        if only_new {
            cmd.arg("NX");
        }
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await?;
        Ok(set.is_some())
    }

    /// Forget a small value.
    pub async fn delete(&self, seal: &Sealer, key: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(&seal.name(key)));
        let mut conn = self.conn.clone();
        let _: u64 = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Run a script, in a pipeline with the other requests' calls; after a Redis
    /// restart (the script is gone) load it and send it again.
    async fn eval(
        &self,
        script: &redis::Script,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> Result<redis::Value, StoreError> {
        let command = || {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash()).arg(keys.len());
            for k in &keys {
                cmd.arg(k);
            }
            for a in &args {
                cmd.arg(a.as_slice());
            }
            cmd
        };
        let queued = self.batched(command());
        let mut conn = self.conn.clone();
        self.call(async move {
            let no_script = redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
            match queued.await {
                Err(e) if e.kind() == no_script => {
                    script.load_async(&mut conn).await?;
                    command().query_async(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    /// Run one Redis call with [`TIMEOUT`], unless Redis failed within [`BACKOFF`].
    async fn call<T>(
        &self,
        work: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let now = Instant::now();
        if self
            .down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| now < t)
        {
            return Err(StoreError(
                "Redis: unreachable a moment ago (tried again after a second)".into(),
            ));
        }
        let error = match tokio::time::timeout(TIMEOUT, work).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => format!("Redis: {e}"),
            Err(_) => format!("Redis: no answer within {} ms", TIMEOUT.as_millis()),
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.store_error();
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + BACKOFF);
        Err(StoreError(error))
    }
}

/// A client for `url` (`redis://`, or `rediss://` trusting `ca_file` when given, else
/// the system's roots). Errors never quote the URL's password.
pub fn client(url: &str, ca_file: Option<&std::path::Path>) -> anyhow::Result<redis::Client> {
    let refused = |e: redis::RedisError| anyhow::anyhow!(redact_error(&e, url));
    if !url.starts_with("rediss://") {
        return redis::Client::open(url).map_err(refused);
    }
    // redis-rs takes rustls's process-wide provider: ours (ring), as for the API.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root_cert = match ca_file {
        Some(file) => Some(
            std::fs::read(file)
                .map_err(|e| anyhow::anyhow!("state.ca_file {}: {e}", file.display()))?,
        ),
        None => None,
    };
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert,
        },
    )
    .map_err(refused)
}

/// A redis-rs error's text without the URL's password (some errors quote the URL).
fn redact_error(e: &redis::RedisError, url: &str) -> String {
    let text = e.to_string();
    match crate::config::url_password(url) {
        Some(password) if !password.is_empty() => text.replace(password, "…"),
        _ => text,
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

/// A script's reply: `{kind, value|nil, now[, fresh]}`.
struct ScriptReply {
    kind: Vec<u8>,
    value: Option<Vec<u8>>,
    now: Ms,
    fresh: bool,
}

impl ScriptReply {
    /// Read a reply of `n` items (3 or 4) to the script `what`.
    fn read(v: redis::Value, n: usize, what: &str) -> Result<ScriptReply, StoreError> {
        let unexpected = || StoreError(format!("Redis: unexpected reply to {what}"));
        let items = match v {
            redis::Value::Array(items) if items.len() == n => items,
            _ => return Err(unexpected()),
        };
        let bytes = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => Some(b.clone()),
            redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
            _ => None,
        };
        let int = |v: &redis::Value| match v {
            redis::Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        Ok(ScriptReply {
            kind: bytes(&items[0]).ok_or_else(unexpected)?,
            value: bytes(&items[1]),
            now: int(&items[2]).ok_or_else(unexpected)?,
            fresh: items.get(3).and_then(int) == Some(1),
        })
    }
}
