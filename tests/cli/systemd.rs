//! systemd integration (issue 26): the units shipped in `systemd/` pass `systemd-analyze
//! verify` with their binaries and man pages in place (and a broken copy does not); the
//! alert script and the metrics unit's command do what their comments say; `serve` tells
//! the service manager READY=1 once it takes clients and STOPPING=1 at a stop; log lines
//! carry syslog priorities only when stderr is journald's stream; the README's install
//! block, run with PREFIX and DESTDIR, puts every file in place with units that verify.

use crate::support::*;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The repository root (units, README, man pages).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The unit files shipped in `systemd/`, by name.
fn shipped_units() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("systemd"))
        .expect("reading systemd/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".service") || n.ends_with(".timer"))
        .collect();
    v.sort();
    v
}

/// `systemd-analyze verify` on the unit `name` in `dir` (man pages looked up in `manpath`,
/// or not checked): the exit status and what it said about our units. Lines about the
/// machine's own units (a warning in some distribution's unit) are not ours to judge.
fn analyze(dir: &Path, name: &str, manpath: Option<&Path>) -> (bool, String) {
    require("systemd-analyze", "systemd");
    let mut c = Command::new("systemd-analyze");
    c.arg("verify")
        .arg(format!(
            "--man={}",
            if manpath.is_some() { "yes" } else { "no" }
        ))
        .arg(format!("./{name}"))
        .current_dir(dir);
    if let Some(m) = manpath {
        c.env("MANPATH", m);
    }
    let o = c.output().expect("running systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let ours: String = text
        .lines()
        .filter(|l| l.contains("mirrorctl") || l.contains(&dir.display().to_string()))
        .map(|l| format!("{l}\n"))
        .collect();
    (o.status.success(), ours)
}

/// The man pages in the layout `man` searches (DIR/man1, DIR/man5).
fn manpath(dir: &Path) -> PathBuf {
    let m = dir.join("man");
    for e in std::fs::read_dir(repo().join("man")).unwrap() {
        let p = e.unwrap().path();
        let ext = p.extension().unwrap().to_string_lossy().into_owned();
        let sec = m.join(format!("man{ext}"));
        std::fs::create_dir_all(&sec).unwrap();
        std::fs::copy(&p, sec.join(p.file_name().unwrap())).unwrap();
    }
    m
}

#[test]
fn every_shipped_unit_passes_systemd_analyze_verify_and_a_broken_copy_does_not() {
    require("man", "man-db");
    let units = shipped_units();
    for want in [
        "mirrorctl-serve@.service",
        "mirrorctl-verify@.service",
        "mirrorctl-verify@.timer",
        "mirrorctl-events@.service",
        "mirrorctl-metrics.service",
        "mirrorctl-metrics.timer",
    ] {
        assert!(units.iter().any(|u| u == want), "systemd/{want} is missing");
    }
    let tmp = tempfile::tempdir().unwrap();
    let man = manpath(tmp.path());
    let dir = tmp.path().join("units");
    std::fs::create_dir(&dir).unwrap();
    let alert = repo().join("systemd/mirrorctl-alert");
    for u in &units {
        let text = std::fs::read_to_string(repo().join("systemd").join(u)).unwrap();
        // Installed, the units run /usr/local/bin/mirrorctl; here the binary just built.
        assert!(
            !u.ends_with(".service")
                || text.contains("ExecStart=/usr/local/bin/mirrorctl ")
                || text.contains("/usr/local/bin/mirrorctl status"),
            "{u} does not run /usr/local/bin/mirrorctl:\n{text}"
        );
        let text = text
            .replace("/usr/local/bin/mirrorctl", bin())
            .replace("/usr/local/lib/mirrorctl/alert", alert.to_str().unwrap());
        std::fs::write(dir.join(u), text).unwrap();
        // A timer starts the service of its name, which must ship beside it.
        if let Some(stem) = u.strip_suffix(".timer") {
            assert!(
                units.contains(&format!("{stem}.service")),
                "{u} has no {stem}.service to start"
            );
        }
    }
    for u in &units {
        let (ok, said) = analyze(&dir, u, Some(&man));
        assert!(ok && said.is_empty(), "systemd-analyze verify {u}:\n{said}");
    }
    // The check can fail: a unit with a misspelt type and a missing binary is reported.
    let serve = std::fs::read_to_string(dir.join("mirrorctl-serve@.service")).unwrap();
    let broken = serve
        .replace("Type=notify", "Type=notfiy")
        .replace(bin(), "/nonexistent/mirrorctl");
    std::fs::write(dir.join("broken@.service"), broken).unwrap();
    let (ok, said) = analyze(&dir, "broken@.service", Some(&man));
    assert!(!ok, "a unit running a missing binary passed:\n{said}");
    assert!(
        said.contains("notfiy") && said.contains("/nonexistent/mirrorctl"),
        "{said}"
    );
    // And a Documentation= page that does not exist.
    let undocumented = serve.replace("man:mirrorctl-serve(1)", "man:mirrorctl-nosuch(1)");
    std::fs::write(dir.join("undocumented@.service"), undocumented).unwrap();
    let (ok, said) = analyze(&dir, "undocumented@.service", Some(&man));
    assert!(!ok && said.contains("mirrorctl-nosuch"), "{said}");
}

#[test]
fn the_units_say_what_systemd_needs_to_run_serve_verify_events_and_metrics_right() {
    let read = |u: &str| std::fs::read_to_string(repo().join("systemd").join(u)).unwrap();
    let lines = |u: &str| -> Vec<String> { read(u).lines().map(str::to_string).collect() };
    let has = |u: &str, l: &str| {
        assert!(
            lines(u).iter().any(|x| x == l),
            "{u} lacks `{l}`:\n{}",
            read(u)
        )
    };
    let lacks = |u: &str, key: &str| {
        assert!(
            !lines(u).iter().any(|x| x.starts_with(key)),
            "{u} has {key}:\n{}",
            read(u)
        )
    };
    let serve = "mirrorctl-serve@.service";
    has(serve, "Type=notify");
    has(serve, "NotifyAccess=main");
    has(serve, "ExecStart=/usr/local/bin/mirrorctl serve %i");
    has(serve, "Restart=on-failure");
    // Other commands' live records and sockets share /run/mirrorctl: never removed at stop.
    has(serve, "RuntimeDirectory=mirrorctl");
    has(serve, "RuntimeDirectoryPreserve=yes");
    // Above serve's worst-case clean stop: --write-timeout (30 s) + an NBD leg's --timeout
    // for the requests in flight and the final sync (5 s each) + the sync of local legs.
    let stop = lines(serve)
        .into_iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec=").map(str::to_string))
        .expect("TimeoutStopSec");
    let secs: u64 = match stop.strip_suffix("min") {
        Some(m) => m.parse::<u64>().unwrap() * 60,
        None => stop.trim_end_matches('s').parse().unwrap(),
    };
    assert!(secs >= 120, "TimeoutStopSec={stop}");
    // Hardening that would hide or freeze images and block devices is not used.
    for key in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "DevicePolicy=",
        "DeviceAllow=",
        "ProtectClock=",
    ] {
        for u in ["mirrorctl-serve@.service", "mirrorctl-verify@.service"] {
            lacks(u, key);
        }
    }
    for u in [serve, "mirrorctl-verify@.service"] {
        // network-online.target is pulled in (Wants=) and waited for (After=).
        has(u, "Wants=network-online.target");
        assert!(
            lines(u)
                .iter()
                .any(|l| l.starts_with("After=") && l.contains("network-online.target")),
            "{u}"
        );
    }
    has("mirrorctl-verify@.service", "Type=oneshot");
    has("mirrorctl-verify@.timer", "Persistent=true");
    assert!(read("mirrorctl-verify@.timer").contains("RandomizedDelaySec="));
    assert!(read("mirrorctl-verify@.timer").contains("OnCalendar="));
    let events = "mirrorctl-events@.service";
    has(events, "ExecStart=/usr/local/bin/mirrorctl events %i --follow --exec /usr/local/lib/mirrorctl/alert --state-file /var/lib/mirrorctl/events-%i.state");
    has(events, "StateDirectory=mirrorctl");
    has(events, "Restart=always");
    assert!(read(events).contains("RestartSec="));
    // The metrics timer fires the first time too (OnUnitActiveSec alone never does).
    has("mirrorctl-metrics.timer", "OnBootSec=1min");
    has("mirrorctl-metrics.timer", "OnUnitActiveSec=1min");
    has(
        "mirrorctl-metrics.service",
        "Environment=MIRRORCTL_TEXTFILE_DIR=/var/lib/node_exporter/textfile_collector",
    );
}

