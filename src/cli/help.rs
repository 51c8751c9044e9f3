//! What `--help` and the man pages say after the options: EXAMPLES laid out to fit, and
//! EXIT STATUS per command.

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

pub(crate) fn after_with(subcommand: &str, example: impl Fn(&str, &str) -> String) -> String {
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
pub(crate) const OCF_EXIT_STATUS: &str = "EXIT STATUS (OCF return codes):
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
pub(crate) const EXAMPLE_WIDTH: usize = 76;

/// One example as `--help` shows it: the command, broken at spaces with shell
/// continuations (` \\`) into lines of at most [`EXAMPLE_WIDTH`] (each continuation
/// indented, so it can still be pasted), then what it does, indented further under it.
pub(crate) fn example_lines(cmd: &str, what: &str) -> String {
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
