//! The mirror lock: an flock on the primary. Commands that change a mirror hold it
//! exclusively, readers share it; a busy mirror is exit 5 unless `--wait` was given.

use crate::error::{Error, Result};
use rustix::fs::{flock, FlockOperation};
use std::fs::File;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// How long to wait for a busy lock: `None` = do not wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    No,
    For(Duration),
    Forever,
}

pub fn parse_wait(v: Option<&str>) -> std::result::Result<Wait, String> {
    match v {
        None => Ok(Wait::No),
        Some("forever") | Some("") => Ok(Wait::Forever),
        Some(d) => Ok(Wait::For(crate::units::parse_duration(d)?)),
    }
}

/// Who holds a busy mirror, for the message: the running command's own record, or at
/// least the pid from the kernel's lock table.
pub fn holder(file: &File) -> String {
    if let Some(r) = crate::live::read(file) {
        let how = if r.command == "serve" {
            format!(
                "; while it serves, stop it cleanly with `kill -TERM {}` (it syncs every leg and clears the write intents)",
                r.pid
            )
        } else {
            String::new()
        };
        return format!(
            "`mirrorctl {}` (pid {}, since {}) is using this mirror{how}",
            r.command, r.pid, r.started_at
        );
    }
    match crate::live::holders(file).first() {
        Some(pid) => format!("another process (pid {pid}) is using this mirror"),
        None => "another mirrorctl is using this mirror".to_string(),
    }
}

/// The commands a serving process carries out when they are run as usual while it holds
/// the mirror (sent over its control socket; `status` needs no lock).
pub const SERVED_COMMANDS: &str = "fracture, resync, attach, detach and verify";

fn busy(file: &File, name: &str) -> Error {
    let served = crate::live::read(file).is_some_and(|r| r.command == "serve");
    Error::busy(busy_text(name, &holder(file), served))
}

/// The busy message: who holds the mirror and what to do. `--wait` is no help against
/// `serve` (it holds the mirror for its whole life), so then the message says which
/// commands the server carries out instead.
fn busy_text(name: &str, holder: &str, served: bool) -> String {
    if served {
        format!(
            "{name} is busy: {holder}. While it serves, {SERVED_COMMANDS} are sent to it and carried out by it (run them as usual; status needs no lock); this command is not, and --wait would wait until serve stops"
        )
    } else {
        format!("{name} is busy: {holder}; try again later or pass --wait[=DURATION]")
    }
}

/// Takes the lock on `file` (the open primary); released when the file is closed.
///
/// A waiter blocks in the kernel (on a duplicate of the descriptor, so the lock belongs to
/// `file`'s open file description) rather than polling: when the holder lets go between
/// batches (verify does), a waiting writer is woken and gets the lock first.
pub fn lock(file: &File, mode: Mode, wait: Wait, name: &str) -> Result<()> {
    let (try_op, block_op) = match mode {
        Mode::Shared => (
            FlockOperation::NonBlockingLockShared,
            FlockOperation::LockShared,
        ),
        Mode::Exclusive => (
            FlockOperation::NonBlockingLockExclusive,
            FlockOperation::LockExclusive,
        ),
    };
    loop {
        match flock(file, try_op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::primary(format!("locking {name}: {e}"))),
        }
    }
    if wait == Wait::No {
        return Err(busy(file, name));
    }
    let dup = file
        .try_clone()
        .map_err(|e| Error::primary(format!("locking {name}: {e}")))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lock-wait".into())
        .spawn(move || loop {
            match flock(&dup, block_op) {
                Err(rustix::io::Errno::INTR) => continue,
                r => {
                    let _ = tx.send(r);
                    break;
                }
            }
        })
        .map_err(|e| Error::primary(format!("waiting for the lock on {name}: {e}")))?;
    let got = match wait {
        Wait::For(d) => rx.recv_timeout(d).ok(),
        _ => rx.recv().ok(),
    };
    match got {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(Error::primary(format!("locking {name}: {e}"))),
        // The caller already waited: suggesting --wait again would be no help.
        None => Err(Error::busy(format!(
            "{name} is busy: {} after waiting {}; try again later or wait longer",
            holder(file),
            crate::units::format_duration(match wait {
                Wait::For(d) => d,
                _ => Duration::ZERO,
            })
        ))),
    }
}

/// The open primary the mirror lock is taken on and its runtime files (the live record,
/// the control socket) are named by: what a device that can be locked hands out
/// ([`crate::device::Device::lock_handle`]), so a command locks and finds the running
/// command without reaching for the file behind the device.
#[derive(Clone, Copy)]
pub struct Handle<'a>(&'a File);

impl<'a> Handle<'a> {
    /// The handle of an open file or block device (for `crate::device`, which owns it).
    pub(crate) fn new(file: &'a File) -> Handle<'a> {
        Handle(file)
    }

    /// Takes the mirror lock ([`lock`]); released when the device is closed.
    pub fn lock(self, mode: Mode, wait: Wait, name: &str) -> Result<()> {
        lock(self.0, mode, wait, name)
    }

    /// The record of the command running on the mirror now ([`crate::live::read`]).
    pub fn running(self) -> Option<crate::live::Record> {
        crate::live::read(self.0)
    }

    /// Pids of other processes holding the lock exclusively ([`crate::live::writers`]).
    pub fn writers(self) -> Vec<u32> {
        crate::live::writers(self.0)
    }

    /// Starts publishing this command's live record ([`crate::live::Publisher::start`]).
    pub fn publish(
        self,
        primary: &str,
        command: &str,
        write_intents_live: bool,
    ) -> crate::live::Publisher {
        crate::live::Publisher::start(self.0, primary, command, write_intents_live)
    }

    /// Where the live record of a command on this mirror is ([`crate::live::record_path`];
    /// a serving process's control socket is beside it).
    pub fn record_path(self) -> std::io::Result<std::path::PathBuf> {
        crate::live::record_path(self.0)
    }
}

/// Lets a waiter blocked in [`lock`] take the lock that was just released.
pub fn yield_to_waiters() {
    std::thread::sleep(Duration::from_millis(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_busy_with_serve_names_the_commands_it_carries_out_not_wait() {
        let t = busy_text(
            "a.img",
            "`mirrorctl serve` (pid 7) is using this mirror",
            true,
        );
        assert!(t.contains(SERVED_COMMANDS), "{t}");
        assert!(!t.contains("pass --wait"), "{t}");
        let t = busy_text(
            "a.img",
            "`mirrorctl resync` (pid 7) is using this mirror",
            false,
        );
        assert!(
            t.ends_with("try again later or pass --wait[=DURATION]"),
            "{t}"
        );
    }
}
