//! The mirror engine: the only code that changes a mirror. [`Mirror`] owns the primary's
//! image, bitmaps and superblock (private fields); each operation is one entry point in its
//! own file, with the durability rules it keeps at the top of that file:
//! `write` (W1-W6), `recover` (R1-R3), `resync` (S1-S4), `attach` (A1-A4, D0-D2),
//! `legs` (fractures, headers of the secondaries), `failover` (P1-P7), `verify` (V1),
//! `status` (the report and the one health rule), `serve` (requests from hosts, H1-H10,
//! over the activity log of `activity`), `quorum` (Q1, `--min-in-sync`), `fence` (E1, the
//! fence hooks). This module sees devices, never paths,
//! locks or output.

mod activity;
mod attach;
pub mod create;
pub mod export;
pub mod failover;
pub mod fence;
pub(crate) mod legs;
pub mod plan;
pub mod quorum;
mod recover;
mod resync;
pub mod serve;
pub mod status;
pub mod verify;
mod write;

pub use activity::{DEFAULT_HOT_EXTENTS, EXTENT_BYTES, MIN_HOT_EXTENTS};
pub use attach::{AttachOutcome, InitialSync};
use legs::LegFailure;
pub use resync::{
    amounts as resync_amounts, RateLimit, ResyncLegReport, ResyncOptions, ResyncReport, CHECKPOINT,
    COPY_RUN, RESYNC_BATCH,
};
pub use write::{WriteReport, CHUNK, WINDOW};

pub use crate::device::open::Opener;
use crate::device::Device;
use crate::error::{Error, Result};
pub use crate::format::journal::Kind as EventKind;
use crate::format::layout::{BitmapId, Geometry, SlotIdx};
use crate::format::ranges::union;
use crate::format::{self, Leg, LegState, Role, Superblock, Uuid};
use crate::meta::bitmaps::Bitmaps;
use crate::meta::image::{Image, ReadError};
use crate::units::now_unix;
use std::io;
use std::ops::Range;
use std::sync::Arc;

/// When the legs are made durable during a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// At the end (and at every write-intent window boundary).
    End,
    /// After every chunk.
    Always,
    /// Every this many bytes (and at every window boundary).
    Every(u64),
}

/// A mirror opened on its primary. Its header and logs (`image`, `bitmaps`) are private:
/// every change goes through a named method of the engine (`set_leg_state`, `mark_logged`,
/// ...), `engine/serve` included, with the rule tags at the callers' lines that keep them.
/// (Rust lets the engine's child modules see the fields; the methods are the way in.) The
/// `pub` fields are settings and output for the caller, no state of the mirror.
pub struct Mirror {
    image: Image,
    bitmaps: Bitmaps,
    opener: Arc<dyn Opener>,
    /// Name of the primary for messages (its path).
    pub name: String,
    /// One-line warnings for the user, printed by the caller ([`Mirror::take_warnings`]).
    warnings: Vec<String>,
    /// Legs opened (and checked) during this command, by slot.
    open_legs: Vec<Option<Arc<dyn Device>>>,
    /// Bytes of write-intent window marked at once; [`WINDOW`] unless a test shrinks it to
    /// exercise window moves with small images.
    pub window: u64,
    /// The write intents on disk are a running server's writes in flight (its hot set), not
    /// an unclean stop: what a resync would copy is the fracture logs alone.
    intents_live: bool,
    /// Secondaries a stream's write needs in sync to be acknowledged (`write
    /// --min-in-sync`, Q1 of [`quorum`]); 0 by default.
    pub min_in_sync: u32,
    /// The fence hook a stream runs for each leg it loses (`write --fence-peer`, E1).
    pub fence: fence::FenceHooks,
    /// Q2: the last committed superblock's last generation left writes refused (what a
    /// failed commit left in memory does not count).
    committed_refusing: bool,
}

/// "secondary slot 1 (/srv/b.img)" (an NBD leg by its short form, `nbd::display`).
pub fn leg_name(slot: u32, leg: &Leg) -> String {
    format!(
        "secondary slot {slot} ({})",
        crate::device::nbd::display(&leg.location)
    )
}

pub fn uuid_str(u: &Uuid) -> String {
    uuid::Uuid::from_bytes(*u).to_string()
}

pub fn new_uuid() -> Uuid {
    *uuid::Uuid::new_v4().as_bytes()
}

