//! The NBD server front end of `serve` and `export`: listening on a Unix socket or TCP, one
//! thread per connection (handshake, then transmission), log lines, and a clean stop on
//! SIGTERM/SIGINT (or when the backend asks, [`StopHandle`]). It calls a [`Backend`]: the
//! engine's `Server` for `serve` (the engine decides what is durable when), an exported image
//! for `export`.
//!
//! Limits ([`Limits`], README "Serving hosts"): at most `max_connections` connections
//! (handshakes included; one more is refused with a log line), each with the threads and
//! memory [`transmission`] bounds; replies a client does not take for `write_timeout` get
//! it dropped. A stop (SIGTERM/SIGINT) ends reading at once, gives clients at most
//! `write_timeout` to take the replies of the requests in flight, then shuts every
//! connection down both ways; a second signal ends the process at once without the clean
//! stop (nothing synced, no intent cleared: the next command recovers the hot set).

pub mod backend;
pub mod control_socket;
pub mod handshake;
pub mod request;
pub mod transmission;

use crate::device::nbd::proto::*;
pub use backend::{Backend, StopHandle};
use handshake::{ExportInfo, Negotiated, Outcome, TlsPolicy};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits on what clients may hold and how long they may take.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client must finish its handshake (TLS included) within this.
    pub handshake: Duration,
    /// A reply the client does not take for this long gets it dropped; a stop waits at most
    /// this long for clients to take their replies.
    pub write_timeout: Duration,
    /// Connections at once (handshakes included); more are refused.
    pub max_connections: usize,
}

impl Limits {
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake: Duration::from_secs(10),
            write_timeout: Limits::DEFAULT_WRITE_TIMEOUT,
            max_connections: Limits::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Where to listen.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

/// One log line on stderr (journald takes each line as one message), at the priority its
/// text says (`error:`, `warning:`, `note:`; info otherwise; see [`crate::systemd`]).
pub fn log_line(msg: &str) {
    log_line_at(
        crate::systemd::Priority::of(msg, crate::systemd::Priority::Info),
        msg,
    );
}

/// The command the log lines name (`serve` unless [`set_log_name`] said otherwise).
static LOG_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names the command in every later log line (`mirrorctl export: ...`); set once, before
/// the first line.
pub fn set_log_name(name: &'static str) {
    let _ = LOG_NAME.set(name);
}

/// One log line on stderr at priority `p` (for lines whose text does not start with it).
pub fn log_line_at(p: crate::systemd::Priority, msg: &str) {
    crate::systemd::eprint_at(
        p,
        &format!(
            "mirrorctl {}: {}",
            LOG_NAME.get().copied().unwrap_or("serve"),
            crate::error::plain(msg)
        ),
    );
}

/// The transmission flags of an export.
pub fn export_flags(read_only: bool, fast_zero: bool) -> u16 {
    // CAN_MULTI_CONN: a FLUSH syncs every device, which covers the writes of every
    // connection (H3), so clients may spread writes over several connections.
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN | TF_SEND_CACHE;
    if read_only {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
        if fast_zero {
            f |= TF_SEND_FAST_ZERO;
        }
    }
    f
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// TLS as `serve` offers it.
#[derive(Clone)]
pub struct Tls {
    pub policy: TlsPolicy,
    /// Read once at start; `None` only with [`TlsPolicy::Off`].
    pub config: Option<Arc<rustls::ServerConfig>>,
    /// Clients must present a certificate signed by the `--tls-ca`.
    pub mutual: bool,
    /// And one for one of these names (`--tls-allow`; empty: any name).
    pub allow: Vec<String>,
}

impl Tls {
    pub fn off() -> Tls {
        Tls {
            policy: TlsPolicy::Off,
            config: None,
            mutual: false,
            allow: Vec::new(),
        }
    }

    /// What the log and the journal say of it (`None` without TLS).
    pub fn summary(&self) -> Option<String> {
        let base = match self.policy {
            TlsPolicy::Off => return None,
            TlsPolicy::On => "TLS offered; clients may connect without it",
            TlsPolicy::Require => "TLS required of every client",
        };
        let cert = match (self.mutual, self.allow.as_slice()) {
            (false, _) => String::new(),
            (true, []) => ", with a certificate the --tls-ca signed".into(),
            (true, names) => format!(
                ", with a certificate the --tls-ca signed for {}",
                names.join(" or ")
            ),
        };
        Some(format!("{base}{cert}"))
    }
}

/// A connection's stream, cloneable into a reader and a writer, and shut down at stop.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(crate::tls::TlsStream),
}

impl Conn {
    /// Writes to the client wait at most `t` (the socket's send timeout; TLS writes go
    /// through the same socket).
    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(Some(t)),
            Conn::Tcp(s) => s.set_write_timeout(Some(t)),
            Conn::Tls(_) => Ok(()),
        }
    }
    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Tls(s) => Conn::Tls(s.try_clone()?),
        })
    }
    /// Another descriptor for the socket, so that it can be shut down from another thread
    /// for as long as that one keeps it (its number is never reused meanwhile).
    fn dup(&self) -> io::Result<OwnedFd> {
        // SAFETY: the descriptor is this connection's own and open while `self` lives.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd()) }.try_clone_to_owned()
    }
    fn fd(&self) -> RawFd {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Tls(s) => s.fd().as_raw_fd(),
        }
    }
    /// The socket, for TLS to take over (the descriptor number stays the same).
    fn into_fd(self) -> OwnedFd {
        match self {
            Conn::Unix(s) => s.into(),
            Conn::Tcp(s) => s.into(),
            Conn::Tls(_) => unreachable!("TLS is started once"),
        }
    }
}

