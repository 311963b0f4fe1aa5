//! Editing a follower's waiting list by compare-and-swap: load it, change it, swap it
//! in; again when another request changed it meanwhile.

use std::sync::Arc;

use super::record::{Record, Waiting};
use super::{Action, Event, Level, Loaded, Ms, StoreError, Swapped, WAITING_MAX};

/// Most tries against other requests' edits before giving up on an edit (a stale item
/// is harmless: pick-ups skip what is not waiting).
const TRIES: u8 = 16;

/// Add or remove one message key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    Add(Arc<str>),
    Remove(Arc<str>),
}

/// One edit in progress.
#[derive(Debug, Clone)]
pub(super) struct ListEdit {
    level: Level,
    key: Arc<str>,
    op: Op,
    ttl: Ms,
    tries: u8,
}

impl ListEdit {
    /// An edit of the list at `key`, which then lives `ttl`.
    pub(super) fn new(level: Level, key: Arc<str>, op: Op, ttl: Ms) -> ListEdit {
        ListEdit {
            level,
            key,
            op,
            ttl,
            tries: 0,
        }
    }

    /// The first action: read the list.
    pub(super) fn start(&self) -> Action {
        Action::Load {
            level: self.level,
            key: self.key.clone(),
        }
    }

    /// The next action after `event`, or `Ok(None)` when the edit is done.
    pub(super) fn on(&mut self, event: Event) -> Result<Option<Action>, StoreError> {
        match event {
            Event::Loaded(Ok(loaded)) | Event::Swapped(Ok(Swapped::Changed(loaded))) => {
                Ok(self.swap(loaded))
            }
            Event::Swapped(Ok(Swapped::Done { .. })) => Ok(None),
            Event::Loaded(Err(e)) | Event::Swapped(Err(e)) => Err(e),
            // Nothing else answers a Load or a Swap.
            _ => Ok(None),
        }
    }

    fn swap(&mut self, loaded: Loaded) -> Option<Action> {
        self.tries += 1;
        if self.tries > TRIES {
            return None;
        }
        let mut keys = loaded
            .record
            .as_ref()
            .and_then(Record::waiting)
            .map(|w| w.keys.clone())
            .unwrap_or_default();
        match &self.op {
            Op::Add(item) => {
                if keys.contains(item) {
                    return None;
                }
                keys.push(item.clone());
                if keys.len() > WAITING_MAX {
                    keys.remove(0);
                }
            }
            Op::Remove(item) => {
                let before = keys.len();
                keys.retain(|k| k != item);
                if keys.len() == before {
                    return None;
                }
            }
        }
        Some(Action::Swap {
            level: self.level,
            key: self.key.clone(),
            expected: loaded.rev,
            record: Record::Waiting(Waiting { keys }),
            ttl: self.ttl,
        })
    }
}
