//! verify's comparison pipeline: one batch read from the primary and every leg in parallel
//! (reader threads read ahead, buffers recycled) and compared chunk by chunk.

use crate::device::Device;
use crate::engine::verify::read::{spawn_reader, Feed};
use crate::engine::verify::record::confirm_record_repair;
use crate::engine::verify::select::{batch_legs, chunks_of, Chunk};
use crate::engine::verify::{LegVerify, VerifyReport, READ_CHUNK};
use crate::engine::{Mirror, Progress};
use crate::error::Result;
use crate::format::layout::Geometry;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Compares one chunk of the primary (`ours`) with one leg's (`theirs`; `None` for a hole
/// on both sides): regions that differ and are not pending go to `found`; the leg's and the
/// report's counts grow by what was compared.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compare_chunk(
    g: &Geometry,
    c: &Chunk,
    ours: &[u8],
    theirs: Option<&[u8]>,
    pending: &[Range<u64>],
    lv: &mut LegVerify,
    found: &mut Vec<u64>,
    report: &mut VerifyReport,
) {
    let hole = theirs.is_none();
    if let Some(theirs) = theirs {
        let rs = g.region_size as usize;
        for (n, (a, b)) in ours[..c.len]
            .chunks(rs)
            .zip(theirs[..c.len].chunks(rs))
            .enumerate()
        {
            let region = c.regions.start + n as u64;
            if a != b && !pending.iter().any(|p| p.contains(&region)) {
                found.push(region);
            }
        }
    }
    let skipped: u64 = pending
        .iter()
        .map(|p| {
            p.end
                .min(c.regions.end)
                .saturating_sub(p.start.max(c.regions.start))
        })
        .sum();
    let total = c.regions.end - c.regions.start;
    lv.regions_compared += total - skipped;
    let n = c.len as u64 * (total - skipped) / total;
    report.bytes_compared += n;
    if c.unwritten {
        report.unwritten_bytes += n;
    } else if hole {
        report.hole_bytes += n;
    }
}

/// Compares one batch of regions on every requested leg (legs read in parallel). Returns
/// the region where it stopped: the batch end, or earlier when the time budget ran out.
#[allow(clippy::too_many_arguments)]
pub(super) fn compare_batch(
    m: &mut Mirror,
    g: &Geometry,
    batch: Range<u64>,
    legs: &mut [LegVerify],
    repair: bool,
    report: &mut VerifyReport,
    progress: &dyn Progress,
    budget: Option<(Instant, u64)>,
) -> Result<u64> {
    let active = batch_legs(m, legs, &batch)?;
    let primary = m.image.dev.clone();
    let written = m.written_runs()?;
    let chunks = chunks_of(g, batch.clone(), READ_CHUNK, &written);
    let mut found: Vec<Vec<u64>> = vec![Vec::new(); legs.len()];
    let mut r = batch.start;
    if active.is_empty() {
        // Nothing to compare: the batch counts as covered.
        for c in &chunks {
            if budget.is_some_and(|(d, run_start)| r > run_start && Instant::now() >= d) {
                break;
            }
            progress.advance(c.len as u64);
            report.data_bytes += c.len as u64;
            r = c.regions.end;
        }
    } else {
        // One reader thread per device (the primary first) reads ahead while this thread
        // compares: reads of all legs and the comparison overlap, buffers are recycled.
        let devs: Vec<Arc<dyn Device>> = std::iter::once(primary.clone())
            .chain(active.iter().map(|(_, d, _)| d.clone()))
            .collect();
        let stop = AtomicBool::new(false);
        let zeros = vec![0u8; chunks.iter().map(|c| c.len).max().unwrap_or(0)];
        let outcome: Result<()> = std::thread::scope(|sc| {
            let mut feeds: Vec<Option<Feed>> = devs
                .iter()
                .map(|d| Some(spawn_reader(sc, d.clone(), &chunks, &stop)))
                .collect();
            let mut result = Ok(());
            for c in &chunks {
                if budget.is_some_and(|(d, run_start)| r > run_start && Instant::now() >= d) {
                    break;
                }
                let ppiece = match feeds[0].as_ref().unwrap().next() {
                    Ok(p) => p,
                    Err(e) => {
                        result =
                            Err(m.meta_err(&format!("reading data at offset {}", c.offset), &e));
                        break;
                    }
                };
                let pbuf: &[u8] = ppiece.as_deref().unwrap_or(&zeros[..c.len]);
                for (k, (i, _, pending)) in active.iter().enumerate() {
                    let Some(feed) = feeds[k + 1].as_ref() else {
                        continue;
                    };
                    match feed.next() {
                        Err(e) => {
                            legs[*i].error =
                                Some(format!("reading at data offset {}: {e}", c.offset));
                            feeds[k + 1] = None;
                        }
                        Ok(lpiece) => {
                            let theirs = (ppiece.is_some() || lpiece.is_some())
                                .then(|| lpiece.as_deref().unwrap_or(&zeros[..c.len]));
                            compare_chunk(
                                g,
                                c,
                                pbuf,
                                theirs,
                                pending,
                                &mut legs[*i],
                                &mut found[*i],
                                report,
                            );
                            feed.give_back(lpiece);
                        }
                    }
                }
                feeds[0].as_ref().unwrap().give_back(ppiece);
                progress.advance(c.len as u64);
                report.data_bytes += c.len as u64;
                r = c.regions.end;
            }
            // Readers still running stop at their next chunk; dropping the feeds unblocks them.
            stop.store(true, Ordering::SeqCst);
            drop(feeds);
            result
        });
        outcome?;
    }
    confirm_record_repair(m, g, &primary, found, legs, repair)?;
    Ok(r)
}
