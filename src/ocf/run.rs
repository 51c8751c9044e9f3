//! The OCF agent's processes and side effects: the export and serve daemons (own session,
//! log and pid file in state_dir, READY=1 awaited on a notify socket, SIGTERM and wait),
//! the image's state read from its header, promotion scores through crm_attribute, the
//! fencing constraint through cibadmin. The decisions are `ocf/mod.rs`'s.

use super::*;
use crate::device::FileDevice;
use crate::format::layout::BitmapId;
use crate::meta::bitmaps::Bitmaps;
use crate::meta::image::{Image, ReadError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXPORT: &str = "export";
const SERVE: &str = "serve";
const PEERS: &str = "peers";

fn log(text: &str) {
    crate::systemd::eprint(
        &format!("mirrorctl ocf-agent: {text}"),
        crate::systemd::Priority::Info,
    );
}

/// Runs one action; returns its OCF exit code.
pub fn main(action: &str) -> i32 {
    let Some(act) = Action::parse(action) else {
        log(&format!(
            "action {action:?} is not implemented (start, stop, monitor, promote, demote, notify, meta-data, validate-all)"
        ));
        return Code::Unimplemented.code();
    };
    match act {
        Action::MetaData => {
            print!("{}", meta_data());
            return Code::Success.code();
        }
        Action::Notify => return Code::Success.code(),
        _ => {}
    }
    let env = |k: &str| std::env::var(k).ok();
    let p = match params(&env, &crm_node_name) {
        Ok(p) => p,
        Err(e) => {
            log(e.text());
            // A stop or probe of a resource whose configuration is broken finds nothing of
            // ours running: say so rather than failing (a failed stop gets the node fenced).
            return match act {
                Action::Stop => Code::Success.code(),
                Action::Monitor if probe() => Code::NotRunning.code(),
                _ => e.code().code(),
            };
        }
    };
    let r = match act {
        Action::ValidateAll => validate(&p),
        Action::Start => start(&p),
        Action::Stop => stop(&p),
        Action::Monitor => monitor(&p),
        Action::Promote => promote(&p),
        Action::Demote => demote(&p),
        Action::FencePeer => fence_peer(&p),
        Action::UnfencePeer => unfence_peer(&p),
        Action::Peers => peers(&p),
        Action::MetaData | Action::Notify => Ok(Code::Success),
    };
    match r {
        Ok(c) => c.code(),
        Err((c, msg)) => {
            log(&msg);
            c.code()
        }
    }
}

type Out = std::result::Result<Code, (Code, String)>;

fn generic(msg: impl Into<String>) -> (Code, String) {
    (Code::Generic, msg.into())
}

fn probe() -> bool {
    std::env::var("OCF_RESKEY_CRM_meta_interval").map_or(true, |v| matches!(v.trim(), "" | "0"))
}

/// A Pacemaker tool by name: from PATH, else from the directories Pacemaker installs its
/// tools in (an agent run by pacemaker-execd may get a short PATH).
fn tool(name: &str) -> Command {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = dirs
        .into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    Command::new(found.unwrap_or_else(|| PathBuf::from(name)))
}

fn crm_node_name() -> Option<String> {
    let o = tool("crm_node").arg("-n").output().ok()?;
    let n = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !n.is_empty()).then_some(n)
}

/// When this action must be done: Pacemaker's timeout for it, less a margin.
fn deadline() -> Instant {
    let ms = std::env::var("OCF_RESKEY_CRM_meta_timeout")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(20_000);
    Instant::now() + Duration::from_millis(ms.saturating_sub(2_000).max(5_000))
}

fn exe() -> std::result::Result<String, (Code, String)> {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .map_err(|e| {
            (
                Code::NotInstalled,
                format!("finding the mirrorctl binary: {e}"),
            )
        })
}

fn state_dir(p: &Params) -> std::result::Result<PathBuf, (Code, String)> {
    let d = p.node_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .map_err(|e| generic(format!("creating state_dir {}: {e}", d.display())))?;
    Ok(d)
}

use std::os::unix::fs::DirBuilderExt;

