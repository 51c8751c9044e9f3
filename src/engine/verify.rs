//! verify: compares the data areas of the primary and its secondaries region by region, byte
//! for byte (legs read ahead in parallel threads), reports exact mismatch ranges per leg,
//! repairs them on request, and scrubs within a time budget from a cursor saved in the
//! primary's header.
//!
//! Rule (tagged where it is kept):
//! - V1 Differences found are recorded in the leg's fracture log durably, and an in-sync leg
//!   becomes syncing, before verify reports them; a repair then copies them through resync
//!   (S1). Without it a leg known to differ stayed "in-sync", healthy and promotable.
//!
//! The mirror lock is held per batch of regions and released in between, so a concurrent
//! `mirrorctl write --wait` proceeds between batches; each batch re-reads the mirror state,
//! so a region is never compared while a write to it is in flight.

use crate::device::Device;
use crate::engine::plan::{self, Verdict};
use crate::engine::{Mirror, Progress};
use crate::error::Result;
use crate::format::layout::{BitmapId, Geometry, SlotIdx, MIB};
use crate::format::ranges::union;
use crate::format::{LegState, VerifyRecord};
use crate::units::now_unix;
use serde::Serialize;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The reason a leg carries while differences verify recorded (V1) wait for a resync.
pub const RECORDED_REASON: &str = "verify found differences";

