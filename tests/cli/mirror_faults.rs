//! Failure behaviour of the write path on the real binary (issue 3): SIGKILL during long pipe
//! writes and during resyncs (20+ rounds each, seeded random delays), a secondary on a
//! size-limited tmpfs that fills up (real ENOSPC), a secondary loop device pulled away,
//! `/dev/full` (refused by attach: not a regular file or block device), and a primary that
//! runs out of space. After every fault the secondaries that stayed in sync are compared
//! with the primary, the failed ones are brought back and compared byte for byte, and
//! acknowledged writes are checked on every leg.

use crate::support::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Regions of the 64 MiB write-intent window at 64 KiB per region.
const WINDOW_REGIONS: u64 = 64 * MIB / (64 * KIB);

/// Starts `mirrorctl write a.img --offset OFF` fed `data` by a thread; SIGKILLs it after
/// `delay` and returns whether it had already exited on its own (and with which code).
fn write_and_kill(fx: &Fx, off: u64, data: Vec<u8>, delay: Duration) -> Option<i32> {
    let mut child = spawn_piped(
        fx.dir.path(),
        &["write", "a.img", "--offset", &off.to_string()],
        false,
    );
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for piece in data.chunks(1 << 20) {
            if stdin.write_all(piece).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(delay);
    let done = child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
    let _ = child.kill();
    let _ = child.wait();
    feeder.join().unwrap();
    done
}

/// How long a complete `len`-byte pipe write takes here, so kills can be spread over it
/// whatever the speed of this machine's disk.
fn time_a_full_write(fx: &Fx, off: u64, len: u64, seed: u64) -> Duration {
    let input = fx.path("calibrate.bin");
    random_file(&input, len, seed);
    let t = std::time::Instant::now();
    let o = fx.run(&[
        "write",
        "a.img",
        "--offset",
        &off.to_string(),
        "--input",
        "calibrate.bin",
    ]);
    assert_eq!(o.code, 0, "{o:?}");
    std::fs::remove_file(&input).unwrap();
    t.elapsed()
}

#[test]
fn twenty_kills_during_pipe_writes_leave_only_the_window_pending_and_lose_no_acknowledged_write() {
    let fx = Fx::with_legs("256M", "64K", &["b.img", "c.img"]);
    let g = fx.geometry();
    // Killed writes go to [0, 192 MiB); acknowledged ones to [192 MiB, 256 MiB), mirrored
    // in `shadow`.
    let ack_base = 192 * MIB;
    let mut shadow = vec![0u8; (g.data_size - ack_base) as usize];
    let mut rng = Rng::new(2024);
    // Kills land between 5 % and 90 % of the time a whole write takes on this machine (the
    // faster of two overwrites), while it takes input or while it syncs at the end.
    time_a_full_write(&fx, 0, 192 * MIB, 98);
    let full = (0..2)
        .map(|i| time_a_full_write(&fx, i * 32 * MIB, 160 * MIB, 99 + i))
        .min()
        .unwrap()
        .as_millis() as u64;
    let (mut killed, mut unclean) = (0, 0);
    for round in 0..22 {
        let mut data = vec![0u8; 160 * MIB as usize];
        rng.fill(&mut data);
        let off = (rng.next_u64() % 32) * MIB;
        let delay = Duration::from_millis(full / 20 + rng.next_u64() % (full * 85 / 100 + 1));
        if write_and_kill(&fx, off, data, delay).is_none() {
            killed += 1;
        }
        // Pending after the crash stays within one write window (the old window's bits go
        // before the new one's are set), never the whole image. `status` only reads.
        let s = fx.status();
        let pending = u(&s["write_intent_regions"]);
        assert!(
            pending <= WINDOW_REGIONS,
            "round {round}: {pending} write-intent regions pending: {s:#}"
        );
        assert_eq!(s["clean"], pending == 0, "round {round}: {s:#}");
        unclean += (pending > 0) as u32;
        // An acknowledged write, then recovery and resync.
        let len = 4 * KIB + rng.next_u64() % (2 * MIB);
        let at = rng.next_u64() % (shadow.len() as u64 - len);
        let mut piece = vec![0u8; len as usize];
        rng.fill(&mut piece);
        let input = fx.path("ack.bin");
        std::fs::write(&input, &piece).unwrap();
        // Exit 3: the write is durable on every leg that receives writes, and this command
        // found the killed writer's intents and marked them for resync (degraded).
        let o = fx.run(&[
            "write",
            "a.img",
            "--offset",
            &(ack_base + at).to_string(),
            "--input",
            "ack.bin",
        ]);
        assert_eq!(
            o.code,
            if pending > 0 { 3 } else { 0 },
            "round {round}: {o:?}"
        );
        shadow[at as usize..(at + len) as usize].copy_from_slice(&piece);
        // That command moved exactly the pending intents into every secondary's log.
        let s = fx.status();
        assert_eq!(s["write_intent_regions"], 0, "round {round}: {s:#}");
        for slot in 0..2 {
            let l = leg(&s, slot);
            assert_eq!(
                u(&l["out_of_sync_regions"]),
                pending,
                "round {round}: {l:#}"
            );
            let want = if pending > 0 { "syncing" } else { "in-sync" };
            assert_eq!(l["state"], want, "round {round}: {l:#}");
        }
        if pending > 0 {
            assert_eq!(
                u(&s["last_recovery_regions"]),
                pending,
                "round {round}: {s:#}"
            );
        }
        // The acknowledged write reached every leg, before any resync.
        for name in ["a.img", "b.img", "c.img"] {
            let mut got = vec![0u8; shadow.len()];
            std::fs::File::open(fx.path(name))
                .unwrap()
                .read_exact_at(&mut got, g.data_offset + ack_base)
                .unwrap();
            assert!(
                got == shadow,
                "round {round}: an acknowledged write is missing on {name}"
            );
        }
        let o = fx.run(&["resync", "a.img"]);
        assert_eq!(o.code, 0, "round {round}: {o:?}");
        let s = fx.status();
        assert_eq!(s["healthy"], true, "round {round}: {s:#}");
        for slot in 0..2 {
            assert_eq!(leg(&s, slot)["state"], "in-sync", "round {round}: {s:#}");
        }
        for name in ["b.img", "c.img"] {
            assert_eq!(
                fx.first_difference(name),
                None,
                "round {round}: {name} differs"
            );
        }
    }
    assert!(
        killed >= 15,
        "only {killed} of 22 writes were killed while running (a whole write takes {full} ms)"
    );
    assert!(
        unclean >= 15,
        "only {unclean} of 22 kills left write intents behind"
    );
}

#[test]
fn twenty_kills_during_resync_never_grow_the_log_and_a_final_resync_makes_the_legs_equal() {
    let fx = Fx::with_legs("256M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    let input = fx.path("big.bin");
    random_file(&input, 200 * MIB, 7);
    let o = fx.run(&["write", "a.img", "--input", "big.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let mut left = u(&leg(&fx.status(), 0)["out_of_sync_regions"]);
    assert_eq!(left, 200 * MIB / (64 * KIB));
    let mut rng = Rng::new(99);
    let mut progressed = 0;
    for round in 0..22 {
        let mut child = Command::new(bin())
            .args(["resync", "a.img", "--rate", "10M/s"])
            .current_dir(fx.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(450 + rng.next_u64() % 350));
        // Every kill must land on a running resync (10 MiB/s leaves much of the log).
        assert_eq!(
            child.try_wait().unwrap(),
            None,
            "round {round}: the resync finished before the kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let l = leg(&fx.status(), 0).clone();
        let now = u(&l["out_of_sync_regions"]);
        assert!(
            now <= left,
            "round {round}: the log grew from {left} to {now}: {l:#}"
        );
        assert_eq!(l["state"], "syncing", "round {round}: {l:#}");
        if now < left {
            progressed += 1;
        }
        left = now;
    }
    // Progress is durable at least every 250 ms (mirror::CHECKPOINT) whatever the rate, so
    // a kill after 450 ms keeps some; an 8 MiB copy run at 10 MiB/s would lose them all.
    assert!(
        progressed >= 18,
        "killed resyncs made progress only {progressed} times"
    );
    assert!(left > 0, "the killed resyncs were meant to stop short");
    fx.ok(&["resync", "a.img"]);
    let l = leg(&fx.status(), 0).clone();
    assert_eq!(l["state"], "in-sync", "{l:#}");
    assert_eq!(l["out_of_sync_regions"], 0);
    assert_eq!(fx.first_difference("b.img"), None);
}

#[test]
fn a_secondary_on_a_full_tmpfs_is_fractured_by_error_and_resynced_after_the_mount_grows() {
    // b.img (sparse, on a 24 MiB tmpfs) fills up; c.img (in the tempdir) stays in sync.
    let fx = Fx::create("64M", "64K");
    let g = fx.geometry();
    let small = Tmpfs::mount("24M");
    let sec = small.join("b.img");
    let sec_s = sec.to_str().unwrap().to_string();
    fx.ok(&["attach", "a.img", &sec_s]);
    fx.ok(&["attach", "a.img", "c.img"]);
    let input = fx.path("in.bin");
    random_file(&input, 48 * MIB, 5);
    let o = fx.run(&["write", "a.img", "--input", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "one warning line: {o:?}");
    assert!(o.stderr.contains(&sec_s), "{o:?}");
    let s = fx.status();
    let l = leg(&s, 0).clone();
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    assert!(
        l["last_error"].as_str().unwrap().contains("No space left"),
        "{l:#}"
    );
    assert!(is_time(&l["fractured_at"]), "{l:#}");
    // The log covers a tail of the write: [48 MiB - oos, 48 MiB). Everything before it made
    // it to b.img, and nothing past the write is marked.
    let oos = u(&l["out_of_sync_bytes"]);
    assert!((24 * MIB..=48 * MIB).contains(&oos), "{l:#}");
    assert_eq!(
        first_difference_between(&fx.path("a.img"), &sec, g.data_offset, 48 * MIB - oos),
        None,
        "b.img differs outside its fracture log"
    );
    // The leg that stayed in sync is equal, and the primary has everything.
    assert_eq!(leg(&s, 1)["state"], "in-sync", "{s:#}");
    assert_eq!(fx.first_difference("c.img"), None);
    let mut got = vec![0u8; 48 * MIB as usize];
    std::fs::File::open(fx.path("a.img"))
        .unwrap()
        .read_exact_at(&mut got, g.data_offset)
        .unwrap();
    assert!(
        got == std::fs::read(&input).unwrap(),
        "primary data differs"
    );
    // While fractured, writes only mark the log: exit 3, b.img untouched there.
    random_file(&fx.path("more.bin"), MIB, 6);
    let o = fx.run(&["write", "a.img", "--offset", "60M", "--input", "more.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let s = fx.status();
    assert_eq!(u(&leg(&s, 0)["out_of_sync_bytes"]), oos + MIB, "{s:#}");
    assert_eq!(leg(&s, 0)["state"], "fractured-by-error", "{s:#}");
    let mut there = vec![1u8; MIB as usize];
    std::fs::File::open(&sec)
        .unwrap()
        .read_exact_at(&mut there, g.data_offset + 60 * MIB)
        .unwrap();
    assert!(there.iter().all(|&b| b == 0), "a fractured leg was written");
    assert_eq!(fx.first_difference("c.img"), None);

    small.resize("96M");
    fx.ok(&["resync", "a.img"]);
    let s = fx.status();
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(leg(&s, 0)["state"], "in-sync", "{s:#}");
    assert_eq!(
        first_difference_between(&fx.path("a.img"), &sec, g.data_offset, g.data_size),
        None
    );
    assert_eq!(fx.first_difference("c.img"), None);
}

#[test]
fn a_pulled_loop_device_is_fractured_and_its_image_is_reattached_with_only_the_changes() {
    // Slot 0 is a loop device that goes away; c.img (slot 1) stays in sync.
    let fx = Fx::create("64M", "64K");
    let g = fx.geometry();
    let backing = fx.path("disk.raw");
    let mut dev = LoopDev::with_size(&backing, g.data_offset + g.data_size);
    let dev_s = dev.as_str().to_string();
    fx.ok(&["attach", "a.img", &dev_s]);
    fx.ok(&["attach", "a.img", "c.img"]);
    fx.write_random(0, 4 * MIB, 1);
    dev.detach();
    let input = fx.path("in.bin");
    random_file(&input, 2 * MIB, 2);
    let o = fx.run(&["write", "a.img", "--offset", "8M", "--input", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "one warning line: {o:?}");
    assert!(o.stderr.contains(&dev_s), "{o:?}");
    let s = fx.status();
    let l = leg(&s, 0).clone();
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    assert!(l["last_error"].as_str().unwrap().contains(&dev_s), "{l:#}");
    assert!(is_time(&l["fractured_at"]), "{l:#}");
    assert_eq!(l["out_of_sync_bytes"], 2 * MIB, "{l:#}");
    assert_eq!(leg(&s, 1)["state"], "in-sync", "{s:#}");
    assert_eq!(fx.first_difference("c.img"), None);
    let mut got = vec![0u8; 2 * MIB as usize];
    std::fs::File::open(fx.path("a.img"))
        .unwrap()
        .read_exact_at(&mut got, g.data_offset + 8 * MIB)
        .unwrap();
    assert!(
        got == std::fs::read(&input).unwrap(),
        "primary data differs"
    );

    // The disk comes back (perhaps under another name): re-attaching recognises the image
    // and copies only what it missed.
    let back = LoopDev::attach(&backing);
    let v = fx.ok(&["attach", "a.img", back.as_str(), "--json"]).json();
    assert_eq!(v["reattached"], true, "{v:#}");
    assert_eq!(v["copied_bytes"], 2 * MIB, "{v:#}");
    let s = fx.status();
    assert_eq!(s["healthy"], true, "{s:#}");
    drop(back);
    assert_eq!(
        first_difference_between(&fx.path("a.img"), &backing, g.data_offset, g.data_size),
        None
    );
    assert_eq!(fx.first_difference("c.img"), None);
}

#[test]
fn dev_full_is_refused_as_a_secondary_and_nothing_changes() {
    let fx = Fx::create("16M", "64K");
    let before = std::fs::read(fx.path("a.img")).unwrap();
    let o = fx.run(&["attach", "a.img", "/dev/full"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.starts_with("mirrorctl: "), "{o:?}");
    assert!(o.stderr.contains("/dev/full"), "{o:?}");
    assert!(
        o.stderr.contains("not a regular file or block device"),
        "{o:?}"
    );
    assert!(std::fs::read(fx.path("a.img")).unwrap() == before);
}

#[test]
fn a_primary_out_of_space_fails_the_write_with_exit_4_and_recovery_reconciles_the_legs() {
    // The primary is a sparse image on a 12 MiB tmpfs; b.img and c.img are in the tempdir.
    let fs = Tmpfs::mount("12M");
    let fx = Fx {
        dir: tempfile::tempdir().unwrap(),
    };
    let prim = fs.join("a.img");
    let prim_s = prim.to_str().unwrap().to_string();
    fx.ok(&["create", &prim_s, "--size", "32M"]);
    fx.ok(&["attach", &prim_s, "b.img"]);
    fx.ok(&["attach", &prim_s, "c.img"]);
    let input = fx.path("in.bin");
    random_file(&input, 24 * MIB, 8);
    let o = fx.run(&["write", &prim_s, "--input", "in.bin"]);
    assert_eq!(o.code, 4, "{o:?}");
    assert!(o.stderr.contains(&prim_s), "{o:?}");
    assert!(o.stderr.contains("No space left"), "{o:?}");
    // W6: nothing was cleared; the intents are pending and bounded by the write.
    let s = fx.ok(&["status", &prim_s, "--json"]).json();
    let pending = u(&s["write_intent_regions"]);
    assert!((1..=24 * MIB / (64 * KIB)).contains(&pending), "{s:#}");
    assert_eq!(s["clean"], false, "{s:#}");

    // The next command moves them into every secondary's fracture log.
    fs.resize("64M");
    random_file(&fx.path("small.bin"), 64 * KIB, 9);
    let o = fx.run(&["write", &prim_s, "--offset", "28M", "--input", "small.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains("not closed cleanly"), "{o:?}");
    let s = fx.ok(&["status", &prim_s, "--json"]).json();
    assert_eq!(s["write_intent_regions"], 0, "{s:#}");
    assert_eq!(u(&s["last_recovery_regions"]), pending, "{s:#}");
    for slot in 0..2 {
        let l = leg(&s, slot);
        assert_eq!(l["state"], "syncing", "{l:#}");
        assert_eq!(u(&l["out_of_sync_regions"]), pending, "{l:#}");
    }
    let o = fx.run(&["resync", &prim_s]);
    assert_eq!(o.code, 0, "{o:?}");
    let s = fx.ok(&["status", &prim_s, "--json"]).json();
    assert_eq!(s["healthy"], true, "{s:#}");
    for name in ["b.img", "c.img"] {
        assert_eq!(
            first_difference_between(
                &prim,
                &fx.path(name),
                u(&s["data_offset"]),
                u(&s["data_size"])
            ),
            None,
            "{name} differs"
        );
    }
}
