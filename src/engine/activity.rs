//! The activity log: the bounded set of hot extents whose regions stay marked in the
//! write-intent log while hosts write (DRBD's `al-extents`), as pure bookkeeping: which
//! extents are hot, in use, written since the legs were last synced, and which to evict.
//! No I/O here; `serve.rs` does the marking, syncing and clearing this plans.
//!
//! A server evicts without waiting for a sync: an extent it evicts *retires* (out of the
//! hot set, its bits still set) and is cleared once a sync that started after its last
//! write finished ([`ActivityLog::take_clean_retired`]), in the next transaction; a stream
//! evicts after its own sync ([`ActivityLog::evict`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Bytes per extent: DRBD's 4 MiB (never less than one region).
pub const EXTENT_BYTES: u64 = 4 << 20;

/// Default number of hot extents (DRBD's `al-extents` default: about 4.8 GiB hot).
pub const DEFAULT_HOT_EXTENTS: usize = 1237;

/// The fewest hot extents allowed: one maximal request (32 MiB) touches at most nine
/// 4 MiB extents, and a few requests must fit at once.
pub const MIN_HOT_EXTENTS: usize = 16;

/// A write into a cold extent follows a sequential writer when the extent before it was
/// used by one of the last this many requests.
const SEQUENTIAL_RECENT: u64 = 16;

/// Index of an extent (a run of regions of [`ActivityLog::extent_regions`] each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtentIdx(pub u64);

#[derive(Debug)]
struct Hot {
    /// Requests using the extent now (it cannot be evicted while any do).
    refs: u32,
    /// Logical clock of the last use, for least-recently-used eviction.
    last_use: u64,
    /// Flush epoch of the last completed write; `None` if never written while hot.
    dirty: Option<u64>,
    /// A write failed on the primary: its intents stay until the next command recovers.
    pinned: bool,
    /// Regions (absolute) written while hot, as sorted, merged runs.
    written: Vec<Range<u64>>,
    /// Regions written at a flush epoch not yet known durable on every leg, with that
    /// epoch: what a leg that fails now may have missed (H5's exact set).
    unsynced: Vec<(u64, Range<u64>)>,
    /// Fracture-log bits set ahead of the data for legs not receiving writes (slot, regions
    /// that were clear before); those never written are cleared again at eviction.
    ahead: Vec<(u32, Range<u64>)>,
}

/// What making a set of extents hot needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every extent is hot: no metadata I/O.
    Ready,
    /// Mark `cold` (and clear `evict` to make room) in one bitmap flush; if `sync`, the legs
    /// must be synced first because an evicted extent holds data not yet durable.
    Activate {
        cold: Vec<ExtentIdx>,
        evict: Vec<ExtentIdx>,
        sync: bool,
    },
    /// Not enough idle extents to evict: wait until a request finishes.
    Wait,
}

/// An extent leaving the hot set, with what its clear must trim.
#[derive(Debug)]
pub struct Evicted {
    pub regions: Range<u64>,
    /// Fracture bits set ahead that no write used: (slot, regions).
    pub unwritten_ahead: Vec<(u32, Range<u64>)>,
}

#[derive(Debug)]
#[allow(clippy::len_without_is_empty)]
pub struct ActivityLog {
    capacity: usize,
    extent_regions: u64,
    /// Extent 0 starts at this region (0 for a server; a stream's first region, so its
    /// extents are its write-intent windows).
    base: u64,
    /// Regions at and past this one are never marked (the image's end, or a stream's).
    region_count: u64,
    hot: HashMap<ExtentIdx, Hot>,
    /// Extents out of the hot set whose bits are still set: cleared once their data is
    /// durable on every leg (W2); a request wanting one takes it back without any I/O.
    retired: HashMap<ExtentIdx, Hot>,
    clock: u64,
    /// Current flush epoch: bumped when a flush starts.
    epoch: u64,
    /// Writes completed at an epoch below this are durable on every leg.
    durable: u64,
    /// Requests and flushes in progress, by the value of `durable` when they began (with a
    /// count): a leg failing in one of them may miss writes a flush running beside it has
    /// since counted durable (an error reported to one caller only, as Linux reports a
    /// writeback error to one fsync), so the unsynced runs are kept back to the oldest.
    begun: BTreeMap<u64, usize>,
    /// Flushes in progress: covered epoch -> the `durable` they began at.
    flushing: HashMap<u64, u64>,
    /// Syncs in progress (flushes, activity-log transactions), by the value of `durable`
    /// when they began (with a count): the error one of them may yet get can be about a
    /// write a sync beside it counted durable (Linux reports a writeback error to one fsync).
    syncing: BTreeMap<u64, usize>,
    /// Epoch of the last write that completed (H11); `None` before the first.
    last_write: Option<u64>,
}

