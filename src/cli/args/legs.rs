//! The arguments of the commands about a secondary: attach, fracture, resync, detach,
//! verify, promote.

use crate::cli::values::{Examples, DURATION_EXAMPLES, RATE_EXAMPLES};
use crate::units::{parse_duration, parse_rate};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Secondary image: a file (created sparse at the right size if missing), a block device,
    /// or an NBD export (nbd://HOST[:PORT][/EXPORT] or nbd+unix:///EXPORT?socket=PATH; with
    /// TLS, nbds://... or nbds+unix://...). It must hold the metadata and the data area:
    /// `status` shows the size as "image size" (image_size in JSON), data_offset +
    /// data_size. A block device is recorded by its /dev/disk/by-id name where one exists,
    /// so it is found after disks are renumbered.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub secondary: String,
    /// For an nbds:// secondary: the CA (PEM) that signed the server's certificate
    /// (default: the system's, /etc/ssl/certs/ca-certificates.crt). The server's
    /// certificate must also carry the URI's host name (for nbds+unix, localhost, or the
    /// URI's tls-hostname=NAME). Recorded with the leg as the URI's tls-ca=, with an
    /// absolute path.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub tls_ca: Option<PathBuf>,
    /// For an nbds:// secondary whose server asks for a client certificate: this end's
    /// certificate (PEM). Recorded as tls-cert=.
    #[arg(long, value_name = "FILE", requires = "tls_key", value_hint = clap::ValueHint::FilePath)]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM, unencrypted; refused if others may read it). Recorded as
    /// tls-key=.
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_hint = clap::ValueHint::FilePath)]
    pub tls_key: Option<PathBuf>,
    /// Do not copy now: leave the regions for `mirrorctl resync`.
    #[arg(long, conflicts_with = "assume_clean")]
    pub no_sync: bool,
    /// Declare the secondary identical to the primary already: copy nothing.
    #[arg(long)]
    pub assume_clean: bool,
    /// Overwrite a secondary that holds data: a filesystem, LVM, LUKS, md, ZFS or partition
    /// table signature (named in the refusal), any data in its first or last MiB, any
    /// allocated extent of a file, another mirror's header or an unreadable one.
    #[arg(short, long)]
    pub force: bool,
    /// Limit the initial sync to this many bytes per second (e.g. 100M/s).
    #[arg(long, value_name = "SIZE/s", value_parser = Examples::new(parse_rate, RATE_EXAMPLES), hide_possible_values = true)]
    pub rate: Option<u64>,
    /// Initial sync reads the secondary too and writes only the 64 KiB blocks that differ:
    /// for a secondary that already holds most of the data (a shipped copy, an old replica).
    /// Its data area is kept, so data there needs no --force; a re-attached image is compared
    /// in full.
    #[arg(long, conflicts_with_all = ["no_sync", "assume_clean"])]
    pub compare: bool,
    /// Split brain: SECONDARY and PRIMARY were both changed after they diverged. Keep
    /// PRIMARY's data and overwrite SECONDARY's changes (only the regions either side changed
    /// are copied).
    #[arg(long)]
    pub discard_secondary_changes: bool,
    /// Print the result as JSON (see README, JSON output).
    #[arg(short, long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// The secondary to turn into the primary of its mirror: a path, or an NBD URI (the
    /// export then holds the new primary; use it by path on its own machine).
    pub secondary: PathBuf,
    /// Promote even if the secondary was fractured or out of sync at its last known state
    /// (its missing writes are lost).
    #[arg(short, long)]
    pub force: bool,
    /// Print the result as JSON: the new generation, the former primary's slot, notes.
    #[arg(short, long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FractureArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Secondary path (or NBD URI) as given at attach, or its slot number.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub secondary: String,
    /// Why (recorded and shown by status).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct ResyncArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Secondaries (paths, NBD URIs or slot numbers); default: every leg with something to
    /// copy.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub secondaries: Vec<String>,
    /// Limit copying to this many bytes per second (e.g. 50M/s).
    #[arg(long, value_name = "SIZE/s", value_parser = Examples::new(parse_rate, RATE_EXAMPLES), hide_possible_values = true)]
    pub rate: Option<u64>,
    /// Print the regions and bytes that would be copied; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Read each secondary too and write only the 64 KiB blocks that differ from the
    /// primary: for logs much larger than what really differs (after an unplanned promote,
    /// or re-attaching with --force an image known to be nearly equal). Reads both sides.
    #[arg(long)]
    pub compare: bool,
    /// Print the result as JSON: regions and bytes copied and remaining, per leg.
    #[arg(short, long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Secondary path (or NBD URI) as given at attach, or its slot number.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub secondary: String,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`): then the [verify] table of its file gives the options not on the
    /// command line.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Secondaries to compare (paths, NBD URIs or slot numbers); default: every attached leg
    /// (fractured legs are reported, not compared).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub secondaries: Vec<String>,
    /// Copy mismatched regions from the primary in the same run. Without it they are recorded
    /// in the leg's fracture log (the mirror is degraded until `resync` copies them).
    #[arg(long)]
    pub repair: bool,
    /// Stop after DURATION (e.g. 10m) and save a cursor; the next run with --max-time
    /// continues there, so repeated cron runs cover the whole image.
    #[arg(long, value_name = "DURATION", value_parser = Examples::new(parse_duration, DURATION_EXAMPLES), hide_possible_values = true)]
    pub max_time: Option<Duration>,
    /// Start from the beginning instead of the saved cursor.
    #[arg(long)]
    pub restart: bool,
    /// Print a JSON document with every mismatched range.
    #[arg(short, long)]
    pub json: bool,
}
