//! The mirror engine: crash recovery, mirrored writes, fracture, attach, resync and detach
//! over [`Device`]s, with the ordering rules that keep the write-intent and fracture logs
//! exact. Paths, locks and output formatting live in `commands`; this module sees devices.
//!
//! Durability rules (referenced as W1..W6, R1..R3, S1..S3, A1..A4, D0..D2 at the code that
//! keeps them):
//! - W1 A region's write-intent bit is durable before any leg is written in that region.
//! - W2 A write-intent bit is cleared only after the data written in its region is durable on
//!   every leg that receives writes.
//! - W3 Writes to a leg that does not receive writes (fractured) are recorded in its fracture
//!   log durably together with W1, i.e. before the data is written anywhere.
//! - W4 A leg that fails gets the whole current write-intent window set in its fracture log,
//!   durably, before its state changes and before any write-intent bit is cleared.
//! - W5 A command reports success only after W2's clear has been flushed.
//! - W6 After a primary failure nothing is cleared: the next command recovers (R1..R3).
//! - R1 Recovery first merges the write-intent log into the fracture log of every non-empty
//!   slot and makes that durable,
//! - R2 then records the legs as syncing in the superblock,
//! - R3 and only then clears the write-intent log. A crash anywhere repeats the recovery.
//! - S1 Resync clears a region's fracture bit only after the copied data is durable on the
//!   target (sync), so an interrupted resync resumes from the log and loses nothing.
//! - S2 A leg becomes in-sync only when its fracture log is empty.
//! - S3 A leg being resynced is marked syncing first, so it receives writes from then on.
//! - A1 A new secondary's header is durable before the primary lists it.
//! - A2 A free slot's fracture log is reset and the initial log set durably before the slot
//!   is recorded in the superblock.
//! - A3 A re-attached image (same mirror and image UUID) keeps its fracture log; with
//!   `--compare` every region is logged too, so what it holds is read, never assumed.
//! - A4 One image UUID, one leg: an image carrying the UUID of a slot whose recorded location
//!   still holds that image (a byte copy) is refused; otherwise writes would silently stop
//!   reaching the original while the copy was called in sync.
//! - D0 (probe.rs) A secondary without a header is overwritten only if it holds nothing or
//!   with --force. D1, D2 (`detach`): the image says detached before the slot is freed, and
//!   the slot's log is cleared only after.

pub mod failover;
pub mod status;
pub mod verify;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::format::history::{relate, Relation};
use crate::format::layout::{BitmapId, Geometry, SlotIdx, MIB};
use crate::format::ranges::union;
use crate::format::{
    self, cut, Leg, LegState, RecoveryRecord, ResyncRecord, Role, Superblock, Uuid,
};
use crate::meta::bitmaps::Bitmaps;
use crate::meta::image::{Image, ReadError};
use crate::units::now_unix;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes read from the input and written to every leg at once.
pub const CHUNK: usize = 4 << 20;
/// Bytes of write-intent window marked at once: metadata syncs grow with the write's size
/// divided by this, never with the number of chunks.
pub const WINDOW: u64 = 64 * MIB;
/// Largest single copy during resync.
pub const COPY_RUN: u64 = 8 * MIB;
/// Bytes copied between durability points (target sync + fracture-bit clear) in resync.
pub const RESYNC_BATCH: u64 = 64 * MIB;
/// About this long between a resync's durable progress points (at most 1.5 x under a
/// `--rate` limit; see `copy_leg`).
pub const CHECKPOINT: Duration = Duration::from_millis(250);

/// Opens a secondary by the location recorded at attach.
pub trait Opener: Send + Sync {
    fn open(&self, location: &str) -> io::Result<Arc<dyn Device>>;
    /// Whether legs are opened for writing (false for commands that only read).
    fn writable(&self) -> bool {
        true
    }
}

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

pub struct Mirror {
    pub image: Image,
    pub bitmaps: Bitmaps,
    opener: Arc<dyn Opener>,
    /// Name of the primary for messages (its path).
    pub name: String,
    /// One-line warnings for the user, printed by the caller.
    pub warnings: Vec<String>,
    /// Legs opened (and checked) during this command, by slot.
    open_legs: Vec<Option<Arc<dyn Device>>>,
    /// Bytes of write-intent window marked at once; [`WINDOW`] unless a test shrinks it to
    /// exercise window moves with small images.
    pub window: u64,
}

/// "secondary slot 1 (/srv/b.img)".
pub fn leg_name(slot: u32, leg: &Leg) -> String {
    format!("secondary slot {slot} ({})", leg.location)
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
            Ok(None) => Error::usage(format!(
                "opening {name}: not a mirrorctl image (no header); create one with `mirrorctl create`"
            )),
            Ok(Some(f)) if f.signature => Error::usage(format!(
                "opening {name}: not a mirrorctl image: it holds {} (signature at byte {}), not a mirrorctl header",
                f.what, f.offset
            )),
            Ok(Some(f)) => Error::usage(format!(
                "opening {name}: not a mirrorctl image (no header), but it holds {}: if it was a mirrorctl primary its header is destroyed, and `mirrorctl status` on one of its secondaries shows the mirror (`mirrorctl promote` can replace it). Nothing was changed",
                f.what
            )),
            Err(e) => Error::primary(format!("reading {name}: {e}")),
        },
        other => Error::primary(format!("reading metadata of {name}: {other}")),
    }
}

struct LegFailure {
    slot: u32,
    what: String,
    err: io::Error,
}

/// Result of a mirrored write.
#[derive(Debug, Default)]
pub struct WriteReport {
    pub bytes: u64,
    pub newly_fractured: Vec<u32>,
}

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

