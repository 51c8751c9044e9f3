//! Remote secondaries over NBD (issue 6), against real servers started and stopped by the
//! tests: qemu-nbd over a Unix socket and over TCP on 127.0.0.1, nbdkit with its error
//! filter, a read-only export, a server killed in the middle of a pipe write and restarted,
//! and a server that accepts connections but never answers.

use crate::support::*;
use serde_json::Value;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed (and reaped) on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
}

impl Server {
    pub(crate) fn spawn(cmd: &mut Command) -> Server {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e} (run tests/setup.sh)"));
        Server { child }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what} did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// qemu-nbd exporting `file` as `exp` on a Unix socket.
pub(crate) fn qemu_unix(file: &Path, sock: &Path, read_only: bool) -> Server {
    require("qemu-nbd", "qemu-utils");
    let _ = std::fs::remove_file(sock);
    let mut c = Command::new("qemu-nbd");
    c.args(["-f", "raw", "--persistent", "--shared=8", "-x", "exp", "-k"])
        .arg(sock);
    if read_only {
        c.arg("-r");
    }
    c.arg(file).stderr(Stdio::null());
    let s = Server::spawn(&mut c);
    wait_for("qemu-nbd", || {
        std::os::unix::net::UnixStream::connect(sock).is_ok()
    });
    s
}

/// qemu-nbd exporting `file` as `exp` on 127.0.0.1, on a port found free; returns the
/// server and its port. A port found free can be taken before qemu-nbd binds it (another
/// test's socket): qemu-nbd then exits, and a new port is tried.
fn qemu_tcp(file: &Path) -> (Server, u16) {
    require("qemu-nbd", "qemu-utils");
    for _ in 0..5 {
        let port = free_port();
        let mut s = Server::spawn(
            Command::new("qemu-nbd")
                .args(["-f", "raw", "--persistent", "--shared=8", "-x", "exp"])
                .args(["-b", "127.0.0.1", "-p", &port.to_string()])
                .arg(file)
                .stderr(Stdio::null()),
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (s, port);
            }
            if s.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s.kill();
    }
    panic!("qemu-nbd on TCP did not come up on any of 5 ports");
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///exp?socket={}", sock.display())
}

