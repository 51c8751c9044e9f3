//! TLS for NBD both ways (issue 17), with certificates made here by openssl: `serve`
//! reached by nbdinfo, nbdcopy and qemu-io with a client certificate, and refusing clients
//! without one, with one from another CA, for a name `--tls-allow` does not list, or without
//! TLS; clients that say nothing or stall after STARTTLS cut off at `--handshake-limit`;
//! nbds secondaries on qemu-nbd (tls-creds-x509 with verify-peer) and nbdkit
//! (--tls=require), killed mid-write and resynced, attached live while serving, and moved
//! from clear text to TLS by re-attaching; servers whose certificate is for another name or
//! from another CA refused, fracturing nothing.

use crate::nbd::{backing, free_port, leg0, same_data_areas, wait_for, Server};
use crate::serve::{client, run_client, Serving};
use crate::support::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A CA and what it signed, under the names qemu, nbdkit and libnbd look for in a
/// directory: ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem.
pub(crate) struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    require("openssl", "openssl");
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Pki {
    /// A CA named `name`; its server certificate for localhost and 127.0.0.1.
    pub(crate) fn new(dir: &Path, name: &str) -> Pki {
        Self::with_server_names(dir, name, "DNS:localhost,IP:127.0.0.1")
    }

    fn with_server_names(dir: &Path, name: &str, san: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        let subj = format!("/CN={name} test CA");
        ca.extend([
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "30",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &ca);
        let p = Pki {
            dir: dir.to_path_buf(),
        };
        p.sign("server", "serverAuth", san);
        p.sign("client", "clientAuth", "DNS:client");
        p
    }

    /// `who`-cert.pem and `who`-key.pem, signed by this CA.
    fn sign(&self, who: &str, usage: &str, san: &str) {
        self.sign_for(who, usage, san, "digitalSignature,keyEncipherment");
    }

    /// [`Pki::sign`] for other test files (a node certificate for both ends, say).
    pub(crate) fn sign_pub(&self, who: &str, usage: &str, san: &str) {
        self.sign(who, usage, san);
    }

    /// [`Pki::sign`] with the key usage given.
    fn sign_for(&self, who: &str, usage: &str, san: &str, key_usage: &str) {
        let ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,{key_usage}\nextendedKeyUsage={usage}\nsubjectAltName={san}\n"
        );
        std::fs::write(self.dir.join(format!("{who}.ext")), ext).unwrap();
        let (key, csr, cert) = (
            format!("{who}-key.pem"),
            format!("{who}.csr"),
            format!("{who}-cert.pem"),
        );
        let subj = format!("/CN={who}");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "30",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.join(&key), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    pub(crate) fn dir(&self) -> String {
        self.dir.display().to_string()
    }

    /// A client's directory (libnbd's tls-certificates=, qemu's endpoint=client) holding
    /// this CA and the client pair of `client` (none: a client without a certificate).
    fn client_dir(&self, at: &Path, client: Option<&Pki>) -> String {
        std::fs::create_dir_all(at).unwrap();
        std::fs::copy(self.dir.join("ca-cert.pem"), at.join("ca-cert.pem")).unwrap();
        if let Some(c) = client {
            for f in ["client-cert.pem", "client-key.pem"] {
                std::fs::copy(c.dir.join(f), at.join(f)).unwrap();
            }
        }
        at.display().to_string()
    }

    /// The flags `serve` takes for this CA: its server pair, clients checked against it.
    fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.file("server-cert.pem"),
            "--tls-key".into(),
            self.file("server-key.pem"),
            "--tls-ca".into(),
            self.file("ca-cert.pem"),
        ]
    }

    /// The flags `attach` takes to reach a server of this CA with its client pair.
    pub(crate) fn attach_args(&self) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            self.file("ca-cert.pem"),
            "--tls-cert".into(),
            self.file("client-cert.pem"),
            "--tls-key".into(),
            self.file("client-key.pem"),
        ]
    }
}

/// `serve a.img --tls-cert CERT --tls-key KEY EXTRA...`, which must be refused as a usage
/// error (exit 2) naming what is wrong on its first line; its stderr.
fn serve_refused(fx: &Fx, cert: &str, key: &str, extra: &[&str]) -> String {
    let mut a = vec!["serve", "a.img", "--tls-cert", cert, "--tls-key", key];
    a.extend(extra);
    let o = fx.run(&a);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.starts_with("mirrorctl: "), "{o:?}");
    o.stderr
}