fn validate(p: &Params) -> Out {
    let img = Path::new(&p.image);
    if !img.exists() {
        return Err((
            Code::NotInstalled,
            format!("image {} does not exist on this node", p.image),
        ));
    }
    for f in [&p.tls_cert, &p.tls_key, &p.tls_ca].into_iter().flatten() {
        if File::open(f).is_err() {
            return Err((
                Code::NotInstalled,
                format!("{f} cannot be read on this node"),
            ));
        }
    }
    if let ImageState::Detached = image_state(&p.image).0 {
        return Err((
            Code::NotConfigured,
            format!("{} was detached from its mirror", p.image),
        ));
    }
    Ok(Code::Success)
}

/// The image's state from its header (read lock-free: export or serve may hold it), and
/// whether it holds no mirrorctl header at all.
pub fn image_state(image: &str) -> (ImageState, bool) {
    let Ok(dev) = FileDevice::open(Path::new(image), false) else {
        return (ImageState::Unusable, false);
    };
    let dev: Arc<dyn crate::device::Device> = Arc::new(dev);
    match Image::read(dev.clone()) {
        Ok(img) => {
            let sb = &img.sb;
            let leg = sb.slot_of_uuid(&sb.image_uuid).map(|s| sb.legs[s].state());
            let clean = sb.role == Role::Primary
                && Bitmaps::open(dev, sb.geometry, false)
                    .and_then(|mut b| b.count(BitmapId::WriteIntent))
                    .is_ok_and(|n| n == 0);
            (
                ImageState::of(sb.role, leg, sb.generation, sb.in_sync_generation, clean),
                false,
            )
        }
        Err(ReadError::NotMirrorctl) => (ImageState::Unusable, true),
        Err(_) => (ImageState::Unusable, false),
    }
}

/// The leg table of the image (a primary's), as (state, location).
fn legs_of(image: &str) -> Option<Vec<(LegState, String)>> {
    let dev = FileDevice::open(Path::new(image), false).ok()?;
    let img = Image::read(Arc::new(dev)).ok()?;
    (img.sb.role == Role::Primary).then(|| {
        img.sb
            .legs
            .iter()
            .map(|l| (l.state(), l.location.clone()))
            .collect()
    })
}

fn pid_file(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!("{what}.pid"))
}

/// The pid of our `what` process, if it runs (its pid file names a live process whose
/// command line is `mirrorctl WHAT ...` of our image, or the agent's `peers`).
fn running(p: &Params, what: &str) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file(&p.node_dir(), what)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    alive(pid, what, &p.image).then_some(pid)
}

fn alive(pid: i32, what: &str, image: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name in parentheses; a zombie has ended.
    if let Some(i) = stat.rfind(')') {
        if stat[i + 1..].trim_start().starts_with('Z') {
            return false;
        }
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    let has_image = args.contains(&image.as_bytes());
    let runs = if what == PEERS {
        args.get(1) == Some(&&b"ocf-agent"[..]) && args.get(2) == Some(&what.as_bytes())
    } else {
        args.get(1) == Some(&what.as_bytes())
    };
    runs && has_image
}

fn write_pid(dir: &Path, what: &str, pid: u32) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{what}.pid.tmp"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, pid_file(dir, what))
}

fn last_lines(path: &Path, n: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Starts `mirrorctl ARGS` as a daemon (own session, stdin from /dev/null, output appended
/// to state_dir/WHAT.log, pid in state_dir/WHAT.pid) and waits for its READY=1 on a notify
/// socket of ours, or its end, or the deadline.
fn spawn_daemon(p: &Params, what: &str, args: &[String], until: Instant) -> Out {
    let dir = state_dir(p)?;
    let exe = exe()?;
    let log_path = dir.join(format!("{what}.log"));
    let logf = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| generic(format!("opening {}: {e}", log_path.display())))?;
    let logf2 = logf
        .try_clone()
        .map_err(|e| generic(format!("opening {}: {e}", log_path.display())))?;
    let sock_path = dir.join(format!("notify-{what}.sock"));
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path)
        .map_err(|e| generic(format!("binding {}: {e}", sock_path.display())))?;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2)
        .env("NOTIFY_SOCKET", &sock_path);
    // SAFETY: setsid(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| generic(format!("starting `mirrorctl {what}`: {e}")))?;
    let pid = child.id();
    if let Err(e) = write_pid(&dir, what, pid) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(generic(format!("writing {what}.pid: {e}")));
    }
    log(&format!(
        "started `mirrorctl {}` (pid {pid})",
        args.join(" ")
    ));
    let mut buf = [0u8; 4096];
    let r = loop {
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break Ok(Code::Success);
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            let _ = std::fs::remove_file(pid_file(&dir, what));
            break Err(generic(format!(
                "`mirrorctl {what}` ended ({st}) before it was ready: {}",
                last_lines(&log_path, 3)
            )));
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(pid_file(&dir, what));
            break Err(generic(format!(
                "`mirrorctl {what}` was not ready in time: {}",
                last_lines(&log_path, 3)
            )));
        }
    };
    drop(sock);
    let _ = std::fs::remove_file(&sock_path);
    r
}

