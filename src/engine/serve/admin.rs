//! Live administration of a served mirror: fracture, detach, attach and resync while hosts
//! write, carried out by the serving process (the control socket's commands; verify is in
//! `verify.rs`). The rules are the live set, H1..H8, at the top of `mod.rs`; the copy is
//! resync's one loop ([`crate::engine::resync`]) with serve as the owner of the log.

use crate::device::Device;
use crate::engine::leg_name;
use crate::engine::resync::{
    copy_leg, resync_started_detail, Copied, CopyCtl, CopyEnd, CopyResult, LogOwner, RateLimit,
    ResyncOptions,
};
use crate::engine::serve::LegId;
use crate::engine::serve::MutexGuard;
use crate::engine::serve::Server;
use crate::engine::serve::State;
use crate::engine::serve::Ticket;
use crate::engine::serve::Use;
use crate::engine::uuid_str;
use crate::engine::EventKind;
use crate::engine::Mirror;
use crate::engine::Progress;
use crate::engine::ResyncLegReport;
use crate::engine::ResyncReport;
use crate::error::Error;
use crate::error::Result;
use crate::format::LegState;
use crate::units::now_unix;
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Where an admin operation's warnings go besides serve's log: the client that asked.
pub type Say<'a> = &'a dyn Fn(&str);

impl Server {
    /// The mirror's warnings to serve's log and to the client that asked.
    pub(super) fn tell(&self, st: &mut State, say: Say<'_>) {
        for w in st.mirror.take_warnings() {
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
            .filter(|&s| sb.legs[s as usize].state() == LegState::Syncing)
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
        in_use(&st, slot)?;
        if st.mirror.sb().legs[slot as usize].state().is_fractured() {
            return Ok(false);
        }
        if st.receiving(slot) {
            // H5: exactly what it may miss, durably, in the hold that takes it off the
            // writers; from then on every write admitted sets its bits (H6).
            let missed = st.missed_by_a_leaving_leg();
            st.log_durably(slot, &missed)?;
            st.leave(slot);
        }
        let r = st.mirror.fracture(slot, reason);
        if r.is_ok() {
            let name = leg_name(slot, &st.mirror.sb().legs[slot as usize]);
            (self.log)(&format!(
                "{name} fractured by admin; its changes are tracked"
            ));
            // H10: after its fracture is durable (committed above).
            if self.fence.fence_peer.is_some() {
                st.queue_fence(
                    slot,
                    format!("by admin: {}", reason.unwrap_or("fractured by admin")),
                );
            }
        }
        self.tell(&mut st, say);
        drop(st);
        // The admin's command returns once the fence hook has run, and says how it went.
        self.run_fences();
        if let Some(why) = self.lock().fence_failed() {
            say(&format!(
                "warning: {why}: writes are refused until the leg is back in sync (`mirrorctl resync {}`) or detached",
                self.name
            ));
        }
        r
    }

    /// Detaches `slot` while hosts write: it stops receiving writes, then is detached (D1).
    pub fn detach_leg(&self, slot: u32, say: Say<'_>) -> Result<crate::format::Leg> {
        let mut st = self.lock();
        in_use(&st, slot)?;
        // Requests in flight that write the leg may still finish on it: harmless, it is
        // leaving the mirror. H8: any live operation on it stops at its next step.
        st.leave(slot);
        // H10: an image leaving the mirror needs no fence (nor is a failed one held
        // against the writes any more).
        let _ = self.unfence(&mut st, &[slot]);
        let r = st.mirror.detach(slot);
        if let Ok(l) = &r {
            (self.log)(&format!("{} detached", leg_name(slot, l)));
        }
        self.tell(&mut st, say);
        r
    }

    /// Attaches a secondary while hosts write (the engine's attach, A1..A4, under the state
    /// lock: host requests wait for its few metadata syncs), with the host writes in flight
    /// in its log (H7), receiving writes from the same lock hold. The initial sync is the
    /// caller's `resync_legs`.
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
        // H7: the writes in flight went to the legs listed when they were admitted: their
        // regions not in the log yet, durably, before the leg is a writer.
        let mut added = Vec::new();
        for r in st.writes_in_flight() {
            added.extend(st.mirror.unlogged_runs(slot, r)?);
        }
        if !added.is_empty() {
            st.log_durably(slot, &added)?;
            out.regions += added.iter().map(|r| r.end - r.start).sum::<u64>();
            if st.mirror.sb().legs[slot as usize].state() == LegState::InSync {
                // Declared identical (--assume-clean), but writes in flight may miss it.
                st.mirror.set_leg_state(slot, LegState::Syncing, now_unix());
                st.mirror.commit()?;
            }
        }
        let dev = st.mirror.open_leg(slot).map_err(Error::degraded)?;
        st.leave(slot);
        st.join(slot, dev);
        let name = leg_name(slot, &st.mirror.sb().legs[slot as usize]);
        (self.log)(&format!(
            "{name} attached{}; {} to copy",
            if out.reattached { " again" } else { "" },
            crate::units::plural(out.regions, "region")
        ));
        self.tell(&mut st, say);
        Ok(out)
    }

