//! Metadata fuzzing on the real binary (issue 11): random byte flips, zeroed pages and
//! truncation inside the metadata area of the primary or a secondary, then every subcommand
//! under a timeout. No panic, no death by a signal, no hang; the exit code is one of the
//! documented ones; and a command that refused (exit 2) left every image as it was.

use crate::support::*;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

/// Exit codes mirrorctl documents (README, mirrorctl(1)).
const DOCUMENTED: [i32; 6] = [0, 1, 2, 3, 4, 5];
const IMAGES: [&str; 3] = ["a.img", "b.img", "c.img"];

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Flip this many random bytes in the metadata area.
    Flips(u32),
    /// Zero one random 4 KiB page of the metadata area.
    ZeroPage,
    /// Cut the file at a random offset inside the metadata area (or just past it).
    Truncate,
}

fn damage(path: &Path, how: Damage, meta: u64, rng: &mut Rng) -> String {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    match how {
        Damage::Flips(n) => {
            let mut at = Vec::new();
            for _ in 0..n {
                // Mostly the superblocks and the first bitmap pages, where the bytes live.
                let off = if rng.next_u64() % 2 == 0 {
                    rng.next_u64() % (256 * KIB)
                } else {
                    rng.next_u64() % meta
                };
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, off).unwrap();
                b[0] ^= 1 << (rng.next_u64() % 8);
                f.write_all_at(&b, off).unwrap();
                at.push(off);
            }
            format!("flipped bytes at {at:?}")
        }
        Damage::ZeroPage => {
            let off = (rng.next_u64() % (meta / 4096)) * 4096;
            f.write_all_at(&[0u8; 4096], off).unwrap();
            format!("zeroed the page at {off}")
        }
        Damage::Truncate => {
            let off = rng.next_u64() % (meta + 64 * KIB);
            f.set_len(off).unwrap();
            format!("truncated to {off} bytes")
        }
    }
}

fn contents(dir: &Path) -> Vec<Option<Vec<u8>>> {
    IMAGES
        .iter()
        .map(|n| std::fs::read(dir.join(n)).ok())
        .collect()
}

#[test]
fn damaged_metadata_never_panics_hangs_or_changes_anything_when_refused() {
    require("timeout", "coreutils");
    let base = Fx::with_legs("8M", "64K", &["b.img", "c.img"]);
    base.write_random(0, 2 * MIB, 1);
    base.ok(&["fracture", "a.img", "c.img"]);
    random_file(&base.path("w.bin"), 256 * KIB, 2);
    let o = base.run(&["write", "a.img", "--offset", "3M", "--input", "w.bin"]);
    assert_eq!(o.code, 3, "c.img is fractured: {o:?}");
    let meta = base.geometry().data_offset;
    let saved = tempfile::tempdir().unwrap();
    for n in IMAGES {
        std::fs::copy(base.path(n), saved.path().join(n)).unwrap();
    }
    random_file(&base.path("in.bin"), 64 * KIB, 3);
    let commands: [&[&str]; 12] = [
        &["status", "a.img", "--json"],
        &["status", "b.img"],
        &["read", "a.img", "--length", "128K", "-o", "/dev/null"],
        &["write", "a.img", "--input", "in.bin"],
        &["fracture", "a.img", "b.img"],
        &["resync", "a.img"],
        &["attach", "a.img", "d.img"],
        &["detach", "a.img", "c.img"],
        &["verify", "a.img"],
        &["verify", "a.img", "--repair"],
        &["promote", "b.img"],
        &["create", "a.img", "--json"],
    ];
    let mut rng = Rng::new(42);
    let mut runs = 0;
    let mut by_code = [0u32; 6];
    // MIRRORCTL_FUZZ_CASES=N runs more damage cases (30 in the suite).
    let cases: u64 = std::env::var("MIRRORCTL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for case in 0..cases {
        let how = match case % 4 {
            0 => Damage::Flips(1),
            1 => Damage::Flips(1 + (rng.next_u64() % 16) as u32),
            2 => Damage::ZeroPage,
            _ => Damage::Truncate,
        };
        let target = if case % 3 == 2 { "b.img" } else { "a.img" };
        for args in commands {
            for n in IMAGES {
                std::fs::copy(saved.path().join(n), base.path(n)).unwrap();
            }
            let _ = std::fs::remove_file(base.path("d.img"));
            let mut r = Rng::new(1000 + case);
            let what = damage(&base.path(target), how, meta, &mut r);
            let before = contents(base.dir.path());
            let o = Command::new("timeout")
                .args(["-s", "KILL", "20"])
                .arg(bin())
                .args(args)
                .current_dir(base.dir.path())
                .output()
                .unwrap();
            let ctx = format!(
                "{args:?} after {target}: {what}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(o.status.signal(), None, "killed by a signal: {ctx}");
            let code = o.status.code().unwrap();
            assert_ne!(code, 137, "hung (killed by timeout): {ctx}");
            assert_ne!(code, 101, "panicked: {ctx}");
            assert!(
                DOCUMENTED.contains(&code),
                "undocumented exit {code}: {ctx}"
            );
            assert!(
                !String::from_utf8_lossy(&o.stderr).contains("panicked"),
                "{ctx}"
            );
            if code == 2 {
                assert!(
                    contents(base.dir.path()) == before,
                    "refused (exit 2) but changed an image: {ctx}"
                );
                assert!(
                    !base.path("d.img").exists(),
                    "refused but created d.img: {ctx}"
                );
            }
            by_code[code as usize] += 1;
            runs += 1;
        }
    }
    eprintln!("{runs} runs, exit codes 0..5: {by_code:?}");
    // The damage must have been seen: refusals and metadata errors both occur.
    assert!(by_code[2] > 0 && by_code[4] > 0, "{by_code:?}");
}
