#!/usr/bin/env bash
# Benchmarks mirrorctl against the tools admins use today (issue 5). Not part of `cargo test`.
#
#   bash tests/bench.sh                  # 2 GiB images, 3 repetitions, in /var/tmp/mirrorctl-bench
#   SIZE=512M REPS=5 BENCH_DIR=/srv/x bash tests/bench.sh
#   CASES="2 3" bash tests/bench.sh     # only some cases (numbers as printed; 3 is verify warm and cold)
#   CASES=11 RUNTIME=30 bash tests/bench.sh   # serve against qemu-nbd through fio's nbd engine
#                                             # (random cases: seconds per 10,000 writes)
#   CASES=12 bash tests/bench.sh        # TLS: an nbds secondary and serve with TLS, beside clear text
#   CASES=13 bash tests/bench.sh        # serve under strace: threads per 1,000 writes, syncs
#                                       # per flush; space used on a sparse 1 TiB mirror
#   CASES=14 bash tests/bench.sh        # attach of a loop-device mirror 5/50/100 % written
#                                       # (written map, W7) against whole-device copies
#   CASES=15 bash tests/bench.sh        # attach of a fresh loop-device mirror holding 280 KiB
#   CASES=16 bash tests/bench.sh        # reads cold and warm: serve vs qemu-nbd --cache=none and
#                                       # fio direct on a plain file (seconds per GiB / per
#                                       # 10,000 reads, and p99 in ms; lower is better)
#   CASES=17 bash tests/bench.sh        # random 4k writes over SIZE with --hot-extents 16 vs qemu-nbd
#   CASES=18 bash tests/bench.sh        # random 4k, a flush every 64, 2 secondaries vs disk limit / 3
#                                       # (flushing every 64, and at the rate fio sent serve;
#                                       # serve-rand-2f-64: serve sent about one every 64)
#   MIRRORCTL=/work/target-old/release/mirrorctl CASES=11 bash tests/bench.sh
#                                       # runs that binary (e.g. an older commit's) and builds
#                                       # nothing, to compare builds with the same bench
#   RESULTS_TO=/tmp/rows.tsv bash tests/bench.sh   # also appends the raw rows (case, tool,
#                                       # seconds) there, to combine several runs
#   REPS=1 FIRST_REP=2 ...              # numbers the repetitions from 2 (the order of peers
#                                       # alternates with the number), to interleave runs
#                                       # of two binaries: old, new, old, new, ...
#
# Builds the release binary, makes its own data, runs mirrorctl and the peers side by side in
# this one run, checks every result (cmp after each write and resync, exit codes of verify),
# and prints medians and ratios mirrorctl / peer. Figures swing between runs on a shared
# 2-core machine: compare the columns of one run, not runs with each other. It never fails on
# timing; it fails (exit 1) only when a result is wrong or a tool is missing.
set -euo pipefail

SIZE=${SIZE:-2G}
CASES=${CASES:-1 2 3 5 7 9 11 12}
REPS=${REPS:-3}
D=${BENCH_DIR:-/var/tmp/mirrorctl-bench}
root=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "bench: $*" >&2; exit 1; }
for t in qemu-img qemu-nbd nbdkit rsync cmp strace python3 fallocate b3sum fio nbdcopy openssl; do
    command -v "$t" >/dev/null || die "$t is missing: run tests/setup.sh (b3sum: apt-get install -y b3sum)"
done
[ "$(id -u)" = 0 ] || die "needs root (drop_caches)"

if [ -n "${MIRRORCTL:-}" ]; then
    [ -x "$MIRRORCTL" ] || die "MIRRORCTL=$MIRRORCTL is not an executable"
    bin=$(realpath "$MIRRORCTL")
else
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    bin="${CARGO_TARGET_DIR:-$root/target}/release/mirrorctl"
fi
rm -rf "$D"; mkdir -p "$D"; cd "$D"
# a copy, so a rebuild during the run cannot swap the binary under it
cp "$bin" "$D/mirrorctl"; M="$D/mirrorctl"
LOOPS=""
trap 'cd /; umount "$D/big" 2>/dev/null || true; for l in $LOOPS; do losetup -d "$l" 2>/dev/null || true; done; [ -z "${RESULTS_TO:-}" ] || [ ! -f "$D/results.tsv" ] || cat "$D/results.tsv" >>"$RESULTS_TO"; rm -rf "$D"' EXIT

