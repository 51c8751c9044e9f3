//! Resync: copying the regions of fracture logs from the primary (or, with `compare`, only
//! the blocks that differ), legs in parallel, rate-limited, with durable progress points.
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
use super::*;

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
        let mut report = ResyncReport::default();
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
                    let l = &mut self.image.sb.legs[s as usize];
                    l.set_state(LegState::Syncing, now);
                    let what = resync_started_detail(bytes, opts.compare);
                    self.event(EventKind::ResyncStarted, Some(s), &what);
                }
                Err(msg) => {
                    let l = &mut self.image.sb.legs[s as usize];
                    l.last_error = cut(&msg, format::MAX_TEXT);
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
        let written: Vec<AtomicU64> = work.iter().map(|_| AtomicU64::new(0)).collect();
        let results: Vec<(u32, LegResult)> = std::thread::scope(|sc| {
            let hs: Vec<_> = work
                .iter()
                .zip(&written)
                .map(|((s, dev), written)| {
                    let (s, dev) = (*s, dev.clone());
                    let primary = primary.clone();
                    let (bitmaps, limiter, abort) = (&bitmaps, &limiter, &abort);
                    let ctl = CopyCtl {
                        limiter,
                        abort,
                        progress,
                        compare: opts.compare,
                        written,
                    };
                    sc.spawn(move || {
                        let r = copy_leg(s, &g, &*primary, &*dev, bitmaps, &ctl);
                        if matches!(r, Err(LegError::Primary(_))) {
                            abort.store(true, Ordering::SeqCst);
                        }
                        (s, r)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        progress.finish();
        for ((s, _), w) in work.iter().zip(&written) {
            let lr = report.legs.iter_mut().find(|l| l.slot == *s).unwrap();
            lr.written_bytes = w.load(Ordering::Relaxed);
        }
        let mut primary_err = None;
        let now = now_unix();
        let mut done = Vec::new();
        for (s, r) in results {
            let lr = report.legs.iter_mut().find(|l| l.slot == s).unwrap();
            match r {
                Ok((regions, bytes)) => {
                    lr.regions = regions;
                    lr.bytes = bytes;
                    done.push(s);
                }
                Err(LegError::Primary(e)) => primary_err = Some(e),
                Err(LegError::Aborted(regions, bytes)) => {
                    lr.regions = regions;
                    lr.bytes = bytes;
                }
                Err(LegError::Leg(what, e, regions, bytes)) => {
                    lr.regions = regions;
                    lr.bytes = bytes;
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
            let what = format!(
                "in sync: {} copied ({} written)",
                crate::units::format_size(lr.bytes),
                crate::units::format_size(lr.written_bytes)
            );
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

pub(super) type LegResult = std::result::Result<(u64, u64), LegError>;

/// Copies `len` bytes at `off` from one file to the same offset of another in the kernel.
pub(super) fn copy_file_range_all(
    from: &std::fs::File,
    to: &std::fs::File,
    off: u64,
    len: u64,
) -> io::Result<()> {
    let (mut src, mut dst) = (off, off);
    let end = off + len;
    while src < end {
        let want = (end - src) as usize;
        let n = rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), want)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
    }
    Ok(())
}

pub(super) enum CopyErr {
    Primary(String),
    Leg(String, io::Error),
}

/// What a resync-started event says.
pub(super) fn resync_started_detail(bytes: u64, compare: bool) -> String {
    format!(
        "{} to {}",
        crate::units::format_size(bytes),
        if compare { "compare" } else { "copy" }
    )
}

/// `resync --compare` of one piece of a run: reads the primary (zeros for a hole) and the
/// leg, and writes (or zeroes) only the COMPARE_BLOCKs that differ. Where both the primary
/// and the leg have holes nothing is read: both read as zeros.
#[allow(clippy::too_many_arguments)]
pub(super) fn compare_copy(
    primary: &dyn Device,
    target: &dyn Device,
    piece: Range<u64>,
    data: bool,
    g: &Geometry,
    ours: &mut [u8],
    theirs: &mut [u8],
    ctl: &CopyCtl,
) -> std::result::Result<(), CopyErr> {
    let at = |p: u64| p - g.data_offset;
    // Spans to read: all of it, or for a hole of the primary only where the leg has data.
    let extents = if data {
        None
    } else {
        target.data_extents(piece.clone()).map_err(|e| {
            let what = format!("finding data at data offset {}", at(piece.start));
            CopyErr::Leg(what, e)
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
                    CopyErr::Primary(format!("reading primary at data offset {}: {e}", at(p)))
                })?;
            } else {
                ours[..n].fill(0);
            }
            target
                .read_at(&mut theirs[..n], p)
                .map_err(|e| CopyErr::Leg(format!("read at data offset {}", at(p)), e))?;
            ctl.limiter.take(n as u64);
            // Runs of differing blocks, each written with one call.
            for run in plan::differing_runs(&ours[..n], &theirs[..n], block) {
                let off = p + run.start as u64;
                let len = run.len() as u64;
                let r = if data {
                    target.write_at(&ours[run], off)
                } else {
                    target.zero_range(off, len)
                };
                r.map_err(|e| CopyErr::Leg(format!("write at data offset {}", at(off)), e))?;
                ctl.written.fetch_add(len, Ordering::Relaxed);
            }
            p += n as u64;
        }
    }
    Ok(())
}

pub(super) enum LegError {
    Primary(String),
    /// (what, error, regions done, bytes done)
    Leg(String, io::Error, u64, u64),
    Aborted(u64, u64),
}

/// What one leg's copy shares with the others, and how it copies.
pub(super) struct CopyCtl<'a> {
    limiter: &'a RateLimit,
    abort: &'a AtomicBool,
    progress: &'a dyn Progress,
    compare: bool,
    /// Bytes written to this leg so far.
    written: &'a AtomicU64,
}

impl<'a> CopyCtl<'a> {
    pub(super) fn new(
        limiter: &'a RateLimit,
        abort: &'a AtomicBool,
        progress: &'a dyn Progress,
        compare: bool,
        written: &'a AtomicU64,
    ) -> Self {
        CopyCtl {
            limiter,
            abort,
            progress,
            compare,
            written,
        }
    }
}

/// Granularity of `resync --compare`: blocks that differ are written, the rest left alone.
pub(super) const COMPARE_BLOCK: u64 = 64 * 1024;

/// Copies one leg's fracture log from the primary (S1).
pub(super) fn copy_leg(
    slot: u32,
    g: &Geometry,
    primary: &dyn Device,
    target: &dyn Device,
    bitmaps: &Mutex<&mut Bitmaps>,
    ctl: &CopyCtl,
) -> std::result::Result<(u64, u64), LegError> {
    let CopyCtl {
        limiter,
        abort,
        progress,
        ..
    } = *ctl;
    let id = BitmapId::Fracture(SlotIdx(slot));
    // A run is copied whole before CHECKPOINT is looked at, so under a low --rate it must
    // take at most half of it (durable points then come within 1.5 x CHECKPOINT): a
    // COPY_RUN takes 8 s at 1 MiB/s, and a resync interrupted more often than that never
    // made any progress durable.
    let max_run = plan::max_run_regions(limiter.bytes_in(CHECKPOINT / 2), COPY_RUN, g.region_size);
    let mut buf = vec![0u8; (COPY_RUN.max(g.region_size)) as usize];
    let mut theirs = if ctl.compare {
        vec![0u8; buf.len()]
    } else {
        Vec::new()
    };
    let (mut regions, mut bytes) = (0u64, 0u64);
    let mut from = 0;
    let merr = |e: io::Error| {
        LegError::Primary(format!(
            "reading the fracture log of slot {slot} on the primary: {e}"
        ))
    };
    loop {
        if abort.load(Ordering::SeqCst) {
            return Err(LegError::Aborted(regions, bytes));
        }
        // Collect a batch of runs.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        {
            let mut b = bitmaps.lock().unwrap();
            while batch_bytes < RESYNC_BATCH {
                match b.next_run(id, from, max_run).map_err(merr)? {
                    Some(r) => {
                        from = r.end;
                        let br = g.regions_bytes(r.clone());
                        batch_bytes += br.end - br.start;
                        batch.push(r);
                    }
                    None => break,
                }
            }
        }
        if batch.is_empty() {
            return Ok((regions, bytes));
        }
        let batch_started = Instant::now();
        let mut copied_runs = 0;
        for r in &batch {
            if copied_runs > 0 && batch_started.elapsed() >= CHECKPOINT {
                // Slow (rate-limited) copies make their progress durable in time too, so a
                // killed resync loses about CHECKPOINT of work; the rest is picked up next.
                break;
            }
            copied_runs += 1;
            let br = g.regions_bytes(r.clone());
            let (start, end) = (g.data_offset + br.start, g.data_offset + br.end);
            let extents = primary.data_extents(start..end).map_err(|e| {
                LegError::Primary(format!("reading primary at data offset {}: {e}", br.start))
            })?;
            let pieces = plan::copy_pieces(start..end, extents);
            for (piece, data) in pieces {
                if piece.is_empty() {
                    continue;
                }
                if ctl.compare {
                    let r =
                        compare_copy(primary, target, piece, data, g, &mut buf, &mut theirs, ctl);
                    r.map_err(|e| match e {
                        CopyErr::Primary(m) => LegError::Primary(m),
                        CopyErr::Leg(what, e) => LegError::Leg(what, e, regions, bytes),
                    })?;
                    continue;
                }
                ctl.written
                    .fetch_add(piece.end - piece.start, Ordering::Relaxed);
                if !data {
                    target
                        .zero_range(piece.start, piece.end - piece.start)
                        .map_err(|e| {
                            LegError::Leg(
                                format!("zeroing at data offset {}", piece.start - g.data_offset),
                                e,
                                regions,
                                bytes,
                            )
                        })?;
                    continue;
                }
                let mut p = piece.start;
                while p < piece.end {
                    let n = ((piece.end - p) as usize).min(buf.len());
                    // File to file: the kernel copies without passing the data through
                    // here. Any error is retried by reading and writing, which tells
                    // whether the primary or the target is at fault.
                    if let (Some(from), Some(to)) = (primary.file(), target.file()) {
                        if copy_file_range_all(from, to, p, n as u64).is_ok() {
                            limiter.take(n as u64);
                            p += n as u64;
                            continue;
                        }
                    }
                    primary.read_at(&mut buf[..n], p).map_err(|e| {
                        LegError::Primary(format!(
                            "reading primary at data offset {}: {e}",
                            p - g.data_offset
                        ))
                    })?;
                    target.write_at(&buf[..n], p).map_err(|e| {
                        LegError::Leg(
                            format!("write at data offset {}", p - g.data_offset),
                            e,
                            regions,
                            bytes,
                        )
                    })?;
                    limiter.take(n as u64);
                    p += n as u64;
                }
            }
            progress.advance(br.end - br.start);
        }
        if copied_runs < batch.len() {
            from = batch[copied_runs].start;
            batch.truncate(copied_runs);
        }
        // S1: durable on the target before the bits go.
        target
            .sync()
            .map_err(|e| LegError::Leg("sync".into(), e, regions, bytes))?;
        let mut b = bitmaps.lock().unwrap();
        for r in &batch {
            b.set_range(id, r.clone(), false).map_err(merr)?;
            regions += r.end - r.start;
            let br = g.regions_bytes(r.clone());
            bytes += br.end - br.start;
        }
        b.flush()
            .map_err(|e| LegError::Primary(format!("syncing bitmaps of the primary: {e}")))?;
    }
}
