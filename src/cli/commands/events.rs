//! `events`: the primary's event journal as text or JSON lines, once or followed, with a
//! program run per new event. Takes no lock and writes nothing.

use super::*;
use crate::format::journal::{kind_name, Event, Journal};
use crate::format::Superblock;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often `--follow` looks at the journal.
const POLL: Duration = Duration::from_millis(250);
/// How often `--follow` checks whether a promotion replaced the primary (it reads every
/// leg's header).
const REPLACED_CHECK: Duration = Duration::from_secs(30);

/// One event as printed (JSON fields are stable, see README).
#[derive(Serialize, Clone, Debug)]
struct Shown {
    /// null for `replaced-primary`, which is found, not stored (rule P6).
    seq: Option<u64>,
    time: String,
    time_unix: u64,
    kind: String,
    slot: Option<u32>,
    /// The slot's location now (null when the event names no slot or the slot is free).
    leg: Option<String>,
    detail: String,
    mirror_uuid: String,
}

impl Shown {
    fn of(e: &Event, sb: &Superblock) -> Shown {
        let leg = e
            .slot
            .and_then(|s| sb.legs.get(s as usize))
            .filter(|l| l.state != LegState::Empty)
            .map(|l| l.location.clone());
        Shown {
            seq: Some(e.seq),
            time: crate::units::format_time(e.at),
            time_unix: e.at,
            kind: kind_name(e.kind),
            slot: e.slot,
            leg,
            detail: e.detail.clone(),
            mirror_uuid: engine::uuid_str(&sb.mirror_uuid),
        }
    }

    fn text(&self) -> String {
        let seq = self
            .seq
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let slot = match (self.slot, &self.leg) {
            (Some(s), Some(l)) => format!("  slot {s} ({l})"),
            (Some(s), None) => format!("  slot {s}"),
            _ => String::new(),
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", self.detail)
        };
        format!("{seq:>6}  {}  {}{slot}{detail}", self.time, self.kind)
    }

    fn print(&self, json: bool) -> Result<()> {
        let mut out = io::stdout().lock();
        let r = if json {
            serde_json::to_writer(&mut out, self)
                .map_err(io::Error::other)
                .and_then(|()| writeln!(out))
        } else {
            writeln!(out, "{}", self.text())
        };
        r.and_then(|()| out.flush()).map_err(Error::output)
    }
}

/// The superblock at `path` as committed now (re-opened each time: the image may be
/// rewritten or replaced by other commands).
fn read(path: &Path) -> Result<Superblock> {
    let dev = FileDevice::open(path, false).map_err(|e| open_error("opening", path, e))?;
    let dev: Arc<dyn Device> = Arc::new(dev);
    engine::status::read_superblock(&dev, &display(path))
}

/// Whether a promotion replaced the primary at `path`: the new primary's name.
fn replaced(path: &Path) -> Option<String> {
    let dev = FileDevice::open(path, false).ok()?;
    let s = engine::status::report(
        Arc::new(dev),
        &display(path),
        Arc::new(FileOpener { writable: false }),
        None,
    )
    .ok()?;
    s.replaced_by
}

fn journal_of<'a>(sb: &'a Superblock, path: &Path) -> Result<Option<&'a Journal>> {
    if sb.role != Role::Primary {
        let primary = if sb.primary_location.is_empty() {
            "its primary".to_string()
        } else {
            sb.primary_location.clone()
        };
        return Err(Error::invalid(format!(
            "{} is a {} image; the event journal is kept by the primary: give {primary}",
            display(path),
            sb.role.as_str()
        )));
    }
    Ok(sb.journal.as_ref())
}

