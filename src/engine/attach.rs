//! Attach and detach: adding a secondary (new, re-attached, or a returning former primary)
//! with its initial log, and freeing a slot.
//!
//! Rules (tagged at the lines that keep them):
//! - A1 A new secondary's header is durable before the primary lists it; otherwise a crash
//!   leaves a listed leg whose image is not one of ours.
//! - A2 A free slot's fracture log is reset and the initial log set durably before the slot
//!   is recorded in the superblock; otherwise a crash leaves a listed leg with a stale log.
//! - A3 A re-attached image (same mirror and image UUID) keeps its fracture log; with
//!   `{COMPARE}` every region is logged too, so what it holds is read, never assumed.
//! - A4 One image UUID, one leg: an image carrying the UUID of a slot whose recorded location
//!   still holds that image (a byte copy) is refused; otherwise writes would silently stop
//!   reaching the original while the copy was called in sync.
//! - D1 The image's own header says detached, durably, before the primary frees the slot:
//!   a crash in between leaves the slot listed, so a rerun of `detach` completes (the other
//!   order left an image claiming to be a secondary of a primary that no longer lists it).
//! - D2 The slot's fracture log is cleared only after the slot is free: a crash before the
//!   commit leaves a listed leg with its log (A2 resets a free slot's log on attach anyway).
//!
//! D0 (a secondary without a header is overwritten only if it holds nothing, or with
//! `--force`) is kept in `device/probe.rs`.

use super::plan;
use crate::device::Device;
use crate::engine::new_uuid;
use crate::engine::uuid_str;
use crate::engine::EventKind;
use crate::engine::Mirror;
use crate::error::opt::*;
use crate::error::Error;
use crate::error::Result;
use crate::format;
use crate::format::layout::BitmapId;
use crate::format::layout::Geometry;
use crate::format::layout::SlotIdx;
use crate::format::Leg;
use crate::format::LegState;
use crate::format::Role;
use crate::meta::image::Image;
use crate::meta::image::ReadError;
use crate::units::now_unix;
use std::ops::Range;
use std::sync::Arc;

/// What `attach` does about the data already on a new secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialSync {
    /// Copy every region the primary may hold data in (a file is cleared first).
    Copy,
    /// Keep the secondary's data and log every region, for a resync with `compare`.
    Compare,
    /// Declare it identical: copy nothing.
    AssumeClean,
}

pub struct AttachOutcome {
    pub slot: u32,
    pub reattached: bool,
    /// Regions the new leg needs copied.
    pub regions: u64,
}

/// Attach step 1: the secondary's names fit a leg entry and its size fits the mirror.
fn check_fits(dev: &dyn Device, g: &Geometry, location: &str, canonical: &str) -> Result<()> {
    if location.len() > format::MAX_LOCATION || canonical.len() > format::MAX_LOCATION {
        return Err(Error::invalid(format!(
            "secondary path is longer than {} bytes; use a shorter path or a symlink",
            format::MAX_LOCATION
        )));
    }
    if dev.len() < g.total_len() {
        return Err(Error::invalid(format!(
            "secondary {location} is too small: it has {} bytes, the mirror needs {} ({} of metadata + {} of data)",
            dev.len(),
            g.total_len(),
            g.data_offset,
            g.data_size
        )));
    }
    Ok(())
}

