//! The status report: one structure, read from the images and the running command, with
//! stable, flat field names for scripts (its JSON, documented in the README). It is worded
//! for people in `cli/status_text.rs` and for Prometheus in `cli/metrics.rs`.

use crate::device::Device;
use crate::engine::uuid_str;
use crate::engine::{read_error, Mirror, Opener};
use crate::error::{Error, Result};
use crate::format::layout::{BitmapId, SlotIdx};
use crate::format::ranges::union;
use crate::format::{LegState, Role, Superblock, FORMAT_MAJOR};
use crate::meta::bitmaps::Bitmaps;
use crate::meta::image::Image;
use crate::units::{format_size, format_time, plural};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize, Debug)]
pub struct LegStatus {
    pub slot: u32,
    pub path: String,
    pub canonical_path: String,
    pub image_uuid: String,
    pub state: String,
    pub out_of_sync_regions: u64,
    pub out_of_sync_bytes: u64,
    /// Why the leg is fractured or syncing; null when there is nothing to say.
    pub reason: Option<String>,
    /// The last I/O error seen on the leg; null when none.
    pub last_error: Option<String>,
    pub fractured_at: Option<String>,
    pub attached_at: Option<String>,
    pub state_changed_at: Option<String>,
    /// How the leg's own generation history relates to the primary's: "in-sync", "behind",
    /// "ahead", "diverged", or "unknown" (its header could not be read).
    pub generation_relation: String,
    /// The generation the leg's own header records (null when unknown).
    pub leg_generation: Option<u64>,
}

#[derive(Serialize, Debug)]
pub struct Status {
    pub format_version: String,
    pub mirror_uuid: String,
    pub image_uuid: String,
    pub role: String,
    pub path: String,
    pub generation: u64,
    pub created_at: String,
    pub data_offset: u64,
    pub data_size: u64,
    /// data_offset + data_size: the size every image of the mirror needs (a secondary must
    /// be at least this big).
    pub image_size: u64,
    pub region_size: u64,
    pub region_count: u64,
    pub max_secondaries: u32,
    pub secondaries: u32,
    pub write_intent_regions: u64,
    pub write_intent_bytes: u64,
    /// Bytes of the data area in chunks the written map says a write may have reached (W7,
    /// format 1.3); `None` without a map (every region counts as written).
    pub written_bytes: Option<u64>,
    /// No write-intent regions pending: the last writer stopped cleanly.
    pub clean: bool,
    /// The mirror, seen from this image, is fully in sync: only a primary's can be (false on
    /// a secondary, a detached image and a replaced primary). `status --check` exits 3
    /// unless it is true.
    pub healthy: bool,
    /// Why `healthy` is false, one phrase per cause (the health line of the text after
    /// "DEGRADED: "); empty when healthy or when this image is not a primary.
    pub health_reasons: Vec<String>,
    /// This image needs no attention in its role: on a primary, `healthy`; on a secondary,
    /// a detached image or a replaced primary, true (the mirror's health is its current
    /// primary's). What the metric `mirrorctl_healthy` exports, so an alert on it keeps
    /// working across a failover.
    pub healthy_in_role: bool,
    /// Extents of the write-intent log kept marked after the primary failed a write or
    /// flush in them (the primary may not hold there what the legs do): while `serve` runs,
    /// its count now; after a serve stopped cleanly with some, the count its stop recorded,
    /// until the next command recovers them; otherwise 0. Never healthy while non-zero.
    pub pinned_extents: u64,
    /// Set when one superblock copy is damaged (the other is in use); null otherwise.
    pub superblock_warning: Option<String>,
    /// On a secondary: its primary; null on a primary or when unknown.
    pub primary_path: Option<String>,
    /// On a secondary: the generation it was last in sync at; null on a primary.
    pub in_sync_generation: Option<u64>,
    pub last_resync_at: Option<String>,
    /// Bytes the last resync went over: copied, or with `--compare` compared.
    pub last_resync_bytes: Option<u64>,
    /// Bytes the last resync wrote to the legs (less than `last_resync_bytes` after a
    /// `--compare` resync that found little different), from its resync-finished events;
    /// null when not known (no resync, or events of an older mirrorctl, or events no
    /// longer in the journal).
    pub last_resync_written_bytes: Option<u64>,
    /// The last resync was a `--compare` one (known from its events, like the above).
    pub last_resync_compare: Option<bool>,
    pub last_recovery_at: Option<String>,
    pub last_recovery_regions: Option<u64>,
    pub last_verify_at: Option<String>,
    pub last_verify_result: Option<String>,
    pub last_verify_mismatched_regions: Option<u64>,
    /// Region where the next `verify --max-time` run continues.
    pub verify_cursor: u64,
    pub last_full_verify_at: Option<String>,
    pub legs: Vec<LegStatus>,
    /// The image that replaced this primary by promotion, when a leg shows one (P6); the
    /// role is then "replaced" and the mirror unhealthy.
    pub replaced_by: Option<String>,
    /// The mirrorctl command running on this mirror now (it holds the lock), as it last
    /// published itself; null when none is.
    pub running: Option<crate::live::Record>,
    /// A process holding the mirror's lock exclusively (a command changing it) whose live
    /// record this user cannot read (it is in another user's runtime directory); null when
    /// none is or its record was read. Its write intents are taken as its writes in flight.
    pub lock_holder_pid: Option<u32>,
    /// Sequence number of the newest event in the journal (`mirrorctl events --since`);
    /// null when the image has none (a secondary, or a 1.0 primary not changed since).
    pub last_event_seq: Option<u64>,
    /// Unix times behind the text ones above, for metrics.
    #[serde(skip)]
    pub times: Times,
    /// The last recovery moved intents a serve kept after primary write errors (its
    /// journal event says so), not an unclean stop's.
    #[serde(skip)]
    pub last_recovery_after_primary_errors: bool,
}

