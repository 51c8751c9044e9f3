//! tls: TLS for NBD in both directions (rustls with ring; no crypto of our own): the
//! certificates and keys, read once and checked; the server's and the client's settings;
//! and a TLS stream whose reading and writing halves are used from different threads.
//!
//! The stream keeps the NBD server's split of one connection into a reader (the request
//! loop) and a writer (the replies): the TLS state sits under a lock that neither holds
//! while it waits on the socket. Received ciphertext is read from the socket outside the
//! lock and fed to the state under it; replies are encrypted under it and sent outside it,
//! under a second lock that keeps the records in order on the wire.

mod x509;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The system's CA bundle (Debian's ca-certificates), used by a client given no `--tls-ca`.
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Certificates of a PEM file, in order (the leaf first, then its intermediates).
pub fn read_certs(path: &Path, what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {what} {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{what} {}: not PEM ({e})", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "{what} {}: no certificate in it (give a PEM file with a -----BEGIN CERTIFICATE----- block)",
            path.display()
        )));
    }
    Ok(certs)
}

/// Whether a key file's mode lets others than its owner and group read or change it.
pub fn mode_exposes_key(mode: u32) -> bool {
    mode & 0o007 != 0
}

/// A private key from a PEM file (PKCS#8, PKCS#1 or SEC1). A key that others may read is
/// refused: anyone on the machine could impersonate this end.
pub fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    use std::os::unix::fs::PermissionsExt;
    let f = std::fs::File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading key {}: {e}", path.display())))?;
    let mode = f.metadata()?.permissions().mode();
    if mode_exposes_key(mode) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "key {} is readable by others (mode {:04o}); restrict it: chmod 600 {}",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    let mut data = Vec::new();
    io::BufReader::new(f).read_to_end(&mut data)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| {
        bad(format!(
            "key {}: no private key in it ({e}); give an unencrypted PEM key",
            path.display()
        ))
    })
}

fn roots(ca: &Path) -> io::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in read_certs(ca, "CA certificate")? {
        store
            .add(c)
            .map_err(|e| bad(format!("CA certificate {}: {e}", ca.display())))?;
    }
    Ok(store)
}

/// What `serve` needs for TLS.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub ca: Option<PathBuf>,
}

/// The server's settings, every file read now (and never again).
pub fn server_config(f: &ServerFiles) -> io::Result<Arc<ServerConfig>> {
    let certs = read_certs(&f.cert, "certificate")?;
    let key = read_key(&f.key)?;
    let b = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS settings: {e}")))?;
    let b = match &f.ca {
        Some(ca) => {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| bad(format!("CA certificate {}: {e}", ca.display())))?;
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let ck = certified_key(certs, key, &f.cert, &f.key)?;
    let cfg = b.with_cert_resolver(Arc::new(OneCert(ck)));
    Ok(Arc::new(cfg))
}

/// What an NBD client needs for TLS: the CA that signed the server's certificate (the
/// system's bundle when none is given), and a certificate of its own for servers that ask.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The client's settings for `f`, its files read at the first use in this process.
pub fn client_config(f: &ClientFiles) -> io::Result<Arc<ClientConfig>> {
    static CONFIGS: Mutex<Vec<(ClientFiles, Arc<ClientConfig>)>> = Mutex::new(Vec::new());
    let mut c = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, cfg)) = c.iter().find(|(k, _)| k == f) {
        return Ok(cfg.clone());
    }
    let cfg = read_client_config(f).map_err(|e| refused(e.to_string()))?;
    c.push((f.clone(), cfg.clone()));
    Ok(cfg)
}

fn read_client_config(f: &ClientFiles) -> io::Result<Arc<ClientConfig>> {
    let store = match &f.ca {
        Some(ca) => roots(ca)?,
        None if Path::new(SYSTEM_CA).exists() => {
            // A bundle of many CAs: one rustls cannot use is skipped, not fatal.
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(read_certs(Path::new(SYSTEM_CA), "CA bundle")?);
            store
        }
        None => {
            return Err(bad(format!(
                "no CA to check the server's certificate against: give --tls-ca FILE (or install ca-certificates for {SYSTEM_CA})"
            )))
        }
    };
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS settings: {e}")))?
        .with_root_certificates(store);
    let cfg = match (&f.cert, &f.key) {
        (Some(c), Some(k)) => {
            let ck = certified_key(read_certs(c, "client certificate")?, read_key(k)?, c, k)?;
            b.with_client_cert_resolver(Arc::new(OneCert(ck)))
        }
        (None, None) => b.with_no_client_auth(),
        (Some(_), None) => {
            return Err(bad(
                "a client certificate needs its key: give --tls-key FILE".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                "a client key needs its certificate: give --tls-cert FILE".into(),
            ))
        }
    };
    Ok(Arc::new(cfg))
}

