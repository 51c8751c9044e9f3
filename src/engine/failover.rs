//! Failover: promoting a secondary to primary (with or without the old primary reachable),
//! and deciding what a returning former primary must have copied.
//!
//! Rules (beside the code that keeps them):
//! - P1 An image whose header is not role secondary is never written as a leg (engine/legs.rs,
//!   `open_leg`): a promoted image cannot be written by its former primary.
//! - P2 Promote makes the new primary's bitmaps durable before its superblock names it
//!   primary; a crash in between leaves a secondary with unused bits (cleared on retry).
//! - P3 A returning former primary gets, in its slot's fracture log, durably and before its
//!   header is rewritten as a secondary: its own write-intent log and the fracture log it
//!   kept for the promoted image (what it wrote, or may have written, that the new primary
//!   lacks), on top of what the new primary wrote since the promotion.
//! - P4 Images whose histories diverged (both changed after the last shared generation) are
//!   never mixed without an explicit choice of the side to discard.
//! - P5 A secondary whose header names another primary is written only after its header
//!   names this one (durably), and only if its history is this primary's or a prefix of it
//!   (engine/legs.rs, `adopt`): a former primary that comes back unaware of a promotion cannot
//!   write to the secondaries the new primary took over. `promote` takes over every
//!   reachable secondary at once.
//! - P6 A primary that any reachable leg shows was replaced (the leg itself was promoted, or
//!   it now follows a primary whose history is ahead of this one's) refuses every command
//!   that changes the mirror (`Mirror::prepare_for_change`: write, resync, attach, verify,
//!   fracture, detach) before it writes anything, and `status` calls it replaced (`replaced_by`): without this, a former
//!   primary that comes back reports itself healthy and accepts writes nobody will see
//!   (split brain). Interrupted promotions land here too (P7).
//! - P7 Promotion is finished by whichever comes first: its own last step (the former
//!   primary's header rewritten as a secondary), a rerun of `promote` on the new primary, or
//!   `attach NEW OLD`; the last two take the same path (the returning-primary attach, P3).
//!   A crash at any point leaves either nothing changed, or a new primary and a former one
//!   that refuses writes (P6) and names the command that finishes the promotion.

use crate::device::Device;
use crate::engine::{plan, read_error, uuid_str, Mirror, Opener};
use crate::error::opt::*;
use crate::error::{Error, Result};
use crate::format::history::{relate, Relation};
use crate::format::layout::{BitmapId, Geometry, SlotIdx};
use crate::format::ranges::union;
use crate::format::{cut, Leg, LegState, Role, Superblock, MAX_TEXT};
use crate::meta::bitmaps::Bitmaps;
use crate::meta::image::Image;
use crate::units::{format_size, format_time, now_unix};
use std::ops::Range;
use std::sync::Arc;

/// Reason recorded for the former primary's slot by promotion.
pub const REPLACED_REASON: &str = "former primary, replaced by promotion";

/// How the history event of a promotion that `--force` let through ends: the promoted
/// image may lack acknowledged writes (Q2 then leaves the choice to the admin).
pub const FORCED_MARK: &str = " (forced)";

/// The history event promotion records (followed by the promoted image's short UUID).
pub const PROMOTED_EVENT: &str = "promoted ";

/// P6: whether `leg` (a slot of `primary`, whose own header is `theirs`) shows that another
/// image replaced `primary`: its history, after the last generation it shares with
/// `primary`, records a promotion. (A former primary this one replaced shows no such
/// promotion after the shared part, even when it wrote on after it: that is split brain,
/// refused by attach, P4.) Returns the location of the new primary.
pub fn replaced_by(primary: &Superblock, leg: &Leg, theirs: &Superblock) -> Option<String> {
    if theirs.mirror_uuid != primary.mirror_uuid || theirs.image_uuid != leg.image_uuid {
        return None;
    }
    let shared = theirs
        .history
        .iter()
        .rposition(|e| primary.history.iter().any(|p| p.id == e.id));
    let after = shared.map_or(&theirs.history[..], |i| &theirs.history[i + 1..]);
    if !after.iter().any(|e| e.event.starts_with(PROMOTED_EVENT)) {
        return None;
    }
    match theirs.role {
        Role::Primary => Some(leg.location.clone()),
        Role::Secondary if theirs.primary_uuid != primary.image_uuid => {
            Some(if theirs.primary_location.is_empty() {
                format!("the image {}", &uuid_str(&theirs.primary_uuid)[..8])
            } else {
                theirs.primary_location.clone()
            })
        }
        _ => None,
    }
}

