//! `resync`: the engine's copy of the logs (or a dry run), as text or JSON.

use super::*;

#[derive(Serialize)]
pub(super) struct ResyncLegOut {
    slot: u32,
    path: String,
    regions: u64,
    /// Bytes gone over: copied, or with --compare compared.
    bytes: u64,
    /// With --compare, the bytes compared (read on both sides); 0 without.
    compared_bytes: u64,
    written_bytes: u64,
    /// Regions (and bytes) still out of sync on the leg afterwards, as status shows them.
    remaining_regions: u64,
    remaining_bytes: u64,
    state: String,
    error: Option<String>,
}

#[derive(Serialize)]
pub(super) struct ResyncOut {
    dry_run: bool,
    compare: bool,
    regions: u64,
    bytes: u64,
    compared_bytes: u64,
    written_bytes: u64,
    seconds: f64,
    legs: Vec<ResyncLegOut>,
}

pub(super) fn resync(ctx: &Ctx, a: cli::ResyncArgs) -> Result<Exit> {
    let rate = a.rate;
    let opened = if a.dry_run {
        open_mirror(ctx, &a.primary, Mode::Exclusive)
    } else {
        open_for_change(ctx, &a.primary)
    };
    let mut m = match opened {
        Ok(m) => m,
        Err(e) => return via_server(ctx, &a.primary, e, "resync"),
    };
    print_warnings(&mut m);
    let live = m.publish("resync", !a.dry_run);
    if !a.dry_run {
        on_interrupt(
            "resync",
            &format!(
                "what it copied up to its last checkpoint stays copied; `mirrorctl resync {}` continues from the logs",
                display(&a.primary)
            ),
        );
    }
    let slots = choose_slots(&mut m, &a, &|s| same_file(s))?;
    let mut errs = Vec::new();
    let (out, exit) = if a.dry_run {
        (dry_run(&mut m, &a, &slots)?, Exit::Success)
    } else if !slots.is_empty() {
        let bar = Bar::new(ctx.progress, "resync").published(live.as_ref(), "resync");
        let opts = engine::ResyncOptions {
            rate,
            compare: a.compare,
        };
        let r = m.resync_with(&slots, &opts, &bar)?;
        finished(&mut m, &a, r, &mut errs)?
    } else {
        (empty(&a), Exit::Success)
    };
    for e in errs {
        crate::systemd::eprint_at(crate::systemd::Priority::Error, &format!("mirrorctl: {e}"));
    }
    print_warnings(&mut m);
    let mut text = Vec::new();
    render(&a, slots.is_empty(), &out, &mut text)?;
    io::stdout().write_all(&text).map_err(Error::output)?;
    Ok(exit)
}