/// Data compared under one hold of the lock.
pub const BATCH: u64 = 256 * MIB;
/// Data read from each leg at once: small enough that the copy from the page cache and the
/// comparison stay in the CPU caches (8 MiB took 1.6 times as long on a warm cache).
pub const READ_CHUNK: u64 = MIB;

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct MismatchRange {
    pub first_region: u64,
    /// Exclusive.
    pub end_region: u64,
    /// Byte offset in the data area.
    pub offset: u64,
    pub length: u64,
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct LegVerify {
    pub slot: u32,
    pub path: String,
    pub state: String,
    /// Whether this leg's data was compared at all.
    pub compared: bool,
    /// Why it was not compared (fractured, cannot be opened ...).
    pub skipped: Option<String>,
    /// Regions not compared because they are already known out of sync.
    pub pending_regions: u64,
    pub regions_compared: u64,
    pub mismatched_regions: u64,
    pub mismatched_bytes: u64,
    pub repaired: bool,
    pub error: Option<String>,
    pub mismatches: Vec<MismatchRange>,
    /// The leg could not be opened because TLS refused it: it is not fractured (O1).
    #[serde(skip)]
    pub refused: bool,
}

#[derive(Serialize, Debug, Default)]
pub struct VerifyReport {
    /// "clean", "differences", "repaired" or "incomplete" (a leg could not be compared).
    pub result: String,
    /// The pass reached the end of the data area having compared at least one leg (a run
    /// that compared nothing is no pass: false, result "incomplete").
    pub complete: bool,
    pub start_region: u64,
    /// Where this run stopped (exclusive); the next budgeted run starts here.
    pub end_region: u64,
    pub region_count: u64,
    /// Bytes compared, summed over the legs compared (pending regions not counted).
    pub bytes_compared: u64,
    /// Of `bytes_compared`, bytes that were holes on both sides: equal, and not read.
    pub hole_bytes: u64,
    /// Of `bytes_compared`, bytes the primary's written map says no write ever reached
    /// (W7): not read, equal by definition.
    pub unwritten_bytes: u64,
    /// Bytes of the data area this run went over (what its progress counts).
    pub data_bytes: u64,
    pub seconds: f64,
    pub bytes_per_second: f64,
    pub last_full_pass_at: Option<String>,
    pub legs: Vec<LegVerify>,
}

pub struct VerifyOpts {
    pub repair: bool,
    pub max_time: Option<Duration>,
    pub restart: bool,
}

/// Opens (and locks) the mirror; `first` is true for the first batch. Later calls come
/// right after the lock was let go: the opener lets a waiting command take it first.
pub type Opener<'a> = dyn FnMut(bool, Option<Duration>) -> Result<Option<Mirror>> + 'a;

/// Runs a verify pass. `slots` are the legs asked for (None: every non-empty leg; fractured
/// ones are reported, not compared).
pub fn run(
    open: &mut Opener<'_>,
    slots_for: &dyn Fn(&Mirror) -> Result<Vec<u32>>,
    opts: &VerifyOpts,
    progress: &dyn Progress,
) -> Result<(VerifyReport, Verdict, Vec<String>)> {
    let Some(mut m) = open(true, None)? else {
        unreachable!("the first open either locks or fails");
    };
    m.prepare_for_change()?;
    let mut warnings = std::mem::take(&mut m.warnings);
    let g = m.geometry();
    let slots = slots_for(&m)?;
    let mut pass = Pass::begin(&m, &slots, opts, progress);
    let deadline = pass.deadline;
    let start = pass.start;
    let (report, legs) = (&mut pass.report, &mut pass.legs);
    let mut pos = start;
    let batch_regions = (BATCH / g.region_size).max(1);
    let mut mm = Some(m);
    while let Some(m) = mm.as_mut() {
        let batch = pos..(pos + batch_regions).min(g.region_count);
        // At least one chunk per run, so repeated budgeted runs always make progress.
        let budget = deadline.map(|d| (d, start));
        pos = compare_batch(m, &g, batch, legs, opts.repair, report, progress, budget)?;
        // A leg that cannot be read is fractured, as a failed write would do; one that TLS
        // refused is not (O1).
        for lv in legs.iter().filter(|l| l.error.is_some() && !l.refused) {
            if m.sb().legs[lv.slot as usize].state().receives_writes() {
                m.fracture_by_error(lv.slot, "verify", lv.error.as_deref().unwrap_or(""))?;
            }
        }
        warnings.append(&mut m.warnings);
        let complete = pos >= g.region_count;
        let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        // Save the cursor before letting go of the lock (the last one with the event).
        let done = (complete || out_of_time).then_some(start);
        save_record(
            m,
            legs,
            pass.started_at,
            pos,
            complete,
            report,
            pass.carried,
            done,
        )?;
        if complete {
            report.complete = true;
            break;
        }
        if out_of_time {
            break;
        }
        drop(mm.take()); // unlock between batches (the opener lets waiters in first)
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        mm = open(false, remaining)?;
        if let Some(m) = mm.as_mut() {
            m.prepare_for_change()?;
            warnings.append(&mut m.warnings);
        }
    }
    progress.finish();
    let last_full = mm
        .as_ref()
        .and_then(|m| m.sb().last_verify.as_ref()?.last_full_pass_at);
    let (report, verdict) = pass.finish(pos, last_full);
    Ok((report, verdict, warnings))
}

/// One verify pass in the making: where it starts, what it carries over from the earlier
/// runs of a budgeted pass, and what it found so far (shared by the command and `serve`).
pub(crate) struct Pass {
    started: Instant,
    pub(crate) started_at: u64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) start: u64,
    pub(crate) carried: (u64, bool),
    pub(crate) report: VerifyReport,
    pub(crate) legs: Vec<LegVerify>,
}

impl Pass {
    /// A pass over `slots`: from the saved cursor for a budgeted run (`--max-time` without
    /// `--restart`), else from region 0.
    pub(crate) fn begin(
        m: &Mirror,
        slots: &[u32],
        opts: &VerifyOpts,
        progress: &dyn Progress,
    ) -> Pass {
        let started = Instant::now();
        let g = m.geometry();
        let start = match (
            &m.sb().last_verify,
            opts.max_time.is_some() && !opts.restart,
        ) {
            (Some(v), true) if v.cursor < g.region_count => v.cursor,
            _ => 0,
        };
        // A pass split over budgeted runs keeps what its earlier runs found until it
        // completes.
        let carried = match &m.sb().last_verify {
            Some(p) if start > 0 && start == p.cursor => {
                (p.mismatched_regions, p.result == "differences")
            }
            _ => (0, false),
        };
        let legs = slots
            .iter()
            .map(|&s| {
                let l = &m.sb().legs[s as usize];
                LegVerify {
                    slot: s,
                    path: l.location.clone(),
                    state: l.state().as_str().to_string(),
                    ..Default::default()
                }
            })
            .collect();
        let total = g.regions_bytes(start..g.region_count);
        progress.set_total(total.end - total.start);
        Pass {
            started,
            started_at: now_unix(),
            deadline: opts.max_time.map(|d| started + d),
            start,
            carried,
            report: VerifyReport {
                start_region: start,
                region_count: g.region_count,
                ..Default::default()
            },
            legs,
        }
    }

