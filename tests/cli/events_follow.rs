//! `events --follow` follows the mirror, not a path (issue 26): across a planned promotion,
//! a promotion back, an unplanned promotion and the old primary's re-join, every event is
//! delivered to `--exec` exactly once and in order, with what changed said on stderr and as
//! a `following` event; a follower killed with SIGKILL and restarted with its
//! `--state-file` delivers what it missed once; a state file of another mirror or a damaged
//! one is refused. And an NBD leg is named by its short form (`... (TLS)`) in text, logs,
//! event details and metrics while JSON keeps the full URI, with the cause of a failure
//! kept whole in the event's detail.

use crate::nbd::{backing, Server};
use crate::support::*;
use crate::tls::{nbdkit_tls, strs, Pki};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `mirrorctl events a.img --json --follow --exec PROG --state-file STATE` in the fixture's
/// directory; PROG appends `SEQ|KIND|PRIMARY|MIRROR|LEG|DETAIL` to `log` per event.
struct Follower {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Follower {
    fn start(fx: &Fx, log: &Path, state: &Path) -> Follower {
        let prog = format!(
            "printf '%s|%s|%s|%s|%s|%s\\n' \"$MIRRORCTL_SEQ\" \"$MIRRORCTL_EVENT\" \"$MIRRORCTL_PRIMARY\" \"$MIRRORCTL_MIRROR\" \"$MIRRORCTL_LEG\" \"$MIRRORCTL_DETAIL\" >> {}",
            log.display()
        );
        let mut child = Command::new(bin())
            .args(["events", "a.img", "--json", "--follow", "--exec", &prog])
            .arg("--state-file")
            .arg(state)
            .current_dir(fx.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mirrorctl events");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Follower { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL, as a power cut or the OOM killer would.
    fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        self.stderr()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One delivery as the program saw it.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    seq: Option<u64>,
    kind: String,
    primary: String,
    mirror: String,
    leg: String,
    detail: String,
}

fn delivered(log: &Path) -> Vec<Got> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(6, '|').collect();
            assert_eq!(f.len(), 6, "{l}");
            Got {
                seq: f[0].parse().ok(),
                kind: f[1].into(),
                primary: f[2].into(),
                mirror: f[3].into(),
                leg: f[4].into(),
                detail: f[5].into(),
            }
        })
        .collect()
}

