//! The live record: what a running mirrorctl is doing to a mirror (command, pid, progress,
//! and for `serve` its clients, hot set and request rates), published at least every second
//! in the runtime directory so that `status` can show it without taking the mirror's lock.
//!
//! A record is believed only while its process lives: the pid must run with the start time
//! the record names (a reused pid is not believed). A command removes its record when it
//! ends; a killed one leaves a stale file that nothing believes and the next command
//! replaces. (`verify` lets go of the lock between batches and stays "running" meanwhile.)
//! The kernel's lock table (`/proc/locks`) names the holder of a busy mirror.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The live record's format; a reader ignores records of another version.
pub const VERSION: u32 = 1;

/// How often a running command rewrites its record.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Progress of a copy or compare, as the running process last published it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProgressRecord {
    /// What is being done: "resync", "verify", "attach" (initial sync), "write".
    pub phase: String,
    pub done_bytes: u64,
    /// Bytes the operation will process; null when not known (a pipe of unknown length).
    pub total_bytes: Option<u64>,
    /// 0 to 100; null without a total.
    pub percent: Option<f64>,
    /// Over the last few seconds.
    pub rate_bytes_per_second: u64,
    /// Seconds left at the recent rate; null without a total or before any progress.
    pub eta_seconds: Option<u64>,
}

/// A serving process's activity.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ServeRecord {
    /// Client connections open now.
    pub clients: u64,
    pub connections_total: u64,
    /// Extents hot now (marked in the write-intent log) and the most allowed.
    pub hot_extents: u64,
    pub hot_extents_max: u64,
    pub extent_bytes: u64,
    /// Hot extents kept marked after the primary failed a write or flush in them (they
    /// stay marked for the next command's recovery, however the server stops): the primary
    /// may not hold there what the legs do, so the mirror is not healthy. Absent in a record
    /// of an older mirrorctl (read as 0).
    #[serde(default)]
    pub pinned_extents: u64,
    pub writes_total: u64,
    pub written_bytes_total: u64,
    pub reads_total: u64,
    pub read_bytes_total: u64,
    pub flushes_total: u64,
    /// Rates over the last few seconds.
    pub writes_per_second: f64,
    pub written_bytes_per_second: f64,
    pub reads_per_second: f64,
    pub read_bytes_per_second: f64,
    pub flushes_per_second: f64,
    /// `--min-in-sync` now (the admin may change it live), the secondaries in sync and
    /// receiving writes, and why writes are refused (a write now would wait, then get an
    /// I/O error; null while they are acknowledged); writes and flushes refused so far.
    /// Absent in a record of an older mirrorctl.
    #[serde(default)]
    pub min_in_sync: u64,
    #[serde(default)]
    pub in_sync_secondaries: u64,
    #[serde(default)]
    pub writes_refused: Option<String>,
    #[serde(default)]
    pub refused_total: u64,
    /// Why writes wait now (a `--fence-peer` hook running), or null.
    #[serde(default)]
    pub writes_held: Option<String>,
}

/// One running command's record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    pub version: u32,
    /// The subcommand: "serve", "resync", "verify", "attach", "write".
    pub command: String,
    pub pid: u32,
    /// The process's start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub pid_start: u64,
    /// The primary as the command was given it.
    pub primary: String,
    pub started_at: String,
    pub updated_at: String,
    /// Seconds since the UNIX epoch of the update (for "last published N s ago").
    pub updated_unix: u64,
    /// The write intents on disk are this process's writes in flight (it recovered any
    /// unclean stop when it started), so status counts them neither as out of sync nor
    /// against health.
    pub write_intents_live: bool,
    pub progress: Option<ProgressRecord>,
    pub serve: Option<ServeRecord>,
}

/// Root's runtime directory, where a serve run as root (a system service) publishes.
pub const SYSTEM_DIR: &str = "/run/mirrorctl";

/// Where this process writes its runtime files: /run/mirrorctl for root, else the user's
/// runtime directory (`$XDG_RUNTIME_DIR/mirrorctl`, or `/tmp/mirrorctl-UID` without one).
/// Readers look in more places: see [`reader_dirs`].
pub fn runtime_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from(SYSTEM_DIR)
    } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(d).join("mirrorctl")
    } else {
        PathBuf::from(format!(
            "/tmp/mirrorctl-{}",
            rustix::process::geteuid().as_raw()
        ))
    }
}

