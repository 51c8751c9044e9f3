//! Resync: copying the regions of fracture logs from the primary (or, with `compare`, only
//! the blocks that differ), rate-limited, with durable progress points. One copy loop
//! ([`copy_leg`]) serves the offline command (legs in parallel, the logs behind a mutex) and
//! `serve` (run by run among the host writes, `serve/admin.rs`): what differs between them
//! is the [`LogOwner`], never the loop.
//!
//! Rules (tagged at the lines that keep them):
//! - S1 Resync clears a region's fracture bit only after the copied data is durable on the
//!   target (sync), so an interrupted resync resumes from the log and loses nothing.
//! - S2 A leg becomes in-sync only when its fracture log is empty; otherwise status and
//!   promote would trust a leg that still differs.
//! - S3 A leg being resynced is marked syncing first, so it receives writes from then on;
//!   otherwise a write during the copy would be missed behind the copy's back.
//! - S4 A short read or a read error of the primary fails the copy (the leg keeps its log);
//!   zeros are written only where the primary reports a hole, never for data it could not
//!   read (device.rs turns a short read or a shrunk file into an error).

use super::plan;
use crate::device::Device;
use crate::engine::EventKind;
use crate::engine::LegFailure;
use crate::engine::Mirror;
use crate::engine::Progress;
use crate::error::Error;
use crate::error::Result;
use crate::format::layout::BitmapId;
use crate::format::layout::Geometry;
use crate::format::layout::SlotIdx;
use crate::format::layout::MIB;
use crate::format::LegState;
use crate::format::ResyncRecord;
use crate::meta::bitmaps::Bitmaps;
use crate::units::now_unix;
use std::io;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// Largest single copy during resync.
pub const COPY_RUN: u64 = 8 * MIB;

/// Bytes copied between durability points (target sync + fracture-bit clear) in resync.
pub const RESYNC_BATCH: u64 = 64 * MIB;

/// About this long between a resync's durable progress points (at most 1.5 x under a
/// `--rate` limit; see `copy_leg`).
pub const CHECKPOINT: Duration = Duration::from_millis(250);

#[derive(Debug, Default, Clone)]
pub struct ResyncLegReport {
    pub slot: u32,
    pub location: String,
    pub regions: u64,
    pub bytes: u64,
    /// Bytes actually written to the leg (less than `bytes` with `compare`).
    pub written_bytes: u64,
    pub error: Option<String>,
    /// The leg was detached while it was copied (live): the slot's state is another leg's.
    pub detached: bool,
}

/// How a resync copies.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResyncOptions {
    /// Bytes per second, or unlimited.
    pub rate: Option<u64>,
    /// Read the leg too and write only the blocks that differ (for legs whose log is much
    /// larger than what really differs, e.g. after an unplanned promotion).
    pub compare: bool,
}

#[derive(Debug, Default)]
pub struct ResyncReport {
    pub legs: Vec<ResyncLegReport>,
    pub seconds: f64,
    /// `--compare`: `bytes` were compared (read on both sides), `written_bytes` written.
    pub compare: bool,
}

/// What a resync did, in the words every report of it uses (the command, its
/// resync-finished event, serve's log, status): "copied 2.0 GiB", or with `--compare`
/// "compared 2.0 GiB, wrote 46.0 MiB".
pub fn amounts(bytes: u64, written: u64, compare: bool) -> String {
    use crate::units::format_size;
    if compare {
        format!(
            "compared {}, wrote {}",
            format_size(bytes),
            format_size(written)
        )
    } else {
        format!("copied {}", format_size(bytes))
    }
}

/// A resync-finished event's detail: [`amounts`], then the exact bytes written, which
/// status reads back ([`written_in_detail`]).
pub fn finished_detail(bytes: u64, written: u64, compare: bool) -> String {
    format!(
        "in sync: {} ({written} bytes written)",
        amounts(bytes, written, compare)
    )
}

/// The amounts and the bytes written a resync-finished event's detail states (None for an
/// event of an older mirrorctl, which said "X copied (Y written)").
pub fn written_in_detail(detail: &str) -> Option<(&str, u64)> {
    let rest = detail.strip_prefix("in sync: ")?;
    let (what, n) = rest.rsplit_once(" (")?;
    let n = n.strip_suffix(" bytes written)")?.parse().ok()?;
    Some((what, n))
}

/// Spreads work to `rate` bytes per second over the whole command.
pub struct RateLimit {
    rate: Option<u64>,
    start: Instant,
    done: AtomicU64,
}

impl RateLimit {
    pub fn new(rate: Option<u64>) -> Self {
        RateLimit {
            rate,
            start: Instant::now(),
            done: AtomicU64::new(0),
        }
    }
    /// Bytes the limit lets through in `d`, if there is a limit.
    pub fn bytes_in(&self, d: Duration) -> Option<u64> {
        self.rate.map(|r| (r as f64 * d.as_secs_f64()) as u64)
    }
    pub fn take(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let total = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = Duration::from_secs_f64(total as f64 / rate as f64);
        let el = self.start.elapsed();
        if due > el {
            std::thread::sleep(due - el);
        }
    }
}

