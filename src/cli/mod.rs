//! Command-line definitions (clap). The man pages and shell completions are generated from
//! these by the hidden `generate` subcommand.

pub mod commands;
pub mod doc;
pub mod exit;
pub mod output;

use crate::engine::FlushPolicy;
use crate::lock::Wait;
use crate::units::{parse_duration, parse_rate, parse_size};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// The exit statuses, each with its meaning (README, mirrorctl(1)).
pub const EXIT_STATUSES: [(u8, &str); 6] = [
    (0, "success"),
    (1, "verify found differences (not repaired)"),
    (2, "usage error or invalid input (nothing was changed)"),
    (
        3,
        "done, but the mirror is degraded (a secondary failed or is out of sync)",
    ),
    (4, "I/O error on the primary, or unreadable metadata"),
    (5, "busy: another mirrorctl holds the mirror's lock"),
];

/// What `--help` prints after the options: EXAMPLES (each laid out by [`example_lines`]),
/// then EXIT STATUS.
pub fn after(subcommand: &str) -> String {
    after_with(subcommand, example_lines)
}

/// The same for the man page, whose renderer makes a tagged paragraph of each
/// `  COMMAND  WHAT` line (roff fills and indents it at any width).
pub fn after_for_man(subcommand: &str) -> String {
    after_with(subcommand, |cmd, what| format!("  {cmd}  {what}\n"))
}

fn after_with(subcommand: &str, example: impl Fn(&str, &str) -> String) -> String {
    let ex = examples(subcommand);
    let mut s = String::new();
    if !ex.is_empty() {
        s.push_str("EXAMPLES:\n");
        for (cmd, what) in ex {
            s.push_str(&example(cmd, what));
        }
        s.push('\n');
    }
    if subcommand == "ocf-agent" {
        s.push_str(OCF_EXIT_STATUS);
    } else {
        s.push_str(&exit_status(exit_codes(subcommand)));
    }
    s
}

/// The agent's exit statuses: OCF return codes (ClusterLabs OCF-spec), not mirrorctl's.
const OCF_EXIT_STATUS: &str = "EXIT STATUS (OCF return codes):
  0  success (monitor: running unpromoted)
  1  generic error
  2  a parameter has a bad value
  3  unknown action
  5  not installed: the image or a TLS file is missing on this node
  6  not configured: a required parameter is missing
  7  not running
  8  running promoted
  9  promoted, but serve is gone (failed promoted)";

/// Width of an example's lines: short enough that `--help` on an 80-column terminal never
/// wraps them (clap would wrap a longer line back to column 0).
const EXAMPLE_WIDTH: usize = 76;

