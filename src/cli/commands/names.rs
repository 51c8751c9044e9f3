//! Mirrors by name, at the edge: the configuration directory and its `NAME.toml` files
//! (read, written atomically, removed), a command's IMAGE/PRIMARY argument resolved to the
//! named mirror's primary before the command runs (checked against the image's header, with
//! the `[serve]`/`[verify]` defaults filled in), `mirrorctl name`, and the name following a
//! promotion. The rules themselves are pure, in `crate::config`.

use super::*;
use crate::config::{self, Arg, MirrorConfig, Name};
use clap::parser::ValueSource;
use clap::ArgMatches;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::sync::OnceLock;

/// The configuration directory: `MIRRORCTL_CONFIG_DIR`, or /etc/mirrorctl.
pub fn dir() -> PathBuf {
    match std::env::var_os(config::DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(config::DEFAULT_DIR),
    }
}

/// A named mirror's file, read and checked.
pub(super) struct Entry {
    pub(super) name: Name,
    pub(super) file: PathBuf,
    pub(super) config: MirrorConfig,
    /// The file's text (kept to rewrite it in place).
    pub(super) text: String,
}

fn file_of(name: &Name) -> PathBuf {
    dir().join(name.file_name())
}

/// Reads `NAME.toml`; a file that cannot be read or parsed is an error naming it (exit 2).
pub(super) fn load(name: &Name) -> Result<Entry> {
    let file = file_of(name);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        Error::invalid(format!(
            "reading {}: {}",
            file.display(),
            crate::error::describe_io(&e)
        ))
    })?;
    let config = config::parse(&text, &display(&file), name).map_err(Error::invalid)?;
    Ok(Entry {
        name: name.clone(),
        file,
        config,
        text,
    })
}

/// Every `*.toml` in the directory, by name: the entry, or why it cannot be used. A
/// missing directory has none.
pub(super) fn all() -> Result<Vec<(String, PathBuf, Result<Entry>)>> {
    let d = dir();
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::invalid(format!(
                "reading the configuration directory {}: {}",
                d.display(),
                crate::error::describe_io(&e)
            )))
        }
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = fname.strip_suffix(".toml") else {
            continue;
        };
        // Editor backups and our own temporary files start with a dot.
        if stem.starts_with('.') {
            continue;
        }
        let entry = Name::parse(stem)
            .map_err(|e| Error::invalid(format!("{}: {e}", e_path(&d, &fname))))
            .and_then(|n| load(&n));
        out.push((stem.to_string(), d.join(&fname), entry));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn e_path(d: &Path, f: &str) -> String {
    d.join(f).display().to_string()
}

/// Writes `text` to `file` atomically: a temporary file beside it, synced, mode 0644,
/// renamed over it, the directory synced. The directory is made (0755) if missing.
pub(super) fn write_atomic(file: &Path, text: &str) -> Result<()> {
    let d = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let fail = |what: &str, e: io::Error| {
        Error::invalid(format!(
            "{what} {}: {}",
            file.display(),
            crate::error::describe_io(&e)
        ))
    };
    make_dir(&d)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = d.join(format!(".{name}.tmp-{}", std::process::id()));
    let guard = create::RemoveOnDrop(Some(tmp.clone()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| fail("writing", e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| fail("writing", e))?;
    // The mode whatever the umask.
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| fail("writing", e))?;
    f.sync_all().map_err(|e| fail("syncing", e))?;
    drop(f);
    std::fs::rename(&tmp, file).map_err(|e| fail("renaming into place", e))?;
    let mut guard = guard;
    guard.0 = None;
    sync_dir(&d).map_err(|e| fail("syncing the directory of", e))
}

/// The configuration directory, made (mode 0755) if missing.
pub(super) fn make_dir(d: &Path) -> Result<()> {
    if d.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(d)
        .and_then(|_| std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| {
            Error::invalid(format!(
                "making the configuration directory {}: {}",
                d.display(),
                crate::error::describe_io(&e)
            ))
        })
}

fn sync_dir(d: &Path) -> io::Result<()> {
    File::open(d)?.sync_all()
}

/// Removes a name's file, durably.
fn remove(e: &Entry) -> Result<()> {
    std::fs::remove_file(&e.file).map_err(|x| {
        Error::invalid(format!(
            "removing {}: {}",
            e.file.display(),
            crate::error::describe_io(&x)
        ))
    })?;
    let d = e.file.parent().map(Path::to_path_buf).unwrap_or_default();
    sync_dir(&d).map_err(|x| {
        Error::invalid(format!(
            "syncing {}: {}",
            d.display(),
            crate::error::describe_io(&x)
        ))
    })
}

/// The location recorded for a primary: a block device's /dev/disk name where it has
/// one (as attach records legs), else the absolute path as given (symlinks kept).
pub(super) fn location_of(p: &Path) -> String {
    crate::device::open::stable_name(p)
        .or_else(|| std::path::absolute(p).ok())
        .map(|p| display(&p))
        .unwrap_or_else(|| display(p))
}

/// The command line a command handed to a serving process carries: as typed, plus the
/// `[verify]` defaults a name filled in (the server reads its options from the line).
static FORWARDED: OnceLock<Vec<String>> = OnceLock::new();

pub(super) fn forwarded_args() -> Vec<String> {
    FORWARDED
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::args().skip(1).collect())
}

