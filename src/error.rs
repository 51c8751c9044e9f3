//! Errors and the documented exit codes they map to.

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

/// A failure with the exit code it maps to. The message reads
/// `<what failed>: <cause>` and names the leg, path and offset involved.
#[derive(Debug)]
pub struct Error {
    pub exit: Exit,
    pub msg: String,
    /// Writing to stdout hit a closed pipe: exit quietly.
    pub broken_pipe: bool,
    /// What was done before the failure, for the `--json` error document (e.g.
    /// `bytes_written`).
    pub details: Vec<(&'static str, serde_json::Value)>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn new(exit: Exit, msg: impl Into<String>) -> Self {
        Error {
            exit,
            msg: msg.into(),
            broken_pipe: false,
            details: Vec::new(),
        }
    }
    /// Adds a field to the `--json` error document.
    pub fn with(mut self, key: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.details.push((key, value.into()));
        self
    }

    /// The one JSON document a `--json` command prints when it fails: `error`,
    /// `exit_code`, and what was done.
    pub fn json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("error".into(), self.msg.clone().into());
        m.insert("exit_code".into(), self.exit.code().into());
        for (k, v) in &self.details {
            m.insert((*k).into(), v.clone());
        }
        serde_json::Value::Object(m)
    }

    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(Exit::Usage, msg)
    }
    pub fn primary(msg: impl Into<String>) -> Self {
        Self::new(Exit::Primary, msg)
    }
    pub fn busy(msg: impl Into<String>) -> Self {
        Self::new(Exit::Busy, msg)
    }
    pub fn degraded(msg: impl Into<String>) -> Self {
        Self::new(Exit::Degraded, msg)
    }
    pub fn differences(msg: impl Into<String>) -> Self {
        Self::new(Exit::Differences, msg)
    }
    /// An I/O error on the primary, with context.
    pub fn primary_io(what: impl fmt::Display, e: &std::io::Error) -> Self {
        Self::primary(format!("{what}: {}", describe_io(e)))
    }
    /// Writing our output failed; a closed pipe is quiet.
    pub fn output(e: std::io::Error) -> Self {
        let mut err = Self::usage(format!("writing output: {e}"));
        err.broken_pipe = e.kind() == std::io::ErrorKind::BrokenPipe;
        err
    }
}

/// An io::Error as a short phrase ("No space left on device (os error 28)").
pub fn describe_io(e: &std::io::Error) -> String {
    e.to_string()
}

pub type Result<T> = std::result::Result<T, Error>;