impl Mirror {
    /// Adds a secondary. `dev` is the opened secondary, `location` how the admin named it.
    ///
    /// Steps:
    /// 1. Check the secondary fits: path lengths and size (`check_fits`).
    /// 2. Read its header and decide: refuse, new leg, or re-attach of slot `s` (A4, D0)
    ///    (`classify_existing`).
    /// 3. A re-attach keeps its slot and fracture log (A3, P3) and returns (`reattach`).
    /// 4. Otherwise pick a free slot (`free_slot`).
    /// 5. Find what must be copied; a regular-file secondary is cleared first
    ///    (`initial_extents`).
    /// 6. Write the secondary's header, durably (A1) (`write_secondary_header`).
    /// 7. Reset the slot's log and set the initial one, durably (A2) (`set_initial_log`).
    /// 8. List the leg in the primary's superblock and commit (`record_new_leg`).
    pub fn attach(
        &mut self,
        dev: Arc<dyn Device>,
        location: &str,
        canonical: &str,
        initial: InitialSync,
        force: bool,
        discard: bool,
    ) -> Result<AttachOutcome> {
        let assume_clean = initial == InitialSync::AssumeClean;
        let g = self.geometry();
        // 1.
        check_fits(&*dev, &g, location, canonical)?;
        // 2.
        let existing = Image::read(dev.clone());
        let reattach =
            self.classify_existing(&dev, &existing, location, canonical, initial, force)?;
        let now = now_unix();
        // 3.
        if let Some((s, img)) = reattach {
            return self.reattach(
                &dev, img, s, location, canonical, initial, force, discard, now,
            );
        }
        // 4.
        let slot = self.free_slot(&g)?;
        // 5. What must be copied: regions of the primary that may hold data. A regular-file
        // secondary is punched to zeros first, so holes of the primary need no copy; a block
        // device secondary, or one to compare (its data is kept), gets every region (resync
        // zeroes the target where the primary has holes). To copy, only chunks the primary's
        // written map holds (W7): a never-written chunk is the mirror's data on no leg.
        let written = self.written_runs()?;
        let image_uuid = new_uuid();
        let extents = self.initial_extents(&*dev, &g, location, initial)?;
        // 6.
        self.write_secondary_header(
            &dev,
            &g,
            slot,
            image_uuid,
            location,
            canonical,
            assume_clean,
        )?;
        // 7.
        let regions = self.set_initial_log(&g, slot, extents, &written, initial)?;
        // 8.
        self.record_new_leg(dev, slot, image_uuid, location, canonical, regions, now)?;
        Ok(AttachOutcome {
            slot,
            reattached: false,
            regions,
        })
    }

