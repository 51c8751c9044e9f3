//! `verify`: the engine's comparison in batches under the lock, as text or JSON.

use super::*;

pub(super) fn verify(ctx: &Ctx, a: cli::VerifyArgs) -> Result<Exit> {
    use crate::engine::verify;
    let path = a.primary.clone();
    let bar = Bar::new(ctx.progress, "verify");
    // Published from the first batch on, and between batches too (the lock is let go then).
    let mut live: Option<crate::live::Publisher> = None;
    let mut open =
        |first: bool, remaining: Option<std::time::Duration>| -> Result<Option<Mirror>> {
            if !first {
                crate::lock::yield_to_waiters();
            }
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
    on_interrupt(
        "verify",
        &format!(
            "the cursor of its last finished batch is saved: `mirrorctl verify {} --max-time DURATION` continues there (without --max-time it starts over)",
            display(&a.primary)
        ),
    );
    let slots_for = |m: &Mirror| slots(m, &a, &|s| same_file(s));
    let (report, verdict, warnings) = match verify::run(&mut open, &slots_for, &opts(&a), &bar) {
        Ok(r) => r,
        Err(e) => return via_server(ctx, &a.primary, e, "verify"),
    };
    for w in warnings {
        crate::systemd::eprint(
            &format!("mirrorctl: {w}"),
            crate::systemd::Priority::Warning,
        );
    }
    let mut text = Vec::new();
    render(&a, &report, &mut text)?;
    io::stdout().write_all(&text).map_err(Error::output)?;
    Ok(exit_of(verdict))
}

/// The legs `a` names (by slot or location; `same` tells whether a location is a leg's
/// file), or every non-empty one.
pub(super) fn slots<F: Fn(&str) -> bool>(
    m: &Mirror,
    a: &cli::VerifyArgs,
    same: &dyn Fn(&str) -> F,
) -> Result<Vec<u32>> {
    if a.secondaries.is_empty() {
        return Ok((0..m.geometry().slots)
            .filter(|&s| m.sb().legs[s as usize].state() != LegState::Empty)
            .collect());
    }
    let mut v = Vec::new();
    for s in &a.secondaries {
        let slot = m.find_slot(s, Path::new(s).exists(), &same(s))?;
        if !v.contains(&slot) {
            v.push(slot);
        }
    }
    Ok(v)
}

pub(super) fn opts(a: &cli::VerifyArgs) -> crate::engine::verify::VerifyOpts {
    crate::engine::verify::VerifyOpts {
        repair: a.repair,
        max_time: a.max_time,
        restart: a.restart,
    }
}

pub(super) fn exit_of(verdict: crate::engine::plan::Verdict) -> Exit {
    use crate::engine::plan::Verdict;
    match verdict {
        Verdict::Differences => Exit::Differences,
        Verdict::Incomplete => Exit::Degraded,
        Verdict::Clean | Verdict::Repaired => Exit::Success,
    }
}

/// The text (or JSON document) `verify` prints.
pub(super) fn render(
    a: &cli::VerifyArgs,
    report: &crate::engine::verify::VerifyReport,
    w: &mut dyn Write,
) -> Result<()> {
    if a.json {
        serde_json::to_writer_pretty(&mut *w, report).map_err(|x| Error::output(x.into()))?;
        return writeln!(w).map_err(Error::output);
    }
    render_text(report, w).map_err(Error::output)
}

fn render_text(report: &crate::engine::verify::VerifyReport, w: &mut dyn Write) -> io::Result<()> {
    let compared = report.legs.iter().filter(|l| l.compared).count() as u64;
    let how = if compared == 0 {
        // Nothing was compared: no pass is complete, whatever the cursor says.
        " (nothing compared: no leg could be compared)"
    } else if report.complete {
        " (pass complete)"
    } else {
        " (stopped at the time budget; the next --max-time run continues here)"
    };
    let holes = match (report.hole_bytes, report.unwritten_bytes) {
        (0, 0) => String::new(),
        (h, 0) => format!(
            " ({} of it holes on both sides, equal without reading)",
            format_size(h)
        ),
        (0, u) => format!(
            " ({} of it never written, not read)",
            format_size(u)
        ),
        (h, u) => format!(
            " ({} of it holes on both sides, equal without reading, and {} never written, not read)",
            format_size(h),
            format_size(u)
        ),
    };
    writeln!(
        w,
        "verified regions {}..{} of {}{how}: {} of data, {} compared on {}{holes}, in {:.1}s ({}/s)",
        report.start_region,
        report.end_region,
        report.region_count,
        format_size(report.data_bytes),
        format_size(report.bytes_compared),
        plural(compared, "leg"),
        report.seconds,
        format_size(report.bytes_per_second as u64)
    )?;
    for l in &report.legs {
        if let Some(why) = &l.skipped {
            writeln!(
                w,
                "slot {} ({}): {why}",
                l.slot,
                crate::device::nbd::display(&l.path)
            )?;
            continue;
        }
        if let Some(e) = &l.error {
            writeln!(
                w,
                "slot {} ({}): error: {e}",
                l.slot,
                crate::device::nbd::display(&l.path)
            )?;
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
                writeln!(
                    w,
                    "slot {} ({}): identical{pending}",
                    l.slot,
                    crate::device::nbd::display(&l.path)
                )?;
            }
            continue;
        }
        writeln!(
            w,
            "slot {} ({}): {} ({}){}{pending}",
            l.slot,
            crate::device::nbd::display(&l.path),
            plural(l.mismatched_regions, "mismatched region"),
            format_size(l.mismatched_bytes),
            if l.repaired { ", repaired" } else { "" }
        )?;
        for r in &l.mismatches {
            writeln!(
                w,
                "  regions {}..{}  bytes {}..{} ({} bytes)",
                r.first_region,
                r.end_region,
                r.offset,
                r.offset + r.length,
                r.length
            )?;
        }
    }
    writeln!(w, "result: {}", report.result)
}
