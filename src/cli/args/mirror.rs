//! The arguments of the commands about a whole mirror: create, status, events, name,
//! generate, and the completions' helpers.

use crate::cli::values::{
    parse_region_size, Examples, DURATION_EXAMPLES, REGION_EXAMPLES, SIZE_EXAMPLES,
};
use crate::units::{parse_duration, parse_size};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Image file or block device to become the primary. A missing file is created sparse.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub image: PathBuf,
    /// Size of the data area (e.g. 10G, 1.5G: a decimal number when it comes to whole
    /// bytes). Required for a new file; by default an existing file or device is used whole.
    #[arg(long, value_name = "SIZE", value_parser = Examples::new(parse_size, SIZE_EXAMPLES), hide_possible_values = true)]
    pub size: Option<u64>,
    /// Bytes tracked by one bitmap bit: a power of two from 4K to 64M.
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = Examples::new(parse_region_size, REGION_EXAMPLES), hide_possible_values = true)]
    pub region_size: u64,
    /// Number of secondary slots (1 to 32).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_secondaries: u32,
    /// Overwrite an existing mirrorctl header, a filesystem or other signature (named in the
    /// refusal and again in a note when forced), or other data in the metadata area, and grow
    /// a regular file that is too small for --size.
    #[arg(short, long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(short, long)]
    pub json: bool,
    /// Name the new mirror NAME (writes /etc/mirrorctl/NAME.toml, or under
    /// $MIRRORCTL_CONFIG_DIR): other commands then take NAME for the primary. A name that
    /// is taken is refused (nothing is created), unless --force re-creates the mirror on
    /// the image that name points at.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The primary (or any image of a mirror), or a mirror's name (see `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath, required_unless_present = "all")]
    pub image: Option<PathBuf>,
    /// Every named mirror (the files in /etc/mirrorctl, see `mirrorctl name`): a block per
    /// mirror, a JSON array (each element the status document plus "name"), or the metrics
    /// of all of them with a `name` label. A name whose primary cannot be opened is
    /// reported, and counts as unhealthy for --check.
    #[arg(long, conflicts_with = "image")]
    pub all: bool,
    /// Print a JSON document with stable field names (see README); the same as --format json.
    #[arg(short, long, conflicts_with = "format")]
    pub json: bool,
    /// Exit 3 if the mirror is not fully in sync.
    #[arg(long)]
    pub check: bool,
    /// text (default), json, or prometheus: metrics in the Prometheus text format (for
    /// node_exporter's textfile collector: write them to a .prom file from a timer).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<StatusFormat>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
    Prometheus,
}

#[derive(Args, Debug)]
pub struct CompleteLegsArgs {
    /// The mirror's primary image.
    pub primary: PathBuf,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// One JSON document per line per event, with stable field names (see README).
    #[arg(short, long)]
    pub json: bool,
    /// Only events with a sequence number above SEQ (status --json shows the newest as
    /// last_event_seq).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Keep running and print each new event as it is recorded (polls four times a second).
    /// Follows the mirror, not the path: when the image stops being the primary (a
    /// promotion, planned or not) it looks for the mirror's primary among the images it
    /// knows (the primary's legs, the image given, what a demoted image names), twice a
    /// second until found, says so on stderr and as a `following` event (seq null), and
    /// reads the new primary's journal from then on, each event once.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: run COMMAND with /bin/sh -c once per new event, in order, with
    /// MIRRORCTL_EVENT, MIRRORCTL_SEQ, MIRRORCTL_TIME, MIRRORCTL_TIME_UNIX, MIRRORCTL_SLOT,
    /// MIRRORCTL_LEG (the leg's short form), MIRRORCTL_DETAIL, MIRRORCTL_PRIMARY (the primary
    /// the event was read from) and MIRRORCTL_MIRROR set. Without --since (or a
    /// --state-file that exists) it runs for events recorded from now on only. A command that fails is logged;
    /// one that runs longer than --exec-timeout is killed; neither stops the following.
    #[arg(long, value_name = "COMMAND", requires = "follow")]
    pub exec: Option<String>,
    /// How long an --exec command may run before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = Examples::new(parse_duration, DURATION_EXAMPLES), hide_possible_values = true, requires = "exec")]
    pub exec_timeout: Duration,
    /// Record the last delivered event in FILE (JSON, written to a temporary file, synced
    /// and renamed over it after each event: after its --exec program ran, or once printed)
    /// and, when FILE exists, resume after that event: a restarted follower delivers each
    /// event it missed once (at least once if killed between running the program and
    /// recording it). It names the mirror and the primary last followed, so it resumes
    /// correctly after a promotion; a state file of another mirror, or a damaged one, is
    /// refused (exit 2). Without FILE yet, it starts from the newest event unless --since
    /// is given (--since only counts when FILE does not exist).
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub state_file: Option<PathBuf>,
}

pub(crate) const NAME_ABOUT: &str = "Name a mirror, forget a name, or list the names.

A named mirror has a file NAME.toml in /etc/mirrorctl (or in $MIRRORCTL_CONFIG_DIR), \
mode 0644, holding its name, its mirror UUID and where its primary is, and optional tables \
[serve] and [verify] of defaults for `mirrorctl serve NAME` and `mirrorctl verify NAME` \
(the long flags, with - written _; a flag on the command line overrides the file). [serve] \
takes socket, listen, export, read_only, hot_extents, tls_cert, tls_key, tls_ca, tls_allow (a \
list), tls, handshake_limit, write_timeout, max_connections and insecure (paths absolute, \
durations as \"30s\"); [verify] takes repair and max_time. An unknown key, bad TOML or a bad \
value is refused, naming the file, the line and the key. Every \
command that takes a PRIMARY or IMAGE also takes a NAME: an argument with a / is a path; \
otherwise it is a name if NAME.toml exists, else a path; a name that is also a file in the \
current directory is refused as ambiguous (write ./NAME for the file). A command by name \
checks that the image there holds the mirror the file records, and is still its primary.

`mirrorctl name PRIMARY NAME` records NAME for the mirror whose primary is PRIMARY (a \
secondary is refused, naming its primary); a block device is recorded by its /dev/disk \
name. A NAME already given to another mirror is refused unless --force; a mirror has one \
name. Giving the mirror's own name again points it at PRIMARY (after a promotion done \
elsewhere), keeping the rest of the file. `promote` points the name at the new primary \
itself. `mirrorctl name --remove NAME` forgets a name; the mirror is left as it is. \
`mirrorctl name` lists the names. `mirrorctl status --all` shows every named mirror.";

#[derive(Args, Debug)]
pub struct NameArgs {
    /// The mirror's primary image (file or block device).
    #[arg(value_hint = clap::ValueHint::FilePath, requires = "name", conflicts_with = "remove")]
    pub primary: Option<PathBuf>,
    /// The name: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit.
    #[arg(conflicts_with = "remove")]
    pub name: Option<String>,
    /// Forget the name NAME (its file is removed; the mirror is left as it is).
    #[arg(long, value_name = "NAME")]
    pub remove: Option<String>,
    /// Give NAME to this mirror even though it names another mirror (whose name it was).
    #[arg(short, long)]
    pub force: bool,
    /// List the names as a JSON array (name, mirror, primary, config).
    #[arg(short, long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GenerateWhat {
    All,
    Man,
    Completions,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Directory holding man/ and completions/ (the repository root).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    pub what: GenerateWhat,
}
