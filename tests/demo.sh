#!/usr/bin/env bash
# End-to-end demonstration on example data this script makes itself, in a temporary folder:
# create a mirror with two secondaries, pipe data in, fracture one, write more, show status,
# resync, verify; then serve the mirror to a host (qemu-io over NBD) with a third secondary
# on an NBD server over TLS (certificates made here, both ends checked) that goes away mid-run, a leg fractured and resynced, a fourth attached
# and the mirror verified while it serves,
# resync and verify again; and compare every leg byte for byte. Exits non-zero if anything is
# off.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${MIRRORCTL:-}" ]; then
  m=$MIRRORCTL
else
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
  m=$here/target/release/mirrorctl
fi
# The host side of the demo uses qemu-io and qemu-nbd (Debian: qemu-utils), and openssl for
# the TLS certificates.
if ! command -v qemu-io >/dev/null || ! command -v qemu-nbd >/dev/null || ! command -v openssl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing qemu-utils (qemu-io, qemu-nbd) and openssl for the host part of the demo"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils openssl >/dev/null
  else
    echo "tests/demo.sh needs qemu-io, qemu-nbd and openssl: apt-get install -y qemu-utils openssl (or run it as root)" >&2
    exit 1
  fi
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/mirrorctl-demo.XXXXXX")
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"
# say CMD...: shows the command as it would be typed (quoted where needed), then runs it.
say() {
  local shown=("$@")
  [ "${shown[0]}" = "$m" ] && shown[0]=mirrorctl
  printf '\n$'
  for a in "${shown[@]}"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf ' %s' "$a"; else printf " '%s'" "${a//\'/\'\\\'\'}"; fi
  done
  printf '\n'
  "$@"
}
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "nothing listens on port $1" >&2; exit 1; }

say "$m" create primary.img --size 256M
say "$m" attach primary.img secondary-a.img
say "$m" attach primary.img secondary-b.img
echo; echo '$ head -c 64M /dev/urandom | mirrorctl write primary.img'
head -c 64M /dev/urandom > payload.bin
"$m" write primary.img < payload.bin
say "$m" fracture primary.img secondary-b.img --reason "demo: backup window"
echo; echo '$ head -c 3M /dev/urandom | mirrorctl write primary.img --offset 100M'
head -c 3M /dev/urandom | "$m" write primary.img --offset 100M || [ $? = 3 ]   # 3: degraded
set +e
say "$m" status primary.img
say "$m" status primary.img --check; rc=$?
set -e
[ "$rc" = 3 ] || { echo "expected status --check to exit 3 while a leg is fractured" >&2; exit 1; }
say "$m" resync primary.img --dry-run
say "$m" resync primary.img
say "$m" verify primary.img
say "$m" status primary.img --check

echo; echo "== a host uses the mirror as a disk: mirrorctl serve, qemu-io over NBD =="
# A third secondary on another "machine": a file behind qemu-nbd on TCP, over TLS. A CA,
# a certificate for the server (127.0.0.1) and one for mirrorctl as its client.
bash "$here/tests/tls-certs.sh" "$dir/pki"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
truncate -s 258M remote.img
remote() {
  qemu-nbd --object "tls-creds-x509,id=tls0,dir=$dir/pki,endpoint=server,verify-peer=yes" \
    --tls-creds tls0 -f raw --persistent --shared=4 -x "" -b 127.0.0.1 -p "$port" remote.img &
  pids+=($!); qpid=$!
  wait_port "$port"
}
remote
say "$m" attach primary.img "nbds://127.0.0.1:$port/" --tls-ca pki/ca-cert.pem \
  --tls-cert pki/client-cert.pem --tls-key pki/client-key.pem
echo; echo "\$ mirrorctl serve primary.img --socket $dir/serve.sock &"
"$m" serve primary.img --socket "$dir/serve.sock" 2> serve.log & pids+=($!); spid=$!
wait_sock "$dir/serve.sock"
host="nbd+unix:///?socket=$dir/serve.sock"
say qemu-io -f raw -c "write -P 0x5a 0 8M" -c "flush" -c "read -P 0x5a 0 8M" "$host"
echo; echo "\$ kill qemu-nbd    # the remote secondary's server goes away while the host writes"
kill "$qpid"; wait "$qpid" 2>/dev/null || true
say qemu-io -f raw -c "write -P 0x6b 16M 8M" -c "flush" -c "read -P 0x6b 16M 8M" "$host"
sleep 1  # serve publishes what it does every half second
echo; echo "# status takes no lock: it shows the running server and the fractured leg"
say "$m" status primary.img | tee status-live.txt
grep -q "^running       serve (pid $spid)" status-live.txt || { echo "expected status to show the running serve" >&2; exit 1; }
echo; echo "# fracture, write and resync while it serves: the server carries them out"
say "$m" fracture primary.img secondary-a.img --reason "backup window"
say qemu-io -f raw -c "write -P 0x6b 16M 8M" -c "flush" "$host"
say "$m" resync primary.img secondary-a.img
echo; echo "# attach a new secondary and verify the mirror while it serves (no false mismatch)"
set +e
say "$m" attach primary.img secondary-c.img; rc=$?
set -e
# Exit 3: the mirror is still degraded (the NBD secondary is fractured), as when idle.
[ "$rc" = 3 ] || { echo "expected attach to exit 3 while the NBD secondary is fractured" >&2; exit 1; }
say "$m" verify primary.img secondary-a.img secondary-b.img secondary-c.img
echo; echo "\$ kill -TERM %serve  # a clean stop: every leg synced, write intents cleared"
kill -TERM "$spid"; wait "$spid"
echo "serve's log:"; sed 's/^/  /' serve.log
grep -q "fractured" serve.log || { echo "expected the NBD secondary to be fractured" >&2; exit 1; }
set +e
say "$m" status primary.img --check; rc=$?
set -e
[ "$rc" = 3 ] || { echo "expected status --check to exit 3 with the NBD secondary fractured" >&2; exit 1; }
remote
say "$m" resync primary.img
say "$m" verify primary.img
say "$m" status primary.img --check
kill "$qpid"; wait "$qpid" 2>/dev/null || true
# The host's data, read back through mirrorctl.
"$m" read primary.img --offset 16M --length 8M | cmp - <(head -c 8M /dev/zero | tr '\0' '\153')
dd if=payload.bin of=payload-now.bin bs=1M count=64 status=none
head -c 8M /dev/zero | tr '\0' '\132' | dd of=payload-now.bin conv=notrunc status=none
head -c 8M /dev/zero | tr '\0' '\153' | dd of=payload-now.bin bs=1M seek=16 conv=notrunc status=none

off=$("$m" status primary.img --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_offset"])')
size=$("$m" status primary.img --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_size"])')
echo; echo "comparing data areas ($size bytes at offset $off) of every leg:"
"$m" read primary.img --length 64M | cmp - payload-now.bin
for leg in secondary-a.img secondary-b.img secondary-c.img remote.img; do
  cmp -n "$size" <(tail -c +$((off + 1)) primary.img) <(tail -c +$((off + 1)) "$leg")
  echo "  $leg: identical to primary.img"
done
echo; echo "demo complete: all legs identical"
