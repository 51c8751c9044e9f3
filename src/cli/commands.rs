//! Subcommands: paths, locking, opening images, progress bars and output. The mirror logic
//! itself lives in `mirror`.

use crate::cli::{self, Cli, Command};
use crate::device::nbd::{self, NbdDevice, NbdUri};
use crate::device::{identity, Device, FileDevice};
use crate::engine::{self, FlushPolicy, Mirror, Opener, Progress};
use crate::engine::{create, status};
use crate::error::{Error, Exit, Result};
use crate::format::layout::Geometry;
use crate::format::{LegState, Role};
use crate::lock::{self, Mode, Wait};
use crate::meta::image::Image;
use crate::units::{format_size, parse_rate, parse_size};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Runs a parsed command line and returns the exit status to use.
pub fn run(cli: Cli) -> Result<Exit> {
    if let Some(t) = cli.timeout.as_deref() {
        let d =
            crate::units::parse_duration(t).map_err(|e| Error::usage(format!("--timeout: {e}")))?;
        if d.is_zero() {
            return Err(Error::usage("--timeout: must be more than 0".to_string()));
        }
        nbd::set_timeout(d);
    }
    let ctx = Ctx {
        wait: lock::parse_wait(cli.wait.as_deref())
            .map_err(|e| Error::usage(format!("--wait: {e}")))?,
        progress: !cli.no_progress && io::stderr().is_terminal(),
    };
    match cli.command {
        Command::Create(a) => create(&ctx, a),
        Command::Status(a) => status_cmd(&ctx, a),
        Command::Attach(a) => attach(&ctx, a),
        Command::Write(a) => write(&ctx, a),
        Command::Read(a) => read(&ctx, a),
        Command::Fracture(a) => fracture(&ctx, a),
        Command::Resync(a) => resync(&ctx, a),
        Command::Detach(a) => detach(&ctx, a),
        Command::Verify(a) => verify(&ctx, a),
        Command::Promote(a) => promote(&ctx, a),
        Command::Generate(a) => {
            let written: Vec<PathBuf> = crate::cli::doc::generate(&a.out, a.what)
                .map_err(|e| Error::usage(format!("generating into {}: {e}", a.out.display())))?;
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

pub fn install_sigbus_handler() {
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGBUS, on_sigbus as *const () as libc::sighandler_t);
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn size_arg(flag: &str, v: &str) -> Result<u64> {
    parse_size(v).map_err(|e| Error::usage(format!("{flag}: {e}")))
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
        Error::usage(msg)
    } else {
        Error::primary(msg)
    }
}

/// A secondary that could not be opened or created at the path given: always a problem
/// with that path (2), read-only included, since the primary is untouched.
fn secondary_open_error(what: &str, path: &Path, e: io::Error) -> Error {
    if is_read_only(&e) {
        return Error::usage(format!(
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
        Error::usage(msg)
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

/// Opens secondaries by their recorded path.
pub struct FileOpener {
    pub writable: bool,
}

impl Opener for FileOpener {
    fn open(&self, location: &str) -> io::Result<Arc<dyn Device>> {
        if nbd::is_uri(location) {
            return Ok(Arc::new(open_nbd(location, self.writable)?));
        }
        Ok(Arc::new(FileDevice::open(
            Path::new(location),
            self.writable,
        )?))
    }

    fn writable(&self) -> bool {
        self.writable
    }
}

/// Connects to an NBD export; a read-only export is refused when it is to be written.
fn open_nbd(location: &str, writable: bool) -> io::Result<NbdDevice> {
    let uri =
        NbdUri::parse(location).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let dev = NbdDevice::connect(&uri, location)?;
    if writable && dev.read_only() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the server exports it read-only; export it writable (qemu-nbd without -r, nbdkit without -r)",
        ));
    }
    Ok(dev)
}

/// The primary opened and locked, with its mirror state.
fn open_mirror(ctx: &Ctx, path: &Path, mode: Mode) -> Result<Mirror> {
    open_mirror_wait(path, mode, ctx.wait)
}

fn open_mirror_wait(path: &Path, mode: Mode, wait: Wait) -> Result<Mirror> {
    let writable = mode == Mode::Exclusive;
    let dev = FileDevice::open(path, writable).map_err(|e| open_error("opening", path, e))?;
    lock::lock(dev.file().unwrap(), mode, wait, &display(path))?;
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
    m.refuse_if_replaced()?;
    m.recover()?;
    print_warnings(&mut m);
    Ok(m)
}

fn print_warnings(m: &mut Mirror) {
    for w in m.warnings.drain(..) {
        eprintln!("mirrorctl: {w}");
    }
}

/// Degraded (3) unless the mirror is healthy (the engine's one health rule).
fn health_exit(m: &mut Mirror) -> Result<Exit> {
    Ok(if m.is_healthy()? {
        Exit::Success
    } else {
        Exit::Degraded
    })
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| Error::output(e.into()))?;
    writeln!(out).map_err(Error::output)
}

// ---------------------------------------------------------------------------------------
// create

#[derive(Serialize)]
struct CreateOut {
    path: String,
    mirror_uuid: String,
    image_uuid: String,
    data_offset: u64,
    data_size: u64,
    region_size: u64,
    region_count: u64,
    max_secondaries: u32,
}

fn create(ctx: &Ctx, a: cli::CreateArgs) -> Result<Exit> {
    let region_size = size_arg("--region-size", &a.region_size)?;
    crate::format::layout::check_region_size(region_size)
        .map_err(|e| Error::usage(format!("--region-size: {e}")))?;
    crate::format::layout::check_slots(a.max_secondaries)
        .map_err(|e| Error::usage(format!("--max-secondaries: {e}")))?;
    let size = a
        .size
        .as_deref()
        .map(|s| size_arg("--size", s))
        .transpose()?;
    let name = display(&a.image);
    let exists = a.image.exists() || std::fs::symlink_metadata(&a.image).is_ok();
    let (dev, created) = if !exists {
        refuse_missing_device(&a.image, "creating")?;
        let Some(size) = size else {
            return Err(Error::usage(format!(
                "{name} does not exist: give --size to create a new image file (e.g. --size 10G)"
            )));
        };
        let g = Geometry::for_data_size(size, region_size, a.max_secondaries)
            .map_err(|e| Error::usage(format!("--size: {e}")))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&a.image)
            .map_err(|e| open_error("creating", &a.image, e))?;
        let guard = RemoveOnDrop(Some(a.image.clone()));
        file.set_len(g.total_len())
            .map_err(|e| Error::usage(format!("sizing {name} to {} bytes: {e}", g.total_len())))?;
        (
            FileDevice::from_file(file, &a.image)
                .map_err(|e| open_error("opening", &a.image, e))?,
            Some(guard),
        )
    } else {
        (
            FileDevice::open(&a.image, true).map_err(|e| open_error("opening", &a.image, e))?,
            None,
        )
    };
    lock::lock(dev.file().unwrap(), Mode::Exclusive, ctx.wait, &name)?;
    let capacity = dev.len();
    let g = match size {
        Some(s) => Geometry::for_data_size(s, region_size, a.max_secondaries)
            .map_err(|e| Error::usage(format!("--size: {e}")))?,
        None => Geometry::fit(capacity, region_size, a.max_secondaries)
            .map_err(|e| Error::usage(format!("{name}: {e}")))?,
    };
    if created.is_none() {
        let existing: Arc<dyn Device> = Arc::new(
            FileDevice::open(&a.image, false).map_err(|e| open_error("opening", &a.image, e))?,
        );
        let checks = create::check_existing(existing, &name, &g, a.force, dev.is_block())?;
        if let Some(f) = &checks.overwrites {
            eprintln!(
                "mirrorctl: note: --force: overwriting {} on {name} (signature at byte {})",
                f.what, f.offset
            );
        }
        if checks.grow {
            dev.file()
                .unwrap()
                .set_len(g.total_len())
                .map_err(|e| Error::usage(format!("growing {name}: {e}")))?;
        }
    }
    let dev = FileDevice::open(&a.image, true).map_err(|e| open_error("opening", &a.image, e))?;
    let img = create::format_primary(Arc::new(dev), &name, g)?;
    if let Some(mut guard) = created {
        guard.0 = None;
    }
    let out = CreateOut {
        path: name.clone(),
        mirror_uuid: engine::uuid_str(&img.mirror_uuid),
        image_uuid: engine::uuid_str(&img.image_uuid),
        data_offset: g.data_offset,
        data_size: g.data_size,
        region_size: g.region_size,
        region_count: g.region_count,
        max_secondaries: g.slots,
    };
    if a.json {
        print_json(&out)?;
    } else {
        println!(
            "created mirror {} on {name}: {} of data at offset {}, {} regions of {}, {} secondary slots",
            out.mirror_uuid,
            format_size(g.data_size),
            g.data_offset,
            g.region_count,
            format_size(g.region_size),
            g.slots
        );
    }
    Ok(Exit::Success)
}

/// A path that does not exist is created as a new image file, except under /dev: there a
/// missing name is a device that is not there (a typo, a disk not plugged in), and a
/// regular file on devtmpfs would silently take the writes meant for it.
fn refuse_missing_device(path: &Path, what: &str) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(&parent).unwrap_or(parent);
    if dir.starts_with("/dev") {
        return Err(Error::usage(format!(
            "{what} {}: no such device; check the name (`lsblk`, `losetup -a`), or give a path outside /dev to create an image file",
            display(path)
        )));
    }
    Ok(())
}

