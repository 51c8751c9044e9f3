//! The status report rendered for people (`status`, `status --all`): the engine builds the
//! report ([`crate::engine::status::Status`]); this file only words it.

use crate::engine::status::{LegStatus, Status};
use crate::units::{format_size, plural};
use std::io::Write;

fn out_of_sync_text(l: &LegStatus) -> String {
    if l.out_of_sync_regions == 0 {
        "none".into()
    } else {
        format!(
            "{} ({})",
            format_size(l.out_of_sync_bytes),
            plural(l.out_of_sync_regions, "region")
        )
    }
}

/// The leg's own generation and what it is relative to the primary's.
fn generation_text(l: &LegStatus, mirror: u64) -> String {
    match (l.leg_generation, l.generation_relation.as_str()) {
        (None, _) => "unknown (its header cannot be read)".into(),
        (Some(g), "in-sync") => format!("{g} (current)"),
        // Its header has seen the primary's latest change, its data not all of it yet.
        (Some(g), "behind") if g >= mirror => format!("{g} (current; data still to copy)"),
        (Some(g), "behind") => format!("{g} (the primary is at {mirror})"),
        (Some(g), "ahead") => format!("{g} (ahead of the primary's {mirror})"),
        (Some(g), "diverged") => format!("{g} (diverged from the primary's {mirror})"),
        (Some(g), other) => format!("{g} ({other})"),
    }
}

/// What a leg's line is followed by: when and why it was fractured (the error once), or why
/// it is syncing.
fn leg_detail(l: &LegStatus) -> Option<String> {
    // A leg fractured by error carries the error as its reason and, with what failed, as
    // its last error: say the fuller one. The default admin reason says nothing the state
    // column does not.
    let reason = l
        .reason
        .as_ref()
        .filter(|r| r.as_str() != "fractured by admin");
    let why = match (reason, &l.last_error) {
        (Some(r), Some(e)) if r.ends_with(e.rsplit(": ").next().unwrap_or(e)) || r == e => {
            Some(e.clone())
        }
        (Some(r), Some(e)) => Some(format!("{r}; last error: {e}")),
        (Some(r), None) => Some(r.clone()),
        (None, Some(e)) => Some(format!("last error: {e}")),
        (None, None) => None,
    };
    let why = why.map(|w| crate::error::plain(&w));
    let syncing = l.state == "syncing";
    match (&l.fractured_at, why) {
        (Some(at), Some(w)) if syncing => {
            Some(format!("fractured {at} ({w}); its resync has not finished"))
        }
        (Some(at), None) if syncing => Some(format!("fractured {at}; its resync has not finished")),
        (Some(at), Some(w)) => Some(format!("fractured {at}: {w}")),
        (Some(at), None) => Some(format!("fractured {at}")),
        (None, w) => w,
    }
}

/// The running command as the write-intent line names it: "serve", or a pid.
fn running_name(s: &Status) -> String {
    match (&s.running, s.lock_holder_pid) {
        (Some(r), _) => r.command.clone(),
        (None, Some(pid)) => format!("command (pid {pid})"),
        (None, None) => String::new(),
    }
}