/// One example as `--help` shows it: the command, broken at spaces with shell
/// continuations (` \\`) into lines of at most [`EXAMPLE_WIDTH`] (each continuation
/// indented, so it can still be pasted), then what it does, indented further under it.
fn example_lines(cmd: &str, what: &str) -> String {
    let (first, rest, doc) = ("  ", "    ", "      ");
    let mut out = String::new();
    let mut line = String::from(first);
    for word in cmd.split(' ') {
        let start = line.trim().is_empty();
        if !start && line.len() + 1 + word.len() + 2 > EXAMPLE_WIDTH {
            out.push_str(&line);
            out.push_str(" \\\n");
            line = String::from(rest);
        } else if !start {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out.push_str(&format!("{doc}{what}\n"));
    out
}

/// The common cases an admin types, per subcommand: (command line, what it does).
pub fn examples(subcommand: &str) -> &'static [(&'static str, &'static str)] {
    match subcommand {
        "mirrorctl" => &[
            (
                "mirrorctl create /srv/vm.img --size 20G",
                "a mirror with a 20 GiB data area",
            ),
            (
                "mirrorctl attach /srv/vm.img /mnt/disk2/vm.img",
                "add a secondary and copy to it",
            ),
            (
                "mirrorctl status /srv/vm.img",
                "legs, what is out of sync, what runs",
            ),
            (
                "mirrorctl serve /srv/vm.img",
                "hosts use the mirror as a disk over NBD",
            ),
        ],
        "create" => &[
            (
                "mirrorctl create /srv/vm.img --size 20G",
                "a new sparse image file: 20 GiB of data plus the metadata",
            ),
            (
                "mirrorctl create /dev/sdb",
                "a block device: the data area fills the rest of it",
            ),
            (
                "mirrorctl create /srv/vm.img --size 1T --region-size 1M --max-secondaries 2",
                "larger regions, smaller bitmaps",
            ),
        ],
        "status" => &[
            ("mirrorctl status /srv/vm.img", "for people"),
            (
                "mirrorctl status /srv/vm.img --check",
                "exit 3 unless fully in sync (cron, monitoring)",
            ),
            (
                "mirrorctl status /srv/vm.img --json | jq .legs",
                "for scripts",
            ),
            (
                "mirrorctl status /srv/vm.img --format prometheus > /var/lib/node_exporter/vm.prom",
                "metrics",
            ),
        ],
        "events" => &[
            ("mirrorctl events /srv/vm.img", "the journal, oldest first"),
            (
                "mirrorctl events /srv/vm.img --json --since 41",
                "events after number 41, one JSON document each",
            ),
            (
                "mirrorctl events /srv/vm.img --follow --exec /usr/local/lib/mirrorctl/alert",
                "run a program on every new event (the shipped alert script)",
            ),
        ],
        "attach" => &[
            (
                "mirrorctl attach /srv/vm.img nbds://backup.example:10809/vm --tls-ca ca.pem --tls-cert me.pem --tls-key me.key",
                "an NBD export over TLS, the server's certificate checked",
            ),
            (
                "mirrorctl attach /srv/vm.img /mnt/disk2/vm.img",
                "a file secondary, created sparse, copied now",
            ),
            (
                "mirrorctl attach /srv/vm.img /dev/sdc --rate 100M/s",
                "a disk, the initial copy rate-limited",
            ),
            (
                "mirrorctl attach /srv/vm.img nbd://backup:10809/vm",
                "a secondary on another machine (NBD)",
            ),
            (
                "mirrorctl attach /srv/vm.img /mnt/old-copy.img --compare",
                "an old copy: only what differs is written",
            ),
        ],
        "write" => &[
            (
                "tar c /etc | mirrorctl write /srv/vm.img",
                "pipe mode: durable on every leg at exit 0",
            ),
            (
                "mirrorctl write /srv/vm.img -i disk.raw --offset 1G",
                "a file at an offset of the data area",
            ),
            (
                "mirrorctl write /srv/vm.img -i disk.raw --flush every=256M",
                "with durable points along the way",
            ),
        ],
        "read" => &[
            (
                "mirrorctl read /srv/vm.img --offset 1G --length 4K | xxd",
                "a block of the data area",
            ),
            (
                "mirrorctl read /srv/vm.img -o backup.raw",
                "the whole data area to a file",
            ),
        ],
        "fracture" => &[
            (
                "mirrorctl fracture /srv/vm.img /mnt/disk2/vm.img --reason 'backup window'",
                "stop writing it; changes are tracked",
            ),
            ("mirrorctl fracture /srv/vm.img 1", "by slot number"),
        ],
        "resync" => &[
            (
                "mirrorctl resync /srv/vm.img",
                "every leg with something to copy",
            ),
            (
                "mirrorctl resync /srv/vm.img -n",
                "what would be copied, nothing written",
            ),
            (
                "mirrorctl resync /srv/vm.img 1 --rate 200M/s",
                "one leg, rate-limited",
            ),
            (
                "mirrorctl resync /srv/vm.img --compare",
                "read both sides, write only what differs",
            ),
        ],
        "detach" => &[
            (
                "mirrorctl detach /srv/vm.img /mnt/disk2/vm.img",
                "free the slot; the image keeps its data",
            ),
            ("mirrorctl detach /srv/vm.img 1", "by slot number"),
        ],
        "promote" => &[
            (
                "mirrorctl promote /mnt/disk2/vm.img",
                "failover: the in-sync secondary becomes the primary",
            ),
            (
                "mirrorctl promote /mnt/disk2/vm.img --force",
                "even if it may lack the newest writes",
            ),
        ],
        "verify" => &[
            (
                "mirrorctl verify /srv/vm.img",
                "compare every leg, byte for byte",
            ),
            (
                "mirrorctl verify /srv/vm.img --max-time 2h --repair",
                "a nightly scrub in steps, repairing what differs",
            ),
            (
                "mirrorctl verify /srv/vm.img /mnt/disk2/vm.img --json",
                "one leg, for scripts",
            ),
        ],
        "serve" => &[
            (
                "mirrorctl serve /srv/vm.img --socket /run/vm.sock",
                "then: qemu -drive file=nbd+unix:///?socket=/run/vm.sock,format=raw",
            ),
            (
                "mirrorctl serve /srv/vm.img --listen 127.0.0.1:10809",
                "over TCP (loopback)",
            ),
            (
                "mirrorctl serve /srv/vm.img --listen 0.0.0.0:10809 --tls-cert server.pem --tls-key server.key --tls-ca ca.pem",
                "over the network: TLS, clients with a certificate from ca.pem only",
            ),
            (
                "mirrorctl serve /srv/vm.img --read-only",
                "hosts read; nothing is written",
            ),
            (
                "mirrorctl serve /srv/vm.img --min-in-sync 1",
                "writes acknowledged only while a secondary is in sync",
            ),
        ],
        "export" => &[
            (
                "mirrorctl export /srv/vm.img --listen 192.0.2.2:10810 --export vm --tls-cert b.pem --tls-key b.key --tls-ca ca.pem",
                "on machine B: its secondary, for a primary with a certificate from ca.pem",
            ),
            (
                "mirrorctl attach /srv/vm.img 'nbds://192.0.2.2:10810/vm?tls-certificates=/etc/mirrorctl/tls'",
                "then on machine A: the export becomes a leg of A's mirror",
            ),
            (
                "mirrorctl export /srv/vm.img --listen 192.0.2.1:10810 --export vm --tls-cert a.pem --tls-key a.key --tls-ca ca.pem --rejoin",
                "a former primary, offered to the new primary's `attach` (it is taken back as a secondary)",
            ),
        ],
        "set" => &[
            (
                "mirrorctl set /srv/vm.img --min-in-sync 0",
                "the running serve acknowledges writes with no secondary in sync",
            ),
            (
                "mirrorctl set /srv/vm.img --min-in-sync 2",
                "from now on, only with two secondaries in sync",
            ),
        ],
        "ocf-agent" => &[
            (
                "mirrorctl ocf-agent meta-data",
                "the agent's parameters and actions (OCF 1.0 XML)",
            ),
            (
                "OCF_RESOURCE_INSTANCE=vm OCF_RESKEY_image=/srv/vm.img OCF_RESKEY_nodes='alpha=10.0.0.1 beta=10.0.0.2' OCF_RESKEY_insecure=true mirrorctl ocf-agent validate-all",
                "check parameters by hand (exit 0, or 2, 5, 6 with the reason)",
            ),
            (
                "mirrorctl ocf-agent monitor",
                "what Pacemaker runs, OCF_RESKEY_* set: 0, 7, 8 or 9",
            ),
        ],
        "name" => &[
            (
                "mirrorctl name /srv/vm.img vm",
                "name the mirror whose primary is /srv/vm.img: `mirrorctl status vm` ...",
            ),
            ("mirrorctl name", "every name, its mirror and its primary"),
            (
                "mirrorctl name --remove vm",
                "forget the name (the mirror is left as it is)",
            ),
            (
                "mirrorctl status --all --check",
                "every named mirror; exit 3 if any is not healthy",
            ),
        ],
        _ => &[],
    }
}

/// The EXIT STATUS section listing `codes` (a command lists only those it can return).
pub fn exit_status(codes: &[u8]) -> String {
    let mut s = String::from("EXIT STATUS:");
    for (c, what) in EXIT_STATUSES {
        if codes.contains(&c) {
            s.push_str(&format!("\n  {c}  {what}"));
        }
    }
    s
}

/// The exit statuses each subcommand can return.
pub fn exit_codes(subcommand: &str) -> &'static [u8] {
    match subcommand {
        "create" | "fracture" | "detach" | "serve" | "set" | "export" => &[0, 2, 4, 5],
        // status takes no lock: never busy.
        "status" => &[0, 2, 3, 4],
        // events takes no lock either, and changes nothing.
        "events" => &[0, 2, 4],
        "attach" | "write" | "read" | "resync" | "promote" => &[0, 2, 3, 4, 5],
        "name" => &[0, 2, 4],
        _ => &[0, 1, 2, 3, 4, 5],
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "mirrorctl",
    version,
    about = "Synchronously mirror a disk image to secondaries, with fracture and write-intent logs",
    long_about = "mirrorctl keeps a primary disk image (an image file or a raw block device) \
synchronously mirrored to one or more secondary images. Every write is durable on the primary \
and on every in-sync secondary before a command reports success. When a secondary fails or is \
fractured on purpose, the regions that change are tracked in its fracture log, so that resync \
copies only those. A write-intent log bounds what a crash can leave different.",
    after_help = after("mirrorctl"),
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g.
    /// 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A
    /// mirror that `serve` holds is not waited for: the commands it carries out are handed
    /// to it at once, the others exit 5.
    #[arg(long, global = true, value_name = "DURATION", num_args = 0..=1,
          default_missing_value = "forever", require_equals = true, value_parser = parse_wait)]
    pub wait: Option<Wait>,

    /// Never draw progress bars (they are drawn only when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// How long to wait for an NBD server (connect, handshake, each request) before the
    /// secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s.
    #[arg(long, global = true, value_name = "DURATION", value_parser = Examples::new(parse_timeout, DURATION_EXAMPLES), hide_possible_values = true)]
    pub timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a mirror: write a primary header onto an image file or block device.
    #[command(after_help = after("create"))]
    Create(CreateArgs),
    /// Show the mirror's geometry, legs, out-of-sync regions and pending write intents.
    #[command(
        long_about = "Show the mirror's geometry, legs, out-of-sync regions and pending write \
intents, and what is running on it now. Status takes no lock and never waits: while a resync, \
verify, attach or write runs it shows the command, its pid and its progress (percent, bytes, \
rate, ETA) as the running process last published them (every half second); while serve runs, \
its clients, hot set and request rates. Write intents held by a running writer count neither \
as out of sync nor against health, so `status --check` passes on a healthy mirror in use.",
        after_help = after("status")
    )]
    Status(StatusArgs),
    /// Show the mirror's event journal: fractures, resyncs, verifies, recoveries, attach,
    /// detach, promotion, serve; follow it and run a program on each new event.
    #[command(
        long_about = "Show the mirror's event journal: every fracture (by admin, with the \
reason, or by error, with the error), resync started, finished or failed, verify finished \
(result, mismatched regions), recovery after an unclean stop, attach, detach, promotion, split \
brain refused, serve started or stopped and client connected, with a sequence number, time, \
kind, slot and detail. Each event is written in the primary's superblock by the command that \
changes the mirror, in the same commit as the change (both or neither after a crash); the \
newest 1024 are kept as far as they fit in the superblock (about 440 when every detail is as \
long as it may be). Like status it takes no lock and never waits. With --follow it keeps \
running and prints new events within half a second, whoever records them; it follows the \
mirror, not the path: when a promotion (planned or not) makes another image the primary, it \
finds it among the images of the mirror, says so on stderr and as a `following` event, and \
reads that image's journal from then on, each event once. With --exec it also runs a shell \
command per new event, the event in MIRRORCTL_* environment variables (like mdadm --monitor \
--program and ZED's zedlets); with --state-file a restarted follower delivers what it missed \
once. NBD legs are named by their short form (the URI without its query, `(TLS)` for nbds) \
in the text, MIRRORCTL_LEG and event details; the JSON `leg` field keeps the full URI.",
        after_help = after("events")
    )]
    Events(EventsArgs),
    /// Add a secondary image (file, created sparse if missing, or block device) and sync it.
    #[command(after_help = after("attach"))]
    Attach(AttachArgs),
    /// Write data (from a file or stdin) into the mirror; durable on every in-sync leg at exit.
    #[command(after_help = after("write"))]
    Write(WriteArgs),
    /// Read the mirror's data area (from an in-sync secondary if the primary fails).
    #[command(after_help = after("read"))]
    Read(ReadArgs),
    /// Stop writing to a secondary on purpose; its changed regions are tracked for resync.
    #[command(after_help = after("fracture"))]
    Fracture(FractureArgs),
    /// Copy exactly the out-of-sync regions to secondaries and mark them in sync.
    #[command(after_help = after("resync"))]
    Resync(ResyncArgs),
    /// Remove a secondary from the mirror and free its slot.
    #[command(after_help = after("detach"))]
    Detach(DetachArgs),
    /// Turn an in-sync secondary into the primary of its mirror (failover).
    #[command(after_help = after("promote"))]
    Promote(PromoteArgs),
    /// Compare the primary with its secondaries region by region, byte for byte, and report every
    /// differing range; repair on request; scrub in budgeted steps from cron.
    ///
    /// A run that compares nothing (no secondary attached, or none in sync) is no pass: its
    /// result is "incomplete" (`complete: false` in JSON), exit 3, as status records it.
    #[command(after_help = after("verify"))]
    Verify(VerifyArgs),
    /// Serve the mirror's data area to hosts over NBD (qemu, nbd-client, nbdfuse, fio): every
    /// write goes to the primary and every in-sync secondary; runs until SIGTERM or SIGINT.
    #[command(long_about = SERVE_ABOUT, after_help = after("serve"))]
    Serve(ServeArgs),
    /// Export one image raw over NBD (header included), as the secondary of a primary on
    /// another machine (instead of qemu-nbd); refused once the image becomes a primary.
    #[command(long_about = EXPORT_ABOUT, after_help = after("export"))]
    Export(ExportArgs),
    /// Name a mirror, forget a name, or list the names: `mirrorctl name PRIMARY NAME`,
    /// `mirrorctl name --remove NAME`, `mirrorctl name`.
    #[command(long_about = NAME_ABOUT, after_help = after("name"))]
    Name(NameArgs),
    /// Change a running serve's settings live (its --min-in-sync), through its control
    /// socket.
    #[command(after_help = after("set"))]
    Set(SetArgs),
    /// The Pacemaker resource agent (promotable OCF agent ocf:mirrorctl:mirror): run by
    /// the cluster through the wrapper /usr/lib/ocf/resource.d/mirrorctl/mirror.
    #[command(name = "ocf-agent", long_about = OCF_ABOUT, after_help = after("ocf-agent"))]
    OcfAgent(OcfAgentArgs),
    /// Write man pages, shell completions and the OCF agent's wrapper (for packaging and
    /// the repository).
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// For the shell completions: the slots and locations of PRIMARY's legs, one per line
    /// (nothing, and exit 0, when it cannot be read). Takes no lock.
    #[command(hide = true, name = "complete-legs")]
    CompleteLegs(CompleteLegsArgs),
    /// For the shell completions: the mirrors' names, one per line.
    #[command(hide = true, name = "complete-names")]
    CompleteNames,
}

