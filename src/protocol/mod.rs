//! The answer protocol as a state machine with no IO and no clock: once per message,
//! leases, WeChat's attempts, hold, pick-up, customer-service pushes, per-sender slots
//! and store outages, each a transition written once. `docs/answer-protocol.md` draws
//! it; `tests/simulate.rs` runs many instances of it against a model of the store.
//!
//! - [`Attempt`]: one request for a message (one WeChat attempt, a replay, a pick-up
//!   word, a handshake). It reads and writes the message's [`record`] with
//!   compare-and-swap, waits, starts the program, and ends with a [`Final`].
//! - [`Worker`]: a finished program's (or hook's) answer: stores it, keeps it for a
//!   pick-up, pushes it with the customer-service API.
//!
//! A driver (the engine, or the simulator) turns each [`Action`] into IO and feeds the
//! outcome back as an [`Event`]. Times are milliseconds on two clocks the driver reads:
//! the local one (budgets and holds; monotonic) and the store's (leases and marks; the
//! store reports its clock with every answer, so processes need not agree on the time).
//!
//! Stores: [`Level::Shared`] is the `[state]` store (SQLite, Redis) when there is one;
//! [`Level::Local`] is this process's memory. When the shared store fails, the attempt
//! goes on in local memory (degraded): answers still go out, a program runs at most
//! once per process, a query seen here with another body is refused.

mod attempt;
mod list;
pub mod record;
mod worker;

use std::sync::Arc;

pub use attempt::{Attempt, AttemptParams};
pub use record::{given_in_outage, Delivery, Job, Late, Message, Record, State, Waiting};
pub use worker::{Worker, WorkerParams};

use crate::core::late::LateMode;
use crate::core::reply::Reply;
use crate::core::{Answer, Via};

/// Milliseconds on the local clock or a store's clock (see the module doc).
pub type Ms = u64;

/// WeChat waits this long for an answer to one attempt, then drops it and retries.
pub const ATTEMPT_WINDOW: Ms = 5_000;
/// WeChat's attempts at one message: the first and two retries, 5 s apart.
pub const WECHAT_ATTEMPTS: u8 = 3;
/// An attempt arriving this long after the message's first is WeChat's last (attempts
/// come at about 0, 5 and 10 s): hold never leaves it unanswered, even when earlier
/// attempts were not counted (a store outage).
pub const LAST_ATTEMPT_AFTER: Ms = 7_500;
/// An early attempt held in hold mode expects WeChat's next attempt within its
/// window plus this; when none comes, it may have been WeChat's last (earlier ones
/// never reached this server): the answer is then kept for a pick-up.
pub const SUCCESSOR_GRACE: Ms = 2_500;
/// A program's lease lasts its timeout plus this (it is killed at its timeout, so a
/// lease that ends unanswered means its process died).
pub const LEASE_MARGIN: Ms = 1_000;
/// A pick-up holds its own message this long while it looks for a waiting answer.
pub const PICKUP_LEASE: Ms = 2_000;
/// A customer-service push holds its answer this long (the push's tries and token
/// refresh); a push cut off by a crash is never repeated (it may have gone out).
pub const PUSH_LEASE: Ms = 60_000;
/// Most waiting answers one pick-up looks through.
pub const PICKUP_SCAN: usize = 16;
/// Most answers a follower's waiting list holds (the oldest go first).
pub const WAITING_MAX: usize = 64;

/// Which store an action goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// This process's memory.
    Local,
    /// The `[state]` store shared by processes (SQLite, Redis).
    Shared,
}

/// A stored value's version: compare-and-swap succeeds only against the version read.
/// Opaque: a counter in memory, a hash of the stored bytes in SQLite and Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rev(pub u64);

/// The body's fingerprint a signed query is bound to (see [`crate::core::Pending`]).
pub type Digest = [u8; 16];

/// What a request must do to decide its message.
#[derive(Debug, Clone)]
pub enum Work {
    /// A GET handshake: only its signed query is bound (so that it cannot be replayed
    /// as a POST).
    Handshake,
    /// A rule's answer, known at once.
    Known(Answer),
    /// A reply program or hook decides.
    Run {
        /// Its rule, its input and its lease.
        job: Arc<Job>,
        /// The answer when it cannot start (the per-sender cap): the rule's fallback.
        fallback: Answer,
    },
    /// A pick-up word: deliver the follower's oldest waiting answer; when nothing
    /// waits, do `then` (what the rules say for the message).
    Pickup {
        /// What the rules decided for the message itself.
        then: Box<Work>,
        /// The reply while the answer is still being made.
        still_running: Arc<Reply>,
    },
}

/// What a late answer does (`[late]`), for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatePolicy {
    /// The mode.
    pub mode: LateMode,
    /// How long an answer waits for a pick-up.
    pub pickup_ttl: Ms,
}

/// How an attempt ends: what the client is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Final {
    /// This answer (rendered and sealed by the core).
    Answer {
        /// The answer; its `via` says how it came about (`Retry` for a known answer).
        answer: Answer,
        /// Whether this attempt decided the message (it archives it).
        decided: bool,
    },
    /// `success`, for the reason `via` says.
    Success {
        /// Why (`Deadline`, `LateHold`, `LateDone`, `CustomerService`).
        via: Via,
        /// Whether this attempt decided the message.
        decided: bool,
    },
    /// Hold: the `pending` reply on WeChat's last attempt; the answer waits for a
    /// pick-up.
    Pending {
        /// Whether this attempt decided the message.
        decided: bool,
    },
    /// A handshake whose query is bound: echo it.
    Handshake,
    /// The signed query came before with another body (or as a handshake): refused.
    QueryReused,
}

