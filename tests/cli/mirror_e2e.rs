//! The write path end to end on the real binary (issue 3): pipe mode, reading back from
//! every leg, fracture + writes + resync copying exactly the written regions, initial sync
//! copying only what the primary holds, `--no-sync` and `--assume-clean`, re-attach keeping
//! the fracture log, loop devices as primary and secondary, slot numbers, every refusal
//! (with nothing changed on disk), input past the end, and a closed stdout on `read`.

use crate::support::*;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs mirrorctl with `input` on stdin, written in odd-sized pieces.
fn run_piped(dir: &Path, args: &[&str], input: &[u8]) -> Out {
    let mut child = spawn_piped(dir, args, true);
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        for piece in data.chunks(777_777) {
            if stdin.write_all(piece).is_err() {
                break;
            }
        }
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    Out {
        code: o.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn files_of(fx: &Fx, names: &[&str]) -> Vec<Option<Vec<u8>>> {
    names
        .iter()
        .map(|n| std::fs::read(fx.path(n)).ok())
        .collect()
}

#[test]
fn sixty_four_mib_piped_in_reads_back_identically_from_the_primary_and_every_secondary() {
    let fx = Fx::with_legs("96M", "64K", &["b.img", "c.img"]);
    let mut data = vec![0u8; 64 * MIB as usize];
    Rng::new(64).fill(&mut data);
    let o = run_piped(fx.dir.path(), &["write", "a.img", "--offset", "4M"], &data);
    assert_eq!(o.code, 0, "{o:?}");
    // Back through mirrorctl read.
    let out = Command::new(bin())
        .args(["read", "a.img", "--offset", "4M", "--length", "64M"])
        .current_dir(fx.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data, "read returned other bytes");
    let g = fx.geometry();
    for name in ["a.img", "b.img", "c.img"] {
        let got = read_at(&fx.path(name), g.data_offset + 4 * MIB, 64 * MIB);
        assert!(got == data, "{name}'s data area differs from the input");
        assert_eq!(fx.first_difference(name), None);
    }
    let s = fx.status();
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(s["write_intent_regions"], 0);
}

#[test]
fn offset_length_input_file_and_input_past_the_end() {
    let fx = Fx::with_legs("8M", "64K", &["b.img"]);
    let g = fx.geometry();
    random_file(&fx.path("in.bin"), 3 * MIB, 5);
    let input = std::fs::read(fx.path("in.bin")).unwrap();
    // --length takes at most that many bytes, from --input.
    fx.ok(&[
        "write", "a.img", "--offset", "1M", "--length", "100K", "--input", "in.bin",
    ]);
    let got = read_at(&fx.path("b.img"), g.data_offset + MIB, 100 * KIB + 1);
    assert!(got[..100 * KIB as usize] == input[..100 * KIB as usize]);
    assert_eq!(got[100 * KIB as usize], 0, "--length was exceeded");
    // --input - is stdin.
    let o = run_piped(
        fx.dir.path(),
        &["write", "a.img", "--input", "-"],
        &input[..MIB as usize],
    );
    assert_eq!(o.code, 0, "{o:?}");
    // 3 MiB at 6 MiB of an 8 MiB area: 2 MiB fit, exit 2 names the count, and what was
    // written is mirrored.
    let o = fx.run(&["write", "a.img", "--offset", "6M", "--input", "in.bin"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains(&(2 * MIB).to_string()), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert_eq!(fx.first_difference("b.img"), None);
    let tail = read_at(&fx.path("a.img"), g.data_offset + 6 * MIB, 2 * MIB);
    assert!(tail == input[..2 * MIB as usize]);
    assert_eq!(fx.status()["write_intent_regions"], 0);
    // An offset past the end writes nothing.
    let o = fx.run(&["write", "a.img", "--offset", "9M", "--input", "in.bin"]);
    assert_eq!(o.code, 2, "{o:?}");
}

#[test]
fn fracture_then_writes_then_resync_copies_exactly_the_written_regions_and_erases_the_log() {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 8 * MIB, 1);
    fx.ok(&["fracture", "a.img", "1", "--reason", "backup"]);
    // Seven scattered single regions plus one unaligned write spanning two: 9 regions.
    let mut rng = Rng::new(3);
    for i in 0..7u64 {
        let region = 10 + i * 50 + rng.next_u64() % 20;
        random_file(&fx.path("r.bin"), 64 * KIB, i);
        let off = (region * 64 * KIB).to_string();
        let o = fx.run(&["write", "a.img", "--offset", &off, "--input", "r.bin"]);
        assert_eq!(o.code, 3, "{o:?}");
    }
    random_file(&fx.path("r.bin"), 64 * KIB, 99);
    let o = fx.run(&["write", "a.img", "--offset", "40032K", "--input", "r.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let l = leg(&fx.status(), 1).clone();
    assert_eq!(l["state"], "fractured-by-admin");
    assert_eq!(l["out_of_sync_regions"], 9, "{l:#}");
    assert_eq!(leg(&fx.status(), 0)["out_of_sync_regions"], 0);
    assert!(fx.first_difference("c.img").is_some());

    let before = files_of(&fx, &["a.img", "b.img", "c.img"]);
    let d = fx.ok(&["resync", "a.img", "--dry-run", "--json"]).json();
    assert_eq!(d["dry_run"], true);
    assert_eq!(d["regions"], 9, "{d:#}");
    assert_eq!(d["bytes"], 9 * 64 * KIB, "{d:#}");
    assert!(
        files_of(&fx, &["a.img", "b.img", "c.img"]) == before,
        "--dry-run changed a file"
    );

    let r = fx.ok(&["resync", "a.img", "c.img", "--json"]).json();
    assert_eq!(r["regions"], 9, "{r:#}");
    assert_eq!(r["bytes"], 9 * 64 * KIB, "{r:#}");
    let l = leg(&fx.status(), 1).clone();
    assert_eq!(l["state"], "in-sync");
    assert_eq!(l["out_of_sync_regions"], 0);
    assert_eq!(fx.first_difference("c.img"), None);
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(r["bytes"], 0, "nothing left to copy: {r:#}");
}

#[test]
fn attach_copies_only_the_regions_the_primary_holds_data_in() {
    let fx = Fx::create("256M", "64K");
    fx.write_random(0, MIB, 1);
    fx.write_random(100 * MIB, 3 * 64 * KIB, 2);
    let v = fx.ok(&["attach", "a.img", "b.img", "--json"]).json();
    assert_eq!(v["copied_bytes"], MIB + 3 * 64 * KIB, "{v:#}");
    assert_eq!(v["state"], "in-sync");
    assert_eq!(fx.first_difference("b.img"), None);
    let m = std::fs::metadata(fx.path("b.img")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        m.blocks() * 512 < 16 * MIB,
        "the secondary was filled: {} blocks",
        m.blocks()
    );
}

#[test]
fn attach_to_a_fresh_one_tib_mirror_copies_nothing_and_is_quick() {
    let fx = Fx::create("1T", "64K");
    let t = std::time::Instant::now();
    let v = fx.ok(&["attach", "a.img", "b.img", "--json"]).json();
    eprintln!("attach to a fresh 1 TiB mirror took {:?}", t.elapsed());
    assert_eq!(v["copied_bytes"], 0, "{v:#}");
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn no_sync_leaves_the_data_regions_pending_and_assume_clean_copies_nothing() {
    let fx = Fx::create("32M", "64K");
    fx.write_random(0, 2 * MIB, 1);
    let o = fx.run(&["attach", "a.img", "b.img", "--no-sync"]);
    assert_eq!(o.code, 3, "{o:?}");
    let l = leg(&fx.status(), 0).clone();
    assert_eq!(l["state"], "syncing");
    assert_eq!(l["out_of_sync_bytes"], 2 * MIB, "{l:#}");
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(r["bytes"], 2 * MIB);
    assert_eq!(fx.first_difference("b.img"), None);
    let v = fx
        .ok(&["attach", "a.img", "c.img", "--assume-clean", "--json"])
        .json();
    assert_eq!(v["copied_bytes"], 0);
    assert_eq!(leg(&fx.status(), 1)["state"], "in-sync");
}

#[test]
fn attach_compare_writes_only_the_blocks_where_a_seeded_copy_differs() {
    // A copy of the data shipped ahead (no header yet), stale in three places and with
    // stray bytes where the primary has a hole.
    let fx = Fx::create("64M", "64K");
    let g = fx.geometry();
    fx.write_random(0, 8 * MIB, 1);
    let mut seed = std::fs::read(fx.path("a.img")).unwrap();
    seed[..g.data_offset as usize].fill(0);
    for at in [5 * 64 * KIB + 7, 6 * 64 * KIB, 40 * MIB + 3] {
        seed[(g.data_offset + at) as usize] ^= 0x5a;
    }
    std::fs::write(fx.path("b.img"), &seed).unwrap();
    let v = fx
        .ok(&["attach", "a.img", "b.img", "--compare", "--json"])
        .json();
    // Every region is compared: the copy keeps its data, so the primary's holes are
    // checked too (the stray byte at 40 MiB is one of the three blocks written).
    assert_eq!(v["copied_bytes"], 64 * MIB, "every region compared: {v:#}");
    assert_eq!(
        v["written_bytes"],
        3 * 64 * KIB,
        "only the differing blocks written: {v:#}"
    );
    assert_eq!(v["state"], "in-sync", "{v:#}");
    assert_eq!(fx.first_difference("b.img"), None);
    let (code, rep) = fx.verify(&[]);
    assert_eq!(code, 0, "{rep:#}");
    // --compare is an initial sync: with --no-sync or --assume-clean it is a usage error.
    let o = fx.run(&["attach", "a.img", "c.img", "--compare", "--assume-clean"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(!fx.path("c.img").exists());
}

#[test]
fn attach_compare_reads_nothing_where_the_primary_and_the_copy_both_have_holes() {
    require("strace", "strace");
    let fx = Fx::create("64G", "64K");
    let g = fx.geometry();
    fx.write_random(0, MIB, 1);
    // A sparse copy: the primary's first MiB, and one stray byte 30 GiB in.
    let mut first = vec![0u8; MIB as usize];
    std::fs::File::open(fx.path("a.img"))
        .unwrap()
        .read_exact_at(&mut first, g.data_offset)
        .unwrap();
    let copy = std::fs::File::create(fx.path("b.img")).unwrap();
    copy.set_len(g.data_offset + g.data_size).unwrap();
    copy.write_all_at(&first, g.data_offset).unwrap();
    copy.write_all_at(b"x", g.data_offset + 30 * 1024 * MIB)
        .unwrap();
    drop(copy);
    let counts = fx.path("strace.txt");
    let o = Command::new("strace")
        .args(["-f", "-qq", "-c", "-e", "trace=pread64,read", "-o"])
        .arg(&counts)
        .arg(bin())
        .args(["attach", "a.img", "b.img", "--compare", "--json"])
        .current_dir(fx.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["copied_bytes"], g.data_size, "{v:#}");
    // The stray byte's block (a file-system block or a 64 KiB compare block) is zeroed.
    let written = u(&v["written_bytes"]);
    assert!(written > 0 && written <= 64 * KIB, "{v:#}");
    let b = std::fs::File::open(fx.path("b.img")).unwrap();
    let mut got = vec![0u8; MIB as usize];
    b.read_exact_at(&mut got, g.data_offset).unwrap();
    assert!(got == first, "the data the copy held was damaged");
    b.read_exact_at(&mut got, g.data_offset + 30 * 1024 * MIB)
        .unwrap();
    assert!(got.iter().all(|&x| x == 0), "the stray byte is still there");
    // 64 GiB read in full would take 8192 reads of 8 MiB; only the data is read.
    let table = std::fs::read_to_string(&counts).unwrap();
    let calls: u64 = table
        .lines()
        .filter(|l| l.ends_with(" pread64") || l.ends_with(" read"))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(calls < 500, "{calls} reads:\n{table}");
}

#[test]
fn reattaching_a_detached_or_fractured_secondary_copies_only_what_changed() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.write_random(0, 16 * MIB, 1);
    fx.ok(&["fracture", "a.img", "b.img"]);
    random_file(&fx.path("w.bin"), 5 * 64 * KIB, 2);
    let o = fx.run(&["write", "a.img", "--offset", "2M", "--input", "w.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    // Re-attach of a fractured leg (like mdadm --re-add): its log decides the copy.
    let v = fx.ok(&["attach", "a.img", "b.img", "--json"]).json();
    assert_eq!(v["reattached"], true, "{v:#}");
    assert_eq!(v["copied_bytes"], 5 * 64 * KIB, "{v:#}");
    assert_eq!(fx.first_difference("b.img"), None);
}

#[test]
fn loop_devices_work_as_primary_and_as_secondary() {
    let dir = tempfile::tempdir().unwrap();
    let p = LoopDev::with_size(&dir.path().join("p.raw"), 48 * MIB);
    let s = LoopDev::with_size(&dir.path().join("s.raw"), 48 * MIB);
    let run = |args: &[&str]| run_in(dir.path(), args);
    assert_eq!(run(&["create", p.as_str()]).code, 0);
    let o = run(&["attach", p.as_str(), s.as_str()]);
    assert_eq!(o.code, 0, "{o:?}");
    let st = run(&["status", p.as_str(), "--json"]).json();
    let (off, size) = (u(&st["data_offset"]), u(&st["data_size"]));
    assert_eq!(off + size, 48 * MIB);
    let mut data = vec![0u8; 20 * MIB as usize];
    Rng::new(8).fill(&mut data);
    let o = run_piped(dir.path(), &["write", p.as_str()], &data);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(read_at(&s.path, off, 20 * MIB) == data);
    let o = run(&["fracture", p.as_str(), s.as_str()]);
    assert_eq!(o.code, 0, "{o:?}");
    let o = run_piped(
        dir.path(),
        &["write", p.as_str(), "--offset", "30M"],
        &data[..MIB as usize],
    );
    assert_eq!(o.code, 3, "{o:?}");
    let r = run(&["resync", p.as_str(), "--json"]).json();
    assert_eq!(r["bytes"], MIB);
    assert_eq!(first_difference_between(&p.path, &s.path, off, size), None);
}

#[test]
fn attach_of_a_fully_written_loop_device_mirror_copies_every_byte_to_a_file_and_a_loop_device() {
    // A block-device primary is copied through memory (issue 28: read ahead on a thread,
    // written in chunks of 1 MiB), runs of 8 MiB and a last short one.
    let dir = tempfile::tempdir().unwrap();
    let p = LoopDev::with_size(&dir.path().join("p.raw"), 40 * MIB + 192 * KIB);
    let s = LoopDev::with_size(&dir.path().join("s.raw"), 40 * MIB + 192 * KIB);
    let run = |args: &[&str]| run_in(dir.path(), args);
    assert_eq!(run(&["create", p.as_str()]).code, 0);
    let st = run(&["status", p.as_str(), "--json"]).json();
    let (off, size) = (u(&st["data_offset"]), u(&st["data_size"]));
    let mut data = vec![0u8; size as usize];
    Rng::new(28).fill(&mut data);
    let o = run_piped(dir.path(), &["write", p.as_str()], &data);
    assert_eq!(o.code, 0, "{o:?}");
    for leg in ["b.img", s.as_str()] {
        let v = run(&["attach", p.as_str(), leg, "--json"]).json();
        assert_eq!(u(&v["copied_bytes"]), size, "{v:#}");
        let path = dir.path().join(leg);
        assert!(read_at(&path, off, size) == data, "{leg} differs");
    }
}

#[test]
fn every_refusal_names_the_fault_and_changes_nothing_on_disk() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    let other = Fx::create("16M", "64K");
    std::fs::copy(other.path("a.img"), fx.path("foreign.img")).unwrap();
    std::os::unix::fs::symlink(fx.path("a.img"), fx.path("link-to-a.img")).unwrap();
    std::fs::hard_link(fx.path("b.img"), fx.path("hard-b.img")).unwrap();
    std::fs::File::create(fx.path("small.img"))
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    std::fs::File::create(fx.path("plain.raw"))
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let names = ["a.img", "b.img", "foreign.img", "small.img", "plain.raw"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["attach", "a.img", "foreign.img"], "--force"),
        (vec!["attach", "a.img", "a.img"], "primary"),
        (vec!["attach", "a.img", "./a.img"], "primary"),
        (vec!["attach", "a.img", "link-to-a.img"], "primary"),
        (vec!["attach", "a.img", "hard-b.img"], "already attached"),
        (vec!["attach", "a.img", "./b.img"], "already attached"),
        (vec!["attach", "a.img", "small.img"], "too small"),
        (vec!["fracture", "a.img", "nope.img"], "not attached"),
        (vec!["fracture", "a.img", "3"], "slot 3"),
        (vec!["resync", "a.img", "nope.img"], "not attached"),
        (vec!["detach", "a.img", "nope.img"], "not attached"),
        (vec!["write", "b.img", "--input", "/dev/null"], "b.img"),
        (
            vec!["write", "plain.raw", "--input", "/dev/null"],
            "plain.raw",
        ),
        (vec!["status", "plain.raw"], "plain.raw"),
    ];
    for (args, why) in cases {
        let before = files_of(&fx, &names);
        let o = fx.run(&args);
        assert!(matches!(o.code, 2 | 4), "{args:?}: {o:?}");
        assert_eq!(o.stderr.lines().count(), 1, "{args:?}: {o:?}");
        assert!(o.stderr.starts_with("mirrorctl: "), "{args:?}: {o:?}");
        assert!(
            o.stderr.contains(why),
            "{args:?}: expected {why:?} in {o:?}"
        );
        assert!(files_of(&fx, &names) == before, "{args:?} changed a file");
    }
    // A full slot table.
    let one = Fx::create("16M", "64K");
    one.ok(&[
        "create",
        "x.img",
        "--size",
        "16M",
        "--max-secondaries",
        "1",
        "--force",
    ]);
    one.ok(&["attach", "x.img", "y.img"]);
    let o = one.run(&["attach", "x.img", "z.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("slot"), "{o:?}");
    assert!(
        !one.path("z.img").exists(),
        "a refused attach left a file behind"
    );
}

#[test]
fn detach_frees_the_slot_and_marks_the_image_detached() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.ok(&["detach", "a.img", "0"]);
    let s = fx.status();
    let legs = s["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 1);
    assert_eq!(legs[0]["path"], "c.img");
    let b = fx.ok(&["status", "b.img", "--json"]).json();
    assert_eq!(b["role"], "detached");
    let v = fx.ok(&["attach", "a.img", "d.img", "--json"]).json();
    assert_eq!(v["slot"], 0, "the freed slot is reused: {v:#}");
}

#[test]
fn read_into_a_closed_pipe_exits_quietly() {
    let fx = Fx::create("64M", "64K");
    fx.write_random(0, 32 * MIB, 1);
    let mut child = Command::new(bin())
        .args(["read", "a.img"])
        .current_dir(fx.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.stderr, b"", "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        matches!(o.status.code(), Some(0) | Some(141)),
        "{:?}",
        o.status
    );
}

#[test]
fn the_readme_quick_start_flow_works_end_to_end() {
    let fx = Fx::create("64M", "64K");
    fx.ok(&["attach", "a.img", "b.img"]);
    fx.ok(&["attach", "a.img", "c.img"]);
    let mut data = vec![0u8; 24 * MIB as usize];
    Rng::new(5).fill(&mut data);
    assert_eq!(run_piped(fx.dir.path(), &["write", "a.img"], &data).code, 0);
    fx.ok(&["fracture", "a.img", "c.img", "--reason", "backup window"]);
    let o = run_piped(
        fx.dir.path(),
        &["write", "a.img", "--offset", "40M"],
        &data[..4 * MIB as usize],
    );
    assert_eq!(o.code, 3);
    let text = fx.ok(&["status", "a.img"]).stdout;
    assert!(text.contains("fractured-by-admin"), "{text}");
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(r["bytes"], 4 * MIB);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    for n in ["b.img", "c.img"] {
        assert_eq!(fx.first_difference(n), None, "{n}");
    }
}

#[test]
fn attach_and_verify_on_a_fresh_loop_device_mirror_touch_only_what_was_written() {
    // W7: a 512 MiB block device holds no holes; the written map is what lets attach and
    // verify skip the chunks no write reached.
    let dir = tempfile::tempdir().unwrap();
    let p = LoopDev::with_size(&dir.path().join("p.raw"), 512 * MIB);
    let run = |args: &[&str]| run_in(dir.path(), args);
    let o = run(&["create", p.as_str()]);
    assert_eq!(o.code, 0, "{o:?}");
    let st = run(&["status", p.as_str(), "--json"]).json();
    let (off, size) = (u(&st["data_offset"]), u(&st["data_size"]));
    // A little data in three places: 256 KiB, 64 KiB, one 4 KiB block (of known length:
    // a stream of unknown length marks its whole 64 MiB write-intent window written).
    let mut data = vec![0u8; 256 * KIB as usize];
    Rng::new(28).fill(&mut data);
    for (at, len) in [("0", 256 * KIB), ("300M", 64 * KIB), ("450M", 4 * KIB)] {
        let o = run_piped(
            dir.path(),
            &[
                "write",
                p.as_str(),
                "--offset",
                at,
                "--length",
                &len.to_string(),
            ],
            &data[..len as usize],
        );
        assert_eq!(o.code, 0, "{o:?}");
    }
    let written = 324 * KIB;
    // A sparse file secondary: only the written chunks are copied, and it stays sparse.
    let b = dir.path().join("b.img");
    std::fs::File::create(&b)
        .unwrap()
        .set_len(off + size)
        .unwrap();
    let started = std::time::Instant::now();
    let v = run(&["attach", p.as_str(), "b.img", "--json"]).json();
    let secs = started.elapsed().as_secs_f64();
    let copied = u(&v["copied_bytes"]);
    assert!(
        (written..=written + 3 * 64 * KIB).contains(&copied),
        "copied {copied} bytes for {written} written: {v:#}"
    );
    assert!(secs < 20.0, "attach took {secs:.1}s");
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&b).unwrap().blocks() * 512;
    assert!(
        allocated < off + 4 * MIB,
        "the secondary allocated {allocated} bytes"
    );
    assert_eq!(first_difference_between(&p.path, &b, off, size), None);
    // A loop device secondary likewise.
    let s = LoopDev::with_size(&dir.path().join("s.raw"), 512 * MIB);
    let v = run(&["attach", p.as_str(), s.as_str(), "--json"]).json();
    let copied = u(&v["copied_bytes"]);
    assert!(copied <= written + 3 * 64 * KIB, "{v:#}");
    assert_eq!(first_difference_between(&p.path, &s.path, off, size), None);
    // verify reads only the written chunks: the rest is counted as never written.
    let o = run(&["verify", p.as_str(), "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let r = o.json();
    assert_eq!(r["result"], "clean", "{r:#}");
    let unwritten = u(&r["unwritten_bytes"]);
    assert!(
        unwritten >= 2 * (size - written - 3 * 64 * KIB),
        "{unwritten} of {} bytes compared were skipped: {r:#}",
        u(&r["bytes_compared"])
    );
    // A byte changed on a secondary inside a written chunk is still found.
    let f = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(b"X", off + 300 * MIB + 10).unwrap();
    f.sync_all().unwrap();
    let o = run(&["verify", p.as_str(), "--json"]);
    assert_eq!(o.json()["result"], "differences", "{o:?}");
}
