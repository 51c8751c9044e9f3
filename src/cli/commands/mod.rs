//! The subcommands: per command, arguments -> lock -> one engine call -> output. Shared
//! here: opening and locking the primary, error mapping to exit codes, the health exit.

use crate::cli::exit::Exit;
use crate::cli::output::{print_json, print_warnings, Bar};
use crate::cli::{self, Cli, Command};
use crate::device::nbd::{self, NbdUri};
use crate::device::open::{open_nbd, same_file, FileOpener};
use crate::device::{identity, Device, FileDevice};
use crate::engine::{self, Mirror};
use crate::error::{Error, Kind, Result};
use crate::format::layout::Geometry;
use crate::format::{LegState, Role};
use crate::lock::{Mode, Wait};
use crate::meta::image::Image;
use crate::units::{format_size, plural};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod attach;
mod create;
mod events;
mod export;
mod legs;
pub mod names;
mod promote;
mod read;
mod resync;
mod serve;
mod set;
mod status;
mod status_all;
mod through_serve;
mod verify;
mod write;

/// Runs a parsed command line, its mirror name (if one is given for IMAGE/PRIMARY)
/// resolved first with `matches` (what came from the command line), and returns the exit
/// status to use.
pub fn run_matched(mut cli: Cli, matches: &clap::ArgMatches) -> Result<Exit> {
    names::resolve(&mut cli, matches)?;
    run(cli)
}

/// Runs a parsed command line and returns the exit status to use.
pub fn run(cli: Cli) -> Result<Exit> {
    if let Some(d) = cli.timeout {
        nbd::set_timeout(d);
    }
    let ctx = Ctx {
        wait: cli.wait.unwrap_or(Wait::No),
        progress: !cli.no_progress && io::stderr().is_terminal(),
    };
    match cli.command {
        Command::Create(a) => create::create(&ctx, a),
        Command::Status(a) => status::status_cmd(&ctx, a),
        Command::Events(a) => events::events(&ctx, a),
        Command::Attach(a) => attach::attach(&ctx, a),
        Command::Write(a) => write::write(&ctx, a),
        Command::Read(a) => read::read(&ctx, a),
        Command::Fracture(a) => legs::fracture(&ctx, a),
        Command::Resync(a) => resync::resync(&ctx, a),
        Command::Detach(a) => legs::detach(&ctx, a),
        Command::Verify(a) => verify::verify(&ctx, a),
        Command::Promote(a) => promote::promote(&ctx, a),
        Command::Serve(a) => serve::serve(&ctx, a),
        Command::Export(a) => export::export(&ctx, a),
        Command::Name(a) => names::name_cmd(a),
        Command::CompleteNames => names::complete_names(),
        Command::Set(a) => set::set(&ctx, a),
        // The agent's exit status is an OCF return code.
        Command::OcfAgent(a) => std::process::exit(crate::ocf::run::main(&a.action)),
        Command::CompleteLegs(a) => {
            // Best effort, for a shell waiting on a Tab: what can be read, nothing else.
            if let Ok(dev) = FileDevice::open(&a.primary, false) {
                let dev: Arc<dyn Device> = Arc::new(dev);
                if let Ok(sb) = engine::status::read_superblock(&dev, &display(&a.primary)) {
                    for (i, l) in sb.legs.iter().enumerate() {
                        if l.state() != LegState::Empty {
                            println!("{i}\n{}", l.location);
                        }
                    }
                }
            }
            Ok(Exit::Success)
        }
        Command::Generate(a) => {
            let written: Vec<PathBuf> = crate::cli::doc::generate(&a.out, a.what)
                .map_err(|e| Error::invalid(format!("generating into {}: {e}", a.out.display())))?;
            for p in written {
                println!("{}", p.display());
            }
            Ok(Exit::Success)
        }
    }
}

struct Ctx {
    wait: Wait,
    progress: bool,
}

/// Prints the SIGBUS explanation and exits 4: an I/O error on a mapped bitmap page of the
/// primary arrives as SIGBUS, not as an error return.
extern "C" fn on_sigbus(_: libc::c_int) {
    const MSG: &[u8] = b"mirrorctl: I/O error on the primary's bitmap area (SIGBUS while accessing mapped metadata): the primary device failed; nothing more was acknowledged\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(4);
    }
}

