//! Errors: what failed, of which kind, and what was done before; no exit codes (the CLI
//! maps kinds to them, `cli::exit`).

use std::fmt;

/// What kind of failure an error is, as the code that failed sees it. The front end (the
/// CLI: `cli::exit`) decides what each kind means to its caller (an exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Invalid input, or a refusal: nothing was changed (with the exceptions the message
    /// names, e.g. a write input that ran out).
    Invalid,
    /// The work was done, but a secondary failed or is out of sync.
    Degraded,
    /// An I/O error on the primary, or its metadata is unreadable.
    Primary,
    /// Another process holds the mirror's lock.
    Busy,
    /// verify found differences it did not repair.
    Differences,
}

/// An option of an operation (`force`, `compare`, ...), as the engine names it in a message:
/// the spelling is the front end's (`cli::exit` writes `--force`), so the engine names no
/// command-line flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    Force,
    Compare,
    AssumeClean,
    DiscardSecondaryChanges,
    MaxSecondaries,
    Timeout,
}

/// The options by name, for messages (`format!("use {FORCE} to overwrite it")`).
pub mod opt {
    use super::Opt;
    pub const FORCE: Opt = Opt::Force;
    pub const COMPARE: Opt = Opt::Compare;
    pub const ASSUME_CLEAN: Opt = Opt::AssumeClean;
    pub const DISCARD_SECONDARY_CHANGES: Opt = Opt::DiscardSecondaryChanges;
    pub const MAX_SECONDARIES: Opt = Opt::MaxSecondaries;
    pub const TIMEOUT: Opt = Opt::Timeout;
}

/// A failure of a given [`Kind`]. The message reads
/// `<what failed>: <cause>` and names the leg, path and offset involved.
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
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
    pub fn new(kind: Kind, msg: impl Into<String>) -> Self {
        Error {
            kind,
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

    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, msg)
    }
    pub fn primary(msg: impl Into<String>) -> Self {
        Self::new(Kind::Primary, msg)
    }
    pub fn busy(msg: impl Into<String>) -> Self {
        Self::new(Kind::Busy, msg)
    }
    pub fn degraded(msg: impl Into<String>) -> Self {
        Self::new(Kind::Degraded, msg)
    }
    pub fn differences(msg: impl Into<String>) -> Self {
        Self::new(Kind::Differences, msg)
    }
    /// An I/O error on the primary, with context.
    pub fn primary_io(what: impl fmt::Display, e: &std::io::Error) -> Self {
        Self::primary(format!("{what}: {}", describe_io(e)))
    }
    /// Writing our output failed; a closed pipe is quiet.
    pub fn output(e: std::io::Error) -> Self {
        let mut err = Self::invalid(format!("writing output: {e}"));
        err.broken_pipe = e.kind() == std::io::ErrorKind::BrokenPipe;
        err
    }
}

/// An io::Error as a short phrase ("No space left on device").
pub fn describe_io(e: &std::io::Error) -> String {
    plain(&e.to_string())
}

/// `text` without the " (os error N)" that the standard library adds to a system error's
/// own words ("No space left on device (os error 28)"): noise where the text says it.
pub fn plain(text: &str) -> String {
    escape_controls(&strip_os_error(text))
}

/// Control characters (newlines, escape sequences, NUL ...) written as `\xNN` (a tab as a
/// space): text a client controls (an export name, a certificate's name) can then never
/// forge a line of its own in a log, the journal or an alert hook's input.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(' '),
            c if c.is_control() => {
                let mut b = [0u8; 4];
                for x in c.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("\\x{x:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn strip_os_error(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" (os error ") {
        let tail = &rest[i + " (os error ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            out.push_str(&rest[..i]);
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..i + 1]);
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    #[test]
    fn the_os_error_number_is_dropped_and_nothing_else() {
        assert_eq!(
            super::plain(
                "write at 4096: No space left on device (os error 28); again (os error 5)"
            ),
            "write at 4096: No space left on device; again"
        );
        assert_eq!(
            super::plain("keep (os error x) and (other)"),
            "keep (os error x) and (other)"
        );
    }

    #[test]
    fn control_characters_a_client_sends_cannot_forge_a_line() {
        assert_eq!(
            super::plain("client export 'x\nmirrorctl serve: stopped\x1b[2J'"),
            "client export 'x\\x0amirrorctl serve: stopped\\x1b[2J'"
        );
        assert_eq!(super::plain("a\tb é"), "a b é");
        assert_eq!(super::plain("\u{85}"), "\\xc2\\x85");
    }
}
