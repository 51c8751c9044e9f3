//! verify: the entry (`run`) and its report types; compares the data areas of the primary and its secondaries region by region, byte
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
//!
//! The files, by job: `pass.rs` a pass's start, carried counts, verdict and the verify
//! record saved in the header; `select.rs` what a batch compares (legs, their pending
//! regions, chunks cut at never-written runs); `read.rs` the reader threads; `compare.rs`
//! the batch's read-and-compare pipeline; `record.rs` confirming, recording (V1) and
//! repairing differences.

mod compare;
mod pass;
mod read;
mod record;
mod select;

pub(crate) use compare::compare_chunk;
pub(crate) use pass::{save_record, Pass};
pub(crate) use record::{record_mismatches, repaired};
pub(crate) use select::{batch_legs, chunks_of, ActiveLeg, Chunk};

use crate::engine::plan::Verdict;
use crate::engine::{Mirror, Progress};
use crate::error::Result;
use crate::format::layout::MIB;
use compare::compare_batch;
use serde::Serialize;
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
///
/// Steps, in order:
/// 1. open and lock the mirror, refuse a replaced primary (`prepare_for_change`), begin
///    the pass (from the saved cursor for a budgeted run);
/// 2. per batch: compare it (`compare_batch`; V1 records differences before any report),
///    then fracture legs that could not be read (not those TLS refused, O1);
/// 3. save the cursor and result before letting go of the lock (with the finished event
///    on the last batch);
/// 4. stop at the end or when out of time, else unlock and reopen (waiters go first);
/// 5. finish: the report and verdict.
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
    let mut warnings = m.take_warnings();
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
        warnings.extend(m.take_warnings());
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
            warnings.extend(m.take_warnings());
        }
    }
    progress.finish();
    let last_full = mm
        .as_ref()
        .and_then(|m| m.sb().last_verify.as_ref()?.last_full_pass_at);
    let (report, verdict) = pass.finish(pos, last_full);
    Ok((report, verdict, warnings))
}