pub struct PromoteOutcome {
    pub generation: u64,
    /// Slot now naming the former primary.
    pub old_primary_slot: u32,
    pub old_primary_reachable: bool,
    pub notes: Vec<String>,
}

/// What finishing an interrupted promotion did (P7).
pub struct FinishedPromotion {
    /// The slot the former primary took back.
    pub slot: u32,
    /// The former primary's location, as its slot recorded it.
    pub location: String,
    /// Regions it now has to copy (`resync`).
    pub regions: u64,
}

impl Mirror {
    /// P7: `promote` run again on an image that is already the primary finishes an
    /// interrupted promotion: the former primary's slot that still waits for its demotion
    /// (`unfinished_demotion`) gets the former primary back as a secondary, by the same path
    /// as `attach NEW OLD` (the returning-primary attach, P3). `open_old` opens (and locks)
    /// the former primary by the slot's entry and returns it with its canonical location:
    /// paths and locks stay with the caller.
    pub fn finish_promotion(
        &mut self,
        open_old: impl FnOnce(&Leg) -> Result<(Arc<dyn Device>, String)>,
    ) -> Result<FinishedPromotion> {
        // 1. P7: the slot whose image was not demoted yet; none: nothing to finish (and
        //    nothing written).
        // 2. The former primary, opened by the caller before anything is written: an image
        //    it cannot reach or lock leaves both as they were.
        // 3. P6, R1-R3: refuse if this primary was itself replaced, then recover.
        // 4. P3 (attach.rs): the returning-primary attach takes the slot back by the image's
        //    UUID, with what it may hold that this primary lacks in its fracture log; a crash
        //    before its commit leaves the promotion unfinished, for the next rerun.
        let Some((slot, leg)) = self.unfinished_demotion() else {
            return Err(Error::invalid(format!(
                "{} is already the primary of mirror {}; there is nothing to promote",
                self.name,
                uuid_str(&self.sb().mirror_uuid)
            )));
        };
        let (old, canonical) = open_old(&leg)?;
        self.prepare_for_change()?;
        let outcome = self.attach(
            old,
            &leg.location,
            &canonical,
            crate::engine::InitialSync::Copy,
            false,
            false,
        )?;
        Ok(FinishedPromotion {
            slot,
            location: leg.location,
            regions: outcome.regions,
        })
    }
}

fn runs(b: &mut Bitmaps, id: BitmapId, what: &str) -> Result<Vec<Range<u64>>> {
    b.runs(id, u64::MAX)
        .map_err(|e| Error::primary_io(format!("reading {what}"), &e))
}

/// `promote`: promotes the secondary on `dev` (already locked by the caller; `old` is the
/// former primary, opened and locked, when it could be reached), then takes over every
/// other reachable secondary at once (P5): from then on the former primary, should it still
/// be running somewhere, cannot write to them. Returns the new primary, opened with
/// `opener`.
pub fn promote(
    dev: Arc<dyn Device>,
    name: &str,
    old: Option<Mirror>,
    force: bool,
    opener: Arc<dyn Opener>,
) -> Result<(PromoteOutcome, Mirror)> {
    let out = promote_image(dev.clone(), name, old, force)?;
    // Bitmaps mapped where the device can be mapped (`Device::map_mut`), paged otherwise.
    let mut m = Mirror::open(dev, name, opener, true)?;
    m.take_over_secondaries(out.old_primary_slot);
    Ok((out, m))
}

