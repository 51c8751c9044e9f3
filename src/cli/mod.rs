//! Command-line definitions (clap): the command enum and the global options here, each
//! command's arguments in `args/` (one file per group of commands), option values in
//! `values.rs`, help's EXAMPLES and EXIT STATUS in `help.rs`. The man pages and shell
//! completions are generated from these by the hidden `generate` subcommand.

pub mod args;
pub mod commands;
pub mod doc;
pub mod exit;
pub mod help;
pub mod metrics;
pub mod output;
pub mod status_text;
pub mod values;

pub use args::data::*;
pub use args::legs::*;
pub use args::mirror::*;
pub use args::serving::*;
pub use help::*;
pub use values::*;

use crate::lock::Wait;
use clap::{Parser, Subcommand};
use std::time::Duration;

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