/// Waits (15 s at most) until `done` holds for what was delivered.
fn wait_for_log(log: &Path, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let t = Instant::now();
    loop {
        let got = delivered(log);
        if done(&got) {
            return got;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{what}: not delivered; so far {got:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(got: &[Got], kind: &str) -> usize {
    got.iter().filter(|g| g.kind == kind).count()
}

/// The journal of `img` as (seq, kind) pairs.
fn journal(fx: &Fx, img: &str) -> Vec<(u64, String)> {
    fx.ok(&["events", img, "--json"])
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (u(&v["seq"]), v["kind"].as_str().unwrap().to_string())
        })
        .collect()
}

fn state_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn promote(fx: &Fx, img: &str) {
    let o = fx.run(&["promote", img]);
    assert!(matches!(o.code, 0 | 3), "promote {img}: {o:?}");
}

#[test]
fn a_follower_goes_with_the_mirror_across_promotions_and_a_rejoin_and_after_sigkill_its_state_file_delivers_each_missed_event_once(
) {
    let fx = Fx::with_legs("32M", "64K", &["b.img", "c.img"]);
    let mirror = fx.status()["mirror_uuid"].as_str().unwrap().to_string();
    let start = u(&fx.status()["last_event_seq"]);
    let log = fx.path("exec.log");
    let state = fx.path("follow.state");
    let f = Follower::start(&fx, &log, &state);
    // The state file is written at once (so a follower killed before any event resumes
    // from where it started), naming the mirror.
    let t = Instant::now();
    while !state.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no state file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(st["mirror_uuid"], mirror.as_str(), "{st:#}");

    // c.img fractured and resynced on the primary of the moment: the nth resync seen.
    let fracture_resync = |primary: &str, n: usize, reason: &str| {
        fx.ok(&["fracture", primary, "c.img", "--reason", reason]);
        fx.ok(&["resync", primary]);
        wait_for_log(&log, &format!("resync {n} on {primary}"), |g| {
            count(g, "resync-finished") == n
        })
    };
    fracture_resync("a.img", 1, "one");
    // Planned promotion: a.img becomes b.img's secondary; b.img carries the journal on.
    promote(&fx, "b.img");
    wait_for_log(&log, "planned promotion", |g| count(g, "promoted") == 1);
    fracture_resync("b.img", 2, "two");
    // And back (planned again).
    promote(&fx, "a.img");
    wait_for_log(&log, "promotion back", |g| count(g, "promoted") == 2);
    let got = fracture_resync("a.img", 3, "three");
    // One journal all along: its events after the start, each once, in order.
    let j1: Vec<(u64, String)> = journal(&fx, "a.img")
        .into_iter()
        .filter(|(s, _)| *s > start)
        .collect();
    let seen: Vec<(u64, String)> = got
        .iter()
        .filter_map(|g| g.seq.map(|s| (s, g.kind.clone())))
        .collect();
    assert_eq!(seen, j1, "{got:#?}");
    assert_eq!(count(&got, "following"), 2, "{got:#?}");

    // Unplanned promotion: a.img is away; b.img begins a new journal at 1.
    fx.while_away("a.img", || {
        promote(&fx, "b.img");
        wait_for_log(&log, "unplanned promotion", |g| count(g, "promoted") == 3);
    });
    // The old primary is back and is attached back as b.img's secondary.
    // (Exit 3: c.img waits for the full resync the unplanned promotion marked.)
    let o = fx.run(&["attach", "b.img", "a.img"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    let t = Instant::now();
    let rejoined = loop {
        let n = journal(&fx, "b.img").len();
        let got = delivered(&log);
        if got.iter().filter(|g| g.seq.is_some()).count() >= j1.len() + n {
            break got;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "re-join: {got:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Killed once the last delivery is recorded (killed between a program's run and the
    // record, that event comes again: at least once).
    let last = rejoined.iter().rev().find_map(|g| g.seq).unwrap();
    let t = Instant::now();
    while u(&state_json(&state)["last"]["seq"]) != last {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not recorded: {last}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = f.kill();

    // Killed: events made meanwhile are delivered once by the restarted follower.
    fx.ok(&["fracture", "b.img", "c.img", "--reason", "four"]);
    fx.ok(&["resync", "b.img"]);
    let f = Follower::start(&fx, &log, &state);
    // A last event, to know every earlier one was delivered (in order) when it is.
    fx.ok(&["fracture", "b.img", "c.img", "--reason", "five"]);
    let got = wait_for_log(&log, "after the restart", |g| {
        g.last().is_some_and(|l| l.detail == "by admin: five")
    });
    let last = got.last().and_then(|g| g.seq).unwrap();
    let t = Instant::now();
    while u(&state_json(&state)["last"]["seq"]) != last {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not recorded: {last}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr2 = f.kill();

    let j2 = journal(&fx, "b.img");
    assert_eq!(j2[0], (1, "promoted".to_string()), "{j2:?}");
    let seen: Vec<(u64, String)> = got
        .iter()
        .filter_map(|g| g.seq.map(|s| (s, g.kind.clone())))
        .collect();
    let want: Vec<(u64, String)> = j1.iter().chain(&j2).cloned().collect();
    assert_eq!(seen, want, "every event once, in order: {got:#?}");
    // What changed: a `following` event right before each promotion's own event, and a line
    // on stderr; none for the restart (the state file named b.img, still the primary).
    let following: Vec<usize> = got
        .iter()
        .enumerate()
        .filter(|(_, g)| g.kind == "following")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(following.len(), 3, "{got:#?}");
    for &i in &following {
        assert_eq!(got[i + 1].kind, "promoted", "{got:#?}");
        assert!(got[i].detail.starts_with("now following "), "{:?}", got[i]);
        assert_eq!(got[i].mirror, mirror);
    }
    assert!(
        got[following[0]].detail.contains("is now a secondary of"),
        "{:?}",
        got[following[0]]
    );
    assert!(
        got[following[0]].primary.ends_with("b.img"),
        "{:?}",
        got[following[0]]
    );
    assert!(
        got[following[1]].primary.ends_with("a.img"),
        "{:?}",
        got[following[1]]
    );
    let unplanned = &got[following[2]];
    assert!(
        unplanned.detail.contains("a.img cannot be read") && unplanned.detail.contains("a new one"),
        "{unplanned:?}"
    );
    // Events carry the primary they were read from.
    assert!(got.last().unwrap().primary.ends_with("b.img"), "{got:#?}");
    assert!(rejoined
        .iter()
        .any(|g| g.kind == "attached" && g.seq.is_some()));
    for line in [
        "is now a secondary of",
        "following the primary",
        "a.img cannot be read",
        "its journal is a new one",
    ] {
        assert!(stderr.contains(line), "{line}: {stderr}");
    }
    assert!(!stderr2.contains("following the primary"), "{stderr2}");
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(
        st["primary_open"].as_str().unwrap().ends_with("b.img"),
        "{st:#}"
    );
    assert_eq!(u(&st["last"]["seq"]), j2.last().unwrap().0, "{st:#}");
}

#[test]
fn a_follower_started_on_a_primary_replaced_by_a_promotion_goes_to_the_image_promoted_in_its_place()
{
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    // Unplanned promotion while a.img was away; it is back, still calling itself primary.
    fx.while_away("a.img", || {
        promote(&fx, "b.img");
    });
    let log = fx.path("exec.log");
    let state = fx.path("follow.state");
    let f = Follower::start(&fx, &log, &state);
    // Found by reading a.img's legs (rule P6): the new journal from its first event.
    let got = wait_for_log(&log, "the switch", |g| count(g, "promoted") == 1);
    assert_eq!(got[0].kind, "following", "{got:#?}");
    assert!(
        got[0]
            .detail
            .contains("a.img was replaced by a promotion of"),
        "{got:#?}"
    );
    assert_eq!((got[1].seq, got[1].kind.as_str()), (Some(1), "promoted"));
    fx.ok(&["fracture", "b.img", "c.img", "--reason", "after"]);
    let got = wait_for_log(&log, "an event on b.img", |g| {
        g.last().is_some_and(|l| l.detail == "by admin: after")
    });
    let journal: Vec<(u64, String)> = journal(&fx, "b.img");
    let seen: Vec<(u64, String)> = got
        .iter()
        .filter_map(|g| g.seq.map(|s| (s, g.kind.clone())))
        .collect();
    assert_eq!(seen, journal, "{got:#?}");
    let stderr = f.kill();
    assert!(
        stderr.contains("was replaced by a promotion of")
            && stderr.contains("following the primary"),
        "{stderr}"
    );
    // Said once: not again as a note when the new journal is read.
    assert!(!stderr.contains("this is another journal"), "{stderr}");
}

#[test]
fn a_state_file_of_another_mirror_or_a_damaged_one_is_refused_and_left_as_it_is() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    let other = Fx::create("16M", "64K");
    let state = fx.path("follow.state");
    // A first run records where it is (no --follow: it prints and stops).
    fx.ok(&["events", "a.img", "--state-file", state.to_str().unwrap()]);
    let saved = std::fs::read(&state).unwrap();
    let o = other.run(&["events", "a.img", "--state-file", state.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.starts_with("mirrorctl: events: the state file ")
            && o.stderr.contains("is for mirror")
            && o.stderr
                .contains(fx.status()["mirror_uuid"].as_str().unwrap()),
        "{o:?}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), saved);
    // Resumed on its own mirror: nothing new, nothing printed again.
    fx.ok(&["fracture", "a.img", "b.img"]);
    let o = fx.ok(&[
        "events",
        "a.img",
        "--json",
        "--state-file",
        state.to_str().unwrap(),
    ]);
    let kinds: Vec<Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kinds.len(), 1, "{o:?}");
    assert_eq!(kinds[0]["kind"], "fractured");
    let o = fx.ok(&["events", "a.img", "--state-file", state.to_str().unwrap()]);
    assert_eq!(o.stdout, "", "{o:?}");
    // Damaged: refused, not started again from scratch.
    std::fs::write(
        &state,
        b"{\"format\": \"mirrorctl-events-state-1\", \"mirror",
    )
    .unwrap();
    let o = fx.run(&[
        "events",
        "a.img",
        "--follow",
        "--state-file",
        state.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr
            .contains("is not one mirrorctl wrote or is damaged")
            && o.stderr.contains("Remove it"),
        "{o:?}"
    );
    assert!(std::fs::read(&state).unwrap().ends_with(b"\"mirror"));
}

/// nbdkit serving `file` with TLS on a socket in a directory with a long name, so the
/// leg's URI (socket and TLS files) is long.
fn long_tls_leg(fx: &Fx) -> (Pki, PathBuf, PathBuf, String) {
    let deep = fx.path("a-directory-with-a-rather-long-name-for-the-certificates-of-the-mirror");
    let pki = Pki::new(&deep.join("pki"), "events");
    let file = backing(fx, "remote.raw");
    let sock = fx.path("kit.sock");
    let uri = format!("nbds+unix:///?socket={}", sock.display());
    (pki, file, sock, uri)
}

#[test]
fn an_nbds_leg_is_named_short_in_text_events_and_metrics_and_the_fracture_detail_keeps_the_cause() {
    require("promtool", "prometheus");
    let fx = Fx::create("32M", "64K");
    let (pki, file, sock, uri) = long_tls_leg(&fx);
    let dir = pki.dir();
    let mut server: Server = nbdkit_tls(&file, &sock, &dir);
    let mut args = vec!["attach".to_string(), "a.img".into(), uri.clone()];
    args.extend(pki.attach_args());
    fx.ok(&strs(&args));
    let full = leg(&fx.status(), 0)["path"].as_str().unwrap().to_string();
    assert!(full.len() > 170 && full.contains("tls-ca="), "{full}");
    let short = format!("nbds+unix:///?socket={} (TLS)", sock.display());
    // A follower with --exec, started before the failure.
    let log = fx.path("exec.log");
    let state = fx.path("follow.state");
    let f = Follower::start(&fx, &log, &state);
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    random_file(&fx.path("r.bin"), 1 << 20, 3);
    let o = fx.run(&["--timeout", "2s", "write", "a.img", "--input", "r.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stderr.contains(&short) && !o.stderr.contains("tls-ca"),
        "{o:?}"
    );

    // The event: the cause (the OS's error) whole in the detail; the leg short in text.
    let ev: Vec<Value> = fx
        .ok(&["events", "a.img", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fr = ev
        .iter()
        .find(|e| e["kind"] == "fractured")
        .expect("no fractured event");
    let detail = fr["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("by error: ") && detail.contains("kit.sock: Connection refused"),
        "{fr:#}"
    );
    assert!(!detail.contains("tls-ca"), "{fr:#}");
    assert_eq!(fr["leg"], full.as_str(), "JSON keeps the full URI: {fr:#}");
    assert_eq!(fr["leg_display"], short.as_str(), "{fr:#}");
    let text = fx.ok(&["events", "a.img"]).stdout;
    let line = text.lines().find(|l| l.contains("fractured")).unwrap();
    assert!(
        line.contains(&format!("slot 0 ({short}): by error: ")),
        "{text}"
    );
    assert!(!text.contains("tls-ca"), "{text}");
    let got = wait_for_log(&log, "the fracture", |g| count(g, "fractured") == 1);
    let g = got.iter().find(|g| g.kind == "fractured").unwrap();
    assert_eq!(g.detail, detail, "MIRRORCTL_DETAIL");
    assert_eq!(g.leg, short, "MIRRORCTL_LEG");
    drop(f);

    // status: short in text, full in JSON; metrics labelled with the short form.
    let st = fx.run(&["status", "a.img"]);
    assert!(
        st.stdout.contains(&short) && !st.stdout.contains("tls-ca"),
        "{st:?}"
    );
    assert_eq!(leg(&fx.status(), 0)["path"], full.as_str());
    let m = fx
        .run(&["status", "a.img", "--format", "prometheus"])
        .stdout;
    assert!(
        m.contains(&format!("leg=\"{short}\"")) && !m.contains("tls-ca"),
        "{m}"
    );
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(p.stdin.as_mut().unwrap(), m.as_bytes()).unwrap();
    drop(p.stdin.take());
    let mut out = String::new();
    p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let code = p.wait().unwrap();
    assert!(
        code.success() && out.is_empty() && err.is_empty(),
        "promtool: {out}{err}\n{m}"
    );
}

#[test]
fn a_verify_of_one_leg_of_several_names_its_slot_and_one_of_every_leg_none() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.ok(&["verify", "a.img", "c.img"]);
    fx.ok(&["verify", "a.img"]);
    let ev: Vec<Value> = fx
        .ok(&["events", "a.img", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["kind"] == "verify-finished")
        .collect();
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert_eq!(ev[0]["slot"], 1, "{:#}", ev[0]);
    assert!(
        ev[0]["leg"].as_str().unwrap().ends_with("c.img"),
        "{:#}",
        ev[0]
    );
    assert_eq!(ev[1]["slot"], Value::Null, "{:#}", ev[1]);
}
