//! What the stores keep for the protocol: a message's record (its lease or answer,
//! WeChat's attempts, whether its answer went late) and a follower's waiting list; and
//! their bytes in a shared store.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Ms;
use crate::core::reply::Reply;
use crate::core::{Answer, Via};

/// A value the protocol keeps under a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A message's record (`m/ACCOUNT/KEY`).
    Message(Message),
    /// A follower's late answers waiting for a pick-up, oldest first
    /// (`w/ACCOUNT/FOLLOWER`).
    Waiting(Waiting),
    /// A signed query's binding (`q/ACCOUNT/QUERY`): created by [`super::Action::Open`]
    /// only, never read by the machine.
    Binding(super::Digest),
}

/// One message's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The store's clock when its first attempt arrived.
    pub first: Ms,
    /// WeChat's attempts counted (new signed queries while it was undecided).
    pub attempts: u8,
    /// Being decided, or decided.
    pub state: State,
    /// Whether its answer went late.
    pub late: Late,
    /// What running it again takes, once it went late (a pick-up re-runs it when its
    /// holder died).
    pub job: Option<Arc<Job>>,
}

/// Being decided, or decided.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// `holder` decides it (runs its program) until `until` (store clock); `runs`
    /// leases were given so far (more than one only after a holder died).
    Leased {
        /// The attempt (or pick-up) holding it.
        holder: u64,
        /// When the lease ends.
        until: Ms,
        /// Leases given.
        runs: u8,
    },
    /// Its answer.
    Answered(Answer),
}

/// Whether a message's answer went late, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Late {
    /// Answered in time, or being answered in time.
    No,
    /// WeChat's last attempt (`by`) waits for its budget until `until`; after that the
    /// answer waits for a pick-up (hold) or a push (customer service).
    Pending {
        /// The last attempt's holder id (0: none waits any more).
        by: u64,
        /// When its budget ends (store clock).
        until: Ms,
    },
    /// Being pushed by `by` until `until`.
    Pushing {
        /// The worker pushing it.
        by: u64,
        /// When the push's lease ends.
        until: Ms,
    },
    /// Delivered (or given up on): never again.
    Delivered(Delivery),
}

/// How a late answer reached the follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// On WeChat's last attempt, before its budget ran out.
    Passive,
    /// By the pick-up message with this key.
    Pickup(Arc<str>),
    /// By the customer-service API.
    Pushed,
    /// A push was cut off (its process died): it may have gone out, so it is not
    /// repeated.
    Unknown,
}

/// A program's rule, input and lease: what running it (again) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The rule's name (looked up in the account's rules when run again).
    pub rule: Arc<str>,
    /// The message as JSON (the program's stdin).
    pub input: Arc<[u8]>,
    /// Its lease: the program's timeout plus [`super::LEASE_MARGIN`].
    pub lease: Ms,
    /// The rule's fallback (templates filled in for this message): the answer when
    /// the program fails.
    pub fallback: Option<Arc<Reply>>,
}

/// A follower's waiting late answers, oldest first: message record keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Waiting {
    /// The keys.
    pub keys: Vec<Arc<str>>,
}

impl Message {
    /// Whether it is still being decided.
    pub fn is_leased(&self) -> bool {
        matches!(self.state, State::Leased { .. })
    }

    /// The answer, once decided.
    pub fn answer(&self) -> Option<&Answer> {
        match &self.state {
            State::Answered(a) => Some(a),
            State::Leased { .. } => None,
        }
    }
}

/// A message whose answer a process gave from its own memory while the shared store
/// was unreachable: what the store's record becomes once it is back, so that no
/// pick-up or push gives it again (`None`: leave the record as it is).
pub fn given_in_outage(m: &Message) -> Option<Message> {
    match m.late {
        Late::No | Late::Pending { .. } => {
            let mut next = m.clone();
            next.late = Late::Delivered(Delivery::Passive);
            Some(next)
        }
        Late::Pushing { .. } | Late::Delivered(_) => None,
    }
}