bytes() { numfmt --from=iec "$1"; }
N=$(bytes "$SIZE")
RESULTS="$D/results.tsv"; : >"$RESULTS"
now() { date +%s.%N; }
# timed CASE TOOL CMD...: runs CMD once, appends the wall time in seconds.
timed() {
    local case=$1 tool=$2; shift 2
    local t0 t1; t0=$(now); "$@"; t1=$(now)
    echo -e "$case\t$tool\t$(awk "BEGIN{print $t1 - $t0}")" >>"$RESULTS"
}
dropcaches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
doff() { "$M" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_offset"])'; }
# same_data A B: the data areas of two mirrorctl images are equal byte for byte.
same_data() { cmp -s -i "$(doff "$1"):$(doff "$1")" -n "$N" "$1" "$2" || die "$1 and $2 differ: a wrong result"; }
want() { [[ " $CASES " == *" $1 "* ]]; }
# reps: the repetition numbers, FIRST_REP (default 1) on; even and odd ones run peers in the
# other order, so runs of REPS=1 with FIRST_REP=1, 2, ... alternate like one longer run
reps() { seq "${FIRST_REP:-1}" $((${FIRST_REP:-1} + REPS - 1)); }
note() { echo "== $*" >&2; }
note "binary: $bin ($("$M" --version 2>/dev/null || echo 'no --version'))"
# ok3 CMD...: runs mirrorctl where exit 3 (degraded: a leg is fractured) is expected too.
ok3() { "$M" "$@" || [ $? = 3 ] || die "mirrorctl $* failed"; }

note "preparing $SIZE of random input"
head -c "$N" /dev/urandom >input.bin
# pair: a mirror p.img + s1.img holding the input (made by case 1, or here when it was not run)
pair() {
    [ -f p.img ] && [ -f s1.img ] && return
    "$M" create p.img --size "$N" >/dev/null
    "$M" write p.img <input.bin
    "$M" attach p.img s1.img >/dev/null
}

# ---------------------------------------------------------------------------------------------
if want 1; then
note "case 1: mirrored write, pipe mode, 1 primary + 2 secondaries, pre-allocated, durable"
for r in $(reps); do
    rm -f x1 x2 x3; fallocate -l "$N" x1; fallocate -l "$N" x2; fallocate -l "$N" x3; sync
    three_dd() {
        for f in x1 x2 x3; do dd if=input.bin of=$f bs=4M conv=notrunc,fdatasync status=none & done
        wait
    }
    timed write "3 x dd fdatasync" three_dd
    cmp -s input.bin x3 || die "dd result differs"
    rm -f x1 x2 x3; sync
    tee_sync() { tee x1 x2 x3 <input.bin >/dev/null; sync; }
    timed write "tee + sync" tee_sync
    cmp -s input.bin x2 || die "tee result differs"
    rm -f x1 x2 x3 p.img s1.img s2.img
    meta=$((1 << 20))
    for f in p.img s1.img s2.img; do fallocate -l $((N + meta)) $f; done
    "$M" create p.img --force >/dev/null
    [ "$(doff p.img)" = "$meta" ] || die "data offset is not 1 MiB; adjust the bench"
    "$M" attach p.img s1.img --assume-clean >/dev/null
    "$M" attach p.img s2.img --assume-clean >/dev/null
    sync
    mwrite() { "$M" write p.img <input.bin; }
    timed write "mirrorctl" mwrite
    for f in s1.img s2.img; do same_data p.img $f; done
    cmp -s -i "$meta:0" p.img input.bin || die "primary differs from the input"
done
fi

# ---------------------------------------------------------------------------------------------
if want 2; then
note "case 2: initial sync of a full 2 GiB secondary; resync after 1 % of 64 KiB regions changed (scattered)"
regions=$((N / 65536)); changed=$((regions / 100))
pair
if [ -f s2.img ]; then "$M" detach p.img s2.img >/dev/null; rm -f s2.img; fi
for r in $(reps); do
    # a full initial sync (every region holds data) against whole-file copies
    rm -f dst.img s3.img; sync
    timed initial-sync "dd full copy" dd if=p.img of=dst.img bs=4M conv=fdatasync status=none
    cmp -s p.img dst.img || die "dd result differs"
    rm -f dst.img; sync
    cp_sync() { cp p.img dst.img && sync dst.img; }
    timed initial-sync "cp + sync" cp_sync
    cmp -s p.img dst.img || die "cp result differs"
    rm -f dst.img; sync
    timed initial-sync "mirrorctl attach" "$M" attach p.img s3.img
    same_data p.img s3.img
    "$M" detach p.img s3.img >/dev/null; rm -f s3.img
done
for r in $(reps); do
    ok3 fracture p.img s1.img >/dev/null
    cp --sparse=never p.img old.img
    python3 - "$regions" "$changed" "$r" >offsets.txt <<'EOF'
import random, sys
n, k, seed = map(int, sys.argv[1:])
random.seed(seed)
for i in sorted(random.sample(range(n), k)):
    print(i * 65536)
EOF
    head -c 65536 /dev/urandom >patch.bin
    while read -r off; do ok3 write p.img --offset "$off" --input patch.bin; done <offsets.txt
    sync
    # peers bring a copy of the old image up to date
    cp old.img dst.img; sync
    timed resync "rsync --inplace" rsync --inplace --no-whole-file --ignore-times p.img dst.img
    cmp -s p.img dst.img || die "rsync result differs"
    cp old.img dst.img; sync
    timed resync "dd full copy" dd if=p.img of=dst.img bs=4M conv=notrunc,fdatasync status=none
    cmp -s p.img dst.img || die "dd result differs"
    cp old.img dst.img; sync
    ideal() {
        python3 - p.img dst.img offsets.txt <<'EOF'
import os, sys
src = os.open(sys.argv[1], os.O_RDONLY); dst = os.open(sys.argv[2], os.O_WRONLY)
base = 1 << 20
for line in open(sys.argv[3]):
    off = base + int(line)
    os.pwrite(dst, os.pread(src, 65536, off), off)
os.fdatasync(dst)
EOF
    }
    timed resync "ideal (only the changed regions)" ideal
    cmp -s -i 1048576:1048576 p.img dst.img || die "ideal copy differs"
    timed resync "mirrorctl" "$M" resync p.img
    same_data p.img s1.img
done
rm -f old.img dst.img
fi

# ---------------------------------------------------------------------------------------------
if want 3; then
note "case 3: verify of 1 primary + 1 secondary, identical, warm cache"
pair
o=$(doff p.img)
img() { echo "driver=raw,offset=$o,size=$N,file.filename=$D/$1"; }
cat p.img s1.img >/dev/null
for r in $(reps); do
    timed verify-warm "cmp" cmp -i "$o:$o" -n "$N" p.img s1.img
    timed verify-warm "qemu-img compare" qemu-img compare -q --image-opts "$(img p.img)" "$(img s1.img)"
    b3both() { b3sum p.img s1.img >/dev/null; }
    timed verify-warm "b3sum both" b3both
    timed verify-warm "mirrorctl" "$M" verify p.img --no-progress
done

note "case 3 (cold): verify, cold cache"
for r in $(reps); do
    dropcaches; timed verify-cold "cat both data areas" sh -c 'cat p.img s1.img >/dev/null'
    dropcaches; timed verify-cold "cmp" cmp -i "$o:$o" -n "$N" p.img s1.img
    dropcaches; timed verify-cold "qemu-img compare" qemu-img compare -q --image-opts "$(img p.img)" "$(img s1.img)"
    dropcaches; timed verify-cold "mirrorctl" "$M" verify p.img --no-progress
done
fi

# ---------------------------------------------------------------------------------------------
if want 5; then
note "case 5/6: attach to a fresh 1 TiB sparse mirror; status and verify start-up on 16 TiB"
for r in $(reps); do
    rm -f t.img t2.img
    "$M" create t.img --size 1T >/dev/null
    timed attach-1T "mirrorctl" "$M" attach t.img t2.img
    # ext4 files stop at 16 TiB - 4 KiB, so the 16 TiB images live on a tmpfs (sparse there)
    mkdir -p big; mountpoint -q big || mount -t tmpfs -o size=1G tmpfs big
    rm -f big/h.img big/h2.img; "$M" create big/h.img --size 16T >/dev/null
    timed status-16T "mirrorctl" sh -c "'$M' status big/h.img >/dev/null"
    "$M" attach big/h.img big/h2.img --no-sync >/dev/null || [ $? = 3 ]
    timed verify-start-16T "mirrorctl (--max-time 1ms)" sh -c "'$M' verify big/h.img --max-time 1ms --json >/dev/null || true"
done
umount big; rm -f t.img t2.img
fi

# ---------------------------------------------------------------------------------------------
if want 7; then
note "case 7/8: syscall counts (strace -c -f)"
rm -f c.img c1.img c2.img
"$M" create c.img --size 2G >/dev/null
"$M" attach c.img c1.img >/dev/null; "$M" attach c.img c2.img >/dev/null
head -c 4096 /dev/urandom >4k.bin
syncs() { # prints "fdatasync fsync msync" counts of a command
    strace -f -c -e trace=fsync,fdatasync,msync,sync_file_range,syncfs -o strace.out "$@" >/dev/null
    python3 - <<'EOF'
import re
c = {"fsync": 0, "fdatasync": 0, "msync": 0}
for line in open("strace.out"):
    f = line.split()
    if len(f) >= 5 and f[-1] in c:
        c[f[-1]] = int(f[3])
print(c["fdatasync"], c["fsync"], c["msync"])
EOF
}
read -r fd fs ms < <(syncs "$M" write c.img --input 4k.bin --offset 1M)
same_data c.img c1.img
SYSC="single 4 KiB write, 1 primary + 2 secondaries: fdatasync $fd, fsync $fs, msync $ms (legs' data syncs: 3; metadata syncs beyond them: $((fd + fs + ms - 3)), target <= 2)"
head -c 1G /dev/urandom >1g.bin
read -r fd fs ms < <(syncs sh -c "'$M' write c.img --offset 1M <1g.bin")
same_data c.img c2.img
SYSC2="streaming 1 GiB through pipe mode: fdatasync $fd, fsync $fs, msync $ms (metadata syncs: msync $ms = one per $((1024 / (ms > 0 ? ms : 1))) MiB; target <= 64, one per 16 MiB)"
rm -f 1g.bin c.img c1.img c2.img
fi

# ---------------------------------------------------------------------------------------------
if want 9; then
note "case 9: mirrored write with a local secondary vs an NBD secondary (qemu-nbd, nbdkit; Unix socket)"
nbd_n=$(( N < 1073741824 ? N : 1073741824 ))
for r in $(reps); do
    rm -f n.img nl.img nr.img
    "$M" create n.img --size "$nbd_n" >/dev/null
    fallocate -l $((nbd_n + (1 << 20))) nl.img; fallocate -l $((nbd_n + (1 << 20))) nr.img
    "$M" attach n.img nl.img --assume-clean --force >/dev/null
    sync
    timed nbd-write "mirrorctl, local secondary" sh -c "head -c $nbd_n input.bin | '$M' write n.img"
    same_data n.img nl.img
    "$M" detach n.img nl.img >/dev/null
    qemu-nbd -f raw -k "$D/nbd.sock" --persistent -x exp nr.img & qpid=$!
    for _ in $(seq 50); do [ -S "$D/nbd.sock" ] && break; sleep 0.1; done
    "$M" attach n.img "nbd+unix:///exp?socket=$D/nbd.sock" --assume-clean --force >/dev/null \
        || { kill $qpid; die "attach over NBD failed"; }
    sync
    timed nbd-write "mirrorctl, NBD secondary" sh -c "head -c $nbd_n input.bin | '$M' write n.img"
    kill $qpid; wait $qpid 2>/dev/null || true; rm -f "$D/nbd.sock"
    same_data n.img nr.img
    # the same through nbdkit's file plugin (multi-threaded; qemu-nbd serves from one thread)
    "$M" detach n.img 0 >/dev/null
    nbdkit -f -U "$D/kit.sock" file "file=$D/nr.img" & kpid=$!
    for _ in $(seq 50); do [ -S "$D/kit.sock" ] && break; sleep 0.1; done
    "$M" attach n.img "nbd+unix:///?socket=$D/kit.sock" --assume-clean --force >/dev/null \
        || { kill $kpid; die "attach over NBD (nbdkit) failed"; }
    sync
    timed nbd-write "mirrorctl, NBD secondary on nbdkit" sh -c "head -c $nbd_n input.bin | '$M' write n.img"
    kill $kpid; wait $kpid 2>/dev/null || true; rm -f "$D/kit.sock"
    same_data n.img nr.img
done
rm -f n.img nl.img nr.img
fi

# ---------------------------------------------------------------------------------------------
# Helpers of the cases that serve (11, 17, 18).
if want 11 || want 17 || want 18; then
RUNTIME=${RUNTIME:-30}
# wait_sock PATH: until something listens there.
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return; sleep 0.05; done; die "nothing listens on $1"; }
# record CASE TOOL JSON...: appends "seconds per 10,000 writes" (10000 / the mean IOPS of
# the fio jobs whose JSON outputs are given), so that lower is better as for the times.
record() {
    local case=$1 tool=$2; shift 2
    python3 - "$case" "$tool" "$@" >>"$RESULTS" <<'PY'
import json, sys
case, tool, *files = sys.argv[1:]
# a fio stopped by a signal (a background job) writes a line before its JSON
iops = [json.loads((t := open(f).read())[t.index("{"):])["jobs"][0]["write"]["iops"] for f in files]
print(f"{case}\t{tool}\t{10000 / (sum(iops) / len(iops)):.4f}")
PY
}
# start_serve SECONDARIES [HOT]: a fresh mirror with that many file secondaries, served
# (with --hot-extents HOT when given).
start_serve() {
    rm -f sp.img ss*.img; fallocate -l $((N + (1 << 20))) sp.img
    "$M" create sp.img --force >/dev/null
    for i in $(seq "$1"); do
        fallocate -l $((N + (1 << 20))) "ss$i.img"
        "$M" attach sp.img "ss$i.img" --assume-clean --force >/dev/null
    done
    sync
    "$M" serve sp.img --socket "$D/serve.sock" ${2:+--hot-extents "$2"} 2>serve.log & spid=$!
    wait_sock "$D/serve.sock"
}
# stop_serve SECONDARIES: a clean stop; every leg checked equal to the primary.
stop_serve() {
    kill -TERM $spid; wait $spid || die "serve did not stop cleanly: $(cat serve.log)"
    for i in $(seq "$1"); do same_data sp.img "ss$i.img"; done
}
SURI="nbd+unix:///?socket=$D/serve.sock"
# start_qemu FILES...: one qemu-nbd (O_DIRECT, as a VM host would run it) per file.
start_qemu() {
    qpids=(); quris=(); local i=0
    for f in "$@"; do
        rm -f "$f"; fallocate -l "$N" "$f"
        qemu-nbd -f raw --cache=none -k "$D/q$i.sock" --persistent -x "" "$f" & qpids+=($!)
        wait_sock "$D/q$i.sock"; quris+=("nbd+unix:///?socket=$D/q$i.sock"); i=$((i + 1))
    done
    sync
}
stop_qemu() { kill "${qpids[@]}"; wait "${qpids[@]}" 2>/dev/null || true; rm -f "$D"/q*.sock q*.raw; }
fio_() { fio --name=b --ioengine=nbd --output-format=json "$@"; }
fi

