//! What the hot paths cost in system calls (issue 28), counted with strace on the real
//! binary: thread creations and syncs per host write and flush under `serve`.

use crate::support::*;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `mirrorctl serve` under `strace -f`, one line per traced call in a file; the serve
/// process (strace's child) stopped with SIGTERM, strace killed on drop.
struct Traced {
    strace: Option<Child>,
    trace: PathBuf,
    log: PathBuf,
    sock: PathBuf,
}

impl Traced {
    fn start(fx: &Fx, calls: &str, extra: &[&str]) -> Traced {
        require("strace", "strace");
        let trace = fx.path("trace.txt");
        let log = fx.path("serve-traced.log");
        let sock = fx.path("traced.sock");
        let strace = Command::new("strace")
            .args(["-f", "-qq", "-y", "-e", calls, "-o"])
            .arg(&trace)
            .arg(bin())
            .args(["serve", "a.img", "--socket"])
            .arg(&sock)
            .args(extra)
            .current_dir(fx.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting strace");
        let mut t = Traced {
            strace: Some(strace),
            trace,
            log,
            sock,
        };
        let started = Instant::now();
        let log = text_of(&t.log);
        while UnixStream::connect(&t.sock).is_err() {
            let strace = t.strace.as_mut().unwrap();
            still_starting(
                "serve under strace",
                strace,
                started,
                Duration::from_secs(20),
                &log,
            );
        }
        t
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The trace so far (its length marks a point in time).
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM to serve; its exit status must be 0. The whole trace (read once strace has
    /// exited: it buffers its output, and a trace read while it runs may end early) and the
    /// serve log.
    fn stop(mut self) -> (Vec<String>, String) {
        let mut c = self.strace.take().unwrap();
        let serve = sh("pgrep", &["-P", &c.id().to_string()]);
        // SAFETY: kill(2) on the serve process strace started for this test.
        unsafe { libc::kill(serve.parse().unwrap(), libc::SIGTERM) };
        let st = c.wait().unwrap();
        assert!(st.success(), "serve under strace: {st}\n{}", self.log());
        (self.lines(), self.log())
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(mut c) = self.strace.take() {
            // strace kills its tracee when it is killed (-f keeps no orphan running).
            if let Ok(p) = Command::new("pgrep")
                .args(["-P", &c.id().to_string()])
                .output()
            {
                for pid in String::from_utf8_lossy(&p.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on the serve process this test started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs qemu-io with `cmds` on `uri` (write-back cache: a flush only where asked).
fn qemu_io(uri: &str, cmds: &[String]) {
    require("qemu-io", "qemu-utils");
    let mut a = vec![
        "-f".to_string(),
        "raw".into(),
        "-t".into(),
        "writeback".into(),
    ];
    for c in cmds {
        a.push("-c".into());
        a.push(c.clone());
    }
    a.push(uri.into());
    let o = Command::new("qemu-io")
        .args(&a)
        .output()
        .expect("running qemu-io");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !out.contains("failed"),
        "qemu-io: {}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A read of `len` bytes: it shows in the trace as a `pread64` of that length, marking
/// where the commands before it have finished (qemu-io runs them one after the other).
fn marker(len: u64) -> String {
    format!("read 0 {len}")
}

/// The trace lines between the markers of `from` and `to` bytes.
fn between(lines: &[String], from: u64, to: u64) -> Vec<String> {
    let at = |len: u64| {
        lines
            .iter()
            .position(|l| l.contains("pread64") && l.contains(&format!(", {len}, ")))
            .unwrap_or_else(|| panic!("no read of {len} bytes in the trace:\n{}", lines.join("\n")))
    };
    lines[at(from) + 1..at(to)].to_vec()
}

/// Calls of `name` started in `lines` (a call strace splits across threads shows as
/// "name(... <unfinished ...>" and "<... name resumed>": counted once).
fn count(lines: &[String], names: &[&str]) -> usize {
    lines
        .iter()
        .filter(|l| {
            names.iter().any(|n| {
                l.split_once(' ')
                    .map_or(l.as_str(), |(_, rest)| rest)
                    .trim_start()
                    .starts_with(&format!("{n}("))
            })
        })
        .count()
}

const THREADS: &[&str] = &["clone", "clone3", "fork", "vfork"];
const SYNCS: &[&str] = &["fsync", "fdatasync", "msync", "sync_file_range", "syncfs"];

fn image_syncs(lines: &[String], img: &Path) -> usize {
    let name = img.file_name().unwrap().to_str().unwrap();
    let mine: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(&format!("/{name}>")))
        .cloned()
        .collect();
    count(&mine, SYNCS)
}

#[test]
fn served_writes_and_flushes_start_no_threads_and_a_flush_syncs_each_leg_once_or_not_at_all_with_nothing_written(
) {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    let t = Traced::start(
        &fx,
        "trace=clone,clone3,fork,vfork,fsync,fdatasync,msync,sync_file_range,syncfs,pread64",
        &[],
    );
    // Warm-up: the 8 extents of the first 32 MiB made hot, one large request, a flush.
    let mut cmds: Vec<String> = (0..8u64)
        .map(|e| format!("write -P 1 {} 4k", e * 4 * MIB))
        .collect();
    cmds.push(format!("write -P 2 {} 1M", 8 * MIB));
    cmds.push("flush".into());
    cmds.push(marker(12 * KIB));
    // 1,000 random 4 KiB writes in the hot 32 MiB with a flush every 64 (and one at the
    // end): 16 flushes with something to sync; then 16 requests of 1 MiB (written to the
    // legs in parallel) and a flush: 17.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut nonempty = 0;
    for i in 1..=1000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % (32 * MIB / 4096)) * 4096;
        cmds.push(format!("write -P {} {off} 4k", i % 250));
        if i % 64 == 0 || i == 1000 {
            cmds.push("flush".into());
            nonempty += 1;
        }
    }
    for i in 0..16u64 {
        cmds.push(format!("write -P 3 {} 1M", (i % 30) * MIB));
    }
    cmds.push("flush".into());
    nonempty += 1;
    cmds.push(marker(20 * KIB));
    // Then flushes with nothing written since the last: no sync at all.
    for _ in 0..8 {
        cmds.push("flush".into());
    }
    cmds.push(marker(28 * KIB));
    qemu_io(&t.uri(), &cmds);
    let (lines, log) = t.stop();
    let busy = &between(&lines, 12 * KIB, 20 * KIB);
    let idle = &between(&lines, 20 * KIB, 28 * KIB);

    let threads = count(busy, THREADS);
    assert!(
        threads <= 2,
        "{threads} threads started for 1,016 writes and {nonempty} flushes (a thread per flush or large request?):\n{}",
        busy.join("\n")
    );
    // One sync per leg (the primary and 2 secondaries) per flush with something to sync.
    for img in ["a.img", "b.img", "c.img"] {
        assert_eq!(
            image_syncs(busy, &fx.path(img)),
            nonempty,
            "syncs of {img} for {nonempty} flushes:\n{}",
            busy.join("\n")
        );
    }
    assert_eq!(
        count(busy, SYNCS),
        3 * nonempty,
        "no other sync:\n{}",
        busy.join("\n")
    );
    assert_eq!(
        count(idle, SYNCS),
        0,
        "flushes with nothing written since the last synced:\n{}",
        idle.join("\n")
    );
    assert_eq!(count(idle, THREADS), 0, "{}", idle.join("\n"));
    assert!(log.contains("with nothing to sync)"), "{log}");
    // The data is whole on every leg after the clean stop.
    crate::serve::legs_identical(&fx, &[&fx.path("b.img"), &fx.path("c.img")]);
}

#[test]
fn random_writes_over_16_times_the_hot_set_share_metadata_syncs_at_iodepth_16() {
    // 1 GiB is 256 extents of 4 MiB: with 16 hot, 15 writes in 16 need a cold extent.
    let fx = Fx::with_legs("1G", "64K", &["b.img"]);
    let t = Traced::start(
        &fx,
        "trace=fsync,fdatasync,msync,sync_file_range,syncfs",
        &["--hot-extents", "16"],
    );
    let (writes, depth) = (1000u64, 16u64);
    crate::serve::fio(
        &t.uri(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            &format!("--iodepth={depth}"),
            "--size=1G",
            &format!("--number_ios={writes}"),
        ],
    );
    let (lines, log) = t.stop();
    assert!(log.contains("the mirror is healthy"), "{log}");
    // Every metadata sync is a sync of the primary (H12; the clean stop adds two). One per
    // write without batching; with it, the requests that queue while a transaction syncs
    // all go in the next one: with `depth` in flight, in two alternating halves, about
    // depth / 2 per transaction. The bound allows a quarter of that (a loaded machine,
    // strace slowing every request): still at most one sync per two writes.
    let syncs = image_syncs(&lines, &fx.path("a.img"));
    let bound = writes / (depth / 8) + 2;
    assert!(
        (syncs as u64) <= bound,
        "{syncs} syncs of the primary for {writes} random writes at iodepth {depth} (at most {bound}):\n{log}"
    );
    eprintln!("{syncs} primary syncs for {writes} random writes beyond the hot set");
    crate::serve::legs_identical(&fx, &[&fx.path("b.img")]);
}

#[test]
fn the_live_record_is_written_with_one_write_per_publish() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    let t = Traced::start(&fx, "trace=write,rename,renameat,renameat2", &[]);
    // Idle: it publishes twice a second.
    std::thread::sleep(Duration::from_millis(2200));
    let (lines, _) = t.stop();
    let renames: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(".json.tmp\""))
        .cloned()
        .collect();
    let publishes = count(&renames, &["rename", "renameat", "renameat2"]);
    assert!(
        publishes >= 3,
        "{publishes} publishes in 2.2 s:\n{}",
        lines.join("\n")
    );
    let record: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(".json.tmp>"))
        .cloned()
        .collect();
    let writes = count(&record, &["write"]);
    assert_eq!(
        writes,
        publishes,
        "writes of the live record for {publishes} publishes:\n{}",
        record.join("\n")
    );
}

/// An ext4 file system on a loop device of `size` bytes, mounted on a temporary folder;
/// unmounted, then detached, on drop (also when the test fails).
struct Ext4 {
    mnt: Option<tempfile::TempDir>,
    _dev: LoopDev,
    _backing: tempfile::TempDir,
}

impl Ext4 {
    fn new(size: u64) -> Ext4 {
        require_root("a loop-backed file system");
        require("mkfs.ext4", "e2fsprogs");
        let backing = tempfile::tempdir().unwrap();
        let dev = LoopDev::with_size(&backing.path().join("fs.raw"), size);
        sh("mkfs.ext4", &["-q", "-F", dev.as_str()]);
        let mnt = tempfile::tempdir().unwrap();
        sh("mount", &[dev.as_str(), mnt.path().to_str().unwrap()]);
        Ext4 {
            mnt: Some(mnt),
            _dev: dev,
            _backing: backing,
        }
    }

    fn path(&self) -> &Path {
        self.mnt.as_ref().unwrap().path()
    }

    /// Bytes the file system has in use.
    fn used(&self) -> u64 {
        let s = rustix::fs::statvfs(self.path()).unwrap();
        (s.f_blocks - s.f_bfree) * s.f_frsize
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = Command::new("umount").arg(m.path()).status();
            drop(m);
        }
    }
}

#[test]
fn random_writes_over_a_sparse_1_tib_mirror_on_a_small_ext4_use_only_the_space_they_write_and_never_get_enospc(
) {
    // Issue 28 saw ENOSPC on a leg of a 1 TiB sparse mirror with tens of GB free. Whatever
    // allocates more than the blocks written (preallocation, zeros written for holes,
    // metadata) fills this 1 GiB file system long before the data does.
    let fs = Ext4::new(1024 * MIB);
    let fx = Fx {
        dir: tempfile::tempdir_in(fs.path()).unwrap(),
    };
    fx.ok(&["create", "a.img", "--size", "1T"]);
    fx.ok(&["attach", "a.img", "b.img"]);
    fx.ok(&["attach", "a.img", "c.img"]);
    let before = fs.used();
    let s = crate::serve::Serving::start(&fx, &[]);
    let n = 6000u64;
    crate::serve::fio(
        &s.uri(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=1T",
            &format!("--number_ios={n}"),
            "--fsync=64",
        ],
    );
    let during = fs.used();
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        !log.contains("error") && !log.contains("fractured") && !log.contains("failed"),
        "{log}"
    );
    assert!(log.contains("the mirror is healthy"), "{log}");
    // 3 legs of n blocks of 4 KiB, with room for the extent trees and the bitmaps.
    let data = 3 * n * 4 * KIB;
    let grew = during.saturating_sub(before);
    assert!(
        grew <= data + data / 2 + 32 * MIB,
        "{} MiB used for {} MiB written to 3 legs",
        grew / MIB,
        data / MIB
    );
    let st = fx.status();
    for slot in 0..2 {
        assert_eq!(leg(&st, slot)["state"], "in-sync", "{st:#}");
    }
    eprintln!(
        "{} MiB used for {} MiB written to 3 legs",
        grew / MIB,
        data / MIB
    );
}

#[test]
fn a_resync_of_a_whole_fractured_leg_syncs_its_target_once_per_batch_not_per_copy() {
    // Copies never stop to sync per piece: the target is synced once per batch (64 MiB, or
    // about every 250 ms on a slow disk), beside the next batch's copy, and the fracture
    // bits are cleared after each such sync (S1). 256 MiB written while the leg was
    // fractured: 256 copies of 1 MiB, 4 batches.
    require("strace", "strace");
    let fx = Fx::with_legs("256M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    let input = fx.path("input.bin");
    random_file(&input, 256 * MIB, 28);
    let w = fx.run(&["write", "a.img", "--input", "input.bin"]);
    assert_eq!(w.code, 3, "a write with a fractured leg is degraded: {w:?}");
    std::fs::remove_file(&input).unwrap();
    let trace = fx.path("resync.trace");
    let started = Instant::now();
    let out = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=fsync,fdatasync,msync,sync_file_range,syncfs,pwrite64,copy_file_range",
            "-o",
        ])
        .arg(&trace)
        .arg(bin())
        .args(["resync", "a.img"])
        .current_dir(fx.dir.path())
        .output()
        .expect("starting strace");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.data_area("a.img"), fx.data_area("b.img"));
    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let copies = count(
        &lines
            .iter()
            .filter(|l| l.contains("/b.img>"))
            .cloned()
            .collect::<Vec<_>>(),
        &["pwrite64", "copy_file_range"],
    );
    let target = image_syncs(&lines, &fx.path("b.img"));
    // Batches end at 64 MiB or at a checkpoint (250 ms): the bound allows both, and the
    // sync at the end.
    let batches = 256 / 64 + (took.as_millis() / 250) as usize + 2;
    eprintln!(
        "{target} syncs of the target for 256 MiB copied in {copies} writes ({} per GiB), {took:?} under strace",
        target * 4
    );
    assert!(
        copies >= 32,
        "{copies} copies: the copy went some other way"
    );
    assert!(target >= 1, "the target was never synced (S1)");
    assert!(
        target <= batches && target < copies,
        "{target} syncs of the target for {copies} copies in {took:?}: more than once per batch"
    );
}