/// The metrics unit's command as the shell gets it: ExecStart= with systemd's `$$` made `$`
/// and the binary replaced by `program`.
fn metrics_command(program: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("systemd/mirrorctl-metrics.service")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let (sh, rest) = line.split_once(" -euc '").expect("/bin/sh -euc '...'");
    let script = rest.strip_suffix('\'').expect("closing quote");
    assert!(!script.contains('\''), "{script}");
    vec![
        sh.to_string(),
        "-euc".into(),
        script
            .replace("$$", "$")
            .replace("/usr/local/bin/mirrorctl", program.to_str().unwrap()),
    ]
}

#[test]
fn the_metrics_unit_replaces_its_file_whole_and_removes_it_when_status_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("textfile_collector");
    // Stand-ins for `mirrorctl status --all --format prometheus`: one that answers, one that
    // fails after writing part of its output.
    let good = tmp.path().join("good");
    std::fs::write(
        &good,
        "#!/bin/sh\n[ \"$*\" = 'status --all --format prometheus' ] || exit 9\necho '# TYPE mirrorctl_healthy gauge'\necho 'mirrorctl_healthy{mirror=\"vm\"} 1'\n",
    )
    .unwrap();
    let bad = tmp.path().join("bad");
    std::fs::write(
        &bad,
        "#!/bin/sh\necho 'mirrorctl_healthy{mirror=\"vm\"}'\nexit 2\n",
    )
    .unwrap();
    for p in [&good, &bad] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = |program: &Path| {
        let c = metrics_command(program);
        Command::new(&c[0])
            .args(&c[1..])
            .env("MIRRORCTL_TEXTFILE_DIR", &dir)
            .output()
            .unwrap()
    };
    let o = run(&good);
    assert!(o.status.success(), "{o:?}");
    let prom = dir.join("mirrorctl.prom");
    assert_eq!(
        std::fs::read_to_string(&prom).unwrap(),
        "# TYPE mirrorctl_healthy gauge\nmirrorctl_healthy{mirror=\"vm\"} 1\n"
    );
    assert_eq!(
        std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let names = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(), ["mirrorctl.prom"], "a temporary file was left");
    // A failed status leaves no stale file (node_exporter would report an old state as
    // now) and no temporary one, and the unit fails.
    let o = run(&bad);
    assert!(!o.status.success(), "{o:?}");
    assert!(names().is_empty(), "{:?}", names());
}