# ---------------------------------------------------------------------------------------------
if want 11; then
note "case 11: hosts writing through serve vs qemu-nbd (fio, ioengine=nbd, Unix socket)"
SEQ=(--rw=write --bs=1M --iodepth=8 --size="$N" --end_fsync=1 --output=/dev/null)
RND=(--rw=randwrite --bs=4k --iodepth=16 --size="$N" --time_based --runtime="$RUNTIME" --fsync=64 --randrepeat=1)
for r in $(reps); do
    # Sequential 1 MiB writes, iodepth 8, the whole size: wall time. This VM's disk is
    # slower for whichever run follows the other tool's, so the order alternates.
    seq_q() {
        start_qemu q0.raw
        timed serve-seq-0 "qemu-nbd (raw file)" fio_ --uri="${quris[0]}" "${SEQ[@]}"
        stop_qemu
    }
    seq_s() { start_serve 0; timed serve-seq-0 "mirrorctl serve, no secondary" fio_ --uri="$SURI" "${SEQ[@]}"; stop_serve 0; }
    if [ $((r % 2)) = 1 ]; then seq_q; seq_s; else seq_s; seq_q; fi
    rm -f x1 x2 x3; fallocate -l "$N" x1; fallocate -l "$N" x2; fallocate -l "$N" x3; sync
    three_dd11() { for f in x1 x2 x3; do dd if=input.bin of=$f bs=1M conv=notrunc,fdatasync status=none & done; wait; }
    timed serve-seq-2 "3 x dd fdatasync" three_dd11
    rm -f x1 x2 x3
    start_serve 2; timed serve-seq-2 "mirrorctl serve, 2 secondaries" fio_ --uri="$SURI" "${SEQ[@]}"; stop_serve 2
    # Random 4 KiB writes, iodepth 16, a flush every 64 writes, RUNTIME seconds: IOPS.
    start_qemu q0.raw
    fio_ --uri="${quris[0]}" "${RND[@]}" --output=r0.json; record serve-rand-0 "qemu-nbd (raw file)" r0.json
    stop_qemu
    start_serve 0; fio_ --uri="$SURI" "${RND[@]}" --output=r1.json; stop_serve 0
    record serve-rand-0 "mirrorctl serve, no secondary" r1.json
    start_qemu q0.raw q1.raw
    fio_ --uri="${quris[0]}" "${RND[@]}" --output=r2.json & f1=$!
    fio_ --uri="${quris[1]}" "${RND[@]}" --output=r3.json & f2=$!
    wait $f1 $f2
    record serve-rand-1 "2 x qemu-nbd, a job each (per job)" r2.json r3.json
    stop_qemu
    # The same with the secondary fractured (live) for the run: every write sets its bits in
    # the leg's log (H6). Beside a run with it in sync; the order alternates.
    rand_in_sync() {
        start_serve 1; fio_ --uri="$SURI" "${RND[@]}" --output=r4.json; stop_serve 1
        record serve-rand-1 "mirrorctl serve, 1 secondary" r4.json
    }
    rand_fractured() {
        start_serve 1; ok3 fracture sp.img ss1.img >/dev/null
        fio_ --uri="$SURI" "${RND[@]}" --output=r5.json
        kill -TERM $spid; wait $spid || die "serve did not stop cleanly: $(cat serve.log)"
        # the leg's log must hold every region written: a resync makes it equal
        "$M" resync sp.img >/dev/null || die "resync after serve-rand-1f failed"
        same_data sp.img ss1.img
    }
    if [ $((r % 2)) = 1 ]; then rand_in_sync; rand_fractured; else rand_fractured; rand_in_sync; fi
    record serve-rand-1f "serve, 1 secondary in sync (the serve-rand-1 run)" r4.json
    record serve-rand-1f "mirrorctl serve, 1 secondary fractured" r5.json

    # Live resync of a whole fractured leg: the secondary fractured through the control
    # socket, SIZE written through serve (as SEQ), then `mirrorctl resync` carried out by
    # serve with no host I/O. Beside dd of the primary's data area to a fresh file, and the
    # offline resync of the same amount (serve stopped, fracture, write, resync). Caches
    # dropped before each; every target is freshly pre-allocated (unwritten extents);
    # dd and the live resync alternate.
    dd_ref() {
        rm -f x; fallocate -l "$N" x; dropcaches
        timed serve-resync "dd of the data area (fdatasync)" dd if=sp.img of=x bs=1M conv=notrunc,fdatasync \
            iflag=skip_bytes,count_bytes skip="$o" count="$N" status=none
        cmp -s -i "$o:0" -n "$N" sp.img x || die "dd result differs"
        rm -f x
    }
    live_resync() { # CASE TOOL: times a live resync of ss1 (fractured, its log full)
        dropcaches
        timed "$1" "$2" sh -c "'$M' resync sp.img >/dev/null"
    }
    start_serve 1; ok3 fracture sp.img ss1.img >/dev/null
    fio_ --uri="$SURI" "${SEQ[@]}"
    o=$(doff sp.img)
    if [ $((r % 2)) = 1 ]; then dd_ref; fi
    live_resync serve-resync "mirrorctl resync, live (serve, no host I/O)"
    idle_live=$(tail -n1 "$RESULTS" | cut -f3)
    if [ $((r % 2)) = 0 ]; then dd_ref; fi
    stop_serve 1
    # offline: the leg's data area made fresh again (punched, pre-allocated), as for the live run
    ok3 fracture sp.img ss1.img >/dev/null
    ok3 write sp.img --input input.bin >/dev/null
    fallocate --punch-hole -o "$o" -l "$N" ss1.img; fallocate -o "$o" -l "$N" ss1.img
    dropcaches
    timed serve-resync "offline resync (serve stopped)" "$M" resync sp.img >/dev/null
    same_data sp.img ss1.img

    # The same live resync while fio writes 4 KiB at random through serve (iodepth 16, a
    # flush every 64 writes) for its whole length: its time, and the hosts' IOPS meanwhile
    # (seconds per 10,000 writes), beside the same random writes for as long right after,
    # the leg in sync (the same written blocks: fresh pre-allocated ones are slower).
    start_serve 1; ok3 fracture sp.img ss1.img >/dev/null
    fio_ --uri="$SURI" "${SEQ[@]}"
    fio_ --uri="$SURI" "${RND[@]}" --runtime=3600 --ramp_time=1 --thread --output=r6.json \
        2>fio-busy.err & fpid=$!
    sleep 1.5
    live_resync serve-resync-busy "mirrorctl resync, live, hosts writing 4k random"
    kill -TERM $fpid; wait $fpid || true
    busy=$(tail -n1 "$RESULTS" | cut -f3)
    fio_ --uri="$SURI" "${RND[@]}" --runtime="$(awk "BEGIN{print int($busy + 1.5)}")" --output=r7.json
    stop_serve 1
    echo -e "serve-resync-busy\tlive resync, no host I/O (the serve-resync run)\t$idle_live" >>"$RESULTS"
    record serve-resync-busy-io "serve, same mirror in sync right after, as long" r7.json
    record serve-resync-busy-io "mirrorctl serve, hosts writing during the live resync" r6.json