/// Unix seconds of what `Status` shows as text (0: never).
#[derive(Debug, Default, Clone, Copy)]
pub struct Times {
    pub created: u64,
    pub last_verify: u64,
    pub last_full_verify: u64,
    pub last_resync: u64,
    pub last_recovery: u64,
}

/// The health rule, the one place it is written: no write intents pending, no extent
/// pinned by primary write errors (a running server's intents kept for recovery: the
/// primary may lack what the legs hold there), and every attached leg in sync with nothing
/// in its log (`pending` counts its log plus the intents).
pub fn healthy(intents: u64, pinned: u64, legs: impl IntoIterator<Item = (LegState, u64)>) -> bool {
    intents == 0
        && pinned == 0
        && legs
            .into_iter()
            .all(|(st, pending)| st == LegState::Empty || (st == LegState::InSync && pending == 0))
}

/// The status of the image on `dev` (named `name`), reading each leg's own header through
/// `opener`: the `status` command's one engine call.
///
/// It never waits long: every leg's header is read at once, each on a thread of its own, and
/// what has not come within [`LEG_HEADER_WAIT`] (an NBD server that accepts and says
/// nothing, a disk that hangs) is shown as not reached; those threads are left to end.
///
/// It takes no lock: the headers are read as they are. A copy being rewritten as it is read
/// fails its checksum, so both copies are read again (a few times) until they agree with a
/// second read; only a damage that stays is reported. `running` is the live record of the
/// command holding the mirror, if any.
/// How long `status` waits for the legs' own headers, all of them together.
pub const LEG_HEADER_WAIT: Duration = Duration::from_millis(800);

/// Each listed leg's own header, read in parallel, as far as they came in time.
fn leg_headers(sb: &Superblock, opener: Arc<dyn Opener>) -> Vec<(String, Option<Superblock>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut paths: Vec<String> = Vec::new();
    for l in sb.legs.iter().filter(|l| l.state() != LegState::Empty) {
        let path = l.open_path().to_string();
        if paths.contains(&path) {
            continue;
        }
        paths.push(path.clone());
        let (tx, opener) = (tx.clone(), opener.clone());
        // A thread that cannot be made leaves the header unknown, nothing worse.
        let _ = std::thread::Builder::new()
            .name("status-leg".into())
            .spawn(move || {
                let h = opener
                    .open(&path)
                    .ok()
                    .and_then(|d| Image::read(d).ok())
                    .map(|i| i.sb);
                let _ = tx.send((path, h));
            });
    }
    drop(tx);
    let deadline = Instant::now() + LEG_HEADER_WAIT;
    let mut out: Vec<(String, Option<Superblock>)> = Vec::new();
    while out.len() < paths.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(x) => out.push(x),
            Err(_) => break,
        }
    }
    out
}

pub fn report(
    dev: Arc<dyn Device>,
    name: &str,
    opener: Arc<dyn Opener>,
    running: Option<crate::live::Record>,
) -> Result<Status> {
    report_held(dev, name, opener, running, None)
}

