//! `status`: the engine's report, as text or JSON. It never takes the mirror's lock, so
//! it answers at once while a resync, a verify or `serve` runs, and shows what that command
//! last published about itself (`crate::live`).

use super::*;

/// One image's report, with what its running command published (or, when that record
/// cannot be read, the pid holding the mirror from the kernel's lock table). `status` and
/// `status --all` both use it.
pub(super) fn image_report(image: &Path, name: &str) -> Result<engine::status::Status> {
    let dev = FileDevice::open(image, false).map_err(|e| open_error("opening", image, e))?;
    let primary = dev.handle();
    let running = primary.running();
    // A writer whose record this user cannot read (another user's runtime directory) is
    // still seen in the kernel's lock table: its intents are not an unclean stop.
    let holder = match running {
        None => primary.writers().first().copied(),
        Some(_) => None,
    };
    engine::status::report_held(
        Arc::new(dev),
        name,
        Arc::new(FileOpener { writable: false }),
        running,
        holder,
    )
}

pub(super) fn status_cmd(_ctx: &Ctx, a: cli::StatusArgs) -> Result<Exit> {
    let Some(image) = a.image.clone() else {
        return super::status_all::status_all(&a);
    };
    let s = image_report(&image, &display(&image))?;
    let format = match (a.json, a.format) {
        (true, _) => cli::StatusFormat::Json,
        (false, f) => f.unwrap_or(cli::StatusFormat::Text),
    };
    if format == cli::StatusFormat::Json {
        print_json(&s)?;
    } else if format == cli::StatusFormat::Prometheus {
        io::stdout()
            .write_all(cli::metrics::render(&s).as_bytes())
            .map_err(Error::output)?;
    } else {
        cli::status_text::render_text(&s, &mut io::stdout().lock()).map_err(Error::output)?;
    }
    Ok(if a.check && !s.healthy {
        Exit::Degraded
    } else {
        Exit::Success
    })
}