#[test]
fn the_alert_script_parses_and_mails_only_the_events_that_need_someone() {
    let script = repo().join("systemd/mirrorctl-alert");
    let o = Command::new("sh").arg("-n").arg(&script).output().unwrap();
    assert!(o.status.success(), "sh -n: {o:?}");
    assert!(
        std::fs::metadata(&script).unwrap().permissions().mode() & 0o111 != 0,
        "not executable"
    );
    let tmp = tempfile::tempdir().unwrap();
    // A stand-in `mail` that keeps what it was given.
    let mail = tmp.path().join("mail");
    let sent = tmp.path().join("sent");
    std::fs::write(
        &mail,
        format!(
            "#!/bin/sh\n{{ printf '%s|' \"$@\"; echo; cat; }} >> {}\n",
            sent.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tmp.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let alert = |event: &str, detail: &str, to: Option<&str>| {
        let mut c = Command::new(&script);
        c.env("PATH", &path)
            .env("MIRRORCTL_EVENT", event)
            .env("MIRRORCTL_DETAIL", detail)
            .env("MIRRORCTL_SLOT", "1")
            .env("MIRRORCTL_LEG", "/srv/b.img")
            .env("MIRRORCTL_PRIMARY", "/srv/vm.img")
            .env_remove("MIRRORCTL_MAILTO");
        if let Some(t) = to {
            c.env("MIRRORCTL_MAILTO", t);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{event}: {o:?}");
    };
    alert("resync-finished", "1 MiB copied", None);
    alert("verify-finished", "clean: 0 mismatched regions", None);
    assert!(!sent.exists(), "mailed a routine event");
    alert("fractured", "by error: write: EIO", None);
    alert(
        "verify-finished",
        "differences: 2 mismatched regions",
        Some("ops@example.com"),
    );
    let got = std::fs::read_to_string(&sent).unwrap();
    assert_eq!(
        got,
        "-s|mirrorctl: fractured on /srv/vm.img|root|\nfractured on /srv/vm.img slot 1 (/srv/b.img): by error: write: EIO\n\
         -s|mirrorctl: verify-finished on /srv/vm.img|ops@example.com|\nverify-finished on /srv/vm.img slot 1 (/srv/b.img): differences: 2 mismatched regions\n"
    );
}

/// A datagram socket standing in for the service manager's notify socket.
struct Notify {
    sock: UnixDatagram,
    /// What NOTIFY_SOCKET says.
    env: String,
}

impl Notify {
    fn at_path(p: &Path) -> Notify {
        let sock = UnixDatagram::bind(p).unwrap();
        Notify::new(sock, p.to_str().unwrap().to_string())
    }

    fn abstract_named(name: &str) -> Notify {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&a).unwrap();
        Notify::new(sock, format!("@{name}"))
    }

    fn new(sock: UnixDatagram, env: String) -> Notify {
        // A guard, not a measure: a serve that never says anything fails the test.
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Notify { sock, env }
    }

    /// The next message.
    fn next(&self, log: &dyn Fn() -> String) -> String {
        let mut b = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut b)
            .unwrap_or_else(|e| panic!("no notification from serve ({e}):\n{}", log()));
        String::from_utf8_lossy(&b[..n]).into_owned()
    }
}

/// `mirrorctl serve a.img --socket SOCK EXTRA` with `env`, stderr into `log`.
fn spawn_serve(fx: &Fx, sock: &Path, extra: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let mut c = Command::new(bin());
    c.arg("serve")
        .arg("a.img")
        .args(if sock.as_os_str().is_empty() {
            vec![]
        } else {
            vec!["--socket", sock.to_str().unwrap()]
        })
        .args(extra)
        .current_dir(fx.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM");
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("starting mirrorctl serve")
}

fn sigterm_and_wait(c: &mut Child, log: &Path) -> i32 {
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = c.wait().unwrap();
    st.code().unwrap_or_else(|| {
        panic!(
            "serve died of {st}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })
}

/// Kills the child on drop (a failed assertion leaves no serve running).
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_says_ready_once_clients_get_in_and_stopping_when_sigterm_comes() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    let notify = Notify::at_path(&fx.path("notify.sock"));
    let sock = fx.path("serve.sock");
    let log = fx.path("serve.log");
    let mut serve = Reap(spawn_serve(
        &fx,
        &sock,
        &[],
        &[("NOTIFY_SOCKET", &notify.env)],
        &log,
    ));
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = notify.next(&logged);
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines[0], "READY=1", "{ready}");
    // At that moment (nothing waited for) the socket takes clients and serves the export.
    UnixStream::connect(&sock).unwrap_or_else(|e| panic!("READY=1 before listening: {e}"));
    let info = crate::serve::client(
        "nbdinfo",
        "libnbd-bin",
        &["--size", &format!("nbd+unix:///?socket={}", sock.display())],
    );
    assert_eq!(info.trim(), (64 * MIB).to_string());
    assert!(
        lines.iter().any(|l| l.starts_with("STATUS=serving ")
            && l.contains(&format!("socket={}", sock.display()))),
        "{ready}"
    );
    // The admin socket is up too: status sees the server.
    let st = fx.status();
    assert_eq!(st["running"]["command"], "serve", "{st:#}");
    let code = sigterm_and_wait(&mut serve.0, &log);
    assert_eq!(code, 0, "{}", logged());
    let stopping = notify.next(&logged);
    assert!(
        stopping.lines().next() == Some("STOPPING=1")
            && stopping.contains("STATUS=stopping on SIGTERM"),
        "{stopping}"
    );
    let syncing = notify.next(&logged);
    assert_eq!(
        syncing,
        "STATUS=stopping: syncing every leg and clearing the write intents"
    );
    assert!(!logged().contains("NOTIFY_SOCKET"), "{}", logged());
    assert_eq!(fx.status()["clean"], true);
}

#[test]
fn serve_notifies_an_abstract_socket_and_a_dead_notify_socket_is_one_warning_not_a_failure() {
    let fx = Fx::create("32M", "64K");
    let name = format!("mirrorctl-systemd-test-{}", std::process::id());
    let notify = Notify::abstract_named(&name);
    let sock = fx.path("serve.sock");
    let log = fx.path("serve.log");
    let mut serve = Reap(spawn_serve(
        &fx,
        &sock,
        &[],
        &[("NOTIFY_SOCKET", &notify.env)],
        &log,
    ));
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(notify.next(&logged).starts_with("READY=1\n"));
    UnixStream::connect(&sock).unwrap();
    assert_eq!(sigterm_and_wait(&mut serve.0, &log), 0, "{}", logged());
    assert!(notify.next(&logged).starts_with("STOPPING=1\n"));

    // Nobody listening at NOTIFY_SOCKET: said once, serving goes on and stops cleanly.
    let gone = fx.path("nobody.sock");
    let mut serve = Reap(spawn_serve(
        &fx,
        &sock,
        &[],
        &[("NOTIFY_SOCKET", gone.to_str().unwrap())],
        &log,
    ));
    let t = std::time::Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            serve.0.try_wait().unwrap().is_none(),
            "serve exited:\n{}",
            logged()
        );
        assert!(t.elapsed() < Duration::from_secs(30), "{}", logged());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sigterm_and_wait(&mut serve.0, &log), 0, "{}", logged());
    let text = logged();
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("NOTIFY_SOCKET"))
        .collect();
    assert_eq!(warned.len(), 1, "{text}");
    assert!(
        warned[0].starts_with("mirrorctl serve: warning: telling the service manager READY=1"),
        "{text}"
    );
    assert!(text.contains("the mirror is healthy"), "{text}");
}