/// Maps a superblock read error on the primary to an exit code and message. An image with
/// no header is offered `create` only when it holds nothing: a header of zeros over data may
/// be a destroyed mirrorctl header, and `create` would make it worse.
pub fn read_error(name: &str, e: ReadError, dev: &dyn Device) -> Error {
    match e {
        ReadError::NotMirrorctl => match crate::device::probe::holds_data(dev) {
            Ok(None) => Error::invalid(format!(
                "opening {name}: not a mirrorctl image (no header); create one with `mirrorctl create`"
            )),
            Ok(Some(f)) if f.signature => Error::invalid(format!(
                "opening {name}: not a mirrorctl image: it holds {} (signature at byte {}), not a mirrorctl header",
                f.what, f.offset
            )),
            Ok(Some(f)) => Error::invalid(format!(
                "opening {name}: not a mirrorctl image (no header), but it holds {}: if it was a mirrorctl primary its header is destroyed, and `mirrorctl status` on one of its secondaries shows the mirror (`mirrorctl promote` can replace it). Nothing was changed",
                f.what
            )),
            Err(e) => Error::primary(format!("reading {name}: {e}")),
        },
        other => Error::primary(format!("reading metadata of {name}: {other}")),
    }
}

/// Progress callback: total bytes known up front, then increments.
pub trait Progress: Sync {
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

pub struct NoProgress;

impl Progress for NoProgress {}

impl Mirror {
    /// Opens a primary. Does not recover: commands that change the mirror call
    /// [`Mirror::recover`] after taking the exclusive lock.
    pub fn open(
        dev: Arc<dyn Device>,
        name: &str,
        opener: Arc<dyn Opener>,
        map: bool,
    ) -> Result<Mirror> {
        let image = Image::read(dev.clone()).map_err(|e| read_error(name, e, &*dev))?;
        match image.sb.role {
            Role::Primary => {}
            Role::Secondary => {
                return Err(Error::invalid(format!(
                    "opening {name}: this image is a secondary of mirror {}; give its primary ({})",
                    uuid_str(&image.sb.mirror_uuid),
                    if image.sb.primary_location.is_empty() {
                        "unknown path"
                    } else {
                        &image.sb.primary_location
                    }
                )))
            }
            Role::Detached => {
                return Err(Error::invalid(format!(
                    "opening {name}: this image was detached from mirror {}; attach it to a primary or create a new mirror on it",
                    uuid_str(&image.sb.mirror_uuid)
                )))
            }
        }
        let mut warnings = Vec::new();
        if let Some((i, e)) = &image.damaged {
            warnings.push(format!(
                "warning: superblock copy {} of {name} is damaged ({e}); using copy {}, the damaged copy is rewritten on the next change",
                crate::meta::image::copy_name(*i),
                crate::meta::image::copy_name(1 - *i)
            ));
        }
        let geom = image.sb.geometry;
        let bitmaps = Bitmaps::open_with_written(dev, geom, image.sb.written_map, map)
            .map_err(|e| Error::primary_io(format!("opening bitmaps of {name}"), &e))?;
        let slots = geom.slots as usize;
        let committed_refusing = quorum::last_refusing(&image.sb);
        Ok(Mirror {
            committed_refusing,
            image,
            bitmaps,
            opener,
            name: name.to_string(),
            warnings,
            open_legs: vec![None; slots],
            window: WINDOW,
            intents_live: false,
            min_in_sync: 0,
            fence: fence::FenceHooks::default(),
        })
    }

    /// Whether `region` is set in the log `id` (read only: the engine alone changes logs).
    pub fn log_bit(&mut self, id: BitmapId, region: u64) -> Result<bool> {
        self.bitmaps
            .get(id, region)
            .map_err(|e| self.meta_err("reading a log", &e))
    }

    /// Regions set in the log `id`.
    pub fn log_count(&mut self, id: BitmapId) -> Result<u64> {
        self.bitmaps
            .count(id)
            .map_err(|e| self.meta_err("reading a log", &e))
    }

    /// Runs of regions set in the log `id`.
    pub fn log_runs(&mut self, id: BitmapId) -> Result<Vec<Range<u64>>> {
        self.bitmaps
            .runs(id, u64::MAX)
            .map_err(|e| self.meta_err("reading a log", &e))
    }

    /// Runs of regions the written map says a write may have reached (W7), ascending; every
    /// region when the image keeps no map.
    pub fn written_runs(&mut self) -> Result<Vec<Range<u64>>> {
        self.bitmaps
            .written_runs()
            .map_err(|e| self.meta_err("reading the written map", &e))
    }

    /// Whether the primary keeps a written map (format 1.3).
    pub fn has_written_map(&self) -> bool {
        self.bitmaps.has_written_map()
    }

    /// The first run of regions set in `slot`'s fracture log at or after `from`, at most
    /// `max` long.
    fn next_logged_run(&mut self, slot: u32, from: u64, max: u64) -> Result<Option<Range<u64>>> {
        self.bitmaps
            .next_run(BitmapId::Fracture(SlotIdx(slot)), from, max)
            .map_err(|e| self.meta_err("reading a fracture log", &e))
    }

