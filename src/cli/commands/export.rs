//! `export`: one image served raw over NBD until SIGTERM/SIGINT, or until it becomes a
//! primary through the export (engine/export.rs); a clean stop syncs the image.

use super::serve::{check_socket_path, tcp_listen, tls};
use super::*;
use crate::engine::export::{Export, Header, Phase};
use crate::nbd_server::{self as server, Listen};

pub(super) fn export(ctx: &Ctx, a: cli::ExportArgs) -> Result<Exit> {
    // Before any thread starts: every thread inherits the mask, only the waiter sees them;
    // and $NOTIFY_SOCKET is taken out of the environment while no thread can read it.
    server::block_stop_signals();
    crate::systemd::take_notify_socket();
    server::set_log_name("export");
    let tls = tls(&a.server)?;
    let listen = match (&a.socket, &a.listen) {
        (_, Some(hp)) => tcp_listen(hp, &tls, a.server.insecure)?,
        (Some(p), None) => Listen::Unix(p.clone()),
        (None, None) => return Err(Error::invalid("give --listen HOST:PORT or --socket PATH")),
    };
    check_socket_path(&listen)?;
    let what = match &listen {
        Listen::Unix(p) => format!("listening on {}", p.display()),
        Listen::Tcp(hp) => format!("listening on {hp}"),
    };
    let name = display(&a.image);
    let dev = FileDevice::open(&a.image, true).map_err(|e| open_error("opening", &a.image, e))?;
    let primary = dev.handle();
    // Held while it runs: a local promote, write or serve of the image says busy.
    primary.lock(Mode::Exclusive, ctx.wait, &name)?;
    let live = primary.publish(&name, "export", false);
    let dev: Arc<dyn Device> = Arc::new(dev);
    let (exp, header) = Export::open(dev, &name, a.rejoin, Box::new(server::log_line))?;
    // Bound after the checks: a refused image never listened.
    let bound = server::bind(&listen).map_err(|e| {
        Error::invalid(format!(
            "{what}: {}; nothing was changed",
            crate::error::describe_io(&e)
        ))
    })?;
    server::log_line(&format!(
        "{name} holds {}{}",
        header.describe(),
        if exp.phase() == Phase::Rejoining {
            " (--rejoin: offered for the mirror's current primary to take back with `attach`)"
        } else if header == Header::Blank {
            " (the primary's `attach` makes it a secondary)"
        } else {
            ""
        }
    ));
    let exp = Arc::new(exp);
    let summary = server::run(
        exp.clone(),
        bound,
        &listen,
        &a.export,
        &name,
        &tls,
        &a.server.limits(),
    )
    .map_err(|e| Error::invalid(format!("{what}: {}", crate::error::describe_io(&e))))?;
    crate::systemd::notify("STATUS=stopping: syncing the image", &server::log_line);
    let synced = exp.sync();
    drop(live);
    let c = exp.counts();
    let how = match (&summary.stopped_by, summary.signal) {
        (Some(why), _) => format!(": {why}"),
        (None, Some(s)) => format!(" on {s}"),
        (None, None) => String::new(),
    };
    if let Err(e) = synced {
        return Err(Error::primary_io(format!("syncing {name} at the stop"), &e));
    }
    server::log_line(&format!(
        "stopped{how}: {} served, {} and {} written, {} read, {}; the image is synced{}",
        plural(c.connections, "connection"),
        plural(c.writes, "request"),
        format_size(c.bytes_written),
        format_size(c.bytes_read),
        match c.flushes {
            1 => "1 flush".to_string(),
            n => format!("{n} flushes"),
        },
        if summary.stopped_by.is_some() {
            format!("; serve it with `mirrorctl serve {name}`")
        } else {
            String::new()
        }
    ));
    Ok(Exit::Success)
}
