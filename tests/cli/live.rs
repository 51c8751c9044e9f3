//! Watching a running command (issue 14): `status` takes no lock, never waits and never
//! exits 5, and shows what runs on the mirror (resync, verify, serve) with the progress its
//! process last published; a killed command's record is not believed.

use crate::serve::{fio, legs_identical, NbdKit, Serving};
use crate::support::*;
use serde_json::Value;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Writes `len` random bytes at 0 while a leg is fractured (exit 3: degraded).
pub(crate) fn write_degraded(fx: &Fx, len: u64, seed: u64) {
    let input = fx.path(&format!("input-{seed}.bin"));
    random_file(&input, len, seed);
    let o = fx.run(&["write", "a.img", "--input", input.to_str().unwrap()]);
    assert_eq!(o.code, 3, "{o:?}");
}

/// Runs `mirrorctl ARGS` in the fixture's directory without waiting for it.
pub(crate) fn spawn(fx: &Fx, args: &[&str]) -> Child {
    std::process::Command::new(bin())
        .args(args)
        .current_dir(fx.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mirrorctl")
}

/// Polls `status --json` until `done` holds for it (at most `secs` seconds); returns it.
pub(crate) fn wait_for(fx: &Fx, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let s = fx.status();
        if done(&s) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "{what}: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `status --json` every 100 ms while `child` runs (every fifth time the text too, and
/// `--check`): every one must answer at once with exit 0. Returns the `running` fields seen,
/// and the child's exit code.
fn poll_while_running(fx: &Fx, child: &mut Child) -> (Vec<Value>, i32) {
    let mut seen = Vec::new();
    let t = Instant::now();
    let mut n = 0;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (seen, st.code().expect("killed by a signal"));
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still running after 60s"
        );
        let asked = Instant::now();
        let o = fx.run(&["status", "a.img", "--json"]);
        assert_eq!(
            o.code, 0,
            "status exited {} while a command ran: {o:?}",
            o.code
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "status waited {:?}",
            asked.elapsed()
        );
        let s = o.json();
        if n % 5 == 0 {
            let o = fx.run(&["status", "a.img"]);
            assert_eq!(o.code, 0, "{o:?}");
            if !s["running"].is_null() {
                let want = format!(
                    "running       {} (pid",
                    s["running"]["command"].as_str().unwrap()
                );
                assert!(o.stdout.contains(&want), "{o:?}");
            }
        }
        n += 1;
        seen.push(s["running"].clone());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The progress samples of `command` in `seen`: only growing, never above 100 %, with the
/// totals consistent, and an ETA wherever there is a rate.
fn check_progress(seen: &[Value], command: &str, pid: u32) -> Vec<Value> {
    let mine: Vec<Value> = seen
        .iter()
        .filter(|r| r["command"] == command)
        .cloned()
        .collect();
    let mut last = -1.0;
    let mut last_done = 0;
    for r in &mine {
        assert_eq!(r["pid"], pid, "{r:#}");
        assert!(is_time(&r["started_at"]), "{r:#}");
        let p = &r["progress"];
        if p.is_null() || p["total_bytes"].is_null() {
            // Before the operation counted what it has to do: no percent to show yet.
            assert!(p.is_null() || p["percent"].is_null(), "{r:#}");
            continue;
        }
        let pc = p["percent"]
            .as_f64()
            .unwrap_or_else(|| panic!("no percent: {r:#}"));
        assert!((0.0..=100.0).contains(&pc), "{r:#}");
        assert!(pc >= last, "progress went back from {last} to {pc}: {r:#}");
        last = pc;
        let done = u(&p["done_bytes"]);
        assert!(done >= last_done, "{r:#}");
        last_done = done;
        assert!(done <= u(&p["total_bytes"]), "{r:#}");
        if u(&p["rate_bytes_per_second"]) > 0 && done < u(&p["total_bytes"]) {
            assert!(p["eta_seconds"].is_u64(), "a rate but no ETA: {r:#}");
        }
    }
    mine
}

#[test]
fn status_polled_during_a_rate_limited_resync_never_fails_and_its_progress_only_grows() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    write_degraded(&fx, 48 * MIB, 7);
    let mut c = spawn(&fx, &["resync", "a.img", "--rate", "16M"]);
    let pid = c.id();
    let (seen, code) = poll_while_running(&fx, &mut c);
    assert_eq!(code, 0);
    let mine = check_progress(&seen, "resync", pid);
    // About 3 s at 16 MiB/s: most polls see it, with a rate and an ETA.
    assert!(
        mine.len() >= 10,
        "only {} of {} polls saw the resync",
        mine.len(),
        seen.len()
    );
    let with_eta = mine
        .iter()
        .filter(|r| r["progress"]["eta_seconds"].is_u64())
        .count();
    assert!(
        with_eta * 2 >= mine.len(),
        "ETA in {with_eta} of {}",
        mine.len()
    );
    let r = &mine[mine.len() / 2];
    assert_eq!(r["progress"]["phase"], "resync");
    assert_eq!(u(&r["progress"]["total_bytes"]), 48 * MIB);
    let rate = u(&r["progress"]["rate_bytes_per_second"]);
    assert!(
        (4 * MIB..=40 * MIB).contains(&rate),
        "rate {rate} under --rate 16M"
    );
    // It ended: nothing runs, the mirror is healthy.
    let s = fx.status();
    assert!(s["running"].is_null(), "{s:#}");
    assert_eq!(s["healthy"], true);
}

#[test]
fn status_during_a_verify_shows_its_progress_and_the_verify_is_not_disturbed() {
    let fx = Fx::create("64M", "64K");
    fx.write_random(0, 64 * MIB, 3);
    // A secondary whose reads are slow (nbdkit's delay filter), so the verify takes a while.
    let raw = fx.path("slow.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(80 * MIB)
        .unwrap();
    let sock = fx.path("slow.sock");
    let _kit = NbdKit::start(&sock, &raw, &["--filter=delay", "rdelay=40ms"]);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    fx.ok(&["attach", "a.img", &uri]);
    let mut c = spawn(&fx, &["verify", "a.img"]);
    let pid = c.id();
    let (seen, code) = poll_while_running(&fx, &mut c);
    assert_eq!(code, 0, "verify failed while status polled");
    let mine = check_progress(&seen, "verify", pid);
    assert!(
        mine.len() >= 3,
        "only {} polls saw the verify: {seen:?}",
        mine.len()
    );
    assert!(mine.iter().any(|r| r["progress"]["phase"] == "verify"));
    let s = fx.status();
    assert!(s["running"].is_null());
    assert_eq!(s["last_verify_result"], "clean");
}

#[test]
fn status_while_serving_shows_clients_hot_set_and_rates_and_check_passes_on_a_healthy_mirror() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    let srv = Serving::start(&fx, &[]);
    let uri = srv.uri();
    let host = std::thread::spawn(move || {
        fio(
            &uri,
            &[
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--size=64M",
                "--time_based",
                "--runtime=3",
                "--fsync=64",
            ],
        )
    });
    let mut samples = Vec::new();
    let t = Instant::now();
    while !host.is_finished() {
        let o = fx.run(&["status", "a.img", "--json"]);
        assert_eq!(o.code, 0, "{o:?}");
        let s = o.json();
        assert_eq!(s["running"]["command"], "serve", "{s:#}");
        assert_eq!(s["running"]["pid"], srv.pid());
        // The hot set is the server's writes in flight: not out of sync, not unhealthy.
        assert_eq!(s["healthy"], true, "{s:#}");
        assert_eq!(leg(&s, 0)["out_of_sync_bytes"], 0, "{s:#}");
        let o = fx.run(&["status", "a.img", "--check"]);
        assert_eq!(o.code, 0, "{o:?}");
        samples.push(s);
        std::thread::sleep(Duration::from_millis(100));
        assert!(t.elapsed() < Duration::from_secs(60));
    }
    host.join().unwrap();
    let busy = samples
        .iter()
        .filter(|s| {
            let v = &s["running"]["serve"];
            u(&v["clients"]) >= 1
                && u(&v["hot_extents"]) >= 1
                && v["writes_per_second"].as_f64().unwrap() > 0.0
        })
        .count();
    assert!(
        busy >= 5,
        "only {busy} of {} samples saw clients writing",
        samples.len()
    );
    let last = &samples[samples.len() - 1]["running"]["serve"];
    assert!(u(&last["writes_total"]) > 1000, "{last:#}");
    assert_eq!(u(&last["hot_extents_max"]), 1237);
    assert!(u(&samples[samples.len() - 1]["write_intent_regions"]) > 0);
    let text = fx.ok(&["status", "a.img"]).stdout;
    assert!(text.contains("marked by the running serve"), "{text}");
    // A command the server does not carry out is refused, naming it and how to stop it.
    let o = fx.run(&["write", "a.img", "--input", "/dev/null"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(
        o.stderr
            .contains(&format!("`mirrorctl serve` (pid {}", srv.pid()))
            && o.stderr.contains(&format!("kill -TERM {}", srv.pid())),
        "{o:?}"
    );
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    let s = fx.status();
    assert!(s["running"].is_null(), "{s:#}");
    assert_eq!(s["write_intent_regions"], 0);
    assert_eq!(s["healthy"], true);
}

#[test]
fn a_killed_resync_leaves_no_record_that_status_believes_and_the_next_one_finishes() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    write_degraded(&fx, 32 * MIB, 9);
    let mut c = spawn(&fx, &["resync", "a.img", "--rate", "4M"]);
    wait_for(&fx, 20, "the resync never showed progress", |s| {
        s["running"]["progress"]["done_bytes"].as_u64().unwrap_or(0) > 0
    });
    c.kill().unwrap();
    c.wait().unwrap();
    // Its record is still on disk, but its process is gone.
    let o = fx.run(&["status", "a.img", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let s = o.json();
    assert!(
        s["running"].is_null(),
        "a dead process shown running: {s:#}"
    );
    assert!(u(&leg(&s, 0)["out_of_sync_bytes"]) > 0);
    assert_eq!(s["healthy"], false);
    let o = fx.run(&["status", "a.img", "--check"]);
    assert_eq!(o.code, 3, "{o:?}");
    fx.ok(&["resync", "a.img"]);
    let s = fx.status();
    assert!(s["running"].is_null());
    assert_eq!(s["healthy"], true);
}

#[test]
fn status_read_while_other_commands_commit_headers_never_fails_or_reports_a_torn_copy() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    let dir = fx.dir.path().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let churn = std::thread::spawn(move || {
        let mut commits = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for args in [
                &["fracture", "a.img", "b.img"][..],
                &["resync", "a.img"][..],
            ] {
                let o = run_in(&dir, args);
                assert_eq!(o.code, 0, "{o:?}");
                commits += 1;
            }
        }
        commits
    });
    for _ in 0..60 {
        let o = fx.run(&["status", "a.img", "--json"]);
        assert_eq!(o.code, 0, "{o:?}");
        let s = o.json();
        assert!(
            s["superblock_warning"].is_null(),
            "a copy being rewritten reported as damaged: {s:#}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let commits = churn.join().unwrap();
    assert!(commits >= 20, "only {commits} commands ran alongside");
}

#[test]
fn promoting_a_served_mirrors_secondary_is_refused_naming_the_server_and_changes_nothing() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    let before = std::fs::read(fx.path("b.img")).unwrap();
    let srv = Serving::start(&fx, &[]);
    let o = fx.run(&["promote", "b.img"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(
        o.stderr
            .contains(&format!("`mirrorctl serve` (pid {}", srv.pid()))
            && o.stderr.contains(&format!("kill -TERM {}", srv.pid())),
        "{o:?}"
    );
    assert!(
        std::fs::read(fx.path("b.img")).unwrap() == before,
        "the refused promote changed the secondary"
    );
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    let o = fx.run(&["status", "b.img", "--json"]);
    assert_eq!(o.json()["role"], "secondary");
}

#[test]
fn fracture_resync_attach_verify_repair_and_detach_while_fio_writes_through_serve_leave_every_leg_identical(
) {
    let fx = Fx::with_legs("128M", "64K", &["b.img", "c.img"]);
    let g = fx.geometry();
    let remote = |name: &str| {
        let p = fx.path(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(g.data_offset + g.data_size)
            .unwrap();
        p
    };
    let (remote1, remote2) = (remote("remote1.raw"), remote("remote2.raw"));
    let (ksock1, ksock2) = (fx.path("kit1.sock"), fx.path("kit2.sock"));
    let _kit1 = NbdKit::start(&ksock1, &remote1, &[]);
    let _kit2 = NbdKit::start(&ksock2, &remote2, &[]);
    let nbd1 = format!("nbd+unix:///?socket={}", ksock1.display());
    let nbd2 = format!("nbd+unix:///?socket={}", ksock2.display());
    fx.ok(&["attach", "a.img", &nbd1]);
    let srv = Serving::start(&fx, &[]);
    let uri = srv.uri();
    // Writes for the whole test over the first 96 MiB, checked by fio at the end (crc32c of
    // every block it wrote); the last 32 MiB are left to the corruption below.
    let host = std::thread::spawn(move || {
        fio(
            &uri,
            &[
                "--rw=randwrite",
                "--bssplit=4k/50:64k/50",
                "--iodepth=16",
                "--size=96M",
                "--rate=6m",
                "--verify=crc32c",
                "--fsync=32",
                "--end_fsync=1",
            ],
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    // Fracture by path: carried out by the server, the same output as on an idle mirror.
    let o = fx.run(&["fracture", "a.img", "b.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.stdout,
        "fractured slot 0 (b.img): its changes are tracked; `mirrorctl resync a.img 0` brings it back\n"
    );
    // --wait does not wait for the server (it holds the lock for its whole life): the
    // command is handed over at once.
    let o = fx.run(&["--wait", "fracture", "a.img", "0"]);
    assert_eq!(
        o.stdout, "slot 0 (b.img) is already fractured-by-admin\n",
        "{o:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let s = fx.status();
    assert_eq!(leg(&s, 0)["state"], "fractured-by-admin");
    assert!(u(&leg(&s, 0)["out_of_sync_bytes"]) > 0);
    // A rate-limited resync while the host writes into the regions being copied; status
    // shows its progress in the server's record meanwhile.
    let mut c = spawn(&fx, &["resync", "a.img", "b.img", "--rate", "24M"]);
    let mut saw_progress = false;
    while c.try_wait().unwrap().is_none() {
        let s = fx.status();
        if s["running"]["progress"]["phase"] == "resync" {
            saw_progress = true;
            let pc = s["running"]["progress"]["percent"].as_f64().unwrap_or(0.0);
            assert!((0.0..=100.0).contains(&pc));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("slot 0 (b.img): copied "), "{text}");
    assert!(text.trim_end().ends_with("state in-sync"), "{text}");
    assert!(
        saw_progress,
        "status never showed the live resync's progress"
    );
    // The NBD leg too, by slot, with JSON, comparing (only what differs is written).
    fx.ok(&["fracture", "a.img", "2"]);
    std::thread::sleep(Duration::from_millis(500));
    let o = fx.run(&["resync", "a.img", "2", "--compare", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let j = o.json();
    assert_eq!(j["compare"], true, "{j:#}");
    assert_eq!(j["legs"][0]["slot"], 2);
    assert_eq!(j["legs"][0]["state"], "in-sync");
    assert_eq!(j["legs"][0]["remaining_bytes"], 0);
    assert!(u(&j["written_bytes"]) <= u(&j["bytes"]), "{j:#}");
    // Detach a leg while the host writes; its slot takes a new file secondary, created by
    // the server where the client's relative path says, with its initial sync under the
    // host's writes.
    let o = fx.run(&["detach", "a.img", "c.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "detached slot 1 (c.img, was in-sync)\n");
    let o = fx.run(&["attach", "a.img", "d.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.starts_with("attached d.img as slot 1; copied "),
        "{o:?}"
    );
    assert!(o.stdout.trim_end().ends_with("state in-sync"), "{o:?}");
    assert!(fx.path("d.img").exists());
    // An NBD secondary in the last free slot, as JSON.
    let o = fx.run(&["attach", "a.img", &nbd2, "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let j = o.json();
    assert_eq!(j["slot"], 3, "{j:#}");
    assert_eq!(j["state"], "in-sync", "{j:#}");
    assert!(u(&j["copied_bytes"]) > 0, "{j:#}");
    // Refusals are the idle mirror's: the same image twice, exit 2, nothing changed.
    let o = fx.run(&["attach", "a.img", "d.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("d.img is already attached as slot 1"),
        "{o:?}"
    );
    // Verify while the host writes: no false mismatch on any leg.
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "a host write was reported as a difference: {v:#}");
    assert_eq!(v["result"], "clean", "{v:#}");
    assert_eq!(v["complete"], true, "{v:#}");
    // One block of a leg corrupted where fio does not write: verify names exactly that
    // region and leg (exit 1, recorded: V1), then --repair repairs it under the writes.
    let bad = 120 * MIB + 4096;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(fx.path("d.img"))
            .unwrap();
        f.write_all_at(b"not what the primary holds", g.data_offset + bad)
            .unwrap();
    }
    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stdout
            .contains("slot 1 (d.img): 1 mismatched region (64.0 KiB)")
            && o.stdout
                .contains(&format!("bytes {}..{}", 120 * MIB, 120 * MIB + 64 * 1024)),
        "{o:?}"
    );
    assert_eq!(leg(&fx.status(), 1)["state"], "syncing");
    let (code, v) = fx.verify(&["--repair"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["result"], "repaired", "{v:#}");
    let l1 = v["legs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["slot"] == 1)
        .unwrap();
    assert_eq!(l1["mismatched_regions"], 1, "{v:#}");
    assert_eq!(l1["repaired"], true, "{v:#}");
    assert_eq!(leg(&fx.status(), 1)["state"], "in-sync");
    // A budgeted verify goes on from its cursor, run after run.
    let (code, v1) = fx.verify(&["--max-time", "0s"]);
    assert_eq!(code, 0, "{v1:#}");
    let (code, v2) = fx.verify(&["--max-time", "0s"]);
    assert_eq!(code, 0, "{v2:#}");
    assert_eq!(v1["start_region"], 0, "{v1:#}");
    assert!(u(&v1["end_region"]) > 0 && u(&v1["end_region"]) < g.region_count);
    assert_eq!(v2["start_region"], v1["end_region"], "{v2:#}");
    // What the server does not do is refused, naming it; nothing else changes.
    let o = fx.run(&["write", "a.img", "--input", "/dev/null"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(
        o.stderr.contains("`mirrorctl serve` (pid") && o.stderr.contains("kill -TERM"),
        "{o:?}"
    );
    let o = fx.run(&["resync", "a.img", "--dry-run", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    host.join().unwrap(); // fio's verify passed
                          // Detach the NBD leg attached while serving.
    let o = fx.run(&["detach", "a.img", "3"]);
    assert_eq!(o.code, 0, "{o:?}");
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    let s = fx.status();
    assert_eq!(s["healthy"], true, "{s:#}");
    assert_eq!(s["secondaries"], 3);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    legs_identical(
        &fx,
        &[&fx.path("b.img"), &fx.path("d.img"), &remote1, &remote2],
    );
}

#[test]
fn serve_killed_during_a_live_resync_leaves_the_rest_in_the_log_and_the_next_serve_finishes_it_in_the_background(
) {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    write_degraded(&fx, 48 * MIB, 11);
    let before = u(&leg(&fx.status(), 0)["out_of_sync_bytes"]);
    assert_eq!(before, 48 * MIB);
    let srv = Serving::start(&fx, &[]);
    let c = spawn(&fx, &["resync", "a.img", "--rate", "8M"]);
    // Until some progress is durable (a checkpoint every 250 ms).
    wait_for(&fx, 20, "no durable progress", |s| {
        u(&leg(s, 0)["out_of_sync_bytes"]) < before
    });
    srv.kill9();
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    let s = fx.status();
    assert!(s["running"].is_null(), "{s:#}");
    let left = u(&leg(&s, 0)["out_of_sync_bytes"]);
    assert!(left > 0 && left < before, "{left} of {before} left");
    assert_eq!(leg(&s, 0)["state"], "syncing");
    // A new serve recovers and continues the resync in the background from the log while
    // a host writes.
    let srv = Serving::start(&fx, &[]);
    let uri = srv.uri();
    let host = std::thread::spawn(move || {
        fio(
            &uri,
            &[
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=8",
                "--size=64M",
                "--time_based",
                "--runtime=2",
                "--fsync=16",
            ],
        )
    });
    wait_for(&fx, 30, "never in sync", |s| {
        leg(s, 0)["state"] == "in-sync"
    });
    host.join().unwrap();
    assert!(
        srv.log()
            .contains("their resync continues in the background")
            && srv.log().contains("resync ended"),
        "{}",
        srv.log()
    );
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    assert_eq!(fx.status()["healthy"], true);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    legs_identical(&fx, &[&fx.path("b.img")]);
}

#[test]
fn a_sigterm_the_moment_serve_listens_is_a_clean_stop_even_with_a_resync_starting_in_the_background(
) {
    let fx = Fx::with_legs("160M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    write_degraded(&fx, 128 * MIB, 13);
    let mut c = spawn(&fx, &["resync", "a.img", "--rate", "4M"]);
    wait_for(&fx, 20, "the resync never showed progress", |s| {
        s["running"]["progress"]["done_bytes"].as_u64().unwrap_or(0) > 0
    });
    c.kill().unwrap();
    c.wait().unwrap();
    assert_eq!(leg(&fx.status(), 0)["state"], "syncing");
    // Busy CPUs, so that a thread serve starts may wait to run: one that had not blocked the
    // stop signals yet would take the SIGTERM and end the process (a CI failure once).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for round in 0..12 {
        let srv = Serving::start(&fx, &[]);
        let (code, log) = srv.stop();
        assert_eq!(code, 0, "round {round}:\n{log}");
        assert!(
            log.contains("their resync continues in the background"),
            "round {round}:\n{log}"
        );
        let s = fx.status();
        assert_eq!(s["write_intent_regions"], 0, "round {round}: {s:#}");
        assert!(s["running"].is_null(), "round {round}: {s:#}");
        if leg(&s, 0)["state"] == "in-sync" {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    fx.ok(&["resync", "a.img"]);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    legs_identical(&fx, &[&fx.path("b.img")]);
}

#[test]
fn attach_verify_and_resync_through_serve_refuse_and_report_exactly_as_on_an_idle_mirror() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.write_random(0, 4 * MIB, 21);
    // An image holding data, a missing leg, a bad rate: refused with the same line and
    // exit code, idle and served, and nothing written.
    random_file(&fx.path("data.img"), 80 * MIB, 22);
    let before = std::fs::read(fx.path("data.img")).unwrap();
    let cases: &[&[&str]] = &[
        &["attach", "a.img", "data.img"],
        &["attach", "a.img", "b.img"],
        &["attach", "a.img", "/dev/nosuchdevice"],
        &["verify", "a.img", "nosuch.img"],
        &["resync", "a.img", "7"],
        &["detach", "a.img", "nosuch.img"],
    ];
    let idle: Vec<_> = cases.iter().map(|c| fx.run(c)).collect();
    // What succeeds: the reports, times aside.
    let report = |fx: &Fx| {
        let (code, mut v) = fx.verify(&[]);
        for k in ["seconds", "bytes_per_second", "last_full_pass_at"] {
            v[k] = Value::Null;
        }
        (code, v)
    };
    let idle_verify = report(&fx);
    let idle_dry = fx.run(&["resync", "a.img", "--dry-run"]);
    let srv = Serving::start(&fx, &[]);
    for (c, i) in cases.iter().zip(&idle) {
        let o = fx.run(c);
        assert_eq!((o.code, &o.stderr), (i.code, &i.stderr), "{c:?} served");
        assert_ne!(o.code, 0, "{c:?}");
        assert!(!o.stderr.contains("served"), "{c:?}: {o:?}");
    }
    assert_eq!(std::fs::read(fx.path("data.img")).unwrap(), before);
    assert!(!fx.path("nosuch.img").exists());
    assert_eq!(report(&fx), idle_verify);
    let o = fx.run(&["resync", "a.img", "--dry-run"]);
    assert_eq!((o.code, &o.stdout), (idle_dry.code, &idle_dry.stdout));
    // attach --no-sync of a fresh file: the same line as idle (a sparse primary with no
    // write in flight: its data extents, nothing more).
    let o = fx.run(&["attach", "a.img", "c.img", "--no-sync"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(
        o.stdout,
        "attached c.img as slot 1; 64 regions left to copy: run `mirrorctl resync a.img 1`\n"
    );
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("slot 1 (c.img) attached; 64 regions to copy"),
        "{log}"
    );
    assert_eq!(leg(&fx.status(), 1)["state"], "syncing");
    fx.ok(&["resync", "a.img"]);
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
}
