//! One request for a message: from opening its record to the answer the client gets.
//!
//! The machine keeps the record as last read (`View`) and decides from it alone what
//! to do next (`decide`): respond, write a new version (compare-and-swap), start the
//! work, or wait. A write that loses to another request's reads the record again and
//! decides anew, so every transition is written once, against whatever the record
//! holds now.

use std::sync::Arc;

use super::list::{ListEdit, Op};
use super::record::{Delivery, Job, Late, Message, Record, State};
use super::{
    derive_holder, ttl_of, Action, Digest, Event, Final, LatePolicy, Level, Loaded, Ms, Opened,
    Rev, Spawn, Swapped, Work, ATTEMPT_WINDOW, LAST_ATTEMPT_AFTER, PICKUP_LEASE, PICKUP_SCAN,
    SUCCESSOR_GRACE, WECHAT_ATTEMPTS,
};
use crate::core::late::LateMode;
use crate::core::{Answer, Via};

/// What one request knows when it starts.
#[derive(Debug, Clone)]
pub struct AttemptParams {
    /// The message's record key (`m/ACCOUNT/KEY`).
    pub key: Arc<str>,
    /// The signed query's key (`q/ACCOUNT/QUERY`).
    pub binding: Arc<str>,
    /// The fingerprint of the body it came with.
    pub digest: Digest,
    /// The follower's waiting list (`w/ACCOUNT/FOLLOWER`).
    pub list: Arc<str>,
    /// This request's id as a lease holder (random, unique).
    pub holder: u64,
    /// What deciding the message takes.
    pub work: Work,
    /// `[late]` for the account (`None`: late answers are off).
    pub late: Option<LatePolicy>,
    /// When the request's first byte came (local clock).
    pub started: Ms,
    /// When the answer must go out (local clock): `started` plus the reply budget.
    pub respond_by: Ms,
    /// How long answers and bindings are kept.
    pub retention: Ms,
    /// Whether there is a shared store (else everything is local).
    pub shared: bool,
    /// The shared store's clock now, as the driver last saw it (unused when local).
    pub store_now: Ms,
}

/// One request's progress through the protocol.
#[derive(Debug)]
pub struct Attempt {
    p: AttemptParams,
    level: Level,
    view: View,
    /// What the last action was, so the event is read as its answer.
    awaiting: Awaiting,
    /// Its signed query is new (a WeChat attempt, not a replay of one).
    fresh: bool,
    /// This arrival was counted in the record (once, while undecided).
    counted: bool,
    /// Whether this is WeChat's last attempt (judged on arrival), and which one the
    /// record says it is.
    last: Option<bool>,
    number: u8,
    /// This request decided the message (created its record or took it over).
    won: bool,
    /// The work (program, pick-up) was started under this request's lease.
    started_work: bool,
    /// A copy of the lease is in local memory (the record is in the shared store).
    mirrored: bool,
    /// This request marked the message late (it is WeChat's last attempt).
    marked: bool,
    /// Its late mark is on the follower's waiting list.
    listed: bool,
    /// It marked it in the shared store, then lost that store: the answer waits there
    /// (a pick-up or a push delivers it once the store is back), so this request must
    /// not give it from local memory.
    marked_shared: bool,
    /// An answer this request, holding the lease, stores for its own message; then
    /// what follows.
    own: Option<(Answer, AfterOwn)>,
    /// A pick-up found nothing: the lease its program needs.
    extend: Option<Ms>,
    /// The pick-up's items and where it is in them.
    items: Vec<Arc<str>>,
    item: usize,
    /// Derived holder ids used.
    subs: u64,
    /// The record created by `Open` (the view once it is created).
    opening: Option<Message>,
    /// Steps taken: a bound against any loop the tests did not foresee.
    steps: u32,
}

/// Most steps one attempt takes before answering whatever it has.
const MAX_STEPS: u32 = 10_000;

#[derive(Debug, Clone, Default)]
struct View {
    rev: Option<Rev>,
    msg: Option<Message>,
    /// The store's clock when read, and the local clock then.
    snow: Ms,
    at: Ms,
}

impl View {
    fn store_now(&self, now: Ms) -> Ms {
        self.snow + now.saturating_sub(self.at)
    }

    fn from_loaded(loaded: Loaded, now: Ms) -> View {
        View {
            rev: loaded.rev,
            msg: loaded.record.and_then(|r| match r {
                Record::Message(m) => Some(m),
                _ => None,
            }),
            snow: loaded.now,
            at: now,
        }
    }
}

