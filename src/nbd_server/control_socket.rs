//! The control socket of a serving process: other mirrorctl commands on the served mirror
//! (fracture, detach, resync) are carried out by the server, which owns the mirror, and
//! their output, progress and exit status are sent back to the command that asked.
//!
//! Protocol version 1 (README, "Administration while serving"): a Unix socket (mode 0600)
//! at `RUNTIME_DIR/ctl-DEV-INODE.sock`, named like the live record by the primary's device
//! and inode. The client sends one JSON line `{"version":1,"args":[...],"cwd":"..."}` (the
//! command line after `mirrorctl`, and its working directory); the server answers with JSON
//! lines, each one of `{"out":TEXT}` (stdout), `{"err":TEXT}` (stderr), `{"progress":
//! {"done":N,"total":N}}`, and last `{"exit":CODE}` or `{"error":{"message":TEXT,"code":
//! CODE}}` (a failure, printed by the client as its own). A request of another version is
//! answered with an error naming both versions, exit 5.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const VERSION: u32 = 1;

/// A control client must send its request line within this (mirrorctl sends it at once).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A request line longer than this is refused.
const REQUEST_MAX: u64 = 1 << 20;
/// A control client that takes no output for this long gets no more (the command itself
/// goes on to its end).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Request {
    pub version: u32,
    /// The command line after `mirrorctl`.
    pub args: Vec<String>,
    /// The client's working directory (relative paths in `args` are relative to it).
    pub cwd: PathBuf,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Out(String),
    Err(String),
    Progress { done: u64, total: u64 },
    Exit(i32),
    Error { message: String, code: i32 },
}

/// The control socket's path for an open primary.
pub fn socket_path(primary: crate::lock::Handle<'_>) -> io::Result<PathBuf> {
    Ok(socket_beside(&primary.record_path()?))
}

/// The control socket of the server whose live record is at `record`.
pub fn socket_beside(record: &std::path::Path) -> PathBuf {
    let p = record;
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("live-unknown.json")
        .replacen("live-", "ctl-", 1)
        .replace(".json", ".sock");
    p.with_file_name(name)
}

/// Where a handler sends a command's output.
pub struct Reply {
    out: UnixStream,
    /// A write failed or timed out: nothing more is sent.
    gone: bool,
}

impl Reply {
    pub fn send(&mut self, m: &Message) {
        // A client that went away, or takes nothing for REPLY_TIMEOUT, gets nothing more;
        // the command itself completes.
        if self.gone {
            return;
        }
        let mut line = serde_json::to_vec(m).unwrap_or_default();
        line.push(b'\n');
        if self.out.write_all(&line).is_err() {
            self.gone = true;
        }
    }
}

/// A control connection being served: its thread, and its socket while its request is
/// being read (shut down at stop, so an idle client does not hold the stop up).
struct Running {
    thread: std::thread::JoinHandle<()>,
    reading: Arc<Mutex<Option<OwnedFd>>>,
}

/// Runs one request to its end, sending everything through the reply.
pub type Handler = Arc<dyn Fn(Request, &mut Reply) + Send + Sync>;

/// A listening control socket; removed when stopped.
pub struct Control {
    path: PathBuf,
    listener: UnixListener,
    thread: Option<std::thread::JoinHandle<()>>,
    requests: Arc<Mutex<Vec<Running>>>,
    stopping: Arc<AtomicBool>,
}