/// Stops our `what` process: SIGTERM, then waits for its end (serve syncs every leg and
/// clears its intents); past the deadline, SIGKILL (the next start recovers what it left).
fn stop_daemon(p: &Params, what: &str, until: Instant) {
    let Some(pid) = running(p, what) else {
        let _ = std::fs::remove_file(pid_file(&p.node_dir(), what));
        return;
    };
    let target = if what == PEERS { -pid } else { pid };
    // SAFETY: kill(2) on a pid (or group) we started, checked just above.
    unsafe { libc::kill(target, libc::SIGTERM) };
    let mut killed = false;
    while running(p, what).is_some() {
        if Instant::now() > until && !killed {
            log(&format!(
                "`mirrorctl {what}` (pid {pid}) did not stop in time: killed"
            ));
            // SAFETY: as above.
            unsafe { libc::kill(target, libc::SIGKILL) };
            killed = true;
        }
        if killed && Instant::now() > until + Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(pid_file(&p.node_dir(), what));
    log(&format!("stopped `mirrorctl {what}` (pid {pid})"));
}

fn refused(p: &Params) -> PathBuf {
    p.node_dir().join("peers.refused")
}

fn marker(p: &Params) -> PathBuf {
    p.node_dir().join("promoted")
}

/// Publishes this node's promotion score. A score of 0 (and None: stopped) removes it,
/// as ocf:linbit:drbd does: Pacemaker promotes an instance whose score is 0 when no other
/// can be, and a node with no score is never promoted.
fn publish(p: &Params, score: Option<u32>) {
    let mut cmd = tool("crm_attribute");
    cmd.arg("--promotion").args(["-N", &p.me]);
    match score {
        Some(s) if s > 0 => cmd.args(["-v", &s.to_string()]),
        _ => cmd.arg("-D"),
    };
    match cmd.stdout(Stdio::null()).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => log(&format!(
            "crm_attribute --promotion failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => log(&format!("running crm_attribute: {e}")),
    }
}

fn publish_state(p: &Params) {
    let (st, _) = image_state(&p.image);
    publish(p, Some(score(&st, false)));
}

fn start(p: &Params) -> Out {
    if running(p, SERVE).is_some() {
        return Ok(Code::Success);
    }
    if running(p, EXPORT).is_some() {
        publish_state(p);
        return Ok(Code::Success);
    }
    if !Path::new(&p.image).exists() {
        return Err((
            Code::NotInstalled,
            format!("image {} does not exist on this node", p.image),
        ));
    }
    let (st, blank) = image_state(&p.image);
    let rejoin = match start_step(&st, blank) {
        StartStep::Export => false,
        StartStep::ExportRejoin => true,
        StartStep::Refuse => {
            return Err(generic(format!(
                "{} cannot be exported: it is {}",
                p.image,
                match st {
                    ImageState::Detached => "detached from its mirror",
                    _ => "not a mirrorctl image (its header is damaged or another kind of data)",
                }
            )))
        }
    };
    let _ = std::fs::remove_file(marker(p));
    spawn_daemon(p, EXPORT, &p.export_args(rejoin), deadline())?;
    publish(p, Some(score(&st, false)));
    Ok(Code::Success)
}

fn stop(p: &Params) -> Out {
    let until = deadline();
    stop_daemon(p, PEERS, until);
    stop_daemon(p, SERVE, until);
    stop_daemon(p, EXPORT, until);
    let _ = std::fs::remove_file(marker(p));
    publish(p, None);
    Ok(Code::Success)
}

fn monitor(p: &Params) -> Out {
    let r = Running {
        serve: running(p, SERVE).is_some(),
        export: running(p, EXPORT).is_some(),
        promoted_marker: marker(p).exists(),
    };
    let code = monitor_code(r);
    match code {
        Code::RunningPromoted => {
            publish(p, Some(SCORE_PROMOTED));
            let _ = unfence_if_in_sync(p);
            spawn_peers(p);
        }
        Code::Success | Code::FailedPromoted => publish_state(p),
        _ => {}
    }
    Ok(code)
}

fn promote(p: &Params) -> Out {
    if running(p, SERVE).is_some() {
        return Ok(Code::Success);
    }
    let until = deadline();
    stop_daemon(p, EXPORT, until);
    let (st, _) = image_state(&p.image);
    match promote_step(&st) {
        PromoteStep::Refuse => {
            return Err(generic(format!(
                "{} cannot be promoted: it is not an image of a mirror",
                p.image
            )))
        }
        PromoteStep::Serve => {}
        PromoteStep::Promote => {
            let o = Command::new(exe()?)
                .args(["promote", &p.image])
                .output()
                .map_err(|e| generic(format!("running mirrorctl promote: {e}")))?;
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            for l in said.lines().filter(|l| !l.trim().is_empty()) {
                log(&format!("promote: {}", l.trim()));
            }
            // 3: promoted, the mirror degraded (the former primary is away).
            if !matches!(o.status.code(), Some(0) | Some(3)) {
                // The export again, so the node stays unpromoted-running.
                let _ = spawn_export_again(p);
                return Err(generic(format!(
                    "`mirrorctl promote {}` failed ({}): {}",
                    p.image,
                    o.status,
                    said.lines().last().unwrap_or("")
                )));
            }
        }
    }
    // E2: no peer that lacks writes may be promoted once this node acknowledges writes:
    // the constraint is in place before serve starts.
    if p.fence {
        let legs = legs_of(&p.image).unwrap_or_default();
        let states: Vec<LegState> = legs.iter().map(|(s, _)| *s).collect();
        if !all_in_sync(&states) {
            if let Err(e) = fence(p) {
                let _ = spawn_export_again(p);
                return Err(generic(format!(
                    "placing the fencing constraint before serving: {e}"
                )));
            }
        }
    }
    let dir = state_dir(p)?;
    std::fs::write(marker(p), b"")
        .map_err(|e| generic(format!("writing {}/promoted: {e}", dir.display())))?;
    let exe = exe()?;
    if let Err(e) = spawn_daemon(p, SERVE, &p.serve_args(&exe), until) {
        let _ = std::fs::remove_file(marker(p));
        let _ = spawn_export_again(p);
        return Err(e);
    }
    publish(p, Some(SCORE_PROMOTED));
    spawn_peers(p);
    Ok(Code::Success)
}

/// After a failed promotion, or a demotion: the export runs again (--rejoin for a primary).
fn spawn_export_again(p: &Params) -> Out {
    if running(p, EXPORT).is_some() {
        return Ok(Code::Success);
    }
    let (st, blank) = image_state(&p.image);
    let rejoin = match start_step(&st, blank) {
        StartStep::Refuse => {
            return Err(generic(format!("{} cannot be exported", p.image)));
        }
        s => s == StartStep::ExportRejoin,
    };
    let r = spawn_daemon(p, EXPORT, &p.export_args(rejoin), deadline());
    publish(p, Some(score(&st, false)));
    r
}

fn demote(p: &Params) -> Out {
    let until = deadline();
    stop_daemon(p, PEERS, until);
    stop_daemon(p, SERVE, until);
    let _ = std::fs::remove_file(marker(p));
    spawn_export_again(p)
}

/// The background step of the promoted node: each peer whose leg does not receive writes
/// is attached through serve (its export URI), one run at a time (a lock in state_dir).
fn spawn_peers(p: &Params) {
    if running(p, PEERS).is_some() || running(p, SERVE).is_none() {
        return;
    }
    let Some(legs) = legs_of(&p.image) else {
        return;
    };
    if p.peers()
        .all(|n| peer_step(&legs, &p.peer_uri(n)) == PeerStep::Nothing)
    {
        let _ = std::fs::remove_file(refused(p));
        return;
    }
    // An attach refused for the admin to settle is not retried at every monitor.
    let recent = std::fs::metadata(refused(p))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() < REFUSED_BACKOFF_SECS);
    if recent {
        return;
    }
    let Ok(exe) = exe() else { return };
    let Ok(dir) = state_dir(p) else { return };
    let log_path = dir.join("peers.log");
    let Ok(logf) = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
    else {
        return;
    };
    let Ok(logf2) = logf.try_clone() else { return };
    let mut cmd = Command::new(exe);
    cmd.args(["ocf-agent", PEERS, &p.image])
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2);
    // SAFETY: setsid(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(c) => {
            let _ = write_pid(&dir, PEERS, c.id());
        }
        Err(e) => log(&format!("starting the peers' attach: {e}")),
    }
}