impl Command {
    /// Whether the command was asked for JSON output (failures print a JSON document too).
    pub fn json(&self) -> bool {
        match self {
            Command::Create(a) => a.json,
            Command::Status(a) => a.json || a.format == Some(StatusFormat::Json),
            Command::Events(a) => a.json,
            Command::Attach(a) => a.json,
            Command::Write(a) => a.json,
            Command::Resync(a) => a.json,
            Command::Promote(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Name(a) => a.json,
            Command::CompleteNames => false,
            Command::Read(_)
            | Command::Fracture(_)
            | Command::Detach(_)
            | Command::Serve(_)
            | Command::Export(_)
            | Command::Set(_)
            | Command::OcfAgent(_)
            | Command::Generate(_)
            | Command::CompleteLegs(_) => false,
        }
    }
}

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

const NAME_ABOUT: &str = "Name a mirror, forget a name, or list the names.

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
fn one_line(text: &str) -> (String, Option<String>) {
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
fn parse_wait(s: &str) -> Result<Wait, String> {
    crate::lock::parse_wait(Some(s))
}

/// `--timeout DURATION`, above zero.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// `--region-size SIZE`: a power of two from 4 KiB to 64 MiB.
fn parse_region_size(s: &str) -> Result<u64, String> {
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

const SERVE_ABOUT: &str = "Serve the mirror's data area (data_size bytes, starting at \
data_offset of the primary) to hosts over NBD, until SIGTERM or SIGINT.

Durability: a write is answered once it is written on the primary and on every in-sync \
secondary; a flush, or a write with FUA, is answered once everything written before it is \
durable (synced) on all of them: the contract of a disk's cache flush that filesystems and \
databases rely on. A secondary that fails (I/O error, full disk, NBD server gone) is fractured, \
its changes tracked for `resync`, and the host's request still succeeds; a primary that fails \
gets the host an I/O error for that request. Regions being written stay marked in the \
write-intent log in 4 MiB extents (--hot-extents); after a crash the next command (or serve) \
marks at most those out of sync, and `resync` copies them.

Clients: qemu -drive file=nbd+unix:///?socket=PATH,format=raw; the kernel's nbd-client \
-unix PATH /dev/nbd0; nbdfuse DIR nbd+unix:///?socket=PATH; fio --ioengine=nbd \
--uri=nbd+unix:///?socket=PATH; qemu-img convert -n -O raw SRC nbd+unix:///?socket=PATH. \
Several connections at once are fine (a flush on one covers the writes of all).

While it serves, `mirrorctl status` shows it (clients, hot set, request rates), and \
`fracture`, `resync`, `attach`, `detach` and `verify` on the mirror are carried out by the \
serving process through its control socket while hosts write, with the same output and exit \
codes; other commands exit 5 (busy), naming it. Stop it \
with SIGTERM (systemctl stop) or Ctrl-C: requests in flight finish, clients get at most \
--write-timeout to take their replies, every leg is synced and the write intents are cleared, \
so status is clean afterwards. A second SIGTERM or Ctrl-C stops at once: nothing is synced or \
cleared, and the next command recovers the hot set as after a crash.

Under systemd (the unit mirrorctl-serve@.service, Type=notify): READY=1 is sent to \
$NOTIFY_SOCKET once the socket is in place and clients and admin commands are taken, \
STOPPING=1 when a stop begins; when stderr is journald's stream ($JOURNAL_STREAM), log \
lines carry their syslog priority (error, warning, note, info).";

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The mirror's primary image (file or block device), or the mirror's name (see
    /// `mirrorctl name`): then the [serve] table of its file gives the options not on the
    /// command line.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// Listen on this Unix socket (mode 0600). Default: /run/mirrorctl/NAME-HASH.sock for
    /// root, else under $XDG_RUNTIME_DIR; the path is logged at start.
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP HOST:PORT instead of a Unix socket (port 0: any free port, logged). An
    /// address that is not loopback needs TLS required (--tls-cert, --tls-key) or --insecure.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// The export name clients ask for (default: the empty name, which a URI without a
    /// name asks for: nbd+unix:///?socket=PATH).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub export: String,
    /// Serve reads only: writes are refused (EPERM); nothing on disk changes, not even a
    /// recovery.
    #[arg(long)]
    pub read_only: bool,
    /// Extents of 4 MiB kept marked in the write-intent log (the activity log): writes into
    /// them cost no metadata I/O; after a crash at most these are resynced. At least 16.
    #[arg(long, value_name = "N", default_value_t = crate::engine::DEFAULT_HOT_EXTENTS,
          value_parser = parse_hot_extents)]
    pub hot_extents: usize,
    /// TLS certificate (PEM; the server's first, then any intermediates) presented to
    /// clients: clients start TLS (NBD_OPT_STARTTLS) and the rest of the handshake and
    /// every request travel inside it. Needs --tls-key. Read once at start.
    #[arg(long, value_name = "FILE", requires = "tls_key", value_hint = clap::ValueHint::FilePath)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, unencrypted). Refused if others may read it
    /// (chmod 600).
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_hint = clap::ValueHint::FilePath)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this CA (PEM), or are
    /// refused, the log naming their address.
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_hint = clap::ValueHint::FilePath)]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: admit only clients whose certificate is for NAME (its subject's
    /// common name, or a DNS name or address among its alternative names); repeat for more.
    /// Without it, any certificate the CA signed is admitted.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_allow: Vec<String>,
    /// Whether clients must start TLS: require (the default with --tls-cert) refuses those
    /// that do not with NBD_REP_ERR_TLS_REQD; on lets them connect in clear text; off
    /// (the default without a certificate) offers no TLS.
    #[arg(long, value_name = "MODE", value_enum)]
    pub tls: Option<crate::server::handshake::TlsPolicy>,
    /// A client must finish its handshake (TLS included) within this, or it is
    /// disconnected (as qemu-nbd's --handshake-limit): one that connects and says nothing,
    /// or starts TLS and stalls, holds no thread for long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = Examples::new(parse_timeout, DURATION_EXAMPLES), hide_possible_values = true)]
    pub handshake_limit: Duration,
    /// A client that takes none of its replies for this long is disconnected (its requests
    /// are no longer read once 16 MiB of replies wait for it). A stop gives clients at most
    /// this long to take the replies of the requests in flight, then shuts every connection
    /// down.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = Examples::new(parse_timeout, DURATION_EXAMPLES), hide_possible_values = true)]
    pub write_timeout: Duration,
    /// Clients served at once (handshakes included); one more is refused with a log line.
    /// Each holds at most 33 threads and about 240 MiB of buffers.
    #[arg(long, value_name = "N", default_value_t = crate::server::Limits::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    pub max_connections: usize,
    /// Allow --listen on an address that is not loopback without TLS required. Without TLS,
    /// anyone who can reach the port can read and overwrite the disk.
    #[arg(long)]
    pub insecure: bool,
    /// Acknowledge a write or flush only while at least N secondaries are in sync (DRBD's
    /// quorum, MirrorView's minimum required images). With fewer, a write or flush waits up
    /// to --timeout for one to come back in sync (a live resync ending), then gets an I/O
    /// error, as do the next ones at once until enough are back or `mirrorctl set PRIMARY
    /// --min-in-sync N` lowers the minimum. 0 (the default): writes go on with any number.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        conflicts_with = "read_only"
    )]
    pub min_in_sync: u32,
    /// Run COMMAND (/bin/sh -c) when a secondary stops receiving writes (it failed, or an
    /// admin fractured it), once its fracture is on disk, and acknowledge no write or flush
    /// until it exits 0 (DRBD's fence-peer handler; e.g. a script adding a Pacemaker
    /// constraint that keeps the peer from promotion). It gets MIRRORCTL_SLOT,
    /// MIRRORCTL_LEG, MIRRORCTL_MIRROR, MIRRORCTL_PRIMARY and MIRRORCTL_REASON. If it fails
    /// or runs past --fence-timeout, writes and flushes get I/O errors until the leg is back
    /// in sync or detached.
    #[arg(long, value_name = "COMMAND", conflicts_with = "read_only")]
    pub fence_peer: Option<String>,
    /// Run COMMAND (/bin/sh -c, the same environment) when a leg whose --fence-peer
    /// succeeded is back in sync (a resync ended): to remove the constraint. A failure is
    /// logged.
    #[arg(long, value_name = "COMMAND", requires = "fence_peer")]
    pub unfence: Option<String>,
    /// The longest --fence-peer or --unfence may run; then it is killed (with what it
    /// started) and counts as failed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = Examples::new(parse_timeout, DURATION_EXAMPLES), hide_possible_values = true)]
    pub fence_timeout: Duration,
}

