//! `mirrorctl verify` (issue 4): exact mismatch ranges per leg, `--repair`, the last partial
//! region, coalescing, budgeted (`--max-time`) scrubbing from a cursor saved in the header,
//! status fields, a concurrent writer, fractured and syncing legs, bad arguments and broken
//! secondaries. Every test drives the real binary in its own temporary directory.

use crate::support::*;
use serde_json::Value;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn range(first: u64, end: u64, region: u64, data_size: u64) -> Value {
    let offset = first * region;
    let length = (end * region).min(data_size) - offset;
    serde_json::json!({
        "first_region": first,
        "end_region": end,
        "offset": offset,
        "length": length,
    })
}

fn assert_leg_clean(v: &Value, slot: u64) {
    let l = leg(v, slot);
    assert_eq!(l["compared"], true, "{l:#}");
    assert_eq!(l["mismatched_regions"], 0, "{l:#}");
    assert_eq!(l["mismatched_bytes"], 0, "{l:#}");
    assert_eq!(l["mismatches"], serde_json::json!([]), "{l:#}");
    assert_eq!(l["error"], Value::Null, "{l:#}");
    assert_eq!(l["skipped"], Value::Null, "{l:#}");
}

// ---------------------------------------------------------------------------------------
// one flipped byte

/// 64 MiB, regions of 64 KiB, secondaries b.img (slot 0) and c.img (slot 1), 30 MiB of data.
fn two_leg_mirror() -> Fx {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 30 * MIB, 1);
    assert_eq!(fx.first_difference("b.img"), None);
    assert_eq!(fx.first_difference("c.img"), None);
    fx
}

const FLIP_AT: u64 = 5 * 64 * KIB + 123;

#[test]
fn flipping_one_byte_in_a_secondary_exits_1_and_names_exactly_that_region_and_leg() {
    let fx = two_leg_mirror();
    fx.flip("c.img", FLIP_AT);

    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["result"], "differences");
    assert_eq!(v["complete"], true);
    assert_eq!(v["start_region"], 0);
    assert_eq!(v["end_region"], 1024);
    assert_eq!(v["region_count"], 1024);
    assert_eq!(v["legs"].as_array().unwrap().len(), 2);
    assert_leg_clean(&v, 0);
    assert_eq!(leg(&v, 0)["regions_compared"], 1024);
    let c = leg(&v, 1);
    assert_eq!(c["path"], "c.img");
    assert_eq!(c["compared"], true);
    assert_eq!(c["regions_compared"], 1024);
    assert_eq!(c["mismatched_regions"], 1);
    assert_eq!(c["mismatched_bytes"], 64 * KIB);
    assert_eq!(c["repaired"], false);
    assert_eq!(
        c["mismatches"],
        serde_json::json!([{"first_region": 5, "end_region": 6, "offset": 327680, "length": 65536}])
    );
    // Both legs, whole data area.
    assert_eq!(v["bytes_compared"], 2 * 64 * MIB);

    // Without --repair nothing is changed.
    assert_eq!(fx.first_difference("c.img"), Some(FLIP_AT));
    let s = fx.status();
    assert_eq!(s["last_verify_result"], "differences");
    assert_eq!(s["last_verify_mismatched_regions"], 1);

    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.has_line("slot 0 (b.img): identical"), "{o:?}");
    assert!(
        o.has_line("slot 1 (c.img): 1 mismatched region (64.0 KiB)"),
        "{o:?}"
    );
    assert!(
        o.has_line("  regions 5..6  bytes 327680..393216 (65536 bytes)"),
        "{o:?}"
    );
    assert_eq!(
        o.stdout
            .lines()
            .filter(|l| l.starts_with("  regions "))
            .count(),
        1,
        "{o:?}"
    );
    assert!(o.has_line("result: differences"), "{o:?}");

    // Naming a leg compares only that leg.
    let (code, v) = fx.verify(&["b.img"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "clean");
    assert_eq!(v["legs"].as_array().unwrap().len(), 1);
    assert_leg_clean(&v, 0);
    let (code, v) = fx.verify(&["1"]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["legs"].as_array().unwrap().len(), 1);
    assert_eq!(u(&leg(&v, 1)["mismatches"][0]["first_region"]), 5);
}