done
rm -f sp.img ss*.img r?.json x fio-busy.err
fi

# ---------------------------------------------------------------------------------------------
if want 12; then
note "case 12: TLS (TCP loopback): an nbds secondary on qemu-nbd, and serve with TLS, beside clear text"
# One CA, a server pair for 127.0.0.1 and a client pair, in the names qemu and libnbd look for.
bash "$root/tests/tls-certs.sh" "$D/pki" || die "making certificates failed"
P="$D/pki"
tls_n=$(( N < 1073741824 ? N : 1073741824 ))
head -c "$tls_n" input.bin >tls-in.bin
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; die "nothing listens on port $1"; }
for r in $(reps); do
    rm -f t.img tr.img
    "$M" create t.img --size "$tls_n" >/dev/null
    fallocate -l $((tls_n + (1 << 20))) tr.img
    # The same export, once in clear text and once over TLS (client certificate checked).
    pt=$(port)
    qemu-nbd -f raw --persistent --shared=4 -x exp -b 127.0.0.1 -p "$pt" tr.img & qpid=$!
    wait_port "$pt"
    "$M" attach t.img "nbd://127.0.0.1:$pt/exp" --assume-clean --force >/dev/null || die "attach (clear) failed"
    sync
    timed tls-nbd-write "clear-text NBD secondary (same qemu-nbd, TCP)" sh -c "head -c $tls_n input.bin | '$M' write t.img"
    "$M" detach t.img 0 >/dev/null
    kill $qpid; wait $qpid 2>/dev/null || true
    same_data t.img tr.img
    pt=$(port)
    qemu-nbd --object "tls-creds-x509,id=tls0,dir=$P,endpoint=server,verify-peer=yes" --tls-creds tls0 \
        -f raw --persistent --shared=4 -x exp -b 127.0.0.1 -p "$pt" tr.img & qpid=$!
    wait_port "$pt"
    "$M" attach t.img "nbds://127.0.0.1:$pt/exp" --tls-ca "$P/ca-cert.pem" --tls-cert "$P/client-cert.pem" \
        --tls-key "$P/client-key.pem" --assume-clean --force >/dev/null || die "attach over TLS failed"
    sync
    timed tls-nbd-write "mirrorctl, NBD secondary over TLS" sh -c "head -c $tls_n input.bin | '$M' write t.img"
    "$M" detach t.img 0 >/dev/null
    kill $qpid; wait $qpid 2>/dev/null || true
    same_data t.img tr.img

    # Hosts writing through a TLS export: nbdcopy into serve (mutual TLS, 1 local secondary),
    # into the same serve in clear text, and into qemu-nbd with the same certificates.
    fallocate -l $((tls_n + (1 << 20))) ts.img
    "$M" attach t.img ts.img --assume-clean --force >/dev/null
    pt=$(port)
    "$M" serve t.img --listen "127.0.0.1:$pt" 2>serve.log & spid=$!
    wait_port "$pt"
    sync
    timed tls-serve-write "clear-text serve, same mirror (nbdcopy in)" \
        nbdcopy tls-in.bin "nbd://127.0.0.1:$pt/"
    kill -TERM $spid; wait $spid || die "serve did not stop cleanly: $(cat serve.log)"
    pt=$(port)
    "$M" serve t.img --listen "127.0.0.1:$pt" --tls-cert "$P/server-cert.pem" --tls-key "$P/server-key.pem" \
        --tls-ca "$P/ca-cert.pem" 2>serve.log & spid=$!
    wait_port "$pt"
    sync
    timed tls-serve-write "mirrorctl serve with TLS, 1 secondary (nbdcopy in)" \
        nbdcopy tls-in.bin "nbds://127.0.0.1:$pt/?tls-certificates=$P"
    kill -TERM $spid; wait $spid || die "serve did not stop cleanly: $(cat serve.log)"
    same_data t.img ts.img
    cmp -s -i "0:$(doff t.img)" -n "$tls_n" tls-in.bin t.img || die "served data differs from the input"
    pt=$(port)
    qemu-nbd --object "tls-creds-x509,id=tls0,dir=$P,endpoint=server,verify-peer=yes" --tls-creds tls0 \
        -f raw --persistent -x "" -b 127.0.0.1 -p "$pt" tr.img & qpid=$!
    wait_port "$pt"
    sync
    timed tls-serve-write "qemu-nbd with TLS (raw file, nbdcopy in)" \
        nbdcopy tls-in.bin "nbds://127.0.0.1:$pt/?tls-certificates=$P"
    kill $qpid; wait $qpid 2>/dev/null || true
    rm -f ts.img