/// The IMAGE/PRIMARY argument of the commands that take one.
fn primary_of(cmd: &mut Command) -> Option<&mut PathBuf> {
    match cmd {
        Command::Status(a) => a.image.as_mut(),
        Command::Events(a) => Some(&mut a.primary),
        Command::Attach(a) => Some(&mut a.primary),
        Command::Write(a) => Some(&mut a.primary),
        Command::Read(a) => Some(&mut a.primary),
        Command::Fracture(a) => Some(&mut a.primary),
        Command::Resync(a) => Some(&mut a.primary),
        Command::Detach(a) => Some(&mut a.primary),
        Command::Verify(a) => Some(&mut a.primary),
        Command::Serve(a) => Some(&mut a.primary),
        Command::Set(a) => Some(&mut a.primary),
        Command::CompleteLegs(a) => Some(&mut a.primary),
        Command::Create(_)
        | Command::Export(_)
        | Command::Promote(_)
        | Command::Name(_)
        | Command::Generate(_)
        | Command::OcfAgent(_)
        | Command::CompleteNames => None,
    }
}

/// One step before a command runs: a NAME given for its IMAGE/PRIMARY becomes the named
/// mirror's primary (checked to be it), and `serve`/`verify` get the file's defaults for
/// the options not on the command line.
pub fn resolve(cli: &mut Cli, matches: &ArgMatches) -> Result<()> {
    if let Command::Promote(a) = &cli.command {
        return promote_by_name(&display(&a.secondary));
    }
    let completing = matches!(cli.command, Command::CompleteLegs(_));
    let Some(arg) = primary_of(&mut cli.command) else {
        return Ok(());
    };
    let s = display(arg);
    let name = match Name::parse(&s) {
        Ok(n) if !s.contains('/') => n,
        _ => return Ok(()),
    };
    let file = file_of(&name);
    let named = file.exists();
    let local = std::fs::symlink_metadata(&s).is_ok();
    match config::classify(&s, named, local) {
        Arg::Path => return Ok(()),
        Arg::Ambiguous => {
            return Err(Error::invalid(format!(
                "{s} is ambiguous: it is the name of a mirror ({}) and a file in this directory; write ./{s} for the file",
                file.display()
            )))
        }
        Arg::Name => {}
    }
    if completing {
        if let Ok(e) = load(&name) {
            *arg = PathBuf::from(e.config.primary);
        }
        return Ok(());
    }
    let e = load(&name)?;
    check_primary(&e)?;
    *arg = PathBuf::from(&e.config.primary);
    let sub = matches.subcommand().map(|(_, m)| m);
    let given = |id: &str| sub.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
    match &mut cli.command {
        Command::Serve(a) => apply_serve(&e, a, &given)?,
        Command::Verify(a) => {
            let mut extra = Vec::new();
            if let (Some(true), false) = (e.config.verify.repair, given("repair")) {
                a.repair = true;
                extra.push("--repair".to_string());
            }
            if let (Some(t), false) = (&e.config.verify.max_time, given("max_time")) {
                a.max_time = Some(config::duration(t).map_err(|x| {
                    Error::invalid(format!("{}: [verify] max_time: {x}", e.file.display()))
                })?);
                extra.push(format!("--max-time={t}"));
            }
            let mut args: Vec<String> = std::env::args().skip(1).collect();
            args.extend(extra);
            let _ = FORWARDED.set(args);
        }
        _ => {}
    }
    Ok(())
}

