//! `attach`: the secondary found, created or sized by its location, then the engine's attach and initial sync.

use super::create::{refuse_missing_device, RemoveOnDrop};
use super::*;

#[derive(Serialize)]
struct AttachOut {
    slot: u32,
    path: String,
    /// The location recorded for the leg (what `status` shows): the path as given, or a
    /// block device's /dev/disk name.
    recorded_as: String,
    reattached: bool,
    regions_to_copy: u64,
    copied_regions: u64,
    copied_bytes: u64,
    written_bytes: u64,
    state: String,
    seconds: f64,
}

/// Folds `--tls-ca`, `--tls-cert` and `--tls-key` into an nbds URI as its query
/// parameters, every TLS file as an absolute path (relative ones are the client's, seen
/// from `cwd`), so that every later command opens the leg the same way.
pub(super) fn tls_secondary(a: &mut cli::AttachArgs, cwd: &Path) -> Result<()> {
    let flags = a.tls_ca.is_some() || a.tls_cert.is_some();
    let is_tls = a.secondary.starts_with("nbds://") || a.secondary.starts_with("nbds+unix://");
    if !is_tls {
        if flags {
            return Err(Error::invalid(format!(
                "--tls-ca, --tls-cert and --tls-key are for an NBD export over TLS; {} is not one (write nbds://HOST[:PORT]/EXPORT or nbds+unix:///EXPORT?socket=PATH)",
                a.secondary
            )));
        }
        return Ok(());
    }
    let mut uri = NbdUri::parse(&a.secondary).map_err(Error::invalid)?;
    let t = uri.tls.as_mut().expect("an nbds URI has TLS");
    let both = |flag: &Option<PathBuf>, given: &Option<PathBuf>, name: &str| -> Result<()> {
        if flag.is_some() && given.is_some() {
            return Err(Error::invalid(format!(
                "{}: the URI gives {name}= and --{name} is given too; give one",
                a.secondary
            )));
        }
        Ok(())
    };
    both(&a.tls_ca, &t.files.ca, "tls-ca")?;
    both(&a.tls_cert, &t.files.cert, "tls-cert")?;
    if let Some(c) = &a.tls_ca {
        t.files.ca = Some(c.clone());
    }
    if let (Some(c), Some(k)) = (&a.tls_cert, &a.tls_key) {
        t.files.cert = Some(c.clone());
        t.files.key = Some(k.clone());
    }
    for f in [&mut t.files.ca, &mut t.files.cert, &mut t.files.key]
        .into_iter()
        .flatten()
    {
        if f.is_relative() {
            *f = cwd.join(&*f);
        }
        *f = crate::device::nbd::uri::absolute(f);
    }
    a.secondary = uri.canonical();
    Ok(())
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
/// again unless the attach succeeds: the guard), sized if empty. `spec` is how the admin
/// named it, `sec` where it is (the same, or resolved against the client's directory by a
/// serving process).
pub(super) fn file_secondary(m: &Shape, primary: &Path, spec: &str, sec: &Path) -> Result<Opened> {
    let sec = sec.to_path_buf();
    let total = m.total_len;
    let mut created = None;
    if sec.exists() {
        let id = identity(&sec).map_err(|e| secondary_open_error("examining", &sec, e))?;
        if identity(primary).ok() == Some(id) {
            return Err(Error::invalid(format!(
                "{spec} is the primary itself; give a different image"
            )));
        }
        for (i, l) in m.legs.iter().enumerate() {
            if l.state().receives_writes() && identity(Path::new(l.open_path())).ok() == Some(id) {
                return Err(Error::invalid(format!(
                    "{spec} is already attached as slot {i} ({}, {})",
                    crate::device::nbd::display(&l.location),
                    l.state().as_str()
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
    // A block device is recorded by a /dev/disk name where it has one, so that the leg is
    // still found when disks or loop devices are numbered differently.
    let location = crate::device::open::stable_name(&sec)
        .map(|p| display(&p))
        .unwrap_or_else(|| spec.to_string());
    let dev = FileDevice::open(&sec, true)
        .map_err(|e| secondary_open_error("opening secondary", &sec, e))?;
    Ok(Opened {
        dev: Arc::new(dev),
        location,
        canonical,
        created,
    })
}

/// A secondary opened for attach, with the names to record.
pub(super) struct Opened {
    pub(super) dev: Arc<dyn Device>,
    /// What `status` shows and later commands open: as the admin gave it, or a block
    /// device's /dev/disk name.
    pub(super) location: String,
    /// The canonical path or URI (for a relative location, and identity checks).
    pub(super) canonical: String,
    /// Removes a file made for the attach unless it succeeds.
    pub(super) created: Option<RemoveOnDrop>,
}

/// What opening a secondary needs to know of the mirror (taken from it, so that a serving
/// process opens the secondary without holding its state).
pub(super) struct Shape {
    total_len: u64,
    legs: Vec<crate::format::Leg>,
}

impl Shape {
    pub(super) fn of(m: &Mirror) -> Shape {
        Shape {
            total_len: m.geometry().total_len(),
            legs: m.sb().legs.clone(),
        }
    }
}

/// The secondary `a` names, opened (or created), with the names to record; `at` is where
/// it is (see [`file_secondary`]).
pub(super) fn secondary(m: &Shape, a: &cli::AttachArgs, at: &Path) -> Result<Opened> {
    if nbd::is_uri(&a.secondary) {
        let (dev, canonical) = nbd_secondary(&a.secondary)?;
        Ok(Opened {
            dev,
            location: a.secondary.clone(),
            canonical,
            created: None,
        })
    } else {
        file_secondary(m, &a.primary, &a.secondary, at)
    }
}

pub(super) fn initial(a: &cli::AttachArgs) -> engine::InitialSync {
    if a.assume_clean {
        engine::InitialSync::AssumeClean
    } else if a.compare {
        engine::InitialSync::Compare
    } else {
        engine::InitialSync::Copy
    }
}

pub(super) fn attach(ctx: &Ctx, mut a: cli::AttachArgs) -> Result<Exit> {
    tls_secondary(&mut a, &std::env::current_dir().unwrap_or_default())?;
    let mut m = match open_for_change(ctx, &a.primary) {
        Ok(m) => m,
        Err(e) => return via_server(ctx, &a.primary, e, "attach"),
    };
    let live = m.publish("attach", true);
    on_interrupt(
        "attach",
        &format!(
            "if `mirrorctl status {p}` lists the secondary (syncing), `mirrorctl resync {p}` finishes its initial sync; otherwise run the attach again",
            p = display(&a.primary)
        ),
    );
    let Opened {
        dev,
        location,
        canonical,
        created,
    } = secondary(&Shape::of(&m), &a, Path::new(&a.secondary))?;
    let outcome = m.attach(
        dev,
        &location,
        &canonical,
        initial(&a),
        a.force,
        a.discard_secondary_changes,
    )?;
    if let Some(mut c) = created {
        c.0 = None;
    }
    let mut out = Attached::new(&a, &outcome, &location);
    let mut exit = Exit::Success;
    if out.needs_sync(&a, m.sb().legs[outcome.slot as usize].state()) {
        let bar = Bar::new(ctx.progress, &format!("syncing slot {}", outcome.slot))
            .published(live.as_ref(), "initial sync");
        let opts = engine::ResyncOptions {
            rate: a.rate,
            compare: a.compare,
        };
        let r = m.resync_with(&[outcome.slot], &opts, &bar)?;
        if let Some(e) = out.synced(&r) {
            crate::systemd::eprint_at(crate::systemd::Priority::Error, &format!("mirrorctl: {e}"));
            exit = Exit::Degraded;
        }
    }
    print_warnings(&mut m);
    out.set_state(m.sb().legs[outcome.slot as usize].state());
    let mut text = Vec::new();
    out.render(&a, &mut text)?;
    io::stdout().write_all(&text).map_err(Error::output)?;
    Ok(exit.worst(health_exit(&mut m)?))
}

/// What `attach` did, for its output (the same from the command and from `serve`).
pub(super) struct Attached {
    out: AttachOut,
    reattached: bool,
    regions: u64,
}

impl Attached {
    pub(super) fn new(a: &cli::AttachArgs, o: &engine::AttachOutcome, recorded: &str) -> Attached {
        Attached {
            out: AttachOut {
                slot: o.slot,
                path: a.secondary.clone(),
                recorded_as: recorded.to_string(),
                reattached: o.reattached,
                regions_to_copy: o.regions,
                copied_regions: 0,
                copied_bytes: 0,
                written_bytes: 0,
                state: String::new(),
                seconds: 0.0,
            },
            reattached: o.reattached,
            regions: o.regions,
        }
    }

    /// Whether the initial sync runs now (not with `--no-sync`, nor for a leg in sync).
    pub(super) fn needs_sync(&self, a: &cli::AttachArgs, state: LegState) -> bool {
        !a.no_sync && state != LegState::InSync
    }

    /// Takes in the initial sync's report; the error line to print if it failed.
    pub(super) fn synced(&mut self, r: &engine::ResyncReport) -> Option<String> {
        self.out.seconds = r.seconds;
        let l = r.legs.first()?;
        self.out.copied_regions = l.regions;
        self.out.copied_bytes = l.bytes;
        self.out.written_bytes = l.written_bytes;
        l.error.as_ref().map(|e| {
            format!(
                "attach: initial sync of slot {} ({}) failed: {e}",
                l.slot,
                crate::device::nbd::display(&l.location)
            )
        })
    }

    pub(super) fn set_state(&mut self, state: LegState) {
        self.out.state = state.as_str().to_string();
    }

    /// The text (or JSON document) `attach` prints.
    pub(super) fn render(&self, a: &cli::AttachArgs, w: &mut dyn Write) -> Result<()> {
        let e = Error::output;
        let out = &self.out;
        if a.json {
            serde_json::to_writer_pretty(&mut *w, out).map_err(|x| e(x.into()))?;
            return writeln!(w).map_err(e);
        }
        let verb = if self.reattached {
            "re-attached"
        } else {
            "attached"
        };
        write!(
            w,
            "{verb} {} as slot {}",
            crate::device::nbd::display(&a.secondary),
            out.slot
        )
        .map_err(e)?;
        if out.recorded_as.starts_with(crate::device::open::DEV_DISK)
            && out.recorded_as != a.secondary
        {
            // A block device is recorded by its stable name: say it, since status shows it.
            write!(w, " (recorded as {})", out.recorded_as).map_err(e)?;
        }
        if a.no_sync && out.state != LegState::InSync.as_str() {
            writeln!(
                w,
                "; {} left to copy: run `mirrorctl resync {} {}`",
                plural(self.regions, "region"),
                display(&a.primary),
                out.slot
            )
        } else if a.compare {
            writeln!(
                w,
                "; compared {} ({}), wrote {} in {:.1}s; state {}",
                plural(out.copied_regions, "region"),
                format_size(out.copied_bytes),
                format_size(out.written_bytes),
                out.seconds,
                out.state
            )
        } else {
            writeln!(
                w,
                "; copied {} ({}) in {:.1}s; state {}",
                plural(out.copied_regions, "region"),
                format_size(out.copied_bytes),
                out.seconds,
                out.state
            )
        }
        .map_err(e)
    }
}