#[derive(Debug)]
enum Awaiting {
    Open,
    Load,
    /// A write of the message's record; then `Then`.
    Write(Message, Then),
    Wait,
    Mirror,
    Spawn,
    List(ListEdit, AfterList),
    PickupList,
    Item,
    /// A write of a pick-up item; then `ItemThen`.
    ItemWrite(ItemThen),
    ItemSpawn,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Then {
    /// This arrival is counted: decide again from the new version.
    Counted,
    /// The message is this request's now (created or taken over).
    Won,
    /// Marked late: list it, then decide again.
    Marked,
    /// Respond with this request's own answer, then `AfterOwn`.
    Own,
    /// The late answer was given on this attempt: respond with it.
    Delivered,
}

#[derive(Debug, Clone)]
enum AfterOwn {
    Respond,
    /// Take the delivered item off the waiting list, then respond.
    Unlist(Arc<str>),
}

#[derive(Debug)]
enum AfterList {
    /// This request's late mark is listed now.
    Listed,
    Respond(Final),
    NextItem,
}

#[derive(Debug, Clone)]
enum ItemThen {
    Deliver(Answer),
    Spawn(Arc<Job>, u64),
    Unlist,
}

impl Attempt {
    /// A request's machine and its first action (open the message's record).
    pub fn new(p: AttemptParams, now: Ms) -> (Attempt, Action) {
        let level = if p.shared {
            Level::Shared
        } else {
            Level::Local
        };
        let mut attempt = Attempt {
            p,
            level,
            view: View::default(),
            awaiting: Awaiting::Open,
            fresh: false,
            counted: false,
            last: None,
            number: 1,
            won: false,
            started_work: false,
            mirrored: false,
            marked: false,
            listed: false,
            marked_shared: false,
            own: None,
            extend: None,
            items: Vec::new(),
            item: 0,
            subs: 0,
            opening: None,
            steps: 0,
        };
        let action = attempt.open(now);
        (attempt, action)
    }

    /// Whether this request decided its message (it archives it).
    pub fn decided(&self) -> bool {
        self.won
    }

    /// The store the request is using now (local after a shared-store failure).
    pub fn level(&self) -> Level {
        self.level
    }

    /// The signed query's key.
    pub fn binding(&self) -> &Arc<str> {
        &self.p.binding
    }

    /// The message's record key.
    pub fn key(&self) -> Arc<str> {
        self.p.key.clone()
    }

    /// When this request marked its message late in the shared store but the store
    /// failed before the follower's waiting list said so: the list and the key to add
    /// once the store is back (the driver does it, or no pick-up would find it).
    pub fn unlisted(&self) -> Option<(Arc<str>, Arc<str>)> {
        (self.marked_shared && !self.listed).then(|| (self.p.list.clone(), self.p.key.clone()))
    }