done
rm -f t.img tr.img ts.img serve.log tls-in.bin
fi

# ---------------------------------------------------------------------------------------------
if want 13; then
note "case 13: serve's system calls per write and flush (strace -f -c), and a sparse 1 TiB mirror's space"
# count13 NAME: the calls of NAME in strace.out (strace -c), 0 when absent.
count13() { awk -v n="$1" '$NF == n { print $4 }' strace.out | head -1 | grep . || echo 0; }
# serve13 SIZE SECONDARIES FIO-ARGS...: serve a fresh sparse mirror under strace, fio through it.
serve13() {
    local size=$1 n=$2; shift 2
    rm -f tp.img ts*.img
    "$M" create tp.img --size "$size" >/dev/null
    for i in $(seq "$n"); do "$M" attach tp.img "ts$i.img" >/dev/null; done
    strace -f -c -e trace=clone,clone3,fdatasync,fsync,msync -o strace.out \
        "$M" serve tp.img --socket "$D/t13.sock" 2>serve13.log & local tp=$!
    wait_sock13 "$D/t13.sock"
    fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$D/t13.sock" --output=/dev/null "$@"
    kill -TERM "$(pgrep -P $tp)"; wait $tp || die "serve under strace failed: $(cat serve13.log)"
    grep -q "the mirror is healthy" serve13.log || die "a leg failed: $(cat serve13.log)"
}
wait_sock13() { for _ in $(seq 200); do [ -S "$1" ] && return; sleep 0.05; done; die "nothing listens on $1"; }
serve13 2G 2 --rw=randwrite --bs=4k --iodepth=16 --size=2G --number_ios=16384 --fsync=64
fl=$(sed -n 's/.* \([0-9]*\) flushes\( (\([0-9]*\) with nothing to sync)\)\?.*/\1 \3/p' serve13.log)
read -r flushes skipped <<<"$fl"; skipped=${skipped:-0}
th=$(( $(count13 clone) + $(count13 clone3) )); fds=$(count13 fdatasync)
SYS13="16,384 random 4 KiB writes through serve, 2 secondaries, fio iodepth 16, --fsync=64: $th threads started ($((th * 1000 / 16384)) per 1,000 writes), $flushes flushes of which $skipped had nothing to sync, fdatasync $fds ($(awk "BEGIN{d=$flushes-$skipped; printf \"%.2f\", d ? $fds/d : 0}") per flush that synced; 3 legs)"
# The same spread over a sparse 1 TiB (200 x the default hot set): the file system's space
# used must follow the blocks written (issue 28 saw ENOSPC on legs with tens of GB free).
before=$(df -B1 --output=used . | tail -1)
serve13 1T 2 --rw=randwrite --bs=4k --iodepth=16 --size=1T --number_ios=16384 --fsync=64
after=$(df -B1 --output=used . | tail -1)
SYS13B="the same over a sparse 1 TiB mirror: $(( (after - before) >> 20 )) MiB more used for $((3 * 16384 * 4 / 1024)) MiB written to 3 legs, every leg in sync after the stop"
rm -f tp.img ts*.img strace.out serve13.log
fi

