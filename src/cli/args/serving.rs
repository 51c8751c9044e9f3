//! The arguments of the long-running commands and their administration: serve, set,
//! export, and the Pacemaker agent.

use crate::cli::values::{
    parse_hot_extents, parse_max_connections, parse_timeout, Examples, DURATION_EXAMPLES,
};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const SERVE_ABOUT: &str = "Serve the mirror's data area (data_size bytes, starting at \
data_offset of the primary) to hosts over NBD, until SIGTERM or SIGINT.

Durability: a write is answered once it is written on the primary and on every in-sync \
secondary; a flush, or a write with FUA, is answered once everything written before it is \
durable (synced) on all of them: the contract of a disk's cache flush that filesystems and \
databases rely on. A secondary that fails (I/O error, full disk, NBD server gone) is fractured, \
its changes tracked for `resync`, and the host's request still succeeds; a primary that fails \
gets the host an I/O error for that request. Regions being written stay marked in the \
write-intent log in 4 MiB extents (--hot-extents); after a crash the next command (or serve) \
marks at most those (and the extents evicted whose writes no finished sync has covered yet) out of sync, \
and `resync` copies them.

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
    /// them cost no metadata I/O; after a crash at most these, and the extents evicted whose
    /// writes no finished sync has covered yet, are resynced. At least 16.
    #[arg(long, value_name = "N", default_value_t = crate::engine::DEFAULT_HOT_EXTENTS,
          value_parser = parse_hot_extents)]
    pub hot_extents: usize,
    #[command(flatten)]
    pub server: ServerArgs,
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

pub(crate) const EXPORT_ABOUT: &str =
    "Export one image file or block device raw over NBD: the whole image, \
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
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(crate) const OCF_ABOUT: &str =
    "The Pacemaker resource agent: `mirrorctl ocf-agent ACTION` is the \
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

/// The options of a server on the network, shared by `serve` and `export`: TLS, how long a
/// client may take, how many are served, and clear text beyond loopback.
#[derive(Args, Debug)]
pub struct ServerArgs {
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
    pub tls: Option<crate::nbd_server::handshake::TlsPolicy>,
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
    #[arg(long, value_name = "N", default_value_t = crate::nbd_server::Limits::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    pub max_connections: usize,
    /// Allow --listen on an address that is not loopback without TLS required. Without TLS,
    /// anyone who can reach the port can read and overwrite the disk.
    #[arg(long)]
    pub insecure: bool,
}

impl ServerArgs {
    /// What each client may hold and take (README "Serving hosts").
    pub fn limits(&self) -> crate::nbd_server::Limits {
        crate::nbd_server::Limits {
            handshake: self.handshake_limit,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
        }
    }
}