    /// Whether the time budget is spent (a run always compares one chunk: `at` past the
    /// start).
    pub(crate) fn out_of_time(&self, at: u64) -> bool {
        self.deadline
            .is_some_and(|d| at > self.start && Instant::now() >= d)
    }

    /// The report and verdict of a pass that stopped at `end`.
    pub(crate) fn finish(self, end: u64, last_full: Option<u64>) -> (VerifyReport, Verdict) {
        let Pass {
            started,
            mut report,
            legs,
            ..
        } = self;
        report.last_full_pass_at = last_full.map(crate::units::format_time);
        report.end_region = end;
        report.seconds = started.elapsed().as_secs_f64();
        report.bytes_per_second = if report.seconds > 0.0 {
            report.bytes_compared as f64 / report.seconds
        } else {
            0.0
        };
        let unrepaired: u64 = legs
            .iter()
            .filter(|l| !l.repaired)
            .map(|l| l.mismatched_regions)
            .sum();
        let any_mismatch = legs.iter().any(|l| l.mismatched_regions > 0);
        let broken = legs.iter().any(|l| l.error.is_some());
        // No leg compared (none attached, or all fractured or unreadable): no pass happened,
        // as the verify record saves it (`save_record`): not complete, not clean.
        let nothing_compared = legs.iter().all(|l| !l.compared);
        report.complete = report.complete && !nothing_compared;
        let verdict = plan::verdict(unrepaired, broken, nothing_compared, any_mismatch);
        report.result = verdict.as_str().to_string();
        report.legs = legs;
        (report, verdict)
    }
}

/// Saves the verify record (cursor, result) in the header; `finished`: the run ends here,
/// having started at that region, and its verify-finished event goes in the same commit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_record(
    m: &mut Mirror,
    legs: &[LegVerify],
    started_at: u64,
    pos: u64,
    complete: bool,
    report: &VerifyReport,
    carried: (u64, bool),
    finished: Option<u64>,
) -> Result<()> {
    let now = now_unix();
    let prev_full = m
        .sb()
        .last_verify
        .as_ref()
        .and_then(|v| v.last_full_pass_at);
    let (carried, carried_diff) = carried;
    let mismatched: u64 = carried + legs.iter().map(|l| l.mismatched_regions).sum::<u64>();
    let unrepaired = carried_diff || legs.iter().any(|l| l.mismatched_regions > 0 && !l.repaired);
    // No leg compared (all fractured, unreadable, or none attached): no pass happened.
    let nothing = legs.iter().all(|l| !l.compared);
    m.image.sb.last_verify = Some(VerifyRecord {
        started_at,
        finished_at: now,
        cursor: if complete { 0 } else { pos },
        result: if unrepaired {
            "differences"
        } else if mismatched > 0 {
            "repaired"
        } else if nothing {
            "incomplete"
        } else if complete {
            "clean"
        } else {
            "partial"
        }
        .to_string(),
        mismatched_regions: mismatched,
        compared_bytes: report.bytes_compared,
        last_full_pass_at: if complete && !nothing {
            Some(now)
        } else {
            prev_full
        },
    });
    if let Some(start) = finished {
        let r = m.sb().last_verify.as_ref().unwrap();
        let broken = legs.iter().filter(|l| l.error.is_some()).count();
        let what = format!(
            "{}: {} mismatched regions, regions {start}..{pos} of {}{}",
            r.result,
            r.mismatched_regions,
            m.geometry().region_count,
            match broken {
                0 => String::new(),
                n => format!(", {n} leg(s) unreadable"),
            }
        );
        // The slot when the run covered one leg of several (`verify PRIMARY LEG`); none when
        // it covered every attached leg.
        let attached = m
            .sb()
            .legs
            .iter()
            .filter(|l| l.state() != crate::format::LegState::Empty)
            .count();
        let slot = match legs {
            [one] if attached > 1 => Some(one.slot),
            _ => None,
        };
        m.event(crate::engine::EventKind::VerifyFinished, slot, &what);
    }
    m.commit()
}