    /// The next action after `event` (the outcome of the last action), at `now`.
    pub fn step(&mut self, event: Event, now: Ms) -> Action {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return self.respond(Final::Success {
                via: Via::Deadline,
                decided: self.won,
            });
        }
        let store_failed = matches!(
            event,
            Event::Opened(Err(_)) | Event::Loaded(Err(_)) | Event::Swapped(Err(_))
        );
        if store_failed {
            if let Awaiting::List(_, AfterList::Respond(reply)) =
                std::mem::replace(&mut self.awaiting, Awaiting::Done)
            {
                // The list is an index (a stale item is skipped later): a reply
                // already decided goes out whatever the store does.
                return self.respond(reply);
            }
            return self.degrade(now);
        }
        match (std::mem::replace(&mut self.awaiting, Awaiting::Done), event) {
            (Awaiting::Open, Event::Opened(Ok(opened))) => self.opened(opened, now),
            (Awaiting::Load, Event::Loaded(Ok(loaded))) => {
                self.view = View::from_loaded(loaded, now);
                self.decide(now)
            }
            (Awaiting::Write(written, then), Event::Swapped(Ok(swapped))) => {
                self.written(written, then, swapped, now)
            }
            (Awaiting::Wait, Event::Woke) => self.load(),
            (Awaiting::Mirror, Event::Put) => self.spawn(),
            (Awaiting::Spawn, Event::Spawned) => {
                self.decide(now) // now waiting for it
            }
            (Awaiting::Spawn, Event::SpawnRefused) => {
                let Work::Run { fallback, .. } = &self.p.work else {
                    return self.decide(now);
                };
                self.own = Some((fallback.clone(), AfterOwn::Respond));
                self.decide(now)
            }
            (Awaiting::List(mut edit, after), event) => match edit.on(event) {
                Ok(Some(action)) => {
                    self.awaiting = Awaiting::List(edit, after);
                    action
                }
                Ok(None) => self.after_list(after, now),
                Err(_) => self.degrade(now),
            },
            (Awaiting::PickupList, Event::Loaded(Ok(loaded))) => {
                self.items = loaded
                    .record
                    .as_ref()
                    .and_then(Record::waiting)
                    .map(|w| w.keys.iter().take(PICKUP_SCAN).cloned().collect())
                    .unwrap_or_default();
                self.item = 0;
                self.next_item(now)
            }
            (Awaiting::Item, Event::Loaded(Ok(loaded))) => self.classify_item(loaded, now),
            (Awaiting::ItemWrite(then), Event::Swapped(Ok(swapped))) => match swapped {
                Swapped::Changed(loaded) => self.classify_item(loaded, now),
                Swapped::Done { .. } => match then {
                    ItemThen::Deliver(answer) => self.deliver(answer, now),
                    ItemThen::Spawn(job, holder) => {
                        self.awaiting = Awaiting::ItemSpawn;
                        Action::Spawn(Spawn {
                            level: self.level,
                            key: self.items[self.item].clone(),
                            holder,
                            job,
                            list: self.p.list.clone(),
                            mirror: false,
                        })
                    }
                    ItemThen::Unlist => self.unlist_item(),
                },
            },
            (Awaiting::ItemSpawn, Event::Spawned | Event::SpawnRefused) => self.still_running(now),
            (Awaiting::Done, _) => Action::Respond(Final::Success {
                via: Via::Deadline,
                decided: self.won,
            }),
            // An event that does not answer the last action: a driver bug. Read the
            // record again rather than act on it.
            (_, _) => self.load(),
        }
    }

    /// Open the message's record: bind the query, create the record unless it exists.
    fn open(&mut self, now: Ms) -> Action {
        self.awaiting = Awaiting::Open;
        let snow = match self.level {
            Level::Shared => self.p.store_now,
            Level::Local => now,
        };
        let (key, record) = match &self.p.work {
            Work::Handshake => (None, Record::Binding(self.p.digest)),
            _ => {
                let message = self.new_message(snow);
                self.opening = Some(message.clone());
                (Some(self.p.key.clone()), Record::Message(message))
            }
        };
        let ttl = match &record {
            Record::Message(m) => ttl_of(m, snow, self.p.retention, self.p.late.as_ref()),
            _ => self.p.retention,
        };
        Action::Open {
            level: self.level,
            binding: self.p.binding.clone(),
            digest: self.p.digest,
            key,
            record,
            ttl,
        }
    }

    /// A new message's record: a known answer, or this request's lease.
    fn new_message(&self, snow: Ms) -> Message {
        let state = match &self.p.work {
            Work::Known(answer) => State::Answered(answer.clone()),
            work => State::Leased {
                holder: self.p.holder,
                until: snow + lease_of(work),
                runs: 1,
            },
        };
        Message {
            first: snow,
            attempts: 1,
            state,
            late: Late::No,
            job: None,
        }
    }

    fn opened(&mut self, opened: Opened, now: Ms) -> Action {
        match opened {
            Opened::Reused => self.respond(Final::QueryReused),
            _ if matches!(self.p.work, Work::Handshake) => self.respond(Final::Handshake),
            Opened::Created { rev, now: snow } => {
                self.view = View {
                    rev: Some(rev),
                    msg: self.opening.take(),
                    snow,
                    at: now,
                };
                self.won(now)
            }
            Opened::Found { loaded, fresh } => {
                self.fresh = fresh;
                self.view = View::from_loaded(loaded, now);
                self.decide(now)
            }
        }
    }