# ---------------------------------------------------------------------------------------------
# loop14 FILE: a loop device over a new sparse FILE of N + 16 MiB (the metadata), detached at exit.
loop14() {
    rm -f "$1"; truncate -s $((N + 16 * 1048576)) "$1"
    local l; l=$(losetup --find --show "$1"); LOOPS="$LOOPS $l"; echo "$l"
}
unloop14() { losetup -d "$1"; LOOPS=${LOOPS/ $1/}; }
# same14 DEV FILE: the data areas of the mirror on DEV and its copy FILE are equal.
same14() { local o; o=$(doff "$1"); cmp -s -i "$o:$o" -n "$N" "$1" "$2" || die "$1 and $2 differ: a wrong result"; }
if want 14; then
note "case 14: attach of a mirror on a loop device with 5, 50 and 100 % of it written, against copies of the whole device"
for pct in 5 50 100; do
    lp=$(loop14 p14.raw)
    "$M" create "$lp" >/dev/null
    w=$((N * pct / 100 / 1048576 * 1048576))
    head -c "$w" /dev/urandom >in14.bin
    ok3 write "$lp" --input in14.bin >/dev/null
    rm -f in14.bin; sync
    # One untimed read first: on a VM the first read of freshly written blocks is slow
    # whatever does it (2 s where the next takes 0.8 s for 512 MiB, cp as much as attach),
    # and would be charged to whichever tool ran first.
    dropcaches; cat "$lp" >/dev/null
    for r in $(reps); do
        rm -f dst.img; dropcaches
        timed "attach-${pct}pct" "mirrorctl attach" "$M" attach "$lp" dst.img >/dev/null
        same14 "$lp" dst.img
        "$M" detach "$lp" dst.img >/dev/null; rm -f dst.img; dropcaches
        cp_sync14() { cp "$lp" dst.img && sync dst.img; }
        timed "attach-${pct}pct" "cp + sync" cp_sync14
        rm -f dst.img; dropcaches
        timed "attach-${pct}pct" "qemu-img convert" qemu-img convert -f raw -O raw -t none "$lp" dst.img
        rm -f dst.img; dropcaches
        truncate -s $((N + 16 * 1048576)) dst.img
        timed "attach-${pct}pct" "nbdcopy" nbdcopy "$lp" dst.img
        rm -f dst.img
    done
    unloop14 "$lp"; rm -f p14.raw