/// Where a reader looks for the record of the command running on a mirror, whoever runs
/// it: root's directory first (a serve run as a system service, read by an unprivileged
/// monitoring user), then this user's own, then other users' runtime directories
/// (`/run/user/UID/mirrorctl`, `/tmp/mirrorctl-UID`) as far as this user may read them.
/// A record is believed only from the process it names, in a file of that process's user,
/// who must be root, the reader or the image's owner ([`find`]): a directory others can
/// write to cannot plant one.
pub fn reader_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(SYSTEM_DIR), runtime_dir()];
    let mut others: Vec<PathBuf> = std::fs::read_dir("/run/user")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("mirrorctl"))
        .collect();
    others.extend(
        std::fs::read_dir("/tmp")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("mirrorctl-"))
                    .is_some_and(|uid| uid.parse::<u32>().is_ok())
            })
            .map(|e| e.path()),
    );
    others.sort();
    for d in others {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs.dedup();
    dirs
}

/// The record's file name for an image of (device, inode).
fn record_name(dev: u64, ino: u64) -> String {
    format!("live-{dev:x}-{ino}.json")
}

/// The file identity locks are keyed by: (device, inode) of the open primary.
fn identity(file: &File) -> io::Result<(u64, u64)> {
    let md = file.metadata()?;
    Ok((md.dev(), md.ino()))
}

/// The record's path for an open primary: named by its device and inode, so every path to
/// the same image (a symlink, a by-id name) finds the same record.
pub fn record_path(file: &File) -> io::Result<PathBuf> {
    let (dev, ino) = identity(file)?;
    Ok(runtime_dir().join(record_name(dev, ino)))
}

/// Start time of a process in clock ticks after boot, or `None` if it is gone.
pub fn pid_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process a record names still runs: the pid with the start time it names,
/// and not a zombie (a process that has exited but was not reaped yet holds no file and no
/// lock any more).
pub fn still_running(rec: &Record) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", rec.pid)) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|st| st == "Z" || st == "X");
    !zombie && pid_start(rec.pid) == Some(rec.pid_start)
}

/// Pids holding a lock on the file (device, inode), from the kernel's lock table.
fn lock_holders(locks: &str, dev: u64, ino: u64) -> Vec<u32> {
    lock_holders_of(locks, dev, ino, false)
}

/// [`lock_holders`]; only exclusive (WRITE) holders when `exclusive`.
fn lock_holders_of(locks: &str, dev: u64, ino: u64, exclusive: bool) -> Vec<u32> {
    let (maj, min) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let want = format!("{maj:02x}:{min:02x}:{ino}");
    locks
        .lines()
        .filter_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:10011325 0 EOF"; a blocked waiter's
            // line starts with "1: ->" and holds nothing.
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6
                && f[1] != "->"
                && f[1] == "FLOCK"
                && f[5] == want
                && (!exclusive || f[3] == "WRITE"))
                .then(|| f[4].parse().ok())
                .flatten()
        })
        .collect()
}

/// The record of the command running on the mirror now, if one published it, wherever
/// its process (of any user) wrote it ([`reader_dirs`]).
pub fn read(file: &File) -> Option<Record> {
    find(file).map(|(r, _)| r)
}

/// [`read`], with the path the record was found at (the serving process's control socket
/// is beside it).
pub fn find(file: &File) -> Option<(Record, PathBuf)> {
    let md = file.metadata().ok()?;
    let name = record_name(md.dev(), md.ino());
    let me = rustix::process::geteuid().as_raw();
    reader_dirs().into_iter().find_map(|d| {
        let path = d.join(&name);
        read_one(&path, me, md.uid()).map(|r| (r, path))
    })
}