/// A leg taking part in a batch: (index into the pass's legs, device, regions of the batch
/// already pending on that leg).
pub(crate) type ActiveLeg = (usize, Arc<dyn crate::device::Device>, Vec<Range<u64>>);

/// The legs compared in `batch`, with their regions already known out of sync; the others
/// are marked skipped (fractured, detached) or keep the error that stopped them.
pub(crate) fn batch_legs(
    m: &mut Mirror,
    legs: &mut [LegVerify],
    batch: &Range<u64>,
) -> Result<Vec<ActiveLeg>> {
    let mut active = Vec::new();
    for (i, lv) in legs.iter_mut().enumerate() {
        let leg = m.sb().legs[lv.slot as usize].clone();
        lv.state = leg.state().as_str().to_string();
        if leg.state() == LegState::Empty {
            lv.skipped = Some("detached during verify".into());
            continue;
        }
        if leg.state().is_fractured() {
            lv.skipped = Some(format!("{}: not compared", leg.state().as_str()));
            continue;
        }
        if lv.error.is_some() {
            continue;
        }
        match m.open_leg_or_refusal(lv.slot) {
            Ok(d) => {
                // A leg whose differences an earlier verify recorded (V1) is compared in
                // full: what it recorded is reported again until it is repaired, so a
                // second verify does not turn "differences" into "clean".
                let pending = if leg.reason == RECORDED_REASON {
                    Vec::new()
                } else {
                    pending_in(m, lv.slot, batch)?
                };
                lv.pending_regions += pending.iter().map(|r| r.end - r.start).sum::<u64>();
                lv.compared = true;
                active.push((i, d, pending));
            }
            Err((e, refused)) => {
                lv.error = Some(e);
                lv.refused = refused;
            }
        }
    }
    Ok(active)
}

/// `batch` cut into the chunks read and compared at once, none straddling the edge of a
/// run of `written` regions (ascending): chunks outside them are never-written (W7) and
/// neither read nor compared.
pub(crate) fn chunks_of(
    g: &Geometry,
    batch: Range<u64>,
    chunk_bytes: u64,
    written: &[Range<u64>],
) -> Vec<Chunk> {
    let chunk_regions = (chunk_bytes / g.region_size).max(1);
    let mut pieces = Vec::new();
    let mut p = batch.start;
    for w in written {
        let (s, e) = (w.start.max(p), w.end.min(batch.end));
        if s >= e {
            continue;
        }
        if s > p {
            pieces.push((p..s, true));
        }
        pieces.push((s..e, false));
        p = e;
    }
    if p < batch.end {
        pieces.push((p..batch.end, true));
    }
    pieces
        .into_iter()
        .flat_map(|(piece, unwritten)| {
            (piece.start..piece.end)
                .step_by(chunk_regions as usize)
                .map(move |r| {
                    let regions = r..(r + chunk_regions).min(piece.end);
                    let bytes = g.regions_bytes(regions.clone());
                    Chunk {
                        at: g.data_offset + bytes.start,
                        len: (bytes.end - bytes.start) as usize,
                        offset: bytes.start,
                        regions,
                        unwritten,
                    }
                })
        })
        .collect()
}

