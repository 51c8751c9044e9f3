//! Safety on the real binary (issue 11): data that must never be destroyed (attach and
//! create over filesystems and other data, a shrinking primary during a copy, a byte copy of
//! a leg) and states that must be true (verify differences, garbage bitmap bits, vanished
//! and unusable devices, exit codes by meaning, no hangs, short inputs, JSON on failure,
//! degraded writes). Each test fails without its fix.

use crate::support::*;
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn blkid_type(p: &Path) -> String {
    let o = Command::new("blkid")
        .args(["-o", "value", "-s", "TYPE"])
        .arg(p)
        .output()
        .expect("running blkid");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// An empty sparse file of `size` bytes.
fn sparse(p: &Path, size: u64) {
    std::fs::File::create(p).unwrap().set_len(size).unwrap();
}

// ---------------------------------------------------------------------------------------
// 1. attach and create over existing data

#[test]
fn attach_refuses_every_formatted_image_naming_what_it_holds_and_writes_nothing() {
    require("blkid", "util-linux");
    let fx = Fx::create("64M", "64K");
    fx.write_random(0, MIB, 1);
    let size = 512 * MIB;
    // (file, how it is made, what the refusal must name)
    type Make = fn(&Path) -> String;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "ext4.img",
            |p| {
                sh(
                    "mkfs.ext4",
                    &["-q", "-F", "-L", "precious", p.to_str().unwrap()],
                )
            },
            "an ext4 filesystem labelled 'precious'",
        ),
        (
            "ext2.img",
            |p| sh("mkfs.ext2", &["-q", "-F", p.to_str().unwrap()]),
            "an ext2 filesystem",
        ),
        (
            "xfs.img",
            |p| sh("mkfs.xfs", &["-q", "-f", "-L", "xlab", p.to_str().unwrap()]),
            "an XFS filesystem labelled 'xlab'",
        ),
        (
            "btrfs.img",
            |p| {
                sh(
                    "mkfs.btrfs",
                    &["-q", "-f", "-L", "blab", p.to_str().unwrap()],
                )
            },
            "a Btrfs filesystem labelled 'blab'",
        ),
        (
            "swap.img",
            |p| sh("mkswap", &["-L", "swp", p.to_str().unwrap()]),
            "a swap area labelled 'swp'",
        ),
        (
            "luks.img",
            |p| {
                let key = p.with_extension("key");
                std::fs::write(&key, b"not a secret").unwrap();
                sh(
                    "cryptsetup",
                    &[
                        "luksFormat",
                        "--batch-mode",
                        "--type",
                        "luks2",
                        "--pbkdf",
                        "pbkdf2",
                        "--pbkdf-force-iterations",
                        "1000",
                        "--label",
                        "vault",
                        "--key-file",
                        key.to_str().unwrap(),
                        p.to_str().unwrap(),
                    ],
                )
            },
            "a LUKS2 encrypted volume labelled 'vault'",
        ),
        (
            "gpt.img",
            |p| sh("sgdisk", &["-n", "1:2048:+8M", p.to_str().unwrap()]),
            "a GPT partition table",
        ),
        (
            "mbr.img",
            |p| {
                let o = Command::new("sfdisk")
                    .args(["-q", "--label", "dos", p.to_str().unwrap()])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write;
                        c.stdin.take().unwrap().write_all(b"2048,16384,83\n")?;
                        c.wait()
                    })
                    .expect("running sfdisk");
                assert!(o.success());
                String::new()
            },
            "an MBR partition table",
        ),
    ];
    for (t, pkg) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.xfs", "xfsprogs"),
        ("mkfs.btrfs", "btrfs-progs"),
        ("mkswap", "util-linux"),
        ("cryptsetup", "cryptsetup-bin"),
        ("sgdisk", "gdisk"),
        ("sfdisk", "fdisk"),
    ] {
        require(t, pkg);
    }
    for (name, make, what) in cases {
        let p = fx.path(name);
        sparse(&p, size);
        make(&p);
        let kind = blkid_type(&p);
        let before = read(&p);
        let status_before = fx.status();
        for extra in [&[][..], &["--compare"][..], &["--assume-clean"][..]] {
            let mut args = vec!["attach", "a.img", name];
            args.extend_from_slice(extra);
            let o = fx.run(&args);
            assert_eq!(o.code, 2, "{name} {extra:?}: {o:?}");
            assert!(
                o.stderr.contains(what),
                "{name}: names what it holds: {o:?}"
            );
            assert!(o.stderr.contains("--force"), "{o:?}");
            assert_eq!(o.stderr.lines().count(), 1, "one line: {o:?}");
            assert!(read(&p) == before, "{name} was changed by a refused attach");
            assert_eq!(blkid_type(&p), kind, "{name}");
        }
        assert_eq!(fx.status()["legs"], status_before["legs"], "{name}");
        assert_eq!(fx.status()["generation"], status_before["generation"]);
        std::fs::remove_file(&p).unwrap();
    }
    // --force overwrites (the admin said so), and the mirror syncs it.
    let p = fx.path("forced.img");
    sparse(&p, 64 * MIB + 8 * MIB);
    sh(
        "mkfs.ext4",
        &["-q", "-F", "-L", "precious", p.to_str().unwrap()],
    );
    let o = fx.run(&["attach", "a.img", "forced.img", "--force"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(fx.first_difference("forced.img"), None);
}

#[test]
fn attach_refuses_plain_data_at_the_edges_or_in_allocated_extents_but_takes_a_sparse_file() {
    let fx = Fx::create("16M", "64K");
    let total = fx.geometry().data_offset + 16 * MIB;
    // A byte near the end of an otherwise sparse file.
    let p = fx.path("tail.img");
    sparse(&p, total);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(b"x", total - 100)
        .unwrap();
    let o = fx.run(&["attach", "a.img", "tail.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr
            .contains(&format!("a non-zero byte at offset {}", total - 100)),
        "{o:?}"
    );
    // Allocated zeros in the middle: still somebody's file.
    let p = fx.path("zeros.img");
    sparse(&p, total);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&vec![0u8; MIB as usize], 8 * MIB)
        .unwrap();
    let o = fx.run(&["attach", "a.img", "zeros.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("allocated data"), "{o:?}");
    // A sparse file of the right size, and a missing one, are taken.
    sparse(&fx.path("empty.img"), total);
    fx.ok(&["attach", "a.img", "empty.img"]);
    fx.ok(&["attach", "a.img", "new.img"]);
    assert_eq!(fx.status()["secondaries"], 2);
}

#[test]
fn attach_and_create_on_a_loop_device_with_a_filesystem_refuse_and_create_force_says_what_it_overwrites(
) {
    require("mkfs.ext4", "e2fsprogs");
    require("blkid", "util-linux");
    let fx = Fx::create("32M", "64K");
    let lo = LoopDev::with_size(&fx.path("disk"), 64 * MIB);
    sh("mkfs.ext4", &["-q", "-F", "-L", "precious", lo.as_str()]);
    let o = fx.run(&["attach", "a.img", lo.as_str()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("an ext4 filesystem labelled 'precious'"),
        "{o:?}"
    );
    assert_eq!(blkid_type(&lo.path), "ext4", "the filesystem survived");
    let o = fx.run(&["create", lo.as_str()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("an ext4 filesystem labelled 'precious'"),
        "{o:?}"
    );
    assert_eq!(blkid_type(&lo.path), "ext4");
    let o = fx.run(&["create", lo.as_str(), "--force"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stderr
            .contains("overwriting an ext4 filesystem labelled 'precious'"),
        "{o:?}"
    );
}

#[test]
fn a_missing_name_under_dev_is_no_such_device_and_no_file_appears_on_devtmpfs() {
    let fx = Fx::create("16M", "64K");
    for args in [
        &["attach", "a.img", "/dev/mirrorctl-test-nosuchdisk"][..],
        &["create", "/dev/mirrorctl-test-nosuchdisk", "--size", "1G"],
    ] {
        let o = fx.run(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(o.stderr.contains("no such device"), "{o:?}");
        assert!(!Path::new("/dev/mirrorctl-test-nosuchdisk").exists());
    }
}

// ---------------------------------------------------------------------------------------
// 2. a primary that shrinks during a copy

#[test]
fn a_primary_truncated_during_resync_fails_the_copy_and_no_zeros_reach_the_secondary() {
    for compare in [false, true] {
        let fx = Fx::with_legs("64M", "64K", &["b.img"]);
        let g = fx.geometry();
        fx.write_random(0, 64 * MIB, 1);
        fx.ok(&["fracture", "a.img", "b.img"]);
        let old = read(&fx.path("b.img"));
        random_file(&fx.path("new.bin"), 64 * MIB, 2);
        let o = fx.run(&["write", "a.img", "--input", "new.bin"]);
        assert_eq!(o.code, 3, "degraded: b.img is fractured: {o:?}");
        let new = read(&fx.path("a.img"));
        let mut args = vec!["resync", "a.img", "--rate", "16M", "--json"];
        if compare {
            args.push("--compare");
        }
        let child = Command::new(bin())
            .args(&args)
            .current_dir(fx.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let cut = g.data_offset + 24 * MIB;
        std::fs::OpenOptions::new()
            .write(true)
            .open(fx.path("a.img"))
            .unwrap()
            .set_len(cut)
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(o.status.code(), Some(4), "compare={compare}: {stderr}");
        assert!(stderr.contains("shrank"), "{stderr}");
        let v: Value = serde_json::from_str(&stdout).expect("one JSON document on failure");
        assert_eq!(v["exit_code"], 4, "{v:#}");
        // Every byte of b.img's data area is the old or the new data: never zeros made up
        // for what could not be read.
        let b = read(&fx.path("b.img"));
        let d = g.data_offset as usize;
        let bad = (d..d + (64 * MIB) as usize).find(|&i| b[i] != old[i] && b[i] != new[i]);
        assert_eq!(bad.map(|i| i - d), None, "compare={compare}: invented data");
        // Restore the primary's length: the leg is not in sync and keeps its log.
        std::fs::write(fx.path("a.img"), &new).unwrap();
        let s = fx.status();
        let l = leg(&s, 0);
        assert_ne!(l["state"], "in-sync", "{s:#}");
        assert!(u(&l["out_of_sync_regions"]) > 0, "{s:#}");
        assert_eq!(s["healthy"], false);
        fx.ok(&["resync", "a.img"]);
        assert_eq!(fx.first_difference("b.img"), None);
    }
}

// ---------------------------------------------------------------------------------------
// 3. a byte copy of an attached secondary

#[test]
fn a_byte_copy_of_an_attached_secondary_is_refused_naming_both_and_compare_compares_all_it_reattaches(
) {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    fx.write_random(0, 4 * MIB, 1);
    std::fs::copy(fx.path("b.img"), fx.path("copy.img")).unwrap();
    fx.flip("copy.img", 100);
    let a_before = read(&fx.path("a.img"));
    for extra in [&["--compare", "--force"][..], &[][..], &["--compare"][..]] {
        let mut args = vec!["attach", "a.img", "copy.img"];
        args.extend_from_slice(extra);
        let o = fx.run(&args);
        assert_eq!(o.code, 2, "{extra:?}: {o:?}");
        assert!(
            o.stderr.contains("copy.img") && o.stderr.contains("b.img"),
            "names both: {o:?}"
        );
        assert!(read(&fx.path("a.img")) == a_before, "the primary changed");
    }
    // b.img still receives writes.
    fx.write_random(MIB, 64 * KIB, 2);
    assert_eq!(fx.first_difference("b.img"), None);
    assert_eq!(leg(&fx.status(), 0)["path"], "b.img");
    // Once b.img no longer holds the image, the copy may take its place, and --compare
    // compares every region (not just the log, which is empty).
    std::fs::rename(fx.path("b.img"), fx.path("b.gone")).unwrap();
    let v = fx
        .ok(&["attach", "a.img", "copy.img", "--compare", "--json"])
        .json();
    assert_eq!(v["reattached"], true, "{v:#}");
    assert_eq!(v["copied_bytes"], 16 * MIB, "every region compared: {v:#}");
    assert!(
        u(&v["written_bytes"]) > 0,
        "the flipped byte and the write: {v:#}"
    );
    assert_eq!(fx.first_difference("copy.img"), None);
}

// ---------------------------------------------------------------------------------------
// 7. verify differences are health

#[test]
fn verify_differences_make_the_mirror_unhealthy_until_a_plain_resync_repairs_them() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    fx.write_random(0, 8 * MIB, 1);
    fx.flip("b.img", 3 * 64 * KIB + 5);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    let s = fx.status();
    assert_eq!(s["healthy"], false, "{s:#}");
    let l = leg(&s, 0);
    assert_eq!(l["state"], "syncing", "{l:#}");
    assert_eq!(l["out_of_sync_regions"], 1, "{l:#}");
    assert_eq!(fx.run(&["status", "a.img", "--check"]).code, 3);
    // A second verify still says so.
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(leg(&v, 0)["mismatches"][0]["first_region"], 3, "{v:#}");
    // The leg is not promotable as current.
    let o = fx.run(&["promote", "b.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(r["regions"], 1, "{r:#}");
    assert_eq!(fx.first_difference("b.img"), None);
    assert_eq!(fx.verify(&[]).0, 0);
    assert_eq!(fx.run(&["status", "a.img", "--check"]).code, 0);
}

// ---------------------------------------------------------------------------------------
// 8. garbage past the last region

#[test]
fn garbage_bits_past_the_last_region_are_not_pending_and_go_with_the_next_change() {
    // 100 regions: a bitmap page holds 32768 bits, so bits 100.. of each page are unused.
    let fx = Fx::with_legs("6400K", "64K", &["b.img"]);
    assert_eq!(fx.geometry().region_count, 100);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.path("a.img"))
        .unwrap();
    // The write-intent log at 256 KiB, slot 0's fracture log one page later.
    for base in [256 * KIB, 256 * KIB + 4096] {
        f.write_all_at(&[0xf0], base + 12).unwrap();
        f.write_all_at(&[0xff; 100], base + 13).unwrap();
    }
    drop(f);
    let s = fx.status();
    assert_eq!(s["write_intent_regions"], 0, "{s:#}");
    assert_eq!(s["clean"], true);
    assert_eq!(leg(&s, 0)["out_of_sync_regions"], 0);
    assert_eq!(fx.run(&["status", "a.img", "--check"]).code, 0);
    let o = fx.run(&["write", "a.img", "--input", "/etc/hostname"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(!o.stderr.contains("not closed cleanly"), "{o:?}");
    let mut b = [0u8; 14];
    std::fs::File::open(fx.path("a.img"))
        .unwrap()
        .read_exact_at(&mut b, 256 * KIB)
        .unwrap();
    assert_eq!(b[12], 0, "the changed page's garbage is cleared");
}

// ---------------------------------------------------------------------------------------
// 10. vanished devices, and headers of zeros over data

#[test]
fn a_detached_loop_device_is_an_io_error_naming_it_and_never_suggests_create() {
    let fx = Fx::create("16M", "64K");
    let mut lo = LoopDev::attach(&fx.path("a.img"));
    let dev = lo.as_str().to_string();
    fx.ok(&["status", &dev]);
    lo.detach();
    for args in [
        &["status", dev.as_str()][..],
        &["write", dev.as_str(), "--input", "/etc/hostname"],
        &["read", dev.as_str(), "--length", "4096"],
    ] {
        let o = fx.run(args);
        assert_eq!(o.code, 4, "{args:?}: {o:?}");
        assert!(o.stderr.contains(&dev), "{o:?}");
        assert!(o.stderr.contains("size 0"), "{o:?}");
        assert!(!o.stderr.contains("mirrorctl create"), "{o:?}");
        if args[0] == "read" {
            // The leg table is unreadable with it: read says where the data still is.
            assert!(
                o.stderr.contains("secondaries still hold the data"),
                "{o:?}"
            );
        }
    }
}

#[test]
fn a_promote_that_refuses_after_an_unclean_stop_changes_nothing_on_either_image() {
    require("strace", "strace");
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    fx.write_random(0, 2 * MIB, 1);
    fx.ok(&["fracture", "a.img", "b.img"]);
    random_file(&fx.path("w.bin"), 12 * MIB, 2);
    // A writer killed mid-write (before the sync of its second 4 MiB chunk): write intents stay pending (an unclean stop).
    let o = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync"])
        .args(["-e", "inject=fdatasync:signal=SIGKILL:when=2"])
        .arg(bin())
        .args(["write", "a.img", "--input", "w.bin", "--flush", "always"])
        .current_dir(fx.dir.path())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.signal() == Some(9) || o.status.code() == Some(137),
        "the writer was not killed: {o:?}"
    );
    assert!(u(&fx.status()["write_intent_regions"]) > 0);
    let (a, b) = (read(&fx.path("a.img")), read(&fx.path("b.img")));
    let o = fx.run(&["promote", "b.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("refusing to promote"), "{o:?}");
    assert!(
        read(&fx.path("a.img")) == a,
        "the refused promote changed a.img"
    );
    assert!(
        read(&fx.path("b.img")) == b,
        "the refused promote changed b.img"
    );
}

#[test]
fn a_destroyed_header_over_data_is_not_offered_create() {
    let fx = Fx::create("16M", "64K");
    fx.write_random(15 * MIB, MIB, 1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.path("a.img"))
        .unwrap();
    f.write_all_at(&vec![0u8; 256 * KIB as usize], 0).unwrap();
    drop(f);
    let o = fx.run(&["status", "a.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("holds data"), "{o:?}");
    assert!(!o.stderr.contains("mirrorctl create"), "{o:?}");
    // An empty file is offered create.
    sparse(&fx.path("blank.img"), 16 * MIB);
    let o = fx.run(&["status", "blank.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("mirrorctl create"), "{o:?}");
}

// ---------------------------------------------------------------------------------------
// 11, 12. exit codes by meaning; nothing that is not an image is opened

#[test]
fn unusable_secondary_paths_are_usage_errors_and_a_read_only_primary_says_read_only() {
    let fx = Fx::create("16M", "64K");
    std::fs::create_dir(fx.path("dir")).unwrap();
    let long = "x".repeat(300);
    let ro = Tmpfs::mount("1M");
    let ro_path = ro.join("s.img");
    Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(ro.path())
        .status()
        .unwrap();
    for spec in ["dir", long.as_str(), ro_path.to_str().unwrap()] {
        let o = fx.run(&["attach", "a.img", spec]);
        assert_eq!(o.code, 2, "{spec}: {o:?}");
        assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    }
    // A read-only loop device, and an immutable file, as the primary: 4, "read-only".
    let lo = {
        require_root("loop devices");
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(fx.path("a.img"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let o = fx.run(&["write", &lo, "--input", "/etc/hostname"]);
    let _ = Command::new("losetup").args(["-d", &lo]).status();
    assert_eq!(o.code, 4, "{o:?}");
    assert!(o.stderr.contains("read-only"), "{o:?}");
    require("chattr", "e2fsprogs");
    sh("chattr", &["+i", fx.path("a.img").to_str().unwrap()]);
    let o = fx.run(&["write", "a.img", "--input", "/etc/hostname"]);
    sh("chattr", &["-i", fx.path("a.img").to_str().unwrap()]);
    assert_eq!(o.code, 4, "{o:?}");
    assert!(o.stderr.contains("read-only"), "{o:?}");
}

#[test]
fn a_fifo_is_refused_at_once_by_every_command() {
    let fx = Fx::create("16M", "64K");
    let fifo = fx.path("fifo");
    sh("mkfifo", &[fifo.to_str().unwrap()]);
    for args in [
        &["status", "fifo"][..],
        &["read", "fifo"],
        &["write", "fifo", "--input", "/etc/hostname"],
        &["attach", "a.img", "fifo"],
        &["create", "fifo"],
    ] {
        let o = Command::new("timeout")
            .arg("10")
            .arg(bin())
            .args(args)
            .current_dir(fx.dir.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?} hung or failed: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("FIFO"),
            "{args:?}: {o:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 13, 14, 15. short inputs, reports that match, degraded writes

#[test]
fn write_with_a_length_longer_than_its_input_exits_2_saying_how_much_it_wrote() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    random_file(&fx.path("in.bin"), 100_000, 3);
    let o = fx.run(&[
        "write", "a.img", "--length", "1M", "--input", "in.bin", "--json",
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("100000 bytes"), "{o:?}");
    let v = o.json();
    assert_eq!(v["exit_code"], 2, "{v:#}");
    assert_eq!(v["bytes_written"], 100_000, "{v:#}");
    // What came is durable and mirrored.
    let a = read(&fx.path("a.img"));
    let off = fx.geometry().data_offset as usize;
    assert!(a[off..off + 100_000] == read(&fx.path("in.bin"))[..]);
    assert_eq!(fx.first_difference("b.img"), None);
    assert_eq!(fx.run(&["status", "a.img", "--check"]).code, 0);
}

#[test]
fn json_reports_match_what_happened_and_every_json_command_prints_a_document_on_failure() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, MIB, 1);
    // A leg that fails at open is newly fractured by that write.
    std::fs::rename(fx.path("b.img"), fx.path("b.gone")).unwrap();
    let o = fx.run(&["write", "a.img", "--input", "/etc/hostname", "--json"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.json()["newly_fractured"], serde_json::json!([0]), "{o:?}");
    // resync --json: the failed leg shows what is still out of sync, as status does.
    let o = fx.run(&["resync", "a.img", "--json"]);
    assert_eq!(o.code, 3, "{o:?}");
    let r = o.json();
    let st = fx.status();
    assert_eq!(
        leg(&r, 0)["remaining_regions"],
        leg(&st, 0)["out_of_sync_regions"],
        "{r:#} {st:#}"
    );
    assert!(u(&leg(&r, 0)["remaining_regions"]) > 0);
    assert!(leg(&r, 0)["error"].is_string(), "{r:#}");
    // Failures print one JSON document with error and exit_code.
    let cases: [&[&str]; 7] = [
        &["status", "missing.img", "--json"],
        &["create", "a.img", "--json"],
        &["attach", "a.img", "a.img", "--json"],
        &["write", "a.img", "--offset", "1G", "--json"],
        &["resync", "a.img", "nosuch", "--json"],
        &["verify", "a.img", "--max-time", "5x", "--json"],
        &["promote", "a.img", "--json"],
    ];
    for args in cases {
        let o = fx.run(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        let v = o.json();
        assert_eq!(v["exit_code"], 2, "{args:?}: {v:#}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{args:?}: {v:#}"
        );
    }
}

#[test]
fn a_write_that_misses_a_fractured_leg_says_so_in_one_line() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.ok(&["fracture", "a.img", "c.img"]);
    let o = fx.run(&["write", "a.img", "--input", "/etc/hostname"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(o.stderr.contains("slot 1 (c.img"), "{o:?}");
    assert!(o.stderr.contains("mirrorctl resync a.img"), "{o:?}");
    assert!(!o.stderr.contains("b.img"), "{o:?}");
}

#[test]
fn a_primary_truncated_during_a_write_fails_it_with_exit_4_at_the_next_sync_and_says_so() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    let g = fx.geometry();
    // A slow writer: 48 MiB through a pipe, a sync after every chunk.
    let mut child = Command::new(bin())
        .args(["write", "a.img", "--flush", "always"])
        .current_dir(fx.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let chunk = vec![0x5au8; MIB as usize];
    use std::io::Write;
    for _ in 0..8 {
        input.write_all(&chunk).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Cut the primary inside its data area, behind the writer's back.
    std::fs::OpenOptions::new()
        .write(true)
        .open(fx.path("a.img"))
        .unwrap()
        .set_len(g.data_offset + 4 * MIB)
        .unwrap();
    for _ in 0..40 {
        if input.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(input);
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("shrank") && stderr.contains("a.img"),
        "it says what happened: {stderr}"
    );
}