/// The record at `path` if it is believed: from a living process of its start time and
/// version, in a file written by a user trusted with the mirror ([`trusted_writer`]) that
/// runs that process. (Another user could otherwise plant a record, and a control socket
/// beside it, for an image it can merely read.)
fn read_one(path: &Path, me: u32, image_owner: u32) -> Option<Record> {
    let owner = std::fs::metadata(path).ok()?.uid();
    if !trusted_writer(owner, me, image_owner) {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let rec: Record = serde_json::from_str(&text).ok()?;
    let pid_uid = std::fs::metadata(format!("/proc/{}", rec.pid)).ok()?.uid();
    if owner != 0 && owner != pid_uid {
        return None;
    }
    believe(rec, pid_start)
}

/// Whether a record file owned by `owner` is believed by user `me` for an image owned by
/// `image_owner`: written by root, by this user, or by the image's owner.
fn trusted_writer(owner: u32, me: u32, image_owner: u32) -> bool {
    owner == 0 || owner == me || owner == image_owner
}

/// Pids other than this one holding an exclusive lock on the open primary: a command that
/// changes the mirror, whose live record this user may not be able to read (another user's
/// runtime directory). Read from the kernel's lock table, so nothing is locked to ask.
pub fn writers(file: &File) -> Vec<u32> {
    let Ok((dev, ino)) = identity(file) else {
        return Vec::new();
    };
    let me = std::process::id();
    std::fs::read_to_string("/proc/locks")
        .map(|l| lock_holders_of(&l, dev, ino, true))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| *p != me)
        .collect()
}

fn believe(rec: Record, start_of: impl Fn(u32) -> Option<u64>) -> Option<Record> {
    (rec.version == VERSION && start_of(rec.pid) == Some(rec.pid_start)).then_some(rec)
}

/// Pids holding the lock of an open primary (for naming a busy mirror's holder).
pub fn holders(file: &File) -> Vec<u32> {
    let Ok((dev, ino)) = identity(file) else {
        return Vec::new();
    };
    let me = std::process::id();
    std::fs::read_to_string("/proc/locks")
        .map(|l| lock_holders(&l, dev, ino))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| *p != me)
        .collect()
}

/// Progress counters a running operation updates (lock-free) and the publisher reads.
#[derive(Default)]
pub struct ProgressCounters {
    done: AtomicU64,
    /// u64::MAX while unknown.
    total: AtomicU64,
    phase: Mutex<String>,
}

impl ProgressCounters {
    pub fn new() -> ProgressCounters {
        ProgressCounters {
            total: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }
    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_string();
    }
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }
    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A source of serve counters, asked at every publication.
pub type ServeSource = Box<dyn Fn() -> ServeRecord + Send + Sync>;

struct Shared {
    path: PathBuf,
    base: Record,
    progress: Mutex<Arc<ProgressCounters>>,
    serve: Mutex<Option<ServeSource>>,
    /// (stop, publish now: something changed that status should see at once).
    stop: Mutex<(bool, bool)>,
    wake: Condvar,
    failed: AtomicBool,
}

