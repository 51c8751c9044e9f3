//! `write`: input (a file or stdin) streamed into the mirror; the degraded line.

use super::*;

#[derive(Serialize)]
struct WriteOut {
    bytes_written: u64,
    offset: u64,
    /// Secondaries written (the primary is not counted).
    secondaries_written: u32,
    /// The same number under its old name, which did not say whether the primary counts;
    /// kept for one version (README "JSON output").
    legs_written: u32,
    newly_fractured: Vec<u32>,
}

pub(super) fn write(ctx: &Ctx, a: cli::WriteArgs) -> Result<Exit> {
    let (offset, length) = (a.offset, a.length);
    let policy = a.flush;
    let (mut input, known): (Box<dyn Read>, Option<u64>) = match a.input.as_deref() {
        None => stdin_input(),
        Some(p) if p == Path::new("-") => stdin_input(),
        Some(p) => {
            let f = File::open(p).map_err(|e| open_error("opening input", p, e))?;
            let len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(f), len)
        }
    };
    let mut m = open_for_change(ctx, &a.primary)?;
    check_min_in_sync(a.min_in_sync, &m)?;
    m.min_in_sync = a.min_in_sync;
    m.fence = engine::fence::FenceHooks {
        fence_peer: a.fence_peer.clone(),
        unfence: None,
        timeout: a.fence_timeout,
        primary: display(&a.primary),
    };
    let live = m.publish("write", true);
    check_range(
        offset,
        length,
        m.geometry().data_size,
        "nothing was written",
    )?;
    on_interrupt(
        "write",
        &format!(
            "the write-intent log covers what may not have reached every leg (the next command recovers it); write the same data at --offset {offset} again to have all of it"
        ),
    );
    // A bar for input of known size (and the live record's progress for `status`).
    let total = length.or(known.map(|k| k.min(m.geometry().data_size - offset)));
    let bar = Bar::new(ctx.progress && total.is_some(), "write").published(live.as_ref(), "write");
    if let Some(t) = total {
        engine::Progress::set_total(&bar, t);
    }
    let started = std::time::Instant::now();
    let mut counted = Counted {
        inner: &mut *input,
        bar: &bar,
    };
    let r = m.write_stream(offset, &mut counted, length, known, &policy);
    engine::Progress::finish(&bar);
    print_warnings(&mut m);
    let r = r?;
    // Secondaries that hold the whole write (the primary is not counted).
    let secondaries_written = m
        .sb()
        .legs
        .iter()
        .filter(|l| l.state().receives_writes())
        .count() as u32;
    if ctx.progress && !a.json {
        // On a terminal: what was done, like the other commands say it.
        let secs = started.elapsed().as_secs_f64();
        crate::systemd::eprint_at(
            crate::systemd::Priority::Info,
            &format!(
                "wrote {} at offset {offset} to the primary and {} in {secs:.1}s ({}/s)",
                format_size(r.bytes),
                plural(secondaries_written.into(), "secondary"),
                format_size((r.bytes as f64 / secs.max(1e-6)) as u64)
            ),
        );
    }
    if a.json {
        print_json(&WriteOut {
            bytes_written: r.bytes,
            offset,
            secondaries_written,
            legs_written: secondaries_written,
            newly_fractured: r.newly_fractured.clone(),
        })?;
    }
    let exit = health_exit(&mut m)?;
    if exit == Exit::Degraded {
        // A cron job under `set -e` fails on exit 3: its log says why (legs fractured by
        // this write have had their warning line already).
        if let Some(line) = degraded_line(&mut m, &a.primary, &r.newly_fractured)? {
            crate::systemd::eprint_at(
                crate::systemd::Priority::Warning,
                &format!("mirrorctl: {line}"),
            );
        }
    }
    Ok(exit)
}

/// One line naming the legs a write did not reach in full (but those in `told`), and the
/// command that brings them back; `None` when there is nothing more to say.
pub(super) fn degraded_line(
    m: &mut Mirror,
    primary: &Path,
    told: &[u32],
) -> Result<Option<String>> {
    let mut missed = Vec::new();
    let mut behind = Vec::new();
    for s in 0..m.geometry().slots {
        let l = m.sb().legs[s as usize].clone();
        if l.state() == LegState::Empty || told.contains(&s) {
            continue;
        }
        let (n, _) = m.pending_for(s)?;
        if l.state().is_fractured() {
            missed.push(format!(
                "slot {s} ({}, {})",
                crate::device::nbd::display(&l.location),
                l.state().as_str()
            ));
        } else if l.state() != LegState::InSync || n > 0 {
            behind.push(format!(
                "slot {s} ({}, {} to copy)",
                crate::device::nbd::display(&l.location),
                plural(n, "region")
            ));
        }
    }
    let mut parts = Vec::new();
    if !missed.is_empty() {
        parts.push(format!(
            "not written to {} (changes tracked in the fracture log)",
            missed.join(", ")
        ));
    }
    if !behind.is_empty() {
        parts.push(format!("out of sync: {}", behind.join(", ")));
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "degraded: {}; `mirrorctl resync {}` brings them back",
        parts.join("; "),
        display(primary)
    )))
}

/// `--min-in-sync N` against the mirror's slots: more can never be in sync.
pub(super) fn check_min_in_sync(n: u32, m: &Mirror) -> Result<()> {
    let slots = m.geometry().slots;
    if n > slots {
        return Err(Error::invalid(format!(
            "--min-in-sync {n}: {} has {slots} secondary slots, so at most {slots} can be in sync; nothing was written",
            m.name
        )));
    }
    Ok(())
}

/// The input, counted into the progress bar as it is read.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    bar: &'a Bar,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        engine::Progress::advance(self.bar, n as u64);
        Ok(n)
    }
}

pub(super) fn stdin_input() -> (Box<dyn Read>, Option<u64>) {
    use std::os::fd::AsFd;
    let stdin = io::stdin();
    let len = rustix::fs::fstat(stdin.as_fd())
        .ok()
        .filter(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
        .map(|st| st.st_size as u64);
    (Box::new(stdin), len)
}