/// [`report`], where `holder` is a process holding the mirror exclusively whose live record
/// could not be read ([`Status::lock_holder_pid`]).
pub fn report_held(
    dev: Arc<dyn Device>,
    name: &str,
    opener: Arc<dyn Opener>,
    running: Option<crate::live::Record>,
    holder: Option<u32>,
) -> Result<Status> {
    let img = read_settled(&dev, name)?;
    let mut bitmaps = Bitmaps::open_with_written(dev, img.sb.geometry, img.sb.written_map, false)
        .map_err(|e| Error::primary_io(format!("opening bitmaps of {name}"), &e))?;
    let headers = leg_headers(&img.sb, opener);
    let leg_header = |l: &crate::format::Leg| -> Option<crate::format::Superblock> {
        headers
            .iter()
            .find(|(p, _)| p == l.open_path())
            .and_then(|(_, h)| h.clone())
    };
    let mut s = collect(
        &img,
        &mut bitmaps,
        name,
        &leg_header,
        running.as_ref(),
        holder.filter(|_| running.is_none()),
    )?;
    s.running = running;
    Ok(s)
}

/// The headers of an image that another process may be committing: read until two reads in
/// a row give the same sequence number with no damaged copy, or until the retries run out
/// (then the last read, damage and all).
fn read_settled(dev: &Arc<dyn Device>, name: &str) -> Result<Image> {
    let mut last = Image::read(dev.clone()).map_err(|e| read_error(name, e, &**dev))?;
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let again = match Image::read(dev.clone()) {
            Ok(i) => i,
            // Both copies unreadable for a moment (a commit racing each read): again.
            Err(_) => continue,
        };
        let settled =
            again.seq() == last.seq() && again.damaged.is_none() && last.damaged.is_none();
        last = again;
        if settled {
            break;
        }
    }
    Ok(last)
}

/// Why a primary is not healthy, one phrase per cause, worded for the health line: the
/// write intents an unclean stop left (`intents` regions, `intent_bytes`), the extents a
/// serve pinned after primary write errors, and each leg that is not in sync or lacks
/// regions by its own log (`legs`: slot, state, regions of its own log). The counterpart of
/// [`healthy`]: empty exactly when it holds.
pub fn health_reasons(
    intents: u64,
    intent_bytes: u64,
    pinned: u64,
    legs: &[(u32, LegState, u64)],
) -> Vec<String> {
    let mut out = Vec::new();
    if intents > 0 && pinned == 0 {
        out.push(format!(
            "{} ({}) of write intents pending from an unclean stop (the next command that changes the mirror recovers them)",
            plural(intents, "region"),
            format_size(intent_bytes)
        ));
    } else if intents > 0 {
        out.push(format!(
            "{} of write intents pending ({} pinned after primary write errors; the next command that changes the mirror recovers them)",
            plural(intents, "region"),
            plural(pinned, "extent")
        ));
    } else if pinned > 0 {
        out.push(format!(
            "{} pinned after primary write errors",
            plural(pinned, "extent")
        ));
    }
    for &(slot, st, own) in legs {
        if st == LegState::Empty || (st == LegState::InSync && own == 0) {
            continue;
        }
        if st == LegState::InSync {
            out.push(format!(
                "slot {slot} in-sync but {} out of sync in its log",
                plural(own, "region")
            ));
        } else {
            out.push(format!("slot {slot} {}", st.as_str()));
        }
    }
    out
}

impl Mirror {
    /// Whether the mirror is fully in sync (the health rule, [`healthy`]).
    pub fn is_healthy(&mut self) -> Result<bool> {
        self.is_healthy_pinned(0)
    }

    /// [`Self::is_healthy`] for a served mirror, whose server keeps `pinned` extents marked
    /// after primary write errors (`Server::pinned_extents`).
    pub fn is_healthy_pinned(&mut self, pinned: u64) -> Result<bool> {
        // A running server's intents are its hot set, kept in step with every leg.
        let intents = if self.intents_live {
            0
        } else {
            self.pending_intents()?
        };
        let mut legs = Vec::new();
        for s in 0..self.geometry().slots {
            let st = self.sb().legs[s as usize].state();
            let pending = if st == LegState::Empty {
                0
            } else {
                self.pending_for(s)?.0
            };
            legs.push((st, pending));
        }
        Ok(healthy(intents, pinned, legs))
    }
}

/// How a `recovered` event's detail starts when it moved intents a serve kept after primary
/// write errors.
pub const RECOVERED_AFTER_PRIMARY_ERRORS: &str = "primary write errors";