/// Compares one chunk of the primary (`ours`) with one leg's (`theirs`; `None` for a hole
/// on both sides): regions that differ and are not pending go to `found`; the leg's and the
/// report's counts grow by what was compared.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compare_chunk(
    g: &Geometry,
    c: &Chunk,
    ours: &[u8],
    theirs: Option<&[u8]>,
    pending: &[Range<u64>],
    lv: &mut LegVerify,
    found: &mut Vec<u64>,
    report: &mut VerifyReport,
) {
    let hole = theirs.is_none();
    if let Some(theirs) = theirs {
        let rs = g.region_size as usize;
        for (n, (a, b)) in ours[..c.len]
            .chunks(rs)
            .zip(theirs[..c.len].chunks(rs))
            .enumerate()
        {
            let region = c.regions.start + n as u64;
            if a != b && !pending.iter().any(|p| p.contains(&region)) {
                found.push(region);
            }
        }
    }
    let skipped: u64 = pending
        .iter()
        .map(|p| {
            p.end
                .min(c.regions.end)
                .saturating_sub(p.start.max(c.regions.start))
        })
        .sum();
    let total = c.regions.end - c.regions.start;
    lv.regions_compared += total - skipped;
    let n = c.len as u64 * (total - skipped) / total;
    report.bytes_compared += n;
    if c.unwritten {
        report.unwritten_bytes += n;
    } else if hole {
        report.hole_bytes += n;
    }
}

/// Counts `confirmed` mismatched regions (ascending) on `lv`, adjacent ones as one range.
pub(crate) fn record_mismatches(g: &Geometry, lv: &mut LegVerify, confirmed: &[u64]) {
    for region in confirmed {
        let b = g.region_bytes(crate::format::layout::RegionIdx(*region));
        lv.mismatched_regions += 1;
        lv.mismatched_bytes += b.end - b.start;
        match lv.mismatches.last_mut() {
            Some(last) if last.end_region == *region => {
                last.end_region += 1;
                last.length = b.end - last.offset;
            }
            _ => lv.mismatches.push(MismatchRange {
                first_region: *region,
                end_region: region + 1,
                offset: b.start,
                length: b.end - b.start,
            }),
        }
    }
}

