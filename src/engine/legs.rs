//! The legs as the primary sees them: opening and checking a secondary (P1, P5), the
//! replaced-primary checks (P6, P7), fractures (admin and error, W4), and the headers the
//! secondaries carry.
//!
//! - O1 A leg whose opening is refused by TLS (the server's certificate does not verify,
//!   or the server will not start TLS) is not fractured: a command that would write stops
//!   before writing anything. Otherwise whoever can answer on the leg's address with the
//!   wrong certificate makes the mirror drop a secondary and run degraded, unasked.

use crate::device::Device;
use crate::engine::leg_name;
use crate::engine::quorum;
use crate::engine::uuid_str;
use crate::engine::EventKind;
use crate::engine::Mirror;
use crate::engine::Opener;
use crate::error::Error;
use crate::error::Result;
use crate::format;
use crate::format::cut;
use crate::format::history::relate;
use crate::format::history::Relation;
use crate::format::layout::BitmapId;
use crate::format::layout::SlotIdx;
use crate::format::ranges::union;
use crate::format::Leg;
use crate::format::LegState;
use crate::format::Role;
use crate::format::Superblock;
use crate::format::Uuid;
use crate::meta::image::Image;
use crate::meta::image::ReadError;
use crate::units::now_unix;
use std::io;
use std::ops::Range;
use std::sync::Arc;

/// A leg's device opened and its header read ([`fetch_leg`]), before any check.
pub(crate) type Fetched = io::Result<(Arc<dyn Device>, std::result::Result<Image, ReadError>)>;

/// The I/O of opening a leg (connecting to its server, reading its header), which needs
/// none of the mirror's state: done outside a server's lock by live operations.
pub(crate) fn fetch_leg(opener: &dyn Opener, leg: &Leg) -> Fetched {
    let dev = opener.open(leg.open_path())?;
    let img = Image::read(dev.clone());
    Ok((dev, img))
}

pub(super) struct LegFailure {
    pub(super) slot: u32,
    pub(super) what: String,
    pub(super) err: io::Error,
}

impl Mirror {
    /// Opens a leg and checks that the image there is the one the slot names.
    pub fn open_leg(&mut self, slot: u32) -> std::result::Result<Arc<dyn Device>, String> {
        self.open_leg_or_refusal(slot).map_err(|(msg, _)| msg)
    }

    /// [`Mirror::open_leg`], the error saying also whether the leg refused to be trusted
    /// (TLS: a certificate that does not verify): such a leg is not fractured (O1).
    pub(crate) fn open_leg_or_refusal(
        &mut self,
        slot: u32,
    ) -> std::result::Result<Arc<dyn Device>, (String, bool)> {
        let mut refused = false;
        let r = self.open_checked(slot, &mut refused);
        r.map_err(|msg| (msg, refused))
    }

    fn open_checked(
        &mut self,
        slot: u32,
        refused: &mut bool,
    ) -> std::result::Result<Arc<dyn Device>, String> {
        if let Some(d) = &self.open_legs[slot as usize] {
            return Ok(d.clone());
        }
        let leg = self.sb().legs[slot as usize].clone();
        let fetched = fetch_leg(&*self.opener, &leg);
        self.accept_fetched(slot, leg, fetched, refused)
    }

    /// What a live operation needs before it opens `slot` outside the server's lock: the
    /// leg as listed, the opener, and whether it is open already.
    pub(crate) fn leg_to_fetch(&self, slot: u32) -> (Leg, Arc<dyn Opener>, bool) {
        (
            self.sb().legs[slot as usize].clone(),
            self.opener.clone(),
            self.open_legs[slot as usize].is_some(),
        )
    }

    /// [`Mirror::open_leg`] with the device opened and its header read beforehand by
    /// [`fetch_leg`] (no lock held: an NBD server that does not answer stalls nobody);
    /// refused if the slot lists another leg now.
    pub(crate) fn open_leg_fetched(
        &mut self,
        slot: u32,
        fetched_for: &Leg,
        fetched: Fetched,
    ) -> std::result::Result<Arc<dyn Device>, String> {
        if let Some(d) = &self.open_legs[slot as usize] {
            return Ok(d.clone());
        }
        let leg = self.sb().legs[slot as usize].clone();
        if leg.image_uuid != fetched_for.image_uuid || leg.open_path() != fetched_for.open_path() {
            return Err(format!(
                "secondary slot {slot} changed while it was being opened (detached or attached again); nothing was copied"
            ));
        }
        self.accept_fetched(slot, leg, fetched, &mut false)
    }