/// Text that is absent when empty (JSON null, never "").
fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn t(v: u64) -> Option<String> {
    (v != 0).then(|| format_time(v))
}

/// Collects the status of an image (the primary normally; a secondary shows its copy).
/// `leg_header` reads a leg's own header (None when it cannot be reached).
pub fn collect(
    img: &Image,
    bitmaps: &mut Bitmaps,
    path: &str,
    leg_header: &dyn Fn(&crate::format::Leg) -> Option<crate::format::Superblock>,
    running: Option<&crate::live::Record>,
    holder: Option<u32>,
) -> Result<Status> {
    let sb = &img.sb;
    // The intents on disk are the running writer's requests in flight, not an unclean stop:
    // they are not out of sync on any leg and do not make the mirror unhealthy. A writer
    // holding the lock whose record cannot be read here (another user's) recovered any
    // unclean stop when it took the mirror: its intents are its own too.
    let live_intents = running.is_some_and(|r| r.write_intents_live) || holder.is_some();
    let g = sb.geometry;
    let merr = |e: std::io::Error| Error::primary_io(format!("reading bitmaps of {path}"), &e);
    let primary = sb.role == Role::Primary;
    let (wi_regions, wi_bytes) = if primary {
        bitmaps.count_bytes(BitmapId::WriteIntent).map_err(merr)?
    } else {
        (0, 0)
    };
    let wi_runs = if wi_regions > 0 && !live_intents {
        bitmaps
            .runs(BitmapId::WriteIntent, u64::MAX)
            .map_err(merr)?
    } else {
        vec![]
    };
    // Intents a server keeps after primary write errors: its own count while it runs; after
    // a clean stop, what its stop event recorded while they are still pending.
    let pinned = if !primary {
        0
    } else if live_intents {
        running
            .and_then(|r| r.serve.as_ref())
            .map_or(0, |v| v.pinned_extents)
    } else if wi_regions > 0 {
        sb.journal
            .as_ref()
            .and_then(|j| j.pinned_at_last_stop())
            .unwrap_or(0)
    } else {
        0
    };
    let mut legs = Vec::new();
    let mut leg_health = Vec::new();
    let mut leg_own = Vec::new();
    let mut replaced_by = None;
    for (i, l) in sb.legs.iter().enumerate() {
        // A detached image's copy of the leg table still lists its own old slot: it is no
        // longer a leg of anything, so it is not shown as one.
        if l.state() == LegState::Empty
            || (sb.role == Role::Detached && l.image_uuid == sb.image_uuid)
        {
            continue;
        }
        let id = BitmapId::Fracture(SlotIdx(i as u32));
        let (regions, bytes) = if !primary {
            (0, 0)
        } else if wi_runs.is_empty() {
            bitmaps.count_bytes(id).map_err(merr)?
        } else {
            let runs = union(&bitmaps.runs(id, u64::MAX).map_err(merr)?, &wi_runs);
            runs.iter().fold((0, 0), |(r, b), x| {
                let br = g.regions_bytes(x.clone());
                (r + x.end - x.start, b + br.end - br.start)
            })
        };
        leg_health.push((l.state(), regions));
        // What the leg lacks by its own log (the intents aside), for the health reasons.
        let own = if wi_runs.is_empty() || l.state() != LegState::InSync {
            regions
        } else {
            bitmaps.count_bytes(id).map_err(merr)?.0
        };
        leg_own.push((i as u32, l.state(), own));
        let theirs = if primary { leg_header(l) } else { None };
        if let Some(new) = theirs
            .as_ref()
            .and_then(|h| crate::engine::failover::replaced_by(sb, l, h))
        {
            replaced_by.get_or_insert(new);
        }
        let relation = match &theirs {
            Some(h) if h.mirror_uuid == sb.mirror_uuid && h.image_uuid == l.image_uuid => {
                match crate::format::history::relate(&sb.history, &h.history) {
                    // Same generations, but its header says it stopped being current then.
                    crate::format::history::Relation::Same
                        if h.in_sync_generation != h.generation =>
                    {
                        "behind".to_string()
                    }
                    r => r.as_str().to_string(),
                }
            }
            Some(_) => "foreign".to_string(),
            None => "unknown".to_string(),
        };
        legs.push(LegStatus {
            slot: i as u32,
            path: l.location.clone(),
            canonical_path: l.canonical.clone(),
            image_uuid: uuid_str(&l.image_uuid),
            state: l.state().as_str().to_string(),
            out_of_sync_regions: regions,
            out_of_sync_bytes: bytes,
            reason: some(&l.reason),
            last_error: some(&l.last_error),
            fractured_at: l.fractured_at.map(format_time),
            attached_at: t(l.attached_at),
            state_changed_at: t(l.state_changed_at()),
            generation_relation: relation,
            leg_generation: theirs.map(|h| h.generation),
        });
    }
    let superblock_warning = img.damaged.as_ref().map(|(i, e)| {
        format!(
            "superblock copy {} is damaged ({e}); copy {} is in use",
            crate::meta::image::copy_name(*i),
            crate::meta::image::copy_name(1 - *i)
        )
    });
    let intents_pending = if live_intents { 0 } else { wi_regions };
    let written_bytes = if bitmaps.has_written_map() {
        let runs = bitmaps
            .written_runs()
            .map_err(|e| Error::primary_io(format!("reading the written map of {path}"), &e))?;
        Some(
            runs.into_iter()
                .map(|r| {
                    let b = g.regions_bytes(r);
                    b.end - b.start
                })
                .sum(),
        )
    } else {
        None
    };
    // What the last resync wrote, from its resync-finished events (the newest of each of
    // its slots, committed with the record).
    let resync_written = sb.last_resync.as_ref().and_then(|r| {
        let j = sb.journal.as_ref()?;
        let mut written = 0;
        let mut compare = false;
        for &slot in &r.slots {
            let e = j.events.iter().rev().find(|e| {
                e.kind == crate::format::journal::Kind::ResyncFinished.code()
                    && e.slot == Some(slot)
            })?;
            let (what, n) = crate::engine::resync::written_in_detail(&e.detail)?;
            written += n;
            compare |= what.starts_with("compared");
        }
        Some((written, compare))
    });
    let is_healthy =
        healthy(intents_pending, pinned, leg_health) && primary && replaced_by.is_none();
    let health_reasons = if primary && replaced_by.is_none() && !is_healthy {
        health_reasons(intents_pending, wi_bytes, pinned, &leg_own)
    } else {
        Vec::new()
    };
    Ok(Status {
        format_version: format!("{FORMAT_MAJOR}.{}", img.minor),
        mirror_uuid: uuid_str(&sb.mirror_uuid),
        image_uuid: uuid_str(&sb.image_uuid),
        role: if replaced_by.is_some() {
            "replaced".to_string()
        } else {
            sb.role.as_str().to_string()
        },
        path: path.to_string(),
        generation: sb.generation,
        created_at: format_time(sb.created_at),
        data_offset: g.data_offset,
        data_size: g.data_size,
        image_size: g.total_len(),
        region_size: g.region_size,
        region_count: g.region_count,
        max_secondaries: g.slots,
        secondaries: legs.len() as u32,
        write_intent_regions: wi_regions,
        write_intent_bytes: wi_bytes,
        written_bytes,
        clean: wi_regions == 0,
        healthy: is_healthy,
        health_reasons,
        healthy_in_role: is_healthy || !primary || replaced_by.is_some(),
        pinned_extents: pinned,
        superblock_warning,
        primary_path: some(&sb.primary_location),
        in_sync_generation: (!primary).then_some(sb.in_sync_generation),
        last_resync_at: sb.last_resync.as_ref().map(|r| format_time(r.finished_at)),
        last_resync_bytes: sb.last_resync.as_ref().map(|r| r.bytes_copied),
        last_resync_written_bytes: resync_written.map(|(w, _)| w),
        last_resync_compare: resync_written.map(|(_, c)| c),
        last_recovery_at: sb.last_recovery.as_ref().map(|r| format_time(r.at)),
        last_recovery_regions: sb.last_recovery.as_ref().map(|r| r.regions),
        last_verify_at: sb.last_verify.as_ref().map(|v| format_time(v.finished_at)),
        last_verify_result: sb.last_verify.as_ref().map(|v| v.result.clone()),
        last_verify_mismatched_regions: sb.last_verify.as_ref().map(|v| v.mismatched_regions),
        verify_cursor: sb.last_verify.as_ref().map(|v| v.cursor).unwrap_or(0),
        last_full_verify_at: sb
            .last_verify
            .as_ref()
            .and_then(|v| v.last_full_pass_at)
            .map(format_time),
        legs,
        replaced_by,
        running: None,
        lock_holder_pid: holder,
        last_event_seq: sb.journal.as_ref().map(|j| j.next_seq.saturating_sub(1)),
        last_recovery_after_primary_errors: sb.journal.as_ref().is_some_and(|j| {
            j.events
                .iter()
                .rev()
                .find(|e| e.kind == crate::format::journal::Kind::Recovered.code())
                .is_some_and(|e| e.detail.starts_with(RECOVERED_AFTER_PRIMARY_ERRORS))
        }),
        times: Times {
            created: sb.created_at,
            last_verify: sb.last_verify.as_ref().map_or(0, |v| v.finished_at),
            last_full_verify: sb
                .last_verify
                .as_ref()
                .and_then(|v| v.last_full_pass_at)
                .unwrap_or(0),
            last_resync: sb.last_resync.as_ref().map_or(0, |r| r.finished_at),
            last_recovery: sb.last_recovery.as_ref().map_or(0, |r| r.at),
        },
    })
}