impl Record {
    /// The message record, if this is one.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Record::Message(m) => Some(m),
            _ => None,
        }
    }

    /// The waiting list, if this is one.
    pub fn waiting(&self) -> Option<&Waiting> {
        match self {
            Record::Waiting(w) => Some(w),
            _ => None,
        }
    }

    /// About the memory it holds, for a store bounded in bytes.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Record::Message(m) => {
                let answer = m.answer().map_or(0, Answer::heap_bytes);
                let job = m.job.as_ref().map_or(0, |j| {
                    32 + j.rule.len()
                        + j.input.len()
                        + j.fallback.as_ref().map_or(0, |f| f.heap_bytes())
                });
                let late = match &m.late {
                    Late::Delivered(Delivery::Pickup(k)) => k.len(),
                    _ => 0,
                };
                answer + job + late
            }
            Record::Waiting(w) => w.keys.iter().map(|k| 16 + k.len()).sum(),
            Record::Binding(_) => 16,
        }
    }

    /// The record as bytes (JSON), for a shared store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Wire::from(self)).unwrap_or_default()
    }

    /// A record [`Record::encode`] wrote; `None` when the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let wire: Wire = serde_json::from_slice(bytes).ok()?;
        wire.into_record()
    }
}

/// The bytes' shape: short field names, one object per record kind.
#[derive(Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // built to be written at once, never kept
#[serde(deny_unknown_fields)]
enum Wire {
    #[serde(rename = "m")]
    Message {
        first: Ms,
        attempts: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<(u64, Ms, u8)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<WireAnswer>,
        late: WireLate,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<WireJob>,
    },
    #[serde(rename = "w")]
    Waiting(Vec<String>),
    #[serde(rename = "q")]
    Binding(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAnswer {
    reply: Option<Reply>,
    rule: String,
    via: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
enum WireLate {
    #[serde(rename = "no")]
    No,
    #[serde(rename = "pending")]
    Pending(u64, Ms),
    #[serde(rename = "pushing")]
    Pushing(u64, Ms),
    #[serde(rename = "passive")]
    Passive,
    #[serde(rename = "pickup")]
    Pickup(String),
    #[serde(rename = "pushed")]
    Pushed,
    #[serde(rename = "unknown")]
    Unknown,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireJob {
    rule: String,
    input: String,
    lease: Ms,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fallback: Option<Reply>,
}

impl From<&Record> for Wire {
    fn from(record: &Record) -> Wire {
        match record {
            Record::Message(m) => {
                let (lease, answer) = match &m.state {
                    State::Leased {
                        holder,
                        until,
                        runs,
                    } => (Some((*holder, *until, *runs)), None),
                    State::Answered(a) => (
                        None,
                        Some(WireAnswer {
                            reply: a.reply.as_deref().cloned(),
                            rule: a.rule.to_string(),
                            via: a.via.label().to_owned(),
                        }),
                    ),
                };
                let late = match &m.late {
                    Late::No => WireLate::No,
                    Late::Pending { by, until } => WireLate::Pending(*by, *until),
                    Late::Pushing { by, until } => WireLate::Pushing(*by, *until),
                    Late::Delivered(Delivery::Passive) => WireLate::Passive,
                    Late::Delivered(Delivery::Pickup(k)) => WireLate::Pickup(k.to_string()),
                    Late::Delivered(Delivery::Pushed) => WireLate::Pushed,
                    Late::Delivered(Delivery::Unknown) => WireLate::Unknown,
                };
                Wire::Message {
                    first: m.first,
                    attempts: m.attempts,
                    lease,
                    answer,
                    late,
                    job: m.job.as_ref().map(|j| WireJob {
                        rule: j.rule.to_string(),
                        // The message JSON is UTF-8 (it was built from parsed XML).
                        input: String::from_utf8_lossy(&j.input).into_owned(),
                        lease: j.lease,
                        fallback: j.fallback.as_deref().cloned(),
                    }),
                }
            }
            Record::Waiting(w) => Wire::Waiting(w.keys.iter().map(|k| k.to_string()).collect()),
            Record::Binding(d) => Wire::Binding(hex::encode(d)),
        }
    }
}

impl Wire {
    fn into_record(self) -> Option<Record> {
        Some(match self {
            Wire::Message {
                first,
                attempts,
                lease,
                answer,
                late,
                job,
            } => {
                let state = match (lease, answer) {
                    (Some((holder, until, runs)), None) => State::Leased {
                        holder,
                        until,
                        runs,
                    },
                    (None, Some(a)) => State::Answered(Answer {
                        reply: a.reply.map(Arc::new),
                        rule: a.rule.into(),
                        via: Via::from_label(&a.via)?,
                    }),
                    _ => return None,
                };
                let late = match late {
                    WireLate::No => Late::No,
                    WireLate::Pending(by, until) => Late::Pending { by, until },
                    WireLate::Pushing(by, until) => Late::Pushing { by, until },
                    WireLate::Passive => Late::Delivered(Delivery::Passive),
                    WireLate::Pickup(k) => Late::Delivered(Delivery::Pickup(k.into())),
                    WireLate::Pushed => Late::Delivered(Delivery::Pushed),
                    WireLate::Unknown => Late::Delivered(Delivery::Unknown),
                };
                Record::Message(Message {
                    first,
                    attempts,
                    state,
                    late,
                    job: job.map(|j| {
                        Arc::new(Job {
                            rule: j.rule.into(),
                            input: j.input.into_bytes().into(),
                            lease: j.lease,
                            fallback: j.fallback.map(Arc::new),
                        })
                    }),
                })
            }
            Wire::Waiting(keys) => Record::Waiting(Waiting {
                keys: keys.into_iter().map(Arc::from).collect(),
            }),
            Wire::Binding(hex_digest) => {
                let bytes = hex::decode(hex_digest).ok()?;
                Record::Binding(bytes.try_into().ok()?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: Option<&str>, via: Via) -> Answer {
        Answer {
            reply: text.map(|t| Arc::new(Reply::Text(t.to_owned()))),
            rule: Arc::from("r"),
            via,
        }
    }

    #[test]
    fn every_record_survives_its_bytes() {
        let job = Some(Arc::new(Job {
            rule: Arc::from("bot"),
            input: Arc::from(&br#"{"Content":"]]> \u0002 \"x\" \xe4\xbd\xa0"}"#[..]),
            lease: 31_000,
            fallback: Some(Arc::new(Reply::Text("sorry".into()))),
        }));
        let message = |state, late| {
            Record::Message(Message {
                first: 1_700_000_000_123,
                attempts: 2,
                state,
                late,
                job: job.clone(),
            })
        };
        let leased = State::Leased {
            holder: u64::MAX,
            until: 9,
            runs: 3,
        };
        let table = [
            message(leased.clone(), Late::No),
            message(
                State::Answered(answer(Some("你好 ]]>"), Via::Program)),
                Late::Pending { by: 7, until: 8 },
            ),
            message(
                State::Answered(answer(None, Via::Fallback)),
                Late::Pushing { by: 1, until: 2 },
            ),
            message(leased.clone(), Late::Delivered(Delivery::Passive)),
            message(
                leased.clone(),
                Late::Delivered(Delivery::Pickup(Arc::from("m/a/m:1:oF"))),
            ),
            message(leased.clone(), Late::Delivered(Delivery::Pushed)),
            message(leased, Late::Delivered(Delivery::Unknown)),
            Record::Waiting(Waiting {
                keys: vec![Arc::from("m/a/1"), Arc::from("m/a/2")],
            }),
            Record::Waiting(Waiting::default()),
            Record::Binding([7; 16]),
        ];
        for record in table {
            let bytes = record.encode();
            assert_eq!(Record::decode(&bytes), Some(record.clone()), "{record:?}");
        }
        for junk in [&b""[..], b"{}", b"{\"m\":1}", b"null", &[0xff, 0xfe]] {
            assert_eq!(Record::decode(junk), None);
        }
    }
}