/// A backing file big enough for a secondary of the mirror in `fx`.
pub(crate) fn backing(fx: &Fx, name: &str) -> PathBuf {
    let g = fx.geometry();
    let p = fx.path(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(g.data_offset + g.data_size).unwrap();
    p
}

pub(crate) fn leg0(fx: &Fx) -> Value {
    fx.status()["legs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["slot"] == 0)
        .cloned()
        .unwrap_or_else(|| panic!("no leg in slot 0: {:#}", fx.status()))
}

/// Pipes `data` into `mirrorctl --timeout 2s write a.img`, kills `server` once `first`
/// bytes are in, and checks the write ends degraded (exit 3) within 30 s; its stderr.
pub(crate) fn write_while_the_server_dies(
    fx: &Fx,
    data: &[u8],
    first: usize,
    server: &mut Server,
) -> String {
    let mut child = spawn_piped(fx.dir.path(), &["--timeout", "2s", "write", "a.img"], true);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&data[..first]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    stdin.write_all(&data[first..]).unwrap();
    drop(stdin);
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the primary hung"
    );
    stderr
}

pub(crate) fn same_data_areas(fx: &Fx, other: &Path) -> Option<u64> {
    let g = fx.geometry();
    first_difference_between(&fx.path("a.img"), other, g.data_offset, g.data_size)
}

#[test]
fn a_secondary_over_a_unix_socket_receives_every_write_byte_for_byte() {
    let fx = Fx::create("64M", "64K");
    let file = backing(&fx, "remote.raw");
    let sock = fx.path("nbd.sock");
    let mut server = qemu_unix(&file, &sock, false);
    let uri = unix_uri(&sock);
    let o = fx.ok(&["attach", "a.img", &uri]);
    assert!(o.stdout.contains("slot 0"), "{o:?}");
    fx.write_random(0, 24 * MIB, 11);
    fx.write_random(40 * MIB, 3 * MIB + 123, 12);
    let l = leg0(&fx);
    assert_eq!(l["path"], uri.as_str(), "status shows the URI as given");
    assert_eq!(l["state"], "in-sync");
    assert_eq!(l["out_of_sync_regions"], 0);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    server.kill();
    assert_eq!(same_data_areas(&fx, &file), None);
    // The header lives in the export: the file is a secondary of this mirror, usable by path.
    let s = fx.ok(&["status", "remote.raw", "--json"]).json();
    assert_eq!(s["role"], "secondary");
    assert_eq!(s["mirror_uuid"], fx.status()["mirror_uuid"]);
}

#[test]
fn a_secondary_over_tcp_is_fractured_resynced_and_detached_by_its_uri() {
    let fx = Fx::create("32M", "64K");
    let file = backing(&fx, "tcp.raw");
    let (mut server, port) = qemu_tcp(&file);
    let uri = format!("nbd://127.0.0.1:{port}/exp");
    fx.ok(&["attach", "a.img", &uri]);
    // Attaching the same export again is refused (compared by canonical URI).
    let o = fx.run(&["attach", "a.img", &uri]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("already attached"), "{o:?}");
    fx.ok(&["fracture", "a.img", &uri]);
    random_file(&fx.path("five.bin"), 5 * 64 * KIB, 21);
    let o = fx.run(&["write", "a.img", "--offset", "1M", "--input", "five.bin"]);
    assert_eq!(o.code, 3, "a write with a fractured leg is degraded: {o:?}");
    let l = leg0(&fx);
    assert_eq!(l["state"], "fractured-by-admin");
    assert_eq!(l["out_of_sync_regions"], 5);
    let r = fx.ok(&["resync", "a.img", &uri, "--json"]).json();
    assert_eq!(r["bytes"], 5 * 64 * KIB, "{r:#}");
    assert_eq!(leg0(&fx)["state"], "in-sync");
    fx.ok(&["detach", "a.img", &uri]);
    assert_eq!(fx.status()["legs"].as_array().unwrap().len(), 0);
    server.kill();
    assert_eq!(same_data_areas(&fx, &file), None);
}

#[test]
fn a_server_killed_mid_write_fractures_the_leg_and_a_restarted_one_is_resynced_from_the_log() {
    let fx = Fx::create("128M", "64K");
    let file = backing(&fx, "remote.raw");
    let sock = fx.path("nbd.sock");
    let mut server = qemu_unix(&file, &sock, false);
    let uri = unix_uri(&sock);
    fx.ok(&["attach", "a.img", &uri]);

    let input = fx.path("input.bin");
    random_file(&input, 96 * MIB, 31);
    let data = std::fs::read(&input).unwrap();
    let stderr = write_while_the_server_dies(&fx, &data, 24 * MIB as usize, &mut server);
    assert!(
        stderr.contains(&uri) || stderr.contains("slot 0"),
        "{stderr}"
    );

    let l = leg0(&fx);
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    assert!(!l["last_error"].as_str().unwrap().is_empty(), "{l:#}");
    let pending = u(&l["out_of_sync_regions"]);
    assert!(pending > 0 && pending <= 96 * MIB / (64 * KIB), "{l:#}");
    // The primary has everything.
    let g = fx.geometry();
    let a = std::fs::read(fx.path("a.img")).unwrap();
    assert!(
        a[g.data_offset as usize..(g.data_offset + 96 * MIB) as usize] == data[..],
        "primary data differs from the input"
    );

    let _server = qemu_unix(&file, &sock, false);
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(
        u(&r["regions"]),
        pending,
        "resync copies exactly the logged regions: {r:#}"
    );
    assert_eq!(leg0(&fx)["state"], "in-sync");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(same_data_areas(&fx, &file), None);
}

#[test]
fn write_errors_injected_by_nbdkit_fracture_the_leg_with_the_error_text() {
    require("nbdkit", "nbdkit");
    let fx = Fx::create("32M", "64K");
    let file = backing(&fx, "remote.raw");
    let sock = fx.path("kit.sock");
    let trigger = fx.path("fail-writes");
    let _server = Server::spawn(
        Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&sock)
            .args(["--filter=error", "file"])
            .arg(format!("file={}", file.display()))
            .args(["error=EIO", "error-pwrite-rate=100%"])
            .stderr(Stdio::null())
            .arg(format!("error-pwrite-file={}", trigger.display())),
    );
    wait_for("nbdkit", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    fx.ok(&["attach", "a.img", &uri]);
    fx.write_random(0, 2 * MIB, 41);

    std::fs::write(&trigger, b"").unwrap();
    let input = fx.path("in.bin");
    random_file(&input, MIB, 42);
    let o = fx.run(&["write", "a.img", "--offset", "4M", "--input", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let l = leg0(&fx);
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    let err = l["last_error"].as_str().unwrap();
    assert!(err.contains("Input/output error"), "{l:#}");
    assert_eq!(l["out_of_sync_regions"], 16, "{l:#}");

    std::fs::remove_file(&trigger).unwrap();
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(r["regions"], 16, "{r:#}");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(same_data_areas(&fx, &file), None);
}

#[test]
fn a_read_only_export_is_refused_at_attach_and_nothing_changes() {
    let fx = Fx::create("32M", "64K");
    let file = backing(&fx, "ro.raw");
    let sock = fx.path("ro.sock");
    let _server = qemu_unix(&file, &sock, true);
    let before = std::fs::read(fx.path("a.img")).unwrap();
    let o = fx.run(&["attach", "a.img", &unix_uri(&sock)]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("read-only"), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(
        std::fs::read(fx.path("a.img")).unwrap() == before,
        "the primary changed"
    );
    assert!(std::fs::read(&file).unwrap().iter().all(|&b| b == 0));
    assert_eq!(fx.status()["legs"].as_array().unwrap().len(), 0);
}

#[test]
fn a_malformed_uri_or_an_absent_server_is_refused_at_attach_with_the_reason() {
    let fx = Fx::create("32M", "64K");
    let o = fx.run(&["attach", "a.img", "nbd+unix:///exp"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("socket="), "{o:?}");
    // A port held bound but not listening: connecting is refused, and no other test's
    // server can take the port meanwhile (a port merely found free could be).
    let held = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    rustix::net::bind(&held, &any).unwrap();
    let port = std::net::SocketAddr::try_from(rustix::net::getsockname(&held).unwrap())
        .unwrap()
        .port();
    let o = fx.run(&["attach", "a.img", &format!("nbd://127.0.0.1:{port}/x")]);
    drop(held);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("Connection refused"), "{o:?}");
    assert_eq!(fx.status()["legs"].as_array().unwrap().len(), 0);
}

#[test]
fn a_server_that_never_answers_is_fractured_within_the_timeout() {
    let fx = Fx::create("32M", "64K");
    let file = backing(&fx, "remote.raw");
    let sock = fx.path("nbd.sock");
    let mut server = qemu_unix(&file, &sock, false);
    fx.ok(&["attach", "a.img", &unix_uri(&sock)]);
    server.kill();
    // Something else now listens on the socket, accepts, and never says a word.
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    let silent = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().take(4) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let input = fx.path("in.bin");
    random_file(&input, MIB, 51);
    let t = Instant::now();
    let o = fx.run(&["--timeout", "1s", "write", "a.img", "--input", "in.bin"]);
    let took = t.elapsed();
    assert_eq!(o.code, 3, "{o:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        o.stderr.contains("--timeout") || o.stderr.contains("timed out"),
        "{o:?}"
    );
    let l = leg0(&fx);
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    assert_eq!(l["out_of_sync_regions"], 16, "{l:#}");
    drop(silent);
}

#[test]
fn a_secondary_can_be_promoted_by_its_uri_and_the_old_primary_is_demoted() {
    let fx = Fx::create("32M", "64K");
    let file = backing(&fx, "remote.raw");
    let sock = fx.path("nbd.sock");
    let mut server = qemu_unix(&file, &sock, false);
    let uri = unix_uri(&sock);
    fx.ok(&["attach", "a.img", &uri]);
    fx.write_random(0, 2 * MIB, 61);
    let p = fx.ok(&["promote", &uri, "--json"]).json();
    assert_eq!(p["old_primary_reachable"], true, "{p:#}");
    server.kill();
    // On "the remote machine": the export's file is the primary now, the old one its leg.
    let s = fx.ok(&["status", "remote.raw", "--json"]).json();
    assert_eq!(s["role"], "primary", "{s:#}");
    assert_eq!(fx.status()["role"], "secondary");
    assert_eq!(leg(&s, 0)["state"], "in-sync", "{s:#}");
    random_file(&fx.path("w.bin"), 64 * KIB, 62);
    fx.ok(&["write", "remote.raw", "--offset", "4M", "--input", "w.bin"]);
    assert_eq!(
        first_difference_between(
            &file,
            &fx.path("a.img"),
            u(&s["data_offset"]),
            u(&s["data_size"])
        ),
        None
    );
}