/// Renders the status for people.
pub fn render_text(s: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "mirror        {} (format {}, generation {})",
        s.mirror_uuid, s.format_version, s.generation
    )?;
    writeln!(
        out,
        "image         {} ({}, {})",
        s.path, s.role, s.image_uuid
    )?;
    let primary = s.role == "primary" || s.role == "replaced";
    if !primary {
        writeln!(
            out,
            "primary       {} (this image's copy of the mirror state; run status on the primary for live counts)",
            s.primary_path.as_deref().unwrap_or("unknown")
        )?;
        writeln!(
            out,
            "in sync at    generation {}",
            s.in_sync_generation.unwrap_or(0)
        )?;
    }
    writeln!(
        out,
        "data area     {} at offset {} ({} bytes), {} of {}",
        format_size(s.data_size),
        s.data_offset,
        s.data_size,
        plural(s.region_count, "region"),
        format_size(s.region_size)
    )?;
    writeln!(
        out,
        "image size    {} ({} bytes): what every image of the mirror needs, a secondary too",
        format_size(s.image_size),
        s.image_size
    )?;
    let live =
        s.running.as_ref().is_some_and(|r| r.write_intents_live) || s.lock_holder_pid.is_some();
    if let Some(r) = &s.running {
        writeln!(out, "running       {}", crate::live::describe(r))?;
    } else if let Some(pid) = s.lock_holder_pid {
        writeln!(
            out,
            "running       a command (pid {pid}) holds the mirror; its progress is not readable by this user (its record is in that user's runtime directory)"
        )?;
    }
    if primary {
        if s.clean {
            writeln!(out, "write intent  none pending (clean)")?;
        } else if live && s.pinned_extents > 0 {
            writeln!(
                out,
                "write intent  {} ({}) marked by the running {}: its writes in flight, and {} pinned after primary write errors (the primary may lack there what the legs hold; they stay marked when it stops, and the next command recovers them)",
                plural(s.write_intent_regions, "region"),
                format_size(s.write_intent_bytes),
                running_name(s),
                plural(s.pinned_extents, "extent")
            )?;
        } else if live {
            writeln!(
                out,
                "write intent  {} ({}) marked by the running {} (its writes in flight; cleared when it stops cleanly)",
                plural(s.write_intent_regions, "region"),
                format_size(s.write_intent_bytes),
                running_name(s)
            )?;
        } else if s.pinned_extents > 0 {
            writeln!(
                out,
                "write intent  {} ({}) pending: kept marked after primary write errors by the last serve, which stopped cleanly ({}); the next command that changes the mirror moves them to every secondary's fracture log",
                plural(s.write_intent_regions, "region"),
                format_size(s.write_intent_bytes),
                plural(s.pinned_extents, "extent")
            )?;
        } else {
            writeln!(
                out,
                "write intent  {} ({}) pending: the last writer stopped uncleanly with these hot (a serve's hot extents, or a stream's window); the next command moves them to every secondary's fracture log",
                plural(s.write_intent_regions, "region"),
                format_size(s.write_intent_bytes)
            )?;
        }
    }
    writeln!(
        out,
        "secondaries   {} of {} slots in use",
        s.secondaries, s.max_secondaries
    )?;
    if !s.legs.is_empty() {
        let rows: Vec<[String; 5]> = s
            .legs
            .iter()
            .map(|l| {
                [
                    l.slot.to_string(),
                    l.state.clone(),
                    out_of_sync_text(l),
                    if primary {
                        generation_text(l, s.generation)
                    } else {
                        "-".into()
                    },
                    crate::device::nbd::display(&l.path),
                ]
            })
            .collect();
        let head = ["SLOT", "STATE", "OUT OF SYNC", "GENERATION", "PATH"];
        let width: Vec<usize> = (0..4)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([head[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |out: &mut dyn Write, c: [&str; 5]| {
            writeln!(
                out,
                "  {:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3]
            )
        };
        line(out, head)?;
        for (l, r) in s.legs.iter().zip(&rows) {
            line(out, [&r[0], &r[1], &r[2], &r[3], &r[4]])?;
            // Why, on a line of its own under the leg (the error text once).
            if let Some(why) = leg_detail(l) {
                writeln!(out, "  {:w$}  {why}", "", w = width[0])?;
            }
        }
    }
    if let Some(at) = &s.last_resync_at {
        let bytes = s.last_resync_bytes.unwrap_or(0);
        let what = match (s.last_resync_written_bytes, s.last_resync_compare) {
            (Some(w), Some(c)) => crate::engine::resync_amounts(bytes, w, c),
            _ => format!("{} copied or compared", format_size(bytes)),
        };
        writeln!(out, "last resync   {at}, {what}")?;
    }
    if let Some(at) = &s.last_recovery_at {
        writeln!(
            out,
            "last recovery {at}, {} after {}",
            plural(s.last_recovery_regions.unwrap_or(0), "region"),
            if s.last_recovery_after_primary_errors {
                "primary write errors (a serve kept them marked)"
            } else {
                "an unclean stop"
            }
        )?;
    }
    if let Some(at) = &s.last_verify_at {
        writeln!(
            out,
            "last verify   {at}, {} ({}), cursor at region {}, last full pass {}",
            s.last_verify_result.as_deref().unwrap_or("?"),
            plural(
                s.last_verify_mismatched_regions.unwrap_or(0),
                "mismatched region"
            ),
            s.verify_cursor,
            s.last_full_verify_at.as_deref().unwrap_or("never")
        )?;
    }
    if let Some(w) = &s.superblock_warning {
        writeln!(out, "warning       {w}")?;
    }
    let health = if let Some(new) = &s.replaced_by {
        format!(
            "REPLACED: {new} was promoted to primary in this image's place; this image refuses writes. Bring it back with `mirrorctl attach {new} {}`",
            s.path
        )
    } else if !primary {
        "n/a (not the primary)".to_string()
    } else if s.healthy {
        if s.secondaries == 0 {
            "in sync (no secondaries attached: nothing is mirrored)".to_string()
        } else {
            "in sync".to_string()
        }
    } else if s.secondaries == 0 && s.health_reasons.is_empty() {
        "DEGRADED".to_string()
    } else {
        format!("DEGRADED: {}", s.health_reasons.join("; "))
    };
    writeln!(out, "health        {health}")?;
    Ok(())
}