/// The line an interrupted command prints (set by [`on_interrupt`]); a leaked, NUL-free
/// buffer the signal handler only reads.
static INTERRUPT_LINE: std::sync::atomic::AtomicPtr<Vec<u8>> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_sigint(sig: libc::c_int) {
    let line = INTERRUPT_LINE.load(std::sync::atomic::Ordering::SeqCst);
    // SAFETY: write(2), signal(2) and raise(3) are async-signal-safe; the buffer is leaked
    // and never freed or changed after it is published.
    unsafe {
        if !line.is_null() {
            let l = &*line;
            libc::write(2, l.as_ptr().cast(), l.len());
        }
        // Then the default action: the process ends by the signal, as the shell expects.
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Says on Ctrl-C (or SIGTERM) that the command was interrupted and how to go on: `what`
/// and `resume` (the state on disk is safe at every point, rule by rule; this only tells the
/// admin). The progress bar's line is cleared first when stderr is a terminal.
pub(super) fn on_interrupt(what: &str, resume: &str) {
    let clear = if io::stderr().is_terminal() {
        "\r\x1b[K"
    } else {
        ""
    };
    let line = format!("{clear}mirrorctl: {what} interrupted; {resume}\n").into_bytes();
    let old = INTERRUPT_LINE.swap(
        Box::into_raw(Box::new(line)),
        std::sync::atomic::Ordering::SeqCst,
    );
    // The old line stays leaked: a handler may be reading it.
    let _ = old;
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
}

pub fn install_sigbus_handler() {
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGBUS, on_sigbus as *const () as libc::sighandler_t);
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// An image that could not be opened: a problem with the path given (2), or an I/O error
/// on the image (4). A read-only image says "read-only" (4: the primary cannot be written).
fn open_error(what: &str, path: &Path, e: io::Error) -> Error {
    let msg = format!(
        "{what} {}: {}",
        display(path),
        crate::error::describe_io(&e)
    );
    if is_read_only(&e) {
        return Error::primary(format!(
            "{what} {}: read-only ({}); make it writable (`blockdev --setrw`, `chattr -i`, remount read-write) or give another image",
            display(path),
            crate::error::describe_io(&e)
        ));
    }
    if is_path_problem(&e) {
        Error::invalid(msg)
    } else {
        Error::primary(msg)
    }
}

/// A secondary that could not be opened or created at the path given: always a problem
/// with that path (2), read-only included, since the primary is untouched.
fn secondary_open_error(what: &str, path: &Path, e: io::Error) -> Error {
    if is_read_only(&e) {
        return Error::invalid(format!(
            "{what} {}: read-only ({}); give a writable secondary",
            display(path),
            crate::error::describe_io(&e)
        ));
    }
    let msg = format!(
        "{what} {}: {}",
        display(path),
        crate::error::describe_io(&e)
    );
    if is_path_problem(&e) {
        Error::invalid(msg)
    } else {
        Error::degraded(msg)
    }
}

fn is_read_only(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ReadOnlyFilesystem
        || matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EPERM))
}

/// Errors that say the path names nothing usable (missing, a directory, too long...).
fn is_path_problem(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EISDIR) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) | Some(libc::ELOOP)
    )
}

/// A command that found the mirror busy: when the holder is `serve`, it is sent to the
/// serving process through its control socket (`nbd_server::control_socket`), which carries it out
/// with the same output, progress, JSON and exit status as here on an idle mirror.
fn via_server(ctx: &Ctx, primary: &Path, err: Error, what: &str) -> Result<Exit> {
    use crate::nbd_server::control_socket::{self as control, Message, Request};
    if err.kind != Kind::Busy {
        return Err(err);
    }
    let Ok(f) = File::open(primary) else {
        return Err(err);
    };
    let Some((rec, rec_path)) = crate::live::find(&f).filter(|(r, _)| r.command == "serve") else {
        return Err(err);
    };
    // The control socket is beside the server's record, wherever its user's runtime
    // directory is.
    let sock = control::socket_beside(&rec_path);
    let req = Request {
        version: control::VERSION,
        args: names::forwarded_args(),
        cwd: std::env::current_dir().unwrap_or_default(),
    };
    let bar = Bar::new(ctx.progress, what);
    let (mut total, mut done) = (None, 0);
    let last = control::ask(&sock, &req, &mut |m| match m {
        Message::Out(s) => {
            print!("{s}");
            let _ = io::stdout().flush();
        }
        // The server's lines of the command (errors, warnings, notes), one message each.
        Message::Err(s) => crate::systemd::eprint(s, crate::systemd::Priority::Error),
        Message::Progress { done: d, total: t } => {
            use crate::engine::Progress;
            if total != Some(*t) {
                bar.set_total(*t);
                total = Some(*t);
                done = 0;
            }
            bar.advance(d.saturating_sub(done));
            done = *d;
        }
        _ => {}
    });
    crate::engine::Progress::finish(&bar);
    match last {
        Ok(Message::Exit(c)) => Ok(Exit::from_code(c)),
        Ok(Message::Error { message, code }) => {
            Err(Error::new(Exit::from_code(code).kind(), message))
        }
        Ok(_) => unreachable!("ask returns only a last message"),
        // The server died (kill -9, a crash) before or while it carried the command out:
        // there is nothing to stop any more, the lock is free, and the next command
        // recovers what it left.
        Err(e) if server_gone(&f, &rec) => Err(Error::busy(format!(
            "{what} {}: `mirrorctl serve` (pid {}), which served it, has ended {}: its control socket did not answer ({e}). Nothing serves the mirror now and its lock is free: run the command again (it first recovers what the server left; `mirrorctl status {}` shows the mirror)",
            display(primary),
            rec.pid,
            if e.kind() == io::ErrorKind::UnexpectedEof {
                "before the command finished (what it did up to its last checkpoint stays done)"
            } else {
                "before it took the command (nothing was done)"
            },
            display(primary),
        ))),
        Err(e) => Err(Error::busy(format!(
            "{} is served by `mirrorctl serve` (pid {}), but its control socket {} did not answer ({e}); stop it cleanly with `kill -TERM {}` and run the command again",
            display(primary),
            rec.pid,
            sock.display(),
            rec.pid
        ))),
    }
}

