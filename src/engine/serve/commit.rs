//! Group commit of the activity log (H12): requests that need cold extents queue, and one
//! of them at a time (the leader) marks the extents of every queued request, up to
//! [`TXN_EXTENTS`], with one sync of the primary, the lock let go meanwhile; requests
//! arriving during it wait for the next transaction. Evictions cost no sync: the evicted
//! extents retire and are cleared in a later transaction, once a sync made their data
//! durable (H2). DRBD packs up to 64 activity-log extent changes into one transaction the
//! same way (`AL_UPDATES_PER_TRANSACTION`).
//!
//! Queued requests sleep each on its own thread's park, not on a shared condition: a
//! transaction wakes the requests it granted or failed, once the lock is let go, and a
//! request that ends wakes the first queued one when a transaction may start. Waking every
//! queued request at each change cost about 10 context switches per served write.

use super::{Failure, FailureKind, Served, Server, State};
use crate::engine::activity::{ExtentIdx, Plan};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::MutexGuard;
use std::thread::Thread;
use std::time::Duration;

/// How long a queued request sleeps at most before it looks again (a wake-up lost to a
/// panicked thread).
const RECHECK: Duration = Duration::from_millis(200);

/// Extents one transaction marks at most (DRBD's 64 extent changes per transaction).
pub const TXN_EXTENTS: usize = 64;

/// A request waiting for its extents to be hot.
struct Waiting {
    id: u64,
    /// The extents the request uses (acquired for it when it is granted).
    exts: Vec<ExtentIdx>,
    /// With those marked ahead of a sequential writer.
    want: Vec<ExtentIdx>,
    /// The regions the request writes.
    #[allow(dead_code)]
    regions: Range<u64>,
    /// The thread serving it, parked until it is granted or failed, or may lead.
    thread: Thread,
}

/// The queue of requests waiting for a transaction, and the one being synced.
#[derive(Default)]
pub(super) struct Commits {
    queue: Vec<Waiting>,
    next_id: u64,
    /// A leader is syncing a transaction (the state unlocked).
    busy: bool,
    /// Requests a transaction made hot, their extents acquired for them.
    granted: HashSet<u64>,
    /// Requests whose transaction failed, with the failure's text.
    failed: HashMap<u64, String>,
    /// Threads to wake once the state lock is let go (their request granted or failed).
    to_wake: Vec<Thread>,
    /// Queued requests asleep.
    pub(super) parked: usize,
    /// Wake-ups of a queued request that found it neither granted nor failed and could not
    /// lead a transaction (a recheck after [`RECHECK`] not counted): none, when every
    /// wake-up is aimed (tests).
    idle_wakeups: u64,
}

impl Commits {
    /// The threads to wake once the lock is let go: those whose request was granted or
    /// failed, and the first queued request when no transaction is syncing (it leads one).
    pub(super) fn take_wakes(&mut self) -> Vec<Thread> {
        let mut v = std::mem::take(&mut self.to_wake);
        if !self.busy {
            if let Some(w) = self.queue.first() {
                v.push(w.thread.clone());
            }
        }
        v
    }
}

/// What one transaction changes, collected under the lock by [`State::collect_txn`].
struct Txn {
    /// The requests it grants.
    ids: Vec<u64>,
    /// Extents whose bits it sets (H1, W1).
    marks: Vec<ExtentIdx>,
    /// Whether the legs sync too (a retired extent waits for it, H2): then the transaction
    /// is a flush of every leg, this its token.
    covered: Option<u64>,
}