impl io::Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(b),
            Conn::Tcp(s) => s.read(b),
            Conn::Tls(s) => s.read(b),
        }
    }
}

impl io::Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(b),
            Conn::Tcp(s) => s.write(b),
            Conn::Tls(s) => s.write(b),
        }
    }
    /// One `writev` (a reply's header and payload in one system call); TLS puts them in
    /// the same records.
    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write_vectored(b),
            Conn::Tcp(s) => s.write_vectored(b),
            Conn::Tls(s) => s.write_vectored(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            // TLS records wait for the flush (one system call for a reply's records).
            Conn::Tls(s) => s.flush(),
            Conn::Unix(_) | Conn::Tcp(_) => Ok(()),
        }
    }
}

/// The writing side of a connection in transmission: a write the client leaves untaken for
/// the write timeout, or any failed write, shuts the socket down both ways (so the reader
/// ends too) and says why.
struct ReplyWriter {
    conn: Conn,
    timeout: Duration,
}

impl ReplyWriter {
    fn failed(&self, e: io::Error) -> io::Error {
        // SAFETY: shutdown on this connection's own descriptor.
        unsafe { libc::shutdown(self.conn.fd(), libc::SHUT_RDWR) };
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "it took none of its replies for {:?} (--write-timeout); dropped",
                    self.timeout
                ),
            )
        } else {
            e
        }
    }
}

impl io::Write for ReplyWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.conn.write(b).map_err(|e| self.failed(e))
    }
    fn write_vectored(&mut self, b: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.conn.write_vectored(b).map_err(|e| self.failed(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush().map_err(|e| self.failed(e))
    }
}

/// Binds the listening socket; a Unix socket gets mode 0600. A stale socket file (nobody
/// listening) is replaced; a live one or any other file is refused.
/// A listening socket, bound before anything on disk changes (a serve that cannot listen
/// changes nothing, its journal included). A Unix socket is bound at a temporary name beside
/// its path and renamed into place only when `run` starts serving (after the control
/// socket is up), so that its path appearing still means the server takes clients and
/// admin commands, as scripts and tests rely on.
pub struct Bound {
    listener: Option<Listener>,
    /// (bound at, to be renamed to)
    pending: Option<(PathBuf, PathBuf)>,
}

impl Bound {
    /// Puts a Unix socket at its path; the listener then.
    fn publish(&mut self) -> io::Result<Listener> {
        if let Some((tmp, path)) = self.pending.take() {
            std::fs::rename(&tmp, &path)?;
        }
        self.listener
            .take()
            .ok_or_else(|| io::Error::other("already served"))
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.pending {
            let _ = std::fs::remove_file(tmp);
        } else if let Some(Listener::Unix(_, p)) = &self.listener {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds `l` (see [`Bound`]).
pub fn bind(l: &Listen) -> io::Result<Bound> {
    match l {
        Listen::Unix(p) => {
            free_unix_path(p)?;
            let tmp = p.with_file_name(format!(".{}.sock", std::process::id()));
            free_unix_path(&tmp)?;
            let sock = bind_unix(&tmp)?;
            Ok(Bound {
                listener: Some(Listener::Unix(sock, p.clone())),
                pending: Some((tmp, p.clone())),
            })
        }
        Listen::Tcp(a) => Ok(Bound {
            listener: Some(Listener::Tcp(TcpListener::bind(a)?)),
            pending: None,
        }),
    }
}

/// Checks that a Unix socket can go at `p` (nothing else there, no server listening; a
/// stale socket of a server that is gone is removed) and makes its directory.
fn free_unix_path(p: &Path) -> io::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; give another --socket path",
                    p.display()
                ),
            ));
        }
        if UnixStream::connect(p).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use by another server; give another --socket path",
                    p.display()
                ),
            ));
        }
        std::fs::remove_file(p)?;
    }
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    Ok(())
}

