//! `mirrorctl export` (issue 27): a primary on this machine with an NBD leg (nbd:// and
//! nbds:// with client certificates) on a `mirrorctl export` of its secondary; attach,
//! writes, fracture and resync, the export killed mid-write and restarted, promotion through
//! the export (which then refuses and exits, and `serve` takes the image by path), a former
//! primary taken back with --rejoin, a busy image, and third-party clients (qemu-io,
//! nbdinfo) seeing the raw image, header included.

use crate::nbd::{same_data_areas, write_while_the_server_dies, Server};
use crate::serve::{qemu_io, Serving};
use crate::support::*;
use crate::tls::{strs, Pki};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A free port of this test file's range (21000-21999 on 127.0.0.1).
fn port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let p = 21000 + NEXT.fetch_add(1, Ordering::SeqCst) % 1000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A running `mirrorctl export`, its stderr in a log file; killed (by pid) on drop.
struct Exporting {
    server: Server,
    log: std::path::PathBuf,
    port: u16,
    name: String,
}

impl Exporting {
    /// `export IMAGE --listen 127.0.0.1:PORT --export NAME EXTRA...`, once it listens.
    fn start(fx: &Fx, image: &str, name: &str, extra: &[&str]) -> Exporting {
        Self::start_on(fx, image, name, port(), extra)
    }

    fn start_on(fx: &Fx, image: &str, name: &str, port: u16, extra: &[&str]) -> Exporting {
        let log = fx.path(&format!(
            "export-{name}-{port}-{}.log",
            crate::serve::rand_tag()
        ));
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(bin())
            .args(["export", image, "--listen", &listen, "--export", name])
            .args(extra)
            .current_dir(fx.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting mirrorctl export");
        let mut e = Exporting {
            server: Server { child },
            log,
            port,
            name: name.to_string(),
        };
        let t = Instant::now();
        let log = text_of(&e.log);
        while !log().contains(" serving ") {
            still_starting(
                "export",
                &mut e.server.child,
                t,
                Duration::from_secs(10),
                &log,
            );
        }
        e
    }

    fn uri(&self) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, self.name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }

    /// Waits up to `limit` for it to exit by itself: its exit code and log.
    fn wait(&mut self, limit: Duration) -> (i32, String) {
        let log = text_of(&self.log);
        let (st, _) = wait_exit("export", &mut self.server.child, limit, &log);
        (st.code().expect("export died of a signal"), self.log())
    }

    /// SIGTERM: its exit code and log.
    fn stop(&mut self) -> (i32, String) {
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.wait(Duration::from_secs(30))
    }
}

/// A blank file big enough for a secondary of the mirror in `fx`.
fn blank(fx: &Fx, name: &str) -> std::path::PathBuf {
    crate::nbd::backing(fx, name)
}

/// `mirrorctl export ARGS...` expected to be refused: its output.
fn refused(fx: &Fx, args: &[&str], code: i32) -> Out {
    let mut a = vec!["export"];
    a.extend(args);
    let o = fx.run(&a);
    assert_eq!(o.code, code, "{o:?}");
    assert!(o.stderr.starts_with("mirrorctl: "), "{o:?}");
    o
}