done
fi
if want 15; then
note "case 15: attach of a fresh mirror on a loop device holding 280 KiB (written map: only that is copied)"
lp=$(loop14 p15.raw)
"$M" create "$lp" >/dev/null
head -c $((280 * 1024)) /dev/urandom >in15.bin
ok3 write "$lp" --input in15.bin --offset $((N / 3 / 65536 * 65536)) >/dev/null
for r in $(reps); do
    rm -f dst.img; truncate -s $((N + 16 * 1048576)) dst.img; dropcaches
    timed attach-loop-fresh "mirrorctl attach" "$M" attach "$lp" dst.img >/dev/null
    same14 "$lp" dst.img
    USED15="a fresh $SIZE loop-device mirror holding 280 KiB: the attached sparse secondary uses $(du -k dst.img | cut -f1) KiB"
    "$M" detach "$lp" dst.img >/dev/null; rm -f dst.img; dropcaches
    cp_sync15() { cp "$lp" dst.img && sync dst.img; }
    timed attach-loop-fresh "cp + sync" cp_sync15
    rm -f dst.img
done
rm -f in15.bin; unloop14 "$lp"; rm -f p15.raw
fi

# ---------------------------------------------------------------------------------------------
if want 16; then
note "case 16: reads cold and warm: serve vs qemu-nbd --cache=none and fio direct on a plain file (fio, nbd engine)"
RUNTIME=${RUNTIME:-30}
wait_sock16() { for _ in $(seq 200); do [ -S "$1" ] && return; sleep 0.05; done; die "nothing listens on $1"; }
# record16 CASE TOOL JSON: appends seconds per GiB (sequential) or per 10,000 reads (random),
# so that lower is better as for the times; and the p99 completion latency in ms under
# CASE-p99.
record16() {
    python3 - "$@" >>"$RESULTS" <<'PY'
import json, sys
case, tool, f = sys.argv[1:]
t = open(f).read(); r = json.loads(t[t.index("{"):])["jobs"][0]["read"]
per = 1024 * 1024 / r["bw"] if case.startswith("read-seq") else 10000 / r["iops"]
print(f"{case}\t{tool}\t{per:.4f}")
print(f"{case}-p99\t{tool}\t{r['clat_ns']['percentile']['99.000000'] / 1e6:.3f}")
PY
}
# The same data in three places: a mirror's primary (served), a raw file (qemu-nbd), a
# plain file (fio direct: the disk's limit).
rm -f rp.img rq.raw rf.raw
fallocate -l $((N + (1 << 20))) rp.img
"$M" create rp.img --force >/dev/null
"$M" write rp.img <input.bin
cp input.bin rq.raw; cp input.bin rf.raw; sync
RSEQ=(--rw=read --bs=1M --iodepth=8 --size="$N")
RRND=(--rw=randread --bs=4k --iodepth=16 --size="$N" --time_based --runtime="$RUNTIME" --randrepeat=1)
# warm16 FIO-ARGS...: cold: caches dropped; warm: one untimed pass of the same reads first.
warm16() {
    if [ "$temp" = cold ]; then dropcaches; else fio --name=b "$@" --output=/dev/null; fi
}
# read16 CASE TEMP ARGS...: each tool once (caches dropped first when TEMP is cold; warm:
# one untimed pass first), in the order the repetition number gives.
read16() {
    local case=$1 temp=$2; shift 2
    local k
    one16() {
        local tool=$1; shift
        case $tool in
        serve)
            rm -f "$D/r.sock"; "$M" serve rp.img --socket "$D/r.sock" 2>serve16.log & local sp=$!
            wait_sock16 "$D/r.sock"
            warm16 --ioengine=nbd --uri="nbd+unix:///?socket=$D/r.sock" "$@"
            fio --name=b --output-format=json --ioengine=nbd --uri="nbd+unix:///?socket=$D/r.sock" "$@" --output=r16.json
            kill -TERM $sp; wait $sp || die "serve did not stop cleanly: $(cat serve16.log)"
            record16 "$case-$temp" "mirrorctl serve" r16.json ;;
        qemu)
            rm -f "$D/rq.sock"; qemu-nbd -f raw --cache=none -k "$D/rq.sock" --persistent -x "" rq.raw & local qp=$!
            wait_sock16 "$D/rq.sock"
            warm16 --ioengine=nbd --uri="nbd+unix:///?socket=$D/rq.sock" "$@"
            fio --name=b --output-format=json --ioengine=nbd --uri="nbd+unix:///?socket=$D/rq.sock" "$@" --output=r16.json
            kill $qp; wait $qp 2>/dev/null || true
            record16 "$case-$temp" "qemu-nbd --cache=none (raw file)" r16.json ;;
        disk)
            warm16 --ioengine=libaio --direct=1 --filename=rf.raw "$@"
            fio --name=b --output-format=json --ioengine=libaio --direct=1 --filename=rf.raw "$@" --output=r16.json
            record16 "$case-$temp" "fio direct, plain file (the disk's limit)" r16.json ;;
        esac
    }
    if [ $((r % 2)) = 1 ]; then k="qemu serve disk"; else k="disk serve qemu"; fi
    for tool in $k; do one16 "$tool" "$@"; done
}
for r in $(reps); do
    for temp in cold warm; do
        read16 read-seq "$temp" "${RSEQ[@]}"
        read16 read-rand "$temp" "${RRND[@]}"
    done