/// The promotion itself (P2, P3), before the take-over.
fn promote_image(
    dev: Arc<dyn Device>,
    name: &str,
    mut old: Option<Mirror>,
    force: bool,
) -> Result<PromoteOutcome> {
    // Steps (a crash between any two leaves either a secondary with unused bits, P2, or a
    // new primary whose former primary refuses writes until the promotion is finished,
    // P6/P7):
    // 1. Read the image: only a secondary is promoted, and only if it is in the leg table
    //    of the authority on how current it is (the former primary if reachable, else its
    //    own header).
    // 2. Refuse, unless forced, an image that may lack acknowledged writes; nothing is
    //    written before this.
    // 3. The new superblock: the authority's leg table, this image as primary, the former
    //    primary in this image's slot, fractured as "replaced by promotion".
    // 4. P3: the new fracture logs (the former primary's logs and intents when reachable,
    //    else a full resync of every leg).
    // 5. P2: the bitmaps, durably, before the superblock names this image primary.
    // 6. The journal, then the commit: this image is the primary.
    // 7. A reachable former primary is demoted (its header rewritten as a secondary), then
    //    its slot says so; else the notes say how it comes back.
    let mut img = Image::read(dev.clone()).map_err(|e| read_error(name, e, &*dev))?;
    let sb = img.sb.clone();
    refuse_unless_secondary(&sb, name)?;
    if let Some(o) = &old {
        if o.sb().mirror_uuid != sb.mirror_uuid || o.sb().image_uuid != sb.primary_uuid {
            old = None;
        }
    }
    let g = sb.geometry;
    let mut notes = Vec::new();
    // The authority on how current this image is: the old primary if reachable, else the
    // image's own header ("as far as it knows").
    let base: Superblock = match &old {
        Some(o) => o.sb().clone(),
        None => sb.clone(),
    };
    let Some(slot) = base.slot_of_uuid(&sb.image_uuid) else {
        return Err(Error::invalid(format!(
            "{name} is not listed in the leg table of mirror {}; it cannot be promoted",
            uuid_str(&sb.mirror_uuid)
        )));
    };
    // Whether the checks refused and --force let it through (recorded, Q2).
    let forced = refuse_unless_current(&sb, &base.legs[slot], slot, old.as_mut(), force, name)?;
    if old.is_none() {
        notes.push(format!(
            "the former primary ({}) could not be opened; its last write window is unknown, so the other secondaries are marked for a full resync",
            if sb.primary_location.is_empty() { "unknown path" } else { &sb.primary_location }
        ));
    }
    let now = now_unix();
    let old_loc = match &old {
        Some(o) => o.name.clone(),
        None => sb.primary_location.clone(),
    };
    let mut new = new_primary_sb(&base, &sb, slot, &old_loc, forced, now);
    let generation = new.generation;
    let logs = new_logs(&mut new, g, slot, old.as_mut(), name, now, &mut notes)?;
    write_bitmaps(&dev, g, name, &logs)?;
    // Its journal goes on from the old primary's when that was reachable (a planned
    // promotion), else it starts here, at 1 (not from a copy an old header may carry: its
    // numbers would collide with events the old primary recorded since).
    let mut journal = match &old {
        Some(_) => new.journal.take().unwrap_or_default(),
        None => crate::format::journal::Journal::new(),
    };
    let how = match &old {
        Some(o) => format!("planned: {} becomes its secondary", o.name),
        None => format!(
            "unplanned: the former primary ({}) was not reachable",
            if sb.primary_location.is_empty() {
                "unknown path"
            } else {
                &sb.primary_location
            }
        ),
    };
    journal.push(crate::format::journal::Kind::Promoted, None, &how, now);
    new.journal = Some(journal);
    img.sb = new;
    img.commit()
        .map_err(|e| Error::primary_io(format!("writing the superblock of {name}"), &e))?;
    let reachable = old.is_some();
    if let Some(o) = old.take() {
        notes.push(demote_former_primary(
            o, &mut img, name, slot, &old_loc, &logs, now,
        )?);
    } else if same_image(&old_loc, name) {
        // Its recorded path is its own machine's, and names this image here.
        notes.push(format!(
            "when the former primary returns, attach its export (`mirrorctl attach {name} nbds://HOST:PORT/NAME`, e.g. `mirrorctl export --rejoin` on its machine): it takes its slot back by its image UUID and only what changed since generation {} is copied",
            generation - 1
        ));
    } else {
        notes.push(format!(
            "when the former primary returns, `mirrorctl attach {name} {old_loc}` copies only what changed since generation {}",
            generation - 1
        ));
    }
    Ok(PromoteOutcome {
        generation,
        old_primary_slot: slot as u32,
        old_primary_reachable: reachable,
        notes,
    })
}

