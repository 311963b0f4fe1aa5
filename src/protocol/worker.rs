//! A finished program's (or hook's) answer: stored once in its message's record; kept
//! for a pick-up when the message went late; pushed with the customer-service API
//! when that is the mode.

use std::sync::Arc;

use super::list::{ListEdit, Op};
use super::record::{Delivery, Late, Message, Record, State};
use super::{
    ttl_of, Action, Event, LatePolicy, Level, Loaded, Ms, PushFailed, Rev, Swapped, PUSH_LEASE,
};
use crate::core::late::LateMode;
use crate::core::Answer;

/// What a worker knows.
#[derive(Debug, Clone)]
pub struct WorkerParams {
    /// The store the message's record is in.
    pub level: Level,
    /// The message's record key.
    pub key: Arc<str>,
    /// The follower's waiting list.
    pub list: Arc<str>,
    /// The lease holder the program ran under.
    pub holder: u64,
    /// The program's answer (or the fallback when it failed).
    pub answer: Answer,
    /// Who the message came from (a push goes to them).
    pub follower: Arc<str>,
    /// Also keep the answer in this process's memory.
    pub mirror: bool,
    /// `[late]` for the account.
    pub late: Option<LatePolicy>,
    /// Whether the customer-service API can be called (an AppSecret is configured).
    pub push: bool,
    /// How long answers are kept.
    pub retention: Ms,
}

/// A worker's progress.
#[derive(Debug)]
pub struct Worker {
    p: WorkerParams,
    level: Level,
    stage: Stage,
    awaiting: Awaiting,
    rev: Option<Rev>,
    msg: Option<Message>,
    snow: Ms,
    at: Ms,
    listed: bool,
    steps: u32,
    /// Until when a failing shared store is tried again.
    retry_until: Option<Ms>,
}

/// Where the worker is.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Storing the answer.
    Store,
    /// Stored: list it if late, push it if that is the mode.
    Stored,
    /// The push is claimed (`Pushing` by this worker): push.
    Claimed,
    /// The push ended so: record it.
    Pushed(Result<(), PushFailed>),
}

#[derive(Debug)]
enum Awaiting {
    Mirror,
    Load,
    Write(Message, Stage),
    List(ListEdit),
    Wait,
    Push,
    Done,
}

/// Most steps one worker takes.
const MAX_STEPS: u32 = 10_000;
/// When the shared store fails, the worker tries again this often, for this long,
/// before leaving the answer in local memory only.
const RETRY_EVERY: Ms = 1_000;
const RETRY_FOR: Ms = 30_000;

impl Worker {
    /// A worker and its first action.
    pub fn new(p: WorkerParams, now: Ms) -> (Worker, Action) {
        let level = p.level;
        let mut worker = Worker {
            p,
            level,
            stage: Stage::Store,
            awaiting: Awaiting::Done,
            rev: None,
            msg: None,
            snow: 0,
            at: 0,
            listed: false,
            steps: 0,
            retry_until: None,
        };
        let action = if worker.p.mirror {
            // This process's copy first: its requests get the answer even if the
            // shared store fails from here on.
            worker.awaiting = Awaiting::Mirror;
            let copy = Message {
                first: now,
                attempts: 1,
                state: State::Answered(worker.p.answer.clone()),
                late: Late::No,
                job: None,
            };
            let ttl = ttl_of(&copy, now, worker.p.retention, None);
            Action::Put {
                level: Level::Local,
                key: worker.p.key.clone(),
                record: Record::Message(copy),
                ttl,
            }
        } else {
            worker.load()
        };
        (worker, action)
    }

    /// Whether the answer was stored by this worker (else another one was there first).
    pub fn stored(&self) -> bool {
        self.stage != Stage::Store
    }

