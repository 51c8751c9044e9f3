//! Region ranges: unions of sorted range lists (logs merged with write intents, runs to copy).

use std::ops::Range;

/// Union of two sorted lists of ranges, merged and sorted.
pub fn union(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut all: Vec<Range<u64>> = a
        .iter()
        .chain(b.iter())
        .filter(|r| !r.is_empty())
        .cloned()
        .collect();
    all.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in all {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlapping_and_touching_ranges() {
        assert_eq!(
            union(&[0..2, 5..7], &[1..3, 7..8, 10..10]),
            vec![0..3, 5..8]
        );
        assert_eq!(union(&[], &[]), Vec::<Range<u64>>::new());
    }
}
