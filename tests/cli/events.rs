//! The event journal and alerts (issue 15): every kind of event produced by a real scenario
//! appears in order with its fields; `--follow` sees another process's event at once and
//! `--exec` runs a program per event without ever holding the following up; the metrics
//! pass `promtool check metrics` and agree with `status --json`.

use crate::serve::{qemu_io, Serving};
use crate::support::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn events(fx: &Fx, img: &str, extra: &[&str]) -> Vec<Value> {
    let mut a = vec!["events", img, "--json"];
    a.extend_from_slice(extra);
    let o = fx.ok(&a);
    o.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// 64 KiB of seeded data at `off` of `img` (exit 0, or 3 while degraded).
fn write_to(fx: &Fx, img: &str, off: u64, seed: u64) {
    random_file(&fx.path("r.bin"), 64 * 1024, seed);
    let o = fx.run(&[
        "write",
        img,
        "--offset",
        &off.to_string(),
        "--input",
        "r.bin",
    ]);
    assert!(matches!(o.code, 0 | 3), "write to {img}: {o:?}");
}

fn kinds(ev: &[Value]) -> Vec<String> {
    ev.iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

fn only<'a>(ev: &'a [Value], kind: &str) -> &'a Value {
    let all: Vec<&Value> = ev.iter().filter(|e| e["kind"] == kind).collect();
    assert_eq!(all.len(), 1, "{kind}: {all:#?}");
    all[0]
}

#[test]
fn every_kind_of_event_a_real_scenario_produces_is_journaled_in_order_with_its_fields() {
    let fx = Fx::create("64M", "64K");
    let small = Tmpfs::mount("24M");
    let sec = small.join("b.img");
    let sec_s = sec.to_str().unwrap().to_string();
    fx.ok(&["attach", "a.img", &sec_s]);
    fx.ok(&["attach", "a.img", "c.img"]);
    // A secondary that fills up: fractured by error.
    random_file(&fx.path("in.bin"), 48 * MIB, 5);
    let o = fx.run(&["write", "a.img", "--input", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    fx.ok(&["detach", "a.img", &sec_s]);
    fx.ok(&["fracture", "a.img", "c.img", "--reason", "backup window"]);
    fx.ok(&["resync", "a.img"]);
    // Differences found by verify.
    fx.flip("c.img", 3 * MIB + 7);
    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 1, "{o:?}");
    fx.ok(&["resync", "a.img"]);
    // A writer killed with SIGKILL mid-write: the next command recovers.
    let mut w = spawn_piped(fx.dir.path(), &["write", "a.img"], false);
    let mut stdin = w.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &vec![9u8; 8 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    w.kill().unwrap();
    w.wait().unwrap();
    drop(stdin);
    assert!(u(&fx.status()["write_intent_regions"]) > 0);
    // serve recovers, serves one client, stops.
    let srv = Serving::start(&fx, &[]);
    qemu_io(&srv.uri(), &["write -P 0x33 0 64k", "flush"]);
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");

    let ev = events(&fx, "a.img", &[]);
    let k = kinds(&ev);
    // Sequence numbers 1, 2, 3 ... in order.
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(u(&e["seq"]), i as u64 + 1, "{e}");
        assert!(is_time(&e["time"]), "{e}");
        assert!(u(&e["time_unix"]) > 1_700_000_000, "{e}");
        assert_eq!(e["mirror_uuid"], fx.status()["mirror_uuid"]);
    }
    let expect = [
        "created",
        "attached",
        "attached",
        "fractured",
        "detached",
        "fractured",
        "resync-started",
        "resync-finished",
        "verify-finished",
        "resync-started",
        "resync-finished",
        "recovered",
        "serve-started",
        "client-connected",
        "serve-stopped",
    ];
    // In this order (serve may add a background resync of what recovery marked).
    let mut it = k.iter();
    for want in expect {
        assert!(
            it.any(|got| got == want),
            "{want} missing or out of order in {k:?}"
        );
    }
    for once in [
        "created",
        "detached",
        "verify-finished",
        "recovered",
        "serve-started",
        "client-connected",
        "serve-stopped",
    ] {
        only(&ev, once);
    }
    let by_error = &ev[3];
    assert_eq!(by_error["slot"], 0);
    let d = by_error["detail"].as_str().unwrap();
    assert!(
        d.starts_with("by error: ") && d.contains("No space left"),
        "{d}"
    );
    let by_admin = &ev[5];
    assert_eq!(by_admin["slot"], 1);
    assert_eq!(by_admin["leg"], "c.img");
    assert_eq!(by_admin["detail"], "by admin: backup window");
    let v = only(&ev, "verify-finished");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("differences: 1 mismatched regions"),
        "{v}"
    );
    assert_eq!(v["slot"], Value::Null);
    let r = only(&ev, "recovered");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("write-intent regions"),
        "{r}"
    );
    // (Serving::start's probe connects without a handshake: not a client.)
    let c = only(&ev, "client-connected")["detail"].as_str().unwrap();
    assert!(
        c.starts_with("client ") && c.ends_with(": unix socket"),
        "{c}"
    );
    let st = only(&ev, "serve-stopped")["detail"].as_str().unwrap();
    assert!(
        st.starts_with("SIGTERM: ") && st.contains("connections served"),
        "{st}"
    );
    // --since, the text form, and status naming the newest.
    let last = u(&ev.last().unwrap()["seq"]);
    assert_eq!(u(&fx.status()["last_event_seq"]), last);
    assert_eq!(
        events(&fx, "a.img", &["--since", &(last - 2).to_string()]).len(),
        2
    );
    let text = fx.ok(&["events", "a.img"]).stdout;
    assert_eq!(text.lines().count(), ev.len());
    assert!(
        text.lines()
            .nth(5)
            .unwrap()
            .ends_with("fractured  slot 1 (c.img): by admin: backup window"),
        "{text}"
    );
    // The journal is the primary's: a secondary points there.
    let o = fx.run(&["events", "c.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr
            .contains("the event journal is kept by the primary"),
        "{o:?}"
    );
}