impl State {
    /// H12: takes the queued requests one transaction can serve (in arrival order, those
    /// that fit in the hot set, up to [`TXN_EXTENTS`] marks), retires the extents that make
    /// room for them, and collects its changes in memory: the clears of retired extents
    /// whose data is durable (H2) and the marks (H1). The one place where the set of regions
    /// a transaction marks is collected. Requests whose extents are all hot already (made hot
    /// by the transaction before, or retired and not cleared yet) are granted at once.
    /// `None`: nothing to commit (the queue empty, or no room until a request finishes).
    fn collect_txn(&mut self) -> std::result::Result<Option<Txn>, Failure> {
        let meta = |e: crate::error::Error| Failure::new(FailureKind::Io, e.to_string());
        let mut union: Vec<ExtentIdx> = Vec::new();
        let mut ids = Vec::new();
        let mut i = 0;
        while i < self.commits.queue.len() {
            let w = &self.commits.queue[i];
            let mut u = union.clone();
            u.extend(w.want.iter().filter(|e| !union.contains(e)));
            let cold = match self.al.plan(&u) {
                Plan::Ready => Vec::new(),
                Plan::Activate { cold, .. } => cold,
                Plan::Wait => {
                    // No room for it until a request finishes; a later one may fit.
                    i += 1;
                    continue;
                }
            };
            let marks = cold.iter().filter(|e| !self.al.is_retired(**e)).count();
            // The hot set stays within its capacity (but for one request wider than it).
            if !ids.is_empty() && (marks > TXN_EXTENTS || u.len() > self.al.capacity()) {
                break;
            }
            union = u;
            ids.push(w.id);
            i += 1;
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let (cold, evict) = match self.al.plan(&union) {
            Plan::Ready => (Vec::new(), Vec::new()),
            Plan::Activate { cold, evict, .. } => (cold, evict),
            Plan::Wait => return Ok(None),
        };
        // H2: out of the hot set at once; cleared once a sync made their data durable.
        self.al.retire(&evict);
        self.counters.evictions += evict.len() as u64;
        // W1: a retired extent not cleared yet still has its bits durable.
        let revived = self.al.revive(&cold);
        let marks: Vec<ExtentIdx> = cold.into_iter().filter(|e| !revived.contains(e)).collect();
        if marks.is_empty() {
            self.grant(&ids);
            return Ok(None);
        }
        // H2 + H6: retired extents whose data a finished sync of every leg made durable (and
        // with it their fracture bits, H13) are cleared in this transaction's write.
        for ev in self.al.take_clean_retired() {
            self.mirror.clear_evicted(ev).map_err(meta)?;
        }
        // H1/W1: the intents of the extents the requests wait for (legs not receiving
        // writes get bits per write, H6, not whole extents ahead: their logs stay exact).
        for &e in &marks {
            let regions = self.al.regions_of(e);
            self.mirror.mark_write_intents(regions).map_err(meta)?;
        }
        // H2: retired extents written since the legs last synced need this sync to be
        // cleared by the next transaction: the legs sync beside the primary (in parallel).
        let covered = self.al.retired_unsynced().then(|| self.al.flush_started());
        Ok(Some(Txn {
            ids,
            marks,
            covered,
        }))
    }

    /// The requests `ids` get their extents (all hot): acquired for them, and told.
    fn grant(&mut self, ids: &[u64]) {
        let mut queue = std::mem::take(&mut self.commits.queue);
        queue.retain(|w| {
            if !ids.contains(&w.id) {
                return true;
            }
            self.al.acquire(&w.exts);
            self.commits.granted.insert(w.id);
            self.tell(&w.thread);
            false
        });
        self.commits.queue = queue;
    }

    /// `thread`'s request was granted or failed: it is woken once the lock is let go (not
    /// the leader's own thread, which is awake: an unpark would end its next park at once).
    fn tell(&mut self, thread: &Thread) {
        if thread.id() != std::thread::current().id() {
            self.commits.to_wake.push(thread.clone());
        }
    }

    /// The requests `ids` fail with `f` (their transaction failed).
    fn fail(&mut self, ids: &[u64], f: &Failure) {
        let mut queue = std::mem::take(&mut self.commits.queue);
        queue.retain(|w| {
            if !ids.contains(&w.id) {
                return true;
            }
            self.commits.failed.insert(w.id, f.msg.clone());
            self.tell(&w.thread);
            false
        });
        self.commits.queue = queue;
    }
}

impl Server {
    /// H1 + H12: makes `exts` hot (with `READ_AHEAD`'s extents for a sequential writer) and
    /// acquires them for a request of `regions`: at once when they are hot, else through
    /// a transaction (led by this thread when none is being synced).
    pub(super) fn make_hot<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        exts: &[ExtentIdx],
        regions: &Range<u64>,
    ) -> (MutexGuard<'a, State>, Served<()>) {
        // A write into a cold extent that follows a hot one is likely a stream: the next
        // extents are marked in the same transaction (fewer metadata syncs per byte).
        let want = st.al.with_read_ahead(exts, super::READ_AHEAD);
        if st.al.plan(&want) == Plan::Ready {
            st.al.acquire(exts);
            return (st, Ok(()));
        }
        let id = st.commits.next_id;
        st.commits.next_id += 1;
        st.commits.queue.push(Waiting {
            id,
            exts: exts.to_vec(),
            want,
            regions: regions.clone(),
            thread: std::thread::current(),
        });
        let mut woken = false;
        loop {
            if st.commits.granted.remove(&id) {
                return (st, Ok(()));
            }
            if let Some(msg) = st.commits.failed.remove(&id) {
                return (st, Err(Failure::new(FailureKind::Io, msg)));
            }
            if !st.commits.busy {
                let (g, led) = self.lead(st);
                st = g;
                if led {
                    woken = false;
                    continue;
                }
            }
            if woken {
                st.commits.idle_wakeups += 1;
            }
            // Asleep until told (a park's wake-up is never lost: an unpark before the park
            // makes it return at once), the lock let go first.
            let wake = std::mem::take(&mut st.commits.to_wake);
            st.commits.parked += 1;
            drop(st);
            wake.iter().for_each(Thread::unpark);
            let slept = std::time::Instant::now();
            std::thread::park_timeout(RECHECK);
            woken = slept.elapsed() < RECHECK;
            st = self.lock();
            st.commits.parked -= 1;
        }
    }