fn peers(p: &Params) -> Out {
    let exe = exe()?;
    for n in p.peers() {
        let Some(legs) = legs_of(&p.image) else {
            break;
        };
        let uri = p.peer_uri(n);
        if peer_step(&legs, &uri) == PeerStep::Nothing {
            continue;
        }
        log(&format!(
            "attaching {} ({})",
            n.name,
            crate::device::nbd::display(&uri)
        ));
        match Command::new(&exe).args(["attach", &p.image, &uri]).output() {
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                log(&format!(
                    "attach {}: {} {}{}",
                    n.name,
                    o.status,
                    String::from_utf8_lossy(&o.stdout).trim(),
                    err.trim()
                ));
                if !o.status.success() && attach_needs_admin(&err) {
                    log(&format!(
                        "{} needs an admin (see the line above); retried in {REFUSED_BACKOFF_SECS} s",
                        n.name
                    ));
                    let _ = std::fs::write(refused(p), err.as_bytes());
                }
            }
            Err(e) => log(&format!("running attach: {e}")),
        }
    }
    let _ = unfence_if_in_sync(p);
    Ok(Code::Success)
}

/// The fence lock (state_dir/fence.lock), held by the hooks and by the removal check.
fn fence_lock(p: &Params) -> std::result::Result<File, String> {
    let dir = state_dir(p).map_err(|(_, e)| e)?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("fence.lock"))
        .map_err(|e| format!("opening fence.lock: {e}"))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("locking fence.lock: {e}"))?;
    Ok(f)
}

