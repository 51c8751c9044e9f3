//! Mirrored writes of a stream: the write-intent window kept by the activity log (the same
//! bookkeeping `serve` uses, with one window per extent and only the current one hot), legs
//! written in parallel, the flush policy, and what happens when a leg or the primary fails
//! mid-write.
//!
//! Rules (tagged at the lines that keep them):
//! - W1 A region's write-intent bit is durable before any leg is written in that region;
//!   otherwise a crash could leave legs differing in a region no log names.
//! - W2 A write-intent bit is cleared only after the data written in its region is durable on
//!   every leg that receives writes; otherwise a crash after the clear loses the difference.
//! - W3 Writes to a leg that does not receive writes (fractured) are recorded in its fracture
//!   log durably together with W1, i.e. before the data is written anywhere; otherwise a
//!   resync would miss them.
//! - W4 A leg that fails gets in its fracture log, durably, before its state changes and
//!   before any write-intent bit is cleared, what it may be missing: the regions written
//!   since the legs' last sync, and the rest of the current window, which the stream writes
//!   next (those bits are set ahead as W3's, and trimmed where nothing came); otherwise what
//!   it missed is forgotten. Not the whole window: after a sync, a failure costs only what
//!   the leg missed.
//! - W5 A command reports success only after W2's clear has been flushed; otherwise the next
//!   command recovers regions for nothing (and says the mirror was not closed cleanly).
//! - W6 After a primary failure nothing is cleared: the next command recovers (R1..R3);
//!   otherwise regions the primary may not hold would look clean.
//! - W7 A region is marked in the primary's written map (format 1.3) durably before any leg
//!   is written in it, in W1's flush (so it costs no sync of its own), and the mark is
//!   never cleared (only `create` makes a new map); otherwise a crash could leave data the
//!   primary holds in a chunk recorded as never written, which attach and verify skip.
//!   Zeros and trims count as writes.
//!
//! With `--min-in-sync N` (Q1 of `quorum.rs`) a stream starts only with N legs in sync, and
//! ends at the first chunk or sync after which fewer are: the logs are kept as above, and
//! only bytes synced while N were in sync are reported written.

use super::activity::{ActivityLog, Evicted, Plan};
use super::plan;
use crate::device::read_full;
use crate::device::Device;
use crate::engine::uuid_str;
use crate::engine::FlushPolicy;
use crate::engine::LegFailure;
use crate::engine::Mirror;
use crate::error::Error;
use crate::error::Result;
use crate::format::layout::BitmapId;
use crate::format::layout::SlotIdx;
use crate::format::layout::MIB;
use crate::format::ranges::union;
use crate::format::LegState;
use std::io;
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

/// Bytes read from the input and written to every leg at once.
pub const CHUNK: usize = 4 << 20;

/// Bytes of write-intent window marked at once: metadata syncs grow with the write's size
/// divided by this, never with the number of chunks.
pub const WINDOW: u64 = 64 * MIB;

/// Result of a mirrored write.
#[derive(Debug, Default)]
pub struct WriteReport {
    pub bytes: u64,
    pub newly_fractured: Vec<u32>,
}

/// State of one streaming write.
pub(super) struct Stream {
    /// The windows marked in the write-intent log by this command, with the fracture-log
    /// bits set ahead of the data for legs not receiving writes (cleared again when their
    /// window goes, where nothing was written).
    al: ActivityLog,
    /// Writes since the legs were last synced.
    unsynced: bool,
    /// The first region the stream has not written yet (where W4's bits ahead start).
    next: u64,
}

impl Mirror {
    /// Syncs the primary and every active leg in parallel; failed legs are fractured.
    pub(super) fn sync_legs(
        &mut self,
        legs: &mut Vec<(u32, Arc<dyn Device>)>,
        st: &mut Stream,
    ) -> Result<()> {
        if !st.unsynced {
            return Ok(());
        }
        let covered = st.al.flush_started();
        let (pres, errs) = sync_parallel(&self.image.dev, legs);
        if let Err(e) = pres {
            // W6: leave the write-intent log as it is.
            return Err(self.meta_err("syncing data", &e));
        }
        for (s, err) in errs {
            legs.retain(|(x, _)| *x != s);
            let f = LegFailure {
                slot: s,
                what: "sync".into(),
                err,
            };
            self.fail_in_stream(f, st)?;
        }
        st.unsynced = false;
        st.al.flush_done(covered);
        Ok(())
    }