    /// The next action after `event`, at `now`.
    pub fn step(&mut self, event: Event, now: Ms) -> Action {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return self.done();
        }
        if matches!(event, Event::Loaded(Err(_)) | Event::Swapped(Err(_))) {
            return self.degrade(now);
        }
        match (std::mem::replace(&mut self.awaiting, Awaiting::Done), event) {
            (Awaiting::Mirror, Event::Put) => self.load(),
            (Awaiting::Load, Event::Loaded(Ok(loaded))) => {
                self.view(loaded, now);
                self.decide(now)
            }
            (Awaiting::Write(written, next), Event::Swapped(Ok(swapped))) => match swapped {
                Swapped::Changed(loaded) => {
                    self.view(loaded, now);
                    self.decide(now)
                }
                Swapped::Done { rev, now: snow } => {
                    self.rev = Some(rev);
                    self.msg = Some(written);
                    self.snow = snow;
                    self.at = now;
                    self.stage = next;
                    if self.stage == Stage::Claimed {
                        return self.push();
                    }
                    self.decide(now)
                }
            },
            (Awaiting::List(mut edit), event) => match edit.on(event) {
                Ok(Some(action)) => {
                    self.awaiting = Awaiting::List(edit);
                    action
                }
                Ok(None) => self.decide(now),
                Err(_) => self.degrade(now),
            },
            (Awaiting::Wait, Event::Woke) => self.load(),
            (Awaiting::Push, Event::Pushed(result)) => {
                self.stage = Stage::Pushed(result);
                self.decide(now)
            }
            (Awaiting::Done, _) => Action::Done,
            (_, _) => self.load(),
        }
    }

    fn view(&mut self, loaded: Loaded, now: Ms) {
        self.rev = loaded.rev;
        self.msg = loaded.record.and_then(|r| match r {
            Record::Message(m) => Some(m),
            _ => None,
        });
        self.snow = loaded.now;
        self.at = now;
    }

    fn load(&mut self) -> Action {
        self.awaiting = Awaiting::Load;
        Action::Load {
            level: self.level,
            key: self.p.key.clone(),
        }
    }

    fn done(&mut self) -> Action {
        self.awaiting = Awaiting::Done;
        Action::Done
    }

    /// The shared store failed: try again every [`RETRY_EVERY`] for [`RETRY_FOR`]
    /// (what the answer became must reach it: stored, pushed, waiting); then the answer
    /// stays in this process's memory (where the mirror put it), or goes there now.
    fn degrade(&mut self, now: Ms) -> Action {
        if self.level == Level::Local {
            return self.done();
        }
        let until = *self.retry_until.get_or_insert(now + RETRY_FOR);
        if now < until {
            // A pause: nothing local to wait for but the time.
            self.awaiting = Awaiting::Wait;
            return Action::Wait {
                level: Level::Local,
                key: Arc::from("-"),
                seen: None,
                until: now + RETRY_EVERY,
            };
        }
        if self.p.mirror {
            return self.done();
        }
        self.level = Level::Local;
        self.stage = Stage::Store;
        self.load()
    }

    fn write(&mut self, message: Message, next: Stage, now: Ms) -> Action {
        let snow = self.snow + now.saturating_sub(self.at);
        let ttl = ttl_of(&message, snow, self.p.retention, self.p.late.as_ref());
        self.awaiting = Awaiting::Write(message.clone(), next);
        Action::Swap {
            level: self.level,
            key: self.p.key.clone(),
            expected: self.rev,
            record: Record::Message(message),
            ttl,
        }
    }

    fn push(&mut self) -> Action {
        self.awaiting = Awaiting::Push;
        Action::Push {
            follower: self.p.follower.clone(),
            answer: self.p.answer.clone(),
        }
    }

    fn decide(&mut self, now: Ms) -> Action {
        let snow = self.snow + now.saturating_sub(self.at);
        let Some(msg) = self.msg.clone() else {
            if self.stage == Stage::Store {
                // The record is gone (expired, evicted): the answer still serves a
                // retry.
                let message = Message {
                    first: snow,
                    attempts: 1,
                    state: State::Answered(self.p.answer.clone()),
                    late: Late::No,
                    job: None,
                };
                return self.write(message, Stage::Stored, now);
            }
            return self.done();
        };
        match self.stage.clone() {
            Stage::Store => match msg.state {
                State::Leased { .. } => {
                    let mut next = msg;
                    next.state = State::Answered(self.p.answer.clone());
                    self.write(next, Stage::Stored, now)
                }
                // Answered already (a takeover's program was first): the first answer
                // stands.
                State::Answered(_) => self.done(),
            },
            Stage::Stored => match msg.late {
                Late::Pending { until, .. } => {
                    if !self.listed {
                        // Listed here too: the last attempt may have died between
                        // marking it and listing it.
                        self.listed = true;
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
                        self.awaiting = Awaiting::List(edit);
                        return action;
                    }
                    let pushes = self.p.push
                        && self
                            .p
                            .late
                            .as_ref()
                            .is_some_and(|l| l.mode == LateMode::CustomerService);
                    if !pushes || msg.answer().is_none_or(|a| a.reply.is_none()) {
                        // Hold (or no API): it waits for a pick-up.
                        return self.done();
                    }
                    if until > snow {
                        // WeChat's last attempt may still get it: look again when its
                        // budget has run out.
                        self.awaiting = Awaiting::Wait;
                        return Action::Wait {
                            level: self.level,
                            key: self.p.key.clone(),
                            seen: self.rev,
                            until: now + (until - snow),
                        };
                    }
                    let mut next = msg;
                    next.late = Late::Pushing {
                        by: self.p.holder,
                        until: snow + PUSH_LEASE,
                    };
                    self.write(next, Stage::Claimed, now)
                }
                _ => self.done(),
            },
            Stage::Claimed => self.push(),
            Stage::Pushed(result) => match msg.late {
                Late::Pushing { by, .. } if by == self.p.holder => {
                    let mut next = msg;
                    next.late = match &result {
                        Ok(()) => Late::Delivered(Delivery::Pushed),
                        // Refused or unreachable: it waits for a pick-up (it is listed).
                        Err(_) => Late::Pending { by: 0, until: 0 },
                    };
                    self.write(next, Stage::Pushed(result), now)
                }
                _ => self.done(),
            },
        }
    }
}