/// The legs a resync works on: those named, or every leg with something to copy (in a dry
/// run also those only pending write intents would add to).
pub(super) fn choose_slots<F: Fn(&str) -> bool>(
    m: &mut Mirror,
    a: &cli::ResyncArgs,
    same: &dyn Fn(&str) -> F,
) -> Result<Vec<u32>> {
    let mut slots = Vec::new();
    for s in &a.secondaries {
        let slot = m.find_slot(s, Path::new(s).exists(), &same(s))?;
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    if a.secondaries.is_empty() {
        slots = m.resync_candidates()?;
        if a.dry_run {
            // Pending write intents (unclean stop) will be added to every leg.
            for s in 0..m.geometry().slots {
                if m.sb().legs[s as usize].state() != LegState::Empty
                    && !slots.contains(&s)
                    && m.pending_for(s)?.0 > 0
                {
                    slots.push(s);
                }
            }
            slots.sort();
        }
    }
    Ok(slots)
}

pub(super) fn empty(a: &cli::ResyncArgs) -> ResyncOut {
    ResyncOut {
        dry_run: a.dry_run,
        compare: a.compare,
        regions: 0,
        bytes: 0,
        compared_bytes: 0,
        written_bytes: 0,
        seconds: 0.0,
        legs: vec![],
    }
}

/// What a dry run would copy.
pub(super) fn dry_run(m: &mut Mirror, a: &cli::ResyncArgs, slots: &[u32]) -> Result<ResyncOut> {
    let mut out = empty(a);
    for &s in slots {
        let (regions, bytes) = m.pending_for(s)?;
        let l = &m.sb().legs[s as usize];
        out.regions += regions;
        out.bytes += bytes;
        // At most: --compare finds out while it runs.
        out.written_bytes += bytes;
        if a.compare {
            out.compared_bytes += bytes;
        }
        out.legs.push(ResyncLegOut {
            slot: s,
            path: l.location.clone(),
            regions,
            bytes,
            compared_bytes: if a.compare { bytes } else { 0 },
            written_bytes: bytes,
            remaining_regions: regions,
            remaining_bytes: bytes,
            state: l.state().as_str().to_string(),
            error: None,
        });
    }
    Ok(out)
}

/// The output of a resync that ran, its exit status, and the error lines for stderr.
pub(super) fn finished(
    m: &mut Mirror,
    a: &cli::ResyncArgs,
    r: engine::ResyncReport,
    errs: &mut Vec<String>,
) -> Result<(ResyncOut, Exit)> {
    let mut out = empty(a);
    let mut exit = Exit::Success;
    out.seconds = r.seconds;
    for l in r.legs {
        // A leg detached during a live resync: the slot's state now is another leg's.
        let state = match l.detached {
            true => "detached",
            false => m.sb().legs[l.slot as usize].state().as_str(),
        };
        if l.error.is_some() || state != LegState::InSync.as_str() {
            exit = Exit::Degraded;
        }
        if let Some(e) = &l.error {
            errs.push(format!(
                "resync of slot {} ({}) failed: {e}",
                l.slot,
                crate::device::nbd::display(&l.location)
            ));
        }
        out.regions += l.regions;
        out.bytes += l.bytes;
        out.written_bytes += l.written_bytes;
        let compared = if a.compare { l.bytes } else { 0 };
        out.compared_bytes += compared;
        let (remaining_regions, remaining_bytes) = match l.detached {
            true => (0, 0),
            false => m.pending_for(l.slot)?,
        };
        out.legs.push(ResyncLegOut {
            slot: l.slot,
            path: l.location,
            regions: l.regions,
            bytes: l.bytes,
            compared_bytes: compared,
            written_bytes: l.written_bytes,
            remaining_regions,
            remaining_bytes,
            state: state.to_string(),
            error: l.error,
        });
    }
    Ok((out, exit))
}

/// The text or JSON a resync prints on stdout.
pub(super) fn render(
    a: &cli::ResyncArgs,
    nothing: bool,
    out: &ResyncOut,
    w: &mut dyn Write,
) -> Result<()> {
    let e = Error::output;
    if a.json {
        serde_json::to_writer_pretty(&mut *w, out).map_err(|x| e(x.into()))?;
        writeln!(w).map_err(e)?;
    } else if nothing {
        writeln!(w, "nothing to resync: every secondary is in sync").map_err(e)?;
    } else {
        for l in &out.legs {
            if a.dry_run {
                writeln!(
                    w,
                    "slot {} ({}): would copy {} ({}, {} bytes)",
                    l.slot,
                    crate::device::nbd::display(&l.path),
                    plural(l.regions, "region"),
                    format_size(l.bytes),
                    l.bytes
                )
            } else if a.compare {
                writeln!(
                    w,
                    "slot {} ({}): compared {} ({}), wrote {} ({} bytes); state {}",
                    l.slot,
                    crate::device::nbd::display(&l.path),
                    plural(l.regions, "region"),
                    format_size(l.bytes),
                    format_size(l.written_bytes),
                    l.written_bytes,
                    l.state
                )
            } else {
                writeln!(
                    w,
                    "slot {} ({}): copied {} ({}, {} bytes); state {}",
                    l.slot,
                    crate::device::nbd::display(&l.path),
                    plural(l.regions, "region"),
                    format_size(l.bytes),
                    l.bytes,
                    l.state
                )
            }
            .map_err(e)?;
        }
    }
    Ok(())
}
