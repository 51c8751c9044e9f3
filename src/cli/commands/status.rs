//! `status`: the engine's report, as text or JSON.

use super::*;

pub(super) fn status_cmd(ctx: &Ctx, a: cli::StatusArgs) -> Result<Exit> {
    let name = display(&a.image);
    let dev = FileDevice::open(&a.image, false).map_err(|e| open_error("opening", &a.image, e))?;
    lock::lock(dev.file().unwrap(), Mode::Shared, ctx.wait, &name)?;
    let s = engine::status::report(Arc::new(dev), &name, &FileOpener { writable: false })?;
    if a.json {
        print_json(&s)?;
    } else {
        engine::status::render_text(&s, &mut io::stdout().lock()).map_err(Error::output)?;
    }
    Ok(if a.check && !s.healthy {
        Exit::Degraded
    } else {
        Exit::Success
    })
}