/// Compares one batch of regions on every requested leg (legs read in parallel). Returns
/// the region where it stopped: the batch end, or earlier when the time budget ran out.
#[allow(clippy::too_many_arguments)]
fn compare_batch(
    m: &mut Mirror,
    g: &Geometry,
    batch: Range<u64>,
    legs: &mut [LegVerify],
    repair: bool,
    report: &mut VerifyReport,
    progress: &dyn Progress,
    budget: Option<(Instant, u64)>,
) -> Result<u64> {
    let active = batch_legs(m, legs, &batch)?;
    let primary = m.image.dev.clone();
    let written = m.written_runs()?;
    let chunks = chunks_of(g, batch.clone(), READ_CHUNK, &written);
    let mut found: Vec<Vec<u64>> = vec![Vec::new(); legs.len()];
    let mut r = batch.start;
    if active.is_empty() {
        // Nothing to compare: the batch counts as covered.
        for c in &chunks {
            if budget.is_some_and(|(d, run_start)| r > run_start && Instant::now() >= d) {
                break;
            }
            progress.advance(c.len as u64);
            report.data_bytes += c.len as u64;
            r = c.regions.end;
        }
    } else {
        // One reader thread per device (the primary first) reads ahead while this thread
        // compares: reads of all legs and the comparison overlap, buffers are recycled.
        let devs: Vec<Arc<dyn Device>> = std::iter::once(primary.clone())
            .chain(active.iter().map(|(_, d, _)| d.clone()))
            .collect();
        let stop = AtomicBool::new(false);
        let zeros = vec![0u8; chunks.iter().map(|c| c.len).max().unwrap_or(0)];
        let outcome: Result<()> = std::thread::scope(|sc| {
            let mut feeds: Vec<Option<Feed>> = devs
                .iter()
                .map(|d| Some(spawn_reader(sc, d.clone(), &chunks, &stop)))
                .collect();
            let mut result = Ok(());
            for c in &chunks {
                if budget.is_some_and(|(d, run_start)| r > run_start && Instant::now() >= d) {
                    break;
                }
                let ppiece = match feeds[0].as_ref().unwrap().next() {
                    Ok(p) => p,
                    Err(e) => {
                        result =
                            Err(m.meta_err(&format!("reading data at offset {}", c.offset), &e));
                        break;
                    }
                };
                let pbuf: &[u8] = ppiece.as_deref().unwrap_or(&zeros[..c.len]);
                for (k, (i, _, pending)) in active.iter().enumerate() {
                    let Some(feed) = feeds[k + 1].as_ref() else {
                        continue;
                    };
                    match feed.next() {
                        Err(e) => {
                            legs[*i].error =
                                Some(format!("reading at data offset {}: {e}", c.offset));
                            feeds[k + 1] = None;
                        }
                        Ok(lpiece) => {
                            let theirs = (ppiece.is_some() || lpiece.is_some())
                                .then(|| lpiece.as_deref().unwrap_or(&zeros[..c.len]));
                            compare_chunk(
                                g,
                                c,
                                pbuf,
                                theirs,
                                pending,
                                &mut legs[*i],
                                &mut found[*i],
                                report,
                            );
                            feed.give_back(lpiece);
                        }
                    }
                }
                feeds[0].as_ref().unwrap().give_back(ppiece);
                progress.advance(c.len as u64);
                report.data_bytes += c.len as u64;
                r = c.regions.end;
            }
            // Readers still running stop at their next chunk; dropping the feeds unblocks them.
            stop.store(true, Ordering::SeqCst);
            drop(feeds);
            result
        });
        outcome?;
    }
    // A region reported as different is read again and compared byte for byte first.
    let mut to_repair = Vec::new();
    for (i, regions) in found.into_iter().enumerate() {
        if regions.is_empty() {
            continue;
        }
        let slot = legs[i].slot;
        let dev = match m.open_leg(slot) {
            Ok(d) => d,
            Err(e) => {
                legs[i].error = Some(e);
                continue;
            }
        };
        let mut confirmed = Vec::new();
        for region in regions {
            let b = g.region_bytes(crate::format::layout::RegionIdx(region));
            let n = (b.end - b.start) as usize;
            let (mut pa, mut pb) = (vec![0u8; n], vec![0u8; n]);
            primary
                .read_at(&mut pa, g.data_offset + b.start)
                .map_err(|e| m.meta_err(&format!("re-reading data at offset {}", b.start), &e))?;
            if let Err(e) = dev.read_at(&mut pb, g.data_offset + b.start) {
                legs[i].error = Some(format!("re-reading at data offset {}: {e}", b.start));
                break;
            }
            if pa != pb {
                confirmed.push(region);
            }
        }
        record_mismatches(g, &mut legs[i], &confirmed);
        if !confirmed.is_empty() {
            to_repair.push((slot, confirmed));
        }
    }
    // V1: differences found are recorded in the leg's fracture log durably (and the leg
    // leaves in-sync) before verify reports them, so status is unhealthy until they are
    // repaired and a plain `resync` repairs them; without it a leg known to differ stayed
    // "in-sync" and promotable.
    for (slot, regions) in &to_repair {
        m.mark_out_of_sync(*slot, regions)?;
    }
    if repair && !to_repair.is_empty() {
        // The ordinary resync path copies them (and clears the bits only once durable: S1).
        let slots: Vec<u32> = to_repair.iter().map(|(s, _)| *s).collect();
        let rr = m.resync(&slots, None, &crate::engine::NoProgress)?;
        repaired(legs, &rr);
    }
    Ok(r)
}

/// What a repair's resync did, on the legs it copied to.
pub(crate) fn repaired(legs: &mut [LegVerify], rr: &crate::engine::ResyncReport) {
    for l in &rr.legs {
        if let Some(lv) = legs.iter_mut().find(|x| x.slot == l.slot) {
            match &l.error {
                None => lv.repaired = true,
                Some(e) => lv.error = Some(format!("repair failed: {e}")),
            }
        }
    }
}