    /// The shared store failed: go on in this process's memory.
    fn degrade(&mut self, now: Ms) -> Action {
        if self.level == Level::Local {
            // Local memory does not fail; if it ever did, answer rather than loop.
            return self.respond(Final::Success {
                via: Via::Deadline,
                decided: self.won,
            });
        }
        if let Some((answer, AfterOwn::Unlist(_))) = self.own.take() {
            // A pick-up that took a waiting answer (marked it delivered by this
            // message) gives it, store or not: nobody else will.
            return self.respond(Final::Answer {
                answer,
                decided: true,
            });
        }
        if self.marked {
            // This is WeChat's last attempt and it marked the message late in the
            // shared store: the answer waits there (a pick-up, a push, or a new run
            // once the store is back delivers it). Nothing local may give it.
            self.marked_shared = true;
            return self.late_reply();
        }
        if self
            .view
            .msg
            .as_ref()
            .is_some_and(|m| m.late != Late::No && m.late != Late::Delivered(Delivery::Passive))
        {
            // Another request marked it late there: the same holds.
            return self.respond(Final::Success {
                via: Via::LateDone,
                decided: self.won,
            });
        }
        self.level = Level::Local;
        self.view = View::default();
        self.counted = false;
        self.own = None;
        self.extend = None;
        self.items.clear();
        // A program started under the shared lease has its lease copied to local
        // memory (`mirrored`): the local record says it runs, and its answer lands
        // there too. Anything else starts over locally.
        if !self.mirrored {
            self.started_work = false;
        }
        if let Work::Pickup { .. } = self.p.work {
            self.started_work = false;
        }
        self.open(now)
    }

    fn load(&mut self) -> Action {
        self.awaiting = Awaiting::Load;
        Action::Load {
            level: self.level,
            key: self.p.key.clone(),
        }
    }

    fn respond(&mut self, reply: Final) -> Action {
        self.awaiting = Awaiting::Done;
        Action::Respond(reply)
    }

    /// Write `message` over the version read; then `then`.
    fn write(&mut self, message: Message, then: Then, now: Ms) -> Action {
        let snow = self.view.store_now(now);
        let ttl = ttl_of(&message, snow, self.p.retention, self.p.late.as_ref());
        self.awaiting = Awaiting::Write(message.clone(), then);
        Action::Swap {
            level: self.level,
            key: self.p.key.clone(),
            expected: self.view.rev,
            record: Record::Message(message),
            ttl,
        }
    }

    fn written(&mut self, written: Message, then: Then, swapped: Swapped, now: Ms) -> Action {
        let (rev, snow) = match swapped {
            Swapped::Changed(loaded) => {
                // Another request wrote first: decide again from what it wrote.
                self.view = View::from_loaded(loaded, now);
                return self.decide(now);
            }
            Swapped::Done { rev, now: snow } => (rev, snow),
        };
        self.view = View {
            rev: Some(rev),
            msg: Some(written),
            snow,
            at: now,
        };
        match then {
            Then::Counted => {
                self.counted = true;
                self.decide(now)
            }
            Then::Won => self.won(now),
            Then::Marked => {
                self.marked = true;
                let ttl = self
                    .p
                    .late
                    .as_ref()
                    .map_or(self.p.retention, |l| l.pickup_ttl);
                let edit = ListEdit::new(
                    self.level,
                    self.p.list.clone(),
                    Op::Add(self.p.key.clone()),
                    ttl,
                );
                let action = edit.start();
                self.awaiting = Awaiting::List(edit, AfterList::Listed);
                action
            }
            Then::Own => {
                let Some((answer, after)) = self.own.take() else {
                    return self.decide(now);
                };
                let reply = Final::Answer {
                    answer,
                    decided: true,
                };
                match after {
                    AfterOwn::Respond => self.respond(reply),
                    AfterOwn::Unlist(item) => {
                        self.edit_list(Op::Remove(item), AfterList::Respond(reply))
                    }
                }
            }
            Then::Delivered => match self.view.msg.as_ref().and_then(Message::answer) {
                Some(answer) => {
                    let answer = if self.won {
                        answer.clone()
                    } else {
                        Answer {
                            via: Via::Retry,
                            ..answer.clone()
                        }
                    };
                    self.respond(Final::Answer {
                        answer,
                        decided: self.won,
                    })
                }
                None => self.decide(now),
            },
        }
    }

    fn edit_list(&mut self, op: Op, after: AfterList) -> Action {
        let ttl = self
            .p
            .late
            .as_ref()
            .map_or(self.p.retention, |l| l.pickup_ttl);
        let edit = ListEdit::new(self.level, self.p.list.clone(), op, ttl);
        let action = edit.start();
        self.awaiting = Awaiting::List(edit, after);
        action
    }

