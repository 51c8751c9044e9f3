//! verify's planning: which legs a batch compares and the regions already pending on each
//! (fracture log, write intents), and the chunks it is cut into, never-written runs (W7)
//! apart so they are neither read nor compared.

use crate::engine::verify::{LegVerify, RECORDED_REASON};
use crate::engine::Mirror;
use crate::error::Result;
use crate::format::layout::{BitmapId, Geometry, SlotIdx};
use crate::format::ranges::union;
use crate::format::LegState;
use std::ops::Range;
use std::sync::Arc;

/// A leg taking part in a batch: (index into the pass's legs, device, regions of the batch
/// already pending on that leg).
pub(crate) type ActiveLeg = (usize, Arc<dyn crate::device::Device>, Vec<Range<u64>>);

/// The legs compared in `batch`, with their regions already known out of sync; the others
/// are marked skipped (fractured, detached) or keep the error that stopped them.
pub(crate) fn batch_legs(
    m: &mut Mirror,
    legs: &mut [LegVerify],
    batch: &Range<u64>,
) -> Result<Vec<ActiveLeg>> {
    let mut active = Vec::new();
    for (i, lv) in legs.iter_mut().enumerate() {
        let leg = m.sb().legs[lv.slot as usize].clone();
        lv.state = leg.state().as_str().to_string();
        if leg.state() == LegState::Empty {
            lv.skipped = Some("detached during verify".into());
            continue;
        }
        if leg.state().is_fractured() {
            lv.skipped = Some(format!("{}: not compared", leg.state().as_str()));
            continue;
        }
        if lv.error.is_some() {
            continue;
        }
        match m.open_leg_or_refusal(lv.slot) {
            Ok(d) => {
                // A leg whose differences an earlier verify recorded (V1) is compared in
                // full: what it recorded is reported again until it is repaired, so a
                // second verify does not turn "differences" into "clean".
                let pending = if leg.reason == RECORDED_REASON {
                    Vec::new()
                } else {
                    pending_in(m, lv.slot, batch)?
                };
                lv.pending_regions += pending.iter().map(|r| r.end - r.start).sum::<u64>();
                lv.compared = true;
                active.push((i, d, pending));
            }
            Err((e, refused)) => {
                lv.error = Some(e);
                lv.refused = refused;
            }
        }
    }
    Ok(active)
}

/// `batch` cut into the chunks read and compared at once, none straddling the edge of a
/// run of `written` regions (ascending): chunks outside them are never-written (W7) and
/// neither read nor compared.
pub(crate) fn chunks_of(
    g: &Geometry,
    batch: Range<u64>,
    chunk_bytes: u64,
    written: &[Range<u64>],
) -> Vec<Chunk> {
    let chunk_regions = (chunk_bytes / g.region_size).max(1);
    let mut pieces = Vec::new();
    let mut p = batch.start;
    for w in written {
        let (s, e) = (w.start.max(p), w.end.min(batch.end));
        if s >= e {
            continue;
        }
        if s > p {
            pieces.push((p..s, true));
        }
        pieces.push((s..e, false));
        p = e;
    }
    if p < batch.end {
        pieces.push((p..batch.end, true));
    }
    pieces
        .into_iter()
        .flat_map(|(piece, unwritten)| {
            (piece.start..piece.end)
                .step_by(chunk_regions as usize)
                .map(move |r| {
                    let regions = r..(r + chunk_regions).min(piece.end);
                    let bytes = g.regions_bytes(regions.clone());
                    Chunk {
                        at: g.data_offset + bytes.start,
                        len: (bytes.end - bytes.start) as usize,
                        offset: bytes.start,
                        regions,
                        unwritten,
                    }
                })
        })
        .collect()
}

/// Regions of `batch` already known out of sync on `slot`: its fracture log, and the write
/// intents unless a running server holds them (it keeps its hot set in step, and its
/// verify excludes host writes chunk by chunk).
fn pending_in(m: &mut Mirror, slot: u32, batch: &Range<u64>) -> Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let ids: &[BitmapId] = if m.intents_live {
        &[BitmapId::Fracture(SlotIdx(slot))]
    } else {
        &[BitmapId::Fracture(SlotIdx(slot)), BitmapId::WriteIntent]
    };
    for &id in ids {
        let mut from = batch.start;
        loop {
            let r = m
                .bitmaps
                .next_run(id, from, u64::MAX)
                .map_err(|e| m.meta_err("reading a fracture log", &e))?;
            match r {
                Some(r) if r.start < batch.end => {
                    out.push(r.start.max(batch.start)..r.end.min(batch.end));
                    from = r.end;
                }
                _ => break,
            }
        }
    }
    Ok(union(&out, &[]))
}

/// A run of regions read and compared at once.
pub(crate) struct Chunk {
    pub(crate) regions: Range<u64>,
    /// Device offset and length.
    pub(crate) at: u64,
    pub(crate) len: usize,
    /// Offset in the data area (for messages).
    pub(crate) offset: u64,
    /// Never written (W7): not read, equal on every leg by definition.
    pub(crate) unwritten: bool,
}