/// Progress callback: total bytes known up front, then increments.
pub trait Progress: Sync {
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

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

/// Fills `buf` from `input` until full or end of input; returns bytes read.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// State of one streaming write.
struct Stream {
    /// Regions currently marked in the write-intent log by this command.
    marked: Range<u64>,
    /// Fracture-log regions this command set ahead of the data (for legs not receiving
    /// writes) that were clear before; cleared again at the end if never written.
    ahead: Vec<(u32, Range<u64>)>,
    /// Writes since the legs were last synced.
    unsynced: bool,
    /// Last region (exclusive) a write may touch, when the total length is known.
    limit: u64,
}

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
                return Err(Error::usage(format!(
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
                return Err(Error::usage(format!(
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
        let bitmaps = Bitmaps::open(dev, geom, map)
            .map_err(|e| Error::primary_io(format!("opening bitmaps of {name}"), &e))?;
        let slots = geom.slots as usize;
        Ok(Mirror {
            image,
            bitmaps,
            opener,
            name: name.to_string(),
            warnings,
            open_legs: vec![None; slots],
            window: WINDOW,
        })
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

    pub(crate) fn flush_bitmaps(&mut self) -> Result<()> {
        self.bitmaps
            .flush()
            .map_err(|e| Error::primary_io(format!("syncing bitmaps of primary {}", self.name), &e))
    }

    pub(crate) fn commit(&mut self) -> Result<()> {
        self.image.commit().map_err(|e| {
            Error::primary_io(format!("writing superblock of primary {}", self.name), &e)
        })
    }

    /// Resolves a secondary given as a slot number or as the location used at attach.
    pub fn find_slot(&self, spec: &str, same: &dyn Fn(&str) -> bool) -> Result<u32> {
        let legs = &self.sb().legs;
        if let Ok(n) = spec.parse::<u32>() {
            if (n as usize) < legs.len() && legs[n as usize].state != LegState::Empty {
                return Ok(n);
            }
            if !std::path::Path::new(spec).exists() {
                return Err(Error::usage(format!(
                    "secondary '{spec}': slot {n} is not in use on {} (see `mirrorctl status`)",
                    self.name
                )));
            }
        }
        for (i, l) in legs.iter().enumerate() {
            if l.state != LegState::Empty && (l.location == spec || same(&l.location)) {
                return Ok(i as u32);
            }
        }
        Err(Error::usage(format!(
            "secondary '{spec}' is not attached to {} (see `mirrorctl status` for slots and paths)",
            self.name
        )))
    }

    /// Opens a leg and checks that the image there is the one the slot names.
    pub fn open_leg(&mut self, slot: u32) -> std::result::Result<Arc<dyn Device>, String> {
        if let Some(d) = &self.open_legs[slot as usize] {
            return Ok(d.clone());
        }
        let leg = self.sb().legs[slot as usize].clone();
        let dev = self
            .opener
            .open(leg.open_path())
            .map_err(|e| format!("opening {}: {e}", leg.open_path()))?;
        let img = Image::read(dev.clone())
            .map_err(|e| format!("reading header of {}: {e}", leg.location))?;
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
                "{} holds image {} of mirror {}, not this slot's image {}",
                leg.location,
                uuid_str(&img.sb.image_uuid),
                uuid_str(&img.sb.mirror_uuid),
                uuid_str(&leg.image_uuid)
            ));
        }
        if img.sb.geometry != self.geometry() {
            return Err(format!("{} has a different geometry", leg.location));
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
    fn adopt(&mut self, mut img: Image, leg: &Leg) -> std::result::Result<(), String> {
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
        img.commit()
            .map_err(|e| format!("writing the header of {}: {e}", leg.location))
    }

    /// P6 (failover.rs): refuses, before anything is written, when a reachable leg shows
    /// that another image replaced this primary.
    pub fn refuse_if_replaced(&self) -> Result<()> {
        for (s, leg) in self.sb().legs.iter().enumerate() {
            if leg.state == LegState::Empty {
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
                return Err(Error::usage(format!(
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
            if leg.state != LegState::FracturedByError
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

    /// Number of write-intent regions pending (non-zero after an unclean stop).
    pub fn pending_intents(&mut self) -> Result<u64> {
        self.bitmaps
            .count(BitmapId::WriteIntent)
            .map_err(|e| self.meta_err("reading the write-intent log", &e))
    }

    /// Crash recovery: after an unclean stop the write-intent regions may differ between
    /// legs; move them into every leg's fracture log (R1..R3). Returns how many regions.
    pub fn recover(&mut self) -> Result<u64> {
        let n = self.pending_intents()?;
        if n == 0 {
            return Ok(0);
        }
        let slots: Vec<u32> = (0..self.geometry().slots)
            .filter(|&s| self.sb().legs[s as usize].state != LegState::Empty)
            .collect();
        // R1: merge into every non-empty slot's fracture log, durably.
        for &s in &slots {
            self.bitmaps
                .or_into(BitmapId::WriteIntent, BitmapId::Fracture(SlotIdx(s)))
                .map_err(|e| self.meta_err("merging the write-intent log", &e))?;
        }
        self.flush_bitmaps()?;
        // R2: the legs now have regions to copy.
        let now = now_unix();
        for &s in &slots {
            let leg = &mut self.image.sb.legs[s as usize];
            if leg.state == LegState::InSync {
                leg.state = LegState::Syncing;
                leg.state_changed_at = now;
            }
        }
        self.image.sb.last_recovery = Some(RecoveryRecord {
            at: now,
            regions: n,
        });
        self.image
            .sb
            .bump_generation(&format!("recovered {n} write-intent regions"), now);
        self.commit()?;
        self.refresh_headers(&[]);
        // R3: only now the write-intent log may go.
        self.bitmaps
            .clear_all(BitmapId::WriteIntent)
            .map_err(|e| self.meta_err("clearing the write-intent log", &e))?;
        self.flush_bitmaps()?;
        self.warnings.push(format!(
            "note: {} was not closed cleanly; {n} write-intent region(s) marked out of sync on every secondary (run `mirrorctl resync`)",
            self.name
        ));
        Ok(n)
    }

    /// Records regions found to differ on a leg (verify, V1 in verify.rs): they go into its
    /// fracture log durably, then an in-sync leg becomes syncing (S2: in sync only with an
    /// empty log) and its header stops claiming to be current.
    pub fn mark_out_of_sync(&mut self, slot: u32, regions: &[u64]) -> Result<()> {
        let id = BitmapId::Fracture(SlotIdx(slot));
        for r in union(&regions.iter().map(|&r| r..r + 1).collect::<Vec<_>>(), &[]) {
            self.bitmaps
                .set_range(id, r, true)
                .map_err(|e| self.meta_err("setting a fracture log", &e))?;
        }
        self.flush_bitmaps()?;
        let now = now_unix();
        if self.sb().legs[slot as usize].state == LegState::InSync {
            self.image.sb.bump_generation(
                &format!("slot {slot}: {} region(s) differ", regions.len()),
                now,
            );
            let l = &mut self.image.sb.legs[slot as usize];
            l.state = LegState::Syncing;
            l.state_changed_at = now;
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
            &(0..0),
        )
    }

    /// Records a leg failure: W4 then the state change.
    fn fracture_on_error(&mut self, f: LegFailure, window: &Range<u64>) -> Result<()> {
        let s = f.slot;
        let id = BitmapId::Fracture(SlotIdx(s));
        // W4: everything not known durable on the leg is in the current window.
        if !window.is_empty() {
            self.bitmaps
                .set_range(id, window.clone(), true)
                .map_err(|e| self.meta_err("setting a fracture log", &e))?;
        }
        self.flush_bitmaps()?;
        let now = now_unix();
        let name = leg_name(s, &self.sb().legs[s as usize]);
        let text = format!("{}: {}", f.what, f.err);
        self.image
            .sb
            .bump_generation(&format!("slot {s} fractured by error"), now);
        let generation = self.sb().generation;
        let leg = &mut self.image.sb.legs[s as usize];
        leg.state = LegState::FracturedByError;
        leg.reason = cut(&format!("I/O error: {}", f.err), format::MAX_TEXT);
        leg.last_error = cut(&text, format::MAX_TEXT);
        leg.fractured_at = Some(now);
        leg.state_changed_at = now;
        leg.fracture_generation = generation;
        self.commit()?;
        self.open_legs[s as usize] = None;
        self.warnings.push(format!(
            "warning: {name} failed ({text}); it is fractured and its changes are tracked for `mirrorctl resync`"
        ));
        self.refresh_headers(&[]);
        Ok(())
    }

    /// Opens every leg that receives writes; a leg that cannot be opened is fractured.
    fn active_legs(&mut self) -> Result<Vec<(u32, Arc<dyn Device>)>> {
        let mut out = Vec::new();
        for s in 0..self.geometry().slots {
            if !self.sb().legs[s as usize].state.receives_writes() {
                continue;
            }
            match self.open_leg(s) {
                Ok(d) => out.push((s, d)),
                Err(msg) => self.fracture_on_error(
                    LegFailure {
                        slot: s,
                        what: "opening".into(),
                        err: io::Error::other(msg),
                    },
                    &(0..0),
                )?,
            }
        }
        Ok(out)
    }

    /// Syncs the primary and every active leg in parallel; failed legs are fractured.
    fn sync_legs(&mut self, legs: &mut Vec<(u32, Arc<dyn Device>)>, st: &mut Stream) -> Result<()> {
        if !st.unsynced {
            return Ok(());
        }
        let primary = self.image.dev.clone();
        let (pres, lres) = std::thread::scope(|sc| {
            let hs: Vec<_> = legs
                .iter()
                .map(|(s, d)| {
                    let d = d.clone();
                    let s = *s;
                    sc.spawn(move || (s, d.sync()))
                })
                .collect();
            let p = primary.sync();
            (
                p,
                hs.into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>(),
            )
        });
        if let Err(e) = pres {
            // W6: leave the write-intent log as it is.
            return Err(self.meta_err("syncing data", &e));
        }
        for (s, r) in lres {
            if let Err(err) = r {
                legs.retain(|(x, _)| *x != s);
                self.fracture_on_error(
                    LegFailure {
                        slot: s,
                        what: "sync".into(),
                        err,
                    },
                    &st.marked.clone(),
                )?;
            }
        }
        st.unsynced = false;
        Ok(())
    }

    /// Makes sure `regions` are marked in the write-intent log before data goes there.
    fn ensure_marked(
        &mut self,
        regions: Range<u64>,
        legs: &mut Vec<(u32, Arc<dyn Device>)>,
        st: &mut Stream,
    ) -> Result<()> {
        if regions.start >= st.marked.start && regions.end <= st.marked.end {
            return Ok(());
        }
        // W2: the data under the old window must be durable before its bits go.
        self.sync_legs(legs, st)?;
        let g = self.geometry();
        let window = (self.window / g.region_size).max(1);
        // W1 needs every region of this chunk marked, even if the input turned out longer
        // than announced.
        let new = regions.start
            ..regions
                .end
                .max(regions.start + window)
                .min(st.limit)
                .max(regions.end);
        let old = st.marked.clone();
        let wi = BitmapId::WriteIntent;
        if !old.is_empty() {
            let keep = new.start.max(old.start)..new.end.min(old.end);
            if keep.is_empty() {
                self.bitmaps.set_range(wi, old.clone(), false)
            } else {
                self.bitmaps
                    .set_range(wi, old.start..keep.start, false)
                    .and_then(|_| {
                        self.bitmaps
                            .set_range(wi, keep.end..old.end.max(keep.end), false)
                    })
            }
            .map_err(|e| self.meta_err("clearing write intents", &e))?;
        }
        // W1: mark the new window.
        self.bitmaps
            .set_range(wi, new.clone(), true)
            .map_err(|e| self.meta_err("marking write intents", &e))?;
        // W3: legs not receiving writes get the window in their fracture log, in the same
        // flush, i.e. before any data of the window is written.
        st.ahead.clear();
        for s in 0..g.slots {
            let leg = &self.sb().legs[s as usize];
            if leg.state == LegState::Empty || leg.state.receives_writes() {
                continue;
            }
            let id = BitmapId::Fracture(SlotIdx(s));
            let clear = self
                .clear_runs(id, new.clone())
                .map_err(|e| self.meta_err("reading a fracture log", &e))?;
            for r in clear {
                self.bitmaps
                    .set_range(id, r.clone(), true)
                    .map_err(|e| self.meta_err("setting a fracture log", &e))?;
                st.ahead.push((s, r));
            }
        }
        self.flush_bitmaps()?;
        st.marked = new;
        Ok(())
    }

    /// Sub-ranges of `within` whose bits are clear.
    fn clear_runs(&mut self, id: BitmapId, within: Range<u64>) -> io::Result<Vec<Range<u64>>> {
        let mut out = Vec::new();
        let mut pos = within.start;
        while pos < within.end {
            match self.bitmaps.next_run(id, pos, u64::MAX)? {
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
            return Err(Error::usage(format!(
                "--offset {offset} is past the end of the data area ({} bytes)",
                g.data_size
            )));
        }
        if let Some(l) = max_len {
            if offset.checked_add(l).is_none_or(|e| e > g.data_size) {
                return Err(Error::usage(format!(
                    "--offset {offset} plus --length {l} runs past the end of the data area ({} bytes); nothing was written",
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
        let limit = match bound {
            Some(k) => g
                .regions_for(offset, k.min(g.data_size - offset))
                .end
                .max(g.regions_for(offset, 0).end + 1)
                .min(g.region_count),
            None => g.region_count,
        };
        let mut st = Stream {
            marked: 0..0,
            ahead: Vec::new(),
            unsynced: false,
            limit,
        };
        // Before the legs are opened: a leg that fails to open is newly fractured too.
        let fractured_before: Vec<u32> = (0..g.slots)
            .filter(|&s| self.sb().legs[s as usize].state.is_fractured())
            .collect();
        let mut legs = self.active_legs()?;
        let mut report = WriteReport::default();
        let mut remaining = max_len.unwrap_or(u64::MAX);
        let mut cur = vec![0u8; CHUNK];
        let mut next = vec![0u8; CHUNK];
        let first = (CHUNK as u64).min(remaining) as usize;
        let mut cur_len = match fill(input, &mut cur[..first]) {
            Ok(n) => n,
            Err(e) => {
                return Err(Error::usage(format!(
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
                self.ensure_marked(g.regions_for(pos, wlen as u64), &mut legs, &mut st)?;
                let at = g.data_offset + pos;
                let data = &cur[..wlen];
                let want_next = !overflow && remaining > 0;
                let primary = self.image.dev.clone();
                let nbuf = &mut next;
                let (pres, lres, nres) = std::thread::scope(|sc| {
                    let hs: Vec<_> = legs
                        .iter()
                        .map(|(s, d)| {
                            let d = d.clone();
                            let s = *s;
                            sc.spawn(move || {
                                let r = d.write_at(data, at);
                                d.start_writeback(at, data.len() as u64);
                                (s, r)
                            })
                        })
                        .collect();
                    let ph = sc.spawn(move || {
                        let r = primary.write_at(data, at);
                        primary.start_writeback(at, data.len() as u64);
                        r
                    });
                    // Read the next chunk while the legs write this one.
                    let n = if want_next {
                        let take = (CHUNK as u64).min(remaining) as usize;
                        fill(input, &mut nbuf[..take])
                    } else {
                        Ok(0)
                    };
                    let p = ph.join().unwrap();
                    (
                        p,
                        hs.into_iter()
                            .map(|h| h.join().unwrap())
                            .collect::<Vec<_>>(),
                        n,
                    )
                });
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
                for (s, r) in lres {
                    if let Err(err) = r {
                        legs.retain(|(x, _)| *x != s);
                        self.fracture_on_error(
                            LegFailure {
                                slot: s,
                                what: format!("write at data offset {pos}"),
                                err,
                            },
                            &st.marked.clone(),
                        )?;
                    }
                }
                pos += wlen as u64;
                report.bytes += wlen as u64;
                since_sync += wlen as u64;
                match policy {
                    FlushPolicy::Always => self.sync_legs(&mut legs, &mut st)?,
                    FlushPolicy::Every(n) if since_sync >= *n => {
                        self.sync_legs(&mut legs, &mut st)?;
                        since_sync = 0;
                    }
                    _ => {}
                }
                match nres {
                    Ok(n) => next_len = n,
                    Err(e) => input_err = Some(e),
                }
            }
            if overflow || input_err.is_some() {
                break;
            }
            remaining -= next_len as u64;
            std::mem::swap(&mut cur, &mut next);
            cur_len = next_len;
        }
        self.finish_stream(&mut legs, &mut st, pos)?;
        for s in 0..g.slots {
            if self.sb().legs[s as usize].state.is_fractured() && !fractured_before.contains(&s) {
                report.newly_fractured.push(s);
            }
        }
        let partial = |e: Error| {
            e.with("bytes_written", report.bytes)
                .with("acknowledged", true)
                .with("newly_fractured", report.newly_fractured.clone())
        };
        if overflow {
            return Err(partial(Error::usage(format!(
                "input runs past the end of the data area ({} bytes): wrote {} bytes at offset {offset}..{pos}, which are durable and mirrored; the rest of the input was not written",
                g.data_size, report.bytes
            ))));
        }
        if let Some(e) = input_err {
            return Err(partial(Error::usage(format!(
                "reading input: {e}; wrote {} bytes at offset {offset}..{pos}, which are durable and mirrored",
                report.bytes
            ))));
        }
        if let Some(want) = max_len.filter(|&l| report.bytes < l) {
            return Err(partial(Error::usage(format!(
                "the input ended after {} bytes, short of the {want} bytes --length asked for: wrote {} bytes at offset {offset}..{pos}, which are durable and mirrored",
                report.bytes, report.bytes
            ))));
        }
        Ok(report)
    }

    /// W2 + W5: sync, then clear this command's write intents (and fracture bits set ahead
    /// for data that never came) in one flush.
    fn finish_stream(
        &mut self,
        legs: &mut Vec<(u32, Arc<dyn Device>)>,
        st: &mut Stream,
        end_pos: u64,
    ) -> Result<()> {
        self.sync_legs(legs, st)?;
        let g = self.geometry();
        if !st.marked.is_empty() {
            self.bitmaps
                .set_range(BitmapId::WriteIntent, st.marked.clone(), false)
                .map_err(|e| self.meta_err("clearing write intents", &e))?;
        }
        let written_end = end_pos.div_ceil(g.region_size);
        for (s, r) in std::mem::take(&mut st.ahead) {
            let unwritten = r.start.max(written_end)..r.end;
            if !unwritten.is_empty() {
                self.bitmaps
                    .set_range(BitmapId::Fracture(SlotIdx(s)), unwritten, false)
                    .map_err(|e| self.meta_err("trimming a fracture log", &e))?;
            }
        }
        self.flush_bitmaps()?;
        st.marked = 0..0;
        Ok(())
    }

    /// Admin fracture: the leg stops receiving writes; later writes go to its log.
    pub fn fracture(&mut self, slot: u32, reason: Option<&str>) -> Result<bool> {
        let leg = self.sb().legs[slot as usize].clone();
        if leg.state.is_fractured() {
            return Ok(false);
        }
        let now = now_unix();
        self.image
            .sb
            .bump_generation(&format!("slot {slot} fractured by admin"), now);
        let generation = self.sb().generation;
        let l = &mut self.image.sb.legs[slot as usize];
        l.state = LegState::FracturedByAdmin;
        l.reason = cut(reason.unwrap_or("fractured by admin"), format::MAX_TEXT);
        l.fractured_at = Some(now);
        l.state_changed_at = now;
        l.fracture_generation = generation;
        self.commit()?;
        // Best effort: the secondary's own header records that it is no longer current.
        let _ = leg;
        self.refresh_headers(&[slot]);
        Ok(true)
    }

    /// Builds the header a secondary carries: the mirror's identity and leg table.
    fn secondary_sb(&self, image_uuid: Uuid, in_sync: bool) -> Superblock {
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
            if leg.state == LegState::Empty || !(leg.state.receives_writes() || also.contains(&s)) {
                continue;
            }
            let clean = self
                .bitmaps
                .count(BitmapId::Fracture(SlotIdx(s)))
                .map(|n| n == 0)
                .unwrap_or(false);
            let in_sync = leg.state == LegState::InSync && clean;
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
            .filter(|&s| s != except && self.sb().legs[s as usize].state != LegState::Empty)
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

    /// Slots with something to resync (or a non-in-sync state), in order.
    pub fn resync_candidates(&mut self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for s in 0..self.geometry().slots {
            let st = self.sb().legs[s as usize].state;
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

    /// Regions (and bytes) a resync of `slot` would copy now, including pending intents.
    pub fn pending_for(&mut self, slot: u32) -> Result<(u64, u64)> {
        let id = BitmapId::Fracture(SlotIdx(slot));
        let g = self.geometry();
        let f = self
            .bitmaps
            .runs(id, u64::MAX)
            .map_err(|e| self.meta_err("reading a fracture log", &e))?;
        let w = self
            .bitmaps
            .runs(BitmapId::WriteIntent, u64::MAX)
            .map_err(|e| self.meta_err("reading the write-intent log", &e))?;
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
                    if l.state != LegState::Syncing {
                        l.state = LegState::Syncing;
                        l.state_changed_at = now;
                    }
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
                    self.fracture_on_error(
                        LegFailure {
                            slot: s,
                            what,
                            err: e,
                        },
                        &(0..0),
                    )?;
                }
            }
        }
        if let Some(e) = primary_err {
            return Err(Error::primary(e));
        }
        // S2: in sync only with an empty log.
        let mut copied_regions = 0;
        let mut copied_bytes = 0;
        for &s in &done {
            let n = self
                .bitmaps
                .count(BitmapId::Fracture(SlotIdx(s)))
                .map_err(|e| self.meta_err("reading a fracture log", &e))?;
            if n != 0 {
                continue;
            }
            let l = &mut self.image.sb.legs[s as usize];
            l.state = LegState::InSync;
            l.state_changed_at = now;
            l.fractured_at = None;
            l.reason.clear();
            l.last_error.clear();
            let lr = report.legs.iter().find(|l| l.slot == s).unwrap();
            copied_regions += lr.regions;
            copied_bytes += lr.bytes;
        }
        if !done.is_empty() {
            self.image
                .sb
                .bump_generation(&format!("resync of slot(s) {done:?} complete"), now);
            self.image.sb.last_resync = Some(ResyncRecord {
                finished_at: now,
                slots: done.clone(),
                regions_copied: copied_regions,
                bytes_copied: copied_bytes,
            });
        }
        self.commit()?;
        if !done.is_empty() {
            self.refresh_headers(&done);
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Adds a secondary. `dev` is the opened secondary, `location` how the admin named it.
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
        if location.len() > format::MAX_LOCATION || canonical.len() > format::MAX_LOCATION {
            return Err(Error::usage(format!(
                "secondary path is longer than {} bytes; use a shorter path or a symlink",
                format::MAX_LOCATION
            )));
        }
        if dev.len() < g.total_len() {
            return Err(Error::usage(format!(
                "secondary {location} is too small: it has {} bytes, the mirror needs {} ({} of metadata + {} of data)",
                dev.len(),
                g.total_len(),
                g.data_offset,
                g.data_size
            )));
        }
        let existing = Image::read(dev.clone());
        let mut reattach_slot = None;
        match &existing {
            Ok(img) if img.sb.mirror_uuid == self.sb().mirror_uuid => {
                if img.sb.image_uuid == self.sb().image_uuid {
                    return Err(Error::usage(format!(
                        "{location} is this mirror's primary itself; give a different image"
                    )));
                }
                if let Some(s) = self.sb().slot_of_uuid(&img.sb.image_uuid) {
                    let leg = self.sb().legs[s].clone();
                    if leg.state.receives_writes() && leg.canonical == canonical {
                        return Err(Error::usage(format!(
                            "{location} is already attached as slot {s} ({})",
                            leg.state.as_str()
                        )));
                    }
                    // A4: one image UUID, one leg. A byte copy of an attached image carries
                    // its UUID; re-attaching it while the recorded location still holds that
                    // image would silently stop writes to the original and call the copy
                    // in sync.
                    if leg.canonical != canonical && self.location_holds(&leg) {
                        return Err(Error::usage(format!(
                            "{location} carries the identity (image {}) of slot {s}, which {} still holds: it is a byte copy of an attached secondary, and two images with one identity cannot both be legs. To put it in slot {s}'s place, detach the slot first (`mirrorctl detach {} {s}`) or move {} away; to add another secondary, attach a blank image",
                            uuid_str(&img.sb.image_uuid),
                            leg.open_path(),
                            self.name,
                            leg.location
                        )));
                    }
                    reattach_slot = Some(s as u32);
                } else if img.sb.role == Role::Primary && !force {
                    return Err(Error::usage(format!(
                        "{location} is a primary of mirror {}; use --force to overwrite it",
                        uuid_str(&img.sb.mirror_uuid)
                    )));
                }
            }
            Ok(img) if !force => {
                return Err(Error::usage(format!(
                    "{location} belongs to another mirror ({} image of mirror {}); use --force to overwrite it",
                    img.sb.role.as_str(),
                    uuid_str(&img.sb.mirror_uuid)
                )))
            }
            Err(ReadError::NotMirrorctl) if !force => self.refuse_if_holds_data(&*dev, location, initial)?,
            Err(ReadError::NotMirrorctl) | Ok(_) => {}
            Err(ReadError::Io(e)) => {
                return Err(Error::degraded(format!("reading secondary {location}: {e}")))
            }
            Err(e) if !force => {
                return Err(Error::usage(format!(
                    "{location} holds a damaged mirrorctl header ({e}); use --force to overwrite it"
                )))
            }
            Err(_) => {}
        }
        let now = now_unix();
        if let Some(s) = reattach_slot {
            // A3: keep the fracture log; only what changed is copied.
            let id = BitmapId::Fracture(SlotIdx(s));
            let img = existing.as_ref().ok().unwrap();
            if img.sb.role == Role::Primary {
                // A former primary returning (or the other side of a split brain).
                let theirs = crate::engine::failover::returning_primary_regions(
                    self.sb(),
                    &self.name,
                    img,
                    location,
                    discard,
                )?;
                if assume_clean {
                    return Err(Error::usage(format!(
                        "--assume-clean cannot be used for {location}: it was a primary and may hold writes this primary lacks"
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
            }
            if initial == InitialSync::Compare {
                // --compare compares everything it re-attaches: what the image holds is only
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
                return Err(Error::usage(format!(
                    "--assume-clean would discard {regions} out-of-sync region(s) of re-attached {location}; run without it (or add --force)"
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
            l.state = if assume_clean {
                LegState::InSync
            } else {
                LegState::Syncing
            };
            l.state_changed_at = now;
            l.reason.clear();
            self.commit()?;
            self.open_legs[s as usize] = None;
            return Ok(AttachOutcome {
                slot: s,
                reattached: true,
                regions,
            });
        }
        let Some(slot) = self
            .sb()
            .legs
            .iter()
            .position(|l| l.state == LegState::Empty)
        else {
            return Err(Error::usage(format!(
                "no free slot: all {} secondary slots of {} are in use; detach one first (the slot count is fixed at create with --max-secondaries)",
                g.slots, self.name
            )));
        };
        let slot = slot as u32;
        // What must be copied: regions of the primary that may hold data. A regular-file
        // secondary is punched to zeros first, so holes of the primary need no copy; a block
        // device secondary, or one to compare (its data is kept), gets every region (resync
        // zeroes the target where the primary has holes).
        let image_uuid = new_uuid();
        let extents = if assume_clean {
            Some(vec![])
        } else if initial == InitialSync::Compare {
            None
        } else if dev.file().is_some() && dev.needs_allocation() {
            dev.zero_range(g.data_offset, g.data_size)
                .map_err(|e| Error::degraded(format!("clearing secondary {location}: {e}")))?;
            self.image
                .dev
                .data_extents(g.data_offset..g.total_len())
                .map_err(|e| self.meta_err("finding data extents", &e))?
        } else {
            None
        };
        // A1: the secondary's header first.
        dev.zero_range(g.bitmap_offset, g.bitmap_area().end - g.bitmap_offset)
            .map_err(|e| {
                Error::degraded(format!("clearing metadata of secondary {location}: {e}"))
            })?;
        let mut sb = self.secondary_sb(image_uuid, assume_clean);
        sb.legs[slot as usize] = Leg {
            image_uuid,
            location: location.to_string(),
            canonical: canonical.to_string(),
            state: LegState::Syncing,
            ..Leg::empty()
        };
        Image::format(dev.clone(), sb)
            .map_err(|e| Error::degraded(format!("writing header of secondary {location}: {e}")))?;
        // A2: reset the slot's log and set the initial one, durably.
        let id = BitmapId::Fracture(SlotIdx(slot));
        self.bitmaps
            .clear_all(id)
            .map_err(|e| self.meta_err("clearing a fracture log", &e))?;
        let ranges: Vec<Range<u64>> = match extents {
            None => std::iter::once(0..g.region_count).collect(),
            Some(v) => v
                .into_iter()
                .map(|r| g.regions_for(r.start - g.data_offset, r.end - r.start))
                .collect(),
        };
        let mut regions = 0;
        for r in union(&ranges, &[]) {
            regions += r.end - r.start;
            self.bitmaps
                .set_range(id, r, true)
                .map_err(|e| self.meta_err("setting a fracture log", &e))?;
        }
        self.flush_bitmaps()?;
        self.image
            .sb
            .bump_generation(&format!("slot {slot} attached"), now);
        self.image.sb.legs[slot as usize] = Leg {
            image_uuid,
            location: location.to_string(),
            canonical: canonical.to_string(),
            state: if regions == 0 {
                LegState::InSync
            } else {
                LegState::Syncing
            },
            reason: String::new(),
            last_error: String::new(),
            attached_at: now,
            state_changed_at: now,
            fractured_at: None,
            fracture_generation: 0,
        };
        self.commit()?;
        self.open_legs[slot as usize] = Some(dev);
        self.refresh_headers(&[slot]);
        Ok(AttachOutcome {
            slot,
            reattached: false,
            regions,
        })
    }

    /// Whether a leg's recorded location still holds the leg's image (its header names
    /// this mirror and the slot's image UUID).
    fn location_holds(&self, leg: &Leg) -> bool {
        self.leg_header(leg).is_some_and(|i| {
            i.sb.mirror_uuid == self.sb().mirror_uuid && i.sb.image_uuid == leg.image_uuid
        })
    }

    /// The header at a leg's recorded location, if it can be opened and read (no checks).
    fn leg_header(&self, leg: &Leg) -> Option<Image> {
        let dev = self.opener.open(leg.open_path()).ok()?;
        Image::read(dev).ok()
    }

    /// D0 (probe.rs): a secondary without a mirrorctl header is overwritten only when it
    /// holds nothing. With --compare or --assume-clean its data area is kept, so only a
    /// signature inside the metadata area (which attach overwrites) is refused.
    fn refuse_if_holds_data(
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
            return Err(Error::usage(format!(
                "secondary {location} holds {} (signature at byte {}), inside the first {} bytes that attach overwrites with the mirror's metadata: it is not a copy of this mirror. Nothing was written; use --force to overwrite it",
                f.what, f.offset, g.data_offset
            )));
        }
        // --compare keeps the data area only: offered when what was found lies there.
        let compare = if f.signature && f.offset < g.data_offset {
            ""
        } else {
            ", or --compare if it is a copy of this mirror's data to keep (only what differs is written)"
        };
        Err(Error::usage(format!(
            "secondary {location} holds {} (at byte {}); attaching would overwrite it. Nothing was written; use --force to overwrite it{compare}",
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
            if self.sb().legs[s as usize].state != LegState::InSync {
                continue;
            }
            let clean = [BitmapId::WriteIntent, BitmapId::Fracture(SlotIdx(s))]
                .iter()
                .try_fold(true, |ok, id| -> io::Result<bool> {
                    Ok(ok
                        && match self.bitmaps.next_run(*id, regions.start, u64::MAX)? {
                            Some(r) => r.start >= regions.end,
                            None => true,
                        })
                })
                .unwrap_or(false);
            if !clean {
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

pub struct AttachOutcome {
    pub slot: u32,
    pub reattached: bool,
    /// Regions the new leg needs copied.
    pub regions: u64,
}

type LegResult = std::result::Result<(u64, u64), LegError>;

/// Copies `len` bytes at `off` from one file to the same offset of another in the kernel.
fn copy_file_range_all(
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

enum CopyErr {
    Primary(String),
    Leg(String, io::Error),
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
            let mut i = 0;
            while i < n {
                let differs = |i: usize| {
                    let e = (i + block).min(n);
                    ours[i..e] != theirs[i..e]
                };
                if !differs(i) {
                    i += block;
                    continue;
                }
                let mut j = i + block;
                while j < n && differs(j) {
                    j += block;
                }
                let j = j.min(n);
                let off = p + i as u64;
                let len = (j - i) as u64;
                let r = if data {
                    target.write_at(&ours[i..j], off)
                } else {
                    target.zero_range(off, len)
                };
                r.map_err(|e| CopyErr::Leg(format!("write at data offset {}", at(off)), e))?;
                ctl.written.fetch_add(len, Ordering::Relaxed);
                i = j;
            }
            p += n as u64;
        }
    }
    Ok(())
}

enum LegError {
    Primary(String),
    /// (what, error, regions done, bytes done)
    Leg(String, io::Error, u64, u64),
    Aborted(u64, u64),
}

/// What one leg's copy shares with the others, and how it copies.
struct CopyCtl<'a> {
    limiter: &'a RateLimit,
    abort: &'a AtomicBool,
    progress: &'a dyn Progress,
    compare: bool,
    /// Bytes written to this leg so far.
    written: &'a AtomicU64,
}

/// Granularity of `resync --compare`: blocks that differ are written, the rest left alone.
const COMPARE_BLOCK: u64 = 64 * 1024;

/// Copies one leg's fracture log from the primary (S1).
fn copy_leg(
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
    let run_bytes = limiter
        .bytes_in(CHECKPOINT / 2)
        .map_or(COPY_RUN, |b| b.min(COPY_RUN));
    let max_run = (run_bytes / g.region_size).max(1);
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
            let pieces = match extents {
                None => vec![(start..end, true)],
                Some(ext) => {
                    let mut v = Vec::new();
                    let mut p = start;
                    for e in ext {
                        if e.start > p {
                            v.push((p..e.start, false));
                        }
                        v.push((e.start.max(p)..e.end.min(end), true));
                        p = e.end.min(end);
                    }
                    if p < end {
                        v.push((p..end, false));
                    }
                    v
                }
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::device::sim::{SimDevice, World};
    use crate::format::Leg;
    use std::collections::HashMap;

    struct Legs(HashMap<String, SimDevice>);
    impl Opener for Legs {
        fn open(&self, location: &str) -> io::Result<Arc<dyn Device>> {
            match self.0.get(location) {
                Some(d) => Ok(Arc::new(d.clone())),
                None => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
    }

    /// A primary with `n` attached, in-sync secondaries "s0".. on the storage model.
    fn mirror(regions: u64, n: u32) -> (Mirror, SimDevice, Vec<SimDevice>) {
        let w = World::new();
        let g = Geometry::for_data_size(regions * 4096, 4096, 4).unwrap();
        let p = SimDevice::new(&w, g.total_len());
        let uuid = new_uuid();
        let mut sb = Superblock {
            mirror_uuid: new_uuid(),
            image_uuid: uuid,
            role: Role::Primary,
            generation: 0,
            created_at: 0,
            geometry: g,
            primary_uuid: uuid,
            primary_location: String::new(),
            legs: (0..4).map(|_| Leg::empty()).collect(),
            in_sync_generation: 0,
            history: vec![],
            last_verify: None,
            last_resync: None,
            last_recovery: None,
        };
        sb.bump_generation("created", 0);
        Image::format(Arc::new(p.clone()), sb).unwrap();
        let secs: Vec<SimDevice> = (0..n).map(|_| SimDevice::new(&w, g.total_len())).collect();
        let legs = Legs(
            secs.iter()
                .enumerate()
                .map(|(i, d)| (format!("s{i}"), d.clone()))
                .collect(),
        );
        let mut m = Mirror::open(Arc::new(p.clone()), "p", Arc::new(legs), false).unwrap();
        for (i, d) in secs.iter().enumerate() {
            let loc = format!("s{i}");
            let o = m
                .attach(
                    Arc::new(d.clone()),
                    &loc,
                    &loc,
                    InitialSync::AssumeClean,
                    false,
                    false,
                )
                .unwrap();
            assert_eq!(o.regions, 0);
        }
        (m, p, secs)
    }

    fn data(m: &Mirror, d: &SimDevice) -> Vec<u8> {
        let g = m.geometry();
        d.contents()[g.data_offset as usize..g.total_len() as usize].to_vec()
    }

    #[test]
    fn a_streaming_write_pays_one_metadata_sync_per_window_not_per_chunk() {
        let (mut m, p, secs) = mirror(8192, 2); // 32 MiB of 4 KiB regions
        m.window = 8 << 20; // two chunks per window
        let before = m.bitmaps.flushes;
        let input = vec![7u8; 24 << 20]; // 6 chunks of CHUNK (4 MiB)
        m.write_stream(0, &mut &input[..], None, None, &FlushPolicy::End)
            .unwrap();
        let syncs = m.bitmaps.flushes - before;
        // 3 windows marked (the clear of the previous window rides along in the same
        // flush) plus the final clear; not one per chunk.
        assert_eq!(syncs, 3 + 1, "metadata syncs");
        assert_eq!(m.pending_intents().unwrap(), 0);
        for d in &secs {
            assert_eq!(data(&m, d), data(&m, &p));
        }
    }

    #[test]
    fn fracture_bits_set_ahead_of_a_short_write_are_trimmed_at_the_end() {
        let (mut m, _p, _secs) = mirror(1024, 2);
        m.fracture(1, Some("test")).unwrap();
        // A pipe of unknown length: the window (64 MiB > data area) is marked ahead.
        let input = vec![1u8; 10_000];
        m.write_stream(4096 * 5, &mut &input[..], None, None, &FlushPolicy::End)
            .unwrap();
        let runs = m
            .bitmaps
            .runs(BitmapId::Fracture(SlotIdx(1)), u64::MAX)
            .unwrap();
        assert_eq!(runs, vec![5..8], "only the written regions stay in the log");
        assert_eq!(m.bitmaps.count(BitmapId::Fracture(SlotIdx(0))).unwrap(), 0);
    }

    #[test]
    fn a_failing_secondary_is_fractured_and_its_log_covers_the_write() {
        let (mut m, p, secs) = mirror(1024, 2);
        secs[0].fail_writes(libc::ENOSPC);
        let input = vec![3u8; 3 * 4096];
        let r = m
            .write_stream(
                4096 * 10,
                &mut &input[..],
                None,
                Some(input.len() as u64),
                &FlushPolicy::End,
            )
            .unwrap();
        assert_eq!(r.newly_fractured, vec![0]);
        let leg = &m.sb().legs[0];
        assert_eq!(leg.state, LegState::FracturedByError);
        assert!(
            leg.last_error.contains("offset 40960"),
            "{}",
            leg.last_error
        );
        let runs = m
            .bitmaps
            .runs(BitmapId::Fracture(SlotIdx(0)), u64::MAX)
            .unwrap();
        assert!(
            runs.iter().any(|r| r.start <= 10 && r.end >= 13),
            "{runs:?}"
        );
        assert_eq!(data(&m, &secs[1]), data(&m, &p));
    }

    #[test]
    fn reads_fall_back_to_an_in_sync_secondary_when_the_primary_fails() {
        let (mut m, p, secs) = mirror(256, 2);
        let input: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        m.write_stream(0, &mut &input[..], None, None, &FlushPolicy::End)
            .unwrap();
        p.fail_reads(libc::EIO);
        let mut buf = vec![0u8; 8192];
        let used = m.read_at(&mut buf, 0).unwrap();
        assert_eq!(used.map(|(s, _)| s), Some(0));
        assert_eq!(buf, input);
        // A leg with the region in its log is not used.
        m.fracture(0, None).unwrap();
        m.bitmaps
            .set_range(BitmapId::Fracture(SlotIdx(1)), 0..1, true)
            .unwrap();
        let err = m.read_at(&mut buf, 0).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Primary);
        let _ = secs;
    }
}
