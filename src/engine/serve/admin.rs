//! Live administration of a served mirror: fracture, detach, attach and resync while hosts
//! write, carried out by the serving process (the control socket's commands; verify is in
//! `verify.rs`).
//!
//! Rules, beside H1..H5 (tagged at the lines that keep them):
//! - L1 An admin fracture puts the hot set in the leg's fracture log, durably, before the
//!   leg leaves the writers' list and before any intent bit can be cleared (W4): writes in
//!   flight may or may not reach it, and every one is inside the hot set; bits no write uses
//!   are trimmed at eviction like an activation's.
//! - L2 A resync copy of a run is a mutation in arrival order (H4): it waits for every
//!   earlier overlapping host write and every later one waits for it, so a copy of old data
//!   never lands over a newer host write (DRBD's resync extents against AL extents).
//! - L3 A resynced leg receives host writes (S3) from the same lock hold that marks it
//!   syncing; a write admitted before it is copied after (L2), because its regions' bits
//!   were set ahead (W3) while the leg was fractured. The bits set ahead for it are no
//!   longer trimmed from then on (`forget_ahead`), nor after a detach: its log may now hold
//!   bits set for other reasons (an initial sync, differences verify recorded) that a trim
//!   of regions "no write used" would clear.
//! - L4 An attached leg's log holds the hot set besides its initial log, durably, before
//!   the leg receives writes, in one lock hold with adding it to the writers: writes in
//!   flight went to the legs listed when they started, every one of them inside the hot
//!   set, and the initial sync copies them after they finish (L2).

use super::*;
use crate::engine::plan;
use crate::engine::resync::{RateLimit, ResyncOptions, CHECKPOINT, COPY_RUN, RESYNC_BATCH};

/// Where an admin operation's warnings go besides serve's log: the client that asked.
pub type Say<'a> = &'a dyn Fn(&str);

impl Server {
    /// The mirror's warnings to serve's log and to the client that asked.
    pub(super) fn tell(&self, st: &mut State, say: Say<'_>) {
        for w in st.mirror.warnings.drain(..) {
            (self.log)(&w);
            say(&w);
        }
    }

    /// Ends live administration: a resync in progress stops at its next run (its leg keeps
    /// the rest of its log, S1). Called when serve stops.
    pub fn stop_admin(&self) {
        self.admin_stop.store(true, Ordering::SeqCst);
    }

    /// Legs left syncing (a resync that was interrupted: killed, or a serve stopped in the
    /// middle of one): serve continues them in the background at start.
    pub fn syncing_legs(&self) -> Vec<u32> {
        let st = self.lock();
        let sb = st.mirror.sb();
        (0..sb.geometry.slots)
            .filter(|&s| sb.legs[s as usize].state == LegState::Syncing)
            .collect()
    }

    /// Runs `f` on the mirror, with the state locked (for reading the leg table, finding
    /// slots, pending counts).
    pub fn with_mirror<T>(&self, f: impl FnOnce(&mut Mirror) -> T) -> T {
        let mut st = self.lock();
        f(&mut st.mirror)
    }

    /// Admin fracture of `slot` while hosts write; false if it was fractured already.
    pub fn fracture_leg(&self, slot: u32, reason: Option<&str>, say: Say<'_>) -> Result<bool> {
        let mut st = self.lock();
        if st.mirror.sb().legs[slot as usize].state.is_fractured() {
            return Ok(false);
        }
        // L1: the hot set in the leg's log first (only bits that were clear, so that unused
        // ones can go again at eviction), then the state, then the leg stops receiving.
        let id = BitmapId::Fracture(SlotIdx(slot));
        let mut ahead = Vec::new();
        for r in st.al.hot_regions() {
            let clear = st
                .mirror
                .clear_runs(id, r)
                .map_err(|e| st.mirror.meta_err("reading a fracture log", &e))?;
            for c in clear {
                st.mirror
                    .bitmaps
                    .set_range(id, c.clone(), true)
                    .map_err(|e| st.mirror.meta_err("setting a fracture log", &e))?;
                ahead.push((slot, c));
            }
        }
        st.mirror.flush_bitmaps()?;
        st.al.add_ahead(&ahead);
        let r = st.mirror.fracture(slot, reason);
        st.legs.retain(|(s, _)| *s != slot);
        if r.is_ok() {
            let name = leg_name(slot, &st.mirror.sb().legs[slot as usize]);
            (self.log)(&format!(
                "{name} fractured by admin; its changes are tracked"
            ));
        }
        self.tell(&mut st, say);
        r
    }

