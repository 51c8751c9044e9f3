//! `attach`: the secondary found, created or sized by its location, then the engine's attach and initial sync.

use super::create::{refuse_missing_device, RemoveOnDrop};
use super::*;

#[derive(Serialize)]
struct AttachOut {
    slot: u32,
    path: String,
    reattached: bool,
    regions_to_copy: u64,
    copied_regions: u64,
    copied_bytes: u64,
    written_bytes: u64,
    state: String,
    seconds: f64,
}

/// An NBD export to attach: never created here (the engine checks its size); its canonical
/// URI identifies it.
pub(super) fn nbd_secondary(uri: &str) -> Result<(Arc<dyn Device>, String)> {
    let canonical = NbdUri::parse(uri).map_err(Error::invalid)?.canonical();
    let dev =
        open_nbd(uri, true).map_err(|e| Error::invalid(format!("opening secondary {uri}: {e}")))?;
    Ok((Arc::new(dev), canonical))
}

/// A file or block device to attach: refused if it is the primary or already a leg
/// (compared by device and inode), created sparse at the mirror's size if missing (removed
/// again unless the attach succeeds: the guard), sized if empty.
pub(super) fn file_secondary(
    m: &Mirror,
    primary: &Path,
    spec: &str,
) -> Result<(Arc<dyn Device>, String, Option<RemoveOnDrop>)> {
    let sec = PathBuf::from(spec);
    let total = m.geometry().total_len();
    let mut created = None;
    if sec.exists() {
        let id = identity(&sec).map_err(|e| secondary_open_error("examining", &sec, e))?;
        if identity(primary).ok() == Some(id) {
            return Err(Error::invalid(format!(
                "{spec} is the primary itself; give a different image"
            )));
        }
        for (i, l) in m.sb().legs.iter().enumerate() {
            if l.state.receives_writes() && identity(Path::new(l.open_path())).ok() == Some(id) {
                return Err(Error::invalid(format!(
                    "{spec} is already attached as slot {i} ({}, {})",
                    l.location,
                    l.state.as_str()
                )));
            }
        }
        let meta =
            std::fs::metadata(&sec).map_err(|e| secondary_open_error("examining", &sec, e))?;
        if meta.is_file() && meta.len() == 0 {
            let f = OpenOptions::new()
                .write(true)
                .open(&sec)
                .map_err(|e| secondary_open_error("opening", &sec, e))?;
            f.set_len(total)
                .map_err(|e| secondary_open_error("sizing", &sec, e))?;
        }
    } else {
        refuse_missing_device(&sec, "attaching")?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&sec)
            .map_err(|e| secondary_open_error("creating secondary", &sec, e))?;
        created = Some(RemoveOnDrop(Some(sec.clone())));
        f.set_len(total)
            .map_err(|e| secondary_open_error(&format!("sizing to {total} bytes:"), &sec, e))?;
    }
    let canonical = std::fs::canonicalize(&sec)
        .map(|p| display(&p))
        .unwrap_or_else(|_| spec.to_string());
    let dev = FileDevice::open(&sec, true)
        .map_err(|e| secondary_open_error("opening secondary", &sec, e))?;
    Ok((Arc::new(dev), canonical, created))
}

pub(super) fn attach(ctx: &Ctx, a: cli::AttachArgs) -> Result<Exit> {
    let rate = a.rate;
    let mut m = open_for_change(ctx, &a.primary)?;
    let live = m.publish("attach", true);
    let (dev, canonical, created) = if nbd::is_uri(&a.secondary) {
        let (dev, canonical) = nbd_secondary(&a.secondary)?;
        (dev, canonical, None)
    } else {
        file_secondary(&m, &a.primary, &a.secondary)?
    };
    let initial = if a.assume_clean {
        engine::InitialSync::AssumeClean
    } else if a.compare {
        engine::InitialSync::Compare
    } else {
        engine::InitialSync::Copy
    };
    let outcome = m.attach(
        dev,
        &a.secondary,
        &canonical,
        initial,
        a.force,
        a.discard_secondary_changes,
    )?;
    if let Some(mut c) = created {
        c.0 = None;
    }
    let mut out = AttachOut {
        slot: outcome.slot,
        path: a.secondary.clone(),
        reattached: outcome.reattached,
        regions_to_copy: outcome.regions,
        copied_regions: 0,
        copied_bytes: 0,
        written_bytes: 0,
        state: String::new(),
        seconds: 0.0,
    };
    let mut exit = Exit::Success;
    if !a.no_sync && m.sb().legs[outcome.slot as usize].state != LegState::InSync {
        let bar = Bar::new(ctx.progress, &format!("syncing slot {}", outcome.slot))
            .published(live.as_ref(), "initial sync");
        let opts = engine::ResyncOptions {
            rate,
            compare: a.compare,
        };
        let r = m.resync_with(&[outcome.slot], &opts, &bar)?;
        if let Some(l) = r.legs.first() {
            out.copied_regions = l.regions;
            out.copied_bytes = l.bytes;
            out.written_bytes = l.written_bytes;
            if let Some(e) = &l.error {
                eprintln!(
                    "mirrorctl: attach: initial sync of slot {} ({}) failed: {e}",
                    l.slot, l.location
                );
                exit = Exit::Degraded;
            }
        }
        out.seconds = r.seconds;
    }
    print_warnings(&mut m);
    let state = m.sb().legs[outcome.slot as usize].state;
    out.state = state.as_str().to_string();
    if a.json {
        print_json(&out)?;
    } else {
        let verb = if outcome.reattached {
            "re-attached"
        } else {
            "attached"
        };
        print!("{verb} {} as slot {}", a.secondary, outcome.slot);
        if a.no_sync && state != LegState::InSync {
            println!(
                "; {} left to copy: run `mirrorctl resync {} {}`",
                plural(outcome.regions, "region"),
                display(&a.primary),
                outcome.slot
            );
        } else if a.compare {
            println!(
                "; compared {} ({}), wrote {} in {:.1}s; state {}",
                plural(out.copied_regions, "region"),
                format_size(out.copied_bytes),
                format_size(out.written_bytes),
                out.seconds,
                out.state
            );
        } else {
            println!(
                "; copied {} ({}) in {:.1}s; state {}",
                plural(out.copied_regions, "region"),
                format_size(out.copied_bytes),
                out.seconds,
                out.state
            );
        }
    }
    Ok(exit.worst(health_exit(&mut m)?))
}
