//! systemd integration, without a library: the readiness and stop notifications `serve`
//! sends to the service manager (`sd_notify(3)`'s datagram on `$NOTIFY_SOCKET`), and the
//! one place every log line on stderr goes through, which adds a syslog priority prefix
//! (`<3>` error, `<4>` warning, `<5>` note, `<6>` info) when stderr is journald's stream
//! (`$JOURNAL_STREAM` naming stderr's device and inode, as systemd.exec(5) documents).
//!
//! The pure parts (the notify address, the stream check, a line's priority) are apart
//! from the I/O and unit-tested.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// A syslog priority, as journald reads it from a `<N>` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

impl Priority {
    /// The priority a line says it has: after its `mirrorctl...: ` head, `error:` is an
    /// error, `warning:` a warning, `note:` a notice; any other line has `default`.
    pub fn of(line: &str, default: Priority) -> Priority {
        let mut rest = line;
        // "mirrorctl: ", "mirrorctl serve: ", "mirrorctl: events: " ...
        if let Some(r) = rest.strip_prefix("mirrorctl") {
            if let Some((_, after)) = r.split_once(": ") {
                rest = after;
            }
        }
        if rest.starts_with("error:") {
            Priority::Error
        } else if rest.starts_with("warning:") {
            Priority::Warning
        } else if rest.starts_with("note:") {
            Priority::Notice
        } else {
            default
        }
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names the file stderr is (`dev`,
/// `ino` from its fstat): only then is stderr journald's stream. A value inherited by a
/// process whose stderr was redirected elsewhere names another file, and is ignored.
pub fn journal_stream_is(value: Option<&OsStr>, dev: u64, ino: u64) -> bool {
    let Some(v) = value.and_then(OsStr::to_str) else {
        return false;
    };
    let Some((d, i)) = v.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Whether stderr is journald's stream (checked once).
fn under_journald() -> bool {
    static UNDER: OnceLock<bool> = OnceLock::new();
    *UNDER.get_or_init(|| {
        let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        match rustix::fs::fstat(std::os::fd::AsFd::as_fd(&io::stderr())) {
            Ok(st) => journal_stream_is(Some(&v), st.st_dev, st.st_ino),
            Err(_) => false,
        }
    })
}

/// `text` as written to stderr: each line ended by a newline and, under journald (which
/// takes each line as a message), led by its priority prefix.
pub fn render(text: &str, p: Priority, journald: bool) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split('\n') {
        if journald {
            out.push_str(&format!("<{}>", p as u8));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Writes `text` (one line, or several) to stderr at priority `p`, in one write. A failed
/// write is ignored: there is nowhere left to say it.
pub fn eprint_at(p: Priority, text: &str) {
    // A text that ends its last line itself gets no empty line after it.
    let text = text.strip_suffix('\n').unwrap_or(text);
    let s = render(text, p, under_journald());
    let _ = io::stderr().lock().write_all(s.as_bytes());
}

/// Writes log lines to stderr, each at the priority it says it has ([`Priority::of`];
/// other lines at `default`).
pub fn eprint(text: &str, default: Priority) {
    let text = text.strip_suffix('\n').unwrap_or(text);
    for line in text.split('\n') {
        eprint_at(Priority::of(line, default), line)
    }
}

/// Where `$NOTIFY_SOCKET` says the service manager listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file.
    Path(PathBuf),
    /// An abstract socket (`@NAME` in the variable), the name without its leading NUL.
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`: an absolute path or `@NAME` (abstract). Other forms (such as
/// `vsock:`) are refused with what was given.
pub fn parse_notify_addr(v: &OsStr) -> Result<NotifyAddr, String> {
    use std::os::unix::ffi::OsStrExt;
    let b = v.as_bytes();
    match b.first() {
        Some(b'/') => Ok(NotifyAddr::Path(PathBuf::from(v))),
        Some(b'@') if b.len() > 1 => Ok(NotifyAddr::Abstract(b[1..].to_vec())),
        _ => Err(format!(
            "NOTIFY_SOCKET={} is neither a socket path nor @NAME (an abstract socket)",
            v.to_string_lossy()
        )),
    }
}

/// The service manager's address, taken from the environment by [`take_notify_socket`].
static NOTIFY: OnceLock<Option<Result<NotifyAddr, String>>> = OnceLock::new();
/// A failed notification was said (once per process).
static NOTIFY_FAILED: AtomicBool = AtomicBool::new(false);
/// Notifications go out one at a time, in order.
static NOTIFY_LOCK: Mutex<()> = Mutex::new(());

/// Takes `$NOTIFY_SOCKET` out of the environment (so that no program started later takes
/// its messages for ours) and keeps it for [`notify`]. Call it before any thread starts.
pub fn take_notify_socket() {
    NOTIFY.get_or_init(|| {
        let v = std::env::var_os("NOTIFY_SOCKET")?;
        // Only threads read the environment concurrently; none has been started yet.
        std::env::remove_var("NOTIFY_SOCKET");
        Some(parse_notify_addr(&v))
    });
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments such as `READY=1`) to the
/// service manager, if one asked for notifications. A failure is logged once with
/// `log`, never fatal: the service runs on; systemd decides what a missing `READY=1` means.
pub fn notify(state: &str, log: &dyn Fn(&str)) {
    let Some(Some(addr)) = NOTIFY.get() else {
        return;
    };
    let _one = NOTIFY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let sent = match addr {
        Ok(a) => send(a, state.as_bytes()),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidInput, e.clone())),
    };
    if let Err(e) = sent {
        if !NOTIFY_FAILED.swap(true, Ordering::SeqCst) {
            let first = state.lines().next().unwrap_or("");
            log(&format!(
                "warning: telling the service manager {first} through NOTIFY_SOCKET failed: {e}; serving goes on (said once)"
            ));
        }
    }
}

fn send(addr: &NotifyAddr, msg: &[u8]) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let n = match addr {
        NotifyAddr::Path(p) => sock.send_to(msg, p)?,
        NotifyAddr::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &a)?
        }
    };
    if n != msg.len() {
        return Err(io::Error::other(format!("sent {n} of {} bytes", msg.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_s_priority_is_read_after_its_mirrorctl_head() {
        let p = |l| Priority::of(l, Priority::Info);
        assert_eq!(p("mirrorctl serve: error: primary failed"), Priority::Error);
        assert_eq!(
            p("mirrorctl: warning: superblock copy B"),
            Priority::Warning
        );
        assert_eq!(p("mirrorctl: note: a.img was not closed"), Priority::Notice);
        assert_eq!(p("mirrorctl serve: client 3: connected"), Priority::Info);
        assert_eq!(p("warning: bare"), Priority::Warning);
        // A word later in the line is not the line's priority.
        assert_eq!(
            p("mirrorctl serve: client 1: disconnected: error: x"),
            Priority::Info
        );
        assert_eq!(
            Priority::of("mirrorctl: cannot open a.img", Priority::Error),
            Priority::Error
        );
    }

    #[test]
    fn journal_stream_counts_only_when_it_names_stderr_s_device_and_inode() {
        let v = |s: &str| Some(OsStr::new(s).to_owned());
        assert!(journal_stream_is(v("2049:1234").as_deref(), 2049, 1234));
        assert!(!journal_stream_is(v("2049:1235").as_deref(), 2049, 1234));
        assert!(!journal_stream_is(v("2048:1234").as_deref(), 2049, 1234));
        assert!(!journal_stream_is(v("2049").as_deref(), 2049, 1234));
        assert!(!journal_stream_is(v("x:y").as_deref(), 2049, 1234));
        assert!(!journal_stream_is(None, 2049, 1234));
    }

    #[test]
    fn every_line_of_a_message_gets_the_prefix_under_journald_and_none_elsewhere() {
        assert_eq!(
            render("mirrorctl: bad\n  hint", Priority::Error, true),
            "<3>mirrorctl: bad\n<3>  hint\n"
        );
        assert_eq!(
            render("mirrorctl: bad\n  hint", Priority::Error, false),
            "mirrorctl: bad\n  hint\n"
        );
        assert_eq!(render("x", Priority::Info, true), "<6>x\n");
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        assert_eq!(
            parse_notify_addr(OsStr::new("/run/systemd/notify")),
            Ok(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_addr(OsStr::new("@/org/freedesktop/systemd1/notify/1")),
            Ok(NotifyAddr::Abstract(
                b"/org/freedesktop/systemd1/notify/1".to_vec()
            ))
        );
        assert!(parse_notify_addr(OsStr::new("@")).is_err());
        assert!(parse_notify_addr(OsStr::new("vsock:2:1234")).is_err());
        assert!(parse_notify_addr(OsStr::new("relative")).is_err());
    }
}