/// Step 1: only a secondary is promoted.
fn refuse_unless_secondary(sb: &Superblock, name: &str) -> Result<()> {
    match sb.role {
        Role::Secondary => Ok(()),
        Role::Primary => Err(Error::invalid(format!(
            "{name} is already the primary of mirror {}",
            uuid_str(&sb.mirror_uuid)
        ))),
        Role::Detached => Err(Error::invalid(format!(
            "{name} was detached from mirror {}; it has no mirror to take over (create a new mirror on it instead)",
            uuid_str(&sb.mirror_uuid)
        ))),
    }
}

/// Step 2: refuses, unless `force`, an image (slot `slot`, entry `me` in the authority's
/// table) that may lack acknowledged writes; returns whether it may (the promotion is then
/// recorded as forced, Q2).
fn refuse_unless_current(
    sb: &Superblock,
    me: &Leg,
    slot: usize,
    old: Option<&mut Mirror>,
    force: bool,
    name: &str,
) -> Result<bool> {
    let forced;
    if let Some(o) = old {
        // Its fracture log only, read before anything is written (recovery does not run
        // first: a refusal changes nothing on either image). Pending write intents are
        // writes never acknowledged; an in-sync leg holds every acknowledged one, and the
        // intents go into the former primary's log below (P3).
        let (regions, bytes) = o.pending_for(slot as u32)?;
        let fr = o
            .bitmaps
            .count(BitmapId::Fracture(SlotIdx(slot as u32)))
            .map_err(|e| Error::primary_io("reading the old primary's fracture log", &e))?;
        forced = me.state() != LegState::InSync || fr > 0;
        if forced && !force {
            return Err(Error::invalid(format!(
                "refusing to promote {name}: on the primary {} it is slot {slot}, {}, with {regions} regions ({}) it does not have; use {FORCE} to promote it anyway and lose those changes",
                o.name,
                me.state().as_str(),
                format_size(bytes)
            )));
        }
    } else {
        let current = sb.in_sync_generation != 0 && sb.in_sync_generation == sb.generation;
        forced = !current || me.state() != LegState::InSync;
        if forced && !force {
            let since = me
                .fractured_at
                .map(|t| format!(" since {}", format_time(t)))
                .unwrap_or_default();
            return Err(Error::invalid(format!(
                "refusing to promote {name}: as far as it knows (its header, generation {}), it is {}{since} and was last in sync at generation {}; writes the primary made after that are not on it. Use {FORCE} to promote it anyway",
                sb.generation,
                me.state().as_str(),
                sb.in_sync_generation
            )));
        }
    }
    Ok(forced)
}