    fn after_list(&mut self, after: AfterList, now: Ms) -> Action {
        match after {
            AfterList::Listed => {
                self.listed = true;
                self.decide(now)
            }
            AfterList::Respond(reply) => self.respond(reply),
            AfterList::NextItem => {
                self.item += 1;
                self.next_item(now)
            }
        }
    }

    /// This request holds the message now: a known answer is given; other work starts.
    fn won(&mut self, now: Ms) -> Action {
        self.won = true;
        self.started_work = false;
        match self.view.msg.as_ref().map(|m| &m.state) {
            Some(State::Answered(answer)) => {
                let answer = answer.clone();
                self.respond(Final::Answer {
                    answer,
                    decided: true,
                })
            }
            _ => self.decide(now),
        }
    }

    /// What to do next, from the record as last read.
    fn decide(&mut self, now: Ms) -> Action {
        let snow = self.view.store_now(now);
        let Some(msg) = self.view.msg.clone() else {
            // Gone (expired, evicted) or never readable: create it anew.
            let message = self.new_message(snow);
            return self.write(message, Then::Won, now);
        };
        // Count a WeChat attempt (a new signed query) once, while the message is
        // undecided, or (hold) while an earlier attempt may still mark its late
        // answer: that attempt then knows WeChat moved on to this one. A replay of a
        // query is not counted: it cannot make the genuine attempt step aside.
        let counts = msg.is_leased() || (self.holds() && msg.late == Late::No);
        if self.fresh && !self.won && !self.counted && counts {
            let mut next = msg;
            next.attempts = next.attempts.saturating_add(1);
            return self.write(next, Then::Counted, now);
        }
        if self.last.is_none() {
            self.number = msg.attempts;
            self.last = Some(self.judge_last(&msg, snow));
        }
        match &msg.state {
            State::Answered(answer) => self.answered(&msg, answer.clone(), now),
            State::Leased {
                holder,
                until,
                runs,
            } if *holder == self.p.holder => {
                if let Some((answer, _)) = &self.own {
                    let mut next = msg.clone();
                    next.state = State::Answered(answer.clone());
                    return self.write(next, Then::Own, now);
                }
                if let Some(lease) = self.extend.take() {
                    let mut next = msg.clone();
                    next.state = State::Leased {
                        holder: self.p.holder,
                        until: snow + lease,
                        runs: *runs,
                    };
                    return self.write(next, Then::Won, now);
                }
                if !self.started_work {
                    return self.start_work(now);
                }
                self.wait_or_respond(&msg, now, snow)
            }
            State::Leased { until, runs, .. } if *until <= snow => {
                // Its holder's lease ended unanswered (the holder died): take it over.
                let mut next = msg.clone();
                next.state = match &self.p.work {
                    Work::Known(answer) => State::Answered(answer.clone()),
                    work => State::Leased {
                        holder: self.p.holder,
                        until: snow + lease_of(work),
                        runs: runs.saturating_add(1),
                    },
                };
                self.write(next, Then::Won, now)
            }
            State::Leased { .. } => self.wait_or_respond(&msg, now, snow),
        }
    }

    /// Whether this is WeChat's last attempt: in hold mode the third, or one that came
    /// [`LAST_ATTEMPT_AFTER`] after the first; in the other modes every attempt (the
    /// budget ends it).
    fn judge_last(&self, msg: &Message, snow: Ms) -> bool {
        match self.p.late.as_ref().map(|l| l.mode) {
            Some(LateMode::Hold) => {
                msg.attempts >= WECHAT_ATTEMPTS
                    || snow.saturating_sub(msg.first) >= LAST_ATTEMPT_AFTER
            }
            _ => true,
        }
    }

    fn mode(&self) -> LateMode {
        self.p.late.as_ref().map_or(LateMode::Off, |l| l.mode)
    }

