//! A quorum of in-sync copies (issue 27): `serve --min-in-sync N` refusing host writes and
//! flushes (qemu-io, and a client here that records what was acknowledged) once fewer legs
//! are in sync, a resync or `mirrorctl set` bringing them back, a secondary's NBD server
//! killed mid-workload, and `write --min-in-sync`.

use crate::nbd::{backing, qemu_unix};
use crate::serve::{qemu_io, run_client, Serving};
use crate::support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A minimal NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME, simple replies): one request
/// at a time, so what the server acknowledged is exactly known.
struct Host {
    s: UnixStream,
    handle: u64,
}

impl Host {
    fn connect(sock: &Path) -> Host {
        let mut s = UnixStream::connect(sock).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        // Fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut opt = b"IHAVEOPT".to_vec();
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&0u32.to_be_bytes()); // the default export
        s.write_all(&opt).unwrap();
        let mut export = [0u8; 10];
        s.read_exact(&mut export).unwrap();
        Host { s, handle: 0 }
    }

    /// Sends one request and waits for its reply: the error number (0: acknowledged).
    fn request(&mut self, kind: u16, off: u64, data: &[u8], len: u32) -> u32 {
        self.handle += 1;
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&self.handle.to_be_bytes());
        r.extend_from_slice(&off.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(data);
        self.s.write_all(&r).unwrap();
        let mut rep = [0u8; 16];
        self.s.read_exact(&mut rep).unwrap();
        assert_eq!(rep[..4], 0x6744_6698u32.to_be_bytes());
        assert_eq!(rep[8..], self.handle.to_be_bytes());
        u32::from_be_bytes(rep[4..8].try_into().unwrap())
    }

    fn write(&mut self, off: u64, data: &[u8]) -> u32 {
        self.request(1, off, data, data.len() as u32)
    }

    fn flush(&mut self) -> u32 {
        self.request(3, 0, &[], 0)
    }
}

const EIO: u32 = 5;