    fn accept_fetched(
        &mut self,
        slot: u32,
        leg: Leg,
        fetched: Fetched,
        refused: &mut bool,
    ) -> std::result::Result<Arc<dyn Device>, String> {
        // Where the image may have gone (a loop device renumbered, a disk renamed): how to
        // point the slot at it again without a full copy.
        let moved = || {
            format!(
                "; if the image moved, `mirrorctl attach {} NEWPATH` re-attaches image {} in slot {slot}, keeping its log",
                self.name,
                uuid_str(&leg.image_uuid)
            )
        };
        let (dev, img) = fetched.map_err(|e| {
            *refused = crate::tls::is_refused(&e);
            format!(
                "opening {}: {}{}",
                crate::device::nbd::display(leg.open_path()),
                crate::error::describe_io(&e),
                if *refused { String::new() } else { moved() }
            )
        })?;
        let img = img.map_err(|e| {
            format!(
                "reading header of {}: {e}{}",
                crate::device::nbd::display(&leg.location),
                moved()
            )
        })?;
        if img.sb.mirror_uuid == self.sb().mirror_uuid
            && img.sb.image_uuid == leg.image_uuid
            && img.sb.role != Role::Secondary
        {
            // Rule P1: an image that was promoted (or detached) is never written as a
            // secondary; writing it would mix two primaries' data (split brain).
            return Err(format!(
                "{} is now a {} of this mirror, no longer this primary's secondary (promoted elsewhere?); not writing to it",
                leg.location,
                img.sb.role.as_str()
            ));
        }
        if img.sb.mirror_uuid != self.sb().mirror_uuid || img.sb.image_uuid != leg.image_uuid {
            return Err(format!(
                "{} holds image {} of mirror {}, not this slot's image {}{}",
                leg.location,
                uuid_str(&img.sb.image_uuid),
                uuid_str(&img.sb.mirror_uuid),
                uuid_str(&leg.image_uuid),
                moved()
            ));
        }
        if img.sb.geometry != self.geometry() {
            return Err(format!(
                "{} has a different geometry",
                crate::device::nbd::display(&leg.location)
            ));
        }
        if img.sb.primary_uuid != self.sb().image_uuid {
            self.adopt(img, &leg)?;
        }
        self.open_legs[slot as usize] = Some(dev.clone());
        Ok(dev)
    }

    /// A leg whose header names another primary of this mirror (failover.rs P5): taken
    /// over when its history is ours or a prefix of ours (it followed the primary this one
    /// replaced), refused when it went through generations this primary does not know (a
    /// newer primary took it over: writing it would mix two primaries' data unseen).
    pub(super) fn adopt(&mut self, mut img: Image, leg: &Leg) -> std::result::Result<(), String> {
        let rel = relate(&self.sb().history, &img.sb.history);
        if !matches!(rel, Relation::Same | Relation::Behind { .. }) {
            return Err(format!(
                "{} now follows another primary of this mirror (image {}, {}, generation {}), which is {} this primary (generation {}); promoted elsewhere? not writing to it",
                leg.location,
                &uuid_str(&img.sb.primary_uuid)[..8],
                if img.sb.primary_location.is_empty() { "unknown path" } else { &img.sb.primary_location },
                img.sb.generation,
                match rel {
                    Relation::Ahead { .. } => "ahead of",
                    _ => "diverged from",
                },
                self.sb().generation
            ));
        }
        if !self.opener.writable() {
            // Only read (e.g. `read` falling back to a secondary): nothing to take over.
            return Ok(());
        }
        // P5: the leg names this primary durably before any data is written to it, so
        // the primary it followed before can no longer take it back.
        let keep = (img.sb.created_at, img.sb.in_sync_generation);
        let mut sb = self.secondary_sb(img.sb.image_uuid, false);
        (sb.created_at, sb.in_sync_generation) = keep;
        img.sb = sb;
        img.commit().map_err(|e| {
            format!(
                "writing the header of {}: {e}",
                crate::device::nbd::display(&leg.location)
            )
        })
    }