    /// The message is answered.
    fn answered(&mut self, msg: &Message, answer: Answer, now: Ms) -> Action {
        if self.marked_shared {
            // Its mark is in the shared store: the answer goes from there.
            return self.late_reply();
        }
        let snow = self.view.store_now(now);
        let in_budget = now < self.p.respond_by;
        match &msg.late {
            Late::No
                if !in_budget
                    && self.holds()
                    && self.last == Some(false)
                    && msg.attempts > self.number =>
            {
                // WeChat's next attempt came: the answer is its to give.
                self.respond(Final::Success {
                    via: Via::LateHold,
                    decided: self.won,
                })
            }
            Late::No
                if !in_budget && self.holds() && self.last == Some(false) && !self.degraded() =>
            {
                // An early attempt got the answer after its own budget: WeChat may no
                // longer hear it. Its next attempt (due within the grace) takes it;
                // if none comes, it waits for a pick-up.
                let due = self.p.started + ATTEMPT_WINDOW + SUCCESSOR_GRACE;
                let mut next = msg.clone();
                next.late = Late::Pending {
                    by: self.p.holder,
                    until: snow + due.saturating_sub(now),
                };
                self.write(next, Then::Marked, now)
            }
            Late::No if self.holds() && !self.degraded() => {
                // Hold: an early attempt may mark this answer late once its budget has
                // passed; the delivery is written first, so it never does after this.
                let mut next = msg.clone();
                next.late = Late::Delivered(Delivery::Passive);
                self.write(next, Then::Delivered, now)
            }
            // Answered in time (on an attempt, not late): a retry or replay gets the
            // same answer.
            Late::No | Late::Delivered(Delivery::Passive) => {
                let answer = if self.won {
                    answer
                } else {
                    Answer {
                        via: Via::Retry,
                        ..answer
                    }
                };
                self.respond(Final::Answer {
                    answer,
                    decided: self.won,
                })
            }
            // The answer came in time for an attempt WeChat still hears: the last one
            // that marked it, or any attempt before the mark's deadline.
            Late::Pending { by, until } if in_budget && (*by == self.p.holder || *until > snow) => {
                let mut next = msg.clone();
                next.late = Late::Delivered(Delivery::Passive);
                self.write(next, Then::Delivered, now)
            }
            Late::Pending { by, .. } if *by == self.p.holder => self.late_reply(),
            // It went (or goes) out late: never a second copy.
            _ => self.late_done(msg),
        }
    }

    /// `success` for a message whose answer went (or goes) out late. One that waits
    /// for a pick-up is listed first (idempotent): the request that marked it may have
    /// died before it listed it.
    fn late_done(&mut self, msg: &Message) -> Action {
        let reply = Final::Success {
            via: Via::LateDone,
            decided: self.won,
        };
        if matches!(msg.late, Late::Pending { .. }) && !self.degraded() {
            return self.edit_list(Op::Add(self.p.key.clone()), AfterList::Respond(reply));
        }
        self.respond(reply)
    }

    /// Whether early attempts are held (hold mode, a program message).
    fn holds(&self) -> bool {
        self.mode() == LateMode::Hold && matches!(self.p.work, Work::Run { .. })
    }

    /// Whether the request lost the shared store and goes on in local memory. Late
    /// answers are then neither marked nor picked up there: what an outage leaves in
    /// one process's memory would contradict the shared store once it is back.
    fn degraded(&self) -> bool {
        self.level == Level::Local && self.p.shared
    }

    /// The last attempt's budget ran out before the answer: `pending` (hold) or
    /// `success` (customer service: it will be pushed).
    fn late_reply(&mut self) -> Action {
        let decided = self.won;
        match self.mode() {
            LateMode::Hold => self.respond(Final::Pending { decided }),
            LateMode::CustomerService => self.respond(Final::Success {
                via: Via::CustomerService,
                decided,
            }),
            LateMode::Off => self.respond(Final::Success {
                via: Via::Deadline,
                decided,
            }),
        }
    }