/// The descriptor numbers of `a.img` opened with O_DIRECT in `lines`.
fn direct_fds(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("openat(") && l.contains("O_DIRECT") && l.contains("/a.img>"))
        .filter_map(|l| {
            let (_, ret) = l.rsplit_once(" = ")?;
            Some(ret.split('<').next()?.trim().to_string())
        })
        .collect()
}

/// `lines` with every call strace split ("PID name(ARGS, <unfinished ...>" then, later,
/// "PID <... name resumed>REST") put back together on one line, where it started.
fn whole(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open: std::collections::HashMap<String, usize> = Default::default();
    for l in lines {
        let Some((pid, rest)) = l.split_once(' ') else {
            out.push(l.clone());
            continue;
        };
        if let Some(head) = l.strip_suffix(" <unfinished ...>") {
            open.insert(pid.to_string(), out.len());
            out.push(head.to_string());
        } else if rest.trim_start().starts_with("<... ") {
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            match open.remove(pid) {
                Some(i) => out[i].push_str(tail),
                None => out.push(l.clone()),
            }
        } else {
            out.push(l.clone());
        }
    }
    out
}

/// `pread64` calls on `a.img` in `lines`: (descriptor, length).
fn image_preads(lines: &[String]) -> Vec<(String, u64)> {
    whole(lines)
        .iter()
        .filter_map(|l| {
            let args = l.split_once(" pread64(")?.1;
            if !args.contains("/a.img>") {
                return None;
            }
            let fd = args.split('<').next()?.to_string();
            // pread64(fd<path>, "..."..., LEN, OFF) = N
            let len = args.rsplit_once(", ")?.0.rsplit_once(", ")?.1;
            Some((fd, len.parse().ok()?))
        })
        .collect()
}

