//! The arguments of the commands that move data through the mirror: write and read.

use crate::cli::values::{
    parse_flush, parse_timeout, Examples, DURATION_EXAMPLES, FLUSH_EXAMPLES, SIZE_EXAMPLES,
};
use crate::engine::FlushPolicy;
use crate::units::parse_size;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct WriteArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Byte offset in the data area where writing starts.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = Examples::new(parse_size, SIZE_EXAMPLES), hide_possible_values = true)]
    pub offset: u64,
    /// Read from FILE instead of stdin (`-` is stdin).
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Write exactly this many bytes: a shorter input is exit 2 after writing (durably,
    /// mirrored) what came, and the message says how much.
    #[arg(long, value_name = "SIZE", value_parser = Examples::new(parse_size, SIZE_EXAMPLES), hide_possible_values = true)]
    pub length: Option<u64>,
    /// When legs are made durable: end, always, or every=SIZE. Exit 0 always means every
    /// byte is durable on every in-sync leg.
    #[arg(long, value_name = "POLICY", default_value = "end", value_parser = Examples::new(parse_flush, FLUSH_EXAMPLES))]
    pub flush: FlushPolicy,
    /// Print the result as JSON: bytes written, legs written, legs newly fractured.
    #[arg(short, long)]
    pub json: bool,
    /// Refuse to write (exit 3) unless at least N secondaries are in sync: checked before
    /// anything is written, and the write stops at the first leg lost below N, reporting as
    /// written only the bytes synced while N were in sync (see --flush). 0: no minimum.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_in_sync: u32,
    /// Run COMMAND (/bin/sh -c) for each secondary this write loses (fractured on an
    /// error), once its fracture is on disk and before the write goes on; if it fails or
    /// runs past --fence-timeout, the write stops as with --min-in-sync (exit 3). The
    /// environment is serve's (see `mirrorctl serve --help`).
    #[arg(long, value_name = "COMMAND")]
    pub fence_peer: Option<String>,
    /// The longest --fence-peer may run; then it is killed and counts as failed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = Examples::new(parse_timeout, DURATION_EXAMPLES), hide_possible_values = true)]
    pub fence_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Byte offset in the data area where reading starts.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = Examples::new(parse_size, SIZE_EXAMPLES), hide_possible_values = true)]
    pub offset: u64,
    /// Bytes to read (default: to the end of the data area).
    #[arg(long, value_name = "SIZE", value_parser = Examples::new(parse_size, SIZE_EXAMPLES), hide_possible_values = true)]
    pub length: Option<u64>,
    /// Write to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}