fn cibadmin(args: &[&str]) -> std::result::Result<String, String> {
    let o = tool("cibadmin")
        .args(args)
        .output()
        .map_err(|e| format!("running cibadmin: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "cibadmin {} failed ({}): {}",
            args.first().unwrap_or(&""),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The promotable clone holding our primitive (its id), else the primitive's own id.
fn clone_id(p: &Params) -> String {
    cibadmin(&["--query", "--xpath", &clone_xpath(&p.resource)])
        .ok()
        .and_then(|x| first_id(&x))
        .unwrap_or_else(|| p.resource.clone())
}

fn fence(p: &Params) -> std::result::Result<(), String> {
    let _lock = fence_lock(p)?;
    let x = constraint_xml(&p.resource, &clone_id(p), &p.me);
    cibadmin(&[
        "--modify",
        "--allow-create",
        "--scope",
        "constraints",
        "--xml-text",
        &x,
    ])?;
    log(&format!(
        "placed {}: {} is promoted nowhere but {}",
        constraint_id(&p.resource),
        p.resource,
        p.me
    ));
    Ok(())
}

/// E2: removes the constraint if every leg is in sync, by the header read under the lock.
fn unfence_if_in_sync(p: &Params) -> std::result::Result<bool, String> {
    if !p.fence {
        return Ok(false);
    }
    let _lock = fence_lock(p)?;
    let Some(legs) = legs_of(&p.image) else {
        return Ok(false);
    };
    let states: Vec<LegState> = legs.iter().map(|(s, _)| *s).collect();
    if !all_in_sync(&states) {
        return Ok(false);
    }
    let xpath = constraint_xpath(&p.resource);
    let present = cibadmin(&["--query", "--xpath", &xpath]).is_ok_and(|x| !x.trim().is_empty());
    if !present {
        return Ok(false);
    }
    cibadmin(&["--delete", "--xpath", &xpath])?;
    log(&format!(
        "removed {}: every leg is in sync",
        constraint_id(&p.resource)
    ));
    Ok(true)
}

fn fence_peer(p: &Params) -> Out {
    if let Ok(leg) = std::env::var("MIRRORCTL_LEG") {
        log(&format!(
            "fencing: {leg} stopped receiving writes ({})",
            std::env::var("MIRRORCTL_REASON").unwrap_or_default()
        ));
    }
    fence(p).map_err(generic)?;
    Ok(Code::Success)
}

fn unfence_peer(p: &Params) -> Out {
    unfence_if_in_sync(p).map_err(generic)?;
    Ok(Code::Success)
}
