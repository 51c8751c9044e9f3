//! Option values checked once by clap (sizes, rates, durations, flush policies, limits),
//! with examples for completion, and a refused command line reported in one line.

use crate::cli::exit;
use crate::engine::FlushPolicy;
use crate::lock::Wait;
use crate::units::{parse_duration, parse_size};
use std::time::Duration;

/// Reports a command line clap refused and returns the exit status. Help and version go
/// to stdout as clap writes them (exit 0). Everything else is one line in the
/// `mirrorctl: ...` form, with at most one hint line: a bad option value reads
/// `mirrorctl: --FLAG: why` (sizes, rates, durations and policies are checked once by the
/// value parsers below), any other mistake gives the usage line. A command given `--json`
/// also prints its JSON error document.
pub fn parse_failure(e: clap::Error) -> i32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(a)) => a.split([' ', '[', '=']).next().map(str::to_string),
        _ => None,
    };
    let why = std::error::Error::source(&e).map(|c| c.to_string());
    let (msg, hint) = match (e.kind(), flag, why) {
        (ErrorKind::ValueValidation, Some(flag), Some(why)) => (format!("{flag}: {why}"), None),
        _ => one_line(&e.render().to_string()),
    };
    let err = crate::error::Error::invalid(msg);
    let text = match hint {
        Some(h) => format!("mirrorctl: {err}\n  {h}"),
        None => format!("mirrorctl: {err}"),
    };
    crate::systemd::eprint_at(crate::systemd::Priority::Error, &text);
    if std::env::args().any(|a| a == "--json") {
        println!("{:#}", exit::json(&err));
    }
    2
}

/// clap's multi-line error text as one line (the message, with any indented list folded
/// in) and a usage hint.
pub(crate) fn one_line(text: &str) -> (String, Option<String>) {
    let mut lines = text.lines();
    let mut msg = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .trim_end_matches(':')
        .to_string();
    let mut items = Vec::new();
    let mut usage = None;
    let mut tip = None;
    for l in lines {
        if let Some(t) = l.trim_start().strip_prefix("tip: ") {
            // clap's suggestion for a mistyped subcommand or flag ("a similar subcommand
            // exists: 'status'"): the hint then, more use than the usage. (Its other tips,
            // such as passing `--x` as a value after `--`, are no help here.)
            if t.contains("similar") {
                tip.get_or_insert_with(|| format!("tip: {}", t.trim()));
            }
        } else if let Some(u) = l.strip_prefix("Usage: ") {
            usage = Some(u.trim().to_string());
        } else if l.starts_with("  ") && !l.trim_start().starts_with("tip:") && usage.is_none() {
            items.push(l.trim().to_string());
        }
    }
    if !items.is_empty() {
        msg = format!("{msg}: {}", items.join(", "));
    }
    let hint = usage.map(|u| {
        let cmd: Vec<&str> = u
            .split_whitespace()
            .take_while(|w| !w.starts_with(['<', '[', '-']))
            .collect();
        format!("usage: {u} (more: `{} --help`)", cmd.join(" "))
    });
    (msg, tip.or(hint))
}

/// `--wait[=DURATION]`: a duration, or "forever" (the flag without a value).
pub(crate) fn parse_wait(s: &str) -> Result<Wait, String> {
    crate::lock::parse_wait(Some(s))
}

/// `--timeout DURATION`, above zero.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// `--region-size SIZE`: a power of two from 4 KiB to 64 MiB.
pub(crate) fn parse_region_size(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    crate::format::layout::check_region_size(v)?;
    Ok(v)
}

/// A value parser that accepts what `parse` accepts and offers `examples` to the shell
/// completions (`--size <Tab>` offers 1G 10G ...; any other value still parses). The help
/// text does not list them as the only values (the args set `hide_possible_values`).
#[derive(Clone)]
pub struct Examples<T> {
    parse: fn(&str) -> Result<T, String>,
    examples: &'static [(&'static str, &'static str)],
}

impl<T> Examples<T> {
    pub const fn new(
        parse: fn(&str) -> Result<T, String>,
        examples: &'static [(&'static str, &'static str)],
    ) -> Self {
        Examples { parse, examples }
    }
}

/// Completion examples of a size (offsets, lengths, image sizes).
pub const SIZE_EXAMPLES: &[(&str, &str)] = &[
    ("512M", "512 MiB"),
    ("1G", "1 GiB"),
    ("10G", "10 GiB"),
    ("100G", "100 GiB"),
    ("1T", "1 TiB"),
    ("10GB", "10 x 1000^3 bytes (decimal)"),
];
/// Completion examples of a region size (a power of two from 4K to 64M).
pub const REGION_EXAMPLES: &[(&str, &str)] = &[
    ("4K", "finest tracking, biggest bitmaps"),
    ("64K", "the default"),
    ("1M", "smaller bitmaps for large images"),
    ("4M", "coarse"),
];
/// Completion examples of a rate.
pub const RATE_EXAMPLES: &[(&str, &str)] = &[
    ("10M/s", "10 MiB per second"),
    ("50M/s", "50 MiB per second"),
    ("100M/s", "100 MiB per second"),
    ("1G/s", "1 GiB per second"),
];
/// Completion examples of a duration.
pub const DURATION_EXAMPLES: &[(&str, &str)] = &[
    ("500ms", "half a second"),
    ("30s", "30 seconds"),
    ("10m", "10 minutes"),
    ("1h", "an hour"),
];
/// The forms of `--flush`.
pub const FLUSH_EXAMPLES: &[(&str, &str)] = &[
    ("end", "make legs durable at the end (default)"),
    ("always", "after every chunk"),
    ("every=", "every SIZE, e.g. every=256M"),
];

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Examples<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg
            .map(|a| a.to_string())
            .unwrap_or_else(|| "the value".into());
        let s = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidUtf8,
                format!("{name} is not UTF-8\n"),
            )
            .with_cmd(cmd)
        })?;
        (self.parse)(s).map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value '{s}' for '{name}': {e}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.examples
                .iter()
                .map(|&(v, h)| clap::builder::PossibleValue::new(v).help(h)),
        ))
    }
}

pub fn parse_flush(s: &str) -> Result<FlushPolicy, String> {
    match s {
        "end" => Ok(FlushPolicy::End),
        "always" => Ok(FlushPolicy::Always),
        _ => match s.strip_prefix("every=") {
            Some(v) => {
                let n = crate::units::parse_size(v)?;
                if n == 0 {
                    return Err("--flush every=SIZE needs a size above zero".into());
                }
                Ok(FlushPolicy::Every(n))
            }
            None => Err(format!(
                "invalid flush policy '{s}': use end, always or every=SIZE (e.g. every=64M)"
            )),
        },
    }
}

pub(crate) fn parse_max_connections(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a whole number of connections, at least 1 (e.g. 64)"
        )),
    }
}

pub(crate) fn parse_hot_extents(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of extents (e.g. 1237)"))?;
    if n < crate::engine::MIN_HOT_EXTENTS {
        return Err(format!(
            "{n} is too few: at least {} (one 32 MiB request touches up to 9 extents)",
            crate::engine::MIN_HOT_EXTENTS
        ));
    }
    Ok(n)
}