#[test]
fn repair_copies_the_mismatched_region_and_a_second_verify_is_clean() {
    let fx = two_leg_mirror();
    fx.flip("c.img", FLIP_AT);

    let (code, v) = fx.verify(&["--repair"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "repaired");
    assert_eq!(v["complete"], true);
    let c = leg(&v, 1);
    assert_eq!(c["repaired"], true, "{c:#}");
    assert_eq!(c["error"], Value::Null);
    assert_eq!(c["mismatched_regions"], 1);
    assert_eq!(
        c["mismatches"],
        serde_json::json!([{"first_region": 5, "end_region": 6, "offset": 327680, "length": 65536}])
    );
    assert_eq!(leg(&v, 0)["repaired"], false);
    assert_leg_clean(&v, 0);

    assert_eq!(fx.first_difference("c.img"), None);
    assert_eq!(fx.first_difference("b.img"), None);
    let s = fx.status();
    assert_eq!(s["last_verify_result"], "repaired");
    assert_eq!(s["last_verify_mismatched_regions"], 1);
    assert_eq!(s["healthy"], true, "{s:#}");
    for l in s["legs"].as_array().unwrap() {
        assert_eq!(l["state"], "in-sync");
        assert_eq!(l["out_of_sync_regions"], 0);
    }

    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "clean");
    assert_leg_clean(&v, 0);
    assert_leg_clean(&v, 1);
    assert_eq!(fx.status()["last_verify_result"], "clean");

    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.has_line("slot 1 (c.img): identical"), "{o:?}");
    assert!(o.has_line("result: clean"), "{o:?}");
}

#[test]
fn a_mismatch_in_the_last_partial_region_is_reported_with_the_short_length_and_repaired() {
    let fx = Fx::with_legs("1028K", "64K", &["b.img"]);
    let g = fx.geometry();
    assert_eq!(g.data_size, 1028 * KIB);
    assert_eq!(g.region_size, 64 * KIB);
    assert_eq!(g.region_count, 17, "16 full regions and one of 4 KiB");
    fx.write_random(0, 1028 * KIB, 2);
    fx.flip("b.img", g.data_size - 1);

    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    let b = leg(&v, 0);
    assert_eq!(
        b["mismatches"],
        serde_json::json!([{"first_region": 16, "end_region": 17, "offset": 1048576, "length": 4096}])
    );
    assert_eq!(b["mismatched_regions"], 1);
    assert_eq!(b["mismatched_bytes"], 4096);
    assert_eq!(b["regions_compared"], 17);
    assert_eq!(v["bytes_compared"], 1028 * KIB);

    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.has_line("  regions 16..17  bytes 1048576..1052672 (4096 bytes)"),
        "{o:?}"
    );

    let (code, v) = fx.verify(&["--repair"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "repaired");
    assert_eq!(leg(&v, 0)["repaired"], true);
    assert_eq!(fx.first_difference("b.img"), None);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "clean");
}

// ---------------------------------------------------------------------------------------
// coalescing

#[test]
fn adjacent_mismatched_regions_are_coalesced_and_separate_ones_are_not() {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 32 * MIB, 3);
    let r = 64 * KIB;
    // 127 | 128 straddles the first 8 MiB read chunk.
    for (region, at) in [(127, r - 1), (128, 0), (129, 77), (300, 5), (302, r / 2)] {
        fx.flip("b.img", region * r + at);
    }
    // Two bytes of one region count once; 200..202 is one range.
    for (region, at) in [(200, 9), (201, 10), (500, 1), (500, 2)] {
        fx.flip("c.img", region * r + at);
    }
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    let ds = 64 * MIB;
    let b = leg(&v, 0);
    assert_eq!(
        b["mismatches"],
        serde_json::json!([
            range(127, 130, r, ds),
            range(300, 301, r, ds),
            range(302, 303, r, ds)
        ]),
        "{b:#}"
    );
    assert_eq!(b["mismatched_regions"], 5);
    assert_eq!(b["mismatched_bytes"], 5 * r);
    let c = leg(&v, 1);
    assert_eq!(
        c["mismatches"],
        serde_json::json!([range(200, 202, r, ds), range(500, 501, r, ds)]),
        "{c:#}"
    );
    assert_eq!(c["mismatched_regions"], 3);

    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.has_line("  regions 127..130  bytes 8323072..8519680 (196608 bytes)"),
        "{o:?}"
    );
    assert!(
        o.has_line("slot 0 (b.img): 5 mismatched regions (320.0 KiB)"),
        "{o:?}"
    );
    assert!(
        o.has_line("slot 1 (c.img): 3 mismatched regions (192.0 KiB)"),
        "{o:?}"
    );
    assert_eq!(
        o.stdout
            .lines()
            .filter(|l| l.starts_with("  regions "))
            .count(),
        5,
        "{o:?}"
    );
}

