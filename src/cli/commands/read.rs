//! `read`: the data area to stdout or a file, from an in-sync secondary if the primary fails.

use super::*;

pub(super) fn read(ctx: &Ctx, a: cli::ReadArgs) -> Result<Exit> {
    let (offset, length) = (a.offset, a.length);
    let mut m = open_mirror(ctx, &a.primary, Mode::Shared).map_err(|mut e| {
        if e.kind == Kind::Primary {
            // Without its header the leg table is unknown: say where the data still is.
            e.msg.push_str("; the primary's secondaries still hold the data: `mirrorctl status SECONDARY` shows which are in sync, `mirrorctl promote SECONDARY` makes one the primary");
        }
        e
    })?;
    print_warnings(&mut m);
    let g = m.geometry();
    check_range(offset, length, g.data_size, "")?;
    let len = length.unwrap_or(g.data_size - offset);
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) if p != Path::new("-") => {
            Box::new(File::create(p).map_err(|e| open_error("creating output", p, e))?)
        }
        _ => Box::new(io::stdout().lock()),
    };
    let mut buf = vec![0u8; engine::CHUNK];
    let mut pos = offset;
    let end = offset + len;
    let mut exit = Exit::Success;
    let mut told = std::collections::BTreeSet::new();
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        if let Some((slot, why)) = m.read_at(&mut buf[..n], pos)? {
            if told.insert(slot) {
                crate::systemd::eprint_at(
                    crate::systemd::Priority::Warning,
                    &format!("mirrorctl: warning: {why}; reading from in-sync secondary slot {slot} instead"),
                );
            }
            exit = Exit::Degraded;
        }
        out.write_all(&buf[..n]).map_err(Error::output)?;
        pos += n as u64;
    }
    out.flush().map_err(Error::output)?;
    Ok(exit)
}