/// `promote NAME`: a name stands for the primary, and promote takes a secondary; said
/// instead of "no such file".
fn promote_by_name(s: &str) -> Result<()> {
    let Ok(name) = Name::parse(s) else {
        return Ok(());
    };
    if s.contains('/') || !file_of(&name).exists() || std::fs::symlink_metadata(s).is_ok() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "promote takes the secondary to make the primary, not the mirror's name {s} (a name stands for the primary); give the secondary's path (`mirrorctl status {s}` lists the legs), and the name follows the promotion"
    )))
}

fn apply_serve(e: &Entry, a: &mut cli::ServeArgs, given: &dyn Fn(&str) -> bool) -> Result<()> {
    let s = &e.config.serve;
    let bad =
        |k: &str, why: String| Error::invalid(format!("{}: [serve] {k}: {why}", e.file.display()));
    // Where to listen is one choice: a --socket or --listen replaces the file's.
    if !given("socket") && !given("listen") {
        if let Some(p) = &s.socket {
            a.socket = Some(PathBuf::from(p));
        }
        if let Some(l) = &s.listen {
            a.listen = Some(l.clone());
        }
    }
    if let (Some(x), false) = (&s.export, given("export")) {
        a.export = x.clone();
    }
    if let (Some(x), false) = (s.read_only, given("read_only")) {
        a.read_only = x;
    }
    if let (Some(n), false) = (s.hot_extents, given("hot_extents")) {
        if (n as usize) < crate::engine::MIN_HOT_EXTENTS {
            return Err(bad(
                "hot_extents",
                format!(
                    "{n} is too few: at least {}",
                    crate::engine::MIN_HOT_EXTENTS
                ),
            ));
        }
        a.hot_extents = n as usize;
    }
    if let (Some(n), false) = (s.max_connections, given("max_connections")) {
        if n == 0 {
            return Err(bad("max_connections", "must be at least 1".into()));
        }
        a.server.max_connections = n as usize;
    }
    for (k, file, arg) in [
        ("tls_cert", &s.tls_cert, &mut a.server.tls_cert),
        ("tls_key", &s.tls_key, &mut a.server.tls_key),
        ("tls_ca", &s.tls_ca, &mut a.server.tls_ca),
    ] {
        if let (Some(p), false) = (file, given(k)) {
            *arg = Some(PathBuf::from(p));
        }
    }
    if let (Some(v), false) = (&s.tls_allow, given("tls_allow")) {
        a.server.tls_allow = v.clone();
    }
    if let (Some(t), false) = (&s.tls, given("tls")) {
        a.server.tls = Some(
            <crate::nbd_server::handshake::TlsPolicy as clap::ValueEnum>::from_str(t, false)
                .map_err(|x| bad("tls", x))?,
        );
    }
    for (k, file, arg) in [
        (
            "handshake_limit",
            &s.handshake_limit,
            &mut a.server.handshake_limit,
        ),
        (
            "write_timeout",
            &s.write_timeout,
            &mut a.server.write_timeout,
        ),
    ] {
        if let (Some(d), false) = (file, given(k)) {
            *arg = config::duration(d).map_err(|x| bad(k, x))?;
        }
    }
    if let (Some(x), false) = (s.insecure, given("insecure")) {
        a.server.insecure = x;
    }
    Ok(())
}