done
rm -f rp.img rq.raw rf.raw r16.json serve16.log
fi

# ---------------------------------------------------------------------------------------------
if want 17; then
# Random 4 KiB writes, iodepth 16, no flush, spread over the whole SIZE with the smallest
# hot set (16 extents, 64 MiB: SIZE=2G is 32 x the hot set, 256M 4 x): every write but one
# in SIZE/64M needs a cold extent, so activity-log transactions are what is measured.
note "case 17: random 4k writes over SIZE with --hot-extents 16, serve vs qemu-nbd --cache=none"
RUNTIME=${RUNTIME:-30}
RND17=(--rw=randwrite --bs=4k --iodepth=16 --size="$N" --time_based --runtime="$RUNTIME" --randrepeat=1)
for r in $(reps); do
    q17() { start_qemu q0.raw; fio_ --uri="${quris[0]}" "${RND17[@]}" --output=r17q.json; stop_qemu
        record serve-rand-cold "qemu-nbd (raw file)" r17q.json; }
    s17() { start_serve 0 16; fio_ --uri="$SURI" "${RND17[@]}" --output=r17s.json; stop_serve 0
        record serve-rand-cold "mirrorctl serve, no secondary, --hot-extents 16" r17s.json; }
    if [ $((r % 2)) = 1 ]; then q17; s17; else s17; q17; fi
done
rm -f sp.img ss*.img r17?.json
fi

if want 18; then
# Random 4 KiB writes, iodepth 16, a flush every 64, 2 secondaries (3 legs on this one
# disk), beside the disk's limit: fio direct (O_DIRECT) on a plain file, whose IOPS / 3 is
# what three copies on one disk can do. fio's nbd engine does not keep --fsync=64 at
# iodepth 16 (it sent a flush every 4 to 5 writes here; libaio one every 64), so the disk's
# limit is also measured at the flush rate serve was sent (writes per flush of its run).
note "case 18: random 4k writes with a flush every 64, 2 secondaries, vs fio direct on a plain file / 3"
RUNTIME=${RUNTIME:-30}
RND18=(--rw=randwrite --bs=4k --iodepth=16 --size="$N" --time_based --runtime="$RUNTIME" --randrepeat=1)
for r in $(reps); do
    # d18 EVERY TOOL [CASE]: the plain file's IOPS / 3 with a flush every EVERY writes.
    d18() { rm -f x18; fallocate -l "$N" x18; sync
        fio --name=b --ioengine=libaio --direct=1 --filename=x18 --output-format=json "${RND18[@]}" --fsync="$1" --output=r18d.json
        rm -f x18
        python3 - r18d.json "$2" "${3:-serve-rand-2f}" >>"$RESULTS" <<'PY'
import json, sys
iops = json.load(open(sys.argv[1]))["jobs"][0]["write"]["iops"]
print(f"{sys.argv[3]}\t{sys.argv[2]}\t{10000 / (iops / 3):.4f}")
PY
    }
    s18() { start_serve 2 1237; fio_ --uri="$SURI" "${RND18[@]}" --fsync=64 --output=r18s.json; stop_serve 2
        record serve-rand-2f "mirrorctl serve, 2 secondaries" r18s.json
        EVERY18=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(max(1, round(j["write"]["total_ios"] / max(1, j["sync"]["total_ios"]))))' r18s.json)
        SYS18="fio's nbd engine with --fsync=64 at iodepth 16 sent serve a flush every $EVERY18 writes (libaio: every 64)"; }
    # The same writes with serve really sent a flush every 64 or so: fio's nbd engine
    # asked for one every 1024 sends about that (its JSON counts them; printed below).
    s18b() { start_serve 2 1237; fio_ --uri="$SURI" "${RND18[@]}" --fsync=1024 --output=r18t.json; stop_serve 2
        record serve-rand-2f-64 "mirrorctl serve, 2 secondaries, fio --fsync=1024" r18t.json
        EVERYB=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(max(1, round(j["write"]["total_ios"] / max(1, j["sync"]["total_ios"]))))' r18t.json)
        SYS18B="fio's nbd engine with --fsync=1024 sent serve a flush every $EVERYB writes (serve-rand-2f-64)"; }
    d64() { d18 64 "disk limit / 3 (fio direct on a plain file, libaio, a flush every 64)"
        sed -n '$p' "$RESULTS" | sed 's/^serve-rand-2f\t/serve-rand-2f-64\t/' >>"$RESULTS"; }
    dsame() { d18 "$EVERY18" "disk limit / 3 at serve's flush rate (fio direct, libaio)"; }
    if [ $((r % 2)) = 1 ]; then d64; s18; dsame; s18b; else s18b; s18; dsame; d64; fi
done
rm -f sp.img ss*.img r18?.json
fi

# ---------------------------------------------------------------------------------------------
python3 - "$RESULTS" "$SIZE" "$REPS" <<'EOF'
import sys, statistics, collections
path, size, reps = sys.argv[1:]
rows = collections.OrderedDict()
for line in open(path):
    case, tool, t = line.rstrip("\n").split("\t")
    rows.setdefault(case, collections.OrderedDict()).setdefault(tool, []).append(float(t))
print(f"\nmirrorctl benchmark: {size} images, {reps} repetitions, medians in seconds\n")
print("| case | tool | median s | mirrorctl / tool |")
print("|---|---|---:|---:|")
for case, tools in rows.items():
    mine = [v for k, v in tools.items() if k.startswith("mirrorctl")]
    m = statistics.median(mine[0]) if len(mine) == 1 else None
    for tool, ts in tools.items():
        med = statistics.median(ts)
        ratio = "" if m is None or tool.startswith("mirrorctl") else f"{m / med:.2f}"
        print(f"| {case} | {tool} | {med:.3f} | {ratio} |")
EOF
if want 7; then
    echo
    echo "- $SYSC"
    echo "- $SYSC2"
fi
if want 13; then
    echo
    echo "- $SYS13"
    echo "- $SYS13B"
fi
if want 15; then
    echo
    echo "- $USED15"
fi
if want 18; then
    echo
    echo "- $SYS18"
    echo "- $SYS18B"
fi