    /// Attach step 2: what the secondary's header says. Returns the slot it re-attaches to
    /// with the header read, `None` for a new leg, or the refusal.
    fn classify_existing<'i>(
        &self,
        dev: &Arc<dyn Device>,
        existing: &'i std::result::Result<Image, ReadError>,
        location: &str,
        canonical: &str,
        initial: InitialSync,
        force: bool,
    ) -> Result<Option<(u32, &'i Image)>> {
        let mut reattach_slot = None;
        match existing {
            Ok(img) if img.sb.mirror_uuid == self.sb().mirror_uuid => {
                if img.sb.image_uuid == self.sb().image_uuid {
                    return Err(Error::invalid(format!(
                        "{location} is this mirror's primary itself; give a different image"
                    )));
                }
                if let Some(s) = self.sb().slot_of_uuid(&img.sb.image_uuid) {
                    let leg = self.sb().legs[s].clone();
                    if leg.state().receives_writes() && leg.canonical == canonical {
                        return Err(Error::invalid(format!(
                            "{location} is already attached as slot {s} ({})",
                            leg.state().as_str()
                        )));
                    }
                    // A4: one image UUID, one leg. A byte copy of an attached image carries
                    // its UUID; re-attaching it while the recorded location still holds that
                    // image would silently stop writes to the original and call the copy
                    // in sync.
                    if leg.canonical != canonical && self.location_holds(&leg) {
                        return Err(Error::invalid(format!(
                            "{location} carries the identity (image {}) of slot {s}, which {} still holds: it is a byte copy of an attached secondary, and two images with one identity cannot both be legs. To put it in slot {s}'s place, detach the slot first (`mirrorctl detach {} {s}`) or move {} away; to add another secondary, attach a blank image",
                            uuid_str(&img.sb.image_uuid),
                            leg.open_path(),
                            self.name,
                            leg.location
                        )));
                    }
                    reattach_slot = Some((s as u32, img));
                } else if img.sb.role == Role::Primary && !force {
                    return Err(Error::invalid(format!(
                        "{location} is a primary of mirror {}; use {FORCE} to overwrite it",
                        uuid_str(&img.sb.mirror_uuid)
                    )));
                }
            }
            Ok(img) if !force => {
                return Err(Error::invalid(format!(
                    "{location} belongs to another mirror ({} image of mirror {}); use {FORCE} to overwrite it",
                    img.sb.role.as_str(),
                    uuid_str(&img.sb.mirror_uuid)
                )))
            }
            Err(ReadError::NotMirrorctl) if !force => self.refuse_if_holds_data(&**dev, location, initial)?,
            Err(ReadError::NotMirrorctl) | Ok(_) => {}
            Err(ReadError::Io(e)) => {
                return Err(Error::degraded(format!("reading secondary {location}: {e}")))
            }
            Err(e) if !force => {
                return Err(Error::invalid(format!(
                    "{location} holds a damaged mirrorctl header ({e}); use {FORCE} to overwrite it"
                )))
            }
            Err(_) => {}
        }
        Ok(reattach_slot)
    }

    /// Attach step 3: slot `s`'s own image comes back.
    #[allow(clippy::too_many_arguments)]
    fn reattach(
        &mut self,
        dev: &Arc<dyn Device>,
        img: &Image,
        s: u32,
        location: &str,
        canonical: &str,
        initial: InitialSync,
        force: bool,
        discard: bool,
        now: u64,
    ) -> Result<AttachOutcome> {
        let assume_clean = initial == InitialSync::AssumeClean;
        let g = self.geometry();
        // A3: keep the fracture log; only what changed is copied.
        let id = BitmapId::Fracture(SlotIdx(s));
        if img.sb.role == Role::Primary {
            self.take_back_primary(dev, img, id, location, assume_clean, discard)?;
        }
        if initial == InitialSync::Compare {
            // {COMPARE} compares everything it re-attaches: what the image holds is only
            // known by reading it (it may be an old copy, or changed behind our back).
            self.bitmaps
                .set_range(id, 0..g.region_count, true)
                .map_err(|e| self.meta_err("setting a fracture log", &e))?;
            self.flush_bitmaps()?;
        }
        let (regions, _) = self
            .bitmaps
            .count_bytes(id)
            .map_err(|e| self.meta_err("reading a fracture log", &e))?;
        if assume_clean && regions > 0 && !force {
            return Err(Error::invalid(format!(
                "{ASSUME_CLEAN} would discard {regions} out-of-sync region(s) of re-attached {location}; run without it (or add {FORCE})"
            )));
        }
        if assume_clean {
            self.bitmaps
                .clear_all(id)
                .map_err(|e| self.meta_err("clearing a fracture log", &e))?;
            self.flush_bitmaps()?;
        }
        self.image
            .sb
            .bump_generation(&format!("slot {s} re-attached"), now);
        let l = &mut self.image.sb.legs[s as usize];
        l.location = location.to_string();
        l.canonical = canonical.to_string();
        l.set_state(
            if assume_clean {
                LegState::InSync
            } else {
                LegState::Syncing
            },
            now,
        );
        l.reason.clear();
        let what = format!(
            "{}, re-attached: {regions} regions to copy",
            crate::device::nbd::display(location)
        );
        self.event(EventKind::Attached, Some(s), &what);
        self.commit()?;
        self.open_legs[s as usize] = None;
        Ok(AttachOutcome {
            slot: s,
            reattached: true,
            regions,
        })
    }

    /// Attach step 3, for a former primary returning (or the other side of a split brain):
    /// its possible writes go into slot log `id`, then its header becomes a secondary's.
    fn take_back_primary(
        &mut self,
        dev: &Arc<dyn Device>,
        img: &Image,
        id: BitmapId,
        location: &str,
        assume_clean: bool,
        discard: bool,
    ) -> Result<()> {
        let theirs = match crate::engine::failover::returning_primary_regions(
            self.sb(),
            &self.name,
            img,
            location,
            discard,
        ) {
            Ok(t) => t,
            Err(e) if e.msg.starts_with("split brain") => {
                // The refusal is recorded (an alert); nothing else changes.
                let what = format!("{}: {}", crate::device::nbd::display(location), e.msg);
                let _ = self.record(EventKind::SplitBrainRefused, None, &what);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if assume_clean {
            return Err(Error::invalid(format!(
                "{ASSUME_CLEAN} cannot be used for {location}: it was a primary and may hold writes this primary lacks"
            )));
        }
        // P3: its possible writes go into its log durably before its header changes.
        for r in theirs {
            self.bitmaps
                .set_range(id, r, true)
                .map_err(|e| self.meta_err("setting a fracture log", &e))?;
        }
        self.flush_bitmaps()?;
        let mut sec = Image::read(dev.clone())
            .map_err(|e| Error::degraded(format!("re-reading {location}: {e}")))?;
        let mut sb = self.secondary_sb(sec.sb.image_uuid, false);
        sb.created_at = sec.sb.created_at;
        sec.sb = sb;
        sec.commit()
            .map_err(|e| Error::degraded(format!("writing header of {location}: {e}")))?;
        Ok(())
    }

    /// Attach step 4: the first empty slot.
    fn free_slot(&self, g: &Geometry) -> Result<u32> {
        let Some(slot) = self
            .sb()
            .legs
            .iter()
            .position(|l| l.state() == LegState::Empty)
        else {
            return Err(Error::invalid(format!(
                "no free slot: all {} secondary slots of {} are in use; detach one first (the slot count is fixed at create with {MAX_SECONDARIES})",
                g.slots, self.name
            )));
        };
        Ok(slot as u32)
    }

    /// Attach step 5: the primary's data extents to copy (`Some(vec![])` copies nothing,
    /// `None` every region). A regular-file secondary to copy is cleared here.
    fn initial_extents(
        &self,
        dev: &dyn Device,
        g: &Geometry,
        location: &str,
        initial: InitialSync,
    ) -> Result<Option<Vec<Range<u64>>>> {
        Ok(if initial == InitialSync::AssumeClean {
            Some(vec![])
        } else if initial == InitialSync::Compare {
            None
        } else if dev.is_regular_file() {
            dev.zero_range(g.data_offset, g.data_size)
                .map_err(|e| Error::degraded(format!("clearing secondary {location}: {e}")))?;
            self.image
                .dev
                .data_extents(g.data_offset..g.total_len())
                .map_err(|e| self.meta_err("finding data extents", &e))?
        } else {
            None
        })
    }

    /// Attach step 6 (A1): the new secondary's header, durable before the primary lists it.
    #[allow(clippy::too_many_arguments)]
    fn write_secondary_header(
        &self,
        dev: &Arc<dyn Device>,
        g: &Geometry,
        slot: u32,
        image_uuid: [u8; 16],
        location: &str,
        canonical: &str,
        assume_clean: bool,
    ) -> Result<()> {
        // A1: the secondary's header first.
        dev.zero_range(g.bitmap_offset, g.bitmap_area().end - g.bitmap_offset)
            .map_err(|e| {
                Error::degraded(format!("clearing metadata of secondary {location}: {e}"))
            })?;
        let mut sb = self.secondary_sb(image_uuid, assume_clean);
        // Its own copy of the entry records no times (the primary's commit below does).
        let l = &mut sb.legs[slot as usize];
        *l = Leg::for_image(image_uuid, location, canonical, 0);
        l.set_state(LegState::Syncing, 0);
        Image::format(dev.clone(), sb)
            .map_err(|e| Error::degraded(format!("writing header of secondary {location}: {e}")))?;
        Ok(())
    }

    /// Attach step 7 (A2): reset the free slot's log and set the initial one, durably.
    /// Returns the regions logged.
    fn set_initial_log(
        &mut self,
        g: &Geometry,
        slot: u32,
        extents: Option<Vec<Range<u64>>>,
        written: &[Range<u64>],
        initial: InitialSync,
    ) -> Result<u64> {
        // A2: reset the slot's log and set the initial one, durably.
        let id = BitmapId::Fracture(SlotIdx(slot));
        self.bitmaps
            .clear_all(id)
            .map_err(|e| self.meta_err("clearing a fracture log", &e))?;
        let mut regions = 0;
        let mut log = plan::initial_log(g, extents);
        if initial == InitialSync::Copy {
            log = plan::within_written(&log, written);
        }
        for r in log {
            regions += r.end - r.start;
            self.bitmaps
                .set_range(id, r, true)
                .map_err(|e| self.meta_err("setting a fracture log", &e))?;
        }
        self.flush_bitmaps()?;
        Ok(regions)
    }

    /// Attach step 8: list the new leg in the primary's superblock, commit, and open it.
    #[allow(clippy::too_many_arguments)]
    fn record_new_leg(
        &mut self,
        dev: Arc<dyn Device>,
        slot: u32,
        image_uuid: [u8; 16],
        location: &str,
        canonical: &str,
        regions: u64,
        now: u64,
    ) -> Result<()> {
        self.image
            .sb
            .bump_generation(&format!("slot {slot} attached"), now);
        let l = &mut self.image.sb.legs[slot as usize];
        *l = Leg::for_image(image_uuid, location, canonical, now);
        l.set_state(
            if regions == 0 {
                LegState::InSync
            } else {
                LegState::Syncing
            },
            now,
        );
        let what = format!(
            "{}: {regions} regions to copy",
            crate::device::nbd::display(location)
        );
        self.event(EventKind::Attached, Some(slot), &what);
        self.commit()?;
        self.open_legs[slot as usize] = Some(dev);
        self.refresh_headers(&[slot]);
        Ok(())
    }

    /// D0 (probe.rs): a secondary without a mirrorctl header is overwritten only when it
    /// holds nothing. With {COMPARE} or {ASSUME_CLEAN} its data area is kept, so only a
    /// signature inside the metadata area (which attach overwrites) is refused.
    pub(super) fn refuse_if_holds_data(
        &self,
        dev: &dyn Device,
        location: &str,
        initial: InitialSync,
    ) -> Result<()> {
        let g = self.geometry();
        let found = crate::device::probe::holds_data(dev)
            .map_err(|e| Error::degraded(format!("reading secondary {location}: {e}")))?;
        let Some(f) = found else { return Ok(()) };
        if initial != InitialSync::Copy {
            if !f.signature || f.offset >= g.data_offset {
                return Ok(());
            }
            return Err(Error::invalid(format!(
                "secondary {location} holds {} (signature at byte {}), inside the first {} bytes that attach overwrites with the mirror's metadata: it is not a copy of this mirror. Nothing was written; use {FORCE} to overwrite it",
                f.what, f.offset, g.data_offset
            )));
        }
        // {COMPARE} keeps the data area only: offered when what was found lies there.
        let compare = if f.signature && f.offset < g.data_offset {
            ""
        } else {
            &format!(", or {COMPARE} if it is a copy of this mirror's data to keep (only what differs is written)")
        };
        Err(Error::invalid(format!(
            "secondary {location} holds {} (at byte {}); attaching would overwrite it. Nothing was written; use {FORCE} to overwrite it{compare}",
            f.what, f.offset
        )))
    }

    /// Frees a slot. The detached image's header is marked detached where reachable.
    ///
    /// D1 The image's own header says detached, durably, before the primary frees the slot:
    ///    a crash in between leaves the slot listed, so a rerun of `detach` finds it and
    ///    completes (the other order left an image claiming to be a secondary of a primary
    ///    that no longer lists it, and a rerun said "not attached").
    /// D2 The slot's fracture log is cleared only after the slot is free: a crash before the
    ///    commit leaves a listed leg with its log (A2 resets a free slot's log on attach).
    pub fn detach(&mut self, slot: u32) -> Result<Leg> {
        let leg = self.sb().legs[slot as usize].clone();
        let id = BitmapId::Fracture(SlotIdx(slot));
        let now = now_unix();
        // D1
        let marked = self
            .opener
            .open(leg.open_path())
            .map_err(|e| e.to_string())
            .and_then(|d| Image::read(d).map_err(|e| e.to_string()))
            .and_then(|mut img| {
                if img.sb.mirror_uuid != self.sb().mirror_uuid
                    || img.sb.image_uuid != leg.image_uuid
                {
                    return Err(format!(
                        "it holds image {} of mirror {}, not this slot's image; left as it is",
                        uuid_str(&img.sb.image_uuid),
                        uuid_str(&img.sb.mirror_uuid)
                    ));
                }
                if img.sb.role == Role::Detached {
                    return Ok(()); // a rerun after a crash
                }
                if img.sb.role != Role::Secondary {
                    return Err(format!(
                        "it is now a {} of this mirror; left as it is",
                        img.sb.role.as_str()
                    ));
                }
                img.sb.role = Role::Detached;
                img.sb.bump_generation("detached", now);
                img.commit().map_err(|e| e.to_string())
            });
        if let Err(e) = marked {
            self.warnings.push(format!(
                "note: could not mark {} as detached ({e}); its header still names this mirror",
                leg.location
            ));
        }
        self.image
            .sb
            .bump_generation(&format!("slot {slot} detached"), now);
        self.image.sb.legs[slot as usize] = Leg::empty();
        let what = format!(
            "{} (was {})",
            crate::device::nbd::display(&leg.location),
            leg.state().as_str()
        );
        self.event(EventKind::Detached, Some(slot), &what);
        self.commit()?;
        // D2
        self.bitmaps
            .clear_all(id)
            .map_err(|e| self.meta_err("clearing a fracture log", &e))?;
        self.flush_bitmaps()?;
        self.open_legs[slot as usize] = None;
        self.refresh_headers(&[]);
        Ok(leg)
    }
}