fn events_of(fx: &Fx, kind: &str) -> Vec<Value> {
    // One JSON document a line.
    fx.ok(&["events", "a.img", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn serve_record(fx: &Fx) -> Value {
    fx.status()["running"]["serve"].clone()
}

/// Waits until the serving process's published record shows `want` (it publishes every
/// half second; bounded).
fn until_record(fx: &Fx, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let t = std::time::Instant::now();
    loop {
        let r = serve_record(fx);
        if want(&r) {
            return r;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "status never showed {what}: {r:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn with_two_secondaries_and_min_two_a_fractured_leg_gets_host_writes_an_io_error_until_a_resync_brings_it_back(
) {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    let s = Serving::start(&fx, &["--min-in-sync", "2", "--timeout", "1s"]);
    let uri = s.uri();
    qemu_io(&uri, &["write -P 0x11 0 64k", "flush"]);
    fx.ok(&["fracture", "a.img", "c.img"]);
    // qemu-io sees the I/O errors: of the writes and of the flush.
    let o = run_client(
        "qemu-io",
        "qemu-utils",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x22 0 64k",
            "-c",
            "write -P 0x33 1M 64k",
            "-c",
            "flush",
            &uri,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        out.matches("write failed: Input/output error").count(),
        2,
        "{out}"
    );
    // (qemu-io prints nothing for a failed flush; its exit status says it.)
    assert!(!o.status.success(), "{out}");
    // The primary holds exactly what was acknowledged; the refused writes changed nothing.
    assert_eq!(fx.data_at("a.img", 0, 65536), vec![0x11; 65536]);
    assert_eq!(fx.data_at("a.img", MIB, 65536), vec![0; 65536]);
    // Status, metrics and events say so, and why.
    let r = until_record(&fx, "the refusal", |r| u(&r["refused_total"]) >= 3);
    assert_eq!(
        r["writes_refused"], "1 of min 2 in-sync secondaries (slot 1 fractured-by-admin)",
        "{r:#}"
    );
    assert_eq!(r["min_in_sync"], 2);
    assert_eq!(r["in_sync_secondaries"], 1);
    let text = fx.ok(&["status", "a.img"]).stdout;
    assert!(
        text.contains("WRITES REFUSED: 1 of min 2 in-sync secondaries"),
        "{text}"
    );
    let prom = fx.ok(&["status", "a.img", "--format", "prometheus"]).stdout;
    assert!(
        prom.lines()
            .any(|l| l.starts_with("mirrorctl_serve_writes_refused{") && l.ends_with(" 1")),
        "{prom}"
    );
    // One event for the transition, not one per refused request.
    let refused = events_of(&fx, "writes-refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .contains("1 of min 2 in-sync secondaries"),
        "{refused:#?}"
    );
    // A live resync brings the leg back: writes are acknowledged again.
    fx.ok(&["resync", "a.img"]);
    qemu_io(&uri, &["write -P 0x44 0 64k", "flush"]);
    assert_eq!(events_of(&fx, "writes-resumed").len(), 1);
    until_record(&fx, "writes acknowledged", |r| {
        r["writes_refused"].is_null()
    });
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("error: writes refused: 1 of min 2"), "{log}");
    assert!(
        log.contains("writes resumed: 2 of min 2 in-sync secondaries"),
        "{log}"
    );
    crate::serve::legs_identical(&fx, &[&fx.path("b.img"), &fx.path("c.img")]);
    assert_eq!(fx.data_at("c.img", 0, 65536), vec![0x44; 65536]);
}

#[test]
fn lowering_min_in_sync_live_with_set_lets_writes_go_on_and_set_without_a_serve_changes_nothing() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    let s = Serving::start(&fx, &["--min-in-sync", "2", "--timeout", "1s"]);
    fx.ok(&["fracture", "a.img", "1"]);
    let mut h = Host::connect(&s.sock);
    assert_eq!(h.write(0, &[7; 4096]), EIO);
    let o = fx.ok(&["set", "a.img", "--min-in-sync", "1"]);
    assert_eq!(
        o.stdout,
        "min-in-sync changed from 2 to 1 (1 in sync now); writes are acknowledged\n"
    );
    // The same connection goes on.
    assert_eq!(h.write(0, &[8; 4096]), 0);
    assert_eq!(h.flush(), 0);
    assert_eq!(fx.data_at("b.img", 0, 4096), vec![8; 4096]);
    // More than the slots can hold: refused, nothing changed.
    let o = fx.run(&["set", "a.img", "--min-in-sync", "9"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("at most 4 can be in sync"), "{o:?}");
    until_record(&fx, "min-in-sync 1", |r| r["min_in_sync"] == 1);
    drop(h);
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("min-in-sync changed from 2 to 1 by the admin"),
        "{log}"
    );
    // Nothing serves it now: there is nothing to set.
    let o = fx.run(&["set", "a.img", "--min-in-sync", "0"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("no `mirrorctl serve` runs on it"),
        "{o:?}"
    );
}

#[test]
fn a_secondary_whose_nbd_server_is_killed_mid_workload_with_min_one_gets_nothing_acknowledged_after_it_was_lost(
) {
    let fx = Fx::create("16M", "64K");
    let file = backing(&fx, "b.img");
    let nsock = fx.path("b.sock");
    let mut qn = qemu_unix(&file, &nsock, false);
    let leg = format!("nbd+unix:///exp?socket={}", nsock.display());
    fx.ok(&["attach", "a.img", &leg]);
    let s = Serving::start(&fx, &["--min-in-sync", "1", "--timeout", "2s"]);
    let mut h = Host::connect(&s.sock);
    let block = |i: u64| vec![i as u8 + 1; 4096];
    let mut acked = Vec::new();
    for i in 0..16 {
        assert_eq!(h.write(i * 4096, &block(i)), 0);
        acked.push(i);
    }
    assert_eq!(h.flush(), 0);
    // The secondary's server dies; the host goes on writing.
    qn.kill();
    let mut refused = Vec::new();
    for i in 16..32 {
        match h.write(i * 4096, &block(i)) {
            0 => acked.push(i),
            EIO => refused.push(i),
            e => panic!("write {i}: error {e}"),
        }
    }
    assert_eq!(h.flush(), EIO, "a flush after the leg was lost is refused");
    assert_eq!(
        acked,
        (0..16).collect::<Vec<_>>(),
        "acknowledged after the loss"
    );
    assert_eq!(refused.len(), 16);
    drop(h);
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    // Every acknowledged write is on the primary and on the leg.
    for &i in &acked {
        assert_eq!(fx.data_at("a.img", i * 4096, 4096), block(i), "block {i}");
        assert_eq!(fx.data_at("b.img", i * 4096, 4096), block(i), "block {i}");
    }
    // What the leg missed is in its fracture log: a resync makes it equal to the primary.
    let l = leg_of(&fx, 0);
    assert_eq!(l["state"], "fractured-by-error", "{l:#}");
    assert!(u(&l["out_of_sync_regions"]) >= 1, "{l:#}");
    let _qn = qemu_unix(&file, &nsock, false);
    fx.ok(&["resync", "a.img"]);
    let g = fx.geometry();
    assert_eq!(
        first_difference_between(&fx.path("a.img"), &file, g.data_offset, g.data_size),
        None
    );
}

fn leg_of(fx: &Fx, slot: u64) -> Value {
    leg(&fx.status(), slot).clone()
}

#[test]
fn write_with_too_few_in_sync_secondaries_exits_3_having_written_and_counted_nothing() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.ok(&["fracture", "a.img", "c.img"]);
    let input = fx.path("in.bin");
    random_file(&input, MIB, 5);
    let before = std::fs::read(fx.path("a.img")).unwrap();
    let write_min = |n: &str| {
        let i = input.to_str().unwrap();
        fx.run(&["write", "a.img", "-i", i, "--min-in-sync", n, "--json"])
    };
    let o = write_min("2");
    assert_eq!(o.code, 3, "{o:?}");
    let j = o.json();
    assert_eq!(j["exit_code"], 3, "{j:#}");
    assert_eq!(j["bytes_written"], 0, "{j:#}");
    assert_eq!(j["acknowledged"], false, "{j:#}");
    assert_eq!(
        j["writes_refused"],
        "1 of min 2 in-sync secondaries (slot 1 fractured-by-admin)"
    );
    assert!(
        o.stderr
            .contains("mirrorctl: writes refused: 1 of min 2 in-sync secondaries"),
        "{o:?}"
    );
    assert!(
        std::fs::read(fx.path("a.img")).unwrap() == before,
        "a refused write changed a.img"
    );
    // With the minimum met it writes (degraded: slot 1 still fractured, exit 3 as ever).
    let o = write_min("1");
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.json()["bytes_written"], MIB);
    // A minimum no mirror of 4 slots can meet is bad input.
    let o = write_min("5");
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("at most 4 can be in sync"), "{o:?}");
}

#[test]
fn a_host_write_after_a_secondary_dies_is_acknowledged_only_after_the_fence_peer_hook_returned_and_resync_unfences(
) {
    let fx = Fx::create("16M", "64K");
    let file = backing(&fx, "b.img");
    let nsock = fx.path("b.sock");
    let mut qn = qemu_unix(&file, &nsock, false);
    let leg = format!("nbd+unix:///exp?socket={}", nsock.display());
    fx.ok(&["attach", "a.img", &leg]);
    let dir = fx.dir.path().display().to_string();
    // The hook sees the fracture on disk (status takes no lock), records its environment,
    // and ends a second later, leaving a mark just before it exits.
    let fence = format!(
        "{} status {dir}/a.img --json > {dir}/fence.status; env | grep ^MIRRORCTL_ | sort > {dir}/fence.env; sleep 1; touch {dir}/fence.done",
        bin()
    );
    let unfence = format!("env | grep ^MIRRORCTL_REASON > {dir}/unfence.env");
    let s = Serving::start(
        &fx,
        &[
            "--fence-peer",
            &fence,
            "--unfence",
            &unfence,
            "--timeout",
            "2s",
        ],
    );
    let mut h = Host::connect(&s.sock);
    assert_eq!(h.write(0, &[1; 4096]), 0);
    assert_eq!(h.flush(), 0);
    assert!(
        !fx.path("fence.env").exists(),
        "the hook ran with the leg in sync"
    );
    qn.kill();
    // The write that finds the leg gone is acknowledged (no --min-in-sync), but only once
    // the hook has returned.
    assert_eq!(h.write(4096, &[2; 4096]), 0);
    assert!(
        fx.path("fence.done").exists(),
        "a write was acknowledged before --fence-peer returned:\n{}",
        s.log()
    );
    assert_eq!(h.flush(), 0);
    let env = std::fs::read_to_string(fx.path("fence.env")).unwrap();
    let mirror = fx.status()["mirror_uuid"].as_str().unwrap().to_string();
    for want in [
        "MIRRORCTL_SLOT=0".to_string(),
        format!("MIRRORCTL_LEG={leg}"),
        format!("MIRRORCTL_MIRROR={mirror}"),
        "MIRRORCTL_PRIMARY=a.img".to_string(),
        "MIRRORCTL_REASON=by error: write at data offset 4096".to_string(),
    ] {
        assert!(
            env.lines().any(|l| l.starts_with(&want)),
            "{want} in:\n{env}"
        );
    }
    // The fence stated a truth: the fracture was on disk when it ran.
    let st: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.path("fence.status")).unwrap()).unwrap();
    assert_eq!(
        crate::support::leg(&st, 0)["state"],
        "fractured-by-error",
        "{st:#}"
    );
    // Back in sync: the unfence hook runs before the resync returns.
    let _qn = qemu_unix(&file, &nsock, false);
    fx.ok(&["resync", "a.img"]);
    assert_eq!(
        std::fs::read_to_string(fx.path("unfence.env")).unwrap(),
        "MIRRORCTL_REASON=in sync again\n"
    );
    drop(h);
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("--fence-peer for slot 0 succeeded"), "{log}");
    assert!(log.contains("--unfence for slot 0"), "{log}");
    assert_eq!(fx.data_at("b.img", 4096, 4096), vec![2; 4096]);
}