#[test]
fn mismatches_on_both_sides_of_a_256_mib_lock_batch_are_one_range_and_are_repaired() {
    // 64 MiB regions: four per 256 MiB batch, so regions 3 and 4 lie in different batches
    // (the lock is released between them). Sparse: only the flipped regions hold data,
    // written through the mirror first (verify skips chunks no write reached, W7).
    let fx = Fx::with_legs("512M", "64M", &["b.img"]);
    let g = fx.geometry();
    assert_eq!(g.region_count, 8);
    let r = g.region_size;
    for at in [3 * r, 4 * r, 6 * r] {
        fx.write_random(at, 4 * KIB, at);
    }
    fx.flip("b.img", 4 * r - 1);
    fx.flip("b.img", 4 * r);
    fx.flip("b.img", 6 * r + 12345);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        leg(&v, 0)["mismatches"],
        serde_json::json!([range(3, 5, r, g.data_size), range(6, 7, r, g.data_size)])
    );
    let (code, v) = fx.verify(&["--repair"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "repaired");
    assert_eq!(fx.first_difference("b.img"), None);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "clean");
}

// ---------------------------------------------------------------------------------------
// budgeted runs

/// 96 MiB of data (twelve 8 MiB read chunks) mirrored to b.img.
fn scrub_mirror() -> Fx {
    let fx = Fx::with_legs("96M", "64K", &["b.img"]);
    fx.write_random(0, 96 * MIB, 4);
    fx
}

struct RunInfo {
    code: i32,
    start: u64,
    end: u64,
    complete: bool,
    doc: Value,
}

fn budgeted(fx: &Fx, extra: &[&str]) -> RunInfo {
    let mut args = vec!["--max-time", "0s"];
    args.extend_from_slice(extra);
    let (code, v) = fx.verify(&args);
    RunInfo {
        code,
        start: u(&v["start_region"]),
        end: u(&v["end_region"]),
        complete: v["complete"].as_bool().expect("complete"),
        doc: v,
    }
}

/// Budgeted runs from the current cursor until one reports complete (at most 100).
fn budgeted_pass(fx: &Fx) -> Vec<RunInfo> {
    let mut runs: Vec<RunInfo> = Vec::new();
    while runs.last().is_none_or(|r| !r.complete) {
        assert!(runs.len() < 100, "no complete pass after 100 runs");
        runs.push(budgeted(fx, &[]));
    }
    runs
}

#[test]
fn budgeted_runs_continue_from_the_cursor_and_cover_every_region_exactly_once() {
    let fx = scrub_mirror();
    let g = fx.geometry();
    assert_eq!(g.region_count, 1536);
    let mut seen = vec![0u32; g.region_count as usize];
    let mut prev_end = 0;
    let mut runs = 0;
    loop {
        let r = budgeted(&fx, &[]);
        runs += 1;
        assert!(runs <= 100, "no complete pass after 100 runs");
        assert_eq!(r.code, 0, "{:#}", r.doc);
        assert_eq!(r.start, prev_end, "each run starts where the last stopped");
        assert!(
            r.end > r.start,
            "a budgeted run must make progress: {:#}",
            r.doc
        );
        assert_eq!(r.doc["region_count"], g.region_count);
        assert_eq!(u(&leg(&r.doc, 0)["regions_compared"]), r.end - r.start);
        let bytes = (r.end * g.region_size).min(g.data_size) - r.start * g.region_size;
        assert_eq!(u(&r.doc["bytes_compared"]), bytes);
        for s in &mut seen[r.start as usize..r.end as usize] {
            *s += 1;
        }
        let s = fx.status();
        if r.complete {
            assert_eq!(r.end, g.region_count);
            assert_eq!(s["verify_cursor"], 0, "the cursor is reset after a pass");
            assert!(is_time(&s["last_full_verify_at"]), "{s:#}");
            assert_eq!(s["last_verify_result"], "clean");
            assert_eq!(r.doc["last_full_pass_at"], s["last_full_verify_at"]);
            break;
        }
        assert!(r.end < g.region_count);
        assert_eq!(u(&s["verify_cursor"]), r.end, "the cursor is saved");
        assert_eq!(s["last_full_verify_at"], Value::Null);
        assert_eq!(s["last_verify_result"], "partial");
        prev_end = r.end;
    }
    assert!(
        runs >= 3,
        "a 0s budget must stop well before the end ({runs} runs)"
    );
    assert!(
        seen.iter().all(|&n| n == 1),
        "regions not covered exactly once: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(_, &n)| n != 1)
            .take(10)
            .collect::<Vec<_>>()
    );

    // The next run starts a new pass at region 0.
    let r = budgeted(&fx, &[]);
    assert_eq!(r.start, 0);
    assert!(!r.complete);
    assert_eq!(u(&fx.status()["verify_cursor"]), r.end);
}

