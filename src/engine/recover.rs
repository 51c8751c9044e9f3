//! Crash recovery: after an unclean stop, the regions in the write-intent log may differ
//! between legs; they are moved into every leg's fracture log.
//!
//! Rules (tagged at the lines that keep them):
//! - R1 Recovery first merges the write-intent log into the fracture log of every non-empty
//!   slot and makes that durable,
//! - R2 then records the legs as syncing in the superblock,
//! - R3 and only then clears the write-intent log. A crash anywhere repeats the recovery;
//!   in any other order a crash could clear the intents before a log holds them.

use crate::engine::EventKind;
use crate::engine::Mirror;
use crate::error::Result;
use crate::format::layout::BitmapId;
use crate::format::layout::SlotIdx;
use crate::format::LegState;
use crate::format::RecoveryRecord;
use crate::units::now_unix;

impl Mirror {
    /// What every command that changes the mirror does first, once it holds the exclusive
    /// lock, in this one place: refuse if a promotion replaced this primary (P6, before
    /// anything is written), then recover after an unclean stop (R1..R3).
    pub fn prepare_for_change(&mut self) -> Result<()> {
        self.refuse_if_replaced()?;
        self.recover()?;
        Ok(())
    }

    /// Crash recovery: after an unclean stop the write-intent regions may differ between
    /// legs; move them into every leg's fracture log (R1..R3). Returns how many regions.
    pub fn recover(&mut self) -> Result<u64> {
        let n = self.pending_intents()?;
        if n == 0 {
            return Ok(0);
        }
        // Intents a serve kept after primary write errors and stopped cleanly with are no
        // unclean stop: said as what they are.
        let pinned = self
            .sb()
            .journal
            .as_ref()
            .and_then(|j| j.pinned_at_last_stop());
        let slots: Vec<u32> = (0..self.geometry().slots)
            .filter(|&s| self.sb().legs[s as usize].state() != LegState::Empty)
            .collect();
        // R1: merge into every non-empty slot's fracture log, durably.
        for &s in &slots {
            self.bitmaps
                .or_into(BitmapId::WriteIntent, BitmapId::Fracture(SlotIdx(s)))
                .map_err(|e| self.meta_err("merging the write-intent log", &e))?;
        }
        self.flush_bitmaps()?;
        // R2: the legs now have regions to copy.
        let now = now_unix();
        for &s in &slots {
            let leg = &mut self.image.sb.legs[s as usize];
            if leg.state() == LegState::InSync {
                leg.set_state(LegState::Syncing, now);
            }
        }
        self.image.sb.last_recovery = Some(RecoveryRecord {
            at: now,
            regions: n,
        });
        self.image
            .sb
            .bump_generation(&format!("recovered {n} write-intent regions"), now);
        self.event(
            EventKind::Recovered,
            None,
            &format!(
                "{}: {n} write-intent regions moved to the legs' logs",
                if pinned.is_some() {
                    super::status::RECOVERED_AFTER_PRIMARY_ERRORS
                } else {
                    "unclean stop"
                }
            ),
        );
        self.commit()?;
        self.refresh_headers(&[]);
        // R3: only now the write-intent log may go.
        self.bitmaps
            .clear_all(BitmapId::WriteIntent)
            .map_err(|e| self.meta_err("clearing the write-intent log", &e))?;
        self.flush_bitmaps()?;
        self.warnings.push(match pinned {
            Some(e) => format!(
                "note: {} was served until a clean stop that kept {} marked after primary write errors; {} marked out of sync on every secondary (run `mirrorctl resync`)",
                self.name,
                crate::units::plural(e, "extent"),
                crate::units::plural(n, "write-intent region")
            ),
            None => format!(
                "note: {} was not closed cleanly; {} marked out of sync on every secondary (run `mirrorctl resync`)",
                self.name,
                crate::units::plural(n, "write-intent region")
            ),
        });
        Ok(n)
    }
}
