//! The tokio FastCGI server: accepts connections (bounded), reads records into the
//! connection state machine, and writes each batch of answers in one write.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::conn::{ConnLimits, Connection, Progress, Ready};
use super::record;
use crate::config::Limits;
use crate::engine::Engine;
use crate::listen::Listener;

/// Serve FastCGI on `listener` until `shutdown` turns true, then let in-flight requests
/// finish for up to `limits.drain_timeout`.
pub async fn serve(
    listener: Listener,
    engine: Arc<Engine>,
    limits: Limits,
    allowed_clients: Option<Arc<[IpAddr]>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = TokioListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // Take a slot before accepting: past max_connections, peers wait in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, Some(peer))) => match &allowed_clients {
                Some(allowed) if !allowed.contains(&peer.ip().to_canonical()) => {
                    tracing::warn!(%peer, "connection refused: not in allowed_clients");
                    continue;
                }
                _ => stream,
            },
            Ok((stream, None)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Back off briefly: EMFILE and friends persist for a moment.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let metrics = &crate::metrics::METRICS;
        let counted = metrics.enabled();
        if counted {
            metrics.connection_opened();
        }
        tokio::spawn(async move {
            match stream {
                Stream::Tcp(s) => serve_connection(s, &engine, limits, shutdown).await,
                Stream::Unix(s) => serve_connection(s, &engine, limits, shutdown).await,
            }
            if counted {
                metrics.connection_closed();
            }
            drop(permit);
        });
    }
    // Drain: wait until every connection gave its slot back, or the drain timeout.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all)).await {
        Ok(_) => tracing::info!("all connections finished; exiting"),
        Err(_) => tracing::warn!(
            "drain timeout ({}s) reached with connections still open; exiting",
            limits.drain_timeout.as_secs()
        ),
    }
    Ok(())
}

/// A read buffer's first size: a WeChat request through nginx is about 1.5 KiB.
const INITIAL_BUFFER: usize = 2048;

/// How long an idle keep-alive connection may still bring a request once draining.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Serve one connection until the peer closes it, a request without keep-conn is
/// answered, a timeout passes, or shutdown is asked while it is idle.
///
/// On shutdown an idle connection is not dropped at once: a request may already be on
/// its way (a freshly accepted connection always has one coming). It gets a short grace
/// period (`read_timeout` before its first request, [`DRAIN_GRACE`] after), is served
/// if a request arrives, and is closed after that answer.
pub async fn serve_connection<S>(
    mut stream: S,
    engine: &Engine,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Readable + Unpin,
{
    let mut session = Session::new(limits, *shutdown.borrow());
    loop {
        let busy = session.busy();
        let deadline = session.deadline(Instant::now());
        session.reserve_for_body();
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, read_some(&mut stream, &mut session.buf)) => r,
            _ = shutdown.changed(), if !busy && !session.draining => {
                session.draining = true;
                continue;
            }
        };
        let flow = match read {
            Ok(Ok(0)) => {
                if busy {
                    tracing::warn!(
                        buffered = session.buf.len(),
                        "peer closed the connection in the middle of a request"
                    );
                }
                return;
            }
            Ok(Ok(_)) => session.take_records(engine).await,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connection read failed");
                return;
            }
            Err(_) if busy => session.timed_out(engine).await,
            Err(_) => return, // idle keep-alive connection timed out
        };
        if !session.out.is_empty() {
            let until = Instant::now() + limits.write_timeout;
            match tokio::time::timeout_at(until, stream.write_all(&session.out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "connection write failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(
                        pending = session.out.len(),
                        "closing connection: the peer did not take our output within write_timeout_secs"
                    );
                    return;
                }
            }
            session.out = Vec::new();
        }
        if flow == Flow::Close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Whether a connection goes on after what it just did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    KeepOpen,
    Close,
}

/// One connection's state between reads: the protocol state machine, the bytes read
/// but not yet decoded, the bytes to write, and the clock of the request in progress.
struct Session {
    conn: Connection,
    limits: Limits,
    /// Read but not yet decoded. An idle connection holds no buffer: `read_some`
    /// allocates one when bytes arrive, and both buffers are given back once a request
    /// is answered, so a thousand idle keep-alive connections cost little memory.
    buf: Vec<u8>,
    /// Answers to write.
    out: Vec<u8>,
    /// When the first byte of the request in progress arrived.
    request_started: Option<Instant>,
    /// Requests answered on this connection.
    served: u64,
    /// Shutdown was asked: answer what comes, then close.
    draining: bool,
    /// Since when no request has been in progress: the idle timeout counts from here.
    /// Records that are not part of a request (management records, ignored ones) do
    /// not make a connection busy, so they cannot keep it open.
    idle_since: Instant,
}

impl Session {
    fn new(limits: Limits, draining: bool) -> Session {
        Session {
            conn: Connection::new(ConnLimits {
                max_params_bytes: limits.max_params_bytes,
                max_body_bytes: limits.max_body_bytes,
                max_connections: limits.max_connections,
            }),
            limits,
            buf: Vec::new(),
            out: Vec::new(),
            request_started: None,
            served: 0,
            draining,
            idle_since: Instant::now(),
        }
    }

    /// A request (or part of a record) is in progress.
    fn busy(&self) -> bool {
        self.conn.in_request() || !self.buf.is_empty()
    }

    /// Until when the next read may wait: the rest of the request's read timeout while
    /// one is in progress; else the idle timeout, or a short grace when draining.
    fn deadline(&self, now: Instant) -> Instant {
        match self.request_started {
            Some(t) if self.busy() => t + self.limits.read_timeout,
            _ if self.draining && self.served == 0 => now + self.limits.read_timeout,
            _ if self.draining => now + DRAIN_GRACE,
            _ => self.idle_since + self.limits.idle_timeout,
        }
    }