const OCF_ABOUT: &str = "The Pacemaker resource agent: `mirrorctl ocf-agent ACTION` is the \
promotable OCF resource agent ocf:mirrorctl:mirror (the wrapper installed as \
/usr/lib/ocf/resource.d/mirrorctl/mirror runs it). Pacemaker runs it with the parameters in \
OCF_RESKEY_* variables; its exit status is an OCF return code, not one of mirrorctl's.

Actions: start (export this node's image with `mirrorctl export`, --rejoin for a former \
primary), stop, monitor (0 unpromoted and exporting, 8 promoted and serving, 7 stopped, 9 \
promoted but serve is gone), promote (stop the export, `mirrorctl promote` a secondary, \
place the fencing constraint if a peer is not in sync, `mirrorctl serve` with \
--min-in-sync and the fencing hooks, then attach the peers' exports in the background), \
demote (stop serve cleanly, export again), notify (0), meta-data, validate-all; and \
fence-peer / unfence-peer, which serve runs as its --fence-peer and --unfence hooks: they \
add and remove the location constraint mirrorctl-fence-RESOURCE (promoted on no node but \
this one) with cibadmin.

Parameters (see `mirrorctl ocf-agent meta-data`): image and nodes (required; nodes is \
NODE=ADDRESS[:PORT] for every node), export_port (10810), export_name (mirror), tls_cert, \
tls_key, tls_ca (required unless insecure=true), insecure, socket or listen (where serve \
takes hosts), serve_options, min_in_sync (0), fence (true), state_dir \
(/run/mirrorctl/ocf-RESOURCE: pid files and logs of the processes it starts, under \
a subdirectory named after the node).

