//! Pure planning: the decisions the operations make, as functions of numbers and ranges,
//! with no device in sight (crucible's `mend.rs` habit), unit-tested on their own. The
//! operations do the I/O these plans describe.

use crate::format::layout::Geometry;
use crate::format::ranges::union;
use std::ops::Range;

/// The region after the last one a write of `len` bytes (if known) at `offset` can touch:
/// where its write-intent window stops, so that nothing past the write stays marked.
pub fn write_limit(g: &Geometry, offset: u64, len: Option<u64>) -> u64 {
    match len {
        Some(k) => g
            .regions_for(offset, k.min(g.data_size - offset))
            .end
            .max(g.regions_for(offset, 0).end + 1)
            .min(g.region_count),
        None => g.region_count,
    }
}

/// How a span of the primary is copied: `(range, true)` pieces hold data and are copied,
/// `(range, false)` pieces are holes the primary reports (SEEK_HOLE) and are zeroed on the
/// target. `extents` is where the primary may hold data; `None` (unknown) copies it all.
pub fn copy_pieces(span: Range<u64>, extents: Option<Vec<Range<u64>>>) -> Vec<(Range<u64>, bool)> {
    let Some(ext) = extents else {
        return vec![(span, true)];
    };
    let mut v = Vec::new();
    let mut p = span.start;
    for e in ext {
        if e.start > p {
            v.push((p..e.start, false));
        }
        v.push((e.start.max(p)..e.end.min(span.end), true));
        p = e.end.min(span.end);
    }
    if p < span.end {
        v.push((p..span.end, false));
    }
    v.retain(|(r, _)| !r.is_empty());
    v
}

/// The longest run of regions a resync copies before it looks at the clock: `copy_run`
/// bytes, or under a rate limit what the limit lets through in half a checkpoint
/// (`half_checkpoint_bytes`), so durable points come within 1.5 checkpoints. Never 0.
pub fn max_run_regions(half_checkpoint_bytes: Option<u64>, copy_run: u64, region_size: u64) -> u64 {
    let run_bytes = half_checkpoint_bytes.map_or(copy_run, |b| b.min(copy_run));
    (run_bytes / region_size).max(1)
}

/// Runs of `block`-sized pieces where `ours` and `theirs` differ (byte offsets, the last
/// block may be short), each run to be written with one call.
pub fn differing_runs(ours: &[u8], theirs: &[u8], block: usize) -> Vec<Range<usize>> {
    let n = ours.len().min(theirs.len());
    let differs = |i: usize| {
        let e = (i + block).min(n);
        ours[i..e] != theirs[i..e]
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        if !differs(i) {
            i += block;
            continue;
        }
        let mut j = i + block;
        while j < n && differs(j) {
            j += block;
        }
        let j = j.min(n);
        out.push(i..j);
        i = j;
    }
    out
}

/// A new secondary's initial fracture log (A2): the regions of the primary's data extents
/// (device offsets), or every region when they are unknown or the secondary keeps its data.
pub fn initial_log(g: &Geometry, extents: Option<Vec<Range<u64>>>) -> Vec<Range<u64>> {
    match extents {
        None => every(g.region_count),
        Some(v) => union(
            &v.into_iter()
                .map(|r| g.regions_for(r.start - g.data_offset, r.end - r.start))
                .collect::<Vec<_>>(),
            &[],
        ),
    }
}

/// The part of `log` inside `written` (both ascending, non-overlapping): a new secondary
/// needs no copy of chunks the primary's written map says were never written (W7).
pub fn within_written(log: &[Range<u64>], written: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut j = 0;
    for r in log {
        while j < written.len() && written[j].end <= r.start {
            j += 1;
        }
        let mut k = j;
        while k < written.len() && written[k].start < r.end {
            let piece = r.start.max(written[k].start)..r.end.min(written[k].end);
            match out.last_mut() {
                Some(l) if l.end == piece.start => l.end = piece.end,
                _ => out.push(piece),
            }
            k += 1;
        }
    }
    out
}

/// All of `0..n` as a list of ranges.
pub fn every(n: u64) -> Vec<Range<u64>> {
    std::iter::once(0..n).collect()
}

/// What the former primary told promotion, when it was reachable: its write-intent log and
/// each slot's fracture log.
pub struct OldPrimaryLogs {
    pub write_intents: Vec<Range<u64>>,
    pub fracture: Vec<(u32, Vec<Range<u64>>)>,
}

/// The new primary's fracture logs after promotion (P3). With the former primary's logs
/// every listed slot keeps its log plus the pending intents (the promoted image's old log
/// becomes the former primary's slot's); without them every other listed slot may differ
/// anywhere in the former primary's last window, which is unknown: all regions.
/// `listed` are the slots of the new leg table in use; `promoted` the slot the former
/// primary now takes.
pub fn promote_logs(
    listed: &[u32],
    promoted: u32,
    region_count: u64,
    old: Option<&OldPrimaryLogs>,
) -> Vec<(u32, Vec<Range<u64>>)> {
    match old {
        Some(o) => listed
            .iter()
            .map(|&s| {
                let f = o
                    .fracture
                    .iter()
                    .find(|(x, _)| *x == s)
                    .map(|(_, r)| r.as_slice())
                    .unwrap_or(&[]);
                (s, union(f, &o.write_intents))
            })
            .collect(),
        None => listed
            .iter()
            .filter(|&&s| s != promoted)
            .map(|&s| (s, every(region_count)))
            .collect(),
    }
}

