//! The event stream: one typed [`Event`] per state change, delivered to
//! subscribers through channels.
//!
//! Delivery never blocks the writer: each subscriber has a bounded channel
//! (capacity [`Config::event_capacity`](crate::Config::event_capacity)); an
//! event that does not fit is dropped *for that subscriber* and counted
//! ([`Subscription::dropped`]). An unbounded channel would let one stalled
//! consumer grow memory without limit while the commit lock is held; a
//! blocking one would let it stall every writer. A consumer that lost events
//! can rebuild the state-change events from the log with
//! [`events_from_changes`]. Dropped receivers are pruned on the next event.
//!
//! State-change events (pages, deltas, edges, derivations) are a pure
//! function of the [`Change`]s, so the live stream and the rebuilt one
//! agree. Propagation events (`PropagationStarted`, `Recomputed`,
//! `PropagationFinished`) describe work, not state: they are live only,
//! and a propagation sends all of them, to the subscribers there as it
//! began (a subscriber that joins while it runs gets none of them, and
//! none are sent when nobody was subscribed).

use crate::delta::change::Change;
use crate::delta::change::EdgeKind;
use crate::delta::Source;
use parking_lot::Mutex;
use shared_types::{Epoch, Lsn, PageId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Who produced a delta, without the details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// A user write.
    User,
    /// A recompute of a derived page.
    Propagation,
    /// A restore or replay.
    Replay,
}

impl From<&Source> for SourceKind {
    fn from(s: &Source) -> Self {
        match s {
            Source::User => SourceKind::User,
            Source::Propagation(_) => SourceKind::Propagation,
            Source::Replay => SourceKind::Replay,
        }
    }
}

/// One thing that happened to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A page was created.
    PageCreated {
        /// The page.
        page: PageId,
        /// Its length in bytes.
        len: u64,
    },
    /// A page was deleted (with its edges).
    PageDeleted {
        /// The page.
        page: PageId,
    },
    /// A delta was applied.
    DeltaApplied {
        /// The page.
        page: PageId,
        /// The page's epoch after the delta.
        epoch: Epoch,
        /// Who produced the delta.
        source: SourceKind,
        /// Bytes the delta selects.
        bytes: u64,
    },
    /// A dependency edge was added.
    EdgeAdded {
        /// Parent.
        from: PageId,
        /// Child.
        to: PageId,
        /// Kind.
        kind: EdgeKind,
    },
    /// A dependency edge was removed.
    EdgeRemoved {
        /// Parent.
        from: PageId,
        /// Child.
        to: PageId,
    },
    /// A page was declared derived (or re-declared at a new version).
    DerivedDeclared {
        /// The page.
        page: PageId,
        /// Function name.
        function: String,
        /// Function version.
        version: u32,
        /// Parents in call order.
        parents: Vec<PageId>,
    },
    /// A propagation begins (live only).
    PropagationStarted {
        /// Pages queued when it started.
        dirty: u64,
    },
    /// A derived page was recomputed (live only); `changed: false` is an
    /// early cutoff.
    Recomputed {
        /// The page.
        page: PageId,
        /// Whether its bytes changed.
        changed: bool,
    },
    /// A propagation ended (live only).
    PropagationFinished {
        /// Pages queued in total.
        dirty: u64,
        /// Recompute functions run.
        recomputed: u64,
        /// Recomputes that changed nothing.
        cut_off: u64,
        /// Wall time.
        duration: Duration,
    },
    /// A checkpoint was written and is durable (live only), sent by
    /// [`crate::Mmsb::checkpoint`] before it returns.
    CheckpointWritten {
        /// The last log position the checkpoint covers.
        lsn: Lsn,
    },
}

