//! Failover on the real binary (issue 7): promoting a secondary when the primary is gone and
//! when it is reachable, the old primary coming back with a partial resync (the count of
//! copied regions checked), a stale secondary refused without `--force`, split brain
//! refused by every command that would mix the sides and resolved with
//! `--discard-secondary-changes`, and the generation relation shown by `status`.

use crate::support::*;
use serde_json::Value;
use std::os::unix::fs::FileExt;

fn leg_named(v: &Value, path_suffix: &str) -> Value {
    v["legs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["path"].as_str().unwrap_or("").ends_with(path_suffix))
        .cloned()
        .unwrap_or_else(|| panic!("no leg {path_suffix}: {v:#}"))
}

fn status_of(fx: &Fx, img: &str) -> Value {
    fx.ok(&["status", img, "--json"]).json()
}

/// Writes 64 KiB of seeded data at region `region` of `img` (64 KiB regions); returns the
/// exit code (0, or 3 when the mirror is degraded).
fn write_region(fx: &Fx, img: &str, region: u64, seed: u64) -> i32 {
    random_file(&fx.path("r.bin"), 64 * KIB, seed);
    let off = (region * 64 * KIB).to_string();
    let o = fx.run(&["write", img, "--offset", &off, "--input", "r.bin"]);
    assert!(matches!(o.code, 0 | 3), "write to {img}: {o:?}");
    o.code
}

fn same(fx: &Fx, a: &str, b: &str) -> bool {
    let g = fx.geometry();
    first_difference_between(&fx.path(a), &fx.path(b), g.data_offset, g.data_size).is_none()
}

#[test]
fn with_the_primary_gone_a_secondary_is_promoted_and_the_old_primary_returns_with_only_the_changes()
{
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    let g = fx.geometry();
    fx.write_random(0, 8 * MIB, 1);
    // The former primary's last write reached c.img but not b.img: a few bytes in region 5
    // (data) and in region 700 (a hole on the primary).
    let c = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.path("c.img"))
        .unwrap();
    for region in [5u64, 700] {
        c.write_all_at(b"in flight", g.data_offset + region * 64 * KIB + 1000)
            .unwrap();
    }
    drop(c);
    std::fs::rename(fx.path("a.img"), fx.path("a.away")).unwrap();
    let o = fx.run(&["promote", "b.img", "--json"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    let p = o.json();
    assert_eq!(p["old_primary_reachable"], false, "{p:#}");
    let s = status_of(&fx, "b.img");
    assert_eq!(s["role"], "primary");
    // c.img is marked for a full resync; --compare writes just the two differing blocks
    // (in the primary's hole, only the file-system block c.img holds data in).
    assert_eq!(u(&leg_named(&s, "c.img")["out_of_sync_regions"]), 1024);
    let r = fx
        .ok(&["resync", "b.img", "c.img", "--compare", "--json"])
        .json();
    assert_eq!(r["compare"], true, "{r:#}");
    assert_eq!(r["regions"], 1024, "{r:#}");
    let written = u(&r["written_bytes"]);
    assert!(written > 64 * KIB && written <= 2 * 64 * KIB, "{r:#}");
    assert_eq!(r["legs"][0]["state"], "in-sync", "{r:#}");
    let (b, c) = (fx.path("b.img"), fx.path("c.img"));
    assert_eq!(
        first_difference_between(&b, &c, g.data_offset, g.data_size),
        None
    );
    // Keep writing on the new primary: three regions.
    for (i, r) in [200u64, 300, 301].iter().enumerate() {
        write_region(&fx, "b.img", *r, 10 + i as u64);
    }
    std::fs::rename(fx.path("a.away"), fx.path("a.img")).unwrap();
    // Exit 3: c.img still waits for its resync (the old primary's last window is unknown).
    let o = fx.run(&["attach", "b.img", "a.img", "--json"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    let v = o.json();
    assert_eq!(v["reattached"], true, "{v:#}");
    assert_eq!(
        v["copied_bytes"],
        3 * 64 * KIB,
        "only the regions written since the promotion: {v:#}"
    );
    assert!(same(&fx, "b.img", "a.img"));
    let o = fx.run(&["resync", "b.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    let (code, rep) = {
        let o = fx.run(&["verify", "b.img", "--json"]);
        (o.code, o.json())
    };
    assert_eq!(code, 0, "{rep:#}");
    for n in ["a.img", "c.img"] {
        assert!(same(&fx, "b.img", n), "{n} differs from the new primary");
    }
    assert_eq!(status_of(&fx, "b.img")["healthy"], true);
    assert_eq!(status_of(&fx, "a.img")["role"], "secondary");
}

#[test]
fn a_former_primary_that_returns_unaware_of_the_promotion_cannot_write_to_the_secondaries_taken_over(
) {
    // a.img is cut off (not dead), b.img is promoted; c.img now follows b.img. When a.img
    // comes back and someone writes to it, c.img must not receive a.img's data: b.img lists
    // it as its own leg and would never know.
    let fx = Fx::with_legs("32M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 2 * MIB, 1);
    std::fs::rename(fx.path("a.img"), fx.path("a.away")).unwrap();
    let o = fx.run(&["promote", "b.img"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    assert!(
        !o.stderr.contains("warning"),
        "c.img was taken over without a warning: {o:?}"
    );
    std::fs::rename(fx.path("a.away"), fx.path("a.img")).unwrap();
    let c_before = std::fs::read(fx.path("c.img")).unwrap();
    let b_before = std::fs::read(fx.path("b.img")).unwrap();

    let a_before = std::fs::read(fx.path("a.img")).unwrap();
    // The stale primary refuses the write before writing anything (P6): every command that
    // writes data or logs, naming the new primary and how to come back as its secondary.
    random_file(&fx.path("r.bin"), 64 * KIB, 5);
    for args in [
        &["write", "a.img", "--offset", "1M", "--input", "r.bin"][..],
        &["resync", "a.img"],
        &["attach", "a.img", "d.img"],
        &["verify", "a.img", "--repair"],
    ] {
        let o = fx.run(args);
        assert_eq!(o.code, 2, "{args:?} on the replaced primary: {o:?}");
        assert!(o.stderr.contains("no longer the primary"), "{o:?}");
        assert!(o.stderr.contains("mirrorctl attach b.img"), "{o:?}");
    }
    assert!(!fx.path("d.img").exists(), "attach created its secondary");
    assert!(
        std::fs::read(fx.path("a.img")).unwrap() == a_before,
        "the replaced primary changed"
    );
    assert!(
        std::fs::read(fx.path("c.img")).unwrap() == c_before,
        "the former primary wrote to a secondary of the new primary"
    );
    assert!(
        std::fs::read(fx.path("b.img")).unwrap() == b_before,
        "the former primary wrote to the new primary"
    );
    let s = status_of(&fx, "a.img");
    assert_eq!(s["role"], "replaced", "{s:#}");
    assert_eq!(s["healthy"], false, "{s:#}");
    assert!(
        s["replaced_by"].as_str().unwrap().ends_with("b.img"),
        "{s:#}"
    );
    let o = fx.run(&["status", "a.img", "--check"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stdout.contains("REPLACED"), "{o:?}");
    // The new primary keeps c.img as its leg and brings it up to date.
    write_region(&fx, "b.img", 40, 6);
    let o = fx.run(&["resync", "b.img", "c.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(same(&fx, "b.img", "c.img"));
    assert_eq!(
        status_of(&fx, "b.img")["healthy"],
        false,
        "a.img is still to return"
    );
    let l = leg_named(&status_of(&fx, "b.img"), "c.img");
    assert_eq!(l["state"], "in-sync", "{l:#}");
}

#[test]
fn a_planned_promotion_demotes_the_old_primary_and_keeps_the_other_legs_in_sync() {
    let fx = Fx::with_legs("32M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 4 * MIB, 1);
    let p = fx.ok(&["promote", "b.img", "--json"]).json();
    assert_eq!(p["old_primary_reachable"], true, "{p:#}");
    let s = status_of(&fx, "b.img");
    assert_eq!(s["healthy"], true, "{s:#}");
    for n in ["a.img", "c.img"] {
        let l = leg_named(&s, n);
        assert_eq!(l["state"], "in-sync", "{l:#}");
        assert_eq!(l["generation_relation"], "in-sync", "{l:#}");
    }
    assert_eq!(status_of(&fx, "a.img")["role"], "secondary");
    assert_eq!(write_region(&fx, "b.img", 7, 2), 0);
    assert!(same(&fx, "b.img", "a.img") && same(&fx, "b.img", "c.img"));
    // The former primary is a secondary now: writing to it is refused.
    let o = fx.run(&["write", "a.img", "--input", "r.bin"]);
    assert_eq!(o.code, 2, "{o:?}");
}

#[test]
fn a_secondary_attached_after_a_planned_promotion_gets_every_byte_the_new_primary_holds() {
    // W7: the new primary keeps no written map. The former primary's map, copied with its
    // superblock, would point at the new primary's own padding (never written there): attach
    // would copy nothing and verify would call the empty secondary clean.
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    fx.write_random(MIB, 4 * MIB, 1);
    fx.ok(&["promote", "b.img"]);
    // And back: a.img's padding holds its own old map, with nothing of what b.img wrote.
    assert_eq!(write_region(&fx, "b.img", 200, 2), 0);
    fx.ok(&["promote", "a.img"]);
    fx.ok(&["attach", "a.img", "c.img"]);
    assert!(same(&fx, "a.img", "c.img"), "c.img lacks data a.img holds");
    fx.ok(&["detach", "a.img", "c.img"]);
    std::fs::remove_file(fx.path("c.img")).unwrap();
    fx.ok(&["attach", "a.img", "c.img", "--assume-clean"]);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "verify calls an empty secondary equal: {v:#}");
}

#[test]
fn a_stale_secondary_is_refused_with_how_far_behind_it_is_unless_forced() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    fx.write_random(0, MIB, 1);
    fx.ok(&["fracture", "a.img", "b.img"]);
    write_region(&fx, "a.img", 3, 2);
    write_region(&fx, "a.img", 9, 3);
    let before = std::fs::read(fx.path("b.img")).unwrap();
    let o = fx.run(&["promote", "b.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--force"), "{o:?}");
    assert!(o.stderr.contains("2 regions"), "says how far behind: {o:?}");
    assert!(std::fs::read(fx.path("b.img")).unwrap() == before);
    let o = fx.run(&["promote", "b.img", "--force"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    assert_eq!(status_of(&fx, "b.img")["role"], "primary");
}

#[test]
fn split_brain_is_refused_by_every_mixing_command_and_the_discard_flag_copies_the_union() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    fx.write_random(0, 2 * MIB, 1);
    fx.while_away("a.img", || {
        let o = fx.run(&["promote", "b.img"]);
        assert!(matches!(o.code, 0 | 3), "{o:?}");
        write_region(&fx, "b.img", 100, 2);
    });
    let b_before = std::fs::read(fx.path("b.img")).unwrap();
    // The old primary still believes it is primary and, while it cannot see b.img (P6
    // needs a reachable leg), writes: b.img is fractured there instead.
    fx.while_away("b.img", || {
        assert_eq!(write_region(&fx, "a.img", 200, 3), 3);
        write_region(&fx, "a.img", 201, 4);
    });
    let a_status = status_of(&fx, "a.img");
    assert_eq!(leg_named(&a_status, "b.img")["state"], "fractured-by-error");
    assert_eq!(a_status["role"], "replaced", "{a_status:#}");
    // With b.img back in sight it refuses to write to it.
    let o = fx.run(&["resync", "a.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    let b_now = std::fs::read(fx.path("b.img")).unwrap();
    assert!(
        b_now[1 << 20..] == b_before[1 << 20..],
        "the old primary wrote into the promoted image's data"
    );
    // Attaching the diverged image is refused, naming both generations.
    let before = std::fs::read(fx.path("a.img")).unwrap();
    let o = fx.run(&["attach", "b.img", "a.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("generation"), "{o:?}");
    assert!(o.stderr.contains("--discard-secondary-changes"), "{o:?}");
    assert!(std::fs::read(fx.path("a.img")).unwrap() == before);
    let l = leg_named(&status_of(&fx, "b.img"), "a.img");
    assert_eq!(l["generation_relation"], "diverged", "{l:#}");

    let v = fx
        .ok(&[
            "attach",
            "b.img",
            "a.img",
            "--discard-secondary-changes",
            "--json",
        ])
        .json();
    assert_eq!(
        v["copied_bytes"],
        3 * 64 * KIB,
        "the union of both sides' changes (regions 100, 200, 201): {v:#}"
    );
    assert!(same(&fx, "b.img", "a.img"));
    let o = fx.run(&["verify", "b.img", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
}