/// The journal of the image as committed now, read without the lock as `report` reads it
/// (a torn copy read again): the superblock, with `journal` `None` for an image without one.
pub fn read_superblock(dev: &Arc<dyn Device>, name: &str) -> Result<crate::format::Superblock> {
    Ok(read_settled(dev, name)?.sb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::{SimDevice, World};
    use crate::format::layout::Geometry;
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A device whose superblock copy A reads back damaged the first `tears` times, as a
    /// copy being rewritten by another process can.
    struct Tearing {
        inner: SimDevice,
        tears: AtomicU32,
    }

    impl Device for Tearing {
        fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
            self.inner.read_at(buf, off)?;
            if off == 0 && buf.len() > 200 && self.tears.load(Ordering::SeqCst) > 0 {
                self.tears.fetch_sub(1, Ordering::SeqCst);
                buf[200] ^= 0xff;
            }
            Ok(())
        }
        fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
            self.inner.write_at(buf, off)
        }
        fn sync(&self) -> io::Result<()> {
            self.inner.sync()
        }
        fn len(&self) -> u64 {
            self.inner.len()
        }
    }

    fn tearing(tears: u32) -> Arc<dyn Device> {
        let g = Geometry::for_data_size(64 * 4096, 4096, 2).unwrap();
        let w = World::new();
        let d = SimDevice::new(&w, g.data_offset + g.data_size);
        Image::create_primary(Arc::new(d.clone()), g, 1).unwrap();
        Arc::new(Tearing {
            inner: d,
            tears: AtomicU32::new(tears),
        })
    }

    #[test]
    fn the_health_reasons_name_each_cause_and_are_empty_exactly_when_the_rule_holds() {
        use LegState::*;
        // An unclean stop: the intents are the cause, not the in-sync legs they touch.
        let legs = [(0, InSync, 0), (1, InSync, 0)];
        let r = health_reasons(12, 12 * 65536, 0, &legs);
        assert_eq!(
            r,
            vec!["12 regions (768.0 KiB) of write intents pending from an unclean stop (the next command that changes the mirror recovers them)"]
        );
        assert!(!healthy(12, 0, legs.iter().map(|&(_, s, n)| (s, n + 12))));
        // Pinned extents, alone (while serving) and pending after a clean stop.
        assert_eq!(
            health_reasons(0, 0, 3, &legs),
            vec!["3 extents pinned after primary write errors"]
        );
        assert!(health_reasons(5, 5, 3, &legs)[0].contains("3 extents pinned"));
        // Legs by state, and an in-sync leg whose own log holds regions.
        let legs = [
            (0, FracturedByAdmin, 4),
            (1, InSync, 2),
            (2, Empty, 0),
            (3, InSync, 0),
        ];
        assert_eq!(
            health_reasons(0, 0, 0, &legs),
            vec![
                "slot 0 fractured-by-admin",
                "slot 1 in-sync but 2 regions out of sync in its log"
            ]
        );
        let fine = [(0, InSync, 0), (1, Empty, 0)];
        assert!(health_reasons(0, 0, 0, &fine).is_empty());
        assert!(healthy(0, 0, fine.iter().map(|&(_, s, n)| (s, n))));
    }

    #[test]
    fn a_copy_torn_for_a_moment_is_read_again_and_not_reported_damaged() {
        let img = read_settled(&tearing(3), "p").unwrap();
        assert!(img.damaged.is_none(), "{:?}", img.damaged);
    }

    #[test]
    fn a_copy_that_stays_damaged_is_reported() {
        let img = read_settled(&tearing(u32::MAX), "p").unwrap();
        assert!(img.damaged.is_some());
    }
}
