//! verify's differences: regions found to differ re-read and confirmed, counted as ranges
//! on the leg, recorded in its fracture log (V1), and repaired through resync on request.

use crate::device::Device;
use crate::engine::verify::{LegVerify, MismatchRange};
use crate::engine::Mirror;
use crate::error::Result;
use crate::format::layout::Geometry;
use std::sync::Arc;

/// Counts `confirmed` mismatched regions (ascending) on `lv`, adjacent ones as one range.
pub(crate) fn record_mismatches(g: &Geometry, lv: &mut LegVerify, confirmed: &[u64]) {
    for region in confirmed {
        let b = g.region_bytes(crate::format::layout::RegionIdx(*region));
        lv.mismatched_regions += 1;
        lv.mismatched_bytes += b.end - b.start;
        match lv.mismatches.last_mut() {
            Some(last) if last.end_region == *region => {
                last.end_region += 1;
                last.length = b.end - last.offset;
            }
            _ => lv.mismatches.push(MismatchRange {
                first_region: *region,
                end_region: region + 1,
                offset: b.start,
                length: b.end - b.start,
            }),
        }
    }
}

/// Confirms the regions `found` to differ on each leg (read again, compared byte for byte),
/// records them (V1) and repairs them when asked.
///
/// Steps, in order (V1):
/// 1. re-read each found region on the primary and the leg; keep those still different;
/// 2. count them on the leg's report;
/// 3. record them in the leg's fracture log durably (the leg leaves in-sync);
/// 4. only then, with `repair`, copy them through resync (S1).
pub(super) fn confirm_record_repair(
    m: &mut Mirror,
    g: &Geometry,
    primary: &Arc<dyn Device>,
    found: Vec<Vec<u64>>,
    legs: &mut [LegVerify],
    repair: bool,
) -> Result<()> {
    // A region reported as different is read again and compared byte for byte first.
    let mut to_repair = Vec::new();
    for (i, regions) in found.into_iter().enumerate() {
        if regions.is_empty() {
            continue;
        }
        let slot = legs[i].slot;
        let dev = match m.open_leg(slot) {
            Ok(d) => d,
            Err(e) => {
                legs[i].error = Some(e);
                continue;
            }
        };
        let mut confirmed = Vec::new();
        for region in regions {
            let b = g.region_bytes(crate::format::layout::RegionIdx(region));
            let n = (b.end - b.start) as usize;
            let (mut pa, mut pb) = (vec![0u8; n], vec![0u8; n]);
            primary
                .read_at(&mut pa, g.data_offset + b.start)
                .map_err(|e| m.meta_err(&format!("re-reading data at offset {}", b.start), &e))?;
            if let Err(e) = dev.read_at(&mut pb, g.data_offset + b.start) {
                legs[i].error = Some(format!("re-reading at data offset {}: {e}", b.start));
                break;
            }
            if pa != pb {
                confirmed.push(region);
            }
        }
        record_mismatches(g, &mut legs[i], &confirmed);
        if !confirmed.is_empty() {
            to_repair.push((slot, confirmed));
        }
    }
    // V1: differences found are recorded in the leg's fracture log durably (and the leg
    // leaves in-sync) before verify reports them, so status is unhealthy until they are
    // repaired and a plain `resync` repairs them; without it a leg known to differ stayed
    // "in-sync" and promotable.
    for (slot, regions) in &to_repair {
        m.mark_out_of_sync(*slot, regions)?;
    }
    if repair && !to_repair.is_empty() {
        // The ordinary resync path copies them (and clears the bits only once durable: S1).
        let slots: Vec<u32> = to_repair.iter().map(|(s, _)| *s).collect();
        let rr = m.resync(&slots, None, &crate::engine::NoProgress)?;
        repaired(legs, &rr);
    }
    Ok(())
}

/// What a repair's resync did, on the legs it copied to.
pub(crate) fn repaired(legs: &mut [LegVerify], rr: &crate::engine::ResyncReport) {
    for l in &rr.legs {
        if let Some(lv) = legs.iter_mut().find(|x| x.slot == l.slot) {
            match &l.error {
                None => lv.repaired = true,
                Some(e) => lv.error = Some(format!("repair failed: {e}")),
            }
        }
    }
}