    /// P6 (failover.rs): refuses, before anything is written, when a reachable leg shows
    /// that another image replaced this primary.
    pub fn refuse_if_replaced(&self) -> Result<()> {
        for (s, leg) in self.sb().legs.iter().enumerate() {
            if leg.state() == LegState::Empty {
                continue;
            }
            let Some(theirs) = self.leg_header(leg) else {
                continue;
            };
            if let Some(new) = crate::engine::failover::replaced_by(self.sb(), leg, &theirs.sb) {
                let how = if theirs.sb.role == Role::Primary {
                    format!(
                        "its secondary slot {s} ({}) was promoted to primary",
                        leg.location
                    )
                } else {
                    format!(
                        "its secondary slot {s} ({}) now follows the newer primary {new}",
                        leg.location
                    )
                };
                let me = std::fs::canonicalize(&self.name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| self.name.clone());
                return Err(Error::invalid(format!(
                    "{} is no longer the primary of its mirror: {how}; nothing was written. Bring it back as a secondary of the new primary with `mirrorctl attach {new} {me}` (if the promotion was interrupted, `mirrorctl promote {new}` finishes it the same way)",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// P7 (failover.rs): the former primary's slot, when the image there was not demoted yet
    /// (it still says primary, or it is this primary's secondary while the slot still says
    /// "replaced by promotion").
    pub fn unfinished_demotion(&self) -> Option<(u32, Leg)> {
        for (s, leg) in self.sb().legs.iter().enumerate() {
            if leg.state() != LegState::FracturedByError
                || !leg
                    .reason
                    .starts_with(crate::engine::failover::REPLACED_REASON)
            {
                continue;
            }
            let Some(theirs) = self.leg_header(leg) else {
                continue;
            };
            let same = theirs.sb.mirror_uuid == self.sb().mirror_uuid
                && theirs.sb.image_uuid == leg.image_uuid;
            let pending = match theirs.sb.role {
                Role::Primary => true,
                Role::Secondary => theirs.sb.primary_uuid == self.sb().image_uuid,
                Role::Detached => false,
            };
            if same && pending {
                return Some((s as u32, leg.clone()));
            }
        }
        None
    }

    /// Records regions found to differ on a leg (verify, V1 in verify/mod.rs): they go into its
    /// fracture log durably, then an in-sync leg becomes syncing (S2: in sync only with an
    /// empty log) and its header stops claiming to be current.
    pub fn mark_out_of_sync(&mut self, slot: u32, regions: &[u64]) -> Result<()> {
        for r in union(&regions.iter().map(|&r| r..r + 1).collect::<Vec<_>>(), &[]) {
            self.mark_logged(slot, r)?;
        }
        self.flush_bitmaps()?;
        let now = now_unix();
        if self.sb().legs[slot as usize].state() == LegState::InSync {
            self.image.sb.bump_generation(
                &format!("slot {slot}: {} region(s) differ", regions.len()),
                now,
            );
            let l = &mut self.image.sb.legs[slot as usize];
            l.set_state(LegState::Syncing, now);
            l.reason = crate::engine::verify::RECORDED_REASON.to_string();
            self.commit()?;
            self.refresh_headers(&[slot]);
        }
        Ok(())
    }

    /// Fractures a leg that failed outside a write (e.g. unreadable during verify).
    pub fn fracture_by_error(&mut self, slot: u32, what: &str, err: &str) -> Result<()> {
        self.fracture_on_error(
            LegFailure {
                slot,
                what: what.to_string(),
                err: io::Error::other(err.to_string()),
            },
            &[],
        )
    }

    /// Records a leg failure: W4 then the state change.
    pub(super) fn fracture_on_error(&mut self, f: LegFailure, window: &[Range<u64>]) -> Result<()> {
        self.fracture_on_error_as(f, window, false)
    }

    /// [`Mirror::fracture_on_error`]; `refusing`: too few secondaries are left in sync for
    /// the minimum, so writes are refused from this generation on (Q2).
    pub(super) fn fracture_on_error_as(
        &mut self,
        f: LegFailure,
        window: &[Range<u64>],
        refusing: bool,
    ) -> Result<()> {
        let s = f.slot;
        // W4: everything not known durable on the leg is in the current window (a stream's
        // window, or a server's hot set).
        for r in window.iter().filter(|r| !r.is_empty()) {
            self.mark_logged(s, r.clone())?;
        }
        self.flush_bitmaps()?;
        let now = now_unix();
        let name = leg_name(s, &self.sb().legs[s as usize]);
        let text = crate::error::plain(&format!("{}: {}", f.what, f.err));
        self.image.sb.bump_generation(
            &format!(
                "slot {s} fractured by error{}",
                if refusing { quorum::REFUSING } else { "" }
            ),
            now,
        );
        let generation = self.sb().generation;
        let leg = &mut self.image.sb.legs[s as usize];
        leg.set_state(LegState::FracturedByError, now);
        leg.reason = cut(
            &crate::error::plain(&format!("I/O error: {}", f.err)),
            format::MAX_TEXT,
        );
        leg.last_error = cut(&text, format::MAX_TEXT);
        leg.fractured_at = Some(now);
        leg.fracture_generation = generation;
        self.event(EventKind::Fractured, Some(s), &format!("by error: {text}"));
        self.commit()?;
        self.open_legs[s as usize] = None;
        self.warnings.push(format!(
            "warning: {name} failed ({text}); it is fractured and its changes are tracked for `mirrorctl resync`"
        ));
        self.refresh_headers(&[]);
        Ok(())
    }

    /// Opens every leg that receives writes; a leg that cannot be opened is fractured.
    pub(super) fn active_legs(&mut self) -> Result<Vec<(u32, Arc<dyn Device>)>> {
        let mut out = Vec::new();
        for s in 0..self.geometry().slots {
            if !self.sb().legs[s as usize].state().receives_writes() {
                continue;
            }
            match self.open_leg_or_refusal(s) {
                Ok(d) => out.push((s, d)),
                // O1: nothing is written, so the leg stays as it was, in step.
                Err((msg, true)) => {
                    return Err(Error::invalid(format!(
                        "slot {s}: {msg}; nothing was written and the leg is not fractured: fix its TLS settings (or `mirrorctl fracture {} {s}` to go on without it)",
                        self.name
                    )))
                }
                Err((msg, false)) => self.fracture_on_error(
                    LegFailure {
                        slot: s,
                        what: "opening".into(),
                        err: io::Error::other(msg),
                    },
                    &[],
                )?,
            }
        }
        Ok(out)
    }

    /// Q2: before a write is acknowledged on this image, a refusing generation (the last
    /// one, a fracture that left writes refused) is ended by a new one, committed. A commit
    /// that failed is tried again here (the refusing one is what is on disk). Returns
    /// whether there was one to end.
    pub fn end_refusing_generation(&mut self) -> Result<bool> {
        if !self.refusing_generation() {
            return Ok(false);
        }
        if quorum::last_refusing(self.sb()) {
            self.image
                .sb
                .bump_generation(quorum::ACKNOWLEDGING, now_unix());
        }
        self.commit()?;
        Ok(true)
    }

    /// Admin fracture: the leg stops receiving writes; later writes go to its log.
    pub fn fracture(&mut self, slot: u32, reason: Option<&str>) -> Result<bool> {
        let leg = self.sb().legs[slot as usize].clone();
        if leg.state().is_fractured() {
            return Ok(false);
        }
        let now = now_unix();
        self.image
            .sb
            .bump_generation(&format!("slot {slot} fractured by admin"), now);
        let generation = self.sb().generation;
        let l = &mut self.image.sb.legs[slot as usize];
        l.set_state(LegState::FracturedByAdmin, now);
        l.reason = cut(reason.unwrap_or("fractured by admin"), format::MAX_TEXT);
        l.fractured_at = Some(now);
        l.fracture_generation = generation;
        let why = format!("by admin: {}", l.reason);
        self.event(EventKind::Fractured, Some(slot), &why);
        self.commit()?;
        // Best effort: the secondary's own header records that it is no longer current.
        let _ = leg;
        self.refresh_headers(&[slot]);
        Ok(true)
    }

    /// Builds the header a secondary carries: the mirror's identity and leg table.
    pub(super) fn secondary_sb(&self, image_uuid: Uuid, in_sync: bool) -> Superblock {
        let p = self.sb();
        Superblock {
            mirror_uuid: p.mirror_uuid,
            image_uuid,
            role: Role::Secondary,
            generation: p.generation,
            created_at: now_unix(),
            geometry: p.geometry,
            primary_uuid: p.image_uuid,
            // Absolute, so `promote` finds the primary from any working directory.
            primary_location: cut(
                &std::fs::canonicalize(&self.name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| self.name.clone()),
                format::MAX_LOCATION,
            ),
            legs: p.legs.clone(),
            in_sync_generation: if in_sync { p.generation } else { 0 },
            history: p.history.clone(),
            last_verify: None,
            last_resync: None,
            last_recovery: None,
            // The journal is the primary's.
            journal: None,
            written_map: None,
        }
    }

    /// Rewrites the headers of the legs that receive writes (and of `also`) from the
    /// primary's state: leg table, generation history, and whether the leg is in sync. Runs
    /// on state changes only, never per write. A failure is a warning: the primary's
    /// superblock is the authority, and `promote` refuses a secondary whose header does not
    /// say it was in sync at its latest generation.
    pub fn refresh_headers(&mut self, also: &[u32]) {
        for s in 0..self.geometry().slots {
            let leg = self.sb().legs[s as usize].clone();
            if leg.state() == LegState::Empty
                || !(leg.state().receives_writes() || also.contains(&s))
            {
                continue;
            }
            let clean = self
                .bitmaps
                .count(BitmapId::Fracture(SlotIdx(s)))
                .map(|n| n == 0)
                .unwrap_or(false);
            let in_sync = leg.state() == LegState::InSync && clean;
            if let Err(e) = self.update_secondary_header(s, in_sync) {
                self.warnings.push(format!(
                    "warning: could not update the header of {}: {e}",
                    leg_name(s, &leg)
                ));
            }
        }
    }

    /// After a promotion: every other listed secondary's header is made to name this
    /// primary now (P5, through `open_leg`), so a former primary that is still running
    /// somewhere can no longer write to them. `except` is the former primary's slot.
    pub fn take_over_secondaries(&mut self, except: u32) {
        let others: Vec<u32> = (0..self.geometry().slots)
            .filter(|&s| s != except && self.sb().legs[s as usize].state() != LegState::Empty)
            .collect();
        self.refresh_headers(&others);
    }

    /// Rewrites one secondary's own header from the primary's current state.
    pub fn update_secondary_header(&mut self, slot: u32, in_sync: bool) -> io::Result<()> {
        let dev = self.open_leg(slot).map_err(io::Error::other)?;
        let mut img = Image::read(dev).map_err(|e| io::Error::other(e.to_string()))?;
        let keep_created = img.sb.created_at;
        let prev_in_sync = img.sb.in_sync_generation;
        let mut sb = self.secondary_sb(img.sb.image_uuid, in_sync);
        sb.created_at = keep_created;
        if !in_sync {
            sb.in_sync_generation = prev_in_sync;
        }
        img.sb = sb;
        img.commit()
    }

    /// Whether a leg's recorded location still holds the leg's image (its header names
    /// this mirror and the slot's image UUID).
    pub(super) fn location_holds(&self, leg: &Leg) -> bool {
        self.leg_header(leg).is_some_and(|i| {
            i.sb.mirror_uuid == self.sb().mirror_uuid && i.sb.image_uuid == leg.image_uuid
        })
    }

    /// The header at a leg's recorded location, if it can be opened and read (no checks).
    pub(super) fn leg_header(&self, leg: &Leg) -> Option<Image> {
        let dev = self.opener.open(leg.open_path()).ok()?;
        Image::read(dev).ok()
    }
}