    /// The message is being decided (by this request's program, or by another
    /// request): wait for the answer, mark it late on WeChat's last attempt, or answer
    /// what the time allows.
    fn wait_or_respond(&mut self, msg: &Message, now: Ms, snow: Ms) -> Action {
        let mine = matches!(msg.state, State::Leased { holder, .. } if holder == self.p.holder);
        let lease_end = match msg.state {
            State::Leased { until, .. } if !mine => now + until.saturating_sub(snow),
            _ => Ms::MAX,
        };
        let job = match &self.p.work {
            Work::Run { job, .. } => Some(job.clone()),
            _ => None,
        };
        let mode = self.mode();
        let last = self.last.unwrap_or(true);
        if job.is_none() || last {
            // Answer by the budget.
            if job.is_some()
                && mode != LateMode::Off
                && msg.late == Late::No
                && !self.marked
                && !self.marked_shared
                && !self.degraded()
                && now < self.p.respond_by
            {
                // WeChat's last attempt: from now on, an answer that misses this
                // attempt's budget waits for a pick-up or a push, never a retry.
                let mut next = msg.clone();
                next.late = Late::Pending {
                    by: self.p.holder,
                    until: snow + (self.p.respond_by - now),
                };
                next.job = job;
                return self.write(next, Then::Marked, now);
            }
            if now >= self.p.respond_by {
                if self.marked_shared {
                    return self.late_reply();
                }
                return match &msg.late {
                    Late::Pending { by, .. } if *by == self.p.holder => self.late_reply(),
                    Late::No => self.respond(Final::Success {
                        via: Via::Deadline,
                        decided: self.won,
                    }),
                    _ => self.late_done(msg),
                };
            }
            return self.wait(lease_end.min(self.p.respond_by), now);
        }
        // Hold: an attempt before the last is answered only with the answer; else
        // WeChat gives up on it and tries again.
        if msg.late != Late::No {
            return self.late_done(msg);
        }
        if msg.attempts > self.number {
            // WeChat moved on to its next attempt: this one is no longer heard.
            return self.respond(Final::Success {
                via: Via::LateHold,
                decided: self.won,
            });
        }
        let successor_due = self.p.started + ATTEMPT_WINDOW + SUCCESSOR_GRACE;
        if now >= successor_due {
            if self.degraded() {
                return self.respond(Final::Success {
                    via: Via::LateHold,
                    decided: self.won,
                });
            }
            if !self.marked {
                // No next attempt came: this was WeChat's last (the ones before never
                // reached this server). The follower saw no answer; it waits for a
                // pick-up rather than being lost.
                let mut next = msg.clone();
                next.late = Late::Pending {
                    by: self.p.holder,
                    until: snow,
                };
                next.job = job;
                return self.write(next, Then::Marked, now);
            }
            return self.late_reply();
        }
        self.wait(lease_end.min(successor_due), now)
    }

    fn wait(&mut self, until: Ms, now: Ms) -> Action {
        self.awaiting = Awaiting::Wait;
        Action::Wait {
            level: self.level,
            key: self.p.key.clone(),
            seen: self.view.rev,
            until: until.max(now + 1),
        }
    }

    /// This request holds the lease: start its program, or the pick-up.
    fn start_work(&mut self, now: Ms) -> Action {
        self.started_work = true;
        match &self.p.work {
            Work::Run { .. } if self.level == Level::Shared && !self.mirrored => {
                // A copy of the lease in local memory: if the shared store fails now,
                // this process's requests still see that the program runs, and get
                // its answer.
                self.mirrored = true;
                let snow = self.view.store_now(now);
                let mut copy = self
                    .view
                    .msg
                    .clone()
                    .unwrap_or_else(|| self.new_message(snow));
                if let State::Leased { until, .. } = &mut copy.state {
                    *until = now + until.saturating_sub(snow);
                }
                copy.first = now;
                copy.late = Late::No;
                let ttl = ttl_of(&copy, now, self.p.retention, self.p.late.as_ref());
                self.awaiting = Awaiting::Mirror;
                Action::Put {
                    level: Level::Local,
                    key: self.p.key.clone(),
                    record: Record::Message(copy),
                    ttl,
                }
            }
            Work::Run { .. } => self.spawn(),
            Work::Pickup { .. } if self.degraded() => self.nothing_waits(now),
            Work::Pickup { .. } => {
                self.awaiting = Awaiting::PickupList;
                Action::Load {
                    level: self.level,
                    key: self.p.list.clone(),
                }
            }
            // A known answer was written when the message was won.
            Work::Known(_) | Work::Handshake => self.decide(now),
        }
    }

    fn spawn(&mut self) -> Action {
        let Work::Run { job, .. } = &self.p.work else {
            return self.load();
        };
        self.awaiting = Awaiting::Spawn;
        Action::Spawn(Spawn {
            level: self.level,
            key: self.p.key.clone(),
            holder: self.p.holder,
            job: job.clone(),
            list: self.p.list.clone(),
            mirror: self.level == Level::Shared,
        })
    }

    // The pick-up: the follower's oldest waiting answer, once.

    fn next_item(&mut self, now: Ms) -> Action {
        let Some(item) = self.items.get(self.item).cloned() else {
            return self.nothing_waits(now);
        };
        self.awaiting = Awaiting::Item;
        Action::Load {
            level: self.level,
            key: item,
        }
    }