/// Whether the serving process of `rec` is gone (within a second: its control connection
/// closes a moment before its lock goes): no longer running, or the mirror's lock free.
fn server_gone(f: &File, rec: &crate::live::Record) -> bool {
    use rustix::fs::{flock, FlockOperation};
    let t = std::time::Instant::now();
    loop {
        if !crate::live::still_running(rec) {
            return true;
        }
        if flock(f, FlockOperation::NonBlockingLockShared).is_ok() {
            let _ = flock(f, FlockOperation::Unlock);
            return true;
        }
        if t.elapsed() > std::time::Duration::from_secs(1) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The primary opened and locked, with its mirror state.
fn open_mirror(ctx: &Ctx, path: &Path, mode: Mode) -> Result<Mirror> {
    open_mirror_wait(path, mode, ctx.wait)
}

fn open_mirror_wait(path: &Path, mode: Mode, wait: Wait) -> Result<Mirror> {
    let writable = mode == Mode::Exclusive;
    let dev = FileDevice::open(path, writable).map_err(|e| open_error("opening", path, e))?;
    let primary = dev.handle();
    // A served mirror is not waited for (serve holds it for its whole life): the caller
    // hands the command to the serving process instead (`via_server`).
    match primary.lock(mode, Wait::No, &display(path)) {
        Err(e) if e.kind == Kind::Busy && wait != Wait::No => {
            if primary.running().is_some_and(|r| r.command == "serve") {
                return Err(e);
            }
            primary.lock(mode, wait, &display(path))?;
        }
        r => r?,
    }
    let dev: Arc<dyn Device> = Arc::new(dev);
    let m = Mirror::open(
        dev,
        &display(path),
        Arc::new(FileOpener { writable }),
        writable,
    )?;
    Ok(m)
}

/// The primary opened for a command that writes data or logs: locked, refused if it was
/// replaced by a promotion (P6, before anything is written), then recovered (R1..R3).
fn open_for_change(ctx: &Ctx, path: &Path) -> Result<Mirror> {
    let mut m = open_mirror(ctx, path, Mode::Exclusive)?;
    m.prepare_for_change()?;
    print_warnings(&mut m);
    Ok(m)
}

/// Degraded (3) unless the mirror is healthy (the engine's one health rule).
fn health_exit(m: &mut Mirror) -> Result<Exit> {
    health_exit_pinned(m, 0)
}

/// [`health_exit`] for a served mirror whose server keeps `pinned` extents marked after
/// primary write errors.
fn health_exit_pinned(m: &mut Mirror, pinned: u64) -> Result<Exit> {
    Ok(if m.is_healthy_pinned(pinned)? {
        Exit::Success
    } else {
        Exit::Degraded
    })
}

/// `--offset` and `--length` against the data area (read and write), with `then` added to
/// the second message ("nothing was written").
fn check_range(offset: u64, length: Option<u64>, data_size: u64, then: &str) -> Result<()> {
    if offset > data_size {
        return Err(Error::invalid(format!(
            "--offset {offset} is past the end of the data area ({data_size} bytes)"
        )));
    }
    match length {
        Some(l) if offset.checked_add(l).is_none_or(|e| e > data_size) => {
            let then = if then.is_empty() {
                String::new()
            } else {
                format!("; {then}")
            };
            Err(Error::invalid(format!(
                "--offset {offset} plus --length {l} runs past the end of the data area ({data_size} bytes){then}"
            )))
        }
        _ => Ok(()),
    }
}
