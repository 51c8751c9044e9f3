//! Kill points on the real binary (issue 11): `promote`, `detach`, `attach` and `resync`
//! killed with SIGKILL (strace `-e inject=SYSCALL:signal=SIGKILL:when=N`) before their Nth
//! write, sync or copy syscall, for every N until the command runs to the end. After each
//! kill, status must tell the truth (one primary accepting writes, no image claiming a
//! slot it does not have), a rerun or the next command must complete, and at the end every
//! leg is in sync and byte-identical.
//!
//! strace counts per syscall and per thread: with a copy running in several threads, the
//! kill comes at whichever thread reaches its Nth call first, so N = 1, 2, ... covers every
//! call of every thread, though not every combination.

use crate::support::*;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

/// The syscalls a command is killed before: data and header writes, syncs of files and
/// of mapped bitmaps, kernel copies, hole punching.
const POINTS: [&str; 5] = [
    "pwrite64",
    "fdatasync",
    "msync",
    "copy_file_range",
    "fallocate",
];
/// More calls than any of these commands makes of one syscall.
const MAX_N: u32 = 400;

/// Runs mirrorctl `args` in `dir`, killed before its `n`th `syscall`. `None`: it was
/// killed; `Some(out)`: it ran to the end before reaching that call.
fn run_killed(dir: &Path, args: &[&str], syscall: &str, n: u32) -> Option<Out> {
    require("strace", "strace");
    let o = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=SIGKILL:when={n}"))
        .arg(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running strace");
    if o.status.signal() == Some(9) || o.status.code() == Some(137) {
        return None;
    }
    Some(Out {
        code: o.status.code().expect("strace died of another signal"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// Copies every file of `from` into `to` (sparse).
fn copy_files(from: &Path, to: &Path) {
    let files: Vec<_> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    let st = Command::new("cp")
        .arg("--sparse=always")
        .args(&files)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Kills `args` at every point of every syscall in [`POINTS`], calling `check` on the
/// images left behind (with a description of the point). Each run starts from the images
/// `fx` holds now, restored in place: legs are recorded by absolute path, so a copy in
/// another folder would still name these. Returns how many kills it made.
fn every_kill(fx: &Fx, args: &[&str], check: &dyn Fn(&Fx, &str)) -> u32 {
    let saved = tempfile::tempdir().unwrap();
    copy_files(fx.dir.path(), saved.path());
    let restore = || {
        for e in std::fs::read_dir(fx.dir.path()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        copy_files(saved.path(), fx.dir.path());
    };
    let mut kills = 0;
    for sc in POINTS {
        for n in 1..=MAX_N {
            restore();
            match run_killed(fx.dir.path(), args, sc, n) {
                None => {
                    kills += 1;
                    check(fx, &format!("{args:?} killed before {sc} #{n}"));
                }
                Some(o) => {
                    assert!(
                        matches!(o.code, 0 | 3),
                        "{args:?} without a kill (before {sc} #{n}): {o:?}"
                    );
                    check(
                        fx,
                        &format!("{args:?} run to the end ({sc} #{n} never came)"),
                    );
                    break;
                }
            }
            assert!(n < MAX_N, "{args:?} made more than {MAX_N} {sc} calls");
        }
    }
    kills
}

fn status_of(fx: &Fx, img: &str) -> Value {
    let o = fx.run(&["status", img, "--json"]);
    assert_eq!(o.code, 0, "status {img}: {o:?}");
    o.json()
}

fn same(fx: &Fx, a: &str, b: &str) -> bool {
    let g = fx.geometry();
    first_difference_between(&fx.path(a), &fx.path(b), g.data_offset, g.data_size).is_none()
}

/// Every listed leg of `primary` in sync, nothing pending, data identical.
fn converged(fx: &Fx, primary: &str, legs: &[&str], ctx: &str) {
    let o = fx.run(&["status", primary, "--check"]);
    assert_eq!(o.code, 0, "{ctx}: not healthy at the end: {o:?}");
    let o = fx.run(&["verify", primary]);
    assert_eq!(o.code, 0, "{ctx}: verify at the end: {o:?}");
    for l in legs {
        assert!(same(fx, primary, l), "{ctx}: {l} differs from {primary}");
    }
}

fn listed(s: &Value, name: &str) -> bool {
    s["legs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["path"].as_str().unwrap_or("").ends_with(name))
}

#[test]
fn a_promotion_killed_at_any_point_leaves_one_writable_primary_and_a_rerun_finishes_it() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 4 * MIB, 1);
    let kills = every_kill(&fx, &["promote", "b.img"], &|fx, ctx| {
        let b = status_of(fx, "b.img");
        let a_before = std::fs::read(fx.path("a.img")).unwrap();
        let o = fx.run(&[
            "write",
            "a.img",
            "--offset",
            "8M",
            "--input",
            "/etc/hostname",
        ]);
        if b["role"] == "primary" {
            // P6/P7: the former primary refuses writes and says how to finish.
            assert_eq!(o.code, 2, "{ctx}: the old primary accepted a write: {o:?}");
            assert!(
                std::fs::read(fx.path("a.img")).unwrap() == a_before,
                "{ctx}: the refused write changed a.img"
            );
            let a = status_of(fx, "a.img");
            assert!(
                a["role"] == "replaced" || a["role"] == "secondary",
                "{ctx}: a.img says it is {}",
                a["role"]
            );
            if a["role"] == "replaced" {
                assert!(o.stderr.contains("mirrorctl promote b.img"), "{ctx}: {o:?}");
                assert_eq!(fx.run(&["status", "a.img", "--check"]).code, 3, "{ctx}");
            }
        } else {
            // Nothing took effect: a.img is still the primary and works.
            assert_eq!(b["role"], "secondary", "{ctx}");
            assert_eq!(o.code, 0, "{ctx}: {o:?}");
        }
        // The rerun finishes the promotion (or finds it finished).
        let o = fx.run(&["promote", "b.img"]);
        let finished = o.stderr.contains("already the primary") && o.code == 2;
        assert!(matches!(o.code, 0 | 3) || finished, "{ctx}: rerun: {o:?}");
        if finished {
            // Only when nothing was left to do: a.img already follows b.img.
            assert_eq!(status_of(fx, "a.img")["role"], "secondary", "{ctx}: {o:?}");
        }
        assert_eq!(status_of(fx, "a.img")["role"], "secondary", "{ctx}");
        let o = fx.run(&["resync", "b.img"]);
        assert_eq!(o.code, 0, "{ctx}: resync after the promotion: {o:?}");
        converged(fx, "b.img", &["a.img", "c.img"], ctx);
    });
    eprintln!("{kills} kill points");
    assert!(kills > 5, "only {kills} kill points");
}

#[test]
fn a_detach_killed_at_any_point_is_completed_by_a_rerun_and_status_never_lies() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 4 * MIB, 1);
    let kills = every_kill(&fx, &["detach", "a.img", "b.img"], &|fx, ctx| {
        let a = status_of(fx, "a.img");
        let b = status_of(fx, "b.img");
        if !listed(&a, "b.img") {
            // D1: a freed slot means the image already says detached.
            assert_eq!(b["role"], "detached", "{ctx}: freed but {b:#}");
        } else {
            assert!(b["role"] == "secondary" || b["role"] == "detached", "{ctx}");
        }
        let o = fx.run(&["detach", "a.img", "b.img"]);
        if listed(&a, "b.img") {
            assert_eq!(o.code, 0, "{ctx}: rerun: {o:?}");
        } else {
            assert_eq!(o.code, 2, "{ctx}: {o:?}");
            assert!(o.stderr.contains("not attached"), "{ctx}: {o:?}");
        }
        assert!(!listed(&status_of(fx, "a.img"), "b.img"), "{ctx}");
        assert_eq!(status_of(fx, "b.img")["role"], "detached", "{ctx}");
        fx.write_random(MIB, 64 * KIB, 7);
        converged(fx, "a.img", &["c.img"], ctx);
    });
    eprintln!("{kills} kill points");
    assert!(kills > 3, "only {kills} kill points");
}

#[test]
fn an_attach_killed_at_any_point_is_completed_by_a_rerun_or_a_resync() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    fx.write_random(0, 6 * MIB, 1);
    let kills = every_kill(&fx, &["attach", "a.img", "c.img"], &|fx, ctx| {
        let a = status_of(fx, "a.img");
        if listed(&a, "c.img") {
            let o = fx.run(&["resync", "a.img"]);
            assert_eq!(o.code, 0, "{ctx}: resync: {o:?}");
        } else {
            let o = fx.run(&["attach", "a.img", "c.img"]);
            assert_eq!(o.code, 0, "{ctx}: attach again: {o:?}");
        }
        converged(fx, "a.img", &["b.img", "c.img"], ctx);
    });
    eprintln!("{kills} kill points");
    assert!(kills > 5, "only {kills} kill points");
}

#[test]
fn a_resync_killed_at_any_point_never_grows_the_log_and_a_rerun_completes_it() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 4 * MIB, 1);
    fx.ok(&["fracture", "a.img", "b.img"]);
    random_file(&fx.path("w.bin"), 3 * MIB, 2);
    let o = fx.run(&["write", "a.img", "--offset", "5M", "--input", "w.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let before = u(&leg(&status_of(&fx, "a.img"), 0)["out_of_sync_regions"]);
    assert_eq!(before, 48);
    let kills = every_kill(&fx, &["resync", "a.img"], &|fx, ctx| {
        let s = status_of(fx, "a.img");
        let l = leg(&s, 0);
        assert!(u(&l["out_of_sync_regions"]) <= before, "{ctx}: {l:#}");
        if l["state"] == "in-sync" {
            assert_eq!(l["out_of_sync_regions"], 0, "{ctx}: in sync with a log");
        }
        let o = fx.run(&["resync", "a.img"]);
        assert_eq!(o.code, 0, "{ctx}: rerun: {o:?}");
        converged(fx, "a.img", &["b.img", "c.img"], ctx);
    });
    eprintln!("{kills} kill points");
    assert!(kills > 3, "only {kills} kill points");
}
