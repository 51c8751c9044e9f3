//! verify's pass: where a run starts (the saved cursor), what a budgeted pass carries over,
//! its verdict, and the verify record saved in the header.

use crate::engine::plan::{self, Verdict};
use crate::engine::verify::{LegVerify, VerifyOpts, VerifyReport};
use crate::engine::{Mirror, Progress};
use crate::error::Result;
use crate::format::VerifyRecord;
use crate::units::now_unix;
use std::time::Instant;

/// One verify pass in the making: where it starts, what it carries over from the earlier
/// runs of a budgeted pass, and what it found so far (shared by the command and `serve`).
pub(crate) struct Pass {
    started: Instant,
    pub(crate) started_at: u64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) start: u64,
    pub(crate) carried: (u64, bool),
    pub(crate) report: VerifyReport,
    pub(crate) legs: Vec<LegVerify>,
}

impl Pass {
    /// A pass over `slots`: from the saved cursor for a budgeted run (`--max-time` without
    /// `--restart`), else from region 0.
    pub(crate) fn begin(
        m: &Mirror,
        slots: &[u32],
        opts: &VerifyOpts,
        progress: &dyn Progress,
    ) -> Pass {
        let started = Instant::now();
        let g = m.geometry();
        let start = match (
            &m.sb().last_verify,
            opts.max_time.is_some() && !opts.restart,
        ) {
            (Some(v), true) if v.cursor < g.region_count => v.cursor,
            _ => 0,
        };
        // A pass split over budgeted runs keeps what its earlier runs found until it
        // completes.
        let carried = match &m.sb().last_verify {
            Some(p) if start > 0 && start == p.cursor => {
                (p.mismatched_regions, p.result == "differences")
            }
            _ => (0, false),
        };
        let legs = slots
            .iter()
            .map(|&s| {
                let l = &m.sb().legs[s as usize];
                LegVerify {
                    slot: s,
                    path: l.location.clone(),
                    state: l.state().as_str().to_string(),
                    ..Default::default()
                }
            })
            .collect();
        let total = g.regions_bytes(start..g.region_count);
        progress.set_total(total.end - total.start);
        Pass {
            started,
            started_at: now_unix(),
            deadline: opts.max_time.map(|d| started + d),
            start,
            carried,
            report: VerifyReport {
                start_region: start,
                region_count: g.region_count,
                ..Default::default()
            },
            legs,
        }
    }

    /// Whether the time budget is spent (a run always compares one chunk: `at` past the
    /// start).
    pub(crate) fn out_of_time(&self, at: u64) -> bool {
        self.deadline
            .is_some_and(|d| at > self.start && Instant::now() >= d)
    }

    /// The report and verdict of a pass that stopped at `end`.
    pub(crate) fn finish(self, end: u64, last_full: Option<u64>) -> (VerifyReport, Verdict) {
        let Pass {
            started,
            mut report,
            legs,
            ..
        } = self;
        report.last_full_pass_at = last_full.map(crate::units::format_time);
        report.end_region = end;
        report.seconds = started.elapsed().as_secs_f64();
        report.bytes_per_second = if report.seconds > 0.0 {
            report.bytes_compared as f64 / report.seconds
        } else {
            0.0
        };
        let unrepaired: u64 = legs
            .iter()
            .filter(|l| !l.repaired)
            .map(|l| l.mismatched_regions)
            .sum();
        let any_mismatch = legs.iter().any(|l| l.mismatched_regions > 0);
        let broken = legs.iter().any(|l| l.error.is_some());
        // No leg compared (none attached, or all fractured or unreadable): no pass happened,
        // as the verify record saves it (`save_record`): not complete, not clean.
        let nothing_compared = legs.iter().all(|l| !l.compared);
        report.complete = report.complete && !nothing_compared;
        let verdict = plan::verdict(unrepaired, broken, nothing_compared, any_mismatch);
        report.result = verdict.as_str().to_string();
        report.legs = legs;
        (report, verdict)
    }
}

/// Saves the verify record (cursor, result) in the header; `finished`: the run ends here,
/// having started at that region, and its verify-finished event goes in the same commit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save_record(
    m: &mut Mirror,
    legs: &[LegVerify],
    started_at: u64,
    pos: u64,
    complete: bool,
    report: &VerifyReport,
    carried: (u64, bool),
    finished: Option<u64>,
) -> Result<()> {
    let now = now_unix();
    let prev_full = m
        .sb()
        .last_verify
        .as_ref()
        .and_then(|v| v.last_full_pass_at);
    let (carried, carried_diff) = carried;
    let mismatched: u64 = carried + legs.iter().map(|l| l.mismatched_regions).sum::<u64>();
    let unrepaired = carried_diff || legs.iter().any(|l| l.mismatched_regions > 0 && !l.repaired);
    // No leg compared (all fractured, unreadable, or none attached): no pass happened.
    let nothing = legs.iter().all(|l| !l.compared);
    m.image.sb.last_verify = Some(VerifyRecord {
        started_at,
        finished_at: now,
        cursor: if complete { 0 } else { pos },
        result: if unrepaired {
            "differences"
        } else if mismatched > 0 {
            "repaired"
        } else if nothing {
            "incomplete"
        } else if complete {
            "clean"
        } else {
            "partial"
        }
        .to_string(),
        mismatched_regions: mismatched,
        compared_bytes: report.bytes_compared,
        last_full_pass_at: if complete && !nothing {
            Some(now)
        } else {
            prev_full
        },
    });
    if let Some(start) = finished {
        let r = m.sb().last_verify.as_ref().unwrap();
        let broken = legs.iter().filter(|l| l.error.is_some()).count();
        let what = format!(
            "{}: {} mismatched regions, regions {start}..{pos} of {}{}",
            r.result,
            r.mismatched_regions,
            m.geometry().region_count,
            match broken {
                0 => String::new(),
                n => format!(", {n} leg(s) unreadable"),
            }
        );
        // The slot when the run covered one leg of several (`verify PRIMARY LEG`); none when
        // it covered every attached leg.
        let attached = m
            .sb()
            .legs
            .iter()
            .filter(|l| l.state() != crate::format::LegState::Empty)
            .count();
        let slot = match legs {
            [one] if attached > 1 => Some(one.slot),
            _ => None,
        };
        m.event(crate::engine::EventKind::VerifyFinished, slot, &what);
    }
    m.commit()
}
