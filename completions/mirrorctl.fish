# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_mirrorctl_global_optspecs
    string join \n wait= no-progress timeout= h/help V/version
end

function __fish_mirrorctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mirrorctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_mirrorctl_using_subcommand
    set -l cmd (__fish_mirrorctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -s V -l version -d 'Print version'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "create" -d 'Create a mirror: write a primary header onto an image file or block device'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "status" -d 'Show the mirror\'s geometry, legs, out-of-sync regions and pending write intents'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "events" -d 'Show the mirror\'s event journal: fractures, resyncs, verifies, recoveries, attach, detach, promotion, serve; follow it and run a program on each new event'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "attach" -d 'Add a secondary image (file, created sparse if missing, or block device) and sync it'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "write" -d 'Write data (from a file or stdin) into the mirror; durable on every in-sync leg at exit'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "read" -d 'Read the mirror\'s data area (from an in-sync secondary if the primary fails)'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "fracture" -d 'Stop writing to a secondary on purpose; its changed regions are tracked for resync'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "resync" -d 'Copy exactly the out-of-sync regions to secondaries and mark them in sync'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "detach" -d 'Remove a secondary from the mirror and free its slot'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "promote" -d 'Turn an in-sync secondary into the primary of its mirror (failover)'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "verify" -d 'Compare the primary with its secondaries region by region, byte for byte, and report every differing range; repair on request; scrub in budgeted steps from cron'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "serve" -d 'Serve the mirror\'s data area to hosts over NBD (qemu, nbd-client, nbdfuse, fio): every write goes to the primary and every in-sync secondary; runs until SIGTERM or SIGINT'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "export" -d 'Export one image raw over NBD (header included), as the secondary of a primary on another machine (instead of qemu-nbd); refused once the image becomes a primary'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "name" -d 'Name a mirror, forget a name, or list the names: `mirrorctl name PRIMARY NAME`, `mirrorctl name --remove NAME`, `mirrorctl name`'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "set" -d 'Change a running serve\'s settings live (its --min-in-sync), through its control socket'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "ocf-agent" -d 'The Pacemaker resource agent (promotable OCF agent ocf:mirrorctl:mirror): run by the cluster through the wrapper /usr/lib/ocf/resource.d/mirrorctl/mirror'
complete -c mirrorctl -n "__fish_mirrorctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -l size -d 'Size of the data area (e.g. 10G, 1.5G: a decimal number when it comes to whole bytes). Required for a new file; by default an existing file or device is used whole' -r -f -a "512M\t'512 MiB'
1G\t'1 GiB'
10G\t'10 GiB'
100G\t'100 GiB'
1T\t'1 TiB'
10GB\t'10 x 1000^3 bytes (decimal)'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -l region-size -d 'Bytes tracked by one bitmap bit: a power of two from 4K to 64M' -r -f -a "4K\t'finest tracking, biggest bitmaps'
64K\t'the default'
1M\t'smaller bitmaps for large images'
4M\t'coarse'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -l max-secondaries -d 'Number of secondary slots (1 to 32)' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -l name -d 'Name the new mirror NAME (writes /etc/mirrorctl/NAME.toml, or under $MIRRORCTL_CONFIG_DIR): other commands then take NAME for the primary. A name that is taken is refused (nothing is created), unless --force re-creates the mirror on the image that name points at' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -s f -l force -d 'Overwrite an existing mirrorctl header, a filesystem or other signature (named in the refusal and again in a note when forced), or other data in the metadata area, and grow a regular file that is too small for --size'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -s j -l json -d 'Print the result as JSON'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand create" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -l format -d 'text (default), json, or prometheus: metrics in the Prometheus text format (for node_exporter\'s textfile collector: write them to a .prom file from a timer)' -r -f -a "text\t''
json\t''
prometheus\t''"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -l all -d 'Every named mirror (the files in /etc/mirrorctl, see `mirrorctl name`): a block per mirror, a JSON array (each element the status document plus "name"), or the metrics of all of them with a `name` label. A name whose primary cannot be opened is reported, and counts as unhealthy for --check'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -s j -l json -d 'Print a JSON document with stable field names (see README); the same as --format json'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -l check -d 'Exit 3 if the mirror is not fully in sync'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l since -d 'Only events with a sequence number above SEQ (status --json shows the newest as last_event_seq)' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l exec -d 'With --follow: run COMMAND with /bin/sh -c once per new event, in order, with MIRRORCTL_EVENT, MIRRORCTL_SEQ, MIRRORCTL_TIME, MIRRORCTL_TIME_UNIX, MIRRORCTL_SLOT, MIRRORCTL_LEG (the leg\'s short form), MIRRORCTL_DETAIL, MIRRORCTL_PRIMARY (the primary the event was read from) and MIRRORCTL_MIRROR set. Without --since (or a --state-file that exists) it runs for events recorded from now on only. A command that fails is logged; one that runs longer than --exec-timeout is killed; neither stops the following' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l exec-timeout -d 'How long an --exec command may run before it is killed' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l state-file -d 'Record the last delivered event in FILE (JSON, written to a temporary file, synced and renamed over it after each event: after its --exec program ran, or once printed) and, when FILE exists, resume after that event: a restarted follower delivers each event it missed once (at least once if killed between running the program and recording it). It names the mirror and the primary last followed, so it resumes correctly after a promotion; a state file of another mirror, or a damaged one, is refused (exit 2). Without FILE yet, it starts from the newest event unless --since is given (--since only counts when FILE does not exist)' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -s j -l json -d 'One JSON document per line per event, with stable field names (see README)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l follow -d 'Keep running and print each new event as it is recorded (polls four times a second). Follows the mirror, not the path: when the image stops being the primary (a promotion, planned or not) it looks for the mirror\'s primary among the images it knows (the primary\'s legs, the image given, what a demoted image names), twice a second until found, says so on stderr and as a `following` event (seq null), and reads the new primary\'s journal from then on, each event once'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l tls-ca -d 'For an nbds:// secondary: the CA (PEM) that signed the server\'s certificate (default: the system\'s, /etc/ssl/certs/ca-certificates.crt). The server\'s certificate must also carry the URI\'s host name (for nbds+unix, localhost, or the URI\'s tls-hostname=NAME). Recorded with the leg as the URI\'s tls-ca=, with an absolute path' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l tls-cert -d 'For an nbds:// secondary whose server asks for a client certificate: this end\'s certificate (PEM). Recorded as tls-cert=' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l tls-key -d 'The key of --tls-cert (PEM, unencrypted; refused if others may read it). Recorded as tls-key=' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l rate -d 'Limit the initial sync to this many bytes per second (e.g. 100M/s)' -r -f -a "10M/s\t'10 MiB per second'
50M/s\t'50 MiB per second'
100M/s\t'100 MiB per second'
1G/s\t'1 GiB per second'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l no-sync -d 'Do not copy now: leave the regions for `mirrorctl resync`'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l assume-clean -d 'Declare the secondary identical to the primary already: copy nothing'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -s f -l force -d 'Overwrite a secondary that holds data: a filesystem, LVM, LUKS, md, ZFS or partition table signature (named in the refusal), any data in its first or last MiB, any allocated extent of a file, another mirror\'s header or an unreadable one'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l compare -d 'Initial sync reads the secondary too and writes only the 64 KiB blocks that differ: for a secondary that already holds most of the data (a shipped copy, an old replica). Its data area is kept, so data there needs no --force; a re-attached image is compared in full'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l discard-secondary-changes -d 'Split brain: SECONDARY and PRIMARY were both changed after they diverged. Keep PRIMARY\'s data and overwrite SECONDARY\'s changes (only the regions either side changed are copied)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -s j -l json -d 'Print the result as JSON (see README, JSON output)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l offset -d 'Byte offset in the data area where writing starts' -r -f -a "512M\t'512 MiB'
1G\t'1 GiB'
10G\t'10 GiB'
100G\t'100 GiB'
1T\t'1 TiB'
10GB\t'10 x 1000^3 bytes (decimal)'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -s i -l input -d 'Read from FILE instead of stdin (`-` is stdin)' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l length -d 'Write exactly this many bytes: a shorter input is exit 2 after writing (durably, mirrored) what came, and the message says how much' -r -f -a "512M\t'512 MiB'
1G\t'1 GiB'
10G\t'10 GiB'
100G\t'100 GiB'
1T\t'1 TiB'
10GB\t'10 x 1000^3 bytes (decimal)'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l flush -d 'When legs are made durable: end, always, or every=SIZE. Exit 0 always means every byte is durable on every in-sync leg' -r -f -a "end\t'make legs durable at the end (default)'
always\t'after every chunk'
every=\t'every SIZE, e.g. every=256M'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l min-in-sync -d 'Refuse to write (exit 3) unless at least N secondaries are in sync: checked before anything is written, and the write stops at the first leg lost below N, reporting as written only the bytes synced while N were in sync (see --flush). 0: no minimum' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l fence-peer -d 'Run COMMAND (/bin/sh -c) for each secondary this write loses (fractured on an error), once its fracture is on disk and before the write goes on; if it fails or runs past --fence-timeout, the write stops as with --min-in-sync (exit 3). The environment is serve\'s (see `mirrorctl serve --help`)' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l fence-timeout -d 'The longest --fence-peer may run; then it is killed and counts as failed' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -s j -l json -d 'Print the result as JSON: bytes written, legs written, legs newly fractured'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read" -l offset -d 'Byte offset in the data area where reading starts' -r -f -a "512M\t'512 MiB'
1G\t'1 GiB'
10G\t'10 GiB'
100G\t'100 GiB'
1T\t'1 TiB'
10GB\t'10 x 1000^3 bytes (decimal)'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read" -l length -d 'Bytes to read (default: to the end of the data area)' -r -f -a "512M\t'512 MiB'
1G\t'1 GiB'
10G\t'10 GiB'
100G\t'100 GiB'
1T\t'1 TiB'
10GB\t'10 x 1000^3 bytes (decimal)'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read" -s o -l output -d 'Write to FILE instead of stdout' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand fracture" -l reason -d 'Why (recorded and shown by status)' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand fracture" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand fracture" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand fracture" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand fracture" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -l rate -d 'Limit copying to this many bytes per second (e.g. 50M/s)' -r -f -a "10M/s\t'10 MiB per second'
50M/s\t'50 MiB per second'
100M/s\t'100 MiB per second'
1G/s\t'1 GiB per second'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -s n -l dry-run -d 'Print the regions and bytes that would be copied; change nothing'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -l compare -d 'Read each secondary too and write only the 64 KiB blocks that differ from the primary: for logs much larger than what really differs (after an unplanned promote, or re-attaching with --force an image known to be nearly equal). Reads both sides'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -s j -l json -d 'Print the result as JSON: regions and bytes copied and remaining, per leg'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand detach" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand detach" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand detach" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand detach" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand promote" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand promote" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand promote" -s f -l force -d 'Promote even if the secondary was fractured or out of sync at its last known state (its missing writes are lost)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand promote" -s j -l json -d 'Print the result as JSON: the new generation, the former primary\'s slot, notes'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand promote" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand promote" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -l max-time -d 'Stop after DURATION (e.g. 10m) and save a cursor; the next run with --max-time continues there, so repeated cron runs cover the whole image' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -l repair -d 'Copy mismatched regions from the primary in the same run. Without it they are recorded in the leg\'s fracture log (the mirror is degraded until `resync` copies them)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -l restart -d 'Start from the beginning instead of the saved cursor'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -s j -l json -d 'Print a JSON document with every mismatched range'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l socket -d 'Listen on this Unix socket (mode 0600). Default: /run/mirrorctl/NAME-HASH.sock for root, else under $XDG_RUNTIME_DIR; the path is logged at start' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l listen -d 'Listen on TCP HOST:PORT instead of a Unix socket (port 0: any free port, logged). An address that is not loopback needs TLS required (--tls-cert, --tls-key) or --insecure' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l export -d 'The export name clients ask for (default: the empty name, which a URI without a name asks for: nbd+unix:///?socket=PATH)' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l hot-extents -d 'Extents of 4 MiB kept marked in the write-intent log (the activity log): writes into them cost no metadata I/O; after a crash at most these, and the extents evicted whose writes no finished sync has covered yet, are resynced. At least 16' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l tls-cert -d 'TLS certificate (PEM; the server\'s first, then any intermediates) presented to clients: clients start TLS (NBD_OPT_STARTTLS) and the rest of the handshake and every request travel inside it. Needs --tls-key. Read once at start' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l tls-key -d 'The private key of --tls-cert (PEM, unencrypted). Refused if others may read it (chmod 600)' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l tls-ca -d 'Mutual TLS: clients must present a certificate signed by this CA (PEM), or are refused, the log naming their address' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l tls-allow -d 'With --tls-ca: admit only clients whose certificate is for NAME (its subject\'s common name, or a DNS name or address among its alternative names); repeat for more. Without it, any certificate the CA signed is admitted' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l tls -d 'Whether clients must start TLS: require (the default with --tls-cert) refuses those that do not with NBD_REP_ERR_TLS_REQD; on lets them connect in clear text; off (the default without a certificate) offers no TLS' -r -f -a "off\t'No TLS offered (NBD_OPT_STARTTLS is answered "unsupported")'
on\t'TLS offered; clients may connect without it'
require\t'Every client must start TLS: other options get NBD_REP_ERR_TLS_REQD until it has'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l handshake-limit -d 'A client must finish its handshake (TLS included) within this, or it is disconnected (as qemu-nbd\'s --handshake-limit): one that connects and says nothing, or starts TLS and stalls, holds no thread for long' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l write-timeout -d 'A client that takes none of its replies for this long is disconnected (its requests are no longer read once 16 MiB of replies wait for it). A stop gives clients at most this long to take the replies of the requests in flight, then shuts every connection down' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l max-connections -d 'Clients served at once (handshakes included); one more is refused with a log line. Each holds at most 33 threads and about 240 MiB of buffers' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l min-in-sync -d 'Acknowledge a write or flush only while at least N secondaries are in sync (DRBD\'s quorum, MirrorView\'s minimum required images). With fewer, a write or flush waits up to --timeout for one to come back in sync (a live resync ending), then gets an I/O error, as do the next ones at once until enough are back or `mirrorctl set PRIMARY --min-in-sync N` lowers the minimum. 0 (the default): writes go on with any number' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l fence-peer -d 'Run COMMAND (/bin/sh -c) when a secondary stops receiving writes (it failed, or an admin fractured it), once its fracture is on disk, and acknowledge no write or flush until it exits 0 (DRBD\'s fence-peer handler; e.g. a script adding a Pacemaker constraint that keeps the peer from promotion). It gets MIRRORCTL_SLOT, MIRRORCTL_LEG, MIRRORCTL_MIRROR, MIRRORCTL_PRIMARY and MIRRORCTL_REASON. If it fails or runs past --fence-timeout, writes and flushes get I/O errors until the leg is back in sync or detached' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l unfence -d 'Run COMMAND (/bin/sh -c, the same environment) when a leg whose --fence-peer succeeded is back in sync (a resync ended): to remove the constraint. A failure is logged' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l fence-timeout -d 'The longest --fence-peer or --unfence may run; then it is killed (with what it started) and counts as failed' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l read-only -d 'Serve reads only: writes are refused (EPERM); nothing on disk changes, not even a recovery'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l insecure -d 'Allow --listen on an address that is not loopback without TLS required. Without TLS, anyone who can reach the port can read and overwrite the disk'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l socket -d 'Listen on this Unix socket (mode 0600)' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l listen -d 'Listen on TCP HOST:PORT (port 0: any free port, logged). An address that is not loopback needs TLS required (--tls-cert, --tls-key) or --insecure' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l export -d 'The export name clients ask for (the NAME of nbds://HOST:PORT/NAME; default: the empty name)' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l tls-cert -d 'TLS certificate (PEM; the server\'s first, then any intermediates) presented to clients: clients start TLS (NBD_OPT_STARTTLS) and the rest of the handshake and every request travel inside it. Needs --tls-key. Read once at start' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l tls-key -d 'The private key of --tls-cert (PEM, unencrypted). Refused if others may read it (chmod 600)' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l tls-ca -d 'Mutual TLS: clients must present a certificate signed by this CA (PEM), or are refused, the log naming their address' -r -F
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l tls-allow -d 'With --tls-ca: admit only clients whose certificate is for NAME (its subject\'s common name, or a DNS name or address among its alternative names); repeat for more. Without it, any certificate the CA signed is admitted' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l tls -d 'Whether clients must start TLS: require (the default with --tls-cert) refuses those that do not with NBD_REP_ERR_TLS_REQD; on lets them connect in clear text; off (the default without a certificate) offers no TLS' -r -f -a "off\t'No TLS offered (NBD_OPT_STARTTLS is answered "unsupported")'
on\t'TLS offered; clients may connect without it'
require\t'Every client must start TLS: other options get NBD_REP_ERR_TLS_REQD until it has'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l handshake-limit -d 'A client must finish its handshake (TLS included) within this, or it is disconnected (as qemu-nbd\'s --handshake-limit): one that connects and says nothing, or starts TLS and stalls, holds no thread for long' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l write-timeout -d 'A client that takes none of its replies for this long is disconnected (its requests are no longer read once 16 MiB of replies wait for it). A stop gives clients at most this long to take the replies of the requests in flight, then shuts every connection down' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l max-connections -d 'Clients served at once (handshakes included); one more is refused with a log line. Each holds at most 33 threads and about 240 MiB of buffers' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l rejoin -d 'Offer a former primary (its header says primary, and nothing runs it) for the mirror\'s current primary to take back as a secondary with `attach`. It is watched for becoming a primary again only once it is a secondary'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l insecure -d 'Allow --listen on an address that is not loopback without TLS required. Without TLS, anyone who can reach the port can read and overwrite the disk'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand name" -l remove -d 'Forget the name NAME (its file is removed; the mirror is left as it is)' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand name" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand name" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand name" -s f -l force -d 'Give NAME to this mirror even though it names another mirror (whose name it was)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand name" -s j -l json -d 'List the names as a JSON array (name, mirror, primary, config)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand name" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand name" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand set" -l min-in-sync -d 'The minimum of in-sync secondaries the running serve needs to acknowledge writes (its --min-in-sync), from now on; writes refused for too few go on at once when the new one is met' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand set" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand set" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand set" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand set" -s h -l help -d 'Print help'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand ocf-agent" -l wait -d 'If the mirror is locked by another mirrorctl, wait for it (for at most DURATION, e.g. 30s, 5m; without a value, as long as it takes) instead of exiting with status 5. A mirror that `serve` holds is not waited for: the commands it carries out are handed to it at once, the others exit 5' -r
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand ocf-agent" -l timeout -d 'How long to wait for an NBD server (connect, handshake, each request) before the secondary is treated as failed (fractured-by-error), e.g. 500ms, 10s. Default 5s' -r -f -a "500ms\t'half a second'
30s\t'30 seconds'
10m\t'10 minutes'
1h\t'an hour'"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand ocf-agent" -l no-progress -d 'Never draw progress bars (they are drawn only when stderr is a terminal)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand ocf-agent" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "create" -d 'Create a mirror: write a primary header onto an image file or block device'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "status" -d 'Show the mirror\'s geometry, legs, out-of-sync regions and pending write intents'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "events" -d 'Show the mirror\'s event journal: fractures, resyncs, verifies, recoveries, attach, detach, promotion, serve; follow it and run a program on each new event'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "attach" -d 'Add a secondary image (file, created sparse if missing, or block device) and sync it'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "write" -d 'Write data (from a file or stdin) into the mirror; durable on every in-sync leg at exit'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "read" -d 'Read the mirror\'s data area (from an in-sync secondary if the primary fails)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "fracture" -d 'Stop writing to a secondary on purpose; its changed regions are tracked for resync'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "resync" -d 'Copy exactly the out-of-sync regions to secondaries and mark them in sync'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "detach" -d 'Remove a secondary from the mirror and free its slot'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "promote" -d 'Turn an in-sync secondary into the primary of its mirror (failover)'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "verify" -d 'Compare the primary with its secondaries region by region, byte for byte, and report every differing range; repair on request; scrub in budgeted steps from cron'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "serve" -d 'Serve the mirror\'s data area to hosts over NBD (qemu, nbd-client, nbdfuse, fio): every write goes to the primary and every in-sync secondary; runs until SIGTERM or SIGINT'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "export" -d 'Export one image raw over NBD (header included), as the secondary of a primary on another machine (instead of qemu-nbd); refused once the image becomes a primary'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "name" -d 'Name a mirror, forget a name, or list the names: `mirrorctl name PRIMARY NAME`, `mirrorctl name --remove NAME`, `mirrorctl name`'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "set" -d 'Change a running serve\'s settings live (its --min-in-sync), through its control socket'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "ocf-agent" -d 'The Pacemaker resource agent (promotable OCF agent ocf:mirrorctl:mirror): run by the cluster through the wrapper /usr/lib/ocf/resource.d/mirrorctl/mirror'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand help; and not __fish_seen_subcommand_from create status events attach write read fracture resync detach promote verify serve export name set ocf-agent help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

# Added by mirrorctl: the mirror's legs (slots and locations) for a secondary argument.
function __fish_mirrorctl_legs
    set -l words (commandline -opc)
    for w in $words[3..-1]
        if not string match -q -- '-*' $w
            mirrorctl complete-legs $w 2>/dev/null
            return
        end
    end
end
function __fish_mirrorctl_has_primary
    set -l words (commandline -opc)
    for w in $words[3..-1]
        if not string match -q -- '-*' $w
            return 0
        end
    end
    return 1
end
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand fracture; and __fish_mirrorctl_has_primary" -f -a "(__fish_mirrorctl_legs)"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync; and __fish_mirrorctl_has_primary" -f -a "(__fish_mirrorctl_legs)"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand detach; and __fish_mirrorctl_has_primary" -f -a "(__fish_mirrorctl_legs)"
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify; and __fish_mirrorctl_has_primary" -f -a "(__fish_mirrorctl_legs)"
# Added by mirrorctl: the mirrors' names (mirrorctl name) where a primary goes.
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand status; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand events; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand attach; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand write; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand read; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand fracture; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand resync; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand detach; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand verify; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
complete -c mirrorctl -n "__fish_mirrorctl_using_subcommand serve; and not __fish_mirrorctl_has_primary" -a "(mirrorctl complete-names 2>/dev/null)" -d 'mirror name'