/// Binds a Unix socket at `p` (free, see [`free_unix_path`]), mode 0600.
fn bind_unix(p: &Path) -> io::Result<UnixListener> {
    // Mode 0600 from the start: no moment where others could connect.
    // SAFETY: umask only changes this process's file-creation mask; it is restored.
    let old = unsafe { libc::umask(0o177) };
    let r = UnixListener::bind(p);
    unsafe { libc::umask(old) };
    r
}

/// The URI a client uses to reach the export (`nbds` when TLS is required).
pub fn uri(l: &Listen, export: &str, local: Option<std::net::SocketAddr>, tls: bool) -> String {
    let s = if tls { "s" } else { "" };
    match l {
        Listen::Unix(p) => format!("nbd{s}+unix:///{export}?socket={}", p.display()),
        Listen::Tcp(a) => format!(
            "nbd{s}://{}/{export}",
            local.map(|s| s.to_string()).unwrap_or_else(|| a.clone())
        ),
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and every thread it starts later), so
/// that only the waiting thread sees them. `serve` calls it before it starts any thread: a
/// thread started earlier (the background resync, the live record) that has not yet blocked
/// them itself would take a SIGTERM sent at once and end the process without its clean stop.
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-mask calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// What a stop tells the operator.
pub struct Summary {
    pub connections: u64,
    pub signal: Option<&'static str>,
    /// Why the backend stopped the service (see [`StopHandle`]), when it did.
    pub stopped_by: Option<String>,
}

/// What a stop, by signal or by the backend, does to the front end.
pub(crate) struct StopState {
    stopping: AtomicBool,
    /// The listening socket, while it is open (`None` once `run` returns: its number may
    /// then be another descriptor's).
    lfd: Mutex<Option<RawFd>>,
    conns: Conns,
    why: Mutex<Option<String>>,
}

impl StopState {
    /// No more clients; every connection's reading ends (the requests read are answered).
    fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Held through the shutdown: `run` forgets the listener before closing it.
        let lfd = self.lfd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = *lfd {
            // SAFETY: shutdown on descriptors this process owns (the listener is open while
            // `lfd` names it, the entries own theirs; a closed one only makes the call fail).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        drop(lfd);
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // SAFETY: as above.
            unsafe { libc::shutdown(c.sock.as_raw_fd(), libc::SHUT_RD) };
        }
    }

    fn stop(&self, why: &str) {
        {
            let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
            if w.is_some() || self.stopping.load(Ordering::SeqCst) {
                return;
            }
            *w = Some(why.to_string());
        }
        crate::systemd::notify(&format!("STOPPING=1\nSTATUS=stopping: {why}"), &log_line);
        self.begin();
    }
}