    /// H12: commits one transaction for the queue (if one can go): its changes in memory,
    /// then the primary's sync (and the legs', H2) with the state unlocked. True if it
    /// granted or failed any request.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) -> (MutexGuard<'a, State>, bool) {
        let before = st.commits.queue.len();
        let txn = match st.collect_txn() {
            Ok(Some(t)) => t,
            Ok(None) => {
                let moved = st.commits.queue.len() != before;
                if moved {
                    self.told(&st);
                }
                return (st, moved);
            }
            Err(f) => {
                let ids: Vec<u64> = st.commits.queue.iter().map(|w| w.id).collect();
                st.fail(&ids, &f);
                self.told(&st);
                return (st, true);
            }
        };
        // The bits changed so far go to the primary's device (paged store); one sync then
        // makes them durable.
        let pages = match st.mirror.bitmaps.prepare_sync() {
            Ok(p) => p,
            Err(e) => {
                if let Some(c) = txn.covered {
                    st.al.flush_failed(c);
                }
                let f = Failure::io(format!("writing bitmaps of primary {}", self.name), &e);
                st.fail(&txn.ids, &f);
                self.told(&st);
                return (st, true);
            }
        };
        let legs = if txn.covered.is_some() {
            st.legs.clone()
        } else {
            Vec::new()
        };
        st.commits.busy = true;
        // H5/W6: an error this sync gets may be about writes a sync beside it counts durable:
        // while it runs, nothing written since the current `durable` is cleared.
        let since = st.al.sync_begin();
        // The requests an earlier transaction of this leader granted go now, not after this
        // sync (its own request may have had no room in that one).
        self.unlock(st);
        // H12: one sync of the primary (the bitmaps and, when the legs sync too, the data
        // of every write completed before it, on every leg in parallel).
        let (p, errs) = crate::engine::write::sync_parallel(&self.primary, &legs);
        let mut st = self.lock();
        st.commits.busy = false;
        let res = match p {
            Ok(()) => {
                st.mirror.bitmaps.synced(pages);
                let mut r = Ok(());
                for (s, e) in errs {
                    if let Err(f) = self.fracture(&mut st, s, "sync".into(), e) {
                        r = Err(f);
                    }
                }
                r
            }
            Err(e) => {
                st.mirror.bitmaps.sync_failed(pages);
                // W6: nothing written since the last good flush is ever cleared.
                st.al.pin_unflushed();
                Err(Failure::io(
                    format!("syncing bitmaps of primary {}", self.name),
                    &e,
                ))
            }
        };
        match res {
            Ok(()) => {
                if let Some(c) = txn.covered {
                    st.al.flush_done(c);
                }
                // H1: the marks are durable: the requests may write.
                st.al.insert(&txn.marks, Vec::new());
                st.counters.activations += txn.marks.len() as u64;
                st.counters.peak_hot = st.counters.peak_hot.max(st.al.len());
                st.grant(&txn.ids);
            }
            Err(f) => {
                if let Some(c) = txn.covered {
                    st.al.flush_failed(c);
                }
                (self.log)(&format!("error: {}", f.msg));
                st.fail(&txn.ids, &f);
            }
        }
        st.al.sync_end(since);
        self.flush_log(&mut st);
        self.told(&st);
        (st, true)
    }
}

impl Server {
    /// After a transaction changed the queue: threads waiting for any change are woken (the
    /// requests it granted or failed are woken one by one once the lock is let go).
    fn told(&self, st: &State) {
        if st.waiters > 0 {
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
impl Server {
    /// Requests waiting for a transaction now (tests).
    pub(crate) fn queued(&self) -> usize {
        self.lock().commits.queue.len()
    }

    /// Wake-ups of queued requests that had nothing to do (tests).
    pub(crate) fn idle_wakeups(&self) -> u64 {
        self.lock().commits.idle_wakeups
    }
}