pub(super) fn events(_ctx: &Ctx, a: cli::EventsArgs) -> Result<Exit> {
    let sb = read(&a.primary)?;
    let journal = journal_of(&sb, &a.primary)?;
    let newest = journal.map_or(0, |j| j.next_seq.saturating_sub(1));
    // --exec without --since: what happens from now on (not a storm of old events).
    let mut last = match (a.since, &a.exec) {
        (Some(s), _) => s,
        (None, Some(_)) => newest,
        (None, None) => 0,
    };
    let exec = a
        .exec
        .as_ref()
        .map(|cmd| Runner::start(cmd.clone(), a.exec_timeout, display(&a.primary)))
        .transpose()
        .map_err(|e| Error::invalid(format!("events: starting the --exec thread: {e}")))?;
    let mut mirror = sb.mirror_uuid;
    let show = |e: Shown| -> Result<()> {
        e.print(a.json)?;
        if let Some(r) = &exec {
            r.send(e);
        }
        Ok(())
    };
    let mut sb = Some(sb);
    let mut told_replaced = false;
    // None: not checked yet (an Instant minus 30 s would panic on a machine up for less,
    // e.g. the alert unit starting at boot).
    let mut checked: Option<Instant> = None;
    let mut told_error = false;
    loop {
        if let Some(sb) = sb.take() {
            if sb.mirror_uuid != mirror {
                eprintln!(
                    "mirrorctl: events: {} now holds another mirror ({}); following its journal from the start",
                    display(&a.primary),
                    engine::uuid_str(&sb.mirror_uuid)
                );
                mirror = sb.mirror_uuid;
                last = 0;
            }
            if let Some(j) = journal_of(&sb, &a.primary)? {
                if j.next_seq.saturating_sub(1) < last && a.follow {
                    // Written back without its journal (a 1.0 mirrorctl) and begun anew.
                    eprintln!(
                        "mirrorctl: events: the journal of {} starts again at 1 (an older mirrorctl rewrote the image); following it from there",
                        display(&a.primary)
                    );
                    last = 0;
                }
                if let Some(first) = j.events.first() {
                    if last > 0 && first.seq > last + 1 {
                        eprintln!(
                            "mirrorctl: events: events {} to {} were dropped from the journal before they were read",
                            last + 1,
                            first.seq - 1
                        );
                    }
                }
                for e in j.since(last) {
                    show(Shown::of(e, &sb))?;
                    last = e.seq;
                }
            }
            let due = checked.is_none_or(|t| t.elapsed() >= REPLACED_CHECK);
            if !told_replaced && (!a.follow || due) {
                checked = Some(Instant::now());
                if let Some(new) = replaced(&a.primary) {
                    told_replaced = true;
                    let now = crate::units::now_unix();
                    show(Shown {
                        seq: None,
                        time: crate::units::format_time(now),
                        time_unix: now,
                        kind: "replaced-primary".into(),
                        slot: None,
                        leg: None,
                        detail: format!("replaced by {new} (promoted); nothing is written here"),
                        mirror_uuid: engine::uuid_str(&sb.mirror_uuid),
                    })?;
                }
            }
        }
        if !a.follow {
            break;
        }
        std::thread::sleep(POLL);
        match read(&a.primary) {
            Ok(s) => {
                told_error = false;
                sb = Some(s);
            }
            // Gone for a moment (being replaced), or unreadable: said once, then retried.
            Err(e) if !told_error => {
                told_error = true;
                eprintln!("mirrorctl: events: {e}; still following");
            }
            Err(_) => {}
        }
    }
    drop(exec);
    Ok(Exit::Success)
}

/// Runs `--exec` for each event in order on its own thread, so a slow program never holds
/// up the following; one that outlives the timeout is killed.
struct Runner {
    tx: Option<mpsc::Sender<Shown>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    fn start(cmd: String, timeout: Duration, primary: String) -> io::Result<Runner> {
        let (tx, rx) = mpsc::channel::<Shown>();
        let thread = std::thread::Builder::new()
            .name("exec".into())
            .spawn(move || {
                for e in rx {
                    run_one(&cmd, timeout, &primary, &e);
                }
            })?;
        Ok(Runner {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, e: Shown) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_one(cmd: &str, timeout: Duration, primary: &str, e: &Shown) {
    let seq = e.seq.map(|s| s.to_string()).unwrap_or_default();
    let what = format!(
        "--exec for event {} ({})",
        if seq.is_empty() { "-" } else { &seq },
        e.kind
    );
    // Its output goes to stderr: stdout carries the events.
    let out = std::os::fd::AsFd::as_fd(&io::stderr())
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let child = Process::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("MIRRORCTL_EVENT", &e.kind)
        .env("MIRRORCTL_SEQ", &seq)
        .env("MIRRORCTL_TIME", &e.time)
        .env("MIRRORCTL_TIME_UNIX", e.time_unix.to_string())
        .env(
            "MIRRORCTL_SLOT",
            e.slot.map(|s| s.to_string()).unwrap_or_default(),
        )
        .env("MIRRORCTL_LEG", e.leg.clone().unwrap_or_default())
        .env("MIRRORCTL_DETAIL", &e.detail)
        .env("MIRRORCTL_PRIMARY", primary)
        .env("MIRRORCTL_MIRROR", &e.mirror_uuid)
        .stdin(Stdio::null())
        .stdout(out)
        // A process group of its own: the timeout kills the hook's children too (a `sleep`
        // or `curl` it started), not only /bin/sh.
        .process_group(0)
        .spawn();
    let mut child: Child = match child {
        Ok(c) => c,
        Err(err) => {
            eprintln!("mirrorctl: events: {what}: starting /bin/sh: {err}");
            return;
        }
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return,
            Ok(Some(st)) => {
                eprintln!("mirrorctl: events: {what} failed ({st})");
                return;
            }
            Ok(None) if started.elapsed() >= timeout => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: a plain kill(2) of the process group this child leads.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                eprintln!(
                    "mirrorctl: events: {what} was killed after {}s (--exec-timeout)",
                    timeout.as_secs()
                );
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => {
                eprintln!("mirrorctl: events: {what}: {err}");
                return;
            }
        }
    }
}