/// Calls sending to a socket in `lines` and the bytes each sent.
fn socket_sends(lines: &[String]) -> Vec<u64> {
    const SENDS: &[&str] = &["write", "writev", "sendto", "sendmsg", "pwritev2"];
    whole(lines)
        .iter()
        .filter(|l| l.contains("<socket:[") || l.contains("<UNIX-STREAM:["))
        .filter(|l| count(std::slice::from_ref(l), SENDS) == 1)
        .filter_map(|l| l.rsplit_once(" = ")?.1.trim().parse().ok())
        .collect()
}

#[test]
fn a_served_read_is_one_direct_pread_and_its_reply_one_send_and_a_sequential_reader_is_read_ahead()
{
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    let t = Traced::start(
        &fx,
        "trace=openat,pread64,preadv,preadv2,read,write,writev,sendto,sendmsg,fadvise64",
        &[],
    );
    let mut cmds: Vec<String> = vec![
        format!("write -P 5 0 {}", 48 * MIB),
        "flush".into(),
        marker(12 * KIB),
    ];
    // 8 random 1 MiB reads (none continues another).
    let random = [5u64, 1, 9, 3, 13, 7, 11, 14];
    for m in random {
        cmds.push(format!("read -P 5 {} 1M", m * MIB));
    }
    cmds.push(marker(20 * KIB));
    // A sequential reader: 16 MiB in 256 KiB requests.
    for k in 0..64u64 {
        cmds.push(format!("read -P 5 {} 256k", 16 * MIB + k * 256 * KIB));
    }
    cmds.push(marker(28 * KIB));
    qemu_io(&t.uri(), &cmds);
    let (lines, _) = t.stop();
    let direct = direct_fds(&lines);
    assert!(
        !direct.is_empty(),
        "a.img never opened with O_DIRECT:\n{}",
        lines.join("\n")
    );
    let rnd = between(&lines, 12 * KIB, 20 * KIB);
    let preads = image_preads(&rnd);
    // The marker's own read is the first; then one pread per 1 MiB request, on the O_DIRECT
    // descriptor, none smaller.
    let big: Vec<&(String, u64)> = preads.iter().filter(|(_, n)| *n != 12 * KIB).collect();
    assert_eq!(
        big.len(),
        8,
        "preads for 8 random 1 MiB reads:\n{}",
        rnd.join("\n")
    );
    for (fd, n) in &big {
        assert_eq!(*n, MIB, "{}", rnd.join("\n"));
        assert!(
            direct.contains(fd),
            "read on {fd}, not O_DIRECT ({direct:?})"
        );
    }
    // Each reply (16 or 28 bytes of header, then 1 MiB) in one call; the marker's too.
    let sends = socket_sends(&rnd);
    assert!(
        sends.len() <= 9,
        "{} sends for 9 replies:\n{}",
        sends.len(),
        rnd.join("\n")
    );
    assert_eq!(
        sends.iter().filter(|&&n| n > MIB && n <= MIB + 28).count(),
        8,
        "replies of 1 MiB not sent whole in one call each: {sends:?}"
    );
    // The sequential reader: one pread per request, through the cache after the first
    // two, and the cache read ahead of it.
    let seq = between(&lines, 20 * KIB, 28 * KIB);
    let preads = image_preads(&seq);
    let big: Vec<&(String, u64)> = preads.iter().filter(|(_, n)| *n != 20 * KIB).collect();
    assert_eq!(big.len(), 64, "{}", seq.join("\n"));
    assert!(
        big.iter().all(|(_, n)| *n == 256 * KIB),
        "{}",
        seq.join("\n")
    );
    let cached = big.iter().filter(|(fd, _)| !direct.contains(fd)).count();
    assert_eq!(cached, 62, "sequential reads through the cache");
    // Hints: fadvise64(fd<a.img>, OFF, LEN, POSIX_FADV_WILLNEED) = 0, each range asked for
    // once, in order, from past the third request to at most 8 MiB past the last.
    let hints: Vec<(u64, u64)> = whole(&seq)
        .iter()
        .filter(|l| l.contains("fadvise64(") && l.contains("/a.img>"))
        .map(|l| {
            let a: Vec<&str> = l.split_once("fadvise64(").unwrap().1.split(", ").collect();
            (a[1].parse().unwrap(), a[2].parse().unwrap())
        })
        .collect();
    assert!(!hints.is_empty(), "no read ahead:\n{}", seq.join("\n"));
    let doff = fx.geometry().data_offset;
    assert_eq!(hints[0].0, doff + 16 * MIB + 768 * KIB, "{hints:?}");
    for w in hints.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "{hints:?}");
    }
    let last = hints[hints.len() - 1];
    assert!(last.0 + last.1 <= doff + 40 * MIB, "{hints:?}");
    assert!(last.0 + last.1 >= doff + 32 * MIB, "{hints:?}");
    assert!(socket_sends(&seq).len() <= 65, "{}", seq.join("\n"));
}
