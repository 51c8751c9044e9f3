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
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const VERSION: u32 = 1;

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
pub fn socket_path(file: &File) -> io::Result<PathBuf> {
    let p = crate::live::record_path(file)?;
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("live-unknown.json")
        .replacen("live-", "ctl-", 1)
        .replace(".json", ".sock");
    Ok(p.with_file_name(name))
}

/// Where a handler sends a command's output.
pub struct Reply {
    out: UnixStream,
}

impl Reply {
    pub fn send(&mut self, m: &Message) {
        // A client that went away gets nothing more; the command itself completes.
        let mut line = serde_json::to_vec(m).unwrap_or_default();
        line.push(b'\n');
        let _ = self.out.write_all(&line);
    }
}

/// Runs one request to its end, sending everything through the reply.
pub type Handler = Arc<dyn Fn(Request, &mut Reply) + Send + Sync>;

/// A listening control socket; removed when stopped.
pub struct Control {
    path: PathBuf,
    listener: UnixListener,
    thread: Option<std::thread::JoinHandle<()>>,
    requests: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
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
        let requests: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
        let reqs = requests.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                crate::live::block_signals();
                for conn in l.incoming() {
                    let Ok(conn) = conn else { break };
                    let h = handler.clone();
                    let t = std::thread::Builder::new()
                        .name("control-request".into())
                        .spawn(move || {
                            crate::live::block_signals();
                            serve_one(conn, &h)
                        });
                    let mut r = reqs.lock().unwrap_or_else(|p| p.into_inner());
                    r.retain(|t| !t.is_finished());
                    r.extend(t);
                }
            })?;
        Ok(Control {
            path: path.to_path_buf(),
            listener,
            thread: Some(thread),
            requests,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and waits for the requests being carried out.
    pub fn stop(mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on the listener this struct owns; it wakes the accept.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let running = std::mem::take(&mut *self.requests.lock().unwrap_or_else(|p| p.into_inner()));
        for t in running {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(conn: UnixStream, handler: &Handler) {
    let Ok(read) = conn.try_clone() else { return };
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).is_err() {
        return;
    }
    let mut reply = Reply { out: conn };
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