pub(crate) fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// Runs a client program expected to fail; returns its stderr.
fn client_fails(cmd: &str, package: &str, args: &[&str]) -> String {
    let o = run_client(cmd, package, args);
    assert!(
        !o.status.success(),
        "{cmd} {args:?} succeeded and should have been refused:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// qemu-io through TLS with the client pair in `dir`, on a Unix socket or TCP.
fn qemu_io_tls(dir: &str, server: &str, cmds: &[&str]) -> String {
    let obj = format!("tls-creds-x509,id=tls0,dir={dir},endpoint=client");
    let opts = format!("driver=nbd,{server},tls-creds=tls0");
    let mut a = vec!["--object", &obj, "--image-opts"];
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(&opts);
    let out = client("qemu-io", "qemu-utils", &a);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("failed:"),
        "qemu-io {cmds:?}:\n{out}"
    );
    out
}

#[test]
fn serve_with_tls_admits_nbdinfo_nbdcopy_and_qemu_io_with_a_client_certificate_and_their_writes_reach_every_leg(
) {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    let cdir = pki.client_dir(&fx.path("client"), Some(&pki));
    let s = Serving::start(&fx, &strs(&pki.serve_args()));
    let unix = format!(
        "nbds+unix:///?socket={}&tls-certificates={cdir}",
        s.sock.display()
    );
    let info = client("nbdinfo", "libnbd-bin", &[&unix]);
    assert!(info.contains("with TLS"), "{info}");
    assert!(info.contains("33554432"), "{info}");
    // qemu-io over the Unix socket (qemu checks the server's name: localhost).
    qemu_io_tls(
        &cdir,
        &format!(
            "server.type=unix,server.path={},tls-hostname=localhost",
            s.sock.display()
        ),
        &["write -P 0x5a 0 1M", "flush", "read -P 0x5a 0 1M"],
    );
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("TLS required of every client")
            && log.contains("TLS, client certificate verified"),
        "{log}"
    );

    // Over TCP on 127.0.0.1: nbdcopy writes through nbds://, the server's certificate
    // checked against the address.
    let (s, port) = Serving::start_tcp(&fx, "127.0.0.1", &strs(&pki.serve_args()));
    let src = fx.path("src.bin");
    random_file(&src, 4 * MIB, 7);
    let tcp = format!("nbds://127.0.0.1:{port}/?tls-certificates={cdir}");
    client("nbdcopy", "libnbd-bin", &[src.to_str().unwrap(), &tcp]);
    qemu_io_tls(
        &cdir,
        &format!("server.type=inet,server.host=127.0.0.1,server.port={port}"),
        &["write -P 0x33 8M 128k", "flush", "read -P 0x33 8M 128k"],
    );
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains(&format!("at nbds://127.0.0.1:{port}/")),
        "{log}"
    );

    // The journal says how each client came in.
    let ev = fx.ok(&["events", "a.img", "--json"]).stdout;
    let tls_clients = ev
        .lines()
        .filter(|l| {
            l.contains("client-connected") && l.contains("TLS, client certificate verified")
        })
        .count();
    assert!(tls_clients >= 3, "{ev}");
    let data = fx.data_area("a.img");
    let sent = std::fs::read(&src).unwrap();
    assert!(data[..4 * MIB as usize] == sent[..], "nbdcopy's data");
    assert!(data[8 * MIB as usize..][..128 << 10]
        .iter()
        .all(|&b| b == 0x33));
    crate::serve::legs_identical(&fx, &[&fx.path("b.img")]);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn clients_without_a_certificate_with_one_from_another_ca_or_without_tls_are_refused_and_nothing_is_written(
) {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    let other = Pki::new(&fx.path("other"), "other");
    let before = fx.data_area("a.img");
    let (s, port) = Serving::start_tcp(&fx, "127.0.0.1", &strs(&pki.serve_args()));
    let src = fx.path("src.bin");
    random_file(&src, MIB, 9);
    let src = src.to_str().unwrap();
    let no_cert = pki.client_dir(&fx.path("no-cert"), None);
    let foreign = pki.client_dir(&fx.path("foreign"), Some(&other));
    for dir in [&no_cert, &foreign] {
        let e = client_fails(
            "nbdcopy",
            "libnbd-bin",
            &[
                src,
                &format!("nbds://127.0.0.1:{port}/?tls-certificates={dir}"),
            ],
        );
        assert!(!e.is_empty());
    }
    let e = client_fails(
        "nbdcopy",
        "libnbd-bin",
        &[src, &format!("nbd://127.0.0.1:{port}/")],
    );
    assert!(!e.is_empty());
    // qemu-io with the other CA's client certificate is refused too (qemu checks its own
    // certificate against its CA file, so that holds both CAs).
    let qdir = fx.path("foreign-qemu");
    let foreign_q = pki.client_dir(&qdir, Some(&other));
    let mut both = std::fs::read(qdir.join("ca-cert.pem")).unwrap();
    both.extend(std::fs::read(other.dir.join("ca-cert.pem")).unwrap());
    std::fs::write(qdir.join("ca-cert.pem"), both).unwrap();
    let obj = format!("tls-creds-x509,id=tls0,dir={foreign_q},endpoint=client");
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},tls-creds=tls0"
    );
    client_fails(
        "qemu-io",
        "qemu-utils",
        &["--object", &obj, "--image-opts", "-c", "write 0 64k", &opts],
    );
    // GnuTLS (libnbd, qemu) sends no certificate the server's CA did not sign; mirrorctl's
    // own client (another mirror attaching this export) sends it, and it is refused.
    let chain = Fx::create("16M", "64K");
    let mut a = vec![
        "attach".to_string(),
        "a.img".into(),
        format!("nbds://127.0.0.1:{port}/"),
        "--tls-ca".into(),
        pki.file("ca-cert.pem"),
    ];
    a.extend(["--tls-cert".into(), other.file("client-cert.pem")]);
    a.extend(["--tls-key".into(), other.file("client-key.pem")]);
    let o = chain.run(&strs(&a));
    assert_eq!(o.code, 2, "{o:?}");
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
    assert!(refusals.len() >= 5, "{log}");
    // Each names the peer's address, and why.
    assert!(
        refusals.iter().all(|l| l.contains("127.0.0.1:")),
        "{refusals:#?}"
    );
    assert!(
        log.contains("did not start TLS")
            && log.contains("no certificate")
            && log.contains("not signed by the CA"),
        "{log}"
    );
    assert!(!log.contains("connected ("), "{log}");
    assert!(fx.data_area("a.img") == before, "a refused client wrote");
    assert_eq!(fx.verify(&[]).0, 0);
}