/// Start a program for a message (its lease is held by `holder`).
#[derive(Debug, Clone, PartialEq)]
pub struct Spawn {
    /// The store the message's record is in.
    pub level: Level,
    /// The message's record key.
    pub key: Arc<str>,
    /// Who holds the lease (the worker stores the answer as this holder).
    pub holder: u64,
    /// The rule, input and lease.
    pub job: Arc<Job>,
    /// The follower's waiting list (for a late answer).
    pub list: Arc<str>,
    /// Also keep the answer in this process's memory (the record is in the shared
    /// store, which may fail before the answer comes).
    pub mirror: bool,
}

/// One step of IO the driver does, then answers with an [`Event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Bind `binding` to `digest` (refuse when bound to another digest); then, for a
    /// message (`key`), create its record as `record` unless one exists.
    /// Answered by [`Event::Opened`].
    Open {
        /// Where.
        level: Level,
        /// The signed query's key.
        binding: Arc<str>,
        /// The body's fingerprint.
        digest: Digest,
        /// The message's record key; `None` for a handshake.
        key: Option<Arc<str>>,
        /// The record to create.
        record: Record,
        /// How long it lives.
        ttl: Ms,
    },
    /// Read a record: [`Event::Loaded`].
    Load {
        /// Where.
        level: Level,
        /// The key.
        key: Arc<str>,
    },
    /// Write `record` if the key still holds version `expected` (`None`: nothing, or
    /// an unreadable value of that version): [`Event::Swapped`].
    Swap {
        /// Where.
        level: Level,
        /// The key.
        key: Arc<str>,
        /// The version read.
        expected: Option<Rev>,
        /// The new value.
        record: Record,
        /// How long it lives.
        ttl: Ms,
    },
    /// Write `record` whatever the key holds (this process's own copy): [`Event::Put`].
    Put {
        /// Where (always [`Level::Local`]).
        level: Level,
        /// The key.
        key: Arc<str>,
        /// The value.
        record: Record,
        /// How long it lives.
        ttl: Ms,
    },
    /// Return when the key no longer holds version `seen`, or at `until` (local
    /// clock): [`Event::Woke`].
    Wait {
        /// Where.
        level: Level,
        /// The key.
        key: Arc<str>,
        /// The version last read.
        seen: Option<Rev>,
        /// The latest wake-up, local clock.
        until: Ms,
    },
    /// Start a program in the background: [`Event::Spawned`] or
    /// [`Event::SpawnRefused`].
    Spawn(Spawn),
    /// Push an answer with the customer-service API: [`Event::Pushed`].
    Push {
        /// To whom.
        follower: Arc<str>,
        /// What.
        answer: Answer,
    },
    /// The attempt ends with this answer to the client.
    Respond(Final),
    /// The worker is done.
    Done,
}

/// A store answered with a value (or none) and its clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The value's version: `None` when there is no value.
    pub rev: Option<Rev>,
    /// The value; `None` when there is none, or it cannot be read (forged, altered,
    /// another version's): then `rev` is still given, so that it can be replaced.
    pub record: Option<Record>,
    /// The store's clock when it answered.
    pub now: Ms,
}

/// What [`Action::Open`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// The query is bound to another digest: nothing else was done.
    Reused,
    /// The record was created (or, for a handshake, the query bound).
    Created {
        /// The new record's version.
        rev: Rev,
        /// The store's clock.
        now: Ms,
    },
    /// A record existed; nothing was written to it.
    Found {
        /// It.
        loaded: Loaded,
        /// Whether the query was new (bound now): a new WeChat attempt, not a replay
        /// of one.
        fresh: bool,
    },
}

/// What [`Action::Swap`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Swapped {
    /// Written.
    Done {
        /// The new version.
        rev: Rev,
        /// The store's clock.
        now: Ms,
    },
    /// Not written: the key holds this now.
    Changed(Loaded),
}

/// The store could not be used (unreachable, locked, timed out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

/// Why a push did not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFailed(pub String);

/// The outcome of an [`Action`], fed back to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// After [`Action::Open`].
    Opened(Result<Opened, StoreError>),
    /// After [`Action::Load`].
    Loaded(Result<Loaded, StoreError>),
    /// After [`Action::Swap`].
    Swapped(Result<Swapped, StoreError>),
    /// After [`Action::Put`].
    Put,
    /// After [`Action::Wait`].
    Woke,
    /// The program started.
    Spawned,
    /// The program could not start (this follower has `max_programs_per_sender`
    /// running in this process).
    SpawnRefused,
    /// After [`Action::Push`].
    Pushed(Result<(), PushFailed>),
}

/// How long a message record lives: an answer the retention, a late one the pick-up
/// time (`late`), a lease its length plus the retention.
pub fn ttl_of(message: &Message, store_now: Ms, retention: Ms, late: Option<&LatePolicy>) -> Ms {
    let base = match message.late {
        Late::No => retention,
        _ => late.map_or(retention, |l| l.pickup_ttl.max(retention)),
    };
    match message.state {
        State::Leased { until, .. } => base + until.saturating_sub(store_now),
        State::Answered(_) => base,
    }
}

/// A holder id derived from another (a pick-up re-running a waiting message holds its
/// lease under a new id), without a random source.
pub(crate) fn derive_holder(holder: u64, n: u64) -> u64 {
    // splitmix64
    let mut z = holder.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}