#[test]
fn restart_starts_a_budgeted_pass_over_from_region_zero() {
    let fx = scrub_mirror();
    let g = fx.geometry();
    let r1 = budgeted(&fx, &[]);
    let r2 = budgeted(&fx, &[]);
    assert_eq!(r2.start, r1.end);
    assert!(r2.end > r2.start && r2.end < g.region_count);

    let r = budgeted(&fx, &["--restart"]);
    assert_eq!(r.code, 0);
    assert_eq!(r.start, 0, "--restart ignores the cursor");
    assert!(r.end > 0 && !r.complete);
    assert_eq!(u(&fx.status()["verify_cursor"]), r.end);
    let next = budgeted(&fx, &[]);
    assert_eq!(next.start, r.end);

    // A generous budget with --restart covers everything in one run and resets the cursor.
    let (code, v) = fx.verify(&["--max-time", "1h", "--restart"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["start_region"], 0);
    assert_eq!(v["end_region"], g.region_count);
    assert_eq!(v["complete"], true);
    assert_eq!(fx.status()["verify_cursor"], 0);
}

#[test]
fn a_mismatch_in_the_range_of_the_third_budgeted_run_is_reported_by_that_run_only() {
    let fx = scrub_mirror();
    let g = fx.geometry();
    // A first pass learns where each run stops.
    let learn = budgeted_pass(&fx);
    assert!(learn.len() >= 4, "{} runs", learn.len());
    let (s3, e3) = (learn[2].start, learn[2].end);
    let region = (s3 + e3) / 2;
    let at = region * g.region_size + 4321;
    fx.flip("b.img", at);

    let mut runs: Vec<RunInfo> = Vec::new();
    while runs.last().is_none_or(|r| !r.complete) {
        assert!(runs.len() < 100, "no complete pass after 100 runs");
        let r = budgeted(&fx, &[]);
        let l = leg(&r.doc, 0);
        let k = runs.len();
        if k == 2 {
            assert_eq!(
                (r.start, r.end),
                (s3, e3),
                "run 3 covers the same regions again"
            );
            assert_eq!(r.code, 1, "{:#}", r.doc);
            assert_eq!(r.doc["result"], "differences");
            assert_eq!(
                l["mismatches"],
                serde_json::json!([range(region, region + 1, g.region_size, g.data_size)])
            );
            let s = fx.status();
            assert_eq!(s["last_verify_result"], "differences");
            assert_eq!(s["last_verify_mismatched_regions"], 1);
            assert_eq!(u(&s["verify_cursor"]), e3, "the cursor advances past it");
        } else {
            assert_eq!(r.code, 0, "run {}: {:#}", k + 1, r.doc);
            assert_eq!(l["mismatched_regions"], 0, "run {}: {l:#}", k + 1);
        }
        runs.push(r);
    }
    assert_eq!(
        runs.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
        learn.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
        "with a 0s budget the passes stop at the same regions"
    );
    // Still not repaired.
    assert_eq!(fx.first_difference("b.img"), Some(at));
}

// ---------------------------------------------------------------------------------------
// status

#[test]
fn status_shows_the_last_verify_time_result_cursor_and_last_full_pass() {
    let fx = scrub_mirror();
    let s = fx.status();
    assert_eq!(s["last_verify_at"], Value::Null);
    assert_eq!(s["last_verify_result"], Value::Null);
    assert_eq!(s["last_verify_mismatched_regions"], Value::Null);
    assert_eq!(s["verify_cursor"], 0);
    assert_eq!(s["last_full_verify_at"], Value::Null);
    let t = fx.ok(&["status", "a.img"]);
    assert!(!t.stdout.contains("last verify"), "{t:?}");

    let r = budgeted(&fx, &[]);
    assert!(!r.complete);
    let s = fx.status();
    assert!(is_time(&s["last_verify_at"]), "{s:#}");
    assert!(s["last_verify_at"].as_str() >= s["created_at"].as_str());
    assert_eq!(s["last_verify_result"], "partial");
    assert_eq!(s["last_verify_mismatched_regions"], 0);
    assert_eq!(u(&s["verify_cursor"]), r.end);
    assert_eq!(s["last_full_verify_at"], Value::Null);
    let t = fx.ok(&["status", "a.img"]);
    let line = format!(
        "last verify   {}, partial (0 mismatched regions), cursor at region {}, last full pass never",
        s["last_verify_at"].as_str().unwrap(),
        r.end
    );
    assert!(t.has_line(&line), "want {line:?}: {t:?}");

    fx.flip("b.img", 7 * MIB);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1);
    let s = fx.status();
    assert!(is_time(&s["last_verify_at"]));
    assert_eq!(s["last_verify_result"], "differences");
    assert_eq!(s["last_verify_mismatched_regions"], 1);
    assert_eq!(s["verify_cursor"], 0);
    assert!(is_time(&s["last_full_verify_at"]), "{s:#}");
    assert_eq!(s["last_full_verify_at"], v["last_full_pass_at"]);
    let t = fx.ok(&["status", "a.img"]);
    let line = format!(
        "last verify   {}, differences (1 mismatched region), cursor at region 0, last full pass {}",
        s["last_verify_at"].as_str().unwrap(),
        s["last_full_verify_at"].as_str().unwrap()
    );
    assert!(t.has_line(&line), "want {line:?}: {t:?}");
}