#[test]
fn serve_refuses_clear_text_beyond_loopback_without_insecure_a_key_others_can_read_and_tls_without_a_certificate(
) {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    let image = std::fs::read(fx.path("a.img")).unwrap();
    let o = fx.run(&["serve", "a.img", "--listen", "0.0.0.0:0"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("not a loopback address") && o.stderr.contains("--insecure"),
        "{o:?}"
    );
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    let o = fx.run(&["serve", "a.img", "--tls", "require"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--tls-cert FILE --tls-key FILE"), "{o:?}");
    let key = pki.file("server-key.pem");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = serve_refused(&fx, &pki.file("server-cert.pem"), &key, &[]);
    assert!(
        e.contains("readable by others") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A key that is not the certificate's.
    let e = serve_refused(
        &fx,
        &pki.file("server-cert.pem"),
        &pki.file("client-key.pem"),
        &[],
    );
    assert!(e.contains("belong together"), "{e}");
    assert!(
        std::fs::read(fx.path("a.img")).unwrap() == image,
        "a refused serve changed the primary"
    );
    // With --insecure it serves, and says so; with TLS required it needs no --insecure.
    let (s, port) = Serving::start_tcp(&fx, "0.0.0.0", &["--insecure"]);
    client(
        "nbdinfo",
        "libnbd-bin",
        &[&format!("nbd://127.0.0.1:{port}/")],
    );
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("--insecure"), "{log}");
    let (s, _) = Serving::start_tcp(&fx, "0.0.0.0", &strs(&pki.serve_args()));
    assert_eq!(s.stop().0, 0);
}

/// qemu-nbd exporting `file` as `exp` over TLS on 127.0.0.1:`port` with the server pair in
/// `dir`, clients' certificates checked (verify-peer).
fn qemu_nbd_tls(file: &Path, dir: &str, port: u16) -> Server {
    require("qemu-nbd", "qemu-utils");
    let obj = format!("tls-creds-x509,id=tls0,dir={dir},endpoint=server,verify-peer=yes");
    let log = format!("{dir}/qemu-nbd-{}.log", crate::serve::rand_tag());
    let mut s = Server::spawn(
        Command::new("qemu-nbd")
            .args(["--object", &obj, "--tls-creds", "tls0"])
            .args(["-f", "raw", "--persistent", "--shared=8", "-x", "exp"])
            .args(["-b", "127.0.0.1", "-p", &port.to_string()])
            .arg(file)
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let gone = s.child.try_wait().unwrap();
        assert!(
            gone.is_none() && t.elapsed() < Duration::from_secs(10),
            "qemu-nbd with TLS did not come up ({gone:?}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

/// nbdkit serving `file` on a Unix socket, TLS required, clients' certificates checked.
pub(crate) fn nbdkit_tls(file: &Path, sock: &Path, dir: &str) -> Server {
    require("nbdkit", "nbdkit");
    let _ = std::fs::remove_file(sock);
    let s = Server::spawn(
        Command::new("nbdkit")
            .args(["-f", "--tls=require", "--tls-verify-peer"])
            .arg(format!("--tls-certificates={dir}"))
            .arg("-U")
            .arg(sock)
            .arg("file")
            .arg(format!("file={}", file.display()))
            .stderr(std::process::Stdio::null()),
    );
    wait_for("nbdkit with TLS", || {
        std::os::unix::net::UnixStream::connect(sock).is_ok()
    });
    s
}

/// Attaches `uri` over TLS, pipes 48 MiB into `write`, kills the server 16 MiB in, and
/// checks the leg is fractured with the primary holding everything; then `restart` brings
/// the server back, resync copies exactly the logged regions and verify is clean.
fn kill_mid_write_then_resync(
    fx: &Fx,
    uri: &str,
    pki: &Pki,
    file: &Path,
    mut server: Server,
    restart: impl Fn() -> Server,
) {
    let mut args = vec!["attach".to_string(), "a.img".into(), uri.into()];
    args.extend(pki.attach_args());
    let o = fx.ok(&strs(&args));
    assert!(o.stdout.contains("in-sync"), "{o:?}");
    let recorded = leg0(fx)["path"].as_str().unwrap().to_string();
    assert!(
        recorded.starts_with("nbds") && recorded.contains("tls-ca=/"),
        "{recorded}"
    );
    let input = fx.path("input.bin");
    random_file(&input, 48 * MIB, 17);
    let data = std::fs::read(&input).unwrap();
    let stderr = crate::nbd::write_while_the_server_dies(fx, &data, 16 * MIB as usize, &mut server);
    assert!(stderr.contains("slot 0"), "{stderr}");
    let l = leg0(fx);
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    let pending = u(&l["out_of_sync_regions"]);
    assert!(pending > 0, "{l:#}");
    let g = fx.geometry();
    let a = std::fs::read(fx.path("a.img")).unwrap();
    assert!(
        a[g.data_offset as usize..(g.data_offset + 48 * MIB) as usize] == data[..],
        "primary data differs from the input"
    );
    let _server = restart();
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(u(&r["regions"]), pending, "{r:#}");
    assert_eq!(leg0(fx)["state"], "in-sync");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(same_data_areas(fx, file), None);
}

#[test]
fn an_nbds_secondary_on_qemu_nbd_with_verify_peer_is_fractured_when_killed_mid_write_and_resynced_clean(
) {
    let fx = Fx::create("64M", "64K");
    let pki = Pki::new(&fx.path("pki"), "good");
    let file = backing(&fx, "remote.raw");
    let port = free_port();
    let dir = pki.dir();
    let server = qemu_nbd_tls(&file, &dir, port);
    kill_mid_write_then_resync(
        &fx,
        &format!("nbds://127.0.0.1:{port}/exp"),
        &pki,
        &file,
        server,
        || qemu_nbd_tls(&file, &dir, port),
    );
}

#[test]
fn an_nbds_unix_secondary_on_nbdkit_requiring_tls_is_fractured_when_killed_mid_write_and_resynced_clean(
) {
    let fx = Fx::create("64M", "64K");
    let pki = Pki::new(&fx.path("pki"), "good");
    let file = backing(&fx, "remote.raw");
    let sock = fx.path("kit.sock");
    let dir = pki.dir();
    let server = nbdkit_tls(&file, &sock, &dir);
    // A plain nbd+unix URI is refused by the server, with the fix named.
    let o = fx.run(&[
        "attach",
        "a.img",
        &format!("nbd+unix:///?socket={}", sock.display()),
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("requires TLS") && o.stderr.contains("nbds://"),
        "{o:?}"
    );
    // Without a client certificate nbdkit hangs up after the TLS handshake.
    let o = fx.run(&[
        "attach",
        "a.img",
        &format!("nbds+unix:///?socket={}", sock.display()),
        "--tls-ca",
        &pki.file("ca-cert.pem"),
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("client certificate"), "{o:?}");
    kill_mid_write_then_resync(
        &fx,
        &format!("nbds+unix:///?socket={}", sock.display()),
        &pki,
        &file,
        server,
        || nbdkit_tls(&file, &sock, &dir),
    );
}

#[test]
fn a_server_whose_certificate_is_for_another_name_or_from_another_ca_is_refused_and_an_in_sync_leg_is_not_fractured(
) {
    let fx = Fx::create("32M", "64K");
    let pki = Pki::new(&fx.path("pki"), "good");
    let elsewhere = fx.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // The same CA, a server certificate for another host only.
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "client-cert.pem",
        "client-key.pem",
    ] {
        std::fs::copy(pki.dir.join(f), elsewhere.join(f)).unwrap();
    }
    let wrong_name = Pki { dir: elsewhere };
    wrong_name.sign("server", "serverAuth", "DNS:elsewhere.example");
    let foreign = Pki::new(&fx.path("other"), "other");
    let file = backing(&fx, "remote.raw");
    let port = free_port();
    let uri = format!("nbds://127.0.0.1:{port}/exp");
    let attach = |extra: &[String]| {
        let mut a = vec!["attach".to_string(), "a.img".into(), uri.clone()];
        a.extend(pki.attach_args());
        a.extend(extra.iter().cloned());
        fx.run(&strs(&a))
    };
    {
        let _s = qemu_nbd_tls(&file, &wrong_name.dir(), port);
        let o = attach(&[]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("not for the name"), "{o:?}");
        assert!(o.stderr.contains("127.0.0.1"), "{o:?}");
        assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    }
    {
        // The other CA's server, trusting both CAs (qemu checks its own certificate too):
        // it takes our client certificate, we do not take its server certificate.
        let mut both = std::fs::read(foreign.dir.join("ca-cert.pem")).unwrap();
        both.extend(std::fs::read(pki.dir.join("ca-cert.pem")).unwrap());
        std::fs::write(foreign.dir.join("ca-cert.pem"), both).unwrap();
        let _s = qemu_nbd_tls(&file, &foreign.dir(), port);
        let o = attach(&[]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("not signed by the CA"), "{o:?}");
    }
    {
        // Without --tls-ca the system's CAs are trusted, and none of them signed the test CA.
        let _s = qemu_nbd_tls(&file, &pki.dir(), port);
        let o = fx.run(&[
            "attach",
            "a.img",
            &uri,
            "--tls-cert",
            &pki.file("client-cert.pem"),
            "--tls-key",
            &pki.file("client-key.pem"),
        ]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("not signed by the CA"), "{o:?}");
    }
    assert!(fx.status()["legs"].as_array().unwrap().is_empty());

    // Attached to the right server and in sync; then the server is replaced by one with
    // the wrong name: a write is refused before anything is written, the leg stays in-sync.
    let mut good = qemu_nbd_tls(&file, &pki.dir(), port);
    let o = attach(&[]);
    assert_eq!(o.code, 0, "{o:?}");
    fx.write_random(0, MIB, 3);
    good.kill();
    let image = std::fs::read(fx.path("a.img")).unwrap();
    let _s = qemu_nbd_tls(&file, &wrong_name.dir(), port);
    let data = fx.path("more.bin");
    random_file(&data, MIB, 4);
    let o = Command::new(bin())
        .args(["write", "a.img", "--offset", "4M"])
        .current_dir(fx.dir.path())
        .stdin(std::fs::File::open(&data).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not for the name") && stderr.contains("not fractured"),
        "{stderr}"
    );
    assert!(
        std::fs::read(fx.path("a.img")).unwrap() == image,
        "the refused write changed the primary"
    );
    assert_eq!(leg0(&fx)["state"], "in-sync");
    // verify cannot compare it, and does not fracture it either.
    let (code, v) = fx.verify(&[]);
    assert_ne!(code, 0, "{v:#}");
    assert_eq!(leg0(&fx)["state"], "in-sync");
}

#[test]
fn an_nbds_secondary_attached_while_serving_takes_tls_files_relative_to_the_admins_directory() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    let file = backing(&fx, "remote.raw");
    let port = free_port();
    let _remote = qemu_nbd_tls(&file, &pki.dir(), port);
    let s = Serving::start(&fx, &[]);
    // The admin is in another directory than serve: the relative names are theirs.
    let sub = fx.path("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let o = run_in(
        &sub,
        &[
            "attach",
            "../a.img",
            &format!("nbds://127.0.0.1:{port}/exp"),
            "--tls-ca",
            "../pki/ca-cert.pem",
            "--tls-cert",
            "../pki/client-cert.pem",
            "--tls-key",
            "../pki/client-key.pem",
        ],
    );
    assert_eq!(o.code, 0, "{o:?}\n{}", s.log());
    // Hosts' writes reach the new leg through TLS.
    crate::serve::qemu_io(&s.uri(), &["write -P 0x6b 1M 2M", "flush"]);
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    let l = crate::support::leg(&fx.status(), 1).clone();
    assert_eq!(l["state"], "in-sync", "{l:#}");
    let path = l["path"].as_str().unwrap();
    assert!(
        path.contains(&format!("tls-ca={}", pki.file("ca-cert.pem"))),
        "{path}"
    );
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    let g = fx.geometry();
    assert_eq!(
        first_difference_between(&fx.path("a.img"), &file, g.data_offset, g.data_size),
        None
    );
}

#[test]
fn a_clear_text_leg_moves_to_tls_by_attaching_it_again_as_nbds_keeping_its_slot_and_log() {
    let fx = Fx::create("32M", "64K");
    let pki = Pki::new(&fx.path("pki"), "good");
    let file = backing(&fx, "remote.raw");
    let port = free_port();
    let mut plain = Server::spawn(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "--persistent", "--shared=4", "-x", "exp"])
            .args(["-b", "127.0.0.1", "-p", &port.to_string()])
            .arg(&file)
            .stderr(std::process::Stdio::null()),
    );
    wait_for("qemu-nbd", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    fx.ok(&["attach", "a.img", &format!("nbd://127.0.0.1:{port}/exp")]);
    fx.write_random(0, 2 * MIB, 1);
    plain.kill();
    // Written while the server is away: tracked in the leg's log.
    let input = fx.path("in.bin");
    random_file(&input, MIB, 2);
    let o = fx.run(&[
        "write",
        "a.img",
        "--offset",
        "8M",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 3, "{o:?}");
    let pending = u(&leg0(&fx)["out_of_sync_regions"]);
    assert_eq!(pending, MIB / (64 * KIB), "{:#}", leg0(&fx));
    // The server comes back with TLS required: the clear-text URI is refused with the fix.
    let _tls = qemu_nbd_tls(&file, &pki.dir(), port);
    let o = fx.run(&["resync", "a.img"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("attach it as nbds://"), "{o:?}");
    let mut a = vec![
        "attach".to_string(),
        "a.img".into(),
        format!("nbds://127.0.0.1:{port}/exp"),
        "--json".into(),
    ];
    a.extend(pki.attach_args());
    let j = fx.ok(&strs(&a)).json();
    assert_eq!(j["reattached"], true, "{j:#}");
    assert_eq!(u(&j["slot"]), 0, "{j:#}");
    assert_eq!(
        u(&j["copied_regions"]),
        pending,
        "only the log is copied: {j:#}"
    );
    assert_eq!(leg0(&fx)["state"], "in-sync");
    assert_eq!(fx.verify(&[]).0, 0);
    assert_eq!(same_data_areas(&fx, &file), None);
}

#[test]
fn a_client_that_says_nothing_or_stalls_after_starttls_is_cut_off_at_the_handshake_limit() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    let mut args = pki.serve_args();
    args.extend(["--handshake-limit".into(), "1s".into()]);
    let s = Serving::start(&fx, &strs(&args));
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let silent = UnixStream::connect(&s.sock).unwrap();
    // The other one starts TLS and then sends nothing.
    let mut stalled = UnixStream::connect(&s.sock).unwrap();
    let mut hello = [0u8; 18];
    stalled.read_exact(&mut hello).unwrap();
    let mut m = 1u32.to_be_bytes().to_vec(); // NBD_FLAG_C_FIXED_NEWSTYLE
    m.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes()); // IHAVEOPT
    m.extend_from_slice(&5u32.to_be_bytes()); // NBD_OPT_STARTTLS
    m.extend_from_slice(&0u32.to_be_bytes());
    stalled.write_all(&m).unwrap();
    let mut ack = [0u8; 20];
    stalled.read_exact(&mut ack).unwrap();
    assert_eq!(
        u32::from_be_bytes(ack[12..16].try_into().unwrap()),
        1,
        "NBD_REP_ACK"
    );
    let started = Instant::now();
    // Meanwhile a real client is served.
    let cdir = pki.client_dir(&fx.path("client"), Some(&pki));
    let info = client(
        "nbdinfo",
        "libnbd-bin",
        &[&format!(
            "nbds+unix:///?socket={}&tls-certificates={cdir}",
            s.sock.display()
        )],
    );
    assert!(info.contains("with TLS"), "{info}");
    for mut c in [silent, stalled] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        // The server hangs up: the end of the stream (after the greeting, for the silent one).
        c.read_to_end(&mut rest).unwrap();
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "cut off after {waited:?}");
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        log.matches("no handshake within 1s (--handshake-limit)")
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn tls_allow_admits_only_clients_whose_certificate_is_for_a_listed_name() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    let cdir = pki.client_dir(&fx.path("client"), Some(&pki));
    let before = fx.data_area("a.img");
    let src = fx.path("src.bin");
    random_file(&src, MIB, 5);
    let src = src.to_str().unwrap();
    // The client's certificate is for "client": a list without it refuses it.
    let mut args = pki.serve_args();
    args.extend(["--tls-allow".into(), "backup-host.example".into()]);
    let s = Serving::start(&fx, &strs(&args));
    let uri = format!(
        "nbds+unix:///?socket={}&tls-certificates={cdir}",
        s.sock.display()
    );
    client_fails("nbdcopy", "libnbd-bin", &[src, &uri]);
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("refused: its certificate is for client, none of the --tls-allow names"),
        "{log}"
    );
    assert!(log.contains("signed for backup-host.example"), "{log}");
    assert!(fx.data_area("a.img") == before, "a refused client wrote");
    // Listed (case does not matter), it gets in and writes.
    args.extend(["--tls-allow".into(), "CLIENT".into()]);
    let s = Serving::start(&fx, &strs(&args));
    client("nbdcopy", "libnbd-bin", &[src, &uri]);
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("client certificate verified"), "{log}");
    let sent = std::fs::read(src).unwrap();
    assert!(fx.data_area("a.img")[..MIB as usize] == sent[..]);
    // --tls-allow without --tls-ca is a usage error: there is no certificate to name.
    serve_refused(
        &fx,
        &pki.file("server-cert.pem"),
        &pki.file("server-key.pem"),
        &["--tls-allow", "client"],
    );
}

#[test]
fn tls_on_serves_both_kinds_of_client_tls_off_refuses_a_certificate_and_nbds_never_falls_back() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    let cdir = pki.client_dir(&fx.path("client"), Some(&pki));
    let e = serve_refused(
        &fx,
        &pki.file("server-cert.pem"),
        &pki.file("server-key.pem"),
        &["--tls", "off"],
    );
    assert!(e.contains("--tls off with --tls-cert"), "{e}");
    // --tls on lets clients skip TLS: with a CA (or --tls-allow) it would claim certificates
    // are required while clear-text clients get in, so the combination is refused.
    for extra in [
        vec!["--tls", "on", "--tls-ca", &pki.file("ca-cert.pem")],
        vec![
            "--tls",
            "on",
            "--tls-ca",
            &pki.file("ca-cert.pem"),
            "--tls-allow",
            "client",
        ],
    ] {
        let e = serve_refused(
            &fx,
            &pki.file("server-cert.pem"),
            &pki.file("server-key.pem"),
            &extra,
        );
        assert!(
            e.contains("--tls on with --tls-ca") && e.contains("--tls require"),
            "{e}"
        );
    }
    // --tls on: a clear-text client and a TLS client are both served.
    let mut args: Vec<String> = pki.serve_args()[..4].to_vec();
    args.extend(["--tls".into(), "on".into()]);
    let s = Serving::start(&fx, &strs(&args));
    let plain = client("nbdinfo", "libnbd-bin", &[&s.uri()]);
    assert!(plain.contains("without TLS"), "{plain}");
    let tls = client(
        "nbdinfo",
        "libnbd-bin",
        &[&format!(
            "nbds+unix:///?socket={}&tls-certificates={cdir}",
            s.sock.display()
        )],
    );
    assert!(tls.contains("with TLS"), "{tls}");
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("TLS offered; clients may connect without it"),
        "{log}"
    );
    // An nbds secondary on a server without TLS is refused, never used in clear text.
    let file = backing(&fx, "remote.raw");
    let port = free_port();
    let _plain = Server::spawn(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "--persistent", "--shared=4", "-x", "exp"])
            .args(["-b", "127.0.0.1", "-p", &port.to_string()])
            .arg(&file)
            .stderr(std::process::Stdio::null()),
    );
    wait_for("qemu-nbd", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut a = vec![
        "attach".to_string(),
        "a.img".into(),
        format!("nbds://127.0.0.1:{port}/exp"),
    ];
    a.extend(pki.attach_args());
    let o = fx.run(&strs(&a));
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("does not offer TLS"), "{o:?}");
    assert_eq!(fx.status()["legs"].as_array().unwrap().len(), 1);
}