/// The named mirror's primary is that mirror's primary: its header holds the mirror UUID
/// the file records, it is not a secondary, and no leg of it was promoted over it.
pub(super) fn check_primary(e: &Entry) -> Result<()> {
    let p = PathBuf::from(&e.config.primary);
    let what = format!("mirror {} ({})", e.name, e.file.display());
    let dev = FileDevice::open(&p, false)
        .map_err(|x| open_error(&format!("{what}: opening its primary"), &p, x))?;
    let dev: Arc<dyn Device> = Arc::new(dev);
    let img = Image::read(dev.clone())
        .map_err(|x| engine::read_error(&e.config.primary, x, &*dev))
        .map_err(|x| Error::new(x.kind, format!("{what}: {x}")))?;
    let sb = &img.sb;
    let uuid = engine::uuid_str(&sb.mirror_uuid);
    if !uuid.eq_ignore_ascii_case(&e.config.mirror) {
        return Err(Error::invalid(format!(
            "{what}: its primary {} holds mirror {uuid}, not mirror {} as the file records (a stale configuration: the image was re-created or replaced); nothing was done. Point the name at the right primary with `mirrorctl name PRIMARY {} --force`, or remove it with `mirrorctl name --remove {}`",
            e.config.primary, e.config.mirror, e.name, e.name
        )));
    }
    let fix = |new: &str| {
        format!(
            "point the name at the new primary with `mirrorctl name {new} {}` (on the machine that holds it)",
            e.name
        )
    };
    if sb.role != Role::Primary {
        let new = if sb.primary_location.is_empty() {
            "its new primary".to_string()
        } else {
            sb.primary_location.clone()
        };
        return Err(Error::invalid(format!(
            "{what}: its configured primary {} is no longer the primary (it is a {} of {new}: a promotion replaced it); nothing was done. {}",
            e.config.primary,
            sb.role.as_str(),
            fix(if sb.primary_location.is_empty() { "NEW-PRIMARY" } else { &sb.primary_location })
        )));
    }
    // A promotion this primary did not see (it was away): one of its legs says so.
    for leg in sb.legs.iter().filter(|l| l.state() != LegState::Empty) {
        if nbd::is_uri(&leg.location) {
            continue;
        }
        let Ok(d) = FileDevice::open(Path::new(leg.open_path()), false) else {
            continue;
        };
        let Ok(theirs) = Image::read(Arc::new(d)) else {
            continue;
        };
        if let Some(new) = engine::failover::replaced_by(sb, leg, &theirs.sb) {
            return Err(Error::invalid(format!(
                "{what}: its configured primary {} was replaced by a promotion: {new} is the primary now; nothing was done. {}, then bring the old one back as a secondary with `mirrorctl attach {} {}`",
                e.config.primary,
                fix(&new),
                e.name,
                e.config.primary
            )));
        }
    }
    Ok(())
}

/// After a promotion: every name of the mirror `mirror` now points at `location`. Returns
/// the names updated; failures are warnings (the promotion itself is done).
pub(super) fn follow_promotion(mirror: &str, location: &str) -> Vec<String> {
    let mut done = Vec::new();
    let list = match all() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mirrorctl: warning: the mirror's names were not updated: {e}");
            return done;
        }
    };
    for (_, _, e) in list {
        let Ok(e) = e else { continue };
        if !e.config.mirror.eq_ignore_ascii_case(mirror) || e.config.primary == location {
            if e.config.mirror.eq_ignore_ascii_case(mirror) {
                done.push(e.name.to_string());
            }
            continue;
        }
        let r = config::set_primary(&e.text, &e.config.mirror, location)
            .map_err(|x| Error::invalid(format!("{}: {x}", e.file.display())))
            .and_then(|t| write_atomic(&e.file, &t));
        match r {
            Ok(()) => {
                eprintln!(
                    "mirrorctl: note: the name {} now points at {location} ({})",
                    e.name,
                    e.file.display()
                );
                done.push(e.name.to_string());
            }
            Err(x) => eprintln!(
                "mirrorctl: warning: the name {} still points at the former primary {}: {x}; run `mirrorctl name {location} {}`",
                e.name, e.config.primary, e.name
            ),
        }
    }
    done
}

#[derive(Serialize)]
struct Listed {
    name: String,
    mirror: String,
    primary: String,
    config: String,
}