/// The outcome of a verify run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every compared region matches.
    Clean,
    /// Some differed and all of them were repaired.
    Repaired,
    /// Some differ and were not repaired.
    Differences,
    /// A leg could not be read, or nothing at all could be compared.
    Incomplete,
}

impl Verdict {
    /// The `result` word of the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Repaired => "repaired",
            Verdict::Differences => "differences",
            Verdict::Incomplete => "incomplete",
        }
    }
}

/// The verify verdict: unrepaired differences first, then an incomplete comparison, then
/// repaired ones.
pub fn verdict(
    unrepaired: u64,
    broken: bool,
    nothing_compared: bool,
    any_mismatch: bool,
) -> Verdict {
    if unrepaired > 0 {
        Verdict::Differences
    } else if broken || nothing_compared {
        Verdict::Incomplete
    } else if any_mismatch {
        Verdict::Repaired
    } else {
        Verdict::Clean
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // lists of one range are what is expected
mod tests {
    use super::*;

    #[test]
    fn a_known_length_bounds_the_window_to_the_regions_it_touches() {
        let g = Geometry::for_data_size(1 << 20, 4096, 2).unwrap();
        assert_eq!(write_limit(&g, 0, None), 256);
        assert_eq!(write_limit(&g, 4096, Some(10)), 2);
        assert_eq!(write_limit(&g, 8192, Some(0)), 3, "at least one region");
        assert_eq!(write_limit(&g, 0, Some(u64::MAX)), 256);
    }

    #[test]
    fn an_initial_log_keeps_only_what_was_written() {
        assert_eq!(within_written(&[0..100], &[]), Vec::<Range<u64>>::new());
        assert_eq!(
            within_written(&[0..100], &[0..100]),
            crate::engine::plan::every(100)
        );
        assert_eq!(
            within_written(&[0..10, 20..30, 40..50], &[5..25, 28..29, 45..60]),
            vec![5..10, 20..25, 28..29, 45..50]
        );
        // Adjacent pieces join.
        assert_eq!(
            within_written(&[0..10, 10..20], &[5..15]),
            std::iter::once(5..15).collect::<Vec<_>>()
        );
        assert_eq!(within_written(&[], &[0..5]), Vec::<Range<u64>>::new());
    }

    #[test]
    fn copy_pieces_copy_data_and_zero_only_reported_holes() {
        assert_eq!(copy_pieces(0..100, None), vec![(0..100, true)]);
        assert_eq!(copy_pieces(0..100, Some(vec![])), vec![(0..100, false)]);
        assert_eq!(
            copy_pieces(10..100, Some(vec![0..20, 40..50, 90..200])),
            vec![
                (10..20, true),
                (20..40, false),
                (40..50, true),
                (50..90, false),
                (90..100, true)
            ]
        );
    }

    #[test]
    fn a_rate_limit_shortens_runs_but_never_to_nothing() {
        assert_eq!(max_run_regions(None, 8 << 20, 64 << 10), 128);
        assert_eq!(max_run_regions(Some(1 << 20), 8 << 20, 64 << 10), 16);
        assert_eq!(max_run_regions(Some(1), 8 << 20, 64 << 10), 1);
    }

    #[test]
    fn differing_blocks_are_found_as_runs_including_a_short_last_block() {
        let a = vec![0u8; 10];
        let mut b = a.clone();
        assert_eq!(differing_runs(&a, &b, 4), Vec::<Range<usize>>::new());
        b[1] = 1;
        b[5] = 1;
        b[9] = 1;
        assert_eq!(differing_runs(&a, &b, 4), vec![0..10]);
        b[5] = 0;
        assert_eq!(differing_runs(&a, &b, 4), vec![0..4, 8..10]);
    }

    #[test]
    fn the_initial_log_is_the_regions_of_the_primarys_extents() {
        let g = Geometry::for_data_size(1 << 20, 4096, 2).unwrap();
        let d = g.data_offset;
        assert_eq!(initial_log(&g, None), vec![0..256]);
        assert_eq!(
            initial_log(
                &g,
                Some(vec![d..d + 1, d + 4096..d + 8193, d + 12288..d + 12289])
            ),
            vec![0..4]
        );
        assert_eq!(initial_log(&g, Some(vec![])), Vec::<Range<u64>>::new());
    }

    #[test]
    fn promotion_keeps_logs_plus_intents_or_marks_the_others_in_full() {
        let old = OldPrimaryLogs {
            write_intents: vec![5..6],
            fracture: vec![(0, vec![1..2]), (1, vec![])],
        };
        assert_eq!(
            promote_logs(&[0, 1], 0, 100, Some(&old)),
            vec![(0, vec![1..2, 5..6]), (1, vec![5..6])]
        );
        assert_eq!(
            promote_logs(&[0, 1, 3], 0, 100, None),
            vec![(1, vec![0..100]), (3, vec![0..100])]
        );
    }

    #[test]
    fn the_verdict_puts_unrepaired_differences_before_an_incomplete_run() {
        assert_eq!(verdict(0, false, false, false), Verdict::Clean);
        assert_eq!(verdict(0, false, false, true), Verdict::Repaired);
        assert_eq!(verdict(0, true, false, true), Verdict::Incomplete);
        assert_eq!(verdict(0, false, true, false), Verdict::Incomplete);
        assert_eq!(verdict(3, true, true, true), Verdict::Differences);
        assert_eq!(Verdict::Differences.as_str(), "differences");
    }
}