#[test]
fn a_promotion_a_split_brain_refusal_and_a_replaced_primary_are_reported() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    fx.write_random(0, MIB, 1);
    // Unplanned promotion (the primary is away), writes on both sides: split brain.
    fx.while_away("a.img", || {
        let o = fx.run(&["promote", "b.img"]);
        assert!(matches!(o.code, 0 | 3), "{o:?}");
        write_to(&fx, "b.img", 100 * 64 * 1024, 2);
    });
    fx.while_away("b.img", || {
        write_to(&fx, "a.img", 200 * 64 * 1024, 3);
    });
    let o = fx.run(&["attach", "b.img", "a.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    let ev = events(&fx, "b.img", &[]);
    let k = kinds(&ev);
    assert_eq!(k[0], "promoted", "{k:?}");
    assert!(
        ev[0]["detail"].as_str().unwrap().starts_with("unplanned"),
        "{ev:#?}"
    );
    let sb = only(&ev, "split-brain-refused");
    assert!(
        sb["detail"].as_str().unwrap().contains("split brain"),
        "{sb}"
    );
    // The replaced primary is not written to (P6); `events` finds and reports it.
    let before = std::fs::read(fx.path("a.img")).unwrap();
    let ev = events(&fx, "a.img", &[]);
    let r = ev.last().unwrap();
    assert_eq!(r["kind"], "replaced-primary", "{ev:#?}");
    assert_eq!(r["seq"], Value::Null);
    assert!(r["detail"].as_str().unwrap().contains("b.img"), "{r}");
    assert!(std::fs::read(fx.path("a.img")).unwrap() == before);
}

/// Reads lines from `child`'s stdout on a thread; `next(timeout)` returns the next one.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut std::process::Child) -> Lines {
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }
    fn next(&self, within: Duration) -> Option<Value> {
        self.0
            .recv_timeout(within)
            .ok()
            .map(|l| serde_json::from_str(&l).unwrap())
    }
}

