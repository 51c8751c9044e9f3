//! The mirror lock: an flock on the primary. Commands that change a mirror hold it
//! exclusively, readers share it; a busy mirror is exit 5 unless `--wait` was given.

use crate::error::{Error, Result};
use rustix::fs::{flock, FlockOperation};
use std::fs::File;
use std::time::{Duration, Instant};

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

/// Takes the lock on `file` (the open primary); released when the file is closed.
pub fn lock(file: &File, mode: Mode, wait: Wait, name: &str) -> Result<()> {
    let op = match mode {
        Mode::Shared => FlockOperation::NonBlockingLockShared,
        Mode::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    let start = Instant::now();
    loop {
        match flock(file, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(Error::primary(format!("locking {name}: {e}")));
            }
        }
        let give_up = match wait {
            Wait::No => true,
            Wait::For(d) => start.elapsed() >= d,
            Wait::Forever => false,
        };
        if give_up {
            return Err(Error::busy(format!(
                "{name} is busy: another mirrorctl is using this mirror; try again later or pass --wait[=DURATION]"
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