/// `DEV:INO` of a file, as JOURNAL_STREAM names journald's stream.
fn dev_ino(p: &Path) -> (u64, u64) {
    let m = std::fs::metadata(p).unwrap();
    (m.dev(), m.ino())
}

#[test]
fn log_lines_carry_syslog_priorities_only_when_stderr_is_the_stream_journal_stream_names() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    // An unclean stop first, so that the next serve has a note to log.
    let log0 = fx.path("serve0.log");
    let sock = fx.path("serve.sock");
    let mut first = Reap(spawn_serve(&fx, &sock, &[], &[], &log0));
    let t = std::time::Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(first.0.try_wait().unwrap().is_none(), "serve exited");
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    // A write keeps its extent marked: the kill leaves an unclean stop to recover.
    crate::serve::qemu_io(
        &format!("nbd+unix:///?socket={}", sock.display()),
        &["write -P 7 0 64k"],
    );
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let _ = std::fs::remove_file(&sock);

    // Under journald: stderr is the stream JOURNAL_STREAM names. A warning (a clear-text
    // address beyond loopback, --insecure), a note (the unclean stop), info lines.
    let log = fx.path("journal.log");
    std::fs::File::create(&log).unwrap();
    let (dev, ino) = dev_ino(&log);
    let stream = format!("{dev}:{ino}");
    let serve_journald = |log: &Path, stream: &str| {
        let mut c = Command::new(bin());
        c.args(["serve", "a.img", "--listen", "0.0.0.0:21301", "--insecure"])
            .current_dir(fx.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().append(true).open(log).unwrap())
            .env_remove("NOTIFY_SOCKET")
            .env("JOURNAL_STREAM", stream);
        let mut child = Reap(c.spawn().unwrap());
        let t = std::time::Instant::now();
        while !std::fs::read_to_string(log).unwrap().contains("serving ") {
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "serve exited:\n{}",
                std::fs::read_to_string(log).unwrap()
            );
            assert!(t.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sigterm_and_wait(&mut child.0, log), 0);
        std::fs::read_to_string(log).unwrap()
    };
    let text = serve_journald(&log, &stream);
    for l in text.lines() {
        let p = l.get(..3).unwrap_or("");
        assert!(
            matches!(p, "<3>" | "<4>" | "<5>" | "<6>"),
            "a line without its priority: {l:?}\n{text}"
        );
    }
    let line = |prefix: &str| text.lines().any(|l| l.starts_with(prefix));
    assert!(
        line("<4>mirrorctl serve: warning: --listen 0.0.0.0:21301"),
        "{text}"
    );
    assert!(line("<5>mirrorctl serve: note: "), "{text}");
    assert!(line("<6>mirrorctl serve: serving "), "{text}");
    assert!(line("<6>mirrorctl serve: stopped on SIGTERM"), "{text}");

    // An error of any command: <3>.
    let err = fx.path("err.log");
    std::fs::File::create(&err).unwrap();
    let (d, i) = dev_ino(&err);
    let o = Command::new(bin())
        .args(["status", "nosuch.img"])
        .current_dir(fx.dir.path())
        .env("JOURNAL_STREAM", format!("{d}:{i}"))
        .stderr(std::fs::OpenOptions::new().append(true).open(&err).unwrap())
        .status()
        .unwrap();
    assert_eq!(o.code(), Some(2));
    let mut said = String::new();
    std::fs::File::open(&err)
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(
        said.starts_with("<3>mirrorctl: ") && said.lines().count() == 1,
        "{said}"
    );

    // JOURNAL_STREAM inherited by a process whose stderr goes elsewhere: no prefixes. The
    // stream named is journal.log's, which still exists, so it cannot be other.log's inode
    // (a made-up inode number once was: ext4 gave other.log `ino + 1`).
    let other = fx.path("other.log");
    std::fs::File::create(&other).unwrap();
    assert_ne!(dev_ino(&other), (dev, ino));
    let text = serve_journald(&other, &stream);
    assert!(text.contains("mirrorctl serve: serving "), "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("mirrorctl serve: ")),
        "{text}"
    );
}