/// The names a certificate is for: its subject's common names, then its DNS and IP subject
/// alternative names (addresses as text), each once. Empty for a certificate that does not
/// parse.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Some(f) = x509::fields(der) else {
        return Vec::new();
    };
    let mut names = f.common_names();
    names.extend(f.alt_names());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    names
}

/// One certificate and its key, for every handshake (a server's, or a client's).
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for OneCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A certificate with its key, checked to belong together. The key signs with ring where
/// ring can, else with AWS-LC: ring takes RSA keys of 2048, 3072 and 4096 bits only, and
/// peers (qemu-nbd, nbdkit, the NBD project's own tests with a 2432-bit key) use others.
fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> io::Result<Arc<rustls::sign::CertifiedKey>> {
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .or_else(|_| rustls::crypto::aws_lc_rs::sign::any_supported_type(&key))
        .map_err(|e| {
            bad(format!(
                "key {}: {e} (an RSA, ECDSA P-256/P-384 or Ed25519 key in PEM is expected)",
                key_path.display()
            ))
        })?;
    let ck = rustls::sign::CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| {
        bad(format!(
            "certificate {} and key {}: {e} (they do not belong together)",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

/// A client certificate with a key usage extension must allow digital signatures.
fn client_key_usage(der: &[u8]) -> std::result::Result<(), String> {
    let Some(f) = x509::fields(der) else {
        return Err("the client's certificate does not parse".into());
    };
    match f.digital_signature() {
        Ok(Some(false)) => Err(format!(
            "the client's certificate ({}) has a key usage without digitalSignature, so it is not for TLS client authentication",
            certificate_names(der).join(", ")
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the client's certificate has a bad key usage extension: {e}")),
    }
}

/// Whether one of a certificate's `names` is one of `allowed` (compared without case, as
/// host names are).
pub fn name_allowed(names: &[String], allowed: &[String]) -> bool {
    names
        .iter()
        .any(|n| allowed.iter().any(|a| a.eq_ignore_ascii_case(n)))
}

/// The TLS state, shared by a connection's reader and writer.
struct Shared {
    conn: Mutex<Connection>,
    /// Taken to send: encrypted records leave in the order they were made.
    out: Mutex<Vec<u8>>,
    sock: OwnedFd,
}

/// One TLS connection over a socket; [`TlsStream::try_clone`] gives another handle to the
/// same connection, for the other thread.
pub struct TlsStream {
    shared: Arc<Shared>,
    /// Ciphertext read from the socket and not yet given to the TLS state.
    raw: Box<[u8]>,
    start: usize,
    end: usize,
}

/// Plaintext encrypted per turn of the writer's lock, so a reader is never kept waiting
/// long for the TLS state.
const WRITE_CHUNK: usize = 256 << 10;
/// Ciphertext kept for the next flush at most: a reply of up to 2 MiB goes to the socket
/// in one system call.
const SEND_AT: usize = 2 << 20;
const RAW_BUFFER: usize = 64 << 10;

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn write_all_fd(fd: &OwnedFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A TLS failure that says the peer is not to be trusted (or cannot be: TLS refused, our
/// files unusable), as opposed to a peer that went away: opening a leg that fails so is
/// refused, and fractures nothing (a secondary that is down is fractured; one that cannot
/// prove who it is may be an impostor, and writing on without it is not the admin's call).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

pub fn refused(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused(msg.into()))
}

/// Whether `e` is a [`Refused`].
pub fn is_refused(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Refused>())
}

/// What went wrong, in an admin's words where rustls's are terse.
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the peer's certificate is not signed by the CA trusted here (--tls-ca)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the peer's certificate is not for the name it was reached by ({e})")
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the peer's certificate has expired ({e})")
        }
        E::NoCertificatesPresented => {
            "the peer presented no certificate (one signed by the --tls-ca is required)".into()
        }
        E::AlertReceived(a) => format!(
            "the peer ended the TLS handshake ({a:?} alert): does it trust this end's certificate?"
        ),
        _ => e.to_string(),
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    let msg = format!("TLS: {}", describe(&e));
    match e {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::AlertReceived(_)
        | rustls::Error::PeerIncompatible(_) => refused(msg),
        _ => io::Error::new(io::ErrorKind::InvalidData, msg),
    }
}

impl TlsStream {
    /// The server's side of a connection: the TLS handshake, run to its end.
    pub fn accept(sock: OwnedFd, cfg: &Arc<ServerConfig>) -> io::Result<TlsStream> {
        let c = rustls::ServerConnection::new(cfg.clone()).map_err(tls_error)?;
        let s = Self::handshake(sock, Connection::Server(c))?;
        // A client certificate (mutual TLS) must be one for signing: the handshake's proof
        // of its key is a signature (RFC 5280 4.2.1.3, as GnuTLS and OpenSSL check).
        let cert = s
            .lock()
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        if let Some(c) = cert {
            client_key_usage(&c)
                .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))?;
        }
        Ok(s)
    }

    /// The client's side: the TLS handshake, the server's certificate checked against the
    /// CA and `host`.
    pub fn connect(sock: OwnedFd, cfg: &Arc<ClientConfig>, host: &str) -> io::Result<TlsStream> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            bad(format!(
                "'{host}' is not a host name or address to check the server's certificate against"
            ))
        })?;
        let c = ClientConnection::new(cfg.clone(), name).map_err(tls_error)?;
        Self::handshake(sock, Connection::Client(c))
    }

    fn handshake(sock: OwnedFd, mut c: Connection) -> io::Result<TlsStream> {
        c.set_buffer_limit(None);
        let mut s = TlsStream {
            shared: Arc::new(Shared {
                conn: Mutex::new(c),
                out: Mutex::new(Vec::new()),
                sock,
            }),
            raw: vec![0u8; RAW_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        };
        loop {
            let (handshaking, wants_write) = {
                let c = s.lock();
                (c.is_handshaking(), c.wants_write())
            };
            if wants_write {
                s.send_pending()?;
                continue;
            }
            if !handshaking {
                return Ok(s);
            }
            if !s.feed()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.shared.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Another handle to this connection (for the writer thread).
    pub fn try_clone(&self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            shared: self.shared.clone(),
            raw: vec![0u8; RAW_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    /// The socket, for shutting it down from another thread.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shared.sock.as_fd()
    }

    /// The names of the certificate the peer presented (verified: the handshake checked
    /// it); empty without one.
    pub fn peer_names(&self) -> Vec<String> {
        self.lock()
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| certificate_names(c))
            .unwrap_or_default()
    }

    /// Gives ciphertext to the TLS state: what is left of the last socket read, else a new
    /// read. `Ok(false)` at the end of the stream.
    fn feed(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            let n = read_fd(&self.shared.sock, &mut self.raw)?;
            if n == 0 {
                return Ok(false);
            }
            (self.start, self.end) = (0, n);
        }
        let mut c = self.shared.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut rd = &self.raw[self.start..self.end];
        let before = rd.len();
        let r = c.read_tls(&mut rd);
        self.start += before - rd.len();
        r?;
        let processed = c.process_new_packets();
        let wants_write = c.wants_write();
        drop(c);
        if let Err(e) = processed {
            // The alert saying why, if the peer still listens.
            if wants_write {
                let _ = self.send_pending();
            }
            return Err(tls_error(e));
        }
        if wants_write {
            self.send_pending()?;
        }
        Ok(true)
    }

    /// Sends what the TLS state has to send, in order with every other sender.
    fn send_pending(&self) -> io::Result<()> {
        let mut out = self.shared.out.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut c = self.lock();
            while c.wants_write() {
                c.write_tls(&mut *out)?;
            }
        }
        let r = write_all_fd(&self.shared.sock, &out);
        out.clear();
        r
    }

    /// Ends the TLS session (a close_notify alert); the socket stays open.
    pub fn close(&self) {
        self.lock().send_close_notify();
        let _ = self.send_pending();
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.lock().reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !self.feed()? {
                // The socket ended (or its reading side was shut down at a stop).
                return Ok(0);
            }
        }
    }
}