/// Publishes a command's record until dropped (then removes it).
pub struct Publisher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// Starts publishing for `command` on the open (and locked) primary `file`. Never fails
    /// the command: a runtime directory that cannot be written only means status shows less.
    /// `write_intents_live`: see [`Record::write_intents_live`].
    pub fn start(file: &File, primary: &str, command: &str, write_intents_live: bool) -> Publisher {
        let pid = std::process::id();
        let now = crate::units::now_unix();
        let base = Record {
            version: VERSION,
            command: command.to_string(),
            pid,
            pid_start: pid_start(pid).unwrap_or(0),
            primary: primary.to_string(),
            started_at: crate::units::format_time(now),
            updated_at: String::new(),
            updated_unix: 0,
            write_intents_live,
            progress: None,
            serve: None,
        };
        let path = record_path(file).unwrap_or_else(|_| runtime_dir().join("live-unknown.json"));
        let shared = Arc::new(Shared {
            path,
            base,
            progress: Mutex::new(Arc::new(ProgressCounters::new())),
            serve: Mutex::new(None),
            stop: Mutex::new((false, false)),
            wake: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        // The first record is written before the command goes on (a server listens only
        // then), so a `status` that finds the command at work also finds its record; the
        // thread publishes from then on (and says so if it cannot).
        let _ = write_atomically(
            &shared.path,
            &snapshot(
                &shared,
                &mut Window {
                    samples: Default::default(),
                },
            ),
        );
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("live-record".into())
            .spawn(move || publish_loop(&s))
            .ok();
        Publisher { shared, thread }
    }

    pub fn progress(&self) -> Arc<ProgressCounters> {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes the progress `counters` count (a progress bar's, say) from now on.
    pub fn follow(&self, counters: Arc<ProgressCounters>) {
        *self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = counters;
        self.poke();
    }

    /// Serve counters come from `src` at every publication.
    pub fn set_serve(&self, src: ServeSource) {
        *self.shared.serve.lock().unwrap_or_else(|p| p.into_inner()) = Some(src);
        self.poke();
    }

    /// Publishes at once rather than at the next tick.
    fn poke(&self) {
        self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.shared.path);
    }
}

/// Rates from a few seconds of samples.
struct Window {
    samples: std::collections::VecDeque<(Instant, Vec<f64>)>,
}

impl Window {
    const SPAN: Duration = Duration::from_secs(5);

    /// Adds a sample of cumulative counters; returns their rates per second over the span.
    fn rates(&mut self, now: Instant, values: Vec<f64>) -> Vec<f64> {
        // Counters added since (a server started after its record): the window starts again.
        if self
            .samples
            .front()
            .is_some_and(|(_, v)| v.len() != values.len())
        {
            self.samples.clear();
        }
        self.samples.push_back((now, values.clone()));
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > Self::SPAN + PUBLISH_EVERY
        {
            self.samples.pop_front();
        }
        let (t0, v0) = &self.samples[0];
        let dt = now.duration_since(*t0).as_secs_f64();
        values
            .iter()
            .zip(v0)
            .map(|(v, o)| if dt > 0.0 { (v - o).max(0.0) / dt } else { 0.0 })
            .collect()
    }
}

/// Blocks every signal in the calling thread: a helper thread leaves signals to the
/// command's own threads (serve waits for SIGTERM in one of them); delivered to a helper, a
/// SIGTERM would end the process before its clean stop.
pub fn block_signals() {
    // SAFETY: sigfillset and pthread_sigmask on a local set, for this thread only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

fn publish_loop(s: &Shared) {
    block_signals();
    let mut window = Window {
        samples: Default::default(),
    };
    loop {
        let rec = snapshot(s, &mut window);
        if let Err(e) = write_atomically(&s.path, &rec) {
            // Said once; the command itself goes on.
            if !s.failed.swap(true, Ordering::Relaxed) {
                crate::systemd::eprint_at(
                    crate::systemd::Priority::Warning,
                    &format!(
                        "mirrorctl: warning: cannot publish progress for status in {}: {e}",
                        s.path.display()
                    ),
                );
            }
        }
        let mut st = s.stop.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + PUBLISH_EVERY;
        while !st.0 && !st.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = s
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if st.0 {
            return;
        }
        st.1 = false;
    }
}

fn snapshot(s: &Shared, window: &mut Window) -> Record {
    let now = Instant::now();
    let unix = crate::units::now_unix();
    let mut rec = s.base.clone();
    rec.updated_at = crate::units::format_time(unix);
    rec.updated_unix = unix;
    let serve = s
        .serve
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|f| f());
    let progress = s.progress.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let phase = progress
        .phase
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let done = progress.done.load(Ordering::Relaxed);
    let total = progress.total.load(Ordering::Relaxed);
    let total = (total != u64::MAX).then_some(total);
    let mut sample = vec![done as f64];
    if let Some(sv) = &serve {
        sample.extend([
            sv.writes_total as f64,
            sv.written_bytes_total as f64,
            sv.reads_total as f64,
            sv.read_bytes_total as f64,
            sv.flushes_total as f64,
        ]);
    }
    let r = window.rates(now, sample);
    if !phase.is_empty() {
        let done = total.map_or(done, |t| done.min(t));
        let rate = r[0] as u64;
        rec.progress = Some(ProgressRecord {
            phase,
            done_bytes: done,
            total_bytes: total,
            percent: total.map(|t| {
                if t == 0 {
                    100.0
                } else {
                    (done as f64 * 100.0 / t as f64).min(100.0)
                }
            }),
            rate_bytes_per_second: rate,
            eta_seconds: total.and_then(|t| (rate > 0).then(|| (t - done).div_ceil(rate))),
        });
    }
    if let Some(mut sv) = serve {
        sv.writes_per_second = r[1];
        sv.written_bytes_per_second = r[2];
        sv.reads_per_second = r[3];
        sv.read_bytes_per_second = r[4];
        sv.flushes_per_second = r[5];
        rec.serve = Some(sv);
    }
    rec
}

/// Writes `rec` to `path` so that a reader sees the old record or the new one, whole.
fn write_atomically(path: &Path, rec: &Record) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
        // Readable by others whatever the umask: a monitoring user runs `status` (the
        // record holds no secret: the command, its pid, the primary's path, counters).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    // One temporary name per record (a process killed while writing it leaves one file, which
    // the next writer replaces), renamed over the record.
    let tmp = path.with_extension("json.tmp");
    // Built in memory and written with one write() (serde_json on the file made one small
    // write per token: about 166 per publish, twice a second).
    let mut bytes = serde_json::to_vec(rec).map_err(io::Error::other)?;
    bytes.push(b'\n');
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(&bytes)?;
    }
    std::fs::rename(&tmp, path)
}