#[test]
fn a_failing_fence_peer_hook_gets_writes_refused_with_the_fracture_kept_until_a_resync() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    let s = Serving::start(&fx, &["--fence-peer", "echo no cluster; exit 7"]);
    let mut h = Host::connect(&s.sock);
    assert_eq!(h.write(0, &[1; 4096]), 0);
    // The admin's fracture returns once the hook has run, and says it failed.
    let o = fx.ok(&["fracture", "a.img", "c.img"]);
    assert!(
        o.stderr
            .contains("--fence-peer for slot 1 failed (exit status: 7)"),
        "{o:?}"
    );
    assert_eq!(h.write(0, &[2; 4096]), EIO);
    assert_eq!(h.flush(), EIO);
    assert_eq!(fx.data_at("a.img", 0, 4096), vec![1; 4096]);
    let r = until_record(&fx, "the refusal", |r| !r["writes_refused"].is_null());
    assert_eq!(
        r["writes_refused"], "--fence-peer for slot 1 failed (exit status: 7)",
        "{r:#}"
    );
    assert_eq!(leg_of(&fx, 1)["state"], "fractured-by-admin");
    assert_eq!(events_of(&fx, "writes-refused").len(), 1);
    // Back in sync, nothing is left to fence: writes go on.
    fx.ok(&["resync", "a.img"]);
    assert_eq!(h.write(0, &[3; 4096]), 0);
    assert_eq!(h.flush(), 0);
    drop(h);
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("no cluster"),
        "the hook's output is in the log:\n{log}"
    );
    crate::serve::legs_identical(&fx, &[&fx.path("b.img"), &fx.path("c.img")]);
}