    /// Resyncs `slots` while hosts write: resync's copy loop with serve as the log's owner
    /// (runs in arrival order with the host writes, H4; bits cleared only while the same leg
    /// receives writes, H8), durable progress points (S1), then in sync (S2).
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
        let mut report = ResyncReport {
            compare: opts.compare,
            ..Default::default()
        };
        let mut work = Vec::new();
        let mut total = 0;
        // Each leg opened (its server connected, its header read) with no lock held: an
        // unreachable secondary stalls this resync, never the host writes.
        let fetched: Vec<Option<(crate::format::Leg, crate::engine::legs::Fetched)>> = slots
            .iter()
            .map(|&s| {
                let (leg, opener, open) = self.lock().mirror.leg_to_fetch(s);
                (!open && leg.state() != LegState::Empty).then(|| {
                    let f = crate::engine::legs::fetch_leg(&*opener, &leg);
                    (leg, f)
                })
            })
            .collect();
        {
            let mut st = self.lock();
            let now = now_unix();
            for (&s, fetched) in slots.iter().zip(fetched) {
                let leg = st.mirror.sb().legs[s as usize].clone();
                let mut lr = ResyncLegReport {
                    slot: s,
                    location: leg.location.clone(),
                    ..Default::default()
                };
                if leg.state() == LegState::Empty {
                    lr.error = Some(format!(
                        "secondary slot {s} is not in use (detached meanwhile?); nothing to copy"
                    ));
                    lr.detached = true;
                    report.legs.push(lr);
                    continue;
                }
                // In sync, nothing logged, receiving every write: nothing to copy, and its
                // state stays. (Set to syncing here, a leg another resync had just brought
                // back, say the background one after a restart, would be reported syncing.)
                let logged = st.mirror.pending_for(s)?.0;
                if leg.state() == LegState::InSync && logged == 0 && st.receiving(s) {
                    report.legs.push(lr);
                    continue;
                }
                let opened = match fetched {
                    Some((for_leg, f)) => st.mirror.open_leg_fetched(s, &for_leg, f),
                    None => st.mirror.open_leg(s),
                };
                match opened {
                    Ok(d) => {
                        let bytes = st.mirror.pending_for(s)?.1;
                        total += bytes;
                        // S3 + H7: syncing and receiving writes in this one lock hold; its
                        // log holds every write it missed (H5, H6).
                        st.mirror.set_leg_state(s, LegState::Syncing, now);
                        let what = resync_started_detail(bytes, opts.compare);
                        st.mirror.event(
                            EventKind::ResyncStarted,
                            Some(s),
                            &format!("{what}, while serving"),
                        );
                        let id = st.join(s, d.clone());
                        work.push((id, d));
                    }
                    Err(msg) => {
                        st.mirror.record_leg_error(s, &msg);
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
        for (id, dev) in &work {
            let s = id.slot;
            let owner = Live {
                srv: self,
                leg: *id,
                yield_to_hosts,
            };
            let written = AtomicU64::new(0);
            let ctl = CopyCtl {
                limiter: &limiter,
                progress,
                compare: opts.compare,
                written: &written,
            };
            let mut copied = Copied::default();
            let r = copy_leg(&g, &*self.primary, &**dev, &owner, &ctl, &mut copied);
            let lr = report
                .legs
                .iter_mut()
                .find(|l| l.slot == s)
                .expect("reported");
            copied.into_report(lr, written.into_inner());
            let mut st = self.lock();
            let why = match r {
                Ok(()) => {
                    done.push(*id);
                    continue;
                }
                Err(CopyEnd::Leg(what, e)) => {
                    let why = format!("{what}: {e}");
                    // H8: only the leg this copy wrote is fractured, never one attached in
                    // its slot since.
                    if st.is_current(id) {
                        let r = self.fracture(&mut st, s, what, e);
                        self.tell(&mut st, say);
                        r.map_err(|f| Error::primary(f.msg))?;
                    }
                    why
                }
                Err(CopyEnd::Gone(why)) => {
                    lr.detached = is_detached(&st, id);
                    why
                }
                Err(CopyEnd::Stopped(why)) => why,
                Err(CopyEnd::Primary(e)) => {
                    progress.finish();
                    st.mirror
                        .event(EventKind::ResyncFailed, Some(s), &format!("primary: {e}"));
                    let _ = st.mirror.commit();
                    return Err(Error::primary(e));
                }
            };
            st.mirror.event(EventKind::ResyncFailed, Some(s), &why);
            lr.error = Some(why);
        }
        progress.finish();
        let mut st = self.lock();
        let now = now_unix();
        // S2 + H8: only legs that are still the ones copied to and still receive writes.
        let mut current = Vec::new();
        for id in &done {
            if st.is_current(id) {
                current.push(id.slot);
            } else if let Some(lr) = report.legs.iter_mut().find(|l| l.slot == id.slot) {
                lr.detached = is_detached(&st, id);
                lr.error = Some(gone(&st, id));
            }
        }
        let synced = st.mirror.mark_resynced(&current, &report, now, &|_| true)?;
        let (bytes, written) = report
            .legs
            .iter()
            .filter(|l| synced.contains(&l.slot))
            .fold((0, 0), |(b, w), l| (b + l.bytes, w + l.written_bytes));
        st.mirror.commit()?;
        if !synced.is_empty() {
            st.mirror.refresh_headers(&synced);
        }
        // H10: fenced legs back in sync are unfenced; H9: they may be what writes wait for.
        let unfence = self.unfence(&mut st, &synced);
        self.resume(&mut st);
        self.changed.notify_all();
        self.tell(&mut st, say);
        drop(st);
        report.seconds = started.elapsed().as_secs_f64();
        (self.log)(&format!(
            "resync ended: slot(s) {synced:?} now in sync, {} in {:.1}s",
            crate::engine::resync::amounts(bytes, written, report.compare),
            report.seconds
        ));
        self.run_unfence(unfence);
        // A leg this resync fractured: its fence hook now.
        self.run_fences();
        Ok(report)
    }
}

/// A slot named by an admin command must still hold a leg when the command runs (another
/// command may have detached it since the slot was looked up).
fn in_use(st: &State, slot: u32) -> Result<()> {
    if st.mirror.sb().legs[slot as usize].state() == LegState::Empty {
        return Err(Error::invalid(format!(
            "secondary slot {slot} is not in use on {} (detached meanwhile?); nothing was changed (see `mirrorctl status`)",
            st.mirror.name
        )));
    }
    Ok(())
}

/// Whether the leg `id` named was detached (its slot freed, or holding another image).
fn is_detached(st: &State, id: &LegId) -> bool {
    let leg = &st.mirror.sb().legs[id.slot as usize];
    leg.state() == LegState::Empty || leg.image_uuid != id.image
}

/// Why a live operation's leg is no longer the one it started on (H8), as the admin sees it.
fn gone(st: &State, id: &LegId) -> String {
    let leg = &st.mirror.sb().legs[id.slot as usize];
    let image = &uuid_str(&id.image)[..8];
    if leg.state() == LegState::Empty {
        format!(
            "the leg (image {image}) was detached during the resync; nothing more of it was copied"
        )
    } else if leg.image_uuid != id.image {
        format!(
            "the leg (image {image}) was detached during the resync and {} attached in slot {}; nothing more of the old one was copied",
            crate::device::nbd::display(&leg.location),
            id.slot
        )
    } else if leg.state().is_fractured() {
        format!(
            "the leg was fractured during the resync ({}); the rest stays in its log for the next resync",
            leg.reason
        )
    } else {
        "the leg stopped and started receiving writes again during the resync (another resync took it over); the rest stays in its log".into()
    }
}

/// Serve's side of a live copy: runs in arrival order with the host writes (H4), the log
/// read and cleared under the state lock, and only while the leg is still the one the copy
/// started for and receives writes (H8).
struct Live<'a> {
    srv: &'a Server,
    leg: LegId,
    yield_to_hosts: bool,
}

impl Live<'_> {
    fn current<'s>(&self) -> CopyResult<MutexGuard<'s, State>>
    where
        Self: 's,
    {
        let st = self.srv.lock();
        if st.is_current(&self.leg) {
            Ok(st)
        } else {
            Err(CopyEnd::Gone(gone(&st, &self.leg)))
        }
    }
}

impl LogOwner for Live<'_> {
    type Hold = Ticket;