/// Starts a named thread, or says why it could not be started.
fn start_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// Serves `srv` as export `export` until SIGTERM or SIGINT (or until `srv` stops it through
/// its [`StopHandle`]); then stops accepting, closes
/// the connections' read sides, lets every request already read finish and be answered
/// (clients get at most `limits.write_timeout` to take the replies, then every connection
/// is shut down), and returns (the caller stops the engine: sync, clear intents). A second
/// signal ends the process at once (see [`hard_stop`]).
pub fn run<B: Backend>(
    srv: Arc<B>,
    mut bound: Bound,
    listen: &Listen,
    export: &str,
    description: &str,
    tls: &Tls,
    limits: &Limits,
) -> io::Result<Summary> {
    // The steps, in this order:
    // 1. the socket put in place, and serving announced (log line, READY=1): clients and
    //    admin commands are taken from here on;
    // 2. the stop made reachable: by the engine (its StopHandle) and by SIGTERM/SIGINT on a
    //    thread that outlives `run` (a second signal ends the process at once);
    // 3. the handshake watchdog started;
    // 4. clients accepted, each checked against the limits and given its thread, until the
    //    stop;
    // 5. the drain: read sides closed, the requests in flight answered within the write
    //    timeout, then every connection shut down and its thread joined.
    // 1.
    let set = block_stop_signals();
    let listener = bound.publish()?;
    let (lfd, local) = match &listener {
        Listener::Unix(l, _) => (l.as_raw_fd(), None),
        Listener::Tcp(l) => (l.as_raw_fd(), l.local_addr().ok()),
    };
    let info = Arc::new(ExportInfo {
        name: export.to_string(),
        // Not the primary's path: any client may list the exports.
        description: handshake::EXPORT_DESCRIPTION.to_string(),
        size: srv.size(),
        flags: export_flags(srv.read_only(), srv.fast_zero()),
    });
    let at = uri(listen, export, local, tls.policy == TlsPolicy::Require);
    log_line(&format!(
        "serving {description} ({}) at {at}",
        srv.serving()
    ));
    if let Some(t) = tls.summary() {
        log_line(&t);
    }
    // The socket is in place, the control socket up: clients and admin commands are taken
    // from now on, so a unit that waits for this (Type=notify) may start its dependents.
    crate::systemd::notify(
        &format!("READY=1\nSTATUS=serving {description} at {at}"),
        &log_line,
    );
    // 2.
    let signal: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let conns: Conns = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(StopState {
        stopping: AtomicBool::new(false),
        lfd: Mutex::new(Some(lfd)),
        conns: conns.clone(),
        why: Mutex::new(None),
    });
    srv.stop_handle(StopHandle {
        inner: stop.clone(),
    });
    let socket = match &listener {
        Listener::Unix(_, p) => Some(p.clone()),
        Listener::Tcp(_) => None,
    };
    watch_signals(
        set,
        &stop,
        &signal,
        socket,
        srv.stop_work(),
        srv.hard_stop(),
    )?;
    // 3.
    let watchdog = handshake_watchdog(&stop, &conns, limits.handshake)?;
    // 4.
    let ids = AtomicU64::new(0);
    let mut handles = Vec::new();
    let mut refusals = Refusals::default();
    while let Some((conn, peer)) = accept(&listener, &stop) {
        if stop.stopping.load(Ordering::SeqCst) {
            break;
        }
        let live = conns.lock().unwrap_or_else(|p| p.into_inner()).len();
        if live >= limits.max_connections {
            // Closed at once: the connections being served keep their threads and memory.
            refusals.refuse(
                &peer,
                &format!("{live} connections already, the most --max-connections allows"),
            );
            continue;
        }
        if let Err(e) = conn.set_write_timeout(limits.write_timeout) {
            refusals.refuse(&peer, &format!("setting its write timeout: {e}"));
            continue;
        }
        let sock = match conn.dup() {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors: this client is turned away, the others go on.
                refusals.refuse(&peer, &e.to_string());
                continue;
            }
        };
        let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
        conns.lock().unwrap_or_else(|p| p.into_inner()).push(Entry {
            id,
            sock,
            handshake_until: Some(Instant::now() + limits.handshake),
            timed_out: false,
        });
        let srv = srv.clone();
        let info = info.clone();
        let conns2 = conns.clone();
        let tls = tls.clone();
        let (write_timeout, handshake_limit) = (limits.write_timeout, limits.handshake);
        let who = peer.clone();
        let started = start_thread("nbd-connection", move || {
            srv.client_opened(id);
            let limit = Handshaking {
                conns: &conns2,
                id,
                limit: handshake_limit,
            };
            connection(id, conn, peer, &srv, &info, &tls, &limit, write_timeout);
            srv.client_closed(id);
            conns2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|c| c.id != id);
        });
        match started {
            Ok(h) => handles.push(h),
            Err(e) => {
                // No thread for it (a thread limit, say): it is turned away, the others go
                // on. The closure, and the connection with it, was dropped.
                conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|c| c.id != id);
                log_line_at(
                    crate::systemd::Priority::Warning,
                    &format!(
                        "client {id}: {who}: refused: no thread could be started for it ({e})"
                    ),
                );
            }
        }
        handles.retain(|h| !h.is_finished());
    }
    // 5.
    drain(&conns, handles, limits.write_timeout);
    let _ = watchdog.join();
    if let Listener::Unix(_, p) = &listener {
        let _ = std::fs::remove_file(p);
    }
    // The listener is closed on return: a later stop must not shut its number down.
    stop.stopping.store(true, Ordering::SeqCst);
    *stop.lfd.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let sig = *signal.lock().unwrap_or_else(|p| p.into_inner());
    let stopped_by = stop.why.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Summary {
        connections: ids.load(Ordering::SeqCst),
        signal: sig,
        stopped_by,
    })
}