/// Step 3: the new primary's superblock from the authority's (`base`): this image (`sb`)
/// as primary, a new generation, and in its slot the former primary at `old_loc`,
/// fractured as replaced by promotion.
fn new_primary_sb(
    base: &Superblock,
    sb: &Superblock,
    slot: usize,
    old_loc: &str,
    forced: bool,
    now: u64,
) -> Superblock {
    let mut new = base.clone();
    new.image_uuid = sb.image_uuid;
    new.role = Role::Primary;
    new.primary_uuid = sb.image_uuid;
    new.primary_location = String::new();
    new.in_sync_generation = 0;
    new.last_recovery = None;
    new.last_resync = None;
    new.last_verify = None;
    // W7: the former primary's written map (in `base`) names its own padding, not this
    // image's; a promoted secondary keeps none, so every region counts as written.
    new.written_map = None;
    new.bump_generation(
        &format!(
            "{PROMOTED_EVENT}{}{}",
            &uuid_str(&sb.image_uuid)[..8],
            if forced { FORCED_MARK } else { "" }
        ),
        now,
    );
    let generation = new.generation;
    let l = &mut new.legs[slot];
    l.image_uuid = sb.primary_uuid;
    l.location = old_loc.to_string();
    l.canonical = std::fs::canonicalize(old_loc)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| old_loc.to_string());
    l.set_state(LegState::FracturedByError, now);
    l.reason = cut(
        &format!("{REPLACED_REASON} at generation {generation}"),
        MAX_TEXT,
    );
    l.last_error.clear();
    l.fractured_at = Some(now);
    l.fracture_generation = generation;
    new
}

/// Step 4 (P3): the new primary's fracture logs. With the former primary reachable, its
/// logs and write intents (`plan::promote_logs`); without, every listed leg of `new` that
/// receives writes is marked for a full resync, and the notes say so.
fn new_logs(
    new: &mut Superblock,
    g: Geometry,
    slot: usize,
    old: Option<&mut Mirror>,
    name: &str,
    now: u64,
    notes: &mut Vec<String>,
) -> Result<Vec<(u32, Vec<Range<u64>>)>> {
    let listed: Vec<u32> = (0..g.slots)
        .filter(|&s| new.legs[s as usize].state() != LegState::Empty)
        .collect();
    let old_logs = match old {
        Some(o) => {
            // The old primary's fracture log for this image becomes the log of the old
            // primary's own slot (P3); other slots keep theirs.
            let mut fracture = Vec::new();
            for &s in &listed {
                let what = "the old primary's fracture log";
                fracture.push((
                    s,
                    runs(&mut o.bitmaps, BitmapId::Fracture(SlotIdx(s)), what)?,
                ));
            }
            let what = "the old primary's write-intent log";
            let write_intents = runs(&mut o.bitmaps, BitmapId::WriteIntent, what)?;
            Some(plan::OldPrimaryLogs {
                write_intents,
                fracture,
            })
        }
        None => None,
    };
    let logs = plan::promote_logs(&listed, slot as u32, g.region_count, old_logs.as_ref());
    if old_logs.is_none() {
        for (s, _) in &logs {
            let l = &mut new.legs[*s as usize];
            if l.state().receives_writes() {
                l.set_state(LegState::Syncing, now);
            }
            notes.push(format!(
                "slot {s} ({}) may differ from {name} in the former primary's last write window: marked for a full resync; `mirrorctl resync {name} {COMPARE}` writes only the blocks that differ",
                l.location
            ));
        }
    }
    Ok(logs)
}

/// Step 5 (P2): the new primary's bitmaps, durably: no write intents, and `logs` as its
/// fracture logs.
fn write_bitmaps(
    dev: &Arc<dyn Device>,
    g: Geometry,
    name: &str,
    logs: &[(u32, Vec<Range<u64>>)],
) -> Result<()> {
    let mut bm = Bitmaps::open(dev.clone(), g, true)
        .map_err(|e| Error::primary_io(format!("opening bitmaps of {name}"), &e))?;
    let merr = |e: std::io::Error| Error::primary_io(format!("writing bitmaps of {name}"), &e);
    bm.clear_all(BitmapId::WriteIntent).map_err(merr)?;
    for s in 0..g.slots {
        bm.clear_all(BitmapId::Fracture(SlotIdx(s))).map_err(merr)?;
    }
    for (s, rs) in logs {
        for r in rs {
            bm.set_range(BitmapId::Fracture(SlotIdx(*s)), r.clone(), true)
                .map_err(merr)?;
        }
    }
    bm.flush().map_err(merr)
}