#[test]
fn follow_sees_another_process_event_within_a_second_and_exec_never_holds_it_up() {
    let fx = Fx::with_legs("32M", "64K", &["b.img", "c.img"]);
    let newest = u(&fx.status()["last_event_seq"]);
    let out = fx.path("exec.log");
    // The program: records its environment; for a fracture, sleeps past its timeout; for a
    // resync start, fails.
    let prog = format!(
        "echo \"$MIRRORCTL_SEQ $MIRRORCTL_EVENT slot=$MIRRORCTL_SLOT leg=$MIRRORCTL_LEG detail=$MIRRORCTL_DETAIL primary=$MIRRORCTL_PRIMARY\" >> {}; \
         case $MIRRORCTL_EVENT in fractured) sleep 30;; resync-started) exit 7;; esac",
        out.display()
    );
    let mut child = Command::new(bin())
        .args([
            "events",
            "a.img",
            "--json",
            "--follow",
            "--exec",
            &prog,
            "--exec-timeout",
            "2s",
        ])
        .current_dir(fx.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut child);
    // Without --since, --exec starts from now: nothing old comes.
    assert!(lines.next(Duration::from_millis(800)).is_none());
    let t = Instant::now();
    fx.ok(&["fracture", "a.img", "b.img", "--reason", "test"]);
    let e = lines.next(Duration::from_secs(2)).expect("no event");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(e["kind"], "fractured");
    assert_eq!(u(&e["seq"]), newest + 1);
    // The fracture's program sleeps; later events still come at once.
    let t = Instant::now();
    fx.ok(&["resync", "a.img"]);
    let e = lines.next(Duration::from_secs(2)).expect("no event");
    assert_eq!(e["kind"], "resync-started");
    assert_eq!(
        lines.next(Duration::from_secs(2)).unwrap()["kind"],
        "resync-finished"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A command that rewrites the mirror meanwhile does not stop the following.
    fx.ok(&["detach", "a.img", "c.img"]);
    assert_eq!(
        lines.next(Duration::from_secs(2)).unwrap()["kind"],
        "detached"
    );
    // The programs ran in order, each once, with the event in their environment.
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(&out).unwrap_or_default();
        if log.lines().count() >= 4 {
            let l: Vec<&str> = log.lines().collect();
            assert!(
                l[0].starts_with(&format!(
                    "{} fractured slot=0 leg=b.img detail=by admin: test primary=a.img",
                    newest + 1
                )),
                "{log}"
            );
            assert!(l[1].contains(" resync-started slot=0 "), "{log}");
            assert!(l[2].contains(" resync-finished slot=0 "), "{log}");
            assert!(l[3].contains(" detached slot=1 "), "{log}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("(fractured) was killed after 2s"), "{err}");
    assert!(
        err.contains("(resync-started) failed (exit status: 7)"),
        "{err}"
    );
}

#[test]
fn the_metrics_pass_promtool_and_agree_with_status_idle_and_while_serving() {
    require("promtool", "prometheus");
    let fx = Fx::with_legs("32M", "64K", &["b.img", "c.img"]);
    fx.ok(&["fracture", "a.img", "c.img"]);
    random_file(&fx.path("in.bin"), 2 * MIB, 3);
    let o = fx.run(&["write", "a.img", "--input", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let check = |text: &str| {
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(p.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        let o = p.wait_with_output().unwrap();
        assert!(
            o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let m = fx.ok(&["status", "a.img", "--format", "prometheus"]).stdout;
    check(&m);
    let s = fx.status();
    assert_eq!(value(&m, "mirrorctl_healthy{"), 0.0);
    let oos = u(&leg(&s, 1)["out_of_sync_bytes"]) as f64;
    assert!(oos > 0.0);
    let series = |name: &str, rest: &str| {
        format!(
            "{name}{{mirror=\"{}\",primary=\"a.img\",{rest}}}",
            s["mirror_uuid"].as_str().unwrap()
        )
    };
    assert_eq!(
        value(
            &m,
            &series(
                "mirrorctl_leg_out_of_sync_bytes",
                "slot=\"1\",leg=\"c.img\""
            )
        ),
        oos
    );
    assert_eq!(
        value(
            &m,
            &series(
                "mirrorctl_leg_state",
                "slot=\"1\",leg=\"c.img\",state=\"fractured-by-admin\""
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &series(
                "mirrorctl_leg_state",
                "slot=\"0\",leg=\"b.img\",state=\"fractured-by-admin\""
            )
        ),
        0.0
    );
    assert_eq!(
        value(&m, "mirrorctl_events_total{"),
        u(&s["last_event_seq"]) as f64
    );
    fx.ok(&["resync", "a.img"]);
    fx.ok(&["verify", "a.img"]);
    let m = fx.ok(&["status", "a.img", "--format", "prometheus"]).stdout;
    check(&m);
    assert_eq!(value(&m, "mirrorctl_healthy{"), 1.0);
    assert_eq!(
        value(
            &m,
            &series("mirrorctl_last_verify_result", "result=\"clean\"")
        ),
        1.0
    );
    assert!(value(&m, "mirrorctl_last_verify_timestamp_seconds{") > 1.7e9);
    // While serving: the server's counters.
    let srv = Serving::start(&fx, &[]);
    qemu_io(&srv.uri(), &["write -P 0x44 0 1M", "flush"]);
    std::thread::sleep(Duration::from_millis(700));
    let m = fx.ok(&["status", "a.img", "--format", "prometheus"]).stdout;
    check(&m);
    assert_eq!(
        value(&m, &series("mirrorctl_running", "command=\"serve\"")),
        1.0
    );
    assert!(value(&m, "mirrorctl_serve_written_bytes_total{") >= MIB as f64);
    assert!(value(&m, "mirrorctl_serve_connections_total{") >= 1.0);
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    // --json and --format json are one thing.
    let a = fx.ok(&["status", "a.img", "--json"]).json();
    let b = fx.ok(&["status", "a.img", "--format", "json"]).json();
    assert_eq!(a["generation"], b["generation"]);
    let o = fx.run(&["status", "a.img", "--json", "--format", "text"]);
    assert_eq!(o.code, 2, "{o:?}");
}

#[test]
fn exec_timeout_kills_the_hooks_children_too_not_only_the_shell() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let pidfile = fx.path("child.pid");
    // The hook starts a long child of its own and waits for it.
    let prog = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let since = u(&fx.status()["last_event_seq"]).to_string();
    fx.ok(&["fracture", "a.img", "b.img"]);
    let mut follower = Command::new(bin())
        .args([
            "events",
            "a.img",
            "--follow",
            "--since",
            &since,
            "--exec",
            &prog,
            "--exec-timeout",
            "1s",
        ])
        .current_dir(fx.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !pidfile.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past the timeout, with room.
    std::thread::sleep(Duration::from_millis(1800));
    let _ = follower.kill();
    let out = follower.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was killed after 1s"), "{stderr}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    if alive {
        // SAFETY: kill(2) of a process this test started (through the hook).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!alive, "the hook's child {pid} outlived --exec-timeout");
}