impl Write for TlsStream {
    /// Encrypts `buf` (up to [`WRITE_CHUNK`] of it); the records go to the socket at the
    /// next [`flush`](Write::flush), or once [`SEND_AT`] is waiting.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    /// As [`TlsStream::write`], the buffers in the same records (a reply's header does not
    /// take a record of its own).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // At most WRITE_CHUNK per turn of the lock.
        let mut room = WRITE_CHUNK;
        let mut parts: Vec<io::IoSlice<'_>> = Vec::with_capacity(bufs.len());
        for b in bufs {
            if room == 0 {
                break;
            }
            let n = b.len().min(room);
            parts.push(io::IoSlice::new(&b[..n]));
            room -= n;
        }
        let n = WRITE_CHUNK - room;
        let mut out = self.shared.out.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut c = self.lock();
            let mut w = c.writer();
            let mut left = &mut parts[..];
            while !left.is_empty() {
                let k = w.write_vectored(left)?;
                if k == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                io::IoSlice::advance_slices(&mut left, k);
            }
            while c.wants_write() {
                c.write_tls(&mut *out)?;
            }
        }
        if out.len() >= SEND_AT {
            let r = write_all_fd(&self.shared.sock, &out);
            out.clear();
            r?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    /// A CA in `dir` and a pair it signed for `who` (server or client), as PEM files.
    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        dir: PathBuf,
    }

    impl TestCa {
        fn new(dir: &Path, name: &str) -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name.push(DnType::CommonName, name);
            let cert = p.self_signed(&key).unwrap();
            std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
            TestCa {
                issuer: Issuer::new(p, key),
                dir: dir.to_path_buf(),
            }
        }

        /// (certificate, key) files for `names`, for a server or a client.
        fn pair(&self, who: &str, names: &[&str], server: bool) -> (PathBuf, PathBuf) {
            self.pair_with(who, names, server, Vec::new())
        }

        /// [`TestCa::pair`] with a key usage extension (none when empty).
        fn pair_with(
            &self,
            who: &str,
            names: &[&str],
            server: bool,
            usages: Vec<KeyUsagePurpose>,
        ) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.key_usages = usages;
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            let (c, k) = (
                self.dir.join(format!("{who}-cert.pem")),
                self.dir.join(format!("{who}-key.pem")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
            (c, k)
        }
    }

    /// A server and a client TLS stream over a socket pair, each handshake on its thread.
    fn connected(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        host: &str,
    ) -> (io::Result<TlsStream>, io::Result<TlsStream>) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = server.clone();
        let h = std::thread::spawn(move || TlsStream::accept(a.into(), &server));
        let c = TlsStream::connect(b.into(), client, host);
        (h.join().unwrap(), c)
    }

    fn setup(dir: &Path) -> (TestCa, ServerFiles, ClientFiles) {
        let ca = TestCa::new(dir, "good");
        let (cert, key) = ca.pair("server", &["localhost"], true);
        let (ccert, ckey) = ca.pair("client", &["client"], false);
        let ca_file = dir.join("good-ca.pem");
        (
            ca,
            ServerFiles {
                cert,
                key,
                ca: Some(ca_file.clone()),
            },
            ClientFiles {
                ca: Some(ca_file),
                cert: Some(ccert),
                key: Some(ckey),
            },
        )
    }

    #[test]
    fn a_reader_and_a_writer_on_two_threads_move_megabytes_both_ways_over_one_tls_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, sf, cf) = setup(dir.path());
        let (s, c) = connected(
            &server_config(&sf).unwrap(),
            &read_client_config(&cf).unwrap(),
            "localhost",
        );
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.peer_names(), ["client"]);
        assert_eq!(c.peer_names(), ["localhost"]);
        // Both ends write 8 MiB while reading the other's 8 MiB: the server's writer is a
        // clone used from another thread, as the NBD server's replies are.
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
        let mut sw = s.try_clone().unwrap();
        let mut cw = c.try_clone().unwrap();
        std::thread::scope(|sc| {
            let d = &data;
            sc.spawn(move || {
                for part in d.chunks(100_003) {
                    sw.write_all(part).unwrap();
                }
                sw.flush().unwrap();
            });
            sc.spawn(move || {
                for part in d.chunks(77_777) {
                    cw.write_all(part).unwrap();
                }
                cw.flush().unwrap();
            });
            let mut got_s = vec![0u8; d.len()];
            s.read_exact(&mut got_s).unwrap();
            let mut got_c = vec![0u8; d.len()];
            c.read_exact(&mut got_c).unwrap();
            assert!(got_s == *d && got_c == *d);
        });
        // close_notify: the other end reads the end of the stream.
        c.close();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn a_peer_that_hangs_up_or_speaks_no_tls_ends_the_handshake_with_an_error_not_a_spin() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, sf, cf) = setup(dir.path());
        let server = server_config(&sf).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = TlsStream::accept(a.into(), &server).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        let (a, mut b) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            b.write_all(b"this is not a TLS ClientHello at all, only text\n")
                .unwrap();
        });
        let e = TlsStream::accept(a.into(), &server).err().unwrap();
        assert!(!is_refused(&e), "{e}");
        h.join().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let e = TlsStream::connect(b.into(), &read_client_config(&cf).unwrap(), "localhost")
            .err()
            .unwrap();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
    }

    #[test]
    fn a_client_certificate_whose_key_usage_lacks_digital_signature_is_refused_by_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, sf, cf) = setup(dir.path());
        let server = server_config(&sf).unwrap();
        let (ec, ek) = ca.pair_with(
            "enc",
            &["enc"],
            false,
            vec![KeyUsagePurpose::KeyEncipherment],
        );
        let enc = ClientFiles {
            cert: Some(ec),
            key: Some(ek),
            ..cf.clone()
        };
        let (s, _) = connected(&server, &read_client_config(&enc).unwrap(), "localhost");
        let e = s.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("without digitalSignature"), "{e}");
        // With digitalSignature it is admitted.
        let (dc, dk) = ca.pair_with(
            "sig",
            &["sig"],
            false,
            vec![KeyUsagePurpose::DigitalSignature],
        );
        let sig = ClientFiles {
            cert: Some(dc),
            key: Some(dk),
            ..cf.clone()
        };
        let (s, _) = connected(&server, &read_client_config(&sig).unwrap(), "localhost");
        assert!(s.is_ok(), "{:?}", s.err());
    }

    #[test]
    fn a_certificate_for_another_name_from_another_ca_or_none_is_refused_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let (_ca, sf, cf) = setup(dir.path());
        let server = server_config(&sf).unwrap();
        // The wrong host name.
        let (_, c) = connected(&server, &read_client_config(&cf).unwrap(), "other.example");
        let e = c.err().unwrap();
        assert!(is_refused(&e), "{e}");
        assert!(e.to_string().contains("not for the name"), "{e}");
        // A client that trusts another CA.
        let other = TestCa::new(dir.path(), "other");
        let (oc, ok) = other.pair("other-client", &["client"], false);
        let foreign_ca = ClientFiles {
            ca: Some(dir.path().join("other-ca.pem")),
            ..cf.clone()
        };
        let (_, c) = connected(
            &server,
            &read_client_config(&foreign_ca).unwrap(),
            "localhost",
        );
        let e = c.err().unwrap();
        assert!(e.to_string().contains("not signed by the CA"), "{e}");
        // A client certificate from another CA, and none: the server refuses both.
        for files in [
            ClientFiles {
                cert: Some(oc),
                key: Some(ok),
                ..cf.clone()
            },
            ClientFiles {
                cert: None,
                key: None,
                ..cf.clone()
            },
        ] {
            let (s, _) = connected(&server, &read_client_config(&files).unwrap(), "localhost");
            let e = s.err().unwrap();
            assert!(is_refused(&e), "{e}");
        }
    }

    #[test]
    fn a_key_others_can_read_a_mismatched_pair_and_a_file_without_pem_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, sf, _) = setup(dir.path());
        std::fs::set_permissions(&sf.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = server_config(&sf).unwrap_err().to_string();
        assert!(
            e.contains("readable by others") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&sf.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_, other_key) = ca.pair("another", &["x"], true);
        let e = server_config(&ServerFiles {
            key: other_key,
            ..sf.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("belong together"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = server_config(&ServerFiles {
            cert: junk,
            ..sf.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no certificate in it"), "{e}");
    }

    #[test]
    fn a_certificates_names_are_its_common_name_and_its_dns_and_ip_alternative_names() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![
            "host.example".to_string(),
            "192.0.2.7".to_string(),
            "2001:db8::1".to_string(),
        ])
        .unwrap();
        p.distinguished_name.push(DnType::CommonName, "laptop");
        let c = p.self_signed(&key).unwrap();
        let names = certificate_names(c.der());
        assert_eq!(
            names,
            ["laptop", "host.example", "192.0.2.7", "2001:db8::1"]
        );
        assert!(name_allowed(&names, &["HOST.example".into()]));
        assert!(name_allowed(&names, &["x".into(), "laptop".into()]));
        assert!(!name_allowed(&names, &["desktop".into()]));
        assert!(!name_allowed(&[], &["laptop".into()]));
        assert!(certificate_names(b"junk").is_empty());
    }

    #[test]
    fn a_key_readable_by_others_is_exposed_and_one_for_owner_and_group_is_not() {
        assert!(mode_exposes_key(0o100644));
        assert!(mode_exposes_key(0o100604));
        assert!(mode_exposes_key(0o100602));
        assert!(!mode_exposes_key(0o100600));
        assert!(!mode_exposes_key(0o100640));
        assert!(!mode_exposes_key(0o100400));
    }
}