/// Step 7: the reachable former primary `o` becomes a secondary of the new primary (`img`,
/// committed) right away (planned failover): its header is rewritten as a secondary, then
/// its slot says it was demoted, in sync if its log (in `logs`) is empty, else syncing.
/// Returns the note to show; a header it cannot rewrite is a warning (P7 finishes later).
fn demote_former_primary(
    o: Mirror,
    img: &mut Image,
    name: &str,
    slot: usize,
    old_loc: &str,
    logs: &[(u32, Vec<Range<u64>>)],
    now: u64,
) -> Result<String> {
    let dev = o.image.dev.clone();
    drop(o);
    let mut oi = match Image::read(dev) {
        Ok(oi) => oi,
        Err(e) => {
            return Ok(format!(
                "warning: could not re-read the former primary ({e}); attach it again later"
            ))
        }
    };
    let mut osb = img.sb.clone();
    osb.image_uuid = oi.sb.image_uuid;
    osb.role = Role::Secondary;
    osb.primary_uuid = img.sb.image_uuid;
    osb.primary_location = name.to_string();
    osb.in_sync_generation = 0;
    osb.created_at = oi.sb.created_at;
    // The journal is the primary's: a secondary's header carries none.
    osb.journal = None;
    oi.sb = osb;
    if let Err(e) = oi.commit() {
        return Ok(format!(
            "warning: could not rewrite the former primary's header ({e}); attach it again with `mirrorctl attach {name} {old_loc}`"
        ));
    }
    let empty = logs
        .iter()
        .all(|(s, rs)| *s as usize != slot || rs.is_empty());
    let l = &mut img.sb.legs[slot];
    l.set_state(
        if empty {
            LegState::InSync
        } else {
            LegState::Syncing
        },
        now,
    );
    l.reason = "former primary, demoted by promotion".into();
    l.fractured_at = None;
    img.commit()
        .map_err(|e| Error::primary_io(format!("writing the superblock of {name}"), &e))?;
    Ok(if empty {
        format!(
            "the former primary {old_loc} is now slot {slot} of {name}, in sync (nothing to copy)"
        )
    } else {
        format!(
            "the former primary {old_loc} is now slot {slot} of {name}; `mirrorctl resync {name}` copies what it lacks"
        )
    })
}

