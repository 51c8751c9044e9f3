//! Generation histories: how two images of one mirror relate (same, one behind the other,
//! or diverged = split brain), decided from the generation ids each went through.

use crate::format::HistoryEntry;

/// How image B relates to image A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relation {
    /// Both went through the same generations.
    Same,
    /// B stopped at a generation A went through; A has `missing` generations more.
    Behind { missing: u64 },
    /// A stopped at a generation B went through; B has `extra` generations more.
    Ahead { extra: u64 },
    /// Both went through generations the other did not, after sharing `common`
    /// (None: no generation in common within the kept history).
    Diverged { common: Option<u64> },
}

impl Relation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Relation::Same => "in-sync",
            Relation::Behind { .. } => "behind",
            Relation::Ahead { .. } => "ahead",
            Relation::Diverged { .. } => "diverged",
        }
    }
}

/// Relates history `b` to history `a` (both oldest first).
pub fn relate(a: &[HistoryEntry], b: &[HistoryEntry]) -> Relation {
    let (Some(la), Some(lb)) = (a.last(), b.last()) else {
        return Relation::Diverged { common: None };
    };
    if la.id == lb.id {
        return Relation::Same;
    }
    if let Some(i) = a.iter().position(|e| e.id == lb.id) {
        return Relation::Behind {
            missing: (a.len() - 1 - i) as u64,
        };
    }
    if let Some(i) = b.iter().position(|e| e.id == la.id) {
        return Relation::Ahead {
            extra: (b.len() - 1 - i) as u64,
        };
    }
    let common = a
        .iter()
        .rev()
        .find(|e| b.iter().any(|x| x.id == e.id))
        .map(|e| e.generation);
    Relation::Diverged { common }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ids: &[u64]) -> Vec<HistoryEntry> {
        ids.iter()
            .enumerate()
            .map(|(i, &id)| HistoryEntry {
                generation: i as u64 + 1,
                id,
                at: 0,
                event: String::new(),
            })
            .collect()
    }

    #[test]
    fn identical_histories_are_in_sync() {
        assert_eq!(relate(&h(&[1, 2, 3]), &h(&[1, 2, 3])), Relation::Same);
    }

    #[test]
    fn a_prefix_is_behind_and_an_extension_is_ahead() {
        assert_eq!(
            relate(&h(&[1, 2, 3]), &h(&[1, 2])),
            Relation::Behind { missing: 1 }
        );
        assert_eq!(
            relate(&h(&[1, 2]), &h(&[1, 2, 3, 4])),
            Relation::Ahead { extra: 2 }
        );
    }

    #[test]
    fn generations_made_on_both_sides_after_a_split_are_diverged() {
        assert_eq!(
            relate(&h(&[1, 2, 7]), &h(&[1, 2, 9])),
            Relation::Diverged { common: Some(2) }
        );
        assert_eq!(
            relate(&h(&[5]), &h(&[6])),
            Relation::Diverged { common: None }
        );
        assert_eq!(
            relate(&h(&[]), &h(&[6])),
            Relation::Diverged { common: None }
        );
    }

    #[test]
    fn equal_counters_with_different_ids_are_not_mistaken_for_the_same_generation() {
        // Both sides reached generation 3 independently.
        let a = h(&[1, 2, 30]);
        let b = h(&[1, 2, 31]);
        assert_eq!(a[2].generation, b[2].generation);
        assert!(matches!(relate(&a, &b), Relation::Diverged { .. }));
    }
}