/// The README's install block (the fenced block that opens with the marker line).
fn readme_install_block() -> String {
    const MARKER: &str = "# install (tests/cli/systemd.rs runs this block)";
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find(&format!("```sh\n{MARKER}\n"))
        .unwrap_or_else(|| panic!("README has no ```sh block opening with `{MARKER}`"));
    let body = &readme[start + "```sh\n".len()..];
    body[..body.find("\n```").expect("the block's end")].to_string()
}

#[test]
fn the_readme_install_block_with_prefix_and_destdir_installs_every_file_and_units_that_verify() {
    require_root("a private mount namespace in which /opt/mc is the staged install");
    require("unshare", "util-linux");
    require("objcopy", "binutils");
    require("readelf", "binutils");
    require("man", "man-db");
    let block = readme_install_block();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("stage");
    let target = Path::new(bin()).parent().unwrap().parent().unwrap();
    let o = Command::new("sh")
        .arg("-euc")
        .arg(&block)
        .current_dir(repo())
        .env("PREFIX", "/opt/mc")
        .env("DESTDIR", &dest)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("UNITDIR")
        .env_remove("OCFDIR")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the install block failed: {o:?}\n{block}"
    );
    let root = dest.join("opt/mc");
    let mut want: Vec<(PathBuf, u32)> = vec![
        (root.join("bin/mirrorctl"), 0o755),
        (root.join("bin/.debug/mirrorctl.debug"), 0o644),
        (root.join("lib/mirrorctl/alert"), 0o755),
        (root.join("lib/ocf/resource.d/mirrorctl/mirror"), 0o755),
        (
            root.join("share/bash-completion/completions/mirrorctl"),
            0o644,
        ),
        (root.join("share/zsh/site-functions/_mirrorctl"), 0o644),
        (
            root.join("share/fish/vendor_completions.d/mirrorctl.fish"),
            0o644,
        ),
    ];
    for e in std::fs::read_dir(repo().join("man")).unwrap() {
        let p = e.unwrap().path();
        let sec = p.extension().unwrap().to_string_lossy().into_owned();
        want.push((
            root.join(format!("share/man/man{sec}"))
                .join(p.file_name().unwrap()),
            0o644,
        ));
    }
    let units = shipped_units();
    let unitdir = root.join("lib/systemd/system");
    for u in &units {
        want.push((unitdir.join(u), 0o644));
    }
    for (p, mode) in &want {
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(m.permissions().mode() & 0o777, *mode, "{}", p.display());
    }
    // Nothing outside DESTDIR$PREFIX.
    let mut all = Vec::new();
    let mut stack = vec![dest.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                all.push(p);
            }
        }
    }
    all.sort();
    let mut expected: Vec<PathBuf> = want.iter().map(|(p, _)| p.clone()).collect();
    expected.sort();
    assert_eq!(all, expected);
    for u in &units {
        let text = std::fs::read_to_string(unitdir.join(u)).unwrap();
        assert!(!text.contains("/usr/local"), "{u}:\n{text}");
        if u.ends_with(".service") {
            assert!(text.contains("/opt/mc/bin/mirrorctl "), "{u}:\n{text}");
        }
    }
    // The binary ships small: no debug sections, its symbols kept, and a debug link to the
    // file beside it that holds the line tables.
    let sections = |p: &Path| {
        let o = Command::new("readelf").arg("-SW").arg(p).output().unwrap();
        assert!(o.status.success(), "readelf {}: {o:?}", p.display());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let installed = root.join("bin/mirrorctl");
    let s = sections(&installed);
    assert!(
        !s.contains(".debug_info") && !s.contains(".debug_line"),
        "{s}"
    );
    assert!(s.contains(".symtab") && s.contains(".gnu_debuglink"), "{s}");
    let size = std::fs::metadata(&installed).unwrap().len();
    assert!(size < 20 << 20, "the installed binary is {size} bytes");
    assert!(sections(&root.join("bin/.debug/mirrorctl.debug")).contains(".debug_line"));
    let v = Command::new(&installed).arg("--version").output().unwrap();
    assert!(v.status.success(), "{v:?}");
    // The OCF agent's wrapper runs the installed binary.
    let agent = std::fs::read_to_string(root.join("lib/ocf/resource.d/mirrorctl/mirror")).unwrap();
    assert_eq!(
        agent,
        "#!/bin/sh\nexec /opt/mc/bin/mirrorctl ocf-agent \"$@\"\n"
    );
    let events = std::fs::read_to_string(unitdir.join("mirrorctl-events@.service")).unwrap();
    assert!(
        events.contains("--exec /opt/mc/lib/mirrorctl/alert "),
        "{events}"
    );
    // The installed units verify where they will run: /opt/mc is the staged tree (in a
    // mount namespace of this command only), man pages from /opt/mc/share/man.
    let mut script = String::from(
        "mount -t tmpfs mirrorctl-systemd-test /opt && mkdir /opt/mc && mount --bind \"$STAGE\" /opt/mc && cd /opt/mc/lib/systemd/system && rc=0 && ",
    );
    for u in &units {
        script.push_str(&format!(
            "{{ MANPATH=/opt/mc/share/man systemd-analyze verify --man=yes ./{u} || rc=1; }} && "
        ));
    }
    script.push_str("exit $rc");
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("STAGE", &root)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && !said.contains("mirrorctl"),
        "systemd-analyze verify on the installed units: {said}"
    );
}