// ---------------------------------------------------------------------------------------
// concurrent writer

#[test]
fn a_concurrent_writer_causes_no_false_mismatch() {
    const DATA: u64 = 768 * MIB; // three 256 MiB lock batches
    const CHUNK: u64 = 3 * MIB + 12345; // unaligned: writes straddle regions
    let fx = Fx::with_legs("768M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, DATA, 5);
    let chunks: Vec<PathBuf> = (0..4)
        .map(|k| {
            let p = fx.path(&format!("chunk-{k}.bin"));
            random_file(&p, CHUNK, 100 + k);
            p
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writes: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let writer = {
        let (stop, writes) = (stop.clone(), writes.clone());
        let dir = fx.dir.path().to_path_buf();
        std::thread::spawn(move || {
            let mut rng = Rng::new(6);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = rng.next_u64() % (DATA - CHUNK);
                let input = &chunks[(n % 4) as usize];
                let t0 = Instant::now();
                let o = run_in(
                    &dir,
                    &[
                        "--wait=30s",
                        "write",
                        "a.img",
                        "--offset",
                        &off.to_string(),
                        "--input",
                        input.to_str().unwrap(),
                    ],
                );
                assert_eq!(o.code, 0, "concurrent write at {off}: {o:?}");
                writes.lock().unwrap().push((t0, Instant::now()));
                n += 1;
            }
        })
    };
    let wait_for_writes = |n: usize| {
        let t = Instant::now();
        while writes.lock().unwrap().len() < n {
            assert!(t.elapsed() < Duration::from_secs(60), "the writer is stuck");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for_writes(1);
    let mut verifies = Vec::new();
    for k in 0..5 {
        let before = writes.lock().unwrap().len();
        let t0 = Instant::now();
        let o = fx.run(&["--wait=30s", "verify", "a.img", "--json"]);
        verifies.push((t0, Instant::now()));
        assert_eq!(o.code, 0, "verify {k} with a concurrent writer: {o:?}");
        let v = o.json();
        assert_eq!(v["result"], "clean", "{v:#}");
        assert_eq!(v["complete"], true);
        assert_leg_clean(&v, 0);
        assert_leg_clean(&v, 1);
        assert_eq!(v["end_region"], v["region_count"]);
        // Let the writer in before the next run (the lock is polled).
        wait_for_writes(before + 2);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    let writes = writes.lock().unwrap();
    let inside = writes
        .iter()
        .filter(|(s, e)| verifies.iter().any(|(a, b)| s < b && e > a))
        .count();
    eprintln!(
        "{} writes, {inside} of them overlapping one of {} verify runs",
        writes.len(),
        verifies.len()
    );
    assert!(writes.len() >= 10, "only {} writes", writes.len());

    assert_eq!(fx.first_difference("b.img"), None);
    assert_eq!(fx.first_difference("c.img"), None);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "clean");
}

// ---------------------------------------------------------------------------------------
// fractured and syncing legs

#[test]
fn a_fractured_leg_is_reported_and_not_compared() {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 8 * MIB, 7);
    fx.ok(&["fracture", "a.img", "c.img"]);
    let input = fx.path("more.bin");
    random_file(&input, 2 * MIB, 8);
    let o = fx.run(&[
        "write",
        "a.img",
        "--offset",
        "20M",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    // c.img really differs now: comparing it would find a mismatch.
    assert_eq!(fx.first_difference("c.img"), Some(20 * MIB));
    assert_eq!(fx.first_difference("b.img"), None);

    for args in [&[][..], &["c.img"][..]] {
        let (code, v) = fx.verify(args);
        // Naming only the fractured leg compares nothing at all: that is not a clean bill
        // of health (exit 3, "incomplete").
        let (want_code, want_result) = if args.is_empty() {
            (0, "clean")
        } else {
            (3, "incomplete")
        };
        assert_eq!(code, want_code, "verify {args:?}: {v:#}");
        assert_eq!(v["result"], want_result);
        let c = leg(&v, 1);
        assert_eq!(c["state"], "fractured-by-admin");
        assert_eq!(c["compared"], false, "{c:#}");
        assert!(
            c["skipped"]
                .as_str()
                .is_some_and(|s| s.contains("fractured")),
            "{c:#}"
        );
        assert_eq!(c["regions_compared"], 0);
        assert_eq!(c["mismatched_regions"], 0);
        assert_eq!(c["mismatches"], serde_json::json!([]));
        assert_eq!(c["repaired"], false);
    }
    let (_, v) = fx.verify(&[]);
    assert_leg_clean(&v, 0);
    assert_eq!(v["bytes_compared"], 64 * MIB, "only b.img is compared");

    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.has_line("slot 1 (c.img): fractured-by-admin: not compared"),
        "{o:?}"
    );
    assert!(o.has_line("slot 0 (b.img): identical"), "{o:?}");

    // --repair leaves a fractured leg alone (resync is how it comes back).
    let (code, v) = fx.verify(&["--repair"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(leg(&v, 1)["repaired"], false);
    assert_eq!(fx.first_difference("c.img"), Some(20 * MIB));
    assert_eq!(fx.status()["legs"][1]["state"], "fractured-by-admin");
}

#[test]
fn regions_pending_on_a_syncing_leg_are_counted_and_not_reported_as_mismatches() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.write_random(0, 30 * MIB, 9);
    let o = fx.run(&["attach", "a.img", "c.img", "--no-sync"]);
    assert_eq!(o.code, 3, "a leg left to sync is degraded: {o:?}");
    let s = fx.status();
    let sl = &s["legs"][1];
    assert_eq!(sl["state"], "syncing");
    let pending = u(&sl["out_of_sync_regions"]);
    assert!(pending > 0);
    // The unsynced leg really differs in those regions.
    assert_eq!(
        fx.first_difference("c.img").map(|o| o < 30 * MIB),
        Some(true)
    );

    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "clean");
    let c = leg(&v, 1);
    assert_eq!(c["state"], "syncing");
    assert_eq!(c["compared"], true);
    assert_eq!(u(&c["pending_regions"]), pending);
    assert_eq!(u(&c["regions_compared"]), 1024 - pending);
    assert_eq!(c["mismatched_regions"], 0);
    assert_eq!(c["mismatches"], serde_json::json!([]));
    assert_leg_clean(&v, 0);
    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.has_line(&format!(
            "slot 1 (c.img): identical, {pending} regions pending resync not compared"
        )),
        "{o:?}"
    );

    // Outside its pending regions the syncing leg is compared (where a write reached: the
    // chunks no write reached are not, W7).
    random_file(&fx.path("w40.bin"), 64 * KIB, 11);
    let at = (40 * MIB).to_string();
    let o = fx.run(&["write", "a.img", "--offset", &at, "--input", "w40.bin"]);
    assert_eq!(o.code, 3, "written, the mirror still degraded: {o:?}");
    fx.flip("c.img", 40 * MIB + 3);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    let c = leg(&v, 1);
    assert_eq!(
        c["mismatches"],
        serde_json::json!([range(640, 641, 64 * KIB, 64 * MIB)])
    );
    assert_eq!(u(&c["pending_regions"]), pending);
}

// ---------------------------------------------------------------------------------------
// bad arguments, broken secondaries

#[test]
fn bad_arguments_exit_2_and_change_nothing() {
    let fx = Fx::with_legs("8M", "64K", &["b.img"]);
    fx.write_random(0, MIB, 10);
    let gen = fx.status()["generation"].clone();

    let o = fx.run(&["verify", "a.img", "--max-time", "5x"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--max-time"), "{o:?}");
    for spec in ["nosuch.img", "3"] {
        let o = fx.run(&["verify", "a.img", spec]);
        assert_eq!(o.code, 2, "{spec}: {o:?}");
        assert!(o.stderr.contains(spec), "{o:?}");
    }
    // An image of no mirror, and no image at all.
    random_file(&fx.path("plain.img"), 4 * MIB, 11);
    let o = fx.run(&["verify", "plain.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("not a mirrorctl image"), "{o:?}");
    let o = fx.run(&["verify", "missing.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    let o = fx.run(&["verify", "a.img", "--bogus"]);
    assert_eq!(o.code, 2, "{o:?}");

    let s = fx.status();
    assert_eq!(s["last_verify_at"], Value::Null, "{s:#}");
    assert_eq!(s["generation"], gen);
}

#[test]
fn a_removed_or_truncated_secondary_is_a_leg_error_and_exit_3() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 16 * MIB, 12);
    let b = fx.path("b.img");
    let saved = fx.path("b.saved");
    std::fs::rename(&b, &saved).unwrap();

    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["result"], "incomplete");
    let l = leg(&v, 0);
    assert_eq!(l["compared"], false, "{l:#}");
    assert_eq!(l["regions_compared"], 0);
    assert!(
        l["error"].as_str().is_some_and(|e| e.contains("b.img")),
        "{l:#}"
    );
    assert_leg_clean(&v, 1);
    // The unreadable leg is fractured by that verify, as a failed write would do; later
    // runs report it as fractured and compare the rest.
    let st = fx.status();
    let s0 = &st["legs"][0];
    assert_eq!(s0["state"], "fractured-by-error", "{st:#}");
    assert!(
        s0["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("b.img")),
        "{st:#}"
    );
    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.has_line("slot 0 (b.img): fractured-by-error: not compared"),
        "{o:?}"
    );
    assert!(
        !o.stdout.contains("slot 0 (b.img): identical"),
        "a leg that could not be read is not identical: {o:?}"
    );
    assert!(o.has_line("slot 1 (c.img): identical"), "{o:?}");

    // A difference on the other leg: exit 1.
    fx.flip("c.img", MIB);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["result"], "differences");
    // Recorded in c.img's fracture log (V1): a plain resync repairs it.
    let r = fx.ok(&["resync", "a.img", "c.img", "--json"]).json();
    assert_eq!(r["regions"], 1, "{r:#}");
    assert_eq!(fx.first_difference("c.img"), None);

    // Truncated (header intact, data area cut short): bring b.img back in sync first.
    std::fs::rename(&saved, &b).unwrap();
    let o = fx.run(&["attach", "a.img", "b.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    let f = OpenOptions::new().write(true).open(&b).unwrap();
    f.set_len(fx.geometry().data_offset + 4 * MIB).unwrap();
    drop(f);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["result"], "incomplete");
    let l = leg(&v, 0);
    assert!(
        l["error"].as_str().is_some_and(|e| e.contains("truncated")),
        "{l:#}"
    );
    assert_eq!(l["mismatched_regions"], 0, "{l:#}");
    assert_leg_clean(&v, 1);
}
