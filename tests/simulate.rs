//! Deterministic simulation of the answer protocol (the way FoundationDB and
//! TigerBeetle test theirs): several instances of the real state machines
//! ([`wechat_fcgi::protocol::Attempt`], [`wechat_fcgi::protocol::Worker`]) over the real
//! in-memory store as the model of a shared store's atomic operations, driven by
//! WeChat's schedule (attempts at 0, 5 and 10 s, each abandoned at 5 s), followers
//! sending pick-up words, programs of random length that fail or time out, instance
//! crashes at any step, store outages, stores slow to answer, two accounts sharing
//! followers' OpenIDs and MsgIds, and an attacker replaying captured signed queries
//! with other bodies. Everything random comes from one seed: a failing seed prints
//! itself and replays exactly.
//!
//! The invariants (docs/answer-protocol.md) are checked after every step, and the
//! liveness one at the end, once the chaos has stopped and the followers have sent
//! their pick-ups.
//!
//! `cargo test --test simulate` runs `SIMULATE_SEEDS` seeds (default 3000) from
//! `SIMULATE_FROM` (default 0); `SIMULATE_SEED=N` replays one with its trace;
//! `scripts/simulate.sh` runs a million.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use wechat_fcgi::core::late::LateMode;
use wechat_fcgi::core::reply::Reply;
use wechat_fcgi::core::{Answer, Via};
use wechat_fcgi::engine::store::MemoryStore;
use wechat_fcgi::protocol::{
    Action, Attempt, AttemptParams, Event, Final, Job, LatePolicy, Level, Ms, Opened, PushFailed,
    Record, StoreError, Work, Worker, WorkerParams, ATTEMPT_WINDOW, LEASE_MARGIN,
};

const BUDGET: Ms = 4_500;
const RETENTION: Ms = 60_000;
const PROGRAM_TIMEOUT: Ms = 20_000;
const ACCOUNTS: [&str; 2] = ["live", "test"];
const FOLLOWERS: [&str; 3] = ["oA", "oB", "oC"];
/// When the chaos (crashes, outages, new messages) stops and the followers start
/// picking up what waits for them.
const QUIESCE: Ms = 400_000;
const END: Ms = 900_000;

#[test]
fn the_protocol_keeps_its_promises_over_many_seeds() {
    if let Ok(seed) = std::env::var("SIMULATE_SEED") {
        let seed: u64 = seed.parse().expect("SIMULATE_SEED is a number");
        match Sim::run(seed, true) {
            Ok(stats) => println!("seed {seed}: ok ({stats})"),
            Err(failure) => panic!("seed {seed}: {failure}"),
        }
        return;
    }
    let from: u64 = env_number("SIMULATE_FROM", 0);
    let seeds: u64 = env_number("SIMULATE_SEEDS", 3_000);
    let mut totals = Stats::default();
    for seed in from..from + seeds {
        match Sim::run(seed, false) {
            Ok(stats) => totals.add(&stats),
            Err(failure) => panic!(
                "seed {seed}: {failure}\nreplay it with its trace: \
                 SIMULATE_SEED={seed} cargo test --test simulate -- --nocapture"
            ),
        }
    }
    println!("{seeds} seeds from {from}: {totals}");
    // The seeds must reach the paths the invariants are about.
    if seeds >= 1_000 {
        for (what, n) in totals.coverage() {
            assert!(n > 0, "no seed reached: {what} ({totals})");
        }
    }
}

/// The five failures reported from outside, each as a scripted run of the same
/// machines under the same checks, plus what the follower must have seen.
mod reported {
    use super::*;

    fn setup(instances: usize, shared: bool, modes: [LateMode; 2]) -> Setup {
        Setup {
            instances,
            shared,
            modes,
            pickup_ttl: 3_600_000,
            push_ok: 100,
            per_sender_max: 1,
        }
    }

    /// Reported 1: two instances on a shared store; the first claims a message, runs
    /// a 0.6 s program (timeout 1 s) and is killed. WeChat's second attempt reaches the
    /// other: it takes the lease over as soon as it ended, runs the program, and
    /// answers that attempt (it got `pending`, and the program ran after it).
    #[test]
    fn a_lease_taken_over_after_a_crash_answers_the_next_attempt() {
        let sim = Sim::scripted(&setup(2, true, [LateMode::Hold; 2]), |sim| {
            let m = sim.new_msg(0, 0, 1, Kind::Run);
            sim.durations.insert(m, 600);
            sim.leases.insert(m, 1_000);
            for (attempt, inst) in [(1, 0), (2, 1), (3, 1)] {
                sim.routes.insert((m, attempt), inst);
            }
            sim.at(0, Ev::Send { msg: m, attempt: 1 });
            sim.at(300, Ev::Crash { inst: 0 });
        })
        .unwrap();
        let m = &sim.msgs[0];
        assert_eq!(m.shown, Some((2, "answer")), "{:?}", m.deliveries);
        assert_eq!(m.deliveries.len(), 1);
        assert!(
            m.deliveries[0].starts_with("program|"),
            "{:?}",
            m.deliveries
        );
    }

    /// Reported 2: the shared store down, one instance, a program rule: the program
    /// runs once, its answer is not thrown away, and the retry gets it (not the
    /// fallback, not a "max_programs_per_sender" refusal).
    #[test]
    fn a_store_outage_runs_a_program_once_and_its_retry_gets_the_answer() {
        let sim = Sim::scripted(&setup(1, true, [LateMode::Hold; 2]), |sim| {
            sim.at(0, Ev::Outage { down: true });
            let m = sim.new_msg(0, 0, 1, Kind::Run);
            sim.durations.insert(m, 6_000);
            sim.at(10, Ev::Send { msg: m, attempt: 1 });
        })
        .unwrap();
        let m = &sim.msgs[0];
        assert_eq!(m.degraded_starts.len(), 1, "the program ran once");
        assert_eq!(m.starts, 0);
        assert_eq!(m.shown, Some((2, "answer")));
        assert!(
            m.deliveries[0].starts_with("program|"),
            "{:?}",
            m.deliveries
        );
    }

    /// Reported 3: two accounts, one follower's OpenID: a pick-up at the other
    /// account's path gets that account's own answer, never this one's late answer,
    /// which stays for this account's pick-up.
    #[test]
    fn pick_ups_never_cross_accounts() {
        let sim = Sim::scripted(&setup(1, false, [LateMode::Hold; 2]), |sim| {
            let m = sim.new_msg(0, 0, 1, Kind::Run);
            sim.durations.insert(m, 15_000);
            sim.at(0, Ev::Send { msg: m, attempt: 1 });
            sim.at(
                20_000,
                Ev::Pickup {
                    account: 1,
                    follower: 0,
                },
            );
            sim.at(
                25_000,
                Ev::Pickup {
                    account: 0,
                    follower: 0,
                },
            );
        })
        .unwrap();
        let m = &sim.msgs[0];
        assert_eq!(m.shown, Some((3, "pending")));
        assert_eq!(m.deliveries.len(), 1);
        assert!(m.deliveries[0].contains("(pickup"), "{:?}", m.deliveries);
        let other = &sim.msgs[1];
        assert_eq!(other.account, 1);
        assert!(
            other.deliveries[0].starts_with("rule|test|"),
            "the other account's pick-up got its own rule: {:?}",
            other.deliveries
        );
    }