impl ActivityLog {
    pub fn new(
        capacity: usize,
        extent_bytes: u64,
        region_size: u64,
        region_count: u64,
    ) -> ActivityLog {
        ActivityLog {
            capacity: capacity.max(1),
            extent_regions: (extent_bytes / region_size).max(1),
            base: 0,
            region_count,
            hot: HashMap::new(),
            retired: HashMap::new(),
            clock: 0,
            epoch: 0,
            durable: 0,
            begun: BTreeMap::new(),
            flushing: HashMap::new(),
            syncing: BTreeMap::new(),
            last_write: None,
        }
    }

    /// The log of a stream: extents of one write-intent window each, starting at the
    /// stream's first region and never reaching `limit` (where the stream ends).
    pub fn for_stream(window_regions: u64, first: u64, limit: u64) -> ActivityLog {
        ActivityLog {
            capacity: 1,
            extent_regions: window_regions.max(1),
            base: first,
            region_count: limit,
            hot: HashMap::new(),
            retired: HashMap::new(),
            clock: 0,
            epoch: 0,
            durable: 0,
            begun: BTreeMap::new(),
            flushing: HashMap::new(),
            syncing: BTreeMap::new(),
            last_write: None,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A stream keeps hot only the extents its current chunk needs.
    pub fn set_capacity(&mut self, n: usize) {
        self.capacity = n.max(1);
    }

    /// The region where marking stops.
    pub fn limit(&self) -> u64 {
        self.region_count
    }

    /// Moves the limit (only while nothing is hot: extents already marked would otherwise
    /// cover less than [`Self::regions_of`] says).
    pub fn set_limit(&mut self, limit: u64) {
        assert!(self.hot.is_empty(), "limit moved with hot extents");
        self.region_count = limit;
    }

    pub fn len(&self) -> usize {
        self.hot.len()
    }

    /// The extents covering `regions`.
    pub fn extents_of(&self, regions: &Range<u64>) -> Vec<ExtentIdx> {
        if regions.is_empty() {
            return Vec::new();
        }
        let start = regions.start.saturating_sub(self.base);
        let end = regions.end.saturating_sub(self.base).max(start + 1);
        let first = start / self.extent_regions;
        let last = (end - 1) / self.extent_regions;
        (first..=last).map(ExtentIdx).collect()
    }

    /// The regions of an extent (the last one clipped to the image).
    pub fn regions_of(&self, e: ExtentIdx) -> Range<u64> {
        let start = self.base + e.0 * self.extent_regions;
        start.min(self.region_count)..(start + self.extent_regions).min(self.region_count)
    }

    /// Every region of the hot set, as runs (what W4 puts in a failing leg's log).
    pub fn hot_regions(&self) -> Vec<Range<u64>> {
        let mut es: Vec<ExtentIdx> = self.hot.keys().copied().collect();
        es.sort();
        let mut out: Vec<Range<u64>> = Vec::new();
        for e in es {
            let r = self.regions_of(e);
            match out.last_mut() {
                Some(l) if l.end == r.start => l.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    /// The regions written since the last flush that completed on every leg (at a flush
    /// epoch not yet durable), as sorted, merged runs: with the requests in flight, exactly
    /// what a leg that stops receiving writes now may be missing (H5, W4). A region leaves
    /// this set only once a flush that started after its write completed has finished.
    pub fn unsynced_regions(&self) -> Vec<Range<u64>> {
        let floor = self.floor();
        let runs: Vec<Range<u64>> = self
            .hot
            .values()
            .chain(self.retired.values())
            .flat_map(|h| h.unsynced.iter())
            .filter(|(e, _)| *e >= floor)
            .map(|(_, r)| r.clone())
            .collect();
        crate::format::ranges::union(&runs, &[])
    }

    /// `want`, and when its last extent is cold but the one before it hot and among the
    /// last [`SEQUENTIAL_RECENT`] used (a sequential writer), up to `n` further extents that
    /// are cold and inside the image, and never more than a quarter of the hot set (a
    /// random writer over a small hot set would otherwise evict it for extents it never
    /// writes).
    pub fn with_read_ahead(&self, want: &[ExtentIdx], n: u64) -> Vec<ExtentIdx> {
        let mut out = want.to_vec();
        let Some(&last) = want.last() else {
            return out;
        };
        let n = n.min(self.capacity as u64 / 4);
        let sequential = last.0 > 0
            && !self.hot.contains_key(&last)
            && self
                .hot
                .get(&ExtentIdx(last.0 - 1))
                .is_some_and(|h| h.last_use + SEQUENTIAL_RECENT >= self.clock);
        if sequential {
            for k in 1..=n {
                let e = ExtentIdx(last.0 + k);
                if self.regions_of(e).is_empty() || self.hot.contains_key(&e) {
                    break;
                }
                out.push(e);
            }
        }
        out
    }

    /// What making `want` hot needs, without changing anything.
    pub fn plan(&self, want: &[ExtentIdx]) -> Plan {
        let cold: Vec<ExtentIdx> = want
            .iter()
            .copied()
            .filter(|e| !self.hot.contains_key(e))
            .collect();
        if cold.is_empty() {
            return Plan::Ready;
        }
        // Pinned extents (a primary failed there) never leave, so they do not count: a
        // host is never stalled by them. One request wider than the whole set may exceed it.
        let pinned = self.hot.values().filter(|h| h.pinned).count();
        let over =
            (self.hot.len() - pinned + cold.len()).saturating_sub(self.capacity.max(want.len()));
        let mut idle: Vec<(u64, ExtentIdx)> = self
            .hot
            .iter()
            .filter(|(e, h)| h.refs == 0 && !h.pinned && !want.contains(e))
            .map(|(e, h)| (h.last_use, *e))
            .collect();
        if idle.len() < over {
            return Plan::Wait;
        }
        idle.sort();
        let evict: Vec<ExtentIdx> = idle.into_iter().take(over).map(|(_, e)| e).collect();
        let sync = evict.iter().any(|e| !self.is_clean(*e));
        Plan::Activate { cold, evict, sync }
    }

    fn is_clean(&self, e: ExtentIdx) -> bool {
        self.hot[&e].dirty.is_none_or(|d| d < self.durable)
    }

    /// A server's eviction: `evict` (idle) leave the hot set at once, with no I/O; their
    /// bits stay set until [`Self::take_clean_retired`] gives them back for clearing.
    pub fn retire(&mut self, evict: &[ExtentIdx]) {
        for e in evict {
            if let Some(h) = self.hot.remove(e) {
                self.retired.insert(*e, h);
            }
        }
    }

    /// Takes back into the hot set those of `want` that retired and are not cleared yet:
    /// their bits are still durable (W1 holds with no I/O). Returns them.
    pub fn revive(&mut self, want: &[ExtentIdx]) -> Vec<ExtentIdx> {
        let mut out = Vec::new();
        for e in want {
            if let Some(mut h) = self.retired.remove(e) {
                h.last_use = self.clock;
                self.hot.insert(*e, h);
                out.push(*e);
            }
        }
        out
    }

    /// Whether an extent is retired and not yet cleared.
    pub fn is_retired(&self, e: ExtentIdx) -> bool {
        self.retired.contains_key(&e)
    }

    /// Whether some retired extent waits for a sync of the legs before it may be cleared.
    pub fn retired_unsynced(&self) -> bool {
        self.retired
            .values()
            .any(|h| !h.pinned && h.dirty.is_some_and(|d| d >= self.durable))
    }

    /// W2: the retired extents whose data is durable on every leg now (a sync that started
    /// after their last write finished), taken out to be cleared; pinned ones stay (W6).
    /// Not while a sync that began before that one is in progress ([`Self::sync_floor`]):
    /// the error it may yet get can be about those writes (H5, W6), and a leg failing then
    /// must find them in the unsynced set, the primary failing them their intents set.
    pub fn take_clean_retired(&mut self) -> Vec<Evicted> {
        let durable = self.sync_floor();
        let mut es: Vec<ExtentIdx> = self
            .retired
            .iter()
            .filter(|(_, h)| !h.pinned && h.dirty.is_none_or(|d| d < durable))
            .map(|(e, _)| *e)
            .collect();
        es.sort();
        es.into_iter()
            .filter_map(|e| {
                let h = self.retired.remove(&e)?;
                Some(Evicted {
                    regions: self.regions_of(e),
                    unwritten_ahead: unwritten(&h),
                })
            })
            .collect()
    }

    /// Makes `cold` hot (their bits are durable now), with the fracture bits set ahead.
    pub fn insert(&mut self, cold: &[ExtentIdx], ahead: Vec<(u32, Range<u64>)>) {
        for &e in cold {
            let r = self.regions_of(e);
            let mine = ahead
                .iter()
                .filter(|(_, a)| a.start < r.end && a.end > r.start)
                .map(|(s, a)| (*s, a.start.max(r.start)..a.end.min(r.end)))
                .collect();
            self.hot.insert(
                e,
                Hot {
                    refs: 0,
                    last_use: self.clock,
                    dirty: None,
                    pinned: false,
                    written: Vec::new(),
                    unsynced: Vec::new(),
                    ahead: mine,
                },
            );
        }
    }

    /// Fracture bits just set ahead for a leg that stopped receiving writes mid-stream (W4:
    /// the rest of the window): as for an activation's, those in regions no write uses while
    /// the extent stays hot are cleared again at eviction.
    pub fn add_ahead(&mut self, ahead: &[(u32, Range<u64>)]) {
        let spans: Vec<(ExtentIdx, Range<u64>)> =
            self.hot.keys().map(|e| (*e, self.regions_of(*e))).collect();
        for (e, r) in spans {
            let h = self.hot.get_mut(&e).unwrap();
            for (s, a) in ahead {
                if a.start < r.end && a.end > r.start {
                    h.ahead.push((*s, a.start.max(r.start)..a.end.min(r.end)));
                }
            }
        }
    }

    /// Takes `evict` out of the hot set (their data is durable; their bits are cleared in
    /// the same flush that marks the new ones).
    pub fn evict(&mut self, evict: &[ExtentIdx]) -> Vec<Evicted> {
        evict
            .iter()
            .filter_map(|e| {
                let h = self.hot.remove(e)?;
                Some(Evicted {
                    regions: self.regions_of(*e),
                    unwritten_ahead: unwritten(&h),
                })
            })
            .collect()
    }

    /// Every hot (or retired) extent that may be cleared at a clean stop (all but pinned
    /// ones), taken out of the set. Only call after a sync of every leg.
    pub fn drain_clean(&mut self) -> Vec<Evicted> {
        let retired: Vec<ExtentIdx> = self
            .retired
            .iter()
            .filter(|(_, h)| !h.pinned)
            .map(|(e, _)| *e)
            .collect();
        self.revive(&retired);
        let mut es: Vec<ExtentIdx> = self
            .hot
            .iter()
            .filter(|(_, h)| !h.pinned && h.refs == 0)
            .map(|(e, _)| *e)
            .collect();
        es.sort();
        self.evict(&es)
    }

    /// A request starts using `want` (all hot).
    pub fn acquire(&mut self, want: &[ExtentIdx]) {
        self.clock += 1;
        for e in want {
            let h = self.hot.get_mut(e).expect("acquire of a cold extent");
            h.refs += 1;
            h.last_use = self.clock;
        }
    }

    /// A request using `want` finished; `written` regions were written (on the primary at
    /// least) at the current epoch.
    pub fn release(&mut self, want: &[ExtentIdx], written: Option<&Range<u64>>) {
        let (epoch, floor) = (self.epoch, self.floor());
        for e in want {
            let er = self.regions_of(*e);
            let h = self.hot.get_mut(e).expect("release of a cold extent");
            h.refs -= 1;
            if let Some(w) = written {
                let part = w.start.max(er.start)..w.end.min(er.end);
                if !part.is_empty() {
                    self.last_write = Some(epoch);
                    h.dirty = Some(epoch);
                    add_run(&mut h.written, part.clone());
                    // Bounded: runs of one extent, of the two or three epochs not durable.
                    h.unsynced.retain(|(e, _)| *e >= floor);
                    add_epoch_run(&mut h.unsynced, epoch, part);
                }
            }
        }
    }

    /// The primary failed a write in `want`: those extents keep their intents (W6).
    pub fn pin(&mut self, want: &[ExtentIdx]) {
        for e in want {
            if let Some(h) = self.hot.get_mut(e) {
                h.pinned = true;
            }
        }
    }

    /// The primary failed a sync: every extent written since the last good flush may be
    /// missing data on the primary, so all of them keep their intents (W6). Since an
    /// earlier one while the failed sync (or another request or flush) that began before
    /// it is in progress ([`Self::floor`]): its error may be about writes a sync beside it
    /// counted durable. Call before that sync's [`Self::flush_failed`].
    pub fn pin_unflushed(&mut self) {
        let durable = self.floor();
        for h in self.hot.values_mut().chain(self.retired.values_mut()) {
            if h.dirty.is_some_and(|d| d >= durable) {
                h.pinned = true;
            }
        }
    }

    pub fn pinned(&self) -> usize {
        self.hot
            .values()
            .chain(self.retired.values())
            .filter(|h| h.pinned)
            .count()
    }

    /// A request starts (its writes may fail on a leg): returns the token for
    /// [`Self::end`].
    pub fn begin(&mut self) -> u64 {
        *self.begun.entry(self.durable).or_default() += 1;
        self.durable
    }

    /// The request that began with `since` finished.
    pub fn end(&mut self, since: u64) {
        if let Some(n) = self.begun.get_mut(&since) {
            *n -= 1;
            if *n == 0 {
                self.begun.remove(&since);
            }
        }
    }

    /// Where what a failing leg may miss starts: the `durable` of the oldest request or
    /// flush in progress (they may yet report an error about writes a flush beside them
    /// counted durable), or `durable`.
    pub fn floor(&self) -> u64 {
        self.begun
            .keys()
            .next()
            .map_or(self.durable, |b| (*b).min(self.durable))
    }

    /// H11: whether every write completed so far is durable on every leg: each completed at
    /// an epoch a finished flush covered, i.e. before that flush *started* (a write that
    /// completed while the last flush ran is at the epoch after the one it covered, and is
    /// not). A flush arriving now then has nothing to sync.
    pub fn all_durable(&self) -> bool {
        self.last_write.is_none_or(|e| e < self.durable)
    }

    /// A sync starts (of the primary, or of every leg): returns the token for
    /// [`Self::sync_end`]. While it runs, nothing written since the current `durable` is
    /// cleared ([`Self::take_clean_retired`]) and a failing leg may miss it (H5).
    pub fn sync_begin(&mut self) -> u64 {
        *self.syncing.entry(self.durable).or_default() += 1;
        self.begin()
    }

    /// The sync that began with `since` returned.
    pub fn sync_end(&mut self, since: u64) {
        if let Some(n) = self.syncing.get_mut(&since) {
            *n -= 1;
            if *n == 0 {
                self.syncing.remove(&since);
            }
        }
        self.end(since);
    }

    /// The `durable` of the oldest sync in progress, or `durable`: a write completed at an
    /// epoch below it is durable on every leg, and no error still to come is about it.
    pub fn sync_floor(&self) -> u64 {
        self.syncing
            .keys()
            .next()
            .map_or(self.durable, |b| (*b).min(self.durable))
    }

    /// A flush (sync of every leg) starts; returns the token to give [`Self::flush_done`]
    /// (or [`Self::flush_failed`]).
    pub fn flush_started(&mut self) -> u64 {
        let covered = self.epoch;
        self.epoch += 1;
        let since = self.sync_begin();
        self.flushing.insert(covered, since);
        covered
    }

    /// The flush that started with `covered` finished on every leg.
    pub fn flush_done(&mut self, covered: u64) {
        self.durable = self.durable.max(covered + 1);
        if let Some(since) = self.flushing.remove(&covered) {
            self.sync_end(since);
        }
    }

    /// The flush that started with `covered` failed (the primary): nothing is durable.
    pub fn flush_failed(&mut self, covered: u64) {
        if let Some(since) = self.flushing.remove(&covered) {
            self.sync_end(since);
        }
    }
}

fn unwritten(h: &Hot) -> Vec<(u32, Range<u64>)> {
    let mut out = Vec::new();
    for (s, a) in &h.ahead {
        let mut pos = a.start;
        for w in &h.written {
            if w.end <= pos || w.start >= a.end {
                continue;
            }
            if w.start > pos {
                out.push((*s, pos..w.start));
            }
            pos = pos.max(w.end);
        }
        if pos < a.end {
            out.push((*s, pos..a.end));
        }
    }
    out
}

/// Adds `r` written at `epoch`, merged with the runs of the same epoch it touches.
fn add_epoch_run(runs: &mut Vec<(u64, Range<u64>)>, epoch: u64, r: Range<u64>) {
    let mut same: Vec<Range<u64>> = Vec::new();
    runs.retain(|(e, x)| {
        let mine = *e == epoch;
        if mine {
            same.push(x.clone());
        }
        !mine
    });
    add_run(&mut same, r);
    runs.extend(same.into_iter().map(|x| (epoch, x)));
}

fn add_run(runs: &mut Vec<Range<u64>>, r: Range<u64>) {
    runs.push(r);
    runs.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(runs.len());
    for r in runs.drain(..) {
        match out.last_mut() {
            Some(l) if l.end >= r.start => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    *runs = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 KiB regions: 64 regions per extent.
    fn log(cap: usize) -> ActivityLog {
        ActivityLog::new(cap, EXTENT_BYTES, 64 << 10, 64 * 100)
    }

    fn activate(al: &mut ActivityLog, want: &[ExtentIdx]) -> Plan {
        let p = al.plan(want);
        if let Plan::Activate { cold, evict, .. } = &p {
            al.evict(evict);
            al.insert(cold, Vec::new());
        }
        p
    }

    #[test]
    fn a_write_into_a_hot_extent_needs_no_metadata_io_and_a_cold_one_one_activation() {
        let mut al = log(4);
        let e = al.extents_of(&(10..20));
        assert_eq!(e, vec![ExtentIdx(0)]);
        assert!(
            matches!(activate(&mut al, &e), Plan::Activate { ref cold, ref evict, sync: false } if cold == &e && evict.is_empty())
        );
        assert_eq!(al.plan(&e), Plan::Ready);
        assert_eq!(al.extents_of(&(60..70)), vec![ExtentIdx(0), ExtentIdx(1)]);
    }

    #[test]
    fn the_least_recently_used_idle_extent_is_evicted_and_a_dirty_one_needs_a_sync_first() {
        let mut al = log(2);
        for e in [0, 1] {
            activate(&mut al, &[ExtentIdx(e)]);
            al.acquire(&[ExtentIdx(e)]);
            al.release(&[ExtentIdx(e)], Some(&(e * 64..e * 64 + 1)));
        }
        // Extent 0 used again: extent 1 is now the least recently used.
        al.acquire(&[ExtentIdx(0)]);
        al.release(&[ExtentIdx(0)], None);
        match al.plan(&[ExtentIdx(2)]) {
            Plan::Activate { evict, sync, .. } => {
                assert_eq!(evict, vec![ExtentIdx(1)]);
                assert!(sync, "extent 1 was written since the last flush");
            }
            p => panic!("{p:?}"),
        }
        let t = al.flush_started();
        al.flush_done(t);
        match al.plan(&[ExtentIdx(2)]) {
            Plan::Activate { sync, .. } => assert!(!sync, "durable after the flush"),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn a_write_completed_after_a_flush_started_is_not_covered_by_it() {
        let mut al = log(1);
        activate(&mut al, &[ExtentIdx(0)]);
        al.acquire(&[ExtentIdx(0)]);
        let t = al.flush_started();
        al.release(&[ExtentIdx(0)], Some(&(0..1)));
        al.flush_done(t);
        assert!(matches!(
            al.plan(&[ExtentIdx(5)]),
            Plan::Activate { sync: true, .. }
        ));
    }

    #[test]
    fn a_flush_is_needed_after_a_write_completed_while_the_last_flush_ran_and_never_after_an_empty_one(
    ) {
        let mut al = log(4);
        assert!(al.all_durable(), "nothing written yet");
        activate(&mut al, &[ExtentIdx(0), ExtentIdx(1)]);
        al.acquire(&[ExtentIdx(0)]);
        al.release(&[ExtentIdx(0)], Some(&(0..1)));
        assert!(!al.all_durable());
        // H11: a write completing while a flush runs (after its syncs may have returned) is
        // not covered by it, though it completed before that flush finished.
        let f1 = al.flush_started();
        al.acquire(&[ExtentIdx(1)]);
        al.release(&[ExtentIdx(1)], Some(&(64..65)));
        al.flush_done(f1);
        assert!(
            !al.all_durable(),
            "the write beside the flush is not durable"
        );
        let f2 = al.flush_started();
        assert!(!al.all_durable(), "durable only once the flush finished");
        al.flush_done(f2);
        assert!(al.all_durable());
        // A request that wrote nothing (refused, or failed on the primary) changes nothing.
        al.acquire(&[ExtentIdx(0)]);
        al.release(&[ExtentIdx(0)], None);
        assert!(al.all_durable());
        // A failed flush makes nothing durable (W6): the next one syncs.
        al.acquire(&[ExtentIdx(0)]);
        al.release(&[ExtentIdx(0)], Some(&(1..2)));
        let f3 = al.flush_started();
        al.flush_failed(f3);
        assert!(!al.all_durable());
        // Two flushes at once, the later one finishing first, covers what came before it.
        let f4 = al.flush_started();
        let f5 = al.flush_started();
        al.flush_done(f5);
        assert!(al.all_durable());
        al.flush_done(f4);
        assert!(al.all_durable());
    }

    #[test]
    fn extents_in_use_or_pinned_are_never_evicted_so_a_full_busy_set_waits() {
        let mut al = log(2);
        activate(&mut al, &[ExtentIdx(0), ExtentIdx(1)]);
        al.acquire(&[ExtentIdx(0)]);
        al.acquire(&[ExtentIdx(1)]);
        assert_eq!(al.plan(&[ExtentIdx(3)]), Plan::Wait);
        al.release(&[ExtentIdx(0)], None);
        assert!(
            matches!(al.plan(&[ExtentIdx(3)]), Plan::Activate { ref evict, .. } if evict == &[ExtentIdx(0)])
        );
        al.release(&[ExtentIdx(1)], None);
        al.pin(&[ExtentIdx(1)]);
        let left = al.drain_clean();
        assert_eq!(left.len(), 1, "the pinned extent stays for recovery");
        assert_eq!(al.pinned(), 1);
    }

    #[test]
    fn pinned_extents_and_a_request_wider_than_the_set_never_stall_a_host() {
        let mut al = log(2);
        activate(&mut al, &[ExtentIdx(0), ExtentIdx(1)]);
        al.pin(&[ExtentIdx(0), ExtentIdx(1)]);
        assert!(
            matches!(al.plan(&[ExtentIdx(5)]), Plan::Activate { ref evict, .. } if evict.is_empty())
        );
        let mut al = log(2);
        let wide: Vec<ExtentIdx> = (0..4).map(ExtentIdx).collect();
        assert!(matches!(al.plan(&wide), Plan::Activate { ref cold, .. } if cold.len() == 4));
        activate(&mut al, &wide);
        assert_eq!(al.plan(&wide), Plan::Ready);
    }

    #[test]
    fn a_sequential_writer_gets_the_next_extents_marked_with_the_one_it_needs() {
        let mut al = ActivityLog::new(16, EXTENT_BYTES, 64 << 10, 64 * 6);
        // Random: nothing extra.
        assert_eq!(al.with_read_ahead(&[ExtentIdx(2)], 3), vec![ExtentIdx(2)]);
        activate(&mut al, &[ExtentIdx(0)]);
        // Following a hot extent: the next ones too, but never past the image.
        assert_eq!(
            al.with_read_ahead(&[ExtentIdx(1)], 3),
            vec![ExtentIdx(1), ExtentIdx(2), ExtentIdx(3), ExtentIdx(4)]
        );
        activate(&mut al, &[ExtentIdx(4)]);
        assert_eq!(
            al.with_read_ahead(&[ExtentIdx(1)], 3),
            vec![ExtentIdx(1), ExtentIdx(2), ExtentIdx(3)]
        );
        assert_eq!(al.with_read_ahead(&[ExtentIdx(5)], 3), vec![ExtentIdx(5)]);
    }

    #[test]
    fn fracture_bits_set_ahead_are_trimmed_to_the_regions_never_written() {
        let mut al = log(4);
        al.insert(&[ExtentIdx(0)], vec![(1, 0..64), (2, 10..20)]);
        al.acquire(&[ExtentIdx(0)]);
        al.release(&[ExtentIdx(0)], Some(&(5..12)));
        al.acquire(&[ExtentIdx(0)]);
        al.release(&[ExtentIdx(0)], Some(&(30..31)));
        let ev = al.evict(&[ExtentIdx(0)]);
        assert_eq!(
            ev[0].unwritten_ahead,
            vec![(1, 0..5), (1, 12..30), (1, 31..64), (2, 12..20)]
        );
    }

    #[test]
    fn a_streams_extents_are_its_windows_from_its_first_region_to_its_end() {
        let mut al = ActivityLog::for_stream(16, 5, 40);
        assert_eq!(al.extents_of(&(5..9)), vec![ExtentIdx(0)]);
        assert_eq!(al.extents_of(&(20..22)), vec![ExtentIdx(0), ExtentIdx(1)]);
        assert_eq!(al.regions_of(ExtentIdx(0)), 5..21);
        assert_eq!(al.regions_of(ExtentIdx(2)), 37..40);
        // With a capacity of what the chunk needs, the old window goes as the new comes.
        activate(&mut al, &[ExtentIdx(0)]);
        al.set_capacity(1);
        assert!(
            matches!(al.plan(&[ExtentIdx(1)]), Plan::Activate { ref evict, .. } if evict == &[ExtentIdx(0)])
        );
    }

    #[test]
    fn the_hot_regions_are_merged_runs_clipped_to_the_image() {
        let mut al = ActivityLog::new(8, EXTENT_BYTES, 64 << 10, 64 * 3 + 5);
        activate(&mut al, &[ExtentIdx(0), ExtentIdx(1), ExtentIdx(3)]);
        assert_eq!(al.hot_regions(), vec![0..128, 192..197]);
    }

    #[test]
    fn a_flush_finishing_beside_a_failing_one_does_not_hide_the_writes_from_the_failing_leg() {
        let mut al = log(8);
        let e = al.extents_of(&(0..64));
        activate(&mut al, &e);
        al.acquire(&e);
        al.release(&e, Some(&(5..6)));
        // F1 and F2 both sync; the leg's error goes to F1 only (Linux reports it once).
        let f1 = al.flush_started();
        let f2 = al.flush_started();
        al.flush_done(f2);
        // F1's leg fails now: region 5 may be missing on it although F2 finished.
        assert_eq!(al.unsynced_regions(), vec![5..6]);
        al.flush_failed(f1);
        assert!(
            al.unsynced_regions().is_empty(),
            "nothing in progress any more"
        );
        // A request in progress keeps it the same way.
        al.acquire(&e);
        al.release(&e, Some(&(9..10)));
        let r = al.begin();
        let f = al.flush_started();
        al.flush_done(f);
        assert_eq!(al.unsynced_regions(), vec![9..10]);
        al.end(r);
        assert!(al.unsynced_regions().is_empty());
    }

    #[test]
    fn a_retired_extent_is_cleared_only_once_every_sync_that_began_before_its_flush_returned() {
        let mut al = log(4);
        activate(&mut al, &[ExtentIdx(0)]);
        al.acquire(&[ExtentIdx(0)]);
        al.release(&[ExtentIdx(0)], Some(&(0..1)));
        // F1 syncs; region 0's lost writeback may be reported to it alone.
        let f1 = al.flush_started();
        al.retire(&[ExtentIdx(0)]);
        let f2 = al.flush_started();
        al.flush_done(f2);
        assert!(
            al.take_clean_retired().is_empty(),
            "F1 may still report region 0 lost"
        );
        assert_eq!(al.unsynced_regions(), vec![0..1]);
        // A request in progress does not hold it (a write reports its own error).
        let r = al.begin();
        al.flush_failed(f1);
        assert_eq!(al.take_clean_retired().len(), 1);
        al.end(r);
    }

    #[test]
    fn the_unsynced_set_holds_only_writes_no_finished_flush_covers() {
        let mut al = log(8);
        let e = al.extents_of(&(0..200));
        activate(&mut al, &e);
        al.acquire(&e);
        al.release(&e, Some(&(10..20)));
        al.acquire(&e);
        al.release(&e, Some(&(70..75)));
        assert_eq!(al.unsynced_regions(), vec![10..20, 70..75]);
        // A flush starts; a write completing during it is not covered by it.
        let covered = al.flush_started();
        al.acquire(&e);
        al.release(&e, Some(&(19..30)));
        al.flush_done(covered);
        assert_eq!(
            al.unsynced_regions(),
            vec![19..30],
            "only the write after the flush began"
        );
        let covered = al.flush_started();
        al.flush_done(covered);
        assert!(al.unsynced_regions().is_empty());
        // A flush that never finishes (a leg failed it) keeps everything.
        al.acquire(&e);
        al.release(&e, Some(&(100..101)));
        let _ = al.flush_started();
        assert_eq!(al.unsynced_regions(), vec![100..101]);
    }
}