/// Removes a file this command created if the command fails before finishing.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------------
// status

fn status_cmd(ctx: &Ctx, a: cli::StatusArgs) -> Result<Exit> {
    let name = display(&a.image);
    let dev = FileDevice::open(&a.image, false).map_err(|e| open_error("opening", &a.image, e))?;
    lock::lock(dev.file().unwrap(), Mode::Shared, ctx.wait, &name)?;
    let s = status::report(Arc::new(dev), &name, &FileOpener { writable: false })?;
    if a.json {
        print_json(&s)?;
    } else {
        status::render_text(&s, &mut io::stdout().lock()).map_err(Error::output)?;
    }
    Ok(if a.check && !s.healthy {
        Exit::Degraded
    } else {
        Exit::Success
    })
}

// ---------------------------------------------------------------------------------------
// progress

struct Bar(ProgressBar);

impl Bar {
    fn new(ctx: &Ctx, msg: &str) -> Bar {
        let pb = if ctx.progress {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        pb.set_message(msg.to_string());
        Bar(pb)
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        // Never above 100 %.
        let len = self.0.length().unwrap_or(0);
        let pos = (self.0.position() + bytes).min(len);
        self.0.set_position(pos);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

// ---------------------------------------------------------------------------------------
// attach

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

/// `--rate SIZE/s`, when given.
fn rate_arg(rate: Option<&str>) -> Result<Option<u64>> {
    rate.map(|r| parse_rate(r).map_err(|e| Error::usage(format!("--rate: {e}"))))
        .transpose()
}

/// An NBD export to attach: never created here (the engine checks its size); its canonical
/// URI identifies it.
fn nbd_secondary(uri: &str) -> Result<(Arc<dyn Device>, String)> {
    let canonical = NbdUri::parse(uri).map_err(Error::usage)?.canonical();
    let dev =
        open_nbd(uri, true).map_err(|e| Error::usage(format!("opening secondary {uri}: {e}")))?;
    Ok((Arc::new(dev), canonical))
}

/// A file or block device to attach: refused if it is the primary or already a leg
/// (compared by device and inode), created sparse at the mirror's size if missing (removed
/// again unless the attach succeeds: the guard), sized if empty.
fn file_secondary(
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
            return Err(Error::usage(format!(
                "{spec} is the primary itself; give a different image"
            )));
        }
        for (i, l) in m.sb().legs.iter().enumerate() {
            if l.state.receives_writes() && identity(Path::new(l.open_path())).ok() == Some(id) {
                return Err(Error::usage(format!(
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

fn attach(ctx: &Ctx, a: cli::AttachArgs) -> Result<Exit> {
    let rate = rate_arg(a.rate.as_deref())?;
    let mut m = open_for_change(ctx, &a.primary)?;
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
        let bar = Bar::new(ctx, &format!("syncing slot {}", outcome.slot));
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
                "; {} regions left to copy: run `mirrorctl resync {} {}`",
                outcome.regions,
                display(&a.primary),
                outcome.slot
            );
        } else if a.compare {
            println!(
                "; compared {} regions ({}), wrote {} in {:.1}s; state {}",
                out.copied_regions,
                format_size(out.copied_bytes),
                format_size(out.written_bytes),
                out.seconds,
                out.state
            );
        } else {
            println!(
                "; copied {} regions ({}) in {:.1}s; state {}",
                out.copied_regions,
                format_size(out.copied_bytes),
                out.seconds,
                out.state
            );
        }
    }
    Ok(exit.worst(health_exit(&mut m)?))
}

// ---------------------------------------------------------------------------------------
// write

#[derive(Serialize)]
struct WriteOut {
    bytes_written: u64,
    offset: u64,
    legs_written: u32,
    newly_fractured: Vec<u32>,
}

fn write(ctx: &Ctx, a: cli::WriteArgs) -> Result<Exit> {
    let offset = size_arg("--offset", &a.offset)?;
    let length = a
        .length
        .as_deref()
        .map(|l| size_arg("--length", l))
        .transpose()?;
    let policy = match a.flush {
        cli::FlushPolicy::End => FlushPolicy::End,
        cli::FlushPolicy::Always => FlushPolicy::Always,
        cli::FlushPolicy::Every(n) => FlushPolicy::Every(n),
    };
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
fn degraded_line(m: &mut Mirror, primary: &Path, told: &[u32]) -> Result<Option<String>> {
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
            behind.push(format!("slot {s} ({}, {n} region(s) to copy)", l.location));
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

fn stdin_input() -> (Box<dyn Read>, Option<u64>) {
    use std::os::fd::AsFd;
    let stdin = io::stdin();
    let len = rustix::fs::fstat(stdin.as_fd())
        .ok()
        .filter(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
        .map(|st| st.st_size as u64);
    (Box::new(stdin), len)
}

// ---------------------------------------------------------------------------------------
// read

fn read(ctx: &Ctx, a: cli::ReadArgs) -> Result<Exit> {
    let offset = size_arg("--offset", &a.offset)?;
    let length = a
        .length
        .as_deref()
        .map(|l| size_arg("--length", l))
        .transpose()?;
    let mut m = open_mirror(ctx, &a.primary, Mode::Shared).map_err(|mut e| {
        if e.exit == Exit::Primary {
            // Without its header the leg table is unknown: say where the data still is.
            e.msg.push_str("; the primary's secondaries still hold the data: `mirrorctl status SECONDARY` shows which are in sync, `mirrorctl promote SECONDARY` makes one the primary");
        }
        e
    })?;
    print_warnings(&mut m);
    let g = m.geometry();
    if offset > g.data_size {
        return Err(Error::usage(format!(
            "--offset {offset} is past the end of the data area ({} bytes)",
            g.data_size
        )));
    }
    let len = match length {
        Some(l) if offset.checked_add(l).is_none_or(|e| e > g.data_size) => {
            return Err(Error::usage(format!(
                "--offset {offset} plus --length {l} runs past the end of the data area ({} bytes)",
                g.data_size
            )))
        }
        Some(l) => l,
        None => g.data_size - offset,
    };
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
                eprintln!(
                    "mirrorctl: warning: {why}; reading from in-sync secondary slot {slot} instead"
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

// ---------------------------------------------------------------------------------------
// fracture, detach

/// Whether a recorded location names the same image as `spec`: the same device and inode
/// for paths, the same canonical URI for NBD exports.
fn same_file(spec: &str) -> impl Fn(&str) -> bool {
    let uri = nbd::canonical(spec);
    let id = if uri.is_none() {
        identity(Path::new(spec)).ok()
    } else {
        None
    };
    move |loc: &str| match &uri {
        Some(u) => nbd::canonical(loc).as_ref() == Some(u),
        None => id.is_some() && !nbd::is_uri(loc) && identity(Path::new(loc)).ok() == id,
    }
}

fn fracture(ctx: &Ctx, a: cli::FractureArgs) -> Result<Exit> {
    let mut m = open_mirror(ctx, &a.primary, Mode::Exclusive)?;
    m.recover()?;
    let slot = m.find_slot(&a.secondary, &same_file(&a.secondary))?;
    let leg = m.sb().legs[slot as usize].clone();
    if m.fracture(slot, a.reason.as_deref())? {
        println!(
            "fractured slot {slot} ({}): its changes are tracked; `mirrorctl resync {} {slot}` brings it back",
            leg.location,
            display(&a.primary)
        );
    } else {
        println!(
            "slot {slot} ({}) is already {}",
            leg.location,
            leg.state.as_str()
        );
    }
    print_warnings(&mut m);
    Ok(Exit::Success)
}

fn detach(ctx: &Ctx, a: cli::DetachArgs) -> Result<Exit> {
    let mut m = open_mirror(ctx, &a.primary, Mode::Exclusive)?;
    m.recover()?;
    let slot = m.find_slot(&a.secondary, &same_file(&a.secondary))?;
    let leg = m.detach(slot)?;
    println!(
        "detached slot {slot} ({}, was {})",
        leg.location,
        leg.state.as_str()
    );
    print_warnings(&mut m);
    Ok(Exit::Success)
}

// ---------------------------------------------------------------------------------------
// resync

#[derive(Serialize)]
struct ResyncLegOut {
    slot: u32,
    path: String,
    regions: u64,
    bytes: u64,
    written_bytes: u64,
    /// Regions (and bytes) still out of sync on the leg afterwards, as status shows them.
    remaining_regions: u64,
    remaining_bytes: u64,
    state: String,
    error: Option<String>,
}

#[derive(Serialize)]
struct ResyncOut {
    dry_run: bool,
    compare: bool,
    regions: u64,
    bytes: u64,
    written_bytes: u64,
    seconds: f64,
    legs: Vec<ResyncLegOut>,
}

fn resync(ctx: &Ctx, a: cli::ResyncArgs) -> Result<Exit> {
    let rate = rate_arg(a.rate.as_deref())?;
    let mut m = if a.dry_run {
        open_mirror(ctx, &a.primary, Mode::Exclusive)?
    } else {
        open_for_change(ctx, &a.primary)?
    };
    print_warnings(&mut m);
    let mut slots = Vec::new();
    for s in &a.secondaries {
        let slot = m.find_slot(s, &same_file(s))?;
        if !slots.contains(&slot) {
            slots.push(slot);
        }
    }
    if a.secondaries.is_empty() {
        slots = m.resync_candidates()?;
        if a.dry_run {
            // Pending write intents (unclean stop) will be added to every leg.
            for s in 0..m.geometry().slots {
                if m.sb().legs[s as usize].state != LegState::Empty
                    && !slots.contains(&s)
                    && m.pending_for(s)?.0 > 0
                {
                    slots.push(s);
                }
            }
            slots.sort();
        }
    }
    let mut out = ResyncOut {
        dry_run: a.dry_run,
        compare: a.compare,
        regions: 0,
        bytes: 0,
        written_bytes: 0,
        seconds: 0.0,
        legs: vec![],
    };
    let mut exit = Exit::Success;
    if a.dry_run {
        for &s in &slots {
            let (regions, bytes) = m.pending_for(s)?;
            let l = &m.sb().legs[s as usize];
            out.regions += regions;
            out.bytes += bytes;
            // At most: --compare finds out while it runs.
            out.written_bytes += bytes;
            out.legs.push(ResyncLegOut {
                slot: s,
                path: l.location.clone(),
                regions,
                bytes,
                written_bytes: bytes,
                remaining_regions: regions,
                remaining_bytes: bytes,
                state: l.state.as_str().to_string(),
                error: None,
            });
        }
    } else if !slots.is_empty() {
        let bar = Bar::new(ctx, "resync");
        let opts = engine::ResyncOptions {
            rate,
            compare: a.compare,
        };
        let r = m.resync_with(&slots, &opts, &bar)?;
        out.seconds = r.seconds;
        for l in r.legs {
            let state = m.sb().legs[l.slot as usize].state;
            if l.error.is_some() || state != LegState::InSync {
                exit = Exit::Degraded;
            }
            if let Some(e) = &l.error {
                eprintln!(
                    "mirrorctl: resync of slot {} ({}) failed: {e}",
                    l.slot, l.location
                );
            }
            out.regions += l.regions;
            out.bytes += l.bytes;
            out.written_bytes += l.written_bytes;
            let (remaining_regions, remaining_bytes) = m.pending_for(l.slot)?;
            out.legs.push(ResyncLegOut {
                slot: l.slot,
                path: l.location,
                regions: l.regions,
                bytes: l.bytes,
                written_bytes: l.written_bytes,
                remaining_regions,
                remaining_bytes,
                state: state.as_str().to_string(),
                error: l.error,
            });
        }
    }
    print_warnings(&mut m);
    if a.json {
        print_json(&out)?;
    } else if slots.is_empty() {
        println!("nothing to resync: every secondary is in sync");
    } else {
        for l in &out.legs {
            if a.dry_run {
                println!(
                    "slot {} ({}): would copy {} regions ({}, {} bytes)",
                    l.slot,
                    l.path,
                    l.regions,
                    format_size(l.bytes),
                    l.bytes
                );
            } else if a.compare {
                println!(
                    "slot {} ({}): compared {} regions ({}), wrote {} ({} bytes); state {}",
                    l.slot,
                    l.path,
                    l.regions,
                    format_size(l.bytes),
                    format_size(l.written_bytes),
                    l.written_bytes,
                    l.state
                );
            } else {
                println!(
                    "slot {} ({}): copied {} regions ({}, {} bytes); state {}",
                    l.slot,
                    l.path,
                    l.regions,
                    format_size(l.bytes),
                    l.bytes,
                    l.state
                );
            }
        }
    }
    Ok(exit)
}

// ---------------------------------------------------------------------------------------
// verify

fn verify(ctx: &Ctx, a: cli::VerifyArgs) -> Result<Exit> {
    use crate::engine::plan::Verdict;
    use crate::engine::verify::{self, VerifyOpts};
    let max_time = a
        .max_time
        .as_deref()
        .map(|d| {
            crate::units::parse_duration(d).map_err(|e| Error::usage(format!("--max-time: {e}")))
        })
        .transpose()?;
    let path = a.primary.clone();
    let mut open =
        |first: bool, remaining: Option<std::time::Duration>| -> Result<Option<Mirror>> {
            let wait = match (first, remaining) {
                (true, _) => ctx.wait,
                (false, Some(d)) => Wait::For(d),
                (false, None) => Wait::Forever,
            };
            match open_mirror_wait(&path, Mode::Exclusive, wait) {
                Ok(m) if first => m.refuse_if_replaced().map(|()| Some(m)),
                Ok(m) => Ok(Some(m)),
                Err(e) if !first && e.exit == Exit::Busy => Ok(None),
                Err(e) => Err(e),
            }
        };
    let specs = a.secondaries.clone();
    let slots_for = |m: &Mirror| -> Result<Vec<u32>> {
        if specs.is_empty() {
            return Ok((0..m.geometry().slots)
                .filter(|&s| m.sb().legs[s as usize].state != LegState::Empty)
                .collect());
        }
        let mut v = Vec::new();
        for s in &specs {
            let slot = m.find_slot(s, &same_file(s))?;
            if !v.contains(&slot) {
                v.push(slot);
            }
        }
        Ok(v)
    };
    let opts = VerifyOpts {
        repair: a.repair,
        max_time,
        restart: a.restart,
    };
    let bar = Bar::new(ctx, "verify");
    let (report, verdict, warnings) = verify::run(&mut open, &slots_for, &opts, &bar)?;
    let exit = match verdict {
        Verdict::Differences => Exit::Differences,
        Verdict::Incomplete => Exit::Degraded,
        Verdict::Clean | Verdict::Repaired => Exit::Success,
    };
    for w in warnings {
        eprintln!("mirrorctl: {w}");
    }
    if a.json {
        print_json(&report)?;
        return Ok(exit);
    }
    let bytes = report.bytes_compared;
    println!(
        "verified regions {}..{} of {}{}: {} compared in {:.1}s ({}/s)",
        report.start_region,
        report.end_region,
        report.region_count,
        if report.complete {
            " (pass complete)"
        } else {
            " (stopped at the time budget; the next --max-time run continues here)"
        },
        format_size(bytes),
        report.seconds,
        format_size(report.bytes_per_second as u64)
    );
    for l in &report.legs {
        if let Some(why) = &l.skipped {
            println!("slot {} ({}): {why}", l.slot, l.path);
            continue;
        }
        if let Some(e) = &l.error {
            println!("slot {} ({}): error: {e}", l.slot, l.path);
        }
        let pending = if false {
            String::new()
        } else if l.pending_regions > 0 {
            format!(
                ", {} regions pending resync not compared",
                l.pending_regions
            )
        } else {
            String::new()
        };
        if l.mismatched_regions == 0 {
            // A leg that could not be read is not "identical".
            if l.error.is_none() {
                println!("slot {} ({}): identical{pending}", l.slot, l.path);
            }
            continue;
        }
        println!(
            "slot {} ({}): {} mismatched regions ({}){}{pending}",
            l.slot,
            l.path,
            l.mismatched_regions,
            format_size(l.mismatched_bytes),
            if l.repaired { ", repaired" } else { "" }
        );
        for r in &l.mismatches {
            println!(
                "  regions {}..{}  bytes {}..{} ({} bytes)",
                r.first_region,
                r.end_region,
                r.offset,
                r.offset + r.length,
                r.length
            );
        }
    }
    println!("result: {}", report.result);
    Ok(exit)
}

// ---------------------------------------------------------------------------------------
// promote

#[derive(Serialize)]
struct PromoteOut {
    path: String,
    generation: u64,
    old_primary_slot: u32,
    old_primary_reachable: bool,
    notes: Vec<String>,
}

fn promote(ctx: &Ctx, a: cli::PromoteArgs) -> Result<Exit> {
    let name = display(&a.secondary);
    let dev: Arc<dyn Device> = if nbd::is_uri(&name) {
        // An export has no lock to take: the admin makes sure nothing else uses the image
        // (see README, Remote secondaries).
        Arc::new(
            open_nbd(&name, true)
                .map_err(|e| Error::usage(format!("opening secondary {name}: {e}")))?,
        )
    } else {
        let dev = FileDevice::open(&a.secondary, true)
            .map_err(|e| open_error("opening", &a.secondary, e))?;
        lock::lock(dev.file().unwrap(), Mode::Exclusive, ctx.wait, &name)?;
        Arc::new(dev)
    };
    let img = Image::read(dev.clone()).map_err(|e| engine::read_error(&name, e, &*dev))?;
    if img.sb.role == Role::Primary {
        drop(img);
        return finish_promotion(ctx, dev, &name, a.json);
    }
    // The former primary, if it can be reached: it is the authority on how current this
    // image is, and it must not be written while it is demoted.
    let mut old = None;
    if img.sb.role == Role::Secondary && !img.sb.primary_location.is_empty() {
        let p = PathBuf::from(&img.sb.primary_location);
        match open_mirror_wait(&p, Mode::Exclusive, ctx.wait) {
            // No recovery here: promote's checks read the write-intent log as it is, so a
            // refusal leaves both images exactly as they were (its log plan includes the
            // intents, P3).
            Ok(mut m) => {
                print_warnings(&mut m);
                old = Some(m);
            }
            Err(e) if e.exit == Exit::Busy => return Err(e),
            Err(e) => eprintln!("mirrorctl: note: former primary not used: {e}"),
        }
    }
    drop(img);
    let opener = Arc::new(FileOpener { writable: true });
    let (out, mut m) = crate::engine::failover::promote(dev, &name, old, a.force, opener)?;
    print_warnings(&mut m);
    let res = PromoteOut {
        path: name.clone(),
        generation: out.generation,
        old_primary_slot: out.old_primary_slot,
        old_primary_reachable: out.old_primary_reachable,
        notes: out.notes,
    };
    if a.json {
        print_json(&res)?;
    } else {
        println!("promoted {name} to primary (generation {})", res.generation);
        for n in &res.notes {
            println!("  {n}");
        }
    }
    health_exit(&mut m)
}

/// `promote` of an image that is already the primary: finishes an interrupted promotion
/// (P7) when the former primary's slot still holds an image that was not demoted, or says
/// there is nothing to promote.
fn finish_promotion(ctx: &Ctx, dev: Arc<dyn Device>, name: &str, json: bool) -> Result<Exit> {
    let mut m = Mirror::open(dev, name, Arc::new(FileOpener { writable: true }), true)?;
    let Some((slot, leg)) = m.unfinished_demotion() else {
        return Err(Error::usage(format!(
            "{name} is already the primary of mirror {}; there is nothing to promote",
            engine::uuid_str(&m.sb().mirror_uuid)
        )));
    };
    let old_path = PathBuf::from(leg.open_path());
    let (old_dev, canonical): (Arc<dyn Device>, String) = if nbd::is_uri(&leg.location) {
        nbd_secondary(&leg.location)?
    } else {
        let d = FileDevice::open(&old_path, true)
            .map_err(|e| open_error("opening the former primary", &old_path, e))?;
        lock::lock(d.file().unwrap(), Mode::Exclusive, ctx.wait, &leg.location)?;
        (Arc::new(d), leg.canonical.clone())
    };
    m.recover()?;
    let outcome = m.attach(
        old_dev,
        &leg.location,
        &canonical,
        engine::InitialSync::Copy,
        false,
        false,
    )?;
    print_warnings(&mut m);
    let note = format!(
        "finished an interrupted promotion: the former primary {} is now slot {slot} of {name}, with {} region(s) to copy: run `mirrorctl resync {name}`",
        leg.location, outcome.regions
    );
    if json {
        print_json(&PromoteOut {
            path: name.to_string(),
            generation: m.sb().generation,
            old_primary_slot: slot,
            old_primary_reachable: true,
            notes: vec![note],
        })?;
    } else {
        println!(
            "{name} is already the primary (generation {})",
            m.sb().generation
        );
        println!("  {note}");
    }
    health_exit(&mut m)
}
