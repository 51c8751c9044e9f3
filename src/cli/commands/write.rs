//! `write`: input (a file or stdin) streamed into the mirror; the degraded line.

use super::*;

#[derive(Serialize)]
struct WriteOut {
    bytes_written: u64,
    offset: u64,
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
    let _live = m.publish("write", true);
    check_range(
        offset,
        length,
        m.geometry().data_size,
        "nothing was written",
    )?;
    let r = m.write_stream(offset, &mut input, length, known, &policy);
    print_warnings(&mut m);
    let r = r?;
    if a.json {
        let legs_written = m
            .sb()
            .legs
            .iter()
            .filter(|l| l.state.receives_writes())
            .count() as u32;
        print_json(&WriteOut {
            bytes_written: r.bytes,
            offset,
            legs_written,
            newly_fractured: r.newly_fractured.clone(),
        })?;
    }
    let exit = health_exit(&mut m)?;
    if exit == Exit::Degraded {
        // A cron job under `set -e` fails on exit 3: its log says why (legs fractured by
        // this write have had their warning line already).
        if let Some(line) = degraded_line(&mut m, &a.primary, &r.newly_fractured)? {
            eprintln!("mirrorctl: {line}");
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
        if l.state == LegState::Empty || told.contains(&s) {
            continue;
        }
        let (n, _) = m.pending_for(s)?;
        if l.state.is_fractured() {
            missed.push(format!("slot {s} ({}, {})", l.location, l.state.as_str()));
        } else if l.state != LegState::InSync || n > 0 {
            behind.push(format!(
                "slot {s} ({}, {} to copy)",
                l.location,
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

pub(super) fn stdin_input() -> (Box<dyn Read>, Option<u64>) {
    use std::os::fd::AsFd;
    let stdin = io::stdin();
    let len = rustix::fs::fstat(stdin.as_fd())
        .ok()
        .filter(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
        .map(|st| st.st_size as u64);
    (Box::new(stdin), len)
}