    /// W4: a leg failed mid-stream: its log gets what was written since the last sync and,
    /// set ahead (trimmed at the window's end where nothing came), the rest of the window.
    fn fail_in_stream(&mut self, f: LegFailure, st: &mut Stream) -> Result<()> {
        let mut ahead = Vec::new();
        for r in st.al.hot_regions() {
            let rest = r.start.max(st.next)..r.end;
            if rest.is_empty() {
                continue;
            }
            let clear = self.unlogged_runs(f.slot, rest)?;
            ahead.extend(clear.into_iter().map(|c| (f.slot, c)));
        }
        let rest: Vec<Range<u64>> = ahead.iter().map(|(_, r)| r.clone()).collect();
        let missed = union(&st.al.unsynced_regions(), &rest);
        st.al.add_ahead(&ahead);
        self.fracture_on_error(f, &missed)
    }

    /// Makes sure `regions` are marked in the write-intent log before data goes there: the
    /// window holding them becomes hot, the previous one goes (W2: after a sync) in the
    /// same bitmap flush.
    pub(super) fn ensure_marked(
        &mut self,
        regions: Range<u64>,
        legs: &mut Vec<(u32, Arc<dyn Device>)>,
        st: &mut Stream,
    ) -> Result<()> {
        if regions.end > st.al.limit() {
            // W1 needs every region of this chunk marked, even if the input turned out
            // longer than announced: retire the windows (their data made durable first),
            // then mark on to the end of the image.
            self.retire_windows(legs, st)?;
            st.al.set_limit(self.geometry().region_count);
        }
        let want = st.al.extents_of(&regions);
        st.al.set_capacity(want.len());
        let (cold, evict, sync) = match st.al.plan(&want) {
            Plan::Ready => return Ok(()),
            Plan::Activate { cold, evict, sync } => (cold, evict, sync),
            Plan::Wait => unreachable!("a stream holds no extent between chunks"),
        };
        if sync {
            // W2: the data under the old window must be durable before its bits go.
            self.sync_legs(legs, st)?;
        }
        for ev in st.al.evict(&evict) {
            self.clear_evicted(ev)?;
        }
        let mut ahead = Vec::new();
        for &e in &cold {
            ahead.extend(self.mark_intents(st.al.regions_of(e))?);
        }
        self.flush_bitmaps()?;
        st.al.insert(&cold, ahead);
        Ok(())
    }

    /// W2: syncs, then clears every window of the stream (and the fracture bits set ahead
    /// that no write used) in one flush.
    fn retire_windows(
        &mut self,
        legs: &mut Vec<(u32, Arc<dyn Device>)>,
        st: &mut Stream,
    ) -> Result<()> {
        self.sync_legs(legs, st)?;
        let evicted = st.al.drain_clean();
        if evicted.is_empty() {
            return Ok(());
        }
        for ev in evicted {
            self.clear_evicted(ev)?;
        }
        self.flush_bitmaps()
    }

    /// W1 alone: marks `regions` in the write-intent log (the caller flushes).
    pub(super) fn mark_write_intents(&mut self, regions: Range<u64>) -> Result<()> {
        self.mark_written(regions.clone())?;
        self.bitmaps
            .set_range(BitmapId::WriteIntent, regions, true)
            .map(|_| ())
            .map_err(|e| self.meta_err("marking write intents", &e))
    }

    /// W7: marks `regions` in the written map, in the flush the caller makes for W1 (a chunk
    /// already marked changes nothing, so the steady state adds no page and no sync).
    pub(super) fn mark_written(&mut self, regions: Range<u64>) -> Result<()> {
        self.bitmaps
            .mark_written(regions)
            .map(|_| ())
            .map_err(|e| self.meta_err("marking the written map", &e))
    }

    /// W1 + W3: marks `regions` in the write-intent log and, for every leg not receiving
    /// writes, in its fracture log where clear (in the same flush, done by the caller: before
    /// any data there is written). Returns the fracture bits set: (slot, regions).
    pub(super) fn mark_intents(&mut self, regions: Range<u64>) -> Result<Vec<(u32, Range<u64>)>> {
        self.mark_write_intents(regions.clone())?;
        let mut ahead = Vec::new();
        for s in 0..self.geometry().slots {
            let leg = &self.sb().legs[s as usize];
            if leg.state() == LegState::Empty || leg.state().receives_writes() {
                continue;
            }
            for r in self.unlogged_runs(s, regions.clone())? {
                self.mark_logged(s, r.clone())?;
                ahead.push((s, r));
            }
        }
        Ok(ahead)
    }

