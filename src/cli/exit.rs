//! The documented exit codes (README, mirrorctl(1)) and how error kinds map to them.

use crate::error::{Error, Kind, Opt};
use std::fmt;

/// Documented exit codes (README, mirrorctl(1)). Scripts rely on these numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// verify found differences that were not repaired.
    Differences = 1,
    /// Usage error or invalid input; nothing was changed.
    Usage = 2,
    /// The command did its work, but the mirror is degraded (a secondary failed or is out
    /// of sync).
    Degraded = 3,
    /// I/O error on the primary, or its metadata is unreadable.
    Primary = 4,
    /// Another mirrorctl holds the lock.
    Busy = 5,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
    /// The exit of a documented code (from a serving process); unknown ones are busy.
    pub fn from_code(c: i32) -> Exit {
        match c {
            0 => Exit::Success,
            1 => Exit::Differences,
            2 => Exit::Usage,
            3 => Exit::Degraded,
            4 => Exit::Primary,
            _ => Exit::Busy,
        }
    }
    /// The error kind a failing code stands for.
    pub fn kind(self) -> Kind {
        match self {
            Exit::Differences => Kind::Differences,
            Exit::Usage => Kind::Invalid,
            Exit::Degraded => Kind::Degraded,
            Exit::Primary => Kind::Primary,
            Exit::Success | Exit::Busy => Kind::Busy,
        }
    }
    /// The more severe of two outcomes.
    pub fn worst(self, other: Exit) -> Exit {
        fn rank(e: Exit) -> u8 {
            match e {
                Exit::Success => 0,
                Exit::Degraded => 1,
                Exit::Differences => 2,
                Exit::Busy => 3,
                Exit::Usage => 4,
                Exit::Primary => 5,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Kind> for Exit {
    fn from(k: Kind) -> Exit {
        match k {
            Kind::Invalid => Exit::Usage,
            Kind::Degraded => Exit::Degraded,
            Kind::Primary => Exit::Primary,
            Kind::Busy => Exit::Busy,
            Kind::Differences => Exit::Differences,
        }
    }
}

/// The exit code of a failure.
pub fn of(e: &Error) -> Exit {
    Exit::from(e.kind)
}

/// The one JSON document a `--json` command prints when it fails: `error`,
/// `exit_code`, and what was done.
pub fn json(e: &Error) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("error".into(), crate::error::plain(&e.msg).into());
    m.insert("exit_code".into(), of(e).code().into());
    for (k, v) in &e.details {
        m.insert((*k).into(), v.clone());
    }
    serde_json::Value::Object(m)
}

/// How the command line spells the engine's options in messages.
impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Opt::Force => "--force",
            Opt::Compare => "--compare",
            Opt::AssumeClean => "--assume-clean",
            Opt::DiscardSecondaryChanges => "--discard-secondary-changes",
            Opt::MaxSecondaries => "--max-secondaries",
            Opt::Timeout => "--timeout",
        })
    }
}