/// Regions of `batch` already known out of sync on `slot`: its fracture log, and the write
/// intents unless a running server holds them (it keeps its hot set in step, and its
/// verify excludes host writes chunk by chunk).
fn pending_in(m: &mut Mirror, slot: u32, batch: &Range<u64>) -> Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let ids: &[BitmapId] = if m.intents_live {
        &[BitmapId::Fracture(SlotIdx(slot))]
    } else {
        &[BitmapId::Fracture(SlotIdx(slot)), BitmapId::WriteIntent]
    };
    for &id in ids {
        let mut from = batch.start;
        loop {
            let r = m
                .bitmaps
                .next_run(id, from, u64::MAX)
                .map_err(|e| m.meta_err("reading a fracture log", &e))?;
            match r {
                Some(r) if r.start < batch.end => {
                    out.push(r.start.max(batch.start)..r.end.min(batch.end));
                    from = r.end;
                }
                _ => break,
            }
        }
    }
    Ok(union(&out, &[]))
}

/// A run of regions read and compared at once.
pub(crate) struct Chunk {
    pub(crate) regions: Range<u64>,
    /// Device offset and length.
    pub(crate) at: u64,
    pub(crate) len: usize,
    /// Offset in the data area (for messages).
    pub(crate) offset: u64,
    /// Never written (W7): not read, equal on every leg by definition.
    pub(crate) unwritten: bool,
}

/// Chunks read ahead by each reader.
const READ_AHEAD: usize = 2;

/// A chunk as read: `None` is a hole (reads as zeros; not read at all).
type Piece = Option<Vec<u8>>;

/// The receiving end of one reader thread.
struct Feed {
    rx: mpsc::Receiver<std::io::Result<Piece>>,
    back: mpsc::Sender<Vec<u8>>,
}

impl Feed {
    /// The next chunk; a closed channel is reported as an error.
    fn next(&self) -> std::io::Result<Piece> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader stopped")))
    }

    /// Returns a buffer to the reader for reuse.
    fn give_back(&self, piece: Piece) {
        if let Some(buf) = piece {
            let _ = self.back.send(buf);
        }
    }
}

/// Starts a thread reading `chunks` from `dev` in order, `READ_AHEAD` chunks ahead of the
/// comparison, recycling buffers given back. It stops after an error, when `stop` is set,
/// or when its feed is dropped.
fn spawn_reader<'s, 'e>(
    sc: &'s std::thread::Scope<'s, 'e>,
    dev: Arc<dyn Device>,
    chunks: &'e [Chunk],
    stop: &'e AtomicBool,
) -> Feed {
    let (tx, rx) = mpsc::sync_channel(READ_AHEAD);
    let (back, back_rx) = mpsc::channel::<Vec<u8>>();
    // No thread (a thread limit): the comparison gets the error instead of a chunk.
    let failed = tx.clone();
    let started = std::thread::Builder::new().spawn_scoped(sc, move || {
        // Sequential reads: ask for the larger readahead window (cold caches).
        if let (Some(f), Some(first), Some(last)) = (dev.file(), chunks.first(), chunks.last()) {
            let len = std::num::NonZeroU64::new(last.at + last.len as u64 - first.at);
            let _ = rustix::fs::fadvise(f, first.at, len, rustix::fs::Advice::Sequential);
        }
        let mut fresh = READ_AHEAD + 2;
        for c in chunks {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let hole = c.unwritten
                || matches!(dev.data_extents(c.at..c.at + c.len as u64), Ok(Some(v)) if v.is_empty());
            let piece = if hole {
                Ok(None)
            } else {
                let mut buf = match back_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if fresh > 0 => {
                        fresh -= 1;
                        Vec::new()
                    }
                    Err(_) => match back_rx.recv() {
                        Ok(b) => b,
                        Err(_) => break,
                    },
                };
                buf.resize(c.len, 0);
                dev.read_at(&mut buf, c.at).map(|()| Some(buf))
            };
            let failed = piece.is_err();
            if tx.send(piece).is_err() || failed {
                break;
            }
        }
    });
    if let Err(e) = started {
        let _ = failed.send(Err(std::io::Error::other(format!(
            "starting a reader thread: {e}"
        ))));
    }
    Feed { rx, back }
}