/// One line for people: what runs and how far it got.
pub fn describe(r: &Record) -> String {
    use crate::units::{format_size, plural};
    let mut s = format!("{} (pid {}) since {}", r.command, r.pid, r.started_at);
    if let Some(p) = &r.progress {
        let rate = format!("{}/s", format_size(p.rate_bytes_per_second));
        s += &match (p.total_bytes, p.percent) {
            (Some(t), Some(pc)) => format!(
                ": {} {pc:.1} % ({} of {}), {rate}, ETA {}",
                p.phase,
                format_size(p.done_bytes),
                format_size(t),
                p.eta_seconds
                    .map(|e| crate::units::format_duration(Duration::from_secs(e)))
                    .unwrap_or_else(|| "unknown".into())
            ),
            _ => format!(": {} {} so far, {rate}", p.phase, format_size(p.done_bytes)),
        };
    }
    if let Some(v) = &r.serve {
        s += &format!(
            ": {}, hot set {} of {} extents ({}), {:.0} writes/s ({}/s), {:.0} reads/s ({}/s), {:.0} flushes/s",
            plural(v.clients, "client"),
            v.hot_extents,
            v.hot_extents_max,
            if v.pinned_extents > 0 {
                format!(
                    "{}, {} pinned after primary write errors",
                    format_size(v.hot_extents * v.extent_bytes),
                    v.pinned_extents
                )
            } else {
                format_size(v.hot_extents * v.extent_bytes)
            },
            v.writes_per_second,
            format_size(v.written_bytes_per_second as u64),
            v.reads_per_second,
            format_size(v.read_bytes_per_second as u64),
            v.flushes_per_second
        );
        if let Some(why) = &v.writes_held {
            s += &format!("; WRITES HELD: {why}");
        }
        if let Some(why) = &v.writes_refused {
            s += &format!("; WRITES REFUSED: {why} (--min-in-sync {})", v.min_in_sync);
        } else if v.min_in_sync > 0 {
            s += &format!(
                "; writes need {} in-sync (--min-in-sync), {} are",
                v.min_in_sync, v.in_sync_secondaries
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, start: u64) -> Record {
        Record {
            version: VERSION,
            command: "resync".into(),
            pid,
            pid_start: start,
            primary: "p.img".into(),
            started_at: String::new(),
            updated_at: String::new(),
            updated_unix: 0,
            write_intents_live: false,
            progress: None,
            serve: None,
        }
    }

    const LOCKS: &str = "1: FLOCK  ADVISORY  WRITE 4242 fe:00:10011325 0 EOF\n\
                         1: -> FLOCK  ADVISORY  READ 5151 fe:00:10011325 0 EOF\n\
                         2: POSIX  ADVISORY  WRITE 777 fe:00:10011325 0 EOF\n\
                         3: FLOCK  ADVISORY  READ 999 08:01:55 0 EOF\n";

    #[test]
    fn the_lock_table_names_the_pids_holding_a_flock_on_that_inode() {
        let dev = rustix::fs::makedev(0xfe, 0);
        // A blocked waiter and a POSIX lock hold nothing here.
        assert_eq!(lock_holders(LOCKS, dev, 10011325), vec![4242]);
        assert!(lock_holders(LOCKS, dev, 10011326).is_empty());
        assert_eq!(
            lock_holders(LOCKS, rustix::fs::makedev(8, 1), 55),
            vec![999]
        );
        assert!(lock_holders(LOCKS, rustix::fs::makedev(8, 2), 55).is_empty());
        // Only the exclusive holder is a writer.
        assert_eq!(lock_holders_of(LOCKS, dev, 10011325, true), vec![4242]);
        assert!(lock_holders_of(LOCKS, rustix::fs::makedev(8, 1), 55, true).is_empty());
    }

    #[test]
    fn a_record_is_believed_from_root_this_user_or_the_images_owner_only() {
        assert!(trusted_writer(0, 1000, 1000));
        assert!(trusted_writer(65534, 65534, 0));
        assert!(trusted_writer(65534, 0, 65534));
        // Another user who can merely read the image.
        assert!(!trusted_writer(1001, 65534, 0));
        assert!(!trusted_writer(1001, 0, 1000));
    }

    #[test]
    fn a_record_is_believed_only_from_a_living_process_of_that_start_time_and_version() {
        assert!(believe(rec(4242, 17), |_| Some(17)).is_some());
        assert!(believe(rec(4242, 17), |_| Some(18)).is_none());
        assert!(believe(rec(4242, 17), |_| None).is_none());
        let mut r = rec(4242, 17);
        r.version = VERSION + 1;
        assert!(believe(r, |_| Some(17)).is_none());
    }

    #[test]
    fn this_process_start_time_is_read_from_proc() {
        let a = pid_start(std::process::id()).expect("own stat");
        assert!(a > 0);
        assert_eq!(pid_start(std::process::id()), Some(a));
        assert_eq!(pid_start(u32::MAX), None);
    }

    #[test]
    fn rates_come_from_the_last_seconds_of_samples() {
        let mut w = Window {
            samples: Default::default(),
        };
        let t0 = Instant::now();
        assert_eq!(w.rates(t0, vec![0.0]), vec![0.0]);
        let r = w.rates(t0 + Duration::from_secs(1), vec![100.0]);
        assert!((r[0] - 100.0).abs() < 1e-9);
        // After a long quiet spell the old burst falls out of the window.
        for s in 2..20 {
            w.rates(t0 + Duration::from_secs(s), vec![100.0]);
        }
        let r = w.rates(t0 + Duration::from_secs(20), vec![100.0]);
        assert_eq!(r[0], 0.0);
        // More counters than before (serve's, added after the record started): one rate
        // each, from then on.
        let r = w.rates(t0 + Duration::from_secs(21), vec![100.0, 5.0, 7.0]);
        assert_eq!(r, vec![0.0, 0.0, 0.0]);
        let r = w.rates(t0 + Duration::from_secs(22), vec![100.0, 15.0, 7.0]);
        assert_eq!(r.len(), 3);
        assert!((r[1] - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_publisher_writes_its_record_with_progress_and_removes_it_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("img")).unwrap();
        let p = Publisher::start(&f, "img", "resync", false);
        p.progress().set_phase("resync");
        p.progress().set_total(1000);
        p.progress().advance(250);
        let path = record_path(&f).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            let r = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Record>(&t).ok());
            // A stale record another (killed) process left for a file whose inode this
            // temporary file reuses is not ours: wait for ours to replace it.
            let ours = |r: &Record| {
                r.progress.is_some() && r.pid == std::process::id() && r.command == "resync"
            };
            if let Some(r) = r.filter(ours) {
                break r;
            }
            assert!(Instant::now() < deadline, "no record at {}", path.display());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(got.command, "resync");
        assert_eq!(got.pid, std::process::id());
        let pr = got.progress.unwrap();
        assert_eq!((pr.done_bytes, pr.total_bytes), (250, Some(1000)));
        assert_eq!(pr.percent, Some(25.0));
        drop(p);
        assert!(!path.exists(), "the record outlived its publisher");
    }
}