    /// Sets `regions` in `slot`'s fracture log (in memory: the caller flushes).
    fn mark_logged(&mut self, slot: u32, regions: Range<u64>) -> Result<()> {
        self.bitmaps
            .set_range(BitmapId::Fracture(SlotIdx(slot)), regions, true)
            .map(|_| ())
            .map_err(|e| self.meta_err("setting a fracture log", &e))
    }

    /// Clears `runs` in `slot`'s fracture log (in memory: the caller flushes).
    fn clear_logged(&mut self, slot: u32, runs: &[Range<u64>]) -> Result<()> {
        let id = BitmapId::Fracture(SlotIdx(slot));
        for r in runs {
            self.bitmaps
                .set_range(id, r.clone(), false)
                .map_err(|e| self.meta_err("clearing a fracture log", &e))?;
        }
        Ok(())
    }

    /// `slot`'s leg goes to `state` (through the checked transition; the caller commits).
    fn set_leg_state(&mut self, slot: u32, state: LegState, now: u64) {
        self.image.sb.legs[slot as usize].set_state(state, now);
    }

    /// Keeps `msg` as the last error seen on `slot`'s leg (the caller commits).
    fn record_leg_error(&mut self, slot: u32, msg: &str) {
        self.image.sb.legs[slot as usize].last_error = format::cut(msg, format::MAX_TEXT);
    }

    /// The primary's device.
    fn primary(&self) -> &Arc<dyn Device> {
        &self.image.dev
    }

    /// Whether the write intents on disk are a running server's writes in flight (see the
    /// field).
    fn set_intents_live(&mut self, live: bool) {
        self.intents_live = live;
    }

    /// Metadata syncs (bitmap flushes) this mirror made so far.
    pub fn metadata_syncs(&self) -> u64 {
        self.bitmaps.flushes
    }

    pub fn sb(&self) -> &Superblock {
        &self.image.sb
    }

    pub fn geometry(&self) -> Geometry {
        self.image.sb.geometry
    }

    pub(crate) fn meta_err(&self, what: &str, e: &io::Error) -> Error {
        Error::primary_io(format!("{what} on primary {}", self.name), e)
    }

    /// The warnings gathered since they were last taken, oldest first, for the caller to
    /// print or log; none are kept.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// The primary's lock handle (for the names of its runtime files); `None` for a primary
    /// that cannot be locked (not a file or block device).
    pub fn lock_handle(&self) -> Option<crate::lock::Handle<'_>> {
        self.image.dev.lock_handle()
    }

    /// Starts publishing this command's live record, for `status` in another process
    /// ([`crate::live`]). `write_intents_live`: the intents on disk will be this command's
    /// own (it recovered any unclean stop when it opened the mirror).
    pub fn publish(
        &self,
        command: &str,
        write_intents_live: bool,
    ) -> Option<crate::live::Publisher> {
        let h = self.image.dev.lock_handle()?;
        Some(h.publish(&self.name, command, write_intents_live))
    }

    pub(crate) fn flush_bitmaps(&mut self) -> Result<()> {
        self.bitmaps
            .flush()
            .map_err(|e| Error::primary_io(format!("syncing bitmaps of primary {}", self.name), &e))
    }

    /// Records an event in the primary's journal: it is committed with the next superblock
    /// commit, the one of the state change it reports (both or neither after a crash).
    pub(crate) fn event(&mut self, kind: EventKind, slot: Option<u32>, detail: &str) {
        if self.image.sb.role != Role::Primary {
            return;
        }
        self.image
            .sb
            .journal
            .get_or_insert_with(format::journal::Journal::new)
            .push(kind, slot, detail, now_unix());
    }

    /// An event with no state change of its own (a client connected, a refusal), committed
    /// at once.
    pub fn record(&mut self, kind: EventKind, slot: Option<u32>, detail: &str) -> Result<()> {
        self.event(kind, slot, detail);
        self.commit()
    }

    /// The legs as the quorum sees them (Q1), `receiving` saying which get writes now.
    pub fn leg_views(&self, receiving: &dyn Fn(u32) -> bool) -> Vec<quorum::LegView> {
        (0..self.geometry().slots)
            .map(|s| quorum::LegView {
                slot: s,
                state: self.sb().legs[s as usize].state(),
                receiving: receiving(s),
            })
            .collect()
    }

    pub(crate) fn commit(&mut self) -> Result<()> {
        self.image.commit().map_err(|e| {
            Error::primary_io(format!("writing superblock of primary {}", self.name), &e)
        })?;
        self.committed_refusing = quorum::last_refusing(self.sb());
        Ok(())
    }

    /// Q2: whether a write acknowledged now would be behind a refusing generation: the
    /// last one in memory or the last one committed (a change whose commit failed is not on
    /// disk).
    pub fn refusing_generation(&self) -> bool {
        self.committed_refusing || quorum::last_refusing(self.sb())
    }