/// `mirrorctl name`: list, record, or forget names.
pub(super) fn name_cmd(a: cli::NameArgs) -> Result<Exit> {
    if let Some(n) = &a.remove {
        let n = Name::parse(n).map_err(Error::invalid)?;
        let file = file_of(&n);
        if !file.exists() {
            return Err(Error::invalid(format!(
                "no mirror is named {n} (no {}); `mirrorctl name` lists the names",
                file.display()
            )));
        }
        // A broken file is removed all the same: that is how it is fixed.
        let e = load(&n).unwrap_or(Entry {
            name: n.clone(),
            file: file.clone(),
            config: MirrorConfig {
                name: n.to_string(),
                mirror: String::new(),
                primary: String::new(),
                serve: Default::default(),
                verify: Default::default(),
            },
            text: String::new(),
        });
        remove(&e)?;
        println!("forgot the name {n} ({} removed)", file.display());
        return Ok(Exit::Success);
    }
    let (Some(primary), Some(name)) = (&a.primary, &a.name) else {
        return list(a.json);
    };
    let name = Name::parse(name).map_err(Error::invalid)?;
    let loc = location_of(primary);
    let dev = FileDevice::open(primary, false).map_err(|e| open_error("opening", primary, e))?;
    let dev: Arc<dyn Device> = Arc::new(dev);
    let img = Image::read(dev.clone()).map_err(|e| engine::read_error(&loc, e, &*dev))?;
    let uuid = engine::uuid_str(&img.sb.mirror_uuid);
    if img.sb.role != Role::Primary {
        let of = if img.sb.primary_location.is_empty() {
            String::new()
        } else {
            format!(" of {}", img.sb.primary_location)
        };
        return Err(Error::invalid(format!(
            "{}: it is a {}{of}, not a primary: a name stands for a mirror's primary; name the primary{}",
            display(primary),
            img.sb.role.as_str(),
            if of.is_empty() { String::new() } else { format!(" (`mirrorctl name {} {name}`)", img.sb.primary_location) }
        )));
    }
    conflicts(&name, &uuid, &loc, a.force)?;
    let file = file_of(&name);
    // A primary a promotion replaced (it was away) is refused as a command by name would.
    check_primary(&Entry {
        name: name.clone(),
        file: file.clone(),
        config: MirrorConfig {
            name: name.to_string(),
            mirror: uuid.clone(),
            primary: display(primary),
            serve: Default::default(),
            verify: Default::default(),
        },
        text: String::new(),
    })?;
    let text = match load(&name) {
        // A file already (this mirror's, or another's with --force): its mirror and
        // primary change, its comments and [serve]/[verify] tables are kept.
        Ok(e) => config::set_primary(&e.text, &uuid, &loc).map_err(Error::invalid)?,
        Err(_) => config::render_new(&name, &uuid, &loc),
    };
    write_atomic(&file, &text)?;
    println!(
        "named mirror {uuid} {name}: primary {loc} ({})",
        file.display()
    );
    Ok(Exit::Success)
}

/// Whether `name` may be given to the mirror `uuid` whose primary is at `loc`: refused when
/// it names another mirror (unless `force`), or when the mirror already has another name.
pub(super) fn conflicts(name: &Name, uuid: &str, loc: &str, force: bool) -> Result<()> {
    for (stem, file, e) in all()? {
        let Ok(e) = e else {
            if stem == name.as_str() && !force {
                return Err(Error::invalid(format!(
                    "the name {name} is taken by {}, which cannot be read; give --force to replace it, or fix or remove the file",
                    file.display()
                )));
            }
            continue;
        };
        let same_mirror = e.config.mirror.eq_ignore_ascii_case(uuid);
        if stem == name.as_str() {
            if !same_mirror && !force {
                return Err(Error::invalid(format!(
                    "the name {name} is taken by mirror {} (primary {}, {}); nothing was changed. Remove it first with `mirrorctl name --remove {name}`, or give --force to point it at this mirror",
                    e.config.mirror,
                    e.config.primary,
                    file.display()
                )));
            }
        } else if same_mirror {
            return Err(Error::invalid(format!(
                "mirror {uuid} (primary {loc}) is already named {} ({}); nothing was changed. A mirror has one name: `mirrorctl name --remove {}` first to rename it",
                e.name,
                file.display(),
                e.name
            )));
        }
    }
    Ok(())
}

fn list(json: bool) -> Result<Exit> {
    let mut out = Vec::new();
    let mut bad = false;
    for (_, _, e) in all()? {
        match e {
            Ok(e) => out.push(Listed {
                name: e.name.to_string(),
                mirror: e.config.mirror,
                primary: e.config.primary,
                config: display(&e.file),
            }),
            Err(x) => {
                eprintln!("mirrorctl: {x}");
                bad = true;
            }
        }
    }
    if json {
        print_json(&out)?;
    } else {
        let w = out.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
        let mut o = io::stdout().lock();
        let r = (|| -> io::Result<()> {
            if !out.is_empty() {
                writeln!(o, "{:<w$}  {:<36}  PRIMARY", "NAME", "MIRROR")?;
            }
            for l in &out {
                writeln!(o, "{:<w$}  {:<36}  {}", l.name, l.mirror, l.primary)?;
            }
            Ok(())
        })();
        r.map_err(Error::output)?;
    }
    Ok(if bad { Exit::Usage } else { Exit::Success })
}

/// For the shell completions: every name, one per line.
pub(super) fn complete_names() -> Result<Exit> {
    if let Ok(list) = all() {
        for (stem, _, _) in list {
            if config::is_name(&stem) {
                println!("{stem}");
            }
        }
    }
    Ok(Exit::Success)
}