    /// Make room for the rest of a body of known length, so it is read in as few reads
    /// as the socket allows.
    fn reserve_for_body(&mut self) {
        let want = self.conn.body_remaining();
        if want > self.buf.capacity() - self.buf.len() {
            self.buf.reserve(want);
        }
    }

    /// A request started but did not arrive within the read timeout: answer it with
    /// 408 (when its id is known), then close.
    async fn timed_out(&mut self, engine: &Engine) -> Flow {
        if let Some(ready) = self.conn.abandon() {
            let started = self.request_started.unwrap_or_else(Instant::now);
            answer(engine, ready, started, &mut self.out).await;
        } else {
            tracing::warn!(
                "connection closed: partial record not completed within read_timeout_secs"
            );
        }
        Flow::Close
    }

    /// Decode and act on every complete record read so far; answer each request that
    /// completes.
    async fn take_records(&mut self, engine: &Engine) -> Flow {
        if self.request_started.is_none() {
            self.request_started = Some(Instant::now());
        }
        let mut flow = Flow::KeepOpen;
        let mut used = 0;
        loop {
            let (rec, len) = match record::decode(&self.buf[used..]) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "closing connection: undecodable record");
                    flow = Flow::Close;
                    break;
                }
            };
            used += len;
            match self.conn.on_record(rec, &mut self.out) {
                Progress::Continue => {}
                Progress::Ready(ready) => {
                    // While draining, close after this answer: the next request should
                    // go to the instance that replaces us.
                    let keep = ready.keep_conn && !self.draining;
                    self.served += 1;
                    let started = self.request_started.unwrap_or_else(Instant::now);
                    answer(engine, ready, started, &mut self.out).await;
                    self.request_started = None;
                    self.idle_since = Instant::now();
                    if !keep {
                        flow = Flow::Close;
                        break;
                    }
                }
                Progress::Aborted(id) => {
                    tracing::debug!("fastcgi: request {id} aborted by the client")
                }
                Progress::Ignored(what) => tracing::debug!("fastcgi: {what}"),
                Progress::Close(what) => {
                    tracing::warn!("closing connection: {what}");
                    flow = Flow::Close;
                    break;
                }
            }
        }
        self.buf.drain(..used);
        if self.buf.is_empty() && !self.conn.in_request() {
            self.request_started = None;
            self.buf = Vec::new();
        } else if self.request_started.is_none() {
            self.request_started = Some(Instant::now());
        }
        flow
    }
}

/// Read what has arrived into `buf`, allocating it only once the stream is readable.
async fn read_some<S>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize>
where
    S: AsyncRead + Readable + Unpin,
{
    if buf.capacity() == 0 {
        stream.wait_readable().await?;
        buf.reserve(INITIAL_BUFFER);
    }
    stream.read_buf(buf).await
}

/// Streams that can wait for bytes without a buffer to put them in.
pub trait Readable {
    /// Wait until the stream has bytes to read.
    fn wait_readable(&self) -> impl std::future::Future<Output = std::io::Result<()>>;
}

impl Readable for tokio::net::TcpStream {
    fn wait_readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> {
        self.readable()
    }
}

impl Readable for tokio::net::UnixStream {
    fn wait_readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> {
        self.readable()
    }
}

/// Run the core for a ready request and append STDOUT + END_REQUEST to `out`. Boxed:
/// the answer's state lives only while a request is answered, not in every idle
/// connection's task (1 136 bytes instead of 2 280).
fn answer<'a>(
    engine: &'a Engine,
    ready: Ready,
    started: Instant,
    out: &'a mut Vec<u8>,
) -> std::pin::Pin<Box<impl std::future::Future<Output = ()> + 'a>> {
    Box::pin(async move {
        let metrics = &crate::metrics::METRICS;
        let counted = metrics.enabled();
        if counted {
            metrics.in_flight(true);
        }
        let p = &ready.params;
        let response = match engine.status_page(&p.path, &p.query, &p.remote_addr, &p.accept) {
            Some(page) => {
                let latency = started.elapsed();
                metrics.request("-", &page, latency);
                crate::log::request(&p.method, &page, latency);
                page
            }
            None => {
                let body = ready.body.as_deref().map_err(Clone::clone);
                engine
                    .answer(&p.method, &p.path, &p.query, body, started)
                    .await
            }
        };
        if counted {
            metrics.in_flight(false);
        }
        let mut stdout = Vec::with_capacity(128 + response.body.len());
        response.write_cgi(&mut stdout);
        record::write_stream(out, record::STDOUT, ready.request_id, &stdout);
        record::write_end_request(out, ready.request_id, 0, record::REQUEST_COMPLETE);
    })
}

enum TokioListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl TokioListener {
    fn from_std(listener: Listener) -> anyhow::Result<TokioListener> {
        Ok(match listener {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                TokioListener::Tcp(tokio::net::TcpListener::from_std(l)?)
            }
            Listener::Unix(l) => {
                l.set_nonblocking(true)?;
                TokioListener::Unix(tokio::net::UnixListener::from_std(l)?)
            }
        })
    }

    /// The next connection, with the peer's address for TCP.
    async fn accept(&self) -> std::io::Result<(Stream, Option<std::net::SocketAddr>)> {
        match self {
            TokioListener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), Some(peer)))
            }
            TokioListener::Unix(l) => Ok((Stream::Unix(l.accept().await?.0), None)),
        }
    }
}
