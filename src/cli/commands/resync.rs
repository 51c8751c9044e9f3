//! `resync`: the engine's copy of the logs (or a dry run), as text or JSON.

use super::*;

#[derive(Serialize)]
struct ResyncLegOut {
    slot: u32,
    path: String,
    regions: u64,
    bytes: u64,
    written_bytes: u64,
    /// Regions (and bytes) still out of sync on the leg afterwards, as status shows them.
    remaining_regions: u64,
    remaining_bytes: u64,
    state: String,
    error: Option<String>,
}

#[derive(Serialize)]
struct ResyncOut {
    dry_run: bool,
    compare: bool,
    regions: u64,
    bytes: u64,
    written_bytes: u64,
    seconds: f64,
    legs: Vec<ResyncLegOut>,
}

pub(super) fn resync(ctx: &Ctx, a: cli::ResyncArgs) -> Result<Exit> {
    let rate = a.rate;
    let mut m = if a.dry_run {
        open_mirror(ctx, &a.primary, Mode::Exclusive)?
    } else {
        open_for_change(ctx, &a.primary)?
    };
    print_warnings(&mut m);
    let live = m.publish("resync", !a.dry_run);
    let mut slots = Vec::new();
    for s in &a.secondaries {
        let slot = m.find_slot(s, &same_file(s))?;
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    if a.secondaries.is_empty() {
        slots = m.resync_candidates()?;
        if a.dry_run {
            // Pending write intents (unclean stop) will be added to every leg.
            for s in 0..m.geometry().slots {
                if m.sb().legs[s as usize].state != LegState::Empty
                    && !slots.contains(&s)
                    && m.pending_for(s)?.0 > 0
                {
                    slots.push(s);
                }
            }
            slots.sort();
        }
    }
    let mut out = ResyncOut {
        dry_run: a.dry_run,
        compare: a.compare,
        regions: 0,
        bytes: 0,
        written_bytes: 0,
        seconds: 0.0,
        legs: vec![],
    };
    let mut exit = Exit::Success;
    if a.dry_run {
        for &s in &slots {
            let (regions, bytes) = m.pending_for(s)?;
            let l = &m.sb().legs[s as usize];
            out.regions += regions;
            out.bytes += bytes;
            // At most: --compare finds out while it runs.
            out.written_bytes += bytes;
            out.legs.push(ResyncLegOut {
                slot: s,
                path: l.location.clone(),
                regions,
                bytes,
                written_bytes: bytes,
                remaining_regions: regions,
                remaining_bytes: bytes,
                state: l.state.as_str().to_string(),
                error: None,
            });
        }
    } else if !slots.is_empty() {
        let bar = Bar::new(ctx.progress, "resync").published(live.as_ref(), "resync");
        let opts = engine::ResyncOptions {
            rate,
            compare: a.compare,
        };
        let r = m.resync_with(&slots, &opts, &bar)?;
        out.seconds = r.seconds;
        for l in r.legs {
            let state = m.sb().legs[l.slot as usize].state;
            if l.error.is_some() || state != LegState::InSync {
                exit = Exit::Degraded;
            }
            if let Some(e) = &l.error {
                eprintln!(
                    "mirrorctl: resync of slot {} ({}) failed: {e}",
                    l.slot, l.location
                );
            }
            out.regions += l.regions;
            out.bytes += l.bytes;
            out.written_bytes += l.written_bytes;
            let (remaining_regions, remaining_bytes) = m.pending_for(l.slot)?;
            out.legs.push(ResyncLegOut {
                slot: l.slot,
                path: l.location,
                regions: l.regions,
                bytes: l.bytes,
                written_bytes: l.written_bytes,
                remaining_regions,
                remaining_bytes,
                state: state.as_str().to_string(),
                error: l.error,
            });
        }
    }
    print_warnings(&mut m);
    if a.json {
        print_json(&out)?;
    } else if slots.is_empty() {
        println!("nothing to resync: every secondary is in sync");
    } else {
        for l in &out.legs {
            if a.dry_run {
                println!(
                    "slot {} ({}): would copy {} ({}, {} bytes)",
                    l.slot,
                    l.path,
                    plural(l.regions, "region"),
                    format_size(l.bytes),
                    l.bytes
                );
            } else if a.compare {
                println!(
                    "slot {} ({}): compared {} ({}), wrote {} ({} bytes); state {}",
                    l.slot,
                    l.path,
                    plural(l.regions, "region"),
                    format_size(l.bytes),
                    format_size(l.written_bytes),
                    l.written_bytes,
                    l.state
                );
            } else {
                println!(
                    "slot {} ({}): copied {} ({}, {} bytes); state {}",
                    l.slot,
                    l.path,
                    plural(l.regions, "region"),
                    format_size(l.bytes),
                    l.bytes,
                    l.state
                );
            }
        }
    }
    Ok(exit)
}
