//! Verify while hosts write: the command's comparison (`engine/verify/`) chunk by chunk,
//! each chunk in its place among the host writes, its differences recorded (V1) and
//! repaired through the live resync.
//!
//! The live rules that keep it honest are H4 (a chunk is read holding a ticket over its
//! range: every earlier overlapping write has finished on every leg, later ones wait until
//! the reads are done; only the chunk waits, never the whole image) and H8 (a leg is
//! compared only while the same leg, the one whose device is read and whose log was taken
//! at the batch's start, receives writes: checked in the lock hold that starts each chunk),
//! in `mod.rs`.

use super::admin::Say;
use crate::device::Device;
use crate::engine::plan::Verdict;
use crate::engine::serve::LegId;
use crate::engine::serve::Server;
use crate::engine::serve::Use;
use crate::engine::verify::{self as v, Pass, VerifyOpts, VerifyReport, BATCH};
use crate::engine::NoProgress;
use crate::engine::Progress;
use crate::error::Error;
use crate::error::Result;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Server {
    /// A verify pass of `slots` (as `mirrorctl verify`: cursor, budget, repair, record)
    /// while hosts write.
    pub fn verify(
        &self,
        slots: &[u32],
        opts: &VerifyOpts,
        progress: &dyn Progress,
        say: Say<'_>,
    ) -> Result<(VerifyReport, Verdict)> {
        let g = self.geometry;
        let mut pass = Pass::begin(&self.lock().mirror, slots, opts, progress);
        let mut pos = pass.start;
        let batch_regions = (BATCH / g.region_size).max(1);
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        let zeros = vec![0u8; self.verify_chunk.max(g.region_size) as usize];
        let mut stopped = false;
        loop {
            let batch = pos..(pos + batch_regions).min(g.region_count);
            // H8: the legs' devices, logs and identities taken in one lock hold; a leg whose
            // device is not the one receiving writes now is not compared in this batch.
            let (active, ids) = {
                let mut st = self.lock();
                let active = v::batch_legs(&mut st.mirror, &mut pass.legs, &batch)?;
                let ids: Vec<Option<LegId>> = active
                    .iter()
                    .map(|(i, d, _)| {
                        let slot = pass.legs[*i].slot;
                        let same = st.legs.iter().any(|(s, x)| *s == slot && Arc::ptr_eq(x, d));
                        st.id_of(slot).filter(|_| same)
                    })
                    .collect();
                (active, ids)
            };
            bufs.resize(active.len() + 1, Vec::new());
            let mut found: Vec<Vec<u64>> = vec![Vec::new(); pass.legs.len()];
            let mut failed: Vec<(u32, String, io::Error)> = Vec::new();
            let written = self.lock().mirror.written_runs()?;
            for c in v::chunks_of(&g, batch.clone(), self.verify_chunk, &written) {
                if pass.out_of_time(pos) {
                    break;
                }
                if self.admin_stop.load(Ordering::SeqCst) {
                    stopped = true;
                    break;
                }
                if c.unwritten {
                    // W7: never written: not read, equal on every leg.
                    for (i, _, pending) in &active {
                        let lv = &mut pass.legs[*i];
                        v::compare_chunk(
                            &g,
                            &c,
                            &zeros,
                            None,
                            pending,
                            lv,
                            &mut found[*i],
                            &mut pass.report,
                        );
                    }
                } else if !active.is_empty() {
                    let read = self.read_chunk(&c, &active, &ids, &pass.legs, &mut bufs)?;
                    let ours: &[u8] = match &read[0] {
                        Some(Ok(true)) => &bufs[0],
                        _ => &zeros,
                    };
                    for (k, (i, _, pending)) in active.iter().enumerate() {
                        let lv = &mut pass.legs[*i];
                        let theirs: Option<&[u8]> = match &read[k + 1] {
                            None => continue, // not compared now (H8, or an earlier error)
                            Some(Err(e)) => {
                                lv.error =
                                    Some(format!("reading at data offset {}: {e}", c.offset));
                                let what = format!("verify: read at data offset {}", c.offset);
                                failed.push((
                                    lv.slot,
                                    what,
                                    io::Error::new(e.kind(), e.to_string()),
                                ));
                                continue;
                            }
                            Some(Ok(true)) => Some(&bufs[k + 1]),
                            // A hole on the leg: zeros, compared unless the primary has one too.
                            Some(Ok(false)) => {
                                matches!(read[0], Some(Ok(true))).then_some(&zeros[..])
                            }
                        };
                        v::compare_chunk(
                            &g,
                            &c,
                            ours,
                            theirs,
                            pending,
                            lv,
                            &mut found[*i],
                            &mut pass.report,
                        );
                    }
                }
                progress.advance(c.len as u64);
                pass.report.data_bytes += c.len as u64;
                pos = c.regions.end;
            }
            let mut to_repair = Vec::new();
            {
                let mut st = self.lock();
                for (i, regions) in found.into_iter().enumerate() {
                    if regions.is_empty() {
                        continue;
                    }
                    let slot = pass.legs[i].slot;
                    v::record_mismatches(&g, &mut pass.legs[i], &regions);
                    // V1: recorded durably before they are reported.
                    st.mirror.mark_out_of_sync(slot, &regions)?;
                    if st.receiving(slot) {
                        to_repair.push(slot);
                    }
                }
                // A leg that cannot be read is fractured, as a failed write would do (H5);
                // only the leg read (H8).
                for (slot, what, e) in failed {
                    let read = active
                        .iter()
                        .zip(&ids)
                        .find(|((i, _, _), _)| pass.legs[*i].slot == slot)
                        .and_then(|(_, id)| *id);
                    if read.is_some_and(|id| st.is_current(&id)) {
                        self.fracture(&mut st, slot, what, e)
                            .map_err(|f| Error::primary(f.msg))?;
                    }
                }
                self.tell(&mut st, say);
            }
            if opts.repair && !to_repair.is_empty() {
                let rr = self.resync_legs(
                    &to_repair,
                    &crate::engine::ResyncOptions::default(),
                    false,
                    &NoProgress,
                    say,
                )?;
                v::repaired(&mut pass.legs, &rr);
            }
            let complete = pos >= g.region_count;
            let done = (complete || stopped || pass.out_of_time(pos)).then_some(pass.start);
            {
                let mut st = self.lock();
                v::save_record(
                    &mut st.mirror,
                    &pass.legs,
                    pass.started_at,
                    pos,
                    complete,
                    &pass.report,
                    pass.carried,
                    done,
                )?;
                self.tell(&mut st, say);
            }
            if complete {
                pass.report.complete = true;
                break;
            }
            if stopped {
                progress.finish();
                return Err(Error::busy(format!(
                    "serve is stopping: verify stopped at region {pos} of {} (the cursor is saved; a `--max-time` run continues there)",
                    g.region_count
                )));
            }
            if pass.out_of_time(pos) {
                break;
            }
        }
        progress.finish();
        let last_full = self
            .lock()
            .mirror
            .sb()
            .last_verify
            .as_ref()
            .and_then(|r| r.last_full_pass_at);
        Ok(pass.finish(pos, last_full))
    }

    /// H4: reads chunk `c` from the primary (into `bufs[0]`) and every active leg that is
    /// still the same leg receiving writes (H8) in parallel, in the chunk's place among the
    /// host writes. For
    /// each device: `None` not read, `Some(Ok(true))` read, `Some(Ok(false))` a hole
    /// (zeros, not read), or the leg's error. A primary that fails is an error.
    fn read_chunk(
        &self,
        c: &v::Chunk,
        active: &[v::ActiveLeg],
        ids: &[Option<LegId>],
        legs: &[v::LegVerify],
        bufs: &mut [Vec<u8>],
    ) -> Result<Vec<Option<io::Result<bool>>>> {
        let t = self.ticket_for(c.offset, c.len as u64, Use::Admin);
        let receiving: Vec<bool> = {
            let st = self.wait_for_earlier(self.lock(), &t);
            active
                .iter()
                .zip(ids)
                .map(|((i, _, _), id)| {
                    legs[*i].error.is_none() && id.is_some_and(|id| st.is_current(&id))
                })
                .collect()
        };
        let devs: Vec<Option<Arc<dyn Device>>> = std::iter::once(Some(self.primary.clone()))
            .chain(
                active
                    .iter()
                    .zip(&receiving)
                    .map(|((_, d, _), &r)| r.then(|| d.clone())),
            )
            .collect();
        let read = |d: &dyn Device, buf: &mut Vec<u8>| -> io::Result<bool> {
            let range = c.at..c.at + c.len as u64;
            if matches!(d.data_extents(range), Ok(Some(v)) if v.is_empty()) {
                return Ok(false);
            }
            buf.resize(c.len, 0);
            d.read_at(&mut buf[..c.len], c.at).map(|()| true)
        };
        let out: Vec<Option<io::Result<bool>>> = std::thread::scope(|sc| {
            let (first, rest) = bufs.split_first_mut().unwrap();
            let hs: Vec<_> = devs[1..]
                .iter()
                .zip(rest.iter_mut())
                .map(|(d, buf)| {
                    d.as_ref()
                        .map(|d| crate::thread::spawn_or_run(sc, || read(&**d, buf)))
                })
                .collect();
            let p = read(&*self.primary, first);
            std::iter::once(Some(p))
                .chain(hs.into_iter().map(|h| {
                    h.map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("reader panicked")))
                    })
                }))
                .collect()
        });
        self.cancel(t);
        if let Some(Err(e)) = &out[0] {
            return Err(Error::primary_io(
                format!("reading primary {} at data offset {}", self.name, c.offset),
                e,
            ));
        }
        Ok(out)
    }
}