/// The event of one change; `epoch` is the page's epoch after an `Apply`.
pub(crate) fn event_for_change(change: &Change, epoch: Epoch) -> Option<Event> {
    Some(match change {
        Change::CreatePage { id, len, .. } => Event::PageCreated { page: *id, len: *len },
        Change::DeletePage { id } => Event::PageDeleted { page: *id },
        Change::Apply(d) => Event::DeltaApplied {
            page: d.page,
            epoch,
            source: SourceKind::from(&d.source),
            bytes: d.payload.touched(),
        },
        Change::AddEdge { from, to, kind } => Event::EdgeAdded { from: *from, to: *to, kind: *kind },
        Change::RemoveEdge { from, to } => Event::EdgeRemoved { from: *from, to: *to },
        Change::DeclareDerived { page, function, version, parents } => Event::DerivedDeclared {
            page: *page,
            function: function.clone(),
            version: *version,
            parents: parents.clone(),
        },
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The state-change events of a sequence of changes, as the live stream
/// emitted them. Epochs count from 0 at each page's creation; for a page
/// created before the slice (a log tail after a checkpoint) pass its epoch
/// in `known`.
///
/// # Examples
/// ```
/// use mmsb::events::{events_from_changes, Event};
/// use mmsb::{Change, Location, PageId};
/// let changes = [Change::CreatePage { id: PageId(1), len: 8, location: Location::Cpu, meta: Default::default() }];
/// assert_eq!(events_from_changes(&changes), vec![Event::PageCreated { page: PageId(1), len: 8 }]);
/// ```
pub fn events_from_changes(changes: &[Change]) -> Vec<Event> {
    events_from_changes_after(changes, &HashMap::new())
}

/// [`events_from_changes`] for a slice that starts with pages at the epochs
/// in `known`.
pub fn events_from_changes_after(changes: &[Change], known: &HashMap<PageId, Epoch>) -> Vec<Event> {
    let mut epochs: HashMap<PageId, Epoch> = known.clone();
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        let mut epoch = Epoch(0);
        match c {
            Change::CreatePage { id, .. } => {
                epochs.insert(*id, Epoch(0));
            }
            Change::Apply(d) => {
                let e = epochs.entry(d.page).or_insert(Epoch(0));
                *e = Epoch(e.0 + 1);
                epoch = *e;
            }
            Change::DeletePage { id } => {
                epochs.remove(id);
            }
            _ => {}
        }
        out.extend(event_for_change(c, epoch));
    }
    out
}

/// A subscriber's end of the event stream. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Every event waiting now.
    pub fn drain(&self) -> Vec<Event> {
        self.rx.try_iter().collect()
    }

    /// Events that did not fit this subscriber's channel and were dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The underlying receiver (for `select`-style use).
    pub fn receiver(&self) -> &Receiver<Event> {
        &self.rx
    }
}

struct Subscriber {
    /// Subscribers are numbered in the order they came.
    id: u64,
    tx: SyncSender<Event>,
    dropped: Arc<AtomicU64>,
}

/// The subscribers, and the number the next one gets.
#[derive(Default)]
struct Subs {
    list: Vec<Subscriber>,
    next: u64,
}

/// The subscriber list. `count` lets writers skip building events when
/// nobody listens.
pub(crate) struct EventBus {
    subs: Mutex<Subs>,
    count: AtomicUsize,
    capacity: usize,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").field("subscribers", &self.count.load(Ordering::Relaxed)).finish()
    }
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { subs: Mutex::new(Subs::default()), count: AtomicUsize::new(0), capacity: capacity.max(1) }
    }

    pub(crate) fn subscribe(&self) -> Subscription {
        let (tx, rx) = std::sync::mpsc::sync_channel(self.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut subs = self.subs.lock();
        let id = subs.next;
        subs.next += 1;
        subs.list.push(Subscriber { id, tx, dropped: dropped.clone() });
        self.count.store(subs.list.len(), Ordering::Release);
        Subscription { rx, dropped }
    }

    /// A mark of who listens now, when anyone does: events sent with
    /// [`EventBus::send_to`] and this mark reach exactly the subscribers of
    /// this moment that are still there (so a propagation's events reach a
    /// subscriber whole or not at all).
    pub(crate) fn listeners(&self) -> Option<u64> {
        if !self.active() {
            return None;
        }
        Some(self.subs.lock().next)
    }

    /// Whether anyone listens.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.count.load(Ordering::Acquire) != 0
    }

    /// Deliver `event` to every subscriber without blocking.
    pub(crate) fn send(&self, event: Event) {
        self.send_to(event, u64::MAX);
    }

    /// Deliver `event`, without blocking, to the subscribers that came
    /// before the mark `before` (see [`EventBus::listeners`]).
    pub(crate) fn send_to(&self, event: Event, before: u64) {
        let mut subs = self.subs.lock();
        let n = subs.list.len();
        subs.list.retain(|s| {
            if s.id >= before {
                return true;
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        if subs.list.len() != n {
            self.count.store(subs.list.len(), Ordering::Release);
        }
    }
}
