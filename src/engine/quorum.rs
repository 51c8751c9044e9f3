//! The quorum of in-sync copies (`--min-in-sync N`, MirrorView's "minimum required
//! images", DRBD's quorum): whether a write may be acknowledged with the secondaries that
//! receive it in sync now, and the reason said when it may not. Pure code.
//!
//! - Q1 A write (or flush) is acknowledged only while at least N secondaries are in sync
//!   (state in-sync) and receive writes; a syncing leg does not count (it lacks earlier
//!   acknowledged writes until its resync ends). A write refused after it reached the
//!   primary and some legs leaves every leg that did not get it with the write in its
//!   fracture log (H5, W4), so no leg is ever silently different; the primary may hold it,
//!   as after any write that got an I/O error.
//! - Q2 A fracture after which too few secondaries are in sync for the minimum records its
//!   generation as refusing (its history event ends in `; writes refused`), and before the
//!   next write is acknowledged on that image (by serve, by `write`) a new generation
//!   (`writes acknowledged again`) is committed (whether one is refusing is judged on what
//!   was last committed as well as on memory, so a failed commit is tried again, never
//!   skipped). So a former primary whose every generation since
//!   the split is refusing acknowledged nothing its promoted peer lacks, and attaching it
//!   back takes it back (its own writes and intents recopied, P3) instead of calling it a
//!   split brain (P4), unless the promoted side was promoted with `--force` (recorded as
//!   `(forced)`; it may lack earlier writes) or the copy read is not the newest (a damaged
//!   one). Without the second half, a primary restarted with a lower minimum
//!   acknowledged writes behind a refusing mark, and the rejoin discarded them.

use crate::format::LegState;

/// One leg as the quorum sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegView {
    pub slot: u32,
    pub state: LegState,
    /// It receives the mirror's writes now (opened, not fractured).
    pub receiving: bool,
}

/// Secondaries that count toward the quorum (Q1).
pub fn in_sync(legs: &[LegView]) -> u32 {
    legs.iter()
        .filter(|l| l.receiving && l.state == LegState::InSync)
        .count() as u32
}

/// Why a write may not be acknowledged now: "1 of min 2 in-sync secondaries (slot 1
/// fractured-by-error)"; `None` when at least `min` count (always with `min` 0).
pub fn shortfall(legs: &[LegView], min: u32) -> Option<String> {
    let n = in_sync(legs);
    if n >= min {
        return None;
    }
    let missing: Vec<String> = legs
        .iter()
        .filter(|l| l.state != LegState::Empty && !(l.receiving && l.state == LegState::InSync))
        .map(|l| {
            if l.state == LegState::InSync {
                format!("slot {} not reached", l.slot)
            } else {
                format!("slot {} {}", l.slot, l.state.as_str())
            }
        })
        .collect();
    Some(format!(
        "{n} of min {min} in-sync secondaries{}",
        if missing.is_empty() {
            " (no more attached)".to_string()
        } else {
            format!(" ({})", missing.join(", "))
        }
    ))
}

/// How the history event of a fracture that left writes refused ends (Q2).
pub const REFUSING: &str = "; writes refused";
/// The history event that ends a refusing generation before a write is acknowledged (Q2).
pub const ACKNOWLEDGING: &str = "writes acknowledged again";

/// Whether a generation's history event says nothing was acknowledged in it (Q2).
pub fn acknowledged_nothing(event: &str) -> bool {
    event.ends_with(REFUSING)
}

/// Whether the last generation of `sb` left writes refused (Q2).
pub fn last_refusing(sb: &crate::format::Superblock) -> bool {
    sb.history
        .last()
        .is_some_and(|e| acknowledged_nothing(&e.event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(slot: u32, state: LegState, receiving: bool) -> LegView {
        LegView {
            slot,
            state,
            receiving,
        }
    }

    #[test]
    fn min_zero_never_refuses() {
        assert_eq!(shortfall(&[], 0), None);
        assert_eq!(
            shortfall(&[leg(0, LegState::FracturedByError, false)], 0),
            None
        );
    }

    #[test]
    fn only_in_sync_legs_receiving_writes_count() {
        let legs = [
            leg(0, LegState::InSync, true),
            leg(1, LegState::Syncing, true),
            leg(2, LegState::FracturedByAdmin, false),
            leg(3, LegState::Empty, false),
        ];
        assert_eq!(in_sync(&legs), 1);
        assert_eq!(shortfall(&legs, 1), None);
        assert_eq!(
            shortfall(&legs, 2).as_deref(),
            Some("1 of min 2 in-sync secondaries (slot 1 syncing, slot 2 fractured-by-admin)")
        );
    }

    #[test]
    fn a_min_above_the_attached_legs_says_so() {
        let legs = [
            leg(0, LegState::InSync, true),
            leg(1, LegState::Empty, false),
        ];
        assert_eq!(
            shortfall(&legs, 2).as_deref(),
            Some("1 of min 2 in-sync secondaries (no more attached)")
        );
    }

    #[test]
    fn an_in_sync_leg_not_receiving_is_named() {
        let legs = [leg(0, LegState::InSync, false)];
        assert_eq!(
            shortfall(&legs, 1).as_deref(),
            Some("0 of min 1 in-sync secondaries (slot 0 not reached)")
        );
    }
}