/// The thread that waits for SIGTERM/SIGINT in `set`: the first begins the stop (its name
/// kept in `signal`, STOPPING=1 sent), a second ends the process at once ([`hard_stop`]).
/// It lives on after `run` returns: a second signal during the engine's stop (the final
/// sync) ends the process too.
fn watch_signals(
    set: libc::sigset_t,
    stop: &Arc<StopState>,
    signal: &Arc<Mutex<Option<&'static str>>>,
    socket: Option<PathBuf>,
    stop_work: &'static str,
    hard: String,
) -> io::Result<()> {
    let (stop, signal) = (stop.clone(), signal.clone());
    start_thread("stop-signals", move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on the set blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        crate::systemd::notify(
            &format!(
                "STOPPING=1\nSTATUS=stopping on {}: finishing the requests in flight, then {stop_work}",
                signal_name(sig)
            ),
            &log_line,
        );
        *signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal_name(sig));
        stop.begin();
        // SAFETY: as above.
        unsafe { libc::sigwait(&set, &mut sig) };
        hard_stop(sig, socket.as_deref(), &hard);
    })
    .map(drop)
}

/// A client that has not finished its handshake (TLS included) within `limit` is
/// disconnected: connections that say nothing, or start TLS and stall, hold no thread for
/// long. Ends with the stop.
fn handshake_watchdog(
    stop: &Arc<StopState>,
    conns: &Conns,
    limit: Duration,
) -> io::Result<std::thread::JoinHandle<()>> {
    let (stop, conns) = (stop.clone(), conns.clone());
    start_thread("handshake-limit", move || {
        let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        while !stop.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(tick);
            let now = Instant::now();
            for c in conns.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                if c.handshake_until.is_some_and(|t| t <= now) {
                    c.handshake_until = None;
                    c.timed_out = true;
                    // SAFETY: shutdown on a descriptor the entry owns.
                    unsafe { libc::shutdown(c.sock.as_raw_fd(), libc::SHUT_RDWR) };
                }
            }
        }
    })
}