impl Control {
    /// Listens at `path` (replacing a stale socket there), serving each connection on its
    /// own thread with `handler`.
    pub fn start(path: &Path, handler: Handler) -> io::Result<Control> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        // Only the serving process holds the mirror's lock, so a socket here is stale.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let l = listener.try_clone()?;
        let requests: Arc<Mutex<Vec<Running>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let (reqs, stop) = (requests.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                crate::live::block_signals();
                loop {
                    let conn = match l.accept() {
                        Ok((c, _)) => c,
                        Err(_) if stop.load(Ordering::SeqCst) => break,
                        Err(e) => {
                            // Out of descriptors, say: never spin, never give up.
                            super::log_line(&format!("control socket: accept: {e}"));
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let reading = Arc::new(Mutex::new(conn.try_clone().ok().map(OwnedFd::from)));
                    let (h, rd) = (handler.clone(), reading.clone());
                    // No thread (a thread limit): the connection is closed, the command
                    // that asked says the server closed it.
                    let t = std::thread::Builder::new()
                        .name("control-request".into())
                        .spawn(move || {
                            crate::live::block_signals();
                            serve_one(conn, &h, &rd)
                        });
                    let mut r = reqs.lock().unwrap_or_else(|p| p.into_inner());
                    r.retain(|t| !t.thread.is_finished());
                    if let Ok(thread) = t {
                        r.push(Running { thread, reading });
                    }
                }
            })?;
        Ok(Control {
            path: path.to_path_buf(),
            listener,
            thread: Some(thread),
            requests,
            stopping,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends the connections still sending their request, and waits for
    /// the requests being carried out.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on the listener this struct owns; it wakes the accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let running = std::mem::take(&mut *self.requests.lock().unwrap_or_else(|p| p.into_inner()));
        for r in &running {
            if let Some(fd) = &*r.reading.lock().unwrap_or_else(|p| p.into_inner()) {
                // SAFETY: shutdown(2) on a descriptor this entry owns; it wakes the read.
                unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RD) };
            }
        }
        for r in running {
            let _ = r.thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(conn: UnixStream, handler: &Handler, reading: &Mutex<Option<OwnedFd>>) {
    // Bounded waits: an idle or stalled client holds this thread (and a stop) up no longer.
    let timeouts = conn
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|_| conn.set_write_timeout(Some(REPLY_TIMEOUT)));
    let Ok(read) = conn.try_clone() else { return };
    if timeouts.is_err() {
        return;
    }
    let mut line = String::new();
    let r = BufReader::new(read.take(REQUEST_MAX)).read_line(&mut line);
    // The request is read: the stop no longer cuts this connection short.
    *reading.lock().unwrap_or_else(|p| p.into_inner()) = None;
    if r.is_err() || !line.ends_with('\n') {
        return;
    }
    let mut reply = Reply {
        out: conn,
        gone: false,
    };
    let req: Request = match serde_json::from_str(line.trim_end()) {
        Ok(r) => r,
        Err(e) => {
            reply.send(&Message::Error {
                message: format!("control request not understood ({e}); this server speaks control protocol version {VERSION}"),
                code: 5,
            });
            return;
        }
    };
    if req.version != VERSION {
        reply.send(&Message::Error {
            message: format!(
                "this mirrorctl speaks control protocol version {}, the serving process version {VERSION}; use the same mirrorctl as the server",
                req.version
            ),
            code: 5,
        });
        return;
    }
    handler(req, &mut reply);
}

/// Sends `req` to the server at `path`, handing every message to `each` until the last
/// one, which is returned.
pub fn ask(path: &Path, req: &Request, each: &mut dyn FnMut(&Message)) -> io::Result<Message> {
    let mut s = UnixStream::connect(path)?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut r = BufReader::new(s);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the control connection before the command finished",
            ));
        }
        let m: Message = serde_json::from_str(l.trim_end()).map_err(io::Error::other)?;
        match m {
            Message::Exit(_) | Message::Error { .. } => return Ok(m),
            m => each(&m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_with_its_messages_and_an_old_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let handler: Handler = Arc::new(|req: Request, r: &mut Reply| {
            r.send(&Message::Out(format!("args {:?}\n", req.args)));
            r.send(&Message::Progress { done: 1, total: 2 });
            r.send(&Message::Exit(3));
        });
        let c = Control::start(&path, handler).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut seen = Vec::new();
        let req = Request {
            version: VERSION,
            args: vec!["fracture".into(), "p".into()],
            cwd: "/".into(),
        };
        let last = ask(&path, &req, &mut |m| seen.push(m.clone())).unwrap();
        assert_eq!(last, Message::Exit(3));
        assert_eq!(
            seen,
            vec![
                Message::Out("args [\"fracture\", \"p\"]\n".into()),
                Message::Progress { done: 1, total: 2 }
            ]
        );
        let old = Request {
            version: VERSION + 1,
            ..req
        };
        match ask(&path, &old, &mut |_| {}).unwrap() {
            Message::Error { message, code } => {
                assert_eq!(code, 5);
                assert!(message.contains("protocol version"), "{message}");
            }
            m => panic!("{m:?}"),
        }
        c.stop();
        assert!(!path.exists());
    }
}
