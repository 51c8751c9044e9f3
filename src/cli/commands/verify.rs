//! `verify`: the engine's comparison in batches under the lock, as text or JSON.

use super::*;

pub(super) fn verify(ctx: &Ctx, a: cli::VerifyArgs) -> Result<Exit> {
    use crate::engine::plan::Verdict;
    use crate::engine::verify::{self, VerifyOpts};
    let max_time = a.max_time;
    let path = a.primary.clone();
    let bar = Bar::new(ctx.progress, "verify");
    // Published from the first batch on, and between batches too (the lock is let go then).
    let mut live: Option<crate::live::Publisher> = None;
    let mut open =
        |first: bool, remaining: Option<std::time::Duration>| -> Result<Option<Mirror>> {
            let wait = match (first, remaining) {
                (true, _) => ctx.wait,
                (false, Some(d)) => Wait::For(d),
                (false, None) => Wait::Forever,
            };
            match open_mirror_wait(&path, Mode::Exclusive, wait) {
                Ok(m) => {
                    if live.is_none() {
                        live = m.publish("verify", false);
                        bar.publish_to(live.as_ref(), "verify");
                    }
                    Ok(Some(m))
                }
                Err(e) if !first && e.kind == Kind::Busy => Ok(None),
                Err(e) => Err(e),
            }
        };
    let specs = a.secondaries.clone();
    let slots_for = |m: &Mirror| -> Result<Vec<u32>> {
        if specs.is_empty() {
            return Ok((0..m.geometry().slots)
                .filter(|&s| m.sb().legs[s as usize].state != LegState::Empty)
                .collect());
        }
        let mut v = Vec::new();
        for s in &specs {
            let slot = m.find_slot(s, &same_file(s))?;
            if !v.contains(&slot) {
                v.push(slot);
            }
        }
        Ok(v)
    };
    let opts = VerifyOpts {
        repair: a.repair,
        max_time,
        restart: a.restart,
    };
    let (report, verdict, warnings) = verify::run(&mut open, &slots_for, &opts, &bar)?;
    let exit = match verdict {
        Verdict::Differences => Exit::Differences,
        Verdict::Incomplete => Exit::Degraded,
        Verdict::Clean | Verdict::Repaired => Exit::Success,
    };
    for w in warnings {
        eprintln!("mirrorctl: {w}");
    }
    if a.json {
        print_json(&report)?;
        return Ok(exit);
    }
    let bytes = report.bytes_compared;
    println!(
        "verified regions {}..{} of {}{}: {} compared in {:.1}s ({}/s)",
        report.start_region,
        report.end_region,
        report.region_count,
        if report.complete {
            " (pass complete)"
        } else {
            " (stopped at the time budget; the next --max-time run continues here)"
        },
        format_size(bytes),
        report.seconds,
        format_size(report.bytes_per_second as u64)
    );
    for l in &report.legs {
        if let Some(why) = &l.skipped {
            println!("slot {} ({}): {why}", l.slot, l.path);
            continue;
        }
        if let Some(e) = &l.error {
            println!("slot {} ({}): error: {e}", l.slot, l.path);
        }
        let pending = if l.pending_regions > 0 {
            format!(
                ", {} pending resync not compared",
                plural(l.pending_regions, "region")
            )
        } else {
            String::new()
        };
        if l.mismatched_regions == 0 {
            // A leg that could not be read is not "identical".
            if l.error.is_none() {
                println!("slot {} ({}): identical{pending}", l.slot, l.path);
            }
            continue;
        }
        println!(
            "slot {} ({}): {} ({}){}{pending}",
            l.slot,
            l.path,
            plural(l.mismatched_regions, "mismatched region"),
            format_size(l.mismatched_bytes),
            if l.repaired { ", repaired" } else { "" }
        );
        for r in &l.mismatches {
            println!(
                "  regions {}..{}  bytes {}..{} ({} bytes)",
                r.first_region,
                r.end_region,
                r.offset,
                r.offset + r.length,
                r.length
            );
        }
    }
    println!("result: {}", report.result);
    Ok(exit)
}