Promotion scores (crm_attribute --promotion): 10000 while promoted, 1000 for an in-sync \
secondary at the current generation or a cleanly stopped primary, 100 for a primary that \
was not stopped cleanly; none (0: the attribute is removed, since Pacemaker promotes an \
instance scored 0 when no other can be) for a syncing, fractured, stale, detached or damaged \
image.

Return codes: 0 success, 1 generic error, 2 bad parameter, 3 unknown action, 5 not \
installed (the image or a TLS file missing on this node), 6 not configured (a required \
parameter missing), 7 not running, 8 running promoted, 9 failed promoted.";

#[derive(Args, Debug)]
pub struct OcfAgentArgs {
    /// start, stop, monitor, promote, demote, notify, meta-data, validate-all, fence-peer
    /// or unfence-peer.
    pub action: String,
    /// What the agent passes its own background runs.
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

const EXPORT_ABOUT: &str = "Export one image file or block device raw over NBD: the whole image, \
header included, as `qemu-nbd -f raw --cache=none` would. It is the secondary side of a mirror \
whose primary is on another machine: there, `mirrorctl attach PRIMARY nbds://HOST:PORT/NAME` \
makes it a leg, and the primary's writes, flushes and resyncs come over the network.

It takes an image whose header is a secondary (or a detached one), an image with no mirrorctl \
header (blank, for the primary to attach: attach refuses data it would destroy), and with \
--rejoin a former primary (for the mirror's current primary to take back as a secondary with \
`attach`, which copies only what differs). A primary without --rejoin, or a damaged header, is \
refused (exit 2). It holds the image's lock while it runs: local commands on the image say \
busy, and `status` names the export's pid.

Flush is an fdatasync of the image; FUA is honoured; TRIM and WRITE_ZEROES punch holes where \
the file system can. After every write into the two superblock copies it reads the header \
back: once the image has become a primary (`mirrorctl promote nbds://...` through the export; \
with --rejoin, after it was a secondary again), every request of any other connection gets \
ESHUTDOWN, one log line says so, and the export exits (0) when the promoting connection ends, \
so that `mirrorctl serve IMAGE` can serve it by path.

TLS, the listening and the limits work as in serve: --tls-cert/--tls-key (TLS required), \
--tls-ca (clients must present a certificate from it), --tls-allow, --handshake-limit, \
--write-timeout, --max-connections; a non-loopback --listen needs TLS required or --insecure. \
SIGTERM or Ctrl-C: the requests in flight are answered, the image synced, exit 0; a second \
one ends it at once. Under systemd READY=1 is sent once it listens; log lines go to stderr as \
`mirrorctl export: ...` with journald priorities.";

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["socket", "listen"])))]
pub struct ExportArgs {
    /// The image to export (file or block device): a secondary, a blank image, or with
    /// --rejoin a former primary.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub image: PathBuf,
    /// Listen on this Unix socket (mode 0600).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP HOST:PORT (port 0: any free port, logged). An address that is not
    /// loopback needs TLS required (--tls-cert, --tls-key) or --insecure.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// The export name clients ask for (the NAME of nbds://HOST:PORT/NAME; default: the
    /// empty name).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub export: String,
    /// Offer a former primary (its header says primary, and nothing runs it) for the
    /// mirror's current primary to take back as a secondary with `attach`. It is watched
    /// for becoming a primary again only once it is a secondary.
    #[arg(long)]
    pub rejoin: bool,
    /// TLS certificate (PEM; the server's first, then any intermediates) presented to
    /// clients. Needs --tls-key. Read once at start.
    #[arg(long, value_name = "FILE", requires = "tls_key", value_hint = clap::ValueHint::FilePath)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, unencrypted). Refused if others may read it
    /// (chmod 600).
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_hint = clap::ValueHint::FilePath)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients (the primary's NBD leg) must present a certificate signed by
    /// this CA (PEM), or are refused.
    #[arg(long, value_name = "FILE", requires = "tls_cert", value_hint = clap::ValueHint::FilePath)]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: admit only clients whose certificate is for NAME; repeat for more.
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_allow: Vec<String>,
    /// Whether clients must start TLS: require (the default with --tls-cert), on, or off
    /// (the default without a certificate).
    #[arg(long, value_name = "MODE", value_enum)]
    pub tls: Option<crate::server::handshake::TlsPolicy>,
    /// A client must finish its handshake (TLS included) within this, or it is
    /// disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = Examples::new(parse_timeout, DURATION_EXAMPLES), hide_possible_values = true)]
    pub handshake_limit: Duration,
    /// A client that takes none of its replies for this long is disconnected; a stop gives
    /// clients at most this long to take the replies of the requests in flight.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = Examples::new(parse_timeout, DURATION_EXAMPLES), hide_possible_values = true)]
    pub write_timeout: Duration,
    /// Clients served at once (handshakes included); one more is refused with a log line.
    #[arg(long, value_name = "N", default_value_t = crate::server::Limits::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    pub max_connections: usize,
    /// Allow --listen on an address that is not loopback without TLS required. Without TLS,
    /// anyone who can reach the port can read and overwrite the image.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The mirror's primary image, served by `mirrorctl serve`.
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub primary: PathBuf,
    /// The minimum of in-sync secondaries the running serve needs to acknowledge writes
    /// (its --min-in-sync), from now on; writes refused for too few go on at once when the
    /// new one is met.
    #[arg(long, value_name = "N", required = true)]
    pub min_in_sync: Option<u32>,
}

fn parse_max_connections(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a whole number of connections, at least 1 (e.g. 64)"
        )),
    }
}

fn parse_hot_extents(s: &str) -> std::result::Result<usize, String> {
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