    /// Resolves a secondary given as a slot number or as the location used at attach.
    /// `names_a_file`: whether `spec` also names an existing file (the caller looks, from the
    /// admin's directory), so that a number that is no slot in use is tried as a location.
    pub fn find_slot(
        &self,
        spec: &str,
        names_a_file: bool,
        same: &dyn Fn(&str) -> bool,
    ) -> Result<u32> {
        let legs = &self.sb().legs;
        if let Ok(n) = spec.parse::<u32>() {
            if (n as usize) < legs.len() && legs[n as usize].state() != LegState::Empty {
                return Ok(n);
            }
            if !names_a_file {
                return Err(Error::invalid(format!(
                    "secondary '{spec}': slot {n} is not in use on {} (see `mirrorctl status`)",
                    self.name
                )));
            }
        }
        for (i, l) in legs.iter().enumerate() {
            if l.state() != LegState::Empty && (l.location == spec || same(&l.location)) {
                return Ok(i as u32);
            }
        }
        Err(Error::invalid(format!(
            "secondary '{spec}' is not attached to {} (see `mirrorctl status` for slots and paths)",
            self.name
        )))
    }

    /// Number of write-intent regions pending (non-zero after an unclean stop).
    pub fn pending_intents(&mut self) -> Result<u64> {
        self.bitmaps
            .count(BitmapId::WriteIntent)
            .map_err(|e| self.meta_err("reading the write-intent log", &e))
    }

    /// Slots with something to resync (or a non-in-sync state), in order.
    pub fn resync_candidates(&mut self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for s in 0..self.geometry().slots {
            let st = self.sb().legs[s as usize].state();
            if st == LegState::Empty {
                continue;
            }
            let n = self
                .bitmaps
                .count(BitmapId::Fracture(SlotIdx(s)))
                .map_err(|e| self.meta_err("reading a fracture log", &e))?;
            if n > 0 || st != LegState::InSync {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Regions (and bytes) a resync of `slot` would copy now, including pending intents
    /// (but not a running server's, which are its writes in flight).
    pub fn pending_for(&mut self, slot: u32) -> Result<(u64, u64)> {
        let id = BitmapId::Fracture(SlotIdx(slot));
        let g = self.geometry();
        let f = self
            .bitmaps
            .runs(id, u64::MAX)
            .map_err(|e| self.meta_err("reading a fracture log", &e))?;
        let w = if self.intents_live {
            Vec::new()
        } else {
            self.bitmaps
                .runs(BitmapId::WriteIntent, u64::MAX)
                .map_err(|e| self.meta_err("reading the write-intent log", &e))?
        };
        let merged = union(&f, &w);
        let regions: u64 = merged.iter().map(|r| r.end - r.start).sum();
        let bytes: u64 = merged
            .iter()
            .map(|r| {
                let b = g.regions_bytes(r.clone());
                b.end - b.start
            })
            .sum();
        Ok((regions, bytes))
    }

    /// Whether in-sync `slot`'s logs show `regions` current on it (neither its fracture log
    /// nor the write-intent log names any of them).
    pub(crate) fn current_on(&mut self, slot: u32, regions: &Range<u64>) -> bool {
        self.sb().legs[slot as usize].state() == LegState::InSync
            && [BitmapId::WriteIntent, BitmapId::Fracture(SlotIdx(slot))]
                .iter()
                .try_fold(true, |ok, id| -> io::Result<bool> {
                    Ok(ok
                        && match self.bitmaps.next_run(*id, regions.start, u64::MAX)? {
                            Some(r) => r.start >= regions.end,
                            None => true,
                        })
                })
                .unwrap_or(false)
    }

    /// Reads from the data area; if the primary fails, from an in-sync secondary whose
    /// logs show the regions current. Returns the slot used when not the primary.
    pub fn read_at(&mut self, buf: &mut [u8], off: u64) -> Result<Option<(u32, String)>> {
        let g = self.geometry();
        let perr = match self.image.dev.read_at(buf, g.data_offset + off) {
            Ok(()) => return Ok(None),
            Err(e) => e,
        };
        let regions = g.regions_for(off, buf.len() as u64);
        for s in 0..g.slots {
            if self.sb().legs[s as usize].state() != LegState::InSync {
                continue;
            }
            if !self.current_on(s, &regions) {
                continue;
            }
            if let Ok(d) = self.open_leg(s) {
                if d.read_at(buf, g.data_offset + off).is_ok() {
                    let why = format!("primary {} failed at data offset {off}: {perr}", self.name);
                    return Ok(Some((s, why)));
                }
            }
        }
        Err(Error::primary(format!(
            "reading primary {} at data offset {off}: {perr}; no in-sync secondary could serve it",
            self.name
        )))
    }
}

#[cfg(test)]
mod interleave;
#[cfg(test)]
mod tests;