#[test]
fn a_client_certificate_whose_key_usage_lacks_digital_signature_is_refused() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pki = Pki::new(&fx.path("pki"), "good");
    // Signed by the right CA, for TLS clients, but its key is for encipherment only.
    pki.sign_for("enc", "clientAuth", "DNS:enc", "keyEncipherment");
    let dir = fx.path("enc-client");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(pki.dir.join("ca-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("enc-cert.pem"), dir.join("client-cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("enc-key.pem"), dir.join("client-key.pem")).unwrap();
    let s = Serving::start(&fx, &strs(&pki.serve_args()));
    let uri = |d: &str| {
        format!(
            "nbds+unix:///?socket={}&tls-certificates={d}",
            s.sock.display()
        )
    };
    client_fails("nbdinfo", "libnbd-bin", &[&uri(&dir.display().to_string())]);
    // The same CA's proper client certificate still gets in.
    let good = pki.client_dir(&fx.path("client"), Some(&pki));
    let ok = client("nbdinfo", "libnbd-bin", &[&uri(&good)]);
    assert!(ok.contains("with TLS"), "{ok}");
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    // GnuTLS (libnbd) does not even send such a certificate, so the server sees none; a
    // client that sends it is refused by the server's own check (src/tls.rs unit test).
    assert!(
        log.contains("without digitalSignature") || log.contains("presented no certificate"),
        "{log}"
    );
}

#[test]
fn an_rsa_key_of_2432_bits_as_in_the_nbd_projects_tls_tests_serves_clients() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let dir = fx.path("rsa");
    std::fs::create_dir_all(&dir).unwrap();
    // ring signs with RSA keys of 2048, 3072 and 4096 bits only; this one goes to AWS-LC.
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2432",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("k.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let cdir = fx.path("client");
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::copy(dir.join("c.pem"), cdir.join("ca-cert.pem")).unwrap();
    let s = Serving::start(
        &fx,
        &[
            "--tls-cert",
            dir.join("c.pem").to_str().unwrap(),
            "--tls-key",
            dir.join("k.pem").to_str().unwrap(),
        ],
    );
    let info = client(
        "nbdinfo",
        "libnbd-bin",
        &[&format!(
            "nbds+unix:///?socket={}&tls-certificates={}",
            s.sock.display(),
            cdir.display()
        )],
    );
    assert!(info.contains("with TLS"), "{info}");
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
}