impl Mirror {
    /// Copies every region in the given legs' fracture logs from the primary, legs in
    /// parallel, then marks them in sync. Legs that fail are fractured and reported.
    pub fn resync(
        &mut self,
        slots: &[u32],
        rate: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<ResyncReport> {
        let opts = ResyncOptions {
            rate,
            compare: false,
        };
        self.resync_with(slots, &opts, progress)
    }

    /// [`Mirror::resync`] with every option.
    pub fn resync_with(
        &mut self,
        slots: &[u32],
        opts: &ResyncOptions,
        progress: &dyn Progress,
    ) -> Result<ResyncReport> {
        let started = Instant::now();
        let g = self.geometry();
        let mut report = ResyncReport {
            compare: opts.compare,
            ..Default::default()
        };
        let mut work: Vec<(u32, Arc<dyn Device>)> = Vec::new();
        let mut total = 0u64;
        let now = now_unix();
        for &s in slots {
            let leg = self.sb().legs[s as usize].clone();
            let mut lr = ResyncLegReport {
                slot: s,
                location: leg.location.clone(),
                ..Default::default()
            };
            match self.open_leg(s) {
                Ok(d) => {
                    let (_, bytes) = self.pending_for(s)?;
                    total += bytes;
                    work.push((s, d));
                    // S3: from now on the leg receives writes.
                    self.set_leg_state(s, LegState::Syncing, now);
                    let what = resync_started_detail(bytes, opts.compare);
                    self.event(EventKind::ResyncStarted, Some(s), &what);
                }
                Err(msg) => {
                    self.record_leg_error(s, &msg);
                    lr.error = Some(msg);
                }
            }
            report.legs.push(lr);
        }
        self.commit()?;
        progress.set_total(total);
        let limiter = RateLimit::new(opts.rate);
        let abort = AtomicBool::new(false);
        let primary = self.image.dev.clone();
        let bitmaps = Mutex::new(&mut self.bitmaps);
        let results: Vec<(u32, Copied, u64, CopyResult<()>)> = std::thread::scope(|sc| {
            let hs: Vec<_> = work
                .iter()
                .map(|(s, dev)| {
                    let (s, dev) = (*s, dev.clone());
                    let primary = primary.clone();
                    let (limiter, abort) = (&limiter, &abort);
                    let owner = Offline {
                        bitmaps: &bitmaps,
                        id: BitmapId::Fracture(SlotIdx(s)),
                        abort,
                    };
                    crate::thread::spawn_or_run(sc, move || {
                        let written = AtomicU64::new(0);
                        let ctl = CopyCtl {
                            limiter,
                            progress,
                            compare: opts.compare,
                            written: &written,
                        };
                        let mut copied = Copied::default();
                        let r = copy_leg(&g, &*primary, &*dev, &owner, &ctl, &mut copied);
                        if matches!(r, Err(CopyEnd::Primary(_))) {
                            abort.store(true, Ordering::SeqCst);
                        }
                        (s, copied, written.into_inner(), r)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a resync copy thread panicked"))
                .collect()
        });
        progress.finish();
        let mut primary_err = None;
        let now = now_unix();
        let mut done = Vec::new();
        for (s, copied, written, r) in results {
            let lr = report
                .legs
                .iter_mut()
                .find(|l| l.slot == s)
                .expect("reported");
            copied.into_report(lr, written);
            match r {
                Ok(()) => done.push(s),
                Err(CopyEnd::Primary(e)) => primary_err = Some(e),
                Err(CopyEnd::Stopped(_)) | Err(CopyEnd::Gone(_)) => {}
                Err(CopyEnd::Leg(what, e)) => {
                    lr.error = Some(format!("{what}: {e}"));
                    self.event(EventKind::ResyncFailed, Some(s), &format!("{what}: {e}"));
                    self.fracture_on_error(
                        LegFailure {
                            slot: s,
                            what,
                            err: e,
                        },
                        &[],
                    )?;
                }
            }
        }
        if let Some(e) = primary_err {
            // Recorded where it can be (the primary just failed): the logs keep the rest.
            for (s, _) in &work {
                self.event(EventKind::ResyncFailed, Some(*s), &format!("primary: {e}"));
            }
            let _ = self.commit();
            return Err(Error::primary(e));
        }
        self.mark_resynced(&done, &report, now, &|_| true)?;
        self.commit()?;
        if !done.is_empty() {
            self.refresh_headers(&done);
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// The offline command's side of a copy: the logs behind a mutex, no host writes to order
/// against (the command holds the mirror's lock), the copies of other legs beside it.
struct Offline<'a, 'b> {
    bitmaps: &'a Mutex<&'b mut Bitmaps>,
    id: BitmapId,
    /// Set when another leg's copy failed on the primary.
    abort: &'a AtomicBool,
}

impl<'b> Offline<'_, 'b> {
    fn logs(&self) -> std::sync::MutexGuard<'_, &'b mut Bitmaps> {
        self.bitmaps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogOwner for Offline<'_, '_> {
    type Hold = ();
    fn next_run(&self, from: u64, max: u64) -> CopyResult<Option<Range<u64>>> {
        self.logs()
            .next_run(self.id, from, max)
            .map_err(|e| CopyEnd::Primary(format!("reading a fracture log on the primary: {e}")))
    }
    fn hold(&self, _bytes: Range<u64>) {}
    fn release(&self, _hold: ()) {}
    fn settle(&self, runs: &[Range<u64>]) -> CopyResult<()> {
        let mut b = self.logs();
        let merr =
            |e: io::Error| CopyEnd::Primary(format!("clearing a fracture log on the primary: {e}"));
        for r in runs {
            b.set_range(self.id, r.clone(), false).map_err(merr)?;
        }
        b.flush()
            .map_err(|e| CopyEnd::Primary(format!("syncing bitmaps of the primary: {e}")))
    }
    fn stop(&self) -> Option<CopyEnd> {
        self.abort
            .load(Ordering::SeqCst)
            .then(|| CopyEnd::Stopped("the copy of another leg failed on the primary".into()))
    }
    fn direct_writes(&self) -> bool {
        false
    }
}

impl Mirror {
    /// S2: marks each leg of `done` whose log is empty (and that `still` accepts) in sync,
    /// and records the resync of `done` with a new generation. The caller commits.
    /// Returns the legs now in sync.
    pub(super) fn mark_resynced(
        &mut self,
        done: &[u32],
        report: &ResyncReport,
        now: u64,
        still: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let (mut regions, mut bytes) = (0, 0);
        let mut synced = Vec::new();
        for &s in done {
            let n = self
                .bitmaps
                .count(BitmapId::Fracture(SlotIdx(s)))
                .map_err(|e| self.meta_err("reading a fracture log", &e))?;
            if n != 0 || !still(s) {
                continue;
            }
            let l = &mut self.image.sb.legs[s as usize];
            l.set_state(LegState::InSync, now);
            l.fractured_at = None;
            l.reason.clear();
            l.last_error.clear();
            let lr = report.legs.iter().find(|l| l.slot == s).unwrap();
            regions += lr.regions;
            bytes += lr.bytes;
            synced.push(s);
            let what = finished_detail(lr.bytes, lr.written_bytes, report.compare);
            self.event(EventKind::ResyncFinished, Some(s), &what);
        }
        if !done.is_empty() {
            self.image
                .sb
                .bump_generation(&format!("resync of slot(s) {done:?} complete"), now);
            self.image.sb.last_resync = Some(ResyncRecord {
                finished_at: now,
                slots: done.to_vec(),
                regions_copied: regions,
                bytes_copied: bytes,
            });
        }
        Ok(synced)
    }
}

/// What a resync-started event says.
pub(super) fn resync_started_detail(bytes: u64, compare: bool) -> String {
    format!(
        "{} to {}",
        crate::units::format_size(bytes),
        if compare { "compare" } else { "copy" }
    )
}

/// Why one leg's copy stopped before its log was empty.
#[derive(Debug)]
pub(super) enum CopyEnd {
    /// The primary failed: the copy stops, the leg keeps the rest of its log.
    Primary(String),
    /// The leg failed (what, error): the caller fractures it.
    Leg(String, io::Error),
    /// The leg is no longer the one the copy started for (H8 of `serve`): fractured,
    /// detached, or another image in its slot. Nothing more is cleared in its log.
    Gone(String),
    /// Asked to stop (serve stopping, another leg's copy failed on the primary); the leg
    /// keeps the rest of its log (S1).
    Stopped(String),
}

pub(super) type CopyResult<T> = std::result::Result<T, CopyEnd>;

/// The side that owns a leg's fracture log while [`copy_leg`] copies it: the offline
/// command, or `serve` with host writes going on. It decides under which exclusion the log
/// is read and cleared, and whether the leg is still the one being copied to.
pub(super) trait LogOwner: Sync {
    /// What keeps a run exclusive with host writes while it is copied (H4 of `serve`).
    type Hold;
    /// The next run of the log at or after region `from`, at most `max` regions.
    fn next_run(&self, from: u64, max: u64) -> CopyResult<Option<Range<u64>>>;
    /// Takes the run's place among the host writes (data-area bytes), waiting for the
    /// earlier ones over it.
    fn hold(&self, bytes: Range<u64>) -> Self::Hold;
    fn release(&self, hold: Self::Hold);
    /// S1: clears `runs` in the log, durably; the copied data is durable on the leg already.
    /// Live, only while the leg is still the same and receives writes (H8).
    fn settle(&self, runs: &[Range<u64>]) -> CopyResult<()>;
    /// Whether the copy must stop now.
    fn stop(&self) -> Option<CopyEnd>;
    /// Called before each run (a background copy gives way to busy hosts).
    fn before_run(&self) {}
    /// Write the leg with O_DIRECT (hosts write it so too), rather than through the page
    /// cache with the kernel's file-to-file copy.
    fn direct_writes(&self) -> bool;
}

/// How a copy goes: shared by every leg of one resync.
pub(super) struct CopyCtl<'a> {
    pub(super) limiter: &'a RateLimit,
    pub(super) progress: &'a dyn Progress,
    /// Read the leg too and write only the blocks that differ.
    pub(super) compare: bool,
    /// Bytes written to this leg so far.
    pub(super) written: &'a AtomicU64,
}

/// What one leg's copy made durable and cleared from its log.
#[derive(Debug, Default)]
pub(super) struct Copied {
    pub(super) regions: u64,
    pub(super) bytes: u64,
}

impl Copied {
    pub(super) fn into_report(self, lr: &mut ResyncLegReport, written: u64) {
        lr.regions += self.regions;
        lr.bytes += self.bytes;
        lr.written_bytes += written.min(self.bytes);
    }
}

/// Granularity of `resync --compare`: blocks that differ are written, the rest left alone.
pub(super) const COMPARE_BLOCK: u64 = 64 * 1024;

/// The copy loop, one leg: run by run from the log, each run held exclusive with host
/// writes while it is copied, then rate-limited with the run released; every RESYNC_BATCH
/// or CHECKPOINT a durable progress point (S1: the leg synced, then the runs cleared by the
/// owner), the sync running beside the next batch's copy and the runs cleared as soon as
/// it returned. Ends when the log is empty, or with why not (what was settled stays
/// settled).
pub(super) fn copy_leg<O: LogOwner>(
    g: &Geometry,
    primary: &dyn Device,
    target: &dyn Device,
    owner: &O,
    ctl: &CopyCtl,
    done: &mut Copied,
) -> CopyResult<()> {
    // Steps:
    // 1. Size the runs (at most half a CHECKPOINT at the rate) and the buffers.
    // 2. Start the syncer thread, which makes each finished batch durable (S1).
    // 3. Per run from the log: stop if asked (settling what was copied), hold it exclusive
    //    with host writes, copy it (through memory: read ahead on a thread within the run,
    //    `copy_through`), release it, then wait out the rate limit.
    // 4. Every RESYNC_BATCH or CHECKPOINT, hand the batch to the syncer (S1: its writes
    //    all completed before its sync starts).
    // 5. At the end of the log, wait for the syncer and settle the last batch (S1).
    //
    // 1. A run is copied whole before CHECKPOINT is looked at, so under a low --rate it must
    // take at most half of it (durable points then come within 1.5 x CHECKPOINT): a
    // COPY_RUN takes 8 s at 1 MiB/s, and a resync interrupted more often than that never
    // made any progress durable.
    let max_run = plan::max_run_regions(
        ctl.limiter.bytes_in(CHECKPOINT / 2),
        COPY_RUN,
        g.region_size,
    );
    let size = COPY_RUN.max(g.region_size) as usize;
    let mut buf = crate::device::AlignedBuf::zeroed(size);
    let mut theirs = if ctl.compare {
        vec![0u8; size]
    } else {
        Vec::new()
    };
    // 2. The durability points are pipelined: a finished batch is synced on a helper thread
    // while the next one copies, and its runs are cleared there once that sync has returned
    // (S1: every write of the batch completed before its sync started). The copy never
    // stands still for a sync but at the end (and when a batch finishes before the previous
    // one's sync did).
    std::thread::scope(|sc| {
        let mut syncer = Syncer::start(sc, target, owner);
        let mut batch: Vec<Range<u64>> = Vec::new();
        let mut batch_bytes = 0;
        let mut batch_started = Instant::now();
        let mut from = 0;
        loop {
            // 3.
            if let Some(why) = owner.stop() {
                syncer.collect(g, done, true)?;
                settle(g, target, owner, &mut batch, done)?;
                return Err(why);
            }
            syncer.collect(g, done, false)?;
            let Some(r) = owner.next_run(from, max_run)? else {
                // 5.
                syncer.collect(g, done, true)?;
                return settle(g, target, owner, &mut batch, done);
            };
            from = r.end;
            owner.before_run();
            let br = g.regions_bytes(r.clone());
            let hold = owner.hold(br.clone());
            let copied = copy_run(
                g,
                primary,
                target,
                br.clone(),
                owner.direct_writes(),
                ctl,
                &mut buf,
                &mut theirs,
            );
            owner.release(hold);
            copied?;
            // The rate limit waits with the run released: host writes there go on meanwhile.
            ctl.limiter.take(br.end - br.start);
            ctl.progress.advance(br.end - br.start);
            batch_bytes += br.end - br.start;
            batch.push(r);
            // 4.
            if batch_bytes >= RESYNC_BATCH || batch_started.elapsed() >= CHECKPOINT {
                // At most one batch waits for its sync: the one before has had its turn.
                syncer.collect(g, done, true)?;
                syncer.begin(g, std::mem::take(&mut batch), done)?;
                batch_bytes = 0;
                batch_started = Instant::now();
            }
        }
    })
}

/// The thread that makes a copy's finished batch durable while the next one copies: it
/// syncs the target, then has the batch's runs cleared by the owner (S1), at once, in the
/// order the batches were finished. One per leg copy, ended with it.
struct Syncer<'env, O> {
    ask: Option<std::sync::mpsc::Sender<Vec<Range<u64>>>>,
    answer: std::sync::mpsc::Receiver<(Vec<Range<u64>>, CopyResult<()>)>,
    /// Batches handed over and not answered yet.
    pending: usize,
    target: &'env dyn Device,
    owner: &'env O,
}

impl<'env, O: LogOwner> Syncer<'env, O> {
    fn start<'scope>(
        sc: &'scope std::thread::Scope<'scope, 'env>,
        target: &'env dyn Device,
        owner: &'env O,
    ) -> Syncer<'env, O> {
        let (ask, asked) = std::sync::mpsc::channel::<Vec<Range<u64>>>();
        let (answered, answer) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("resync-sync".into())
            .spawn_scoped(sc, move || {
                while let Ok(batch) = asked.recv() {
                    let r = durable(target, owner, &batch);
                    if answered.send((batch, r)).is_err() {
                        return;
                    }
                }
            });
        Syncer {
            ask: started.is_ok().then_some(ask),
            answer,
            pending: 0,
            target,
            owner,
        }
    }

    /// S1: hands over `batch`, whose writes have all completed (its sync starts after
    /// them); without the thread, made durable here and now.
    fn begin(&mut self, g: &Geometry, batch: Vec<Range<u64>>, done: &mut Copied) -> CopyResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match &self.ask {
            Some(a) => match a.send(batch) {
                Ok(()) => {
                    self.pending += 1;
                    Ok(())
                }
                Err(std::sync::mpsc::SendError(batch)) => {
                    durable(self.target, self.owner, &batch)?;
                    count(g, batch, done);
                    Ok(())
                }
            },
            None => {
                durable(self.target, self.owner, &batch)?;
                count(g, batch, done);
                Ok(())
            }
        }
    }

    /// Takes the answers there are (all of them, waiting, if `wait`); the first failure.
    fn collect(&mut self, g: &Geometry, done: &mut Copied, wait: bool) -> CopyResult<()> {
        while self.pending > 0 {
            let got = if wait {
                self.answer
                    .recv()
                    .map_err(|_| std::sync::mpsc::TryRecvError::Disconnected)
            } else {
                self.answer.try_recv()
            };
            let (batch, r) = match got {
                Ok(x) => x,
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.pending = 0;
                    return Err(CopyEnd::Leg(
                        "sync".into(),
                        io::Error::other("the sync thread ended"),
                    ));
                }
            };
            self.pending -= 1;
            r?;
            count(g, batch, done);
        }
        Ok(())
    }
}

/// S1: the batch durable on the leg, then its runs cleared by the owner.
fn durable<O: LogOwner>(target: &dyn Device, owner: &O, batch: &[Range<u64>]) -> CopyResult<()> {
    target.sync().map_err(|e| CopyEnd::Leg("sync".into(), e))?;
    owner.settle(batch)
}

/// A settled batch, counted as done.
fn count(g: &Geometry, batch: Vec<Range<u64>>, done: &mut Copied) {
    for r in batch {
        done.regions += r.end - r.start;
        let br = g.regions_bytes(r);
        done.bytes += br.end - br.start;
    }
}

/// S1: the batch durable on the leg, then its bits cleared by the owner.
fn settle<O: LogOwner>(
    g: &Geometry,
    target: &dyn Device,
    owner: &O,
    batch: &mut Vec<Range<u64>>,
    done: &mut Copied,
) -> CopyResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    durable(target, owner, batch)?;
    count(g, std::mem::take(batch), done);
    Ok(())
}

/// One run (data-area bytes `br`) from the primary to the leg: holes as zeroes (S4), or
/// with `compare` only the blocks that differ.
#[allow(clippy::too_many_arguments)]
fn copy_run(
    g: &Geometry,
    primary: &dyn Device,
    target: &dyn Device,
    br: Range<u64>,
    direct: bool,
    ctl: &CopyCtl,
    buf: &mut [u8],
    theirs: &mut [u8],
) -> CopyResult<()> {
    let (start, end) = (g.data_offset + br.start, g.data_offset + br.end);
    let at = |p: u64| p - g.data_offset;
    let perr = |p: u64, e: io::Error| {
        CopyEnd::Primary(format!("reading primary at data offset {}: {e}", at(p)))
    };
    let extents = primary
        .data_extents(start..end)
        .map_err(|e| perr(start, e))?;
    for (piece, data) in plan::copy_pieces(start..end, extents) {
        if piece.is_empty() {
            continue;
        }
        if ctl.compare {
            compare_copy(primary, target, piece, data, g, buf, theirs, ctl.written)?;
            continue;
        }
        ctl.written
            .fetch_add(piece.end - piece.start, Ordering::Relaxed);
        if !data {
            target
                .zero_range(piece.start, piece.end - piece.start)
                .map_err(|e| {
                    CopyEnd::Leg(format!("zeroing at data offset {}", at(piece.start)), e)
                })?;
            continue;
        }
        // File to file (offline): the kernel copies without passing the data through
        // here. From the first error on, the rest goes through memory, which tells
        // whether the primary or the target is at fault.
        let mut p = piece.start;
        if !direct {
            while p < piece.end {
                let n = (piece.end - p).min(COPY_RUN);
                if primary.copy_range_to(target, p, n).is_err() {
                    break;
                }
                p += n;
            }
        }
        copy_through(primary, target, p..piece.end, direct, g, buf)?;
    }
    Ok(())
}

/// Bytes per read and per write of [`copy_through`]. Below 2 MiB: a buffered write of
/// 2 MiB or more has the target's page cache take 2 MiB folios (Linux 6.x, ext4 and xfs),
/// whole free 2 MiB blocks, which a VM with free page reporting (virtio-balloon) has
/// handed back to its host: each is faulted in again 4 KiB at a time as it is filled, and
/// the copy took 2 to 4 x as long as `cp`'s 128 KiB writes (issue 28).
pub const COPY_CHUNK: usize = MIB as usize;

/// Copies `span` (device offsets) from the primary to the leg through memory, a reader
/// thread reading the chunks ahead while this one writes them. Returns once every write
/// has completed (S1: the caller hands the run to a sync only then), or at the first
/// error with the reader stopped.
fn copy_through(
    primary: &dyn Device,
    target: &dyn Device,
    span: Range<u64>,
    direct: bool,
    g: &Geometry,
    buf: &mut [u8],
) -> CopyResult<()> {
    // Steps:
    // 1. Cut `buf` into COPY_CHUNK buffers, all free. Memory is bounded by `buf` (one
    //    COPY_RUN per leg copy): the reader is at most that far ahead of the writes.
    // 2. The reader takes a free buffer per chunk, in order, reads the primary into it
    //    past the page cache (S4: a short read or a read error is an error, handed over
    //    in the chunk's place), and hands it over; it stops at its first error, or when
    //    this side is gone.
    // 3. This thread writes each chunk as it comes, in order, and gives the buffer back.
    // 4. At the first error, or the last write, this side's channel ends drop, so the
    //    reader stops, and it is joined before returning.
    if span.is_empty() {
        return Ok(());
    }
    let at = |p: u64| p - g.data_offset;
    let chunks = || {
        (span.start..span.end)
            .step_by(COPY_CHUNK)
            .map(|p| (p, ((span.end - p) as usize).min(COPY_CHUNK)))
    };
    let read = |b: &mut [u8], p: u64| {
        primary
            .read_direct(b, p)
            .map_err(|e| CopyEnd::Primary(format!("reading primary at data offset {}: {e}", at(p))))
    };
    let write = |b: &[u8], p: u64| {
        if direct {
            target.write_direct(b, p)
        } else {
            target.write_at(b, p)
        }
        .map_err(|e| CopyEnd::Leg(format!("write at data offset {}", at(p)), e))
    };
    // 1.
    let (free, take) = std::sync::mpsc::channel::<&mut [u8]>();
    for b in buf.chunks_mut(COPY_CHUNK) {
        let _ = free.send(b);
    }
    let (hand, filled) = std::sync::mpsc::channel::<(&mut [u8], CopyResult<()>)>();
    let piped = std::thread::scope(|sc| {
        // 2.
        let reader = std::thread::Builder::new()
            .name("resync-read".into())
            .spawn_scoped(sc, move || {
                for (p, n) in chunks() {
                    let Ok(b) = take.recv() else { return };
                    let r = read(&mut b[..n], p);
                    let failed = r.is_err();
                    if hand.send((b, r)).is_err() || failed {
                        return;
                    }
                }
            });
        reader.ok()?;
        // 3.
        let write_all = move || {
            for (p, n) in chunks() {
                let (b, r) = filled.recv().map_err(|_| {
                    CopyEnd::Primary("reading primary: the reader thread ended".into())
                })?;
                r?;
                write(&b[..n], p)?;
                let _ = free.send(b);
            }
            Ok(())
        };
        // 4. (`free` and `filled` dropped with `write_all`, before the reader is joined.)
        Some(write_all())
    });
    piped.unwrap_or_else(|| {
        // No thread to be had: one chunk after the other on this one.
        for (p, n) in chunks() {
            read(&mut buf[..n], p)?;
            write(&buf[..n], p)?;
        }
        Ok(())
    })
}

/// `resync --compare` of one piece of a run: reads the primary (zeros for a hole) and the
/// leg, and writes (or zeroes) only the COMPARE_BLOCKs that differ. Where both the primary
/// and the leg have holes nothing is read: both read as zeros.
#[allow(clippy::too_many_arguments)]
fn compare_copy(
    primary: &dyn Device,
    target: &dyn Device,
    piece: Range<u64>,
    data: bool,
    g: &Geometry,
    ours: &mut [u8],
    theirs: &mut [u8],
    written: &AtomicU64,
) -> CopyResult<()> {
    let at = |p: u64| p - g.data_offset;
    // Spans to read: all of it, or for a hole of the primary only where the leg has data.
    let extents = if data {
        None
    } else {
        target.data_extents(piece.clone()).map_err(|e| {
            let what = format!("finding data at data offset {}", at(piece.start));
            CopyEnd::Leg(what, e)
        })?
    };
    let spans: Vec<Range<u64>> = extents
        .map(|ext| {
            ext.into_iter()
                .map(|e| e.start.max(piece.start)..e.end.min(piece.end))
                .filter(|e| !e.is_empty())
                .collect()
        })
        .unwrap_or_else(|| vec![piece]);
    let block = COMPARE_BLOCK.min(g.region_size) as usize;
    for piece in spans {
        let mut p = piece.start;
        while p < piece.end {
            let n = ((piece.end - p) as usize).min(ours.len());
            if data {
                primary.read_at(&mut ours[..n], p).map_err(|e| {
                    CopyEnd::Primary(format!("reading primary at data offset {}: {e}", at(p)))
                })?;
            } else {
                ours[..n].fill(0);
            }
            target
                .read_at(&mut theirs[..n], p)
                .map_err(|e| CopyEnd::Leg(format!("read at data offset {}", at(p)), e))?;
            // Runs of differing blocks, each written with one call.
            for run in plan::differing_runs(&ours[..n], &theirs[..n], block) {
                let off = p + run.start as u64;
                let len = run.len() as u64;
                let r = if data {
                    target.write_at(&ours[run], off)
                } else {
                    target.zero_range(off, len)
                };
                r.map_err(|e| CopyEnd::Leg(format!("write at data offset {}", at(off)), e))?;
                written.fetch_add(len, Ordering::Relaxed);
            }
            p += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NoProgress;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Ev {
        Wrote(u64, u64),
        Read(u64, u64),
        SyncStart,
        SyncEnd,
    }

    /// Memory with slow writes and syncs (and reads, if `read_ms`), every one logged with
    /// when it ran (writes and reads twice: when they began and when they ended).
    struct Slow {
        data: Mutex<Vec<u8>>,
        log: Mutex<Vec<(Instant, Ev)>>,
        read_ms: u64,
        /// A read covering this byte fails with EIO.
        bad: Option<u64>,
    }

    impl Slow {
        fn new(data: Vec<u8>, read_ms: u64) -> Slow {
            Slow {
                data: Mutex::new(data),
                log: Mutex::new(Vec::new()),
                read_ms,
                bad: None,
            }
        }
    }

    impl Device for Slow {
        fn len(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
            let (t, end) = (Instant::now(), off + buf.len() as u64);
            if self.bad.is_some_and(|b| (off..end).contains(&b)) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            std::thread::sleep(Duration::from_millis(self.read_ms));
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[off as usize..end as usize]);
            if self.read_ms > 0 {
                let mut l = self.log.lock().unwrap();
                l.push((t, Ev::Read(off, end)));
                l.push((Instant::now(), Ev::Read(off, end)));
            }
            Ok(())
        }
        fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(60));
            self.data.lock().unwrap()[off as usize..off as usize + buf.len()].copy_from_slice(buf);
            let mut l = self.log.lock().unwrap();
            l.push((t, Ev::Wrote(off, off + buf.len() as u64)));
            l.push((Instant::now(), Ev::Wrote(off, off + buf.len() as u64)));
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            self.log
                .lock()
                .unwrap()
                .push((Instant::now(), Ev::SyncStart));
            std::thread::sleep(Duration::from_millis(200));
            self.log.lock().unwrap().push((Instant::now(), Ev::SyncEnd));
            Ok(())
        }
    }

    /// A log of single regions, cleared when settled (with when).
    struct Owner {
        left: Mutex<Vec<u64>>,
        settled: Mutex<Vec<(Instant, Vec<Range<u64>>)>>,
    }

    impl Owner {
        fn new(regions: &[u64]) -> Owner {
            Owner {
                left: Mutex::new(regions.to_vec()),
                settled: Mutex::new(Vec::new()),
            }
        }
    }

    impl LogOwner for Owner {
        type Hold = ();
        fn next_run(&self, from: u64, max: u64) -> CopyResult<Option<Range<u64>>> {
            let l = self.left.lock().unwrap();
            let Some(i) = l.iter().position(|&r| r >= from) else {
                return Ok(None);
            };
            // Neighbouring regions make one run, of at most `max`.
            let mut run = l[i]..l[i] + 1;
            while l.get(i + run.clone().count()) == Some(&run.end) && run.end - run.start < max {
                run.end += 1;
            }
            Ok(Some(run))
        }
        fn hold(&self, _bytes: Range<u64>) {}
        fn release(&self, _hold: ()) {}
        fn settle(&self, runs: &[Range<u64>]) -> CopyResult<()> {
            self.left
                .lock()
                .unwrap()
                .retain(|r| !runs.iter().any(|x| x.contains(r)));
            self.settled
                .lock()
                .unwrap()
                .push((Instant::now(), runs.to_vec()));
            Ok(())
        }
        fn stop(&self) -> Option<CopyEnd> {
            None
        }
        fn direct_writes(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_batch_is_synced_while_the_next_copies_and_cleared_only_after_a_sync_that_began_after_its_writes(
    ) {
        let g = Geometry::for_data_size(64 * 65536, 65536, 1).unwrap();
        let len = g.total_len() as usize;
        let primary = Slow::new((0..len).map(|i| (i % 251) as u8).collect(), 0);
        let target = Slow::new(vec![0; len], 0);
        let regions: Vec<u64> = (0..12).map(|k| 2 * k).collect();
        let owner = Owner::new(&regions);
        let (log, syncs) = copy_and_check_s1(&g, &primary, &target, &owner);
        assert!(syncs.len() >= 2, "{log:?}");
        // Pipelined: the copy wrote on while a batch's sync ran.
        let overlapped = log.iter().any(|(t, e)| {
            matches!(e, Ev::Wrote(..)) && syncs.iter().any(|(s, end)| t > s && t < end)
        });
        assert!(
            overlapped,
            "the copy stood still during every sync: {log:?}"
        );
        for &r in &regions {
            let br = g.regions_bytes(r..r + 1);
            let (s, e) = (
                (g.data_offset + br.start) as usize,
                (g.data_offset + br.end) as usize,
            );
            assert_eq!(
                target.data.lock().unwrap()[s..e],
                primary.data.lock().unwrap()[s..e]
            );
        }
    }

    /// When something began and ended.
    type Span = (Instant, Instant);

    /// Reads and writes of `log`, each logged as two entries in a row.
    fn spans(log: &[(Instant, Ev)]) -> Vec<Span> {
        log.windows(2)
            .filter(|w| matches!(w[0].1, Ev::Read(..) | Ev::Wrote(..)) && w[0].1 == w[1].1)
            .map(|w| (w[0].0, w[1].0))
            .collect()
    }

    /// Syncs of `log`.
    fn syncs_of(log: &[(Instant, Ev)]) -> Vec<Span> {
        log.iter()
            .filter(|(_, e)| *e == Ev::SyncStart)
            .map(|(s, _)| {
                let end = log
                    .iter()
                    .find(|(t, e)| *e == Ev::SyncEnd && t >= s)
                    .unwrap()
                    .0;
                (*s, end)
            })
            .collect()
    }

    /// `copy_leg` with no rate limit and no compare: its result and what it copied.
    fn plain_copy(
        g: &Geometry,
        primary: &Slow,
        target: &Slow,
        owner: &Owner,
    ) -> (CopyResult<()>, Copied) {
        let limiter = RateLimit::new(None);
        let written = AtomicU64::new(0);
        let ctl = CopyCtl {
            limiter: &limiter,
            progress: &NoProgress,
            compare: false,
            written: &written,
        };
        let mut done = Copied::default();
        let r = copy_leg(g, primary, target, owner, &ctl, &mut done);
        (r, done)
    }

    /// Runs `copy_leg` over every region of `owner` to the end, and checks S1: every run
    /// cleared only after a sync of the target that started once its last write had
    /// ended and that returned before the clear. Returns the target's log and its syncs.
    fn copy_and_check_s1(
        g: &Geometry,
        primary: &Slow,
        target: &Slow,
        owner: &Owner,
    ) -> (Vec<(Instant, Ev)>, Vec<Span>) {
        let regions = owner.left.lock().unwrap().len() as u64;
        let (r, done) = plain_copy(g, primary, target, owner);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(done.regions, regions);
        assert!(owner.left.lock().unwrap().is_empty());
        let log = target.log.lock().unwrap().clone();
        let syncs = syncs_of(&log);
        for (at, runs) in owner.settled.lock().unwrap().iter() {
            for r in runs {
                let br = g.regions_bytes(r.clone());
                let (s, e) = (g.data_offset + br.start, g.data_offset + br.end);
                let last_write = log
                    .iter()
                    .filter(|(_, ev)| matches!(ev, Ev::Wrote(a, b) if *a < e && *b > s))
                    .map(|(t, _)| *t)
                    .max()
                    .unwrap();
                assert!(
                    syncs.iter().any(|(ss, se)| *ss >= last_write && se <= at),
                    "region {r:?} cleared without a sync after its last write"
                );
            }
        }
        (log, syncs)
    }

    #[test]
    fn a_run_is_read_ahead_while_written_in_chunks_and_cleared_only_after_a_sync_that_began_after_its_last_write(
    ) {
        let g = Geometry::for_data_size(256 * 65536, 65536, 1).unwrap();
        let len = g.total_len() as usize;
        let primary = Slow::new((0..len).map(|i| (i % 251) as u8).collect(), 20);
        let target = Slow::new(vec![0; len], 0);
        // Runs of 2.5 MiB, 8 MiB (a whole COPY_RUN) and 192 KiB.
        let regions: Vec<u64> = (0..40).chain(64..192).chain(200..203).collect();
        let owner = Owner::new(&regions);
        let (log, _) = copy_and_check_s1(&g, &primary, &target, &owner);
        // The target got the copied regions and nothing else.
        let (want, got) = (primary.data.lock().unwrap(), target.data.lock().unwrap());
        for r in 0..g.region_count {
            let br = g.regions_bytes(r..r + 1);
            let (s, e) = (
                (g.data_offset + br.start) as usize,
                (g.data_offset + br.end) as usize,
            );
            if regions.contains(&r) {
                assert!(got[s..e] == want[s..e], "region {r} differs");
            } else {
                assert!(got[s..e].iter().all(|&b| b == 0), "region {r} was written");
            }
        }
        // Written in chunks below 2 MiB (no 2 MiB page-cache folios for the target).
        let writes: Vec<(u64, u64)> = log
            .iter()
            .filter_map(|(_, e)| match e {
                Ev::Wrote(a, b) => Some((*a, *b)),
                _ => None,
            })
            .collect();
        assert!(
            writes.iter().all(|(a, b)| b - a <= COPY_CHUNK as u64),
            "{writes:?}"
        );
        // Pipelined: the primary was read while the target was written ...
        let reads = primary.log.lock().unwrap().clone();
        let (rs, ws) = (spans(&reads), spans(&log));
        assert!(
            rs.iter()
                .any(|(a, b)| ws.iter().any(|(c, d)| a < d && c < b)),
            "no read overlapped a write: reads {rs:?}, writes {ws:?}"
        );
        // ... and at most a COPY_RUN ahead of the writes (the memory bound).
        for (t, _) in &rs {
            let started = rs.iter().filter(|(a, _)| a <= t).count();
            let ended = ws.iter().filter(|(_, b)| b < t).count();
            assert!(
                started - ended.min(started) <= (COPY_RUN as usize) / COPY_CHUNK,
                "{started} chunks read and {ended} written"
            );
        }
    }

    #[test]
    fn a_read_error_of_the_primary_mid_run_fails_the_copy_writes_nothing_for_it_and_keeps_the_run_in_the_log(
    ) {
        let g = Geometry::for_data_size(256 * 65536, 65536, 1).unwrap();
        let len = g.total_len() as usize;
        let mut primary = Slow::new(vec![7; len], 1);
        // The third chunk of the one 4 MiB run.
        let bad = g.data_offset + 2 * COPY_CHUNK as u64 + 5;
        primary.bad = Some(bad);
        let target = Slow::new(vec![0; len], 0);
        let regions: Vec<u64> = (0..64).collect();
        let owner = Owner::new(&regions);
        let (r, done) = plain_copy(&g, &primary, &target, &owner);
        match r {
            Err(CopyEnd::Primary(m)) => assert!(
                m.contains(&format!("data offset {}", 2 * COPY_CHUNK)),
                "{m}"
            ),
            r => panic!("{r:?}"),
        }
        // S4: nothing written for the chunk that could not be read, or past it; S1: the
        // run stays in the log.
        let got = target.data.lock().unwrap();
        let chunk = bad as usize - 5;
        assert!(got[chunk..].iter().all(|&b| b == 0));
        assert!(got[g.data_offset as usize..chunk].iter().all(|&b| b == 7));
        assert_eq!(*owner.left.lock().unwrap(), regions);
        assert_eq!(done.regions, 0);
    }
}