    fn next_run(&self, from: u64, max: u64) -> CopyResult<Option<Range<u64>>> {
        let mut st = self.current()?;
        st.mirror
            .next_logged_run(self.leg.slot, from, max)
            .map_err(|e| CopyEnd::Primary(e.to_string()))
    }

    fn hold(&self, bytes: Range<u64>) -> Ticket {
        // H4: this run's place among the host's writes.
        let t = self
            .srv
            .ticket_for(bytes.start, bytes.end - bytes.start, Use::Admin);
        drop(self.srv.wait_for_earlier(self.srv.lock(), &t));
        t
    }

    fn release(&self, t: Ticket) {
        self.srv.cancel(t);
    }

    fn settle(&self, runs: &[Range<u64>]) -> CopyResult<()> {
        // H8 + S1: cleared only while the same leg receives writes, in this lock hold.
        let mut st = self.current()?;
        st.mirror
            .clear_logged(self.leg.slot, runs)
            .and_then(|()| st.mirror.flush_bitmaps())
            .map_err(|e| CopyEnd::Primary(e.to_string()))
    }

    fn stop(&self) -> Option<CopyEnd> {
        self.srv.admin_stop.load(Ordering::SeqCst).then(|| {
            CopyEnd::Stopped(
                "serve is stopping; the rest stays in the fracture log for the next resync".into(),
            )
        })
    }

    fn before_run(&self) {
        if self.yield_to_hosts {
            // Up to 20 ms while hosts have requests in flight, then this run anyway, so
            // the resync always ends.
            for _ in 0..10 {
                if !self
                    .srv
                    .lock()
                    .inflight
                    .iter()
                    .any(|(_, _, u, w)| *u == Use::HostWrite && w.strong_count() > 0)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    fn direct_writes(&self) -> bool {
        true
    }
}