    /// Reported 4: with the store down, a captured signed query is refused with
    /// another body (the same message key or another), and so is a handshake's query
    /// with a body.
    #[test]
    fn replay_binding_fails_closed_in_an_outage() {
        let sim = Sim::scripted(&setup(1, true, [LateMode::Hold; 2]), |sim| {
            sim.at(0, Ev::Outage { down: true });
            let m = sim.new_msg(0, 0, 1, Kind::Known);
            sim.at(10, Ev::Send { msg: m, attempt: 1 });
            sim.at(
                1_000,
                Ev::Forge {
                    msg: m,
                    same_key: true,
                },
            );
            sim.at(
                2_000,
                Ev::Forge {
                    msg: m,
                    same_key: false,
                },
            );
            sim.at(3_000, Ev::Handshake { account: 0 });
        })
        .unwrap();
        assert_eq!(sim.stats.forged_refused, 3);
        assert_eq!(sim.msgs[0].deliveries.len(), 1);
        assert!(sim.msgs[0].deliveries[0].starts_with("rule|live|oA|1|"));
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the seeds exercised, summed.
#[derive(Default, Debug)]
struct Stats {
    messages: u64,
    delivered: u64,
    passive: u64,
    pickups: u64,
    pushes: u64,
    pending_replies: u64,
    takeovers: u64,
    crashes: u64,
    outages: u64,
    degraded: u64,
    forged_refused: u64,
    excused: u64,
    /// Why messages were excused, by reason.
    reasons: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.messages += o.messages;
        self.delivered += o.delivered;
        self.passive += o.passive;
        self.pickups += o.pickups;
        self.pushes += o.pushes;
        self.pending_replies += o.pending_replies;
        self.takeovers += o.takeovers;
        self.crashes += o.crashes;
        self.outages += o.outages;
        self.degraded += o.degraded;
        self.forged_refused += o.forged_refused;
        self.excused += o.excused;
        for (k, v) in &o.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
    }

    fn coverage(&self) -> [(&'static str, u64); 9] {
        [
            ("an answer given inline", self.passive),
            ("an answer picked up", self.pickups),
            ("an answer pushed", self.pushes),
            ("the pending reply", self.pending_replies),
            ("a lease taken over", self.takeovers),
            ("a crash", self.crashes),
            ("a store outage", self.outages),
            ("a request answered without the shared store", self.degraded),
            ("a forged body refused", self.forged_refused),
        ]
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages, {} answers delivered ({} inline, {} picked up, {} pushed), {} pending replies, \
             {} takeovers, {} crashes, {} outages, {} requests degraded, {} forgeries refused, \
             {} messages excused from delivery",
            self.messages,
            self.delivered,
            self.passive,
            self.pickups,
            self.pushes,
            self.pending_replies,
            self.takeovers,
            self.crashes,
            self.outages,
            self.degraded,
            self.forged_refused,
            self.excused
        )?;
        for (why, n) in &self.reasons {
            write!(f, "\n  excused {n:>7}: {why}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A rule's answer.
    Known,
    /// A program's.
    Run,
    /// A pick-up word.
    Pickup,
}

/// One message WeChat delivers to the callback URL.
#[derive(Debug)]
struct Msg {
    account: usize,
    follower: usize,
    msgid: u64,
    kind: Kind,
    key: Arc<str>,
    /// WeChat's attempts sent, and whether it accepted an answer (then it stops).
    attempts: u8,
    accepted: bool,
    /// The query of each attempt (the first may be reused by a later attempt, as a
    /// duplicate; the attacker replays them with other bodies).
    queries: Vec<String>,
    /// Answers of this message the follower received (tags), and how.
    deliveries: Vec<String>,
    /// Why it may end undelivered.
    excuses: Vec<String>,
    /// Program starts under the shared store's lease, and runs whose answer never
    /// reached the shared store (killed by a crash, or stored locally in an outage).
    starts: u32,
    lost_runs: u32,
    /// Requests of it that lost the shared store midway (a lease they held may end
    /// unanswered).
    degraded_requests: u32,
    /// Runs started without the shared store, per instance incarnation.
    degraded_starts: HashSet<(usize, u32)>,
    /// The answer is `success` (nothing to deliver).
    silent: bool,
    /// A forgery reached a store before its genuine query did (so it could not be
    /// told): the forged answer is this message's.
    forged_first: bool,
    /// When its record was first marked late.
    late_since: Option<Ms>,
    /// Answers of it given in an outage and not yet marked in the shared store.
    unreconciled: u32,
    /// What WeChat accepted for it: the attempt, and `answer`, `pending` or
    /// `success`.
    shown: Option<(u8, &'static str)>,
    /// Its record as last written in the store that decides (the shared one, or the
    /// only instance's memory), and whether a crash took that memory.
    last: Option<Record>,
    memory_lost: bool,
}

/// A request in flight: which message, which attempt, sent when.
#[derive(Debug, Clone)]
struct Req {
    msg: usize,
    attempt: u8,
    sent: Ms,
    forged: bool,
    handshake: bool,
}

enum Machine {
    Attempt(Box<Attempt>, Req),
    Worker(Box<Worker>, usize),
}

struct Instance {
    alive: bool,
    incarnation: u32,
    local: MemoryStore,
    tasks: HashMap<u64, Machine>,
    waiters: HashMap<u64, (Level, Arc<str>, Option<wechat_fcgi::protocol::Rev>)>,
    per_sender: HashMap<usize, u32>,
    /// Bindings made in local memory during an outage, not yet written to the shared
    /// store (and whether a genuine request made them).
    unsynced: Vec<(Arc<str>, [u8; 16], bool)>,
    /// Answers it gave from local memory in an outage, not yet marked in the shared
    /// store; and late marks whose listing the outage cut.
    given: Vec<usize>,
    unlisted: Vec<(Arc<str>, Arc<str>)>,
    /// Runs in progress: run id -> (message, follower, level, lease holder).
    runs: HashMap<u64, (usize, usize, Level, u64)>,
    /// Pushes in flight: task -> message.
    pushes: HashMap<u64, usize>,
}

#[derive(Debug)]
enum Ev {
    Send {
        msg: usize,
        attempt: u8,
    },
    Forge {
        msg: usize,
        same_key: bool,
    },
    Handshake {
        account: usize,
    },
    Pickup {
        account: usize,
        follower: usize,
    },
    Apply {
        inst: usize,
        inc: u32,
        task: u64,
        op: Action,
    },
    Reply {
        inst: usize,
        inc: u32,
        task: u64,
        event: Event,
    },
    Wake {
        inst: usize,
        inc: u32,
        task: u64,
    },
    ProgramDone {
        inst: usize,
        inc: u32,
        run: u64,
        answer: Answer,
    },
    PushDone {
        inst: usize,
        inc: u32,
        task: u64,
        ok: bool,
    },
    Crash {
        inst: usize,
    },
    Restart {
        inst: usize,
    },
    Outage {
        down: bool,
    },
}

/// What a run is made of.
#[derive(Debug, Clone)]
struct Setup {
    instances: usize,
    shared: bool,
    modes: [LateMode; 2],
    pickup_ttl: Ms,
    /// Pushes that succeed, in percent.
    push_ok: u32,
    per_sender_max: u32,
}

struct Sim {
    rng: ChaCha8Rng,
    now: Ms,
    seq: u64,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    events: HashMap<u64, Ev>,
    instances: Vec<Instance>,
    /// The shared store (a model of SQLite's or Redis's atomic operations), if any.
    shared: Option<MemoryStore>,
    down: bool,
    modes: [LateMode; 2],
    pickup_ttl: Ms,
    push_ok: u32,
    per_sender_max: u32,
    msgs: Vec<Msg>,
    keys: HashMap<Arc<str>, usize>,
    next_task: u64,
    next_run: u64,
    next_msgid: u64,
    trace: Option<Vec<String>>,
    stats: Stats,
    /// Tasks that saw the shared store fail.
    failed_tasks: HashSet<(usize, u32, u64)>,
    /// Opens in flight to the shared store: their binding, kept locally once accepted.
    opening: HashMap<(usize, u64), (Arc<str>, [u8; 16])>,
    /// Signed queries a store bound to a genuine body (where: `None` shared, else the
    /// instance): a forgery with one of them must be refused.
    bound: HashSet<(Option<usize>, Arc<str>)>,
    /// Queries a forgery got bound in an outage (no process could tell).
    forged_tentative: HashSet<Arc<str>>,
    /// Scripted runs: which instance an attempt goes to, how long a message's
    /// program runs (it then answers), whether followers pick up at the end.
    routes: HashMap<(usize, u8), usize>,
    durations: HashMap<usize, Ms>,
    leases: HashMap<usize, Ms>,
}

type Failure = String;

impl Sim {
    fn run(seed: u64, traced: bool) -> Result<Stats, Failure> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let instances = 1 + (rng.next_u32() % 3) as usize;
        let shared = instances > 1 || rng.next_u32() % 2 == 0;
        let mode = |r: u32| match r % 3 {
            0 => LateMode::Off,
            1 => LateMode::Hold,
            _ => LateMode::CustomerService,
        };
        let modes = [mode(rng.next_u32()), mode(rng.next_u32())];
        let pickup_ttl = if rng.next_u32() % 4 == 0 {
            300_000
        } else {
            3_600_000
        };
        let setup = Setup {
            instances,
            shared,
            modes,
            pickup_ttl,
            push_ok: rng.next_u32() % 101,
            per_sender_max: 1 + rng.next_u32() % 3,
        };
        let mut sim = Sim::new(rng, &setup, traced);
        sim.note(format!("seed {seed}: {setup:?}"));
        sim.plan();
        sim.finish()
    }

    /// A scripted run: `script` adds the events.
    fn scripted(setup: &Setup, script: impl FnOnce(&mut Sim)) -> Result<Sim, Failure> {
        let traced = std::env::var("SIMULATE_TRACE").is_ok();
        let mut sim = Sim::new(ChaCha8Rng::seed_from_u64(0), setup, traced);
        sim.note(format!("scripted: {setup:?}"));
        script(&mut sim);
        let result = sim.main_loop().and_then(|()| sim.check_end());
        sim.print_trace();
        result.map(|()| sim)
    }

    fn new(rng: ChaCha8Rng, setup: &Setup, traced: bool) -> Sim {
        Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            instances: (0..setup.instances).map(|_| Instance::new()).collect(),
            shared: setup
                .shared
                .then(|| MemoryStore::new(1 << 20, 1 << 30, RETENTION)),
            down: false,
            modes: setup.modes,
            pickup_ttl: setup.pickup_ttl,
            push_ok: setup.push_ok,
            per_sender_max: setup.per_sender_max,
            msgs: Vec::new(),
            keys: HashMap::new(),
            next_task: 1,
            next_run: 1,
            next_msgid: 1,
            trace: traced.then(Vec::new),
            stats: Stats::default(),
            failed_tasks: HashSet::new(),
            opening: HashMap::new(),
            bound: HashSet::new(),
            forged_tentative: HashSet::new(),
            routes: HashMap::new(),
            durations: HashMap::new(),
            leases: HashMap::new(),
        }
    }

    fn finish(mut self) -> Result<Stats, Failure> {
        let result = self.main_loop().and_then(|()| self.check_end());
        self.print_trace();
        result.map(|()| self.stats)
    }

    fn print_trace(&self) {
        if let Some(trace) = &self.trace {
            for line in trace {
                println!("{line}");
            }
        }
    }

    fn note(&mut self, line: String) {
        let now = self.now;
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{now:>7} {line}"));
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn at(&mut self, t: Ms, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// The run's messages, pick-ups, crashes and outages.
    fn plan(&mut self) {
        let n = 3 + self.rand(14);
        for _ in 0..n {
            let t = self.rand(120_000);
            let account = self.rand(2) as usize;
            let follower = self.rand(3) as usize;
            // MsgIds from a small range: the accounts share some.
            let msgid = 1 + self.rand(6);
            let kind = match self.rand(10) {
                0..=3 => Kind::Known,
                _ => Kind::Run,
            };
            if self
                .msgs
                .iter()
                .any(|m| m.account == account && m.follower == follower && m.msgid == msgid)
            {
                continue;
            }
            let msg = self.new_msg(account, follower, msgid, kind);
            self.at(t, Ev::Send { msg, attempt: 1 });
            if self.rand(4) == 0 {
                let same_key = self.rand(2) == 0;
                let delay = 1 + self.rand(20_000);
                self.at(t + delay, Ev::Forge { msg, same_key });
            }
        }
        for _ in 0..self.rand(3) {
            let t = self.rand(200_000);
            let account = self.rand(2) as usize;
            self.at(t, Ev::Handshake { account });
        }
        for _ in 0..self.rand(8) {
            let t = self.rand(QUIESCE);
            let (account, follower) = (self.rand(2) as usize, self.rand(3) as usize);
            self.at(t, Ev::Pickup { account, follower });
        }
        // The quiescent end: each follower asks every 5 s until nothing waits.
        for account in 0..2 {
            for follower in 0..3 {
                for k in 0..40 {
                    self.at(QUIESCE + 5_000 * k, Ev::Pickup { account, follower });
                }
            }
        }
        for _ in 0..self.rand(4) {
            let t = self.rand(QUIESCE - 60_000);
            let inst = self.rand(self.instances.len() as u64) as usize;
            self.at(t, Ev::Crash { inst });
        }
        if self.shared.is_some() {
            for _ in 0..self.rand(3) {
                let t = self.rand(QUIESCE - 60_000);
                let length = 200 + self.rand(20_000);
                self.at(t, Ev::Outage { down: true });
                self.at(t + length, Ev::Outage { down: false });
            }
        }
    }

    fn new_msg(&mut self, account: usize, follower: usize, msgid: u64, kind: Kind) -> usize {
        let key: Arc<str> = Arc::from(format!(
            "m/{}/m:{msgid}:{}",
            ACCOUNTS[account], FOLLOWERS[follower]
        ));
        let index = self.msgs.len();
        self.keys.insert(key.clone(), index);
        self.msgs.push(Msg {
            account,
            follower,
            msgid,
            kind,
            key,
            attempts: 0,
            accepted: false,
            queries: Vec::new(),
            deliveries: Vec::new(),
            excuses: Vec::new(),
            starts: 0,
            lost_runs: 0,
            degraded_requests: 0,
            degraded_starts: HashSet::new(),
            silent: false,
            forged_first: false,
            late_since: None,
            unreconciled: 0,
            shown: None,
            last: None,
            memory_lost: false,
        });
        self.stats.messages += 1;
        index
    }

    fn main_loop(&mut self) -> Result<(), Failure> {
        let mut steps = 0u64;
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if t > END {
                break;
            }
            steps += 1;
            if steps > 2_000_000 {
                return Err("the simulation does not settle (2 000 000 steps)".into());
            }
            self.now = t;
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.handle(ev)?;
            self.check_always()?;
        }
        Ok(())
    }

    fn late(&self, account: usize) -> Option<LatePolicy> {
        (self.modes[account] != LateMode::Off).then(|| LatePolicy {
            mode: self.modes[account],
            pickup_ttl: self.pickup_ttl,
        })
    }

    fn tag(kind: &str, m: &Msg, run: u64) -> Arc<Reply> {
        Arc::new(Reply::Text(format!(
            "{kind}|{}|{}|{}|{run}",
            ACCOUNTS[m.account], FOLLOWERS[m.follower], m.msgid
        )))
    }

    fn work(&self, msg: usize) -> Work {
        let lease = self.leases.get(&msg).copied().unwrap_or(PROGRAM_TIMEOUT) + LEASE_MARGIN;
        let m = &self.msgs[msg];
        let known = |kind: &str| Answer {
            reply: Some(Sim::tag(kind, m, 0)),
            rule: Arc::from("rule"),
            via: Via::Rule,
        };
        match m.kind {
            Kind::Known => Work::Known(known("rule")),
            Kind::Run => {
                let fallback = Sim::tag("fallback", m, 0);
                Work::Run {
                    job: Arc::new(Job {
                        rule: Arc::from("bot"),
                        input: Arc::from(m.key.as_bytes()),
                        lease,
                        fallback: Some(fallback.clone()),
                    }),
                    fallback: Answer {
                        reply: Some(fallback),
                        rule: Arc::from("bot"),
                        via: Via::Fallback,
                    },
                }
            }
            Kind::Pickup => {
                let then = if self.late(m.account).is_some() {
                    Box::new(Work::Known(known("rule")))
                } else {
                    return Work::Known(known("rule"));
                };
                Work::Pickup {
                    then,
                    still_running: Arc::new(Reply::Text("still".into())),
                }
            }
        }
    }

    fn digest(body: &str) -> [u8; 16] {
        wechat_fcgi::engine::store::body_digest(body.as_bytes())
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.instances.len())
            .filter(|i| self.instances[*i].alive)
            .collect()
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Send { msg, attempt } => self.send(msg, attempt),
            Ev::Forge { msg, same_key } => self.forge(msg, same_key),
            Ev::Handshake { account } => self.handshake(account),
            Ev::Pickup { account, follower } => {
                if self.now < QUIESCE || !self.nothing_waits(account, follower) {
                    let msgid = 1000 + self.next_msgid;
                    self.next_msgid += 1;
                    let msg = self.new_msg(account, follower, msgid, Kind::Pickup);
                    self.send(msg, 1)
                } else {
                    Ok(())
                }
            }
            Ev::Apply {
                inst,
                inc,
                task,
                op,
            } => {
                let genuine = self.genuine(inst, task);
                if self.live(inst, inc) {
                    self.resync(inst);
                }
                let event = self.apply_shared(op, genuine);
                let latency = self.rand(5);
                self.at(
                    self.now + latency,
                    Ev::Reply {
                        inst,
                        inc,
                        task,
                        event,
                    },
                );
                Ok(())
            }
            Ev::Reply {
                inst,
                inc,
                task,
                event,
            } => {
                if self.live(inst, inc) {
                    if let Event::Opened(Ok(Opened::Created { .. } | Opened::Found { .. })) = &event
                    {
                        if let Some((binding, digest)) = self.opening.remove(&(inst, task)) {
                            self.instances[inst].local.bind(&binding, &digest, self.now);
                        }
                    }
                    let failed = matches!(
                        event,
                        Event::Opened(Err(_)) | Event::Loaded(Err(_)) | Event::Swapped(Err(_))
                    );
                    if failed && self.failed_tasks.insert((inst, inc, task)) {
                        match self.instances[inst].tasks.get(&task) {
                            // Its answer may not reach the shared store.
                            Some(Machine::Worker(_, msg)) => {
                                let msg = *msg;
                                self.msgs[msg].lost_runs += 1;
                                self.mark_degraded_msg(msg);
                            }
                            Some(Machine::Attempt(_, req)) => {
                                self.msgs[req.msg].degraded_requests += 1
                            }
                            None => {}
                        }
                    }
                    self.step(inst, task, event)
                } else {
                    self.lost_reply(&event);
                    Ok(())
                }
            }
            Ev::Wake { inst, inc, task } => {
                if self.live(inst, inc) && self.instances[inst].waiters.remove(&task).is_some() {
                    self.step(inst, task, Event::Woke)
                } else {
                    Ok(())
                }
            }
            Ev::ProgramDone {
                inst,
                inc,
                run,
                answer,
            } => self.program_done(inst, inc, run, answer),
            Ev::PushDone {
                inst,
                inc,
                task,
                ok,
            } => {
                if !self.live(inst, inc) {
                    return Ok(());
                }
                let msg = self.instances[inst].pushes.remove(&task);
                let result = if ok {
                    if let Some(msg) = msg {
                        self.deliver_push(msg)?;
                    }
                    Ok(())
                } else {
                    Err(PushFailed("refused".into()))
                };
                self.step(inst, task, Event::Pushed(result))
            }
            Ev::Crash { inst } => {
                self.crash(inst);
                Ok(())
            }
            Ev::Restart { inst } => {
                let i = &mut self.instances[inst];
                i.alive = true;
                i.incarnation += 1;
                self.note(format!("instance {inst} restarts"));
                Ok(())
            }
            Ev::Outage { down } => {
                if down && !self.down {
                    self.stats.outages += 1;
                }
                self.down = down;
                self.note(format!(
                    "shared store {}",
                    if down { "down" } else { "back" }
                ));
                if down {
                    // Waiting on the shared store fails: every such waiter wakes.
                    for inst in 0..self.instances.len() {
                        let inc = self.instances[inst].incarnation;
                        let tasks: Vec<u64> = self.instances[inst]
                            .waiters
                            .iter()
                            .filter(|(_, (l, _, _))| *l == Level::Shared)
                            .map(|(t, _)| *t)
                            .collect();
                        for task in tasks {
                            self.at(self.now, Ev::Wake { inst, inc, task });
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn live(&self, inst: usize, inc: u32) -> bool {
        let i = &self.instances[inst];
        i.alive && i.incarnation == inc
    }

    /// Whether a pick-up now would find nothing: used to stop the quiescent pick-ups.
    fn nothing_waits(&self, account: usize, follower: usize) -> bool {
        let list = format!("w/{}/{}", ACCOUNTS[account], FOLLOWERS[follower]);
        let stores: Vec<&MemoryStore> = match &self.shared {
            Some(s) => vec![s],
            None => self.instances.iter().map(|i| &i.local).collect(),
        };
        stores.iter().all(|s| {
            s.load(&list, self.now)
                .record
                .and_then(|r| r.waiting().map(|w| w.keys.is_empty()))
                .unwrap_or(true)
        })
    }

    /// WeChat sends attempt `attempt` of a message (and schedules the next).
    fn send(&mut self, msg: usize, attempt: u8) -> Result<(), Failure> {
        if self.msgs[msg].accepted || self.now >= QUIESCE + 300_000 && attempt > 1 {
            return Ok(());
        }
        self.msgs[msg].attempts = attempt;
        if attempt < 3 {
            self.at(
                self.now + ATTEMPT_WINDOW,
                Ev::Send {
                    msg,
                    attempt: attempt + 1,
                },
            );
        }
        // A new signature per attempt, or (sometimes) the first attempt's again.
        let reuse = attempt > 1 && self.rand(5) == 0;
        let query = match self.msgs[msg].queries.first() {
            Some(first) if reuse => first.clone(),
            _ => {
                format!("{}:sig{}:{}", self.now, self.rng.next_u32(), attempt)
            }
        };
        let alive = self.alive();
        if !alive.is_empty() {
            self.msgs[msg].queries.push(query.clone());
        }
        if alive.is_empty() {
            self.note(format!(
                "{} attempt {attempt}: no instance alive",
                self.msgs[msg].key
            ));
            if attempt == 3 {
                self.msgs[msg]
                    .excuses
                    .push("its last attempt found no instance alive".into());
            }
            return Ok(());
        }
        let inst = match self.routes.get(&(msg, attempt)) {
            Some(i) if self.instances[*i].alive => *i,
            _ => alive[self.rand(alive.len() as u64) as usize],
        };
        let req = Req {
            msg,
            attempt,
            sent: self.now,
            forged: false,
            handshake: false,
        };
        let body = format!("body of {}", self.msgs[msg].key);
        let work = self.work(msg);
        self.start(inst, req, &query, Sim::digest(&body), work)
    }

    /// The attacker replays a captured query of `msg` with another body.
    fn forge(&mut self, msg: usize, same_key: bool) -> Result<(), Failure> {
        let Some(query) = self.msgs[msg].queries.first().cloned() else {
            return Ok(());
        };
        let alive = self.alive();
        if alive.is_empty() {
            return Ok(());
        }
        let inst = alive[self.rand(alive.len() as u64) as usize];
        let m = &self.msgs[msg];
        let target = if same_key {
            msg
        } else {
            let (a, f) = (m.account, m.follower);
            let id = 500 + self.next_msgid;
            self.next_msgid += 1;
            let target = self.new_msg(a, f, id, Kind::Known);
            self.msgs[target].silent = true; // not WeChat's: nothing to deliver
            target
        };
        let req = Req {
            msg: target,
            attempt: 0,
            sent: self.now,
            forged: true,
            handshake: false,
        };
        let forged = Answer {
            reply: Some(Arc::new(Reply::Text("forged".into()))),
            rule: Arc::from("rule"),
            via: Via::Rule,
        };
        self.note(format!(
            "forgery of {} to instance {inst}",
            self.msgs[target].key
        ));
        self.start(
            inst,
            req,
            &query,
            Sim::digest("forged body"),
            Work::Known(forged),
        )
    }

    /// A handshake, whose query the attacker then tries as a POST.
    fn handshake(&mut self, account: usize) -> Result<(), Failure> {
        let alive = self.alive();
        if alive.is_empty() {
            return Ok(());
        }
        let inst = alive[self.rand(alive.len() as u64) as usize];
        let query = format!("{}:hs{}:h", self.now, self.rng.next_u32());
        let msg = self.new_msg(account, 0, 900 + self.next_msgid, Kind::Known);
        self.next_msgid += 1;
        self.msgs[msg].silent = true; // not a message: nothing to deliver
        self.msgs[msg].queries.push(query.clone());
        let req = Req {
            msg,
            attempt: 0,
            sent: self.now,
            forged: false,
            handshake: true,
        };
        self.start(inst, req, &query, Sim::digest("GET"), Work::Handshake)?;
        let delay = 1 + self.rand(10_000);
        self.at(
            self.now + delay,
            Ev::Forge {
                msg,
                same_key: false,
            },
        );
        Ok(())
    }

    /// Start an attempt machine on an instance.
    fn start(
        &mut self,
        inst: usize,
        req: Req,
        query: &str,
        digest: [u8; 16],
        work: Work,
    ) -> Result<(), Failure> {
        let skew = self.rand(40);
        let holder = self.rng.next_u64() | 1;
        let m = &self.msgs[req.msg];
        let account = ACCOUNTS[m.account];
        let params = AttemptParams {
            key: m.key.clone(),
            binding: Arc::from(format!("q/{account}/{query}")),
            digest,
            list: Arc::from(format!("w/{account}/{}", FOLLOWERS[m.follower])),
            holder,
            work,
            late: self.late(m.account),
            started: self.now,
            respond_by: self.now + BUDGET,
            retention: RETENTION,
            shared: self.shared.is_some(),
            // The driver's estimate of the store's clock: off by a little.
            store_now: (self.now + skew).saturating_sub(20),
        };
        self.note(format!(
            "{} attempt {} (forged {}, handshake {}) to instance {inst}",
            m.key, req.attempt, req.forged, req.handshake
        ));
        let (machine, action) = Attempt::new(params, self.now);
        let task = self.next_task;
        self.next_task += 1;
        self.instances[inst]
            .tasks
            .insert(task, Machine::Attempt(Box::new(machine), req));
        self.act(inst, task, action)
    }

    /// Feed an event to a task's machine and carry out its actions.
    fn step(&mut self, inst: usize, task: u64, event: Event) -> Result<(), Failure> {
        let now = self.now;
        let action = match self.instances[inst].tasks.get_mut(&task) {
            Some(Machine::Attempt(m, _)) => m.step(event, now),
            Some(Machine::Worker(w, _)) => w.step(event, now),
            None => return Ok(()),
        };
        self.act(inst, task, action)
    }

    /// Whether a task is a genuine request (not the attacker's).
    fn genuine(&self, inst: usize, task: u64) -> bool {
        matches!(self.instances[inst].tasks.get(&task), Some(Machine::Attempt(_, req)) if !req.forged)
    }

    fn msg_of_task(&self, inst: usize, task: u64) -> Option<usize> {
        match self.instances[inst].tasks.get(&task)? {
            Machine::Attempt(_, req) => Some(req.msg),
            Machine::Worker(_, msg) => Some(*msg),
        }
    }

    /// Carry out one action (local ones at once, until one must wait).
    fn act(&mut self, inst: usize, task: u64, mut action: Action) -> Result<(), Failure> {
        loop {
            let inc = self.instances[inst].incarnation;
            if self.trace.is_some() {
                let line = format!("  {inst}/{task} {}", summary(&action));
                self.note(line);
            }
            let event = match action {
                Action::Respond(verdict) => return self.respond(inst, task, verdict),
                Action::Done => {
                    self.instances[inst].tasks.remove(&task);
                    return Ok(());
                }
                Action::Open {
                    level: Level::Local,
                    ref binding,
                    digest,
                    ref key,
                    ref record,
                    ttl,
                } => {
                    self.mark_degraded(inst, task);
                    let opened = self.instances[inst].local.open(
                        binding,
                        &digest,
                        key.as_deref(),
                        record,
                        ttl,
                        self.now,
                    );
                    if let (Opened::Created { .. }, Some(k), true) =
                        (&opened, key, self.shared.is_none())
                    {
                        let (k, r) = (k.clone(), record.clone());
                        self.note_write(&k, &r, true);
                    }
                    if opened != Opened::Reused {
                        if self.genuine(inst, task) {
                            self.bound.insert((Some(inst), binding.clone()));
                        } else {
                            // A forgery got its query bound (no store knew it).
                            self.forged_tentative.insert(binding.clone());
                        }
                        if self.shared.is_some() {
                            let genuine = self.genuine(inst, task);
                            self.instances[inst]
                                .unsynced
                                .push((binding.clone(), digest, genuine));
                        }
                    }
                    self.notify(Some(inst), Level::Local, key.as_deref());
                    Event::Opened(Ok(opened))
                }
                Action::Load {
                    level: Level::Local,
                    ref key,
                } => Event::Loaded(Ok(self.instances[inst].local.load(key, self.now))),
                Action::Swap {
                    level: Level::Local,
                    ref key,
                    expected,
                    ref record,
                    ttl,
                } => {
                    let swapped = self.instances[inst].local.swap(
                        key,
                        expected,
                        record.clone(),
                        ttl,
                        self.now,
                    );
                    if matches!(swapped, wechat_fcgi::protocol::Swapped::Done { .. }) {
                        let decides = self.shared.is_none();
                        self.note_write(key, record, decides);
                    }
                    self.notify(Some(inst), Level::Local, Some(key));
                    Event::Swapped(Ok(swapped))
                }
                Action::Put {
                    ref key,
                    ref record,
                    ttl,
                    ..
                } => {
                    self.instances[inst]
                        .local
                        .put(key, record.clone(), ttl, self.now);
                    self.notify(Some(inst), Level::Local, Some(key));
                    Event::Put
                }
                Action::Open {
                    level: Level::Shared,
                    ref binding,
                    digest,
                    ..
                } => {
                    // As the driver: a query this process saw with another body is
                    // refused at once; the binding the shared store accepts is kept
                    // locally too.
                    if self.instances[inst].local.bound(binding, &digest, self.now) == Some(false) {
                        Event::Opened(Ok(Opened::Reused))
                    } else {
                        self.opening.insert((inst, task), (binding.clone(), digest));
                        return self.remote(inst, inc, task, action);
                    }
                }
                Action::Load {
                    level: Level::Shared,
                    ..
                }
                | Action::Swap {
                    level: Level::Shared,
                    ..
                } => return self.remote(inst, inc, task, action),
                Action::Wait {
                    level,
                    key,
                    seen,
                    until,
                } => {
                    self.instances[inst]
                        .waiters
                        .insert(task, (level, key.clone(), seen));
                    let current = match level {
                        Level::Local => self.instances[inst].local.rev(&key, self.now),
                        Level::Shared => match (&self.shared, self.down) {
                            (Some(s), false) => s.rev(&key, self.now),
                            _ => None,
                        },
                    };
                    let changed = current != seen || (level == Level::Shared && self.down);
                    let at = if changed { self.now } else { until };
                    self.at(at, Ev::Wake { inst, inc, task });
                    return Ok(());
                }
                Action::Spawn(spawn) => self.spawn(inst, spawn),
                Action::Push { .. } => {
                    let Some(msg) = self.msg_of_task(inst, task) else {
                        return Ok(());
                    };
                    self.instances[inst].pushes.insert(task, msg);
                    let ok = self.rand(100) < self.push_ok as u64;
                    let latency = 50 + self.rand(3_000);
                    self.at(
                        self.now + latency,
                        Ev::PushDone {
                            inst,
                            inc,
                            task,
                            ok,
                        },
                    );
                    return Ok(());
                }
            };
            let now = self.now;
            action = match self.instances[inst].tasks.get_mut(&task) {
                Some(Machine::Attempt(m, _)) => m.step(event, now),
                Some(Machine::Worker(w, _)) => w.step(event, now),
                None => return Ok(()),
            };
        }
    }

    /// A shared-store operation: applied a moment later (it may fail: an outage), its
    /// outcome back a moment after that.
    fn remote(&mut self, inst: usize, inc: u32, task: u64, op: Action) -> Result<(), Failure> {
        let latency = self.rand(8);
        self.at(
            self.now + latency,
            Ev::Apply {
                inst,
                inc,
                task,
                op,
            },
        );
        Ok(())
    }

    fn apply_shared(&mut self, op: Action, genuine: bool) -> Event {
        let failed = || StoreError("store down".into());
        let down = self.down;
        let now = self.now;
        let Some(shared) = &self.shared else {
            return Event::Loaded(Err(failed()));
        };
        match op {
            Action::Open {
                binding,
                digest,
                key,
                record,
                ttl,
                ..
            } => {
                if down {
                    return Event::Opened(Err(failed()));
                }
                let opened = shared.open(&binding, &digest, key.as_deref(), &record, ttl, now);
                if let (Opened::Created { .. }, Some(k)) = (&opened, &key) {
                    self.note_write(k, &record, true);
                }
                if opened != Opened::Reused {
                    if genuine {
                        self.bound.insert((None, binding.clone()));
                    } else {
                        self.forged_tentative.insert(binding.clone());
                    }
                }
                self.notify(None, Level::Shared, key.as_deref());
                Event::Opened(Ok(opened))
            }
            Action::Load { key, .. } => {
                if down {
                    return Event::Loaded(Err(failed()));
                }
                Event::Loaded(Ok(shared.load(&key, now)))
            }
            Action::Swap {
                key,
                expected,
                record,
                ttl,
                ..
            } => {
                if down {
                    return Event::Swapped(Err(failed()));
                }
                let swapped = shared.swap(&key, expected, record.clone(), ttl, now);
                if matches!(swapped, wechat_fcgi::protocol::Swapped::Done { .. }) {
                    self.note_write(&key, &record, true);
                }
                self.notify(None, Level::Shared, Some(&key));
                Event::Swapped(Ok(swapped))
            }
            _ => Event::Loaded(Err(failed())),
        }
    }

    /// As the driver before an open in the shared store: the bindings this instance
    /// made during an outage go there first (each only where it holds none).
    fn resync(&mut self, inst: usize) {
        if self.down || self.shared.is_none() {
            return;
        }
        let now = self.now;
        let unsynced = std::mem::take(&mut self.instances[inst].unsynced);
        let unlisted = std::mem::take(&mut self.instances[inst].unlisted);
        let given = std::mem::take(&mut self.instances[inst].given);
        if !unlisted.is_empty() || !given.is_empty() {
            self.note(format!(
                "instance {inst} reports its outage: listed {unlisted:?}, given {given:?}"
            ));
        }
        let Some(shared) = &self.shared else { return };
        for (binding, digest, genuine) in unsynced {
            let record = Record::Binding(digest);
            let opened = shared.open(&binding, &digest, None, &record, RETENTION, now);
            if opened != Opened::Reused && genuine {
                self.bound.insert((None, binding));
            }
        }
        for (list, key) in unlisted {
            let loaded = shared.load(&list, now);
            let mut waiting = loaded
                .record
                .as_ref()
                .and_then(Record::waiting)
                .cloned()
                .unwrap_or_default();
            if !waiting.keys.contains(&key) {
                waiting.keys.push(key);
                let record = Record::Waiting(waiting);
                let _ = shared.swap(&list, loaded.rev, record, self.pickup_ttl, now);
            }
        }
        for msg in given {
            let key = self.msgs[msg].key.clone();
            let loaded = shared.load(&key, now);
            if let Some(Record::Message(m)) = &loaded.record {
                if let Some(next) = wechat_fcgi::protocol::given_in_outage(m) {
                    let ttl = wechat_fcgi::protocol::ttl_of(&next, now, RETENTION, None);
                    let _ = shared.swap(&key, loaded.rev, Record::Message(next), ttl, now);
                }
            }
            self.msgs[msg].unreconciled = self.msgs[msg].unreconciled.saturating_sub(1);
        }
    }

    /// Count the takeovers the writes show; note when a message went late.
    fn note_write(&mut self, key: &str, record: &Record, decides: bool) {
        if let (true, Some(&msg)) = (decides, self.keys.get(key)) {
            self.msgs[msg].last = Some(record.clone());
            self.msgs[msg].memory_lost = false;
        }
        if let (Record::Message(m), Some(&msg)) = (record, self.keys.get(key)) {
            if m.late != wechat_fcgi::protocol::Late::No && self.msgs[msg].late_since.is_none() {
                self.msgs[msg].late_since = Some(self.now);
            }
            if m.answer().is_some_and(|a| a.reply.is_none()) && self.msgs[msg].kind == Kind::Run {
                self.msgs[msg].silent = true; // the program answered `success`
            }
        }
        if let Record::Message(m) = record {
            if let wechat_fcgi::protocol::State::Leased { runs, .. } = m.state {
                if runs > 1 {
                    self.stats.takeovers += 1;
                }
            }
        }
    }

    /// Wake the waiters of a key that was just written.
    fn notify(&mut self, inst: Option<usize>, level: Level, key: Option<&str>) {
        let Some(key) = key else {
            return;
        };
        let targets: Vec<usize> = match inst {
            Some(i) => vec![i],
            None => (0..self.instances.len()).collect(),
        };
        for i in targets {
            let inc = self.instances[i].incarnation;
            let wake: Vec<u64> = self.instances[i]
                .waiters
                .iter()
                .filter(|(_, (l, k, _))| *l == level && &**k == key)
                .map(|(t, _)| *t)
                .collect();
            for task in wake {
                // Polling (shared) finds it within 10 ms; memory wakes at once.
                let delay = if level == Level::Shared {
                    self.rand(11)
                } else {
                    0
                };
                self.at(self.now + delay, Ev::Wake { inst: i, inc, task });
            }
        }
    }

    fn mark_degraded(&mut self, inst: usize, task: u64) {
        if self.shared.is_none() {
            return;
        }
        if let Some(msg) = self.msg_of_task(inst, task) {
            self.stats.degraded += 1;
            let excuse = "handled without the shared store (an outage)".to_owned();
            if !self.msgs[msg].excuses.contains(&excuse) {
                self.msgs[msg].excuses.push(excuse);
            }
        }
    }

    fn spawn(&mut self, inst: usize, spawn: wechat_fcgi::protocol::Spawn) -> Event {
        let Some(&msg) = self.keys.get(&spawn.key) else {
            return Event::SpawnRefused;
        };
        let follower = self.msgs[msg].follower;
        let running = self.instances[inst].per_sender.entry(follower).or_insert(0);
        if *running >= self.per_sender_max {
            return Event::SpawnRefused;
        }
        *running += 1;
        let run = self.next_run;
        self.next_run += 1;
        let inc = self.instances[inst].incarnation;
        if spawn.level == Level::Shared || self.shared.is_none() {
            self.msgs[msg].starts += 1;
        } else {
            let fresh = self.msgs[msg].degraded_starts.insert((inst, inc));
            if !fresh {
                // Checked in check_always through this marker.
                self.msgs[msg]
                    .excuses
                    .push("!ran twice in one process without the shared store".into());
            }
        }
        if spawn.level == Level::Shared {
            // Once per lease: no other run of the message is in progress anywhere.
            let overlapping = self.instances.iter().any(|i| {
                i.alive
                    && i.runs
                        .values()
                        .any(|(m, _, l, _)| *m == msg && *l == Level::Shared)
            });
            if overlapping {
                self.msgs[msg]
                    .excuses
                    .push("!its program started while another run of it was in progress".into());
            }
        }
        self.instances[inst]
            .runs
            .insert(run, (msg, follower, spawn.level, spawn.holder));
        let scripted = self.durations.get(&msg).copied();
        let duration = scripted.unwrap_or_else(|| self.rand(30_000));
        let m = &self.msgs[msg];
        let fails = scripted.is_none() && self.rng.next_u32() % 10 == 0;
        let silent = scripted.is_none() && self.rng.next_u32() % 15 == 0;
        let answer = if duration >= PROGRAM_TIMEOUT || fails {
            Answer {
                reply: spawn.job.fallback.clone(),
                rule: Arc::from("bot"),
                via: Via::Fallback,
            }
        } else if silent {
            Answer {
                reply: None,
                rule: Arc::from("bot"),
                via: Via::Program,
            }
        } else {
            Answer {
                reply: Some(Sim::tag("program", m, run)),
                rule: Arc::from("bot"),
                via: Via::Program,
            }
        };
        self.note(format!(
            "instance {inst} runs {} (run {run}, {duration} ms)",
            m.key
        ));
        let ends = self.now + duration.min(PROGRAM_TIMEOUT);
        self.at(
            ends,
            Ev::ProgramDone {
                inst,
                inc,
                run,
                answer,
            },
        );
        Event::Spawned
    }

    fn program_done(
        &mut self,
        inst: usize,
        inc: u32,
        run: u64,
        answer: Answer,
    ) -> Result<(), Failure> {
        if !self.live(inst, inc) {
            return Ok(());
        }
        let Some((msg, follower, level, holder)) = self.instances[inst].runs.remove(&run) else {
            return Ok(());
        };
        if let Some(n) = self.instances[inst].per_sender.get_mut(&follower) {
            *n -= 1;
        }
        let m = &self.msgs[msg];
        let account = m.account;
        let params = WorkerParams {
            level,
            key: m.key.clone(),
            list: Arc::from(format!("w/{}/{}", ACCOUNTS[account], FOLLOWERS[follower])),
            holder,
            answer,
            follower: Arc::from(FOLLOWERS[follower]),
            mirror: level == Level::Shared,
            late: self.late(account),
            push: self.modes[account] == LateMode::CustomerService,
            retention: RETENTION,
        };
        let (worker, action) = Worker::new(params, self.now);
        let task = self.next_task;
        self.next_task += 1;
        self.instances[inst]
            .tasks
            .insert(task, Machine::Worker(Box::new(worker), msg));
        self.act(inst, task, action)
    }

    /// A response reaches WeChat (or the attacker).
    fn respond(&mut self, inst: usize, task: u64, verdict: Final) -> Result<(), Failure> {
        let Some(Machine::Attempt(machine, req)) = self.instances[inst].tasks.remove(&task) else {
            return Ok(());
        };
        if machine.level() == Level::Local && self.shared.is_some() {
            self.mark_degraded_msg(req.msg);
        }
        self.note(format!(
            "instance {inst} answers {} attempt {}: {verdict:?}",
            self.msgs[req.msg].key, req.attempt
        ));
        if req.handshake {
            return Ok(());
        }
        if req.forged {
            let degraded = machine.level() == Level::Local && self.shared.is_some();
            let binding = machine.binding().clone();
            let at = if degraded || self.shared.is_none() {
                Some(inst)
            } else {
                None
            };
            let seen = self.bound.contains(&(at, binding.clone()));
            return match verdict {
                Final::QueryReused => {
                    self.stats.forged_refused += 1;
                    Ok(())
                }
                // A query no store (in an outage: this process) ever bound cannot be
                // told from a new one: the forged answer is the message's now.
                _ if !seen => {
                    self.msgs[req.msg].forged_first = true;
                    self.forged_tentative.insert(binding);
                    Ok(())
                }
                other => Err(format!(
                    "a forged body was answered ({other:?}) for {}",
                    self.msgs[req.msg].key
                )),
            };
        }
        if verdict == Final::QueryReused && self.forged_tentative.contains(machine.binding()) {
            // In an outage a process accepted a forgery of this query first (it could
            // not know): the genuine body is refused (fails closed).
            self.msgs[req.msg]
                .excuses
                .push("refused after a forgery of its query was accepted in an outage".into());
            return Ok(());
        }
        if verdict == Final::QueryReused {
            return Err(format!(
                "WeChat's own attempt {} of {} was refused as a reused query",
                req.attempt, self.msgs[req.msg].key
            ));
        }
        if let Some(unlisted) = machine.unlisted() {
            self.instances[inst].unlisted.push(unlisted);
        }

        let degraded_answer = machine.level() == Level::Local
            && self.shared.is_some()
            && self.msgs[req.msg].kind == Kind::Run
            && matches!(verdict, Final::Answer { .. });
        if degraded_answer {
            // As the driver: the shared store is told once it is back, whether WeChat
            // heard this answer or not.
            self.instances[inst].given.push(req.msg);
            self.msgs[req.msg].unreconciled += 1;
        }
        let m = &self.msgs[req.msg];
        if m.accepted || self.now >= req.sent + ATTEMPT_WINDOW {
            return Ok(()); // WeChat dropped the connection when it sent the next attempt
        }
        self.msgs[req.msg].accepted = true;
        let shown = match &verdict {
            Final::Answer { answer, .. } if answer.reply.is_some() => "answer",
            Final::Pending { .. } => "pending",
            _ => "success",
        };
        self.msgs[req.msg].shown = Some((req.attempt, shown));
        match verdict {
            Final::Answer { answer, .. } => match answer.reply.as_deref() {
                Some(Reply::Text(text)) if text == "still" => {}
                Some(Reply::Text(text)) => {
                    let how = if answer.via == Via::Pickup {
                        "pickup"
                    } else {
                        "inline"
                    };
                    self.deliver(req.msg, text.clone(), how)?;
                }
                _ => {
                    if self.msgs[req.msg].kind != Kind::Pickup {
                        self.msgs[req.msg].silent = true;
                    }
                }
            },
            Final::Pending { .. } => self.stats.pending_replies += 1,
            Final::Success { via, .. } => {
                if via == Via::Deadline && self.modes[self.msgs[req.msg].account] == LateMode::Off {
                    self.msgs[req.msg]
                        .excuses
                        .push("off: success at the budget".into());
                }
            }
            Final::Handshake | Final::QueryReused => {}
        }
        Ok(())
    }

    fn mark_degraded_msg(&mut self, msg: usize) {
        let excuse = "handled without the shared store (an outage)".to_owned();
        if !self.msgs[msg].excuses.contains(&excuse) {
            self.msgs[msg].excuses.push(excuse);
        }
    }

    /// The follower received `text` on message `to` (inline or by a pick-up).
    fn deliver(&mut self, to: usize, text: String, how: &str) -> Result<(), Failure> {
        let parts: Vec<&str> = text.split('|').collect();
        if text == "forged" {
            if self.msgs[to].forged_first {
                // Its genuine query never reached a store before the forgery (an
                // outage hid it): nothing could tell them apart.
                self.msgs[to].excuses.push("a forgery came first".into());
                return Ok(());
            }
            return Err(format!(
                "a forged answer reached the follower on {}",
                self.msgs[to].key
            ));
        }
        let [kind, account, follower, msgid, _run] = parts[..] else {
            return Err(format!(
                "an unknown answer {text:?} on {}",
                self.msgs[to].key
            ));
        };
        let target = &self.msgs[to];
        if account != ACCOUNTS[target.account] || follower != FOLLOWERS[target.follower] {
            return Err(format!(
                "{text:?} (another follower's or account's answer) delivered on {}",
                target.key
            ));
        }
        let of = self
            .msgs
            .iter()
            .position(|m| {
                ACCOUNTS[m.account] == account
                    && FOLLOWERS[m.follower] == follower
                    && m.msgid.to_string() == msgid
            })
            .ok_or_else(|| format!("{text:?} names no message"))?;
        if kind == "rule" && of != to {
            return Err(format!(
                "{text:?}: another message's rule answer on {}",
                target.key
            ));
        }
        if !self.msgs[of].deliveries.is_empty() && self.msgs[of].unreconciled > 0 {
            // Given in an outage by a process that has not spoken to the store since:
            // another process gave it again meanwhile.
            self.msgs[of]
                .excuses
                .push("given again before its outage answer was reported to the store".into());
            return Ok(());
        }
        self.note(format!("DELIVERED {text} on {} ({how})", target.key));
        match how {
            "pickup" => self.stats.pickups += 1,
            "push" => self.stats.pushes += 1,
            _ => self.stats.passive += 1,
        }
        self.stats.delivered += 1;
        self.msgs[of]
            .deliveries
            .push(format!("{text} ({how} at {})", self.now));
        Ok(())
    }

    fn deliver_push(&mut self, msg: usize) -> Result<(), Failure> {
        // The pushed answer is the stored one.
        let key = self.msgs[msg].key.clone();
        let stored = self
            .shared
            .as_ref()
            .map(|s| s.load(&key, self.now))
            .and_then(|l| l.record)
            .or_else(|| {
                self.instances
                    .iter()
                    .find_map(|i| i.local.load(&key, self.now).record)
            });
        let text = match stored {
            Some(Record::Message(m)) => match m.answer().and_then(|a| a.reply.as_deref()) {
                Some(Reply::Text(t)) => t.clone(),
                _ => return Ok(()),
            },
            _ => return Ok(()),
        };
        self.deliver(msg, text, "push")
    }

    /// An outcome lost with its instance.
    fn lost_reply(&mut self, _event: &Event) {}

    fn crash(&mut self, inst: usize) {
        if !self.instances[inst].alive {
            return;
        }
        self.stats.crashes += 1;
        self.note(format!("instance {inst} crashes"));
        let cut_last: Vec<usize> = self.instances[inst]
            .tasks
            .values()
            .filter_map(|m| match m {
                Machine::Attempt(_, req) if req.attempt == 3 && !req.forged => Some(req.msg),
                _ => None,
            })
            .collect();
        for msg in cut_last {
            if !self.marked_late(inst, msg) {
                self.msgs[msg].excuses.push(
                    "its last attempt was cut by a crash before it could wait for a pick-up".into(),
                );
            }
        }
        // Its memory is gone: what it bound too, and (memory only) the records.
        self.bound.retain(|(w, _)| *w != Some(inst));
        if self.shared.is_none() {
            for m in &mut self.msgs {
                if m.last.is_some() {
                    m.memory_lost = true;
                }
            }
        }
        let i = &mut self.instances[inst];
        // Runs in progress, and finished runs whose answer was not stored yet.
        let mut runs: Vec<usize> = i.runs.values().map(|(m, _, _, _)| *m).collect();
        runs.extend(i.tasks.values().filter_map(|t| match t {
            Machine::Worker(_, msg) => Some(*msg),
            Machine::Attempt(..) => None,
        }));
        let pushes: Vec<usize> = i.pushes.values().copied().collect();
        *i = Instance {
            alive: false,
            incarnation: i.incarnation,
            ..Instance::new()
        };
        for msg in runs {
            self.msgs[msg].lost_runs += 1;
        }
        for msg in pushes {
            self.msgs[msg]
                .excuses
                .push("a push cut off by a crash".into());
        }
        let back = 100 + self.rand(5_000);
        self.at(self.now + back, Ev::Restart { inst });
    }

    /// Whether the message's record is marked late and listed (a pick-up can find
    /// and deliver it).
    fn marked_late(&self, inst: usize, msg: usize) -> bool {
        let m = &self.msgs[msg];
        let list = format!("w/{}/{}", ACCOUNTS[m.account], FOLLOWERS[m.follower]);
        let store = match (&self.shared, self.down) {
            (Some(s), false) => s,
            _ => &self.instances[inst].local,
        };
        let marked = store
            .load(&m.key, self.now)
            .record
            .as_ref()
            .and_then(Record::message)
            .is_some_and(|r| r.late != wechat_fcgi::protocol::Late::No);
        let listed = store
            .load(&list, self.now)
            .record
            .as_ref()
            .and_then(Record::waiting)
            .is_some_and(|w| w.keys.contains(&m.key));
        marked && listed
    }

    /// The invariants that hold after every step.
    fn check_always(&self) -> Result<(), Failure> {
        for m in &self.msgs {
            if m.deliveries.len() > 1 {
                return Err(format!(
                    "{} was delivered {} times: {:?}",
                    m.key,
                    m.deliveries.len(),
                    m.deliveries
                ));
            }
            if m.starts > 1 + m.lost_runs + m.degraded_requests {
                return Err(format!(
                    "{}'s program started {} times with the shared store's lease; {} runs lost                      (crashes, outages), {} requests cut off from the store",
                    m.key, m.starts, m.lost_runs, m.degraded_requests
                ));
            }
            if let Some(e) = m.excuses.iter().find(|e| e.starts_with('!')) {
                return Err(format!("{}: {}", m.key, &e[1..]));
            }
        }
        Ok(())
    }

    /// The end: every message's answer reached its follower exactly once, unless it
    /// was dropped on purpose (`off`, `pickup_ttl`), an outage excuses it, or a crash
    /// cut its delivery after it was committed (the record says so).
    fn check_end(&mut self) -> Result<(), Failure> {
        use wechat_fcgi::protocol::{Delivery, Late, State};
        self.check_always()?;
        let mut excused = 0;
        for i in 0..self.msgs.len() {
            let m = &self.msgs[i];
            if m.deliveries.len() == 1 || m.silent || m.kind == Kind::Pickup {
                continue;
            }
            if !m.excuses.is_empty() {
                excused += 1;
                let why = m.excuses[0].split(" at ").next().unwrap_or("").to_owned();
                *self.stats.reasons.entry(why).or_default() += 1;
                continue;
            }
            let record = m.last.clone();
            let message = record.as_ref().and_then(Record::message);
            let crashed = self.stats.crashes > 0;
            // Late, and kept less than the quiescent pick-ups took to reach it (one
            // waiting answer each, every 5 s).
            let expired = self.msgs[i]
                .late_since
                .is_some_and(|t| t + self.pickup_ttl <= QUIESCE + 60_000);
            let memory_lost = self.msgs[i].memory_lost;
            let forged_first = self.msgs[i].forged_first;
            let (why, excuse) = match message {
                _ if forged_first => (None, "a forgery came first"),
                _ if memory_lost => (None, "its record went with a crashed process's memory"),
                Some(m) if expired && m.late != Late::No => (None, "it waited past pickup_ttl"),
                Some(m) => match (&m.state, &m.late) {
                    (State::Answered(a), _) if a.reply.is_none() => (None, "its answer is success"),
                    (
                        _,
                        Late::Delivered(
                            Delivery::Passive | Delivery::Pickup(_) | Delivery::Unknown,
                        ),
                    ) if crashed => (None, "delivered, then the response was cut by a crash"),
                    _ => (Some(format!("its record ends as {m:?}")), ""),
                },
                None => (Some("it never had a record".to_owned()), ""),
            };
            match why {
                None => {
                    excused += 1;
                    *self.stats.reasons.entry(excuse.to_owned()).or_default() += 1;
                }
                Some(why) => {
                    let m = &self.msgs[i];
                    return Err(format!(
                        "{} ({:?}, {} attempts, mode {:?}) never reached its follower: {why}",
                        m.key, m.kind, m.attempts, self.modes[m.account]
                    ));
                }
            }
        }
        self.stats.excused += excused;
        Ok(())
    }
}

impl Instance {
    fn new() -> Instance {
        Instance {
            alive: true,
            incarnation: 0,
            local: MemoryStore::new(1 << 16, 1 << 28, RETENTION),
            tasks: HashMap::new(),
            waiters: HashMap::new(),
            per_sender: HashMap::new(),
            runs: HashMap::new(),
            pushes: HashMap::new(),
            unsynced: Vec::new(),
            given: Vec::new(),
            unlisted: Vec::new(),
        }
    }
}

/// An action in a trace line.
fn summary(action: &Action) -> String {
    match action {
        Action::Open { level, key, .. } => format!("open {level:?} {key:?}"),
        Action::Load { level, key } => format!("load {level:?} {key}"),
        Action::Swap {
            level, key, record, ..
        } => format!("swap {level:?} {key} <- {record:?}"),
        Action::Put { key, .. } => format!("put local {key}"),
        Action::Wait {
            level, key, until, ..
        } => format!("wait {level:?} {key} until {until}"),
        Action::Spawn(s) => format!("spawn {}", s.key),
        Action::Push { .. } => "push".into(),
        Action::Respond(f) => format!("respond {f:?}"),
        Action::Done => "done".into(),
    }
}