#[test]
fn a_blank_image_exported_over_tcp_is_attached_mirrors_every_write_and_is_fractured_and_resynced() {
    let fx = Fx::create("48M", "64K");
    let file = blank(&fx, "b.img");
    let mut ex = Exporting::start(&fx, "b.img", "sec", &[]);
    assert!(
        ex.log().contains("holds no mirrorctl header (blank)"),
        "{}",
        ex.log()
    );
    let uri = ex.uri();
    fx.ok(&["attach", "a.img", &uri]);
    fx.write_random(0, 6 * MIB, 1);
    fx.write_random(30 * MIB + 4096, 3 * MIB + 777, 2);
    assert_eq!(same_data_areas(&fx, &file), None);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    // The export holds the image: status names it, a local write says busy.
    let s = fx.ok(&["status", "b.img"]);
    assert!(
        s.stdout.contains(&format!("export (pid {})", ex.pid())),
        "{s:?}"
    );
    let s = fx.ok(&["status", "b.img", "--json"]).json();
    assert_eq!(s["role"], "secondary", "{s:#}");
    assert_eq!(s["running"]["command"], "export", "{s:#}");
    assert_eq!(u(&s["running"]["pid"]), u64::from(ex.pid()), "{s:#}");
    let o = fx.run(&["write", "b.img", "--input", "/dev/null"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(o.stderr.contains("mirrorctl export"), "{o:?}");
    // Fracture, write, resync: exactly the regions written.
    fx.ok(&["fracture", "a.img", &uri]);
    random_file(&fx.path("three.bin"), 3 * 64 * KIB, 3);
    let o = fx.run(&["write", "a.img", "--offset", "8M", "--input", "three.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(same_data_areas(&fx, &file).is_some());
    let r = fx.ok(&["resync", "a.img", &uri, "--json"]).json();
    assert_eq!(r["bytes"], 3 * 64 * KIB, "{r:#}");
    assert_eq!(same_data_areas(&fx, &file), None);
    let (code, log) = ex.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("stopped on SIGTERM"), "{log}");
    assert!(log.contains("the image is synced"), "{log}");
    assert!(
        log.lines().all(|l| l.starts_with("mirrorctl export: ")),
        "{log}"
    );
    // Stopped, the image is free: a secondary of the mirror, by path.
    let s = fx.ok(&["status", "b.img", "--json"]).json();
    assert_eq!(s["mirror_uuid"], fx.status()["mirror_uuid"], "{s:#}");
}

#[test]
fn an_export_killed_mid_write_fractures_the_leg_and_once_restarted_is_resynced_from_the_log() {
    let fx = Fx::create("96M", "64K");
    let file = blank(&fx, "b.img");
    let mut ex = Exporting::start(&fx, "b.img", "sec", &[]);
    let (port, uri) = (ex.port, ex.uri());
    fx.ok(&["attach", "a.img", &uri]);
    let input = fx.path("input.bin");
    random_file(&input, 64 * MIB, 4);
    let data = std::fs::read(&input).unwrap();
    let stderr = write_while_the_server_dies(&fx, &data, 16 * MIB as usize, &mut ex.server);
    assert!(
        stderr.contains("slot 0") || stderr.contains(&uri),
        "{stderr}"
    );
    let l = crate::nbd::leg0(&fx);
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    let pending = u(&l["out_of_sync_regions"]);
    assert!(pending > 0, "{l:#}");
    // Restarted on the same port: the lock of the killed one is gone with it.
    let mut ex = Exporting::start_on(&fx, "b.img", "sec", port, &[]);
    assert!(ex.log().contains("holds a secondary"), "{}", ex.log());
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(u(&r["regions"]), pending, "{r:#}");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(same_data_areas(&fx, &file), None);
    assert_eq!(ex.stop().0, 0);
}

#[test]
fn promoting_through_an_nbds_export_makes_it_refuse_and_exit_and_serve_then_takes_the_image() {
    let fx = Fx::create("32M", "64K");
    blank(&fx, "b.img");
    let pki = Pki::new(&fx.path("pki"), "export");
    let server_args = [
        "--tls-cert".to_string(),
        format!("{}/server-cert.pem", pki.dir()),
        "--tls-key".to_string(),
        format!("{}/server-key.pem", pki.dir()),
        "--tls-ca".to_string(),
        format!("{}/ca-cert.pem", pki.dir()),
    ];
    let mut ex = Exporting::start(&fx, "b.img", "sec", &strs(&server_args));
    assert!(ex.log().contains("TLS required"), "{}", ex.log());
    let uri = format!("nbds://127.0.0.1:{}/sec", ex.port);
    // Without a client certificate the export refuses the primary.
    let o = fx.run(&["attach", "a.img", &uri]);
    assert_ne!(o.code, 0, "{o:?}");
    let mut attach = vec!["attach", "a.img", &uri];
    let tls = pki.attach_args();
    attach.extend(strs(&tls));
    fx.ok(&attach);
    fx.write_random(MIB, 5 * MIB, 5);
    assert_eq!(same_data_areas(&fx, &fx.path("b.img")), None);
    let leg = crate::nbd::leg0(&fx)["path"].as_str().unwrap().to_string();
    assert!(leg.starts_with("nbds://"), "{leg}");
    // Another client stays connected (a stale leg, say) across the promotion.
    require("qemu-io", "qemu-utils");
    let connected = |log: &str| log.matches(": connected (").count();
    let before = connected(&ex.log());
    let mut other = Command::new("qemu-io")
        .args([
            "--object",
            &format!(
                "tls-creds-x509,id=tls0,endpoint=client,dir={}",
                client_dir(&pki, &fx.path("qemu-tls"))
            ),
            "--image-opts",
            &format!(
                "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=sec,tls-creds=tls0",
                ex.port
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-io");
    let t = Instant::now();
    while connected(&ex.log()) == before {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", ex.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = fx.ok(&["promote", &leg, "--json"]).json();
    assert_eq!(p["old_primary_reachable"], true, "{p:#}");
    // The export saw the header become a primary's and exits once promote is done.
    let (code, log) = ex.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("became a primary"), "{log}");
    assert!(log.contains("mirrorctl serve b.img"), "{log}");
    // The other client's requests fail (ESHUTDOWN, or the connection is gone).
    {
        use std::io::Write;
        let mut i = other.stdin.take().unwrap();
        let _ = i.write_all(b"read -v 1M 512\nquit\n");
    }
    let out = other.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("read 512/512"), "{text}");
    // b.img is the primary now, a.img its secondary; serve takes b.img by path.
    let s = fx.ok(&["status", "b.img", "--json"]).json();
    assert_eq!(s["role"], "primary", "{s:#}");
    let sock = fx.path("b.sock");
    let srv = Serving::start_on(&fx, "b.img", &sock, &[]);
    let out = qemu_io(
        &format!("nbd+unix:///?socket={}", sock.display()),
        &["write -P 0x5a 0 64k", "flush"],
    );
    assert!(out.contains("wrote 65536/65536"), "{out}");
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    let g = fx.geometry();
    assert_eq!(
        first_difference_between(
            &fx.path("b.img"),
            &fx.path("a.img"),
            g.data_offset,
            g.data_size
        ),
        None
    );
}

/// A qemu client directory (endpoint=client) with this CA and its client pair.
fn client_dir(pki: &Pki, at: &Path) -> String {
    std::fs::create_dir_all(at).unwrap();
    for (from, to) in [
        ("ca-cert.pem", "ca-cert.pem"),
        ("client-cert.pem", "client-cert.pem"),
        ("client-key.pem", "client-key.pem"),
    ] {
        std::fs::copy(Path::new(&pki.dir()).join(from), at.join(to)).unwrap();
    }
    at.display().to_string()
}

/// Two machines with the image at the same path, played on one: machine A's a.img goes
/// away (to old.img), machine B's secondary takes its path.
#[test]
fn a_former_primary_is_exported_only_with_rejoin_and_the_current_primary_takes_it_back_through_it()
{
    let fx = Fx::create("32M", "64K");
    blank(&fx, "b.img");
    let mut ex = Exporting::start(&fx, "b.img", "sec", &[]);
    fx.ok(&["attach", "a.img", &ex.uri()]);
    fx.write_random(0, 4 * MIB, 6);
    assert_eq!(ex.stop().0, 0);
    std::fs::rename(fx.path("a.img"), fx.path("old.img")).unwrap();
    std::fs::rename(fx.path("b.img"), fx.path("a.img")).unwrap();
    // Unplanned failover on B: the recorded former primary's path names B's own image
    // there, so the former primary is not reachable (and not this command's own lock).
    let o = fx.run(&["promote", "a.img"]);
    assert_eq!(
        o.code, 3,
        "promoted, its former primary's slot out of sync: {o:?}"
    );
    assert!(o.stderr.contains("names a.img itself"), "{o:?}");
    assert_eq!(fx.status()["role"], "primary");
    random_file(&fx.path("new.bin"), 2 * MIB, 7);
    let o = fx.run(&["write", "a.img", "--offset", "10M", "--input", "new.bin"]);
    assert_eq!(
        o.code, 3,
        "written, its former primary's slot fractured: {o:?}"
    );
    let s = fx.ok(&["status", "old.img", "--json"]).json();
    assert_eq!(s["role"], "primary", "{s:#}");
    // The former primary comes back: refused as it is, offered with --rejoin.
    let o = refused(
        &fx,
        &[
            "old.img",
            "--listen",
            &format!("127.0.0.1:{}", port()),
            "--export",
            "old",
        ],
        2,
    );
    assert!(o.stderr.contains("--rejoin"), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    let mut old = Exporting::start(&fx, "old.img", "old", &["--rejoin"]);
    assert!(old.log().contains("--rejoin"), "{}", old.log());
    let a = fx.ok(&["attach", "a.img", &old.uri(), "--json"]).json();
    assert_eq!(a["slot"], 0, "{a:#}");
    assert_eq!(a["reattached"], true, "{a:#}");
    // Only what changed since the promotion (and its own last write window), not 32 MiB.
    let copied = u(&a["copied_bytes"]);
    assert!((2 * MIB..16 * MIB).contains(&copied), "{a:#}");
    assert!(old.log().contains("is a secondary again"), "{}", old.log());
    assert_eq!(crate::nbd::leg0(&fx)["state"], "in-sync");
    assert_eq!(same_data_areas(&fx, &fx.path("old.img")), None);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    // Still exported, now watched: its header says secondary.
    assert_eq!(old.stop().0, 0);
    let s = fx.ok(&["status", "old.img", "--json"]).json();
    assert_eq!(s["role"], "secondary", "{s:#}");
}

#[test]
fn an_image_another_mirrorctl_holds_is_busy_and_a_damaged_header_or_bad_flags_are_refused() {
    let fx = Fx::create("16M", "64K");
    let sock = fx.path("a.sock");
    let srv = Serving::start_on(&fx, "a.img", &sock, &[]);
    let listen = format!("127.0.0.1:{}", port());
    let o = refused(&fx, &["a.img", "--listen", &listen, "--rejoin"], 5);
    assert!(o.stderr.contains("busy"), "{o:?}");
    drop(srv);
    // Neither --listen nor --socket; a clear-text non-loopback address.
    refused(&fx, &["a.img"], 2);
    let o = refused(&fx, &["a.img", "--listen", "0.0.0.0:21999", "--rejoin"], 2);
    assert!(o.stderr.contains("--insecure"), "{o:?}");
    // A damaged header: both copies' payloads changed behind mirrorctl's back.
    blank(&fx, "b.img");
    let mut ex = Exporting::start(&fx, "b.img", "sec", &[]);
    fx.ok(&["attach", "a.img", &ex.uri()]);
    assert_eq!(ex.stop().0, 0);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(fx.path("b.img"))
            .unwrap();
        for at in [100u64, 128 * KIB + 100] {
            f.write_all_at(&[0xAB; 64], at).unwrap();
        }
    }
    let o = refused(&fx, &["b.img", "--listen", &listen], 2);
    assert!(o.stderr.contains("damaged"), "{o:?}");
    assert!(
        TcpListener::bind(listen.as_str()).is_ok(),
        "a refused export never listened"
    );
}

#[test]
fn qemu_io_and_nbdinfo_see_the_raw_image_header_included() {
    require("nbdinfo", "libnbd-bin");
    let fx = Fx::create("16M", "64K");
    let file = blank(&fx, "b.img");
    let ex = Exporting::start(&fx, "b.img", "sec", &[]);
    fx.ok(&["attach", "a.img", &ex.uri()]);
    let size = std::fs::metadata(&file).unwrap().len();
    let info = crate::serve::client("nbdinfo", "libnbd-bin", &["--json", &ex.uri()]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let e = &v["exports"][0];
    assert_eq!(u(&e["export-size"]), size, "{v:#}");
    assert_eq!(e["can_trim"], true, "{v:#}");
    assert_eq!(e["can_fua"], true, "{v:#}");
    // The first bytes are the header's magic.
    let out = qemu_io(&ex.uri(), &["read -v 0 8"]);
    assert!(out.contains("MRRCTLSB"), "{out}");
    // A write past the header lands at that very offset of the file.
    let g = fx.geometry();
    let at = g.data_offset + MIB;
    qemu_io(&ex.uri(), &[&format!("write -P 0x3c {at} 4k"), "flush"]);
    let b = std::fs::read(&file).unwrap();
    assert!(b[at as usize..at as usize + 4096]
        .iter()
        .all(|&x| x == 0x3c));
    // And zeroes (a hole punched) read back as zeros.
    qemu_io(&ex.uri(), &[&format!("write -z {at} 4k"), "flush"]);
    let b = std::fs::read(&file).unwrap();
    assert!(b[at as usize..at as usize + 4096].iter().all(|&x| x == 0));
}

#[test]
fn an_export_on_a_unix_socket_says_ready_to_systemd_once_it_listens_and_stopping_at_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let fx = Fx::create("16M", "64K");
    let file = blank(&fx, "b.img");
    let notify_path = fx.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sock = fx.path("b.sock");
    let log = fx.path("export-unix.log");
    let child = Command::new(bin())
        .args(["export", "b.img", "--socket", sock.to_str().unwrap()])
        .args(["--export", "sec"])
        .env("NOTIFY_SOCKET", &notify_path)
        .current_dir(fx.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting mirrorctl export");
    let mut server = Server { child };
    let next = || {
        let mut b = [0u8; 4096];
        let n = notify.recv(&mut b).unwrap_or_else(|e| {
            panic!(
                "no notification ({e}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains("serving b.img"), "{ready}");
    // Ready means listening: a client gets in at once.
    let uri = format!("nbd+unix:///sec?socket={}", sock.display());
    fx.ok(&["attach", "a.img", &uri]);
    fx.write_random(0, 2 * MIB, 8);
    assert_eq!(same_data_areas(&fx, &file), None);
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let stopping = next();
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
    assert!(stopping.contains("syncing the image"), "{stopping}");
    let st = server.child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(!sock.exists(), "the socket is removed at the stop");
}