    /// Detaches `slot` while hosts write: it stops receiving writes, then is detached (D1).
    pub fn detach_leg(&self, slot: u32, say: Say<'_>) -> Result<crate::format::Leg> {
        let mut st = self.lock();
        // Requests in flight that write the leg may still finish on it: harmless, it is
        // leaving the mirror.
        st.legs.retain(|(s, _)| *s != slot);
        let r = st.mirror.detach(slot);
        if let Ok(l) = &r {
            // L3: the slot's next leg starts with a log of its own.
            st.al.forget_ahead(slot);
            (self.log)(&format!("{} detached", leg_name(slot, l)));
        }
        self.tell(&mut st, say);
        r
    }

    /// Attaches a secondary while hosts write (the engine's attach, A1..A4, under the state
    /// lock: host requests wait for its few metadata syncs), with the hot set in its log
    /// (L4), receiving writes from the same lock hold. The initial sync is the caller's
    /// `resync_legs`.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_leg(
        &self,
        dev: Arc<dyn Device>,
        location: &str,
        canonical: &str,
        initial: crate::engine::InitialSync,
        force: bool,
        discard: bool,
        say: Say<'_>,
    ) -> Result<crate::engine::AttachOutcome> {
        let mut st = self.lock();
        let r = st
            .mirror
            .attach(dev, location, canonical, initial, force, discard);
        self.tell(&mut st, say);
        let mut out = r?;
        let slot = out.slot;
        st.al.forget_ahead(slot);
        // L4: the hot set's regions not in the log yet, durably, before the leg is a writer.
        let id = BitmapId::Fracture(SlotIdx(slot));
        let mut added = 0;
        for r in st.al.hot_regions() {
            let clear = st
                .mirror
                .clear_runs(id, r)
                .map_err(|e| st.mirror.meta_err("reading a fracture log", &e))?;
            for c in clear {
                added += c.end - c.start;
                st.mirror
                    .bitmaps
                    .set_range(id, c, true)
                    .map_err(|e| st.mirror.meta_err("setting a fracture log", &e))?;
            }
        }
        if added > 0 {
            st.mirror.flush_bitmaps()?;
            out.regions += added;
            let leg = &mut st.mirror.image.sb.legs[slot as usize];
            if leg.state == LegState::InSync {
                // Declared identical (--assume-clean), but writes in flight may miss it.
                leg.set_state(LegState::Syncing, now_unix());
                st.mirror.commit()?;
            }
        }
        let dev = st.mirror.open_leg(slot).map_err(Error::degraded)?;
        st.legs.retain(|(s, _)| *s != slot);
        st.legs.push((slot, dev));
        let name = leg_name(slot, &st.mirror.sb().legs[slot as usize]);
        (self.log)(&format!(
            "{name} attached{}; {} to copy",
            if out.reattached { " again" } else { "" },
            crate::units::plural(out.regions, "region")
        ));
        self.tell(&mut st, say);
        Ok(out)
    }

    /// Resyncs `slots` while hosts write, copying run by run in arrival order with the
    /// host's writes (L2), with durable progress points (S1), then marks them in sync (S2).
    /// `yield_to_hosts`: before each run, wait a moment while host requests are in flight
    /// (a background resync takes the disk only when hosts leave it idle).
    pub fn resync_legs(
        &self,
        slots: &[u32],
        opts: &ResyncOptions,
        yield_to_hosts: bool,
        progress: &dyn Progress,
        say: Say<'_>,
    ) -> Result<ResyncReport> {
        let started = Instant::now();
        let g = self.geometry;
        let mut report = ResyncReport::default();
        let mut work = Vec::new();
        let mut total = 0;
        {
            let mut st = self.lock();
            let now = now_unix();
            for &s in slots {
                let leg = st.mirror.sb().legs[s as usize].clone();
                let mut lr = ResyncLegReport {
                    slot: s,
                    location: leg.location.clone(),
                    ..Default::default()
                };
                match st.mirror.open_leg(s) {
                    Ok(d) => {
                        let bytes = st.mirror.pending_for(s)?.1;
                        total += bytes;
                        // S3 + L3: syncing and receiving writes in this one lock hold.
                        st.mirror.image.sb.legs[s as usize].set_state(LegState::Syncing, now);
                        let what =
                            crate::engine::resync::resync_started_detail(bytes, opts.compare);
                        st.mirror.event(
                            EventKind::ResyncStarted,
                            Some(s),
                            &format!("{what}, while serving"),
                        );
                        st.al.forget_ahead(s);
                        if !st.legs.iter().any(|(x, _)| *x == s) {
                            st.legs.push((s, d.clone()));
                        }
                        work.push((s, d));
                    }
                    Err(msg) => {
                        st.mirror.image.sb.legs[s as usize].last_error =
                            cut(&msg, format::MAX_TEXT);
                        lr.error = Some(msg);
                    }
                }
                report.legs.push(lr);
            }
            st.mirror.commit()?;
        }
        progress.set_total(total);
        (self.log)(&format!(
            "resync of slot(s) {slots:?} started while serving: {} to copy",
            crate::units::format_size(total)
        ));
        let limiter = RateLimit::new(opts.rate);
        let mut done = Vec::new();
        for (s, dev) in work {
            let lr = report.legs.iter_mut().find(|l| l.slot == s).unwrap();
            let how = Copy {
                limiter: &limiter,
                compare: opts.compare,
                yield_to_hosts,
                progress,
            };
            match self.copy_live(s, &*dev, &g, &how, lr) {
                Ok(()) => done.push(s),
                Err(Failed::Leg(what, e)) => {
                    lr.error = Some(format!("{what}: {e}"));
                    let mut st = self.lock();
                    st.mirror
                        .event(EventKind::ResyncFailed, Some(s), &format!("{what}: {e}"));
                    let r = self.fracture(&mut st, s, what, e);
                    self.tell(&mut st, say);
                    r.map_err(|f| Error::primary(f.msg))?;
                }
                Err(Failed::Gone) => {
                    let why = "the leg stopped receiving writes during the resync (fractured)";
                    lr.error = Some(why.into());
                    self.lock()
                        .mirror
                        .event(EventKind::ResyncFailed, Some(s), why);
                }
                Err(Failed::Stopped) => {
                    let why =
                        "serve is stopping; the rest stays in the fracture log for the next resync";
                    lr.error = Some(why.into());
                    self.lock()
                        .mirror
                        .event(EventKind::ResyncFailed, Some(s), why);
                }
                Err(Failed::Primary(e)) => {
                    progress.finish();
                    let mut st = self.lock();
                    st.mirror
                        .event(EventKind::ResyncFailed, Some(s), &format!("primary: {e}"));
                    let _ = st.mirror.commit();
                    return Err(e);
                }
            }
        }
        progress.finish();
        let mut st = self.lock();
        let now = now_unix();
        // S2, and only for legs still receiving writes (not fractured meanwhile).
        let receiving: Vec<u32> = st.legs.iter().map(|(s, _)| *s).collect();
        let synced = st
            .mirror
            .mark_resynced(&done, &report, now, &|s| receiving.contains(&s))?;
        let bytes: u64 = report
            .legs
            .iter()
            .filter(|l| synced.contains(&l.slot))
            .map(|l| l.bytes)
            .sum();
        st.mirror.commit()?;
        if !synced.is_empty() {
            st.mirror.refresh_headers(&synced);
        }
        self.tell(&mut st, say);
        report.seconds = started.elapsed().as_secs_f64();
        (self.log)(&format!(
            "resync ended: slot(s) {synced:?} now in sync, {} copied in {:.1}s",
            crate::units::format_size(bytes),
            report.seconds
        ));
        Ok(report)
    }

    /// Copies one leg's fracture log from the primary while hosts write.
    fn copy_live(
        &self,
        slot: u32,
        leg: &dyn Device,
        g: &Geometry,
        how: &Copy<'_>,
        lr: &mut ResyncLegReport,
    ) -> std::result::Result<(), Failed> {
        let id = BitmapId::Fracture(SlotIdx(slot));
        let max_run = plan::max_run_regions(
            how.limiter.bytes_in(CHECKPOINT / 2),
            COPY_RUN,
            g.region_size,
        );
        let size = COPY_RUN.max(g.region_size) as usize;
        let mut buf = crate::device::AlignedBuf::zeroed(size);
        let mut theirs = if how.compare {
            vec![0u8; size]
        } else {
            Vec::new()
        };
        let written = AtomicU64::new(0);
        let mut from = 0;
        let mut batch: Vec<Range<u64>> = Vec::new();
        let mut batch_bytes = 0;
        let mut batch_started = Instant::now();
        let meta = |e: io::Error| Failed::Primary(Error::primary_io("reading a fracture log", &e));
        let result = loop {
            if self.admin_stop.load(Ordering::SeqCst) {
                self.checkpoint(slot, leg, &mut batch, lr, g)?;
                break Err(Failed::Stopped);
            }
            let run = {
                let mut st = self.lock();
                if !st.legs.iter().any(|(s, _)| *s == slot) {
                    break Err(Failed::Gone); // a host write failed on it (H5)
                }
                st.mirror
                    .bitmaps
                    .next_run(id, from, max_run)
                    .map_err(meta)?
            };
            let Some(r) = run else {
                break self.checkpoint(slot, leg, &mut batch, lr, g);
            };
            from = r.end;
            if how.yield_to_hosts {
                // Up to 20 ms while hosts have requests in flight, then this run anyway, so
                // the resync always ends.
                for _ in 0..10 {
                    if self.lock().inflight.is_empty() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let br = g.regions_bytes(r.clone());
            // L2: this run's place among the host's writes.
            let t = self.ticket(br.start, br.end - br.start);
            drop(self.wait_for_earlier(self.lock(), &t));
            let copied = if how.compare {
                self.compare_run(leg, g, br.clone(), &mut buf, &mut theirs, &written)
            } else {
                written.fetch_add(br.end - br.start, Ordering::Relaxed);
                self.copy_run(leg, g, br.clone(), &mut buf)
            };
            self.cancel(t);
            copied?;
            // The rate limit waits with the run released: host writes there go on meanwhile.
            how.limiter.take(br.end - br.start);
            how.progress.advance(br.end - br.start);
            batch_bytes += br.end - br.start;
            batch.push(r);
            if batch_bytes >= RESYNC_BATCH || batch_started.elapsed() >= CHECKPOINT {
                self.checkpoint(slot, leg, &mut batch, lr, g)?;
                batch_bytes = 0;
                batch_started = Instant::now();
            }
        };
        lr.written_bytes = written.load(Ordering::Relaxed).min(lr.bytes);
        result
    }

    /// `resync --compare` of one run: only the blocks that differ are written (the
    /// command's own comparison, `resync::compare_copy`).
    fn compare_run(
        &self,
        leg: &dyn Device,
        g: &Geometry,
        br: Range<u64>,
        ours: &mut [u8],
        theirs: &mut [u8],
        written: &AtomicU64,
    ) -> std::result::Result<(), Failed> {
        let (start, end) = (g.data_offset + br.start, g.data_offset + br.end);
        let extents = self.primary.data_extents(start..end).map_err(|e| {
            Failed::Primary(Error::primary_io(
                format!("reading primary {} at data offset {}", self.name, br.start),
                &e,
            ))
        })?;
        // The rate limit is taken by the caller, with the run released.
        let unlimited = RateLimit::new(None);
        let never = AtomicBool::new(false);
        let ctl =
            crate::engine::resync::CopyCtl::new(&unlimited, &never, &NoProgress, true, written);
        for (piece, data) in plan::copy_pieces(start..end, extents) {
            if piece.is_empty() {
                continue;
            }
            crate::engine::resync::compare_copy(
                &*self.primary,
                leg,
                piece,
                data,
                g,
                ours,
                theirs,
                &ctl,
            )
            .map_err(|e| match e {
                crate::engine::resync::CopyErr::Primary(m) => Failed::Primary(Error::primary(m)),
                crate::engine::resync::CopyErr::Leg(what, e) => Failed::Leg(what, e),
            })?;
        }
        Ok(())
    }

    /// One run from the primary to the leg (holes as zeroes, S4).
    fn copy_run(
        &self,
        leg: &dyn Device,
        g: &Geometry,
        br: Range<u64>,
        buf: &mut [u8],
    ) -> std::result::Result<(), Failed> {
        let (start, end) = (g.data_offset + br.start, g.data_offset + br.end);
        let at = |p: u64| p - g.data_offset;
        let perr = |p: u64, e: io::Error| {
            Failed::Primary(Error::primary_io(
                format!("reading primary {} at data offset {}", self.name, at(p)),
                &e,
            ))
        };
        let extents = self
            .primary
            .data_extents(start..end)
            .map_err(|e| perr(start, e))?;
        for (piece, data) in plan::copy_pieces(start..end, extents) {
            if piece.is_empty() {
                continue;
            }
            if !data {
                leg.zero_range(piece.start, piece.end - piece.start)
                    .map_err(|e| {
                        Failed::Leg(format!("zeroing at data offset {}", at(piece.start)), e)
                    })?;
                continue;
            }
            let mut p = piece.start;
            while p < piece.end {
                let n = ((piece.end - p) as usize).min(buf.len());
                self.primary
                    .read_at(&mut buf[..n], p)
                    .map_err(|e| perr(p, e))?;
                leg.write_direct(&buf[..n], p)
                    .map_err(|e| Failed::Leg(format!("write at data offset {}", at(p)), e))?;
                p += n as u64;
            }
        }
        Ok(())
    }

    /// S1: the batch durable on the leg, then its bits cleared (one metadata sync).
    fn checkpoint(
        &self,
        slot: u32,
        leg: &dyn Device,
        batch: &mut Vec<Range<u64>>,
        lr: &mut ResyncLegReport,
        g: &Geometry,
    ) -> std::result::Result<(), Failed> {
        if batch.is_empty() {
            return Ok(());
        }
        leg.sync().map_err(|e| Failed::Leg("sync".into(), e))?;
        let id = BitmapId::Fracture(SlotIdx(slot));
        let mut st = self.lock();
        for r in batch.drain(..) {
            st.mirror
                .bitmaps
                .set_range(id, r.clone(), false)
                .map_err(|e| Failed::Primary(st.mirror.meta_err("clearing a fracture log", &e)))?;
            lr.regions += r.end - r.start;
            let br = g.regions_bytes(r);
            lr.bytes += br.end - br.start;
        }
        st.mirror.flush_bitmaps().map_err(Failed::Primary)
    }
}

/// How a live resync copies.
struct Copy<'a> {
    limiter: &'a RateLimit,
    /// Read the leg too and write only the blocks that differ.
    compare: bool,
    /// Before each run, wait a moment while host requests are in flight.
    yield_to_hosts: bool,
    progress: &'a dyn Progress,
}

/// Why a live copy stopped.
enum Failed {
    /// The leg failed (it is fractured by the caller, H5).
    Leg(String, io::Error),
    /// The leg was fractured by a host write that failed on it.
    Gone,
    /// serve is stopping.
    Stopped,
    /// The primary failed: the resync stops, the leg keeps its log.
    Primary(Error),
}