#[test]
fn write_runs_the_fence_peer_hook_for_a_leg_it_loses_and_a_failing_hook_stops_it_with_nothing_counted(
) {
    let fx = Fx::create("16M", "64K");
    let file = backing(&fx, "b.img");
    let nsock = fx.path("b.sock");
    let mut qn = qemu_unix(&file, &nsock, false);
    let leg = format!("nbd+unix:///exp?socket={}", nsock.display());
    fx.ok(&["attach", "a.img", &leg]);
    qn.kill();
    let input = fx.path("in.bin");
    random_file(&input, MIB, 9);
    let before = std::fs::read(fx.path("a.img")).unwrap();
    let o = fx.run(&[
        "--timeout",
        "2s",
        "write",
        "a.img",
        "-i",
        input.to_str().unwrap(),
        "--fence-peer",
        "exit 4",
        "--json",
    ]);
    assert_eq!(o.code, 3, "{o:?}");
    let j = o.json();
    assert_eq!(j["bytes_written"], 0, "{j:#}");
    assert_eq!(
        j["writes_refused"],
        "--fence-peer for slot 0 failed (exit status: 4)"
    );
    // Its fracture stays; nothing reached the data area.
    assert_eq!(leg_of(&fx, 0)["state"], "fractured-by-error");
    let g = fx.geometry();
    let after = std::fs::read(fx.path("a.img")).unwrap();
    assert!(
        after[g.data_offset as usize..] == before[g.data_offset as usize..],
        "a write refused by its fence hook changed the data area"
    );
    // Back in sync, lost again: a fence that succeeds lets the write go on (degraded, as
    // ever without the leg).
    let mut qn = qemu_unix(&file, &nsock, false);
    fx.ok(&["resync", "a.img"]);
    qn.kill();
    let mark = fx.path("fenced");
    let hook = format!(
        "echo \"$MIRRORCTL_SLOT $MIRRORCTL_REASON\" > {}",
        mark.display()
    );
    let o = fx.run(&[
        "--timeout",
        "2s",
        "write",
        "a.img",
        "-i",
        input.to_str().unwrap(),
        "--fence-peer",
        &hook,
        "--json",
    ]);
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.json()["bytes_written"], MIB, "{o:?}");
    let said = std::fs::read_to_string(&mark).unwrap();
    assert!(said.starts_with("0 by error: opening"), "{said}");
}