/// The next client and who it is; `None` once the stop has begun (it shuts the listener
/// down). An accept that fails otherwise (out of descriptors, say) is logged and retried
/// after a moment, never in a spin.
fn accept(listener: &Listener, stop: &StopState) -> Option<(Conn, String)> {
    loop {
        let got = match listener {
            Listener::Unix(l, _) => l
                .accept()
                .map(|(s, _)| (Conn::Unix(s), "unix socket".to_string())),
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (Conn::Tcp(s), a.to_string())
            }),
        };
        match got {
            Ok(c) => return Some(c),
            Err(_) if stop.stopping.load(Ordering::SeqCst) => return None,
            Err(e) => {
                log_line_at(crate::systemd::Priority::Error, &format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The stop's drain: every connection's read side closed (also one accepted while the stop
/// was being signalled), the requests in flight finished and answered, clients given
/// `write_timeout` to take their replies (each write waits at most that, but a client taking
/// a byte now and then could stretch it), then every connection shut down both ways and
/// every connection thread joined.
fn drain(conns: &Conns, handles: Vec<std::thread::JoinHandle<()>>, write_timeout: Duration) {
    for c in conns.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        // SAFETY: shutdown on a descriptor the entry owns.
        unsafe { libc::shutdown(c.sock.as_raw_fd(), libc::SHUT_RD) };
    }
    let deadline = Instant::now() + write_timeout;
    while Instant::now() < deadline && handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let late = conns.lock().unwrap_or_else(|p| p.into_inner()).len();
    if late > 0 && handles.iter().any(|h| !h.is_finished()) {
        log_line_at(
            crate::systemd::Priority::Warning,
            &format!(
                "stopping: {} still open after {write_timeout:?} (--write-timeout): shut down",
                if late == 1 {
                    "1 connection".to_string()
                } else {
                    format!("{late} connections")
                },
            ),
        );
        for c in conns.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // SAFETY: shutdown on a descriptor the entry owns.
            unsafe { libc::shutdown(c.sock.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
    for h in handles {
        let _ = h.join();
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "SIGHUP",
    }
}

/// A second SIGTERM/SIGINT: the process ends now, by that signal, without the clean stop.
/// Requests in flight get no reply, nothing is synced and no write intent is cleared
/// (intents are only ever cleared after a sync on every leg, W2), so the data is as safe as
/// after a crash: the next command finds an unclean stop and marks the hot set for resync.
fn hard_stop(sig: libc::c_int, socket: Option<&Path>, what: &str) {
    log_line_at(
        crate::systemd::Priority::Warning,
        &format!("second {}: {what}", signal_name(sig)),
    );
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
    // SAFETY: the default action of SIGTERM/SIGINT/SIGHUP ends the process; unblocked in
    // this thread, raising it there ends the process by the signal (exit status 128+n in a
    // shell). _exit is the fallback should it return.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig);
    }
}

/// Refused clients, logged at most once a second under a flood (with how many more).
#[derive(Default)]
struct Refusals {
    last: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn refuse(&mut self, peer: &str, why: &str) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            self.unlogged += 1;
            return;
        }
        let more = match std::mem::take(&mut self.unlogged) {
            0 => String::new(),
            n => format!(" ({n} more refused in the last second)"),
        };
        log_line_at(
            crate::systemd::Priority::Warning,
            &format!("refused a client ({peer}): {why}{more}"),
        );
        self.last = Some(now);
    }
}

/// A live connection, as the stop and the handshake watchdog see it.
struct Entry {
    id: u64,
    /// A descriptor of the connection's socket, kept until the connection has ended.
    sock: OwnedFd,
    /// When its handshake must be over (`None` once it is).
    handshake_until: Option<Instant>,
    /// The watchdog cut it off.
    timed_out: bool,
}

type Conns = Arc<Mutex<Vec<Entry>>>;

/// One connection's entry, for the handshake's end.
struct Handshaking<'a> {
    conns: &'a Conns,
    id: u64,
    limit: Duration,
}

impl Handshaking<'_> {
    /// The handshake ended: no more deadline. Whether the watchdog had cut it off.
    fn over(&self) -> bool {
        let mut c = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        match c.iter_mut().find(|c| c.id == self.id) {
            Some(e) => {
                e.handshake_until = None;
                e.timed_out
            }
            None => false,
        }
    }
}

/// Why a handshake did not reach the transmission phase.
enum HandshakeEnd {
    /// `NBD_OPT_ABORT`.
    Aborted,
    /// The TLS handshake failed (a certificate refused, the peer gone or not speaking TLS).
    Tls(io::Error),
    /// The client's certificate (its names given) is for none of the `--tls-allow` names.
    NotAllowed(Vec<String>),
    Io(io::Error),
}

/// A handshake that reached the transmission phase.
struct Handshaken {
    conn: Conn,
    neg: Negotiated,
    in_tls: bool,
}

/// The handshake, with TLS started when the client asks and the policy allows.
/// `told_tls` is set once the client was told it must start TLS.
fn handshake(
    mut conn: Conn,
    info: &ExportInfo,
    tls: &Tls,
    told_tls: &mut bool,
) -> Result<Handshaken, HandshakeEnd> {
    let no_zeroes = handshake::greet(&mut conn).map_err(HandshakeEnd::Io)?;
    let mut in_tls = false;
    loop {
        match handshake::haggle(&mut conn, info, tls.policy, in_tls, no_zeroes, told_tls) {
            Ok(Outcome::Go(neg)) => return Ok(Handshaken { conn, neg, in_tls }),
            Ok(Outcome::Aborted) => return Err(HandshakeEnd::Aborted),
            Ok(Outcome::StartTls) => {
                let Some(cfg) = &tls.config else {
                    unreachable!("STARTTLS is refused without certificates")
                };
                let t = crate::tls::TlsStream::accept(conn.into_fd(), cfg)
                    .map_err(HandshakeEnd::Tls)?;
                if !tls.allow.is_empty() {
                    let names = t.peer_names();
                    if !crate::tls::name_allowed(&names, &tls.allow) {
                        return Err(HandshakeEnd::NotAllowed(names));
                    }
                }
                conn = Conn::Tls(t);
                in_tls = true;
            }
            Err(e) => return Err(HandshakeEnd::Io(e)),
        }
    }
}

/// The log line for a handshake that ended before transmission.
fn handshake_end(end: HandshakeEnd, told_tls: bool) -> String {
    const NO_TLS: &str = "refused: the client did not start TLS, which this server requires";
    match end {
        HandshakeEnd::Aborted if told_tls => NO_TLS.into(),
        HandshakeEnd::Aborted => "ended the handshake (NBD_OPT_ABORT)".into(),
        HandshakeEnd::Tls(e) => format!("refused: TLS handshake failed: {e}"),
        HandshakeEnd::NotAllowed(names) => format!(
            "refused: its certificate is for {}, none of the --tls-allow names",
            if names.is_empty() {
                "no name".to_string()
            } else {
                names.join(", ")
            }
        ),
        HandshakeEnd::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            format!("refused: {e}")
        }
        HandshakeEnd::Io(_) if told_tls => NO_TLS.into(),
        HandshakeEnd::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
            ) =>
        {
            // A client probing the socket, or one that gave up: not a protocol error.
            "closed the connection during the handshake".into()
        }
        HandshakeEnd::Io(e) => format!("disconnected during the handshake: {e}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn connection<B: Backend>(
    id: u64,
    conn: Conn,
    peer: String,
    srv: &Arc<B>,
    info: &ExportInfo,
    tls: &Tls,
    limit: &Handshaking,
    write_timeout: Duration,
) {
    let log = move |m: &str| log_line(&format!("client {id}: {m}"));
    let mut told_tls = false;
    let r = handshake(conn, info, tls, &mut told_tls);
    let timed_out = limit.over();
    let Handshaken {
        conn: mut reader,
        neg,
        in_tls,
    } = match r {
        Ok(h) => h,
        Err(_) if timed_out => {
            log(&format!(
                "{peer}: disconnected: no handshake within {:?} (--handshake-limit)",
                limit.limit
            ));
            return;
        }
        Err(end) => {
            log(&format!("{peer}: {}", handshake_end(end, told_tls)));
            return;
        }
    };
    let how = match (in_tls, tls.mutual) {
        (false, _) => "",
        (true, false) => "TLS",
        (true, true) => "TLS, client certificate verified",
    };
    srv.client_connected(
        id,
        &format!(
            "client {id}: {peer}{}",
            if how.is_empty() {
                String::new()
            } else {
                format!(" ({how})")
            }
        ),
    );
    log(&format!(
        "connected ({peer}; {}{} replies{})",
        if how.is_empty() {
            String::new()
        } else {
            format!("{how}; ")
        },
        if neg.structured {
            "structured"
        } else {
            "simple"
        },
        if neg.base_allocation {
            ", base:allocation"
        } else {
            ""
        }
    ));
    let writer = match reader.try_clone() {
        Ok(w) => w,
        Err(e) => {
            log(&format!("cloning the connection: {e}"));
            return;
        }
    };
    let writer = ReplyWriter {
        conn: writer,
        timeout: write_timeout,
    };
    let end = transmission::transmit(id, &mut reader, Box::new(writer), srv, neg, &log);
    if let Conn::Tls(t) = &reader {
        t.close();
    }
    match end {
        transmission::End::Disconnected => log("disconnected"),
        transmission::End::Closed => log("closed the connection"),
        transmission::End::Broken(why) => log(&format!("disconnected: {why}")),
    }
}

/// The default socket path for a primary: under /run/mirrorctl (root) or the user's
/// runtime directory, named after the image and a hash of its full path.
pub fn default_socket(primary: &Path) -> PathBuf {
    let full = std::fs::canonicalize(primary).unwrap_or_else(|_| primary.to_path_buf());
    let hash = blake3::hash(full.as_os_str().as_encoded_bytes()).to_hex();
    let base: String = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mirror".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let dir = crate::live::runtime_dir();
    dir.join(format!("{base}-{}.sock", &hash.as_str()[..8]))
}