    fn classify_item(&mut self, loaded: Loaded, now: Ms) -> Action {
        let item = self.items[self.item].clone();
        let isnow = loaded.now;
        let rev = loaded.rev;
        let Some(Record::Message(m)) = loaded.record else {
            return self.unlist_item();
        };
        let write = |this: &mut Attempt, next: Message, then: ItemThen| {
            let ttl = ttl_of(&next, isnow, this.p.retention, this.p.late.as_ref());
            this.awaiting = Awaiting::ItemWrite(then);
            Action::Swap {
                level: this.level,
                key: item.clone(),
                expected: rev,
                record: Record::Message(next),
                ttl,
            }
        };
        match (&m.state, &m.late) {
            // Waiting for a pick-up: this one delivers it.
            (State::Answered(answer), Late::Pending { until, .. }) if *until <= isnow => {
                let answer = answer.clone();
                let mut next = m.clone();
                next.late = Late::Delivered(Delivery::Pickup(self.p.key.clone()));
                write(self, next, ItemThen::Deliver(answer))
            }
            // Delivered by this very message before (its earlier attempt died).
            (State::Answered(answer), Late::Delivered(Delivery::Pickup(by)))
                if *by == self.p.key =>
            {
                let answer = answer.clone();
                self.deliver(answer, now)
            }
            // WeChat's last attempt still waits for it, or its program runs.
            (State::Answered(_), Late::Pending { .. }) => self.still_running(now),
            (State::Leased { until, .. }, Late::Pending { .. } | Late::Pushing { .. })
                if *until > isnow =>
            {
                self.still_running(now)
            }
            // Its program's process died: run it again.
            (State::Leased { runs, .. }, Late::Pending { .. }) if m.job.is_some() => {
                let Some(job) = m.job.clone() else {
                    return self.unlist_item();
                };
                self.subs += 1;
                let holder = derive_holder(self.p.holder, self.subs);
                let mut next = m.clone();
                next.state = State::Leased {
                    holder,
                    until: isnow + job.lease,
                    runs: runs.saturating_add(1),
                };
                write(self, next, ItemThen::Spawn(job, holder))
            }
            // Being pushed: it arrives that way.
            (State::Answered(_), Late::Pushing { until, .. }) if *until > isnow => {
                self.item += 1;
                self.next_item(now)
            }
            // A push cut off by a crash: it may have gone out; never again.
            (_, Late::Pushing { .. }) => {
                let mut next = m.clone();
                next.late = Late::Delivered(Delivery::Unknown);
                write(self, next, ItemThen::Unlist)
            }
            // Delivered, given up, or not late at all: off the list.
            _ => self.unlist_item(),
        }
    }

    fn unlist_item(&mut self) -> Action {
        let item = self.items[self.item].clone();
        self.edit_list(Op::Remove(item), AfterList::NextItem)
    }

    /// A waiting answer was taken for this pick-up: store it as this message's answer,
    /// take it off the list, respond.
    fn deliver(&mut self, answer: Answer, now: Ms) -> Action {
        if answer.reply.is_none() {
            // `success`: nothing to deliver; look further.
            return self.unlist_item();
        }
        let item = self.items[self.item].clone();
        let answer = Answer {
            via: Via::Pickup,
            ..answer
        };
        self.own = Some((answer, AfterOwn::Unlist(item)));
        self.decide(now)
    }

    fn still_running(&mut self, now: Ms) -> Action {
        let Work::Pickup { still_running, .. } = &self.p.work else {
            return self.decide(now);
        };
        let answer = Answer {
            reply: Some(still_running.clone()),
            rule: Arc::from("pickup"),
            via: Via::StillRunning,
        };
        self.own = Some((answer, AfterOwn::Respond));
        self.decide(now)
    }

    /// Nothing waits: the message is answered as the rules say.
    fn nothing_waits(&mut self, now: Ms) -> Action {
        let Work::Pickup { then, .. } = &self.p.work else {
            return self.decide(now);
        };
        let then = (**then).clone();
        match &then {
            Work::Known(answer) => self.own = Some((answer.clone(), AfterOwn::Respond)),
            Work::Run { job, .. } => {
                self.extend = Some(job.lease);
                self.started_work = false;
            }
            Work::Pickup { .. } | Work::Handshake => {}
        }
        self.p.work = then;
        self.decide(now)
    }
}

/// How long a request holds a message it decides.
fn lease_of(work: &Work) -> Ms {
    match work {
        Work::Run { job, .. } => job.lease,
        _ => PICKUP_LEASE,
    }
}