    /// W2 (after the caller's sync): clears an extent leaving the activity log, and the
    /// fracture bits set ahead for it that no write used (the caller flushes).
    pub(super) fn clear_evicted(&mut self, ev: Evicted) -> Result<()> {
        self.bitmaps
            .set_range(BitmapId::WriteIntent, ev.regions, false)
            .map_err(|e| self.meta_err("clearing write intents", &e))?;
        for (s, r) in ev.unwritten_ahead {
            self.bitmaps
                .set_range(BitmapId::Fracture(SlotIdx(s)), r, false)
                .map_err(|e| self.meta_err("trimming a fracture log", &e))?;
        }
        Ok(())
    }

    /// Sub-ranges of `within` not in `slot`'s fracture log.
    pub(super) fn unlogged_runs(
        &mut self,
        slot: u32,
        within: Range<u64>,
    ) -> Result<Vec<Range<u64>>> {
        let mut out = Vec::new();
        let mut pos = within.start;
        while pos < within.end {
            match self.next_logged_run(slot, pos, u64::MAX)? {
                Some(r) if r.start < within.end => {
                    if r.start > pos {
                        out.push(pos..r.start);
                    }
                    pos = r.end;
                }
                _ => {
                    out.push(pos..within.end);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Streams `input` into the data area at `offset`, mirrored to every leg that receives
    /// writes. At most `max_len` bytes are taken; `known_len` (if the input's length is
    /// known) bounds the write-intent window. On success every byte is durable on every leg
    /// still receiving writes.
    pub fn write_stream(
        &mut self,
        offset: u64,
        input: &mut dyn Read,
        max_len: Option<u64>,
        known_len: Option<u64>,
        policy: &FlushPolicy,
    ) -> Result<WriteReport> {
        let g = self.geometry();
        if offset > g.data_size {
            return Err(Error::invalid(format!(
                "offset {offset} is past the end of the data area ({} bytes)",
                g.data_size
            )));
        }
        if let Some(l) = max_len {
            if offset.checked_add(l).is_none_or(|e| e > g.data_size) {
                return Err(Error::invalid(format!(
                    "offset {offset} plus length {l} runs past the end of the data area ({} bytes); nothing was written",
                    g.data_size
                )));
            }
        }
        // The write-intent window never reaches past the end of what will be written, when
        // that is known (input file size or --length), so nothing extra is left marked.
        let bound = match (known_len, max_len) {
            (Some(k), Some(m)) => Some(k.min(m)),
            (k, m) => k.or(m),
        };
        let limit = plan::write_limit(&g, offset, bound);
        let window = (self.window / g.region_size).max(1);
        let mut st = Stream {
            al: ActivityLog::for_stream(window, g.regions_for(offset, 0).start, limit),
            unsynced: false,
            next: 0,
        };
        // Before the legs are opened: a leg that fails to open is newly fractured too.
        let fractured_before: Vec<u32> = (0..g.slots)
            .filter(|&s| self.sb().legs[s as usize].state().is_fractured())
            .collect();
        let mut legs = self.active_legs()?;
        // E1: legs that failed to open are fenced before anything is written.
        let mut fenced = Vec::new();
        let fence_failed = self.fence_lost(&fractured_before, &mut fenced);
        // Q1: refused before anything is written when too few legs are in sync (this
        // command holds the mirror: nothing can bring one back while it waits).
        if let Some(why) = fence_failed.clone().or_else(|| self.shortfall_of(&legs)) {
            return Err(Error::degraded(format!(
                "writes refused: {why}{}; nothing was written. `mirrorctl resync {}` brings the legs back in sync{}",
                if fence_failed.is_some() { String::new() } else { format!(", fewer than --min-in-sync {}", self.min_in_sync) },
                self.name,
                if fence_failed.is_some() { "" } else { ", or give a lower --min-in-sync" }
            ))
            .with("bytes_written", 0u64)
            .with("acknowledged", false)
            .with("writes_refused", why));
        }
        // Q2: what this command acknowledges is not behind a refusing generation.
        self.end_refusing_generation()?;
        let mut report = WriteReport::default();
        // Q1: bytes made durable while at least --min-in-sync legs were in sync (all of
        // them once the stream ends with the quorum held).
        let mut acked = 0u64;
        let mut refused: Option<String> = None;
        let mut remaining = max_len.unwrap_or(u64::MAX);
        let mut cur = vec![0u8; CHUNK];
        let mut next = vec![0u8; CHUNK];
        let first = (CHUNK as u64).min(remaining) as usize;
        let mut cur_len = match read_full(input, &mut cur[..first]) {
            Ok(n) => n,
            Err(e) => {
                return Err(Error::invalid(format!(
                    "reading input: {e}; nothing was written"
                )))
            }
        };
        remaining -= cur_len as u64;
        let mut pos = offset;
        let mut since_sync = 0u64;
        let mut input_err: Option<io::Error> = None;
        let mut overflow = false;
        while cur_len > 0 {
            let room = g.data_size - pos;
            let wlen = (cur_len as u64).min(room) as usize;
            if (cur_len as u64) > room {
                overflow = true;
            }
            let mut next_len = 0;
            if wlen > 0 {
                let regions = g.regions_for(pos, wlen as u64);
                self.ensure_marked(regions.clone(), &mut legs, &mut st)?;
                let exts = st.al.extents_of(&regions);
                st.al.acquire(&exts);
                let at = g.data_offset + pos;
                let data = &cur[..wlen];
                let want_next = !overflow && remaining > 0;
                let primary = self.image.dev.clone();
                let nbuf = &mut next;
                // The legs and the primary on the I/O workers; the next chunk is read here
                // meanwhile.
                type Task<'a> = Box<dyn FnOnce() -> (Option<u32>, io::Result<()>) + Send + 'a>;
                let tasks: Vec<Task> = legs
                    .iter()
                    .map(|(s, d)| (Some(*s), d.clone()))
                    .chain(std::iter::once((None, primary)))
                    .map(|(s, d)| {
                        Box::new(move || {
                            let r = d.write_at(data, at);
                            d.start_writeback(at, data.len() as u64);
                            (s, r)
                        }) as Task
                    })
                    .collect();
                let (nres, mut done) = crate::thread::workers().run_all(tasks, || {
                    if want_next {
                        let take = (CHUNK as u64).min(remaining) as usize;
                        read_full(input, &mut nbuf[..take])
                    } else {
                        Ok(0)
                    }
                });
                let pres = done.pop().map_or(Ok(()), |(_, r)| r);
                let lres: Vec<(u32, io::Result<()>)> = done
                    .into_iter()
                    .filter_map(|(s, r)| s.map(|s| (s, r)))
                    .collect();
                if let Err(e) = pres {
                    // W6: the write-intent log keeps these regions for recovery.
                    return Err(Error::primary(format!(
                        "writing primary {} at data offset {pos}: {e}; nothing from this offset on is acknowledged, the next command recovers the touched regions",
                        self.name
                    ))
                    .with("bytes_written", report.bytes)
                    .with("acknowledged", false));
                }
                st.unsynced = true;
                st.al.release(&exts, Some(&regions));
                st.next = regions.end;
                for (s, r) in lres {
                    if let Err(err) = r {
                        legs.retain(|(x, _)| *x != s);
                        let f = LegFailure {
                            slot: s,
                            what: format!("write at data offset {pos}"),
                            err,
                        };
                        self.fail_in_stream(f, &mut st)?;
                    }
                }
                pos += wlen as u64;
                report.bytes += wlen as u64;
                since_sync += wlen as u64;
                let synced = match policy {
                    FlushPolicy::Always => {
                        self.sync_legs(&mut legs, &mut st)?;
                        true
                    }
                    FlushPolicy::Every(n) if since_sync >= *n => {
                        self.sync_legs(&mut legs, &mut st)?;
                        since_sync = 0;
                        true
                    }
                    _ => false,
                };
                // Q1: a leg lost in this chunk (or its sync) below the quorum ends the
                // stream; what was synced with the quorum held stays acknowledged.
                let fence_failed = self.fence_lost(&fractured_before, &mut fenced);
                refused = fence_failed.or_else(|| self.shortfall_of(&legs));
                if synced && refused.is_none() {
                    acked = report.bytes;
                }
                match nres {
                    Ok(n) => next_len = n,
                    Err(e) => input_err = Some(e),
                }
            }
            if overflow || input_err.is_some() || refused.is_some() {
                break;
            }
            remaining -= next_len as u64;
            std::mem::swap(&mut cur, &mut next);
            cur_len = next_len;
        }
        self.finish_stream(&mut legs, &mut st)?;
        for s in 0..g.slots {
            if self.sb().legs[s as usize].state().is_fractured() && !fractured_before.contains(&s) {
                report.newly_fractured.push(s);
            }
        }
        // Q1: the last sync too needs the quorum (E1: and a leg it lost, its fence).
        let refused = refused
            .or_else(|| self.fence_lost(&fractured_before, &mut fenced))
            .or_else(|| self.shortfall_of(&legs));
        if let Some(why) = refused {
            let unacked = report.bytes - acked;
            let tail = if why.starts_with("--fence-peer") {
                String::new()
            } else {
                format!(", fewer than --min-in-sync {}", self.min_in_sync)
            };
            return Err(Error::degraded(format!(
                "writes refused: {why}{tail}: {acked} bytes at offset {offset}..{} are durable on the primary and every leg in sync at the time; the {unacked} bytes after them reached the primary and the remaining legs but are not acknowledged (the legs that missed them have them in their fracture logs), and the rest of the input was not written. `mirrorctl resync {}` brings the legs back; then write from --offset {} again",
                offset + acked,
                self.name,
                offset + acked
            ))
            .with("bytes_written", acked)
            .with("acknowledged", acked > 0)
            .with("newly_fractured", report.newly_fractured.clone())
            .with("writes_refused", why));
        }
        let partial = |e: Error| {
            e.with("bytes_written", report.bytes)
                .with("acknowledged", true)
                .with("newly_fractured", report.newly_fractured.clone())
        };
        if overflow {
            return Err(partial(Error::invalid(format!(
                "input runs past the end of the data area ({} bytes): wrote {} bytes at offset {offset}..{pos}, which are durable and mirrored; the rest of the input was not written",
                g.data_size, report.bytes
            ))));
        }
        if let Some(e) = input_err {
            return Err(partial(Error::invalid(format!(
                "reading input: {e}; wrote {} bytes at offset {offset}..{pos}, which are durable and mirrored",
                report.bytes
            ))));
        }
        if let Some(want) = max_len.filter(|&l| report.bytes < l) {
            return Err(partial(Error::invalid(format!(
                "the input ended after {} bytes, short of the {want} bytes asked for: wrote {} bytes at offset {offset}..{pos}, which are durable and mirrored",
                report.bytes, report.bytes
            ))));
        }
        Ok(report)
    }

    /// Why a write may not be acknowledged with `legs` receiving it (Q1; `None` with
    /// `min_in_sync` 0).
    fn shortfall_of(&self, legs: &[(u32, Arc<dyn Device>)]) -> Option<String> {
        let views = self.leg_views(&|s| legs.iter().any(|(x, _)| *x == s));
        super::quorum::shortfall(&views, self.min_in_sync)
    }

    /// E1: runs the fence hook for each leg fractured since the stream began (its fracture
    /// is committed) and not fenced yet; why the first that failed did, if one did.
    fn fence_lost(&mut self, before: &[u32], fenced: &mut Vec<u32>) -> Option<String> {
        let cmd = self.fence.fence_peer.clone()?;
        let mut failed = None;
        for s in 0..self.geometry().slots {
            let leg = self.sb().legs[s as usize].clone();
            if !leg.state().is_fractured() || before.contains(&s) || fenced.contains(&s) {
                continue;
            }
            fenced.push(s);
            let call = super::fence::FenceCall {
                slot: s,
                leg: leg.location.clone(),
                mirror: uuid_str(&self.sb().mirror_uuid),
                reason: format!("by error: {}", leg.last_error),
            };
            if let Err(e) = super::fence::run(&cmd, &self.fence, &call) {
                self.warnings.push(format!(
                    "warning: --fence-peer for slot {s} ({}) failed ({e})",
                    leg.location
                ));
                failed.get_or_insert(format!("--fence-peer for slot {s} failed ({e})"));
            }
        }
        failed
    }

    /// W2 + W5: sync, then clear this command's write intents (and fracture bits set ahead
    /// for data that never came) in one flush.
    pub(super) fn finish_stream(
        &mut self,
        legs: &mut Vec<(u32, Arc<dyn Device>)>,
        st: &mut Stream,
    ) -> Result<()> {
        self.retire_windows(legs, st)
    }
}

/// Syncs the primary and every leg at once (the legs on the persistent I/O workers, the
/// primary on this thread); the primary's result and the legs that failed.
pub(super) fn sync_parallel(
    primary: &Arc<dyn Device>,
    legs: &[(u32, Arc<dyn Device>)],
) -> (io::Result<()>, Vec<(u32, io::Error)>) {
    type Task<'a> = Box<dyn FnOnce() -> (u32, io::Result<()>) + Send + 'a>;
    let tasks: Vec<Task> = legs
        .iter()
        .map(|(s, d)| Box::new(move || (*s, d.sync())) as Task)
        .collect();
    let (p, res) = crate::thread::workers().run_all(tasks, || primary.sync());
    let errs = res
        .into_iter()
        .filter_map(|(s, r)| r.err().map(|e| (s, e)))
        .collect();
    (p, errs)
}