/// Whether two paths name one image here (device and inode, or block device).
fn same_image(a: &str, b: &str) -> bool {
    use crate::device::identity;
    match (
        identity(std::path::Path::new(a)),
        identity(std::path::Path::new(b)),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// What differs between two histories that went apart, for the split-brain refusal: the
/// last generation they shared, and what each side went through after it (how many
/// changes, up to which generation, the last change's event and time). Generations of the
/// same number are told apart by their ids, which are named then.
pub fn divergence(
    (a, a_name): (&[crate::format::HistoryEntry], &str),
    (b, b_name): (&[crate::format::HistoryEntry], &str),
) -> String {
    let common = a
        .iter()
        .rev()
        .find(|e| b.iter().any(|x| x.id == e.id))
        .map(|e| e.id);
    let after = |h: &[crate::format::HistoryEntry]| -> usize {
        match common {
            Some(id) => h
                .iter()
                .position(|e| e.id == id)
                .map_or(h.len(), |i| h.len() - 1 - i),
            None => h.len(),
        }
    };
    let (na, nb) = (after(a), after(b));
    let same_number = a.last().map(|e| e.generation) == b.last().map(|e| e.generation);
    let side = |h: &[crate::format::HistoryEntry], name: &str, n: usize| -> String {
        match h.last() {
            None => format!("{name} has no history"),
            Some(_) if n == 0 => format!("{name} changed nothing since"),
            Some(last) => format!(
                "{name} went through {} since, to generation {}{} (last: {}, {})",
                crate::units::plural(n as u64, "change"),
                last.generation,
                if same_number {
                    format!(" id {:016x}", last.id)
                } else {
                    String::new()
                },
                last.event,
                crate::units::format_time(last.at)
            ),
        }
    };
    let shared = match common.and_then(|id| a.iter().find(|e| e.id == id)) {
        Some(c) => format!("generation {} is the last they share", c.generation),
        None => "they share no generation in the history each keeps".to_string(),
    };
    format!("{shared}: {}, {}", side(b, b_name, nb), side(a, a_name, na))
}

/// Q2: whether every generation `theirs` went through after the last one it shares with
/// `ours` is a fracture that left writes refused (and there is at least one), and `ours`
/// was not promoted with `--force` since (it could lack what `theirs` acknowledged before).
pub fn acknowledged_nothing_since_split(
    ours: &[crate::format::HistoryEntry],
    theirs: &[crate::format::HistoryEntry],
) -> bool {
    // A side promoted with --force may lack writes acknowledged before the split.
    let forced = ours
        .iter()
        .rposition(|e| theirs.iter().any(|x| x.id == e.id))
        .is_some_and(|i| ours[i + 1..].iter().any(|e| e.event.ends_with(FORCED_MARK)));
    !forced
        && theirs
            .iter()
            .rposition(|e| ours.iter().any(|x| x.id == e.id))
            .is_some_and(|i| {
                let after = &theirs[i + 1..];
                !after.is_empty()
                    && after
                        .iter()
                        .all(|e| crate::engine::quorum::acknowledged_nothing(&e.event))
            })
}

/// What a returning image of this mirror that is (still) marked primary may hold that the
/// current primary lacks: its write-intent log and the fracture log it kept for the current
/// primary (P3). Refuses diverged histories unless `discard` (P4).
pub fn returning_primary_regions(
    primary: &Superblock,
    primary_name: &str,
    theirs: &Image,
    their_name: &str,
    discard: bool,
) -> Result<Vec<Range<u64>>> {
    let rel = relate(&primary.history, &theirs.sb.history);
    // Q2: a former primary that acknowledged nothing since the split holds nothing of its
    // own to keep: it is taken back like one that is behind.
    // With a damaged copy, the one read may be older than the last commit (which may have
    // ended the refusing generation): not trusted for this.
    let acknowledged_nothing = matches!(rel, Relation::Diverged { common: Some(_) })
        && theirs.damaged.is_none()
        && acknowledged_nothing_since_split(&primary.history, &theirs.sb.history);
    match rel {
        Relation::Same | Relation::Behind { .. } => {}
        Relation::Diverged { .. } if acknowledged_nothing => {}
        Relation::Ahead { .. } | Relation::Diverged { .. } if !discard => {
            return Err(Error::invalid(format!(
                "split brain: {}; refusing to mix them. Keep {primary_name}'s data and discard {their_name}'s changes with `mirrorctl attach {primary_name} {their_name} {DISCARD_SECONDARY_CHANGES}`, or the opposite with `mirrorctl attach {their_name} {primary_name} {DISCARD_SECONDARY_CHANGES}`",
                divergence(
                    (&primary.history, primary_name),
                    (&theirs.sb.history, their_name)
                )
            )));
        }
        _ => {}
    }
    let g = theirs.sb.geometry;
    let mut b = Bitmaps::open(theirs.dev.clone(), g, false)
        .map_err(|e| Error::degraded(format!("reading bitmaps of {their_name}: {e}")))?;
    let mut out = b
        .runs(BitmapId::WriteIntent, u64::MAX)
        .map_err(|e| Error::degraded(format!("reading bitmaps of {their_name}: {e}")))?;
    if let Some(s) = theirs.sb.slot_of_uuid(&primary.image_uuid) {
        let f = b
            .runs(BitmapId::Fracture(SlotIdx(s as u32)), u64::MAX)
            .map_err(|e| Error::degraded(format!("reading bitmaps of {their_name}: {e}")))?;
        out = union(&out, &f);
    } else {
        // It never knew the current primary: everything may differ.
        out = std::iter::once(0..g.region_count).collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::HistoryEntry;

    fn h(gens: &[(u64, u64, &str)]) -> Vec<HistoryEntry> {
        gens.iter()
            .map(|&(generation, id, event)| HistoryEntry {
                generation,
                id,
                at: 1_800_000_000 + generation,
                event: event.into(),
            })
            .collect()
    }

    #[test]
    fn a_split_brain_at_the_same_generation_number_names_the_shared_one_and_each_sides_ids() {
        let a = h(&[(1, 10, "created"), (2, 20, "attach"), (3, 31, "fracture")]);
        let b = h(&[(1, 10, "created"), (2, 20, "attach"), (3, 32, "promoted")]);
        let t = divergence((&a, "a.img"), (&b, "b.img"));
        assert!(
            t.starts_with("generation 2 is the last they share: "),
            "{t}"
        );
        assert!(
            t.contains("b.img went through 1 change since, to generation 3 id 0000000000000020 (last: promoted"),
            "{t}"
        );
        assert!(t.contains("a.img went through 1 change since, to generation 3 id 000000000000001f (last: fracture"), "{t}");
        assert!(!t.contains("generation 3 and generation 3"), "{t}");
    }

    #[test]
    fn a_former_primary_whose_generations_since_the_split_all_refused_writes_acknowledged_nothing()
    {
        let refusing = "slot 0 fractured by error; writes refused";
        let ours = h(&[(1, 10, "created"), (2, 20, "attach"), (3, 32, "promoted")]);
        let only_refusing = h(&[(1, 10, "created"), (2, 20, "attach"), (3, 31, refusing)]);
        assert!(acknowledged_nothing_since_split(&ours, &only_refusing));
        let twice = h(&[
            (1, 10, "created"),
            (2, 20, "attach"),
            (3, 31, refusing),
            (4, 41, refusing),
        ]);
        assert!(acknowledged_nothing_since_split(&ours, &twice));
        // Writes acknowledged again after the refusing fracture: a real split brain.
        let acked = h(&[
            (1, 10, "created"),
            (2, 20, "attach"),
            (3, 31, refusing),
            (4, 41, "writes acknowledged again"),
        ]);
        assert!(!acknowledged_nothing_since_split(&ours, &acked));
        // A fracture with writes going on (no minimum): a real split brain.
        let plain = h(&[
            (1, 10, "created"),
            (2, 20, "attach"),
            (3, 31, "slot 0 fractured by error"),
        ]);
        assert!(!acknowledged_nothing_since_split(&ours, &plain));
        // A new primary promoted with --force may lack what was acknowledged before.
        let forced = h(&[
            (1, 10, "created"),
            (2, 20, "attach"),
            (3, 32, "promoted ab (forced)"),
        ]);
        assert!(!acknowledged_nothing_since_split(&forced, &only_refusing));
        // Nothing shared, or nothing changed since: not this case.
        assert!(!acknowledged_nothing_since_split(
            &ours,
            &h(&[(1, 99, refusing)])
        ));
        assert!(!acknowledged_nothing_since_split(&ours, &ours[..2]));
    }

    #[test]
    fn a_side_ahead_or_sharing_nothing_is_said_so() {
        let a = h(&[(1, 10, "created"), (2, 20, "attach")]);
        let b = h(&[
            (1, 10, "created"),
            (2, 20, "attach"),
            (3, 30, "promoted"),
            (4, 40, "resync"),
        ]);
        let t = divergence((&a, "a.img"), (&b, "b.img"));
        assert!(
            t.contains("b.img went through 2 changes since, to generation 4 (last: resync"),
            "{t}"
        );
        assert!(t.contains("a.img changed nothing since"), "{t}");
        let c = h(&[(7, 70, "created")]);
        let t = divergence((&a, "a.img"), (&c, "c.img"));
        assert!(t.starts_with("they share no generation"), "{t}");
    }
}
