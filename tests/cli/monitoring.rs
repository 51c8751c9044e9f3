//! Monitoring an admin can trust (issue 26): `status` run by an unprivileged monitoring user
//! finds a root serve's live record (and the reverse), a verify that compares nothing is no
//! clean pass, an unclean stop is named as the cause of a degraded health, metrics of a
//! secondary and of a replaced primary do not alert forever after a failover, every report of
//! a `resync --compare` says both what it compared and what it wrote, and the small things:
//! the busy hint when serve holds the mirror, decimal sizes, subcommand suggestions, the
//! split-brain message, and help examples at every terminal width.

use crate::serve::{fio, Serving};
use crate::support::*;
use std::process::Command;
use std::time::{Duration, Instant};

const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// `mirrorctl ARGS` in the fixture's folder as user nobody (no runtime directory of its own
/// unless `xdg` names one).
fn run_as_nobody(fx: &Fx, args: &[&str], xdg: Option<&std::path::Path>) -> Out {
    let mut c = Command::new(AS_NOBODY[0]);
    c.args(&AS_NOBODY[1..])
        .arg(bin())
        .args(args)
        .current_dir(fx.dir.path())
        .env_remove("XDG_RUNTIME_DIR");
    if let Some(x) = xdg {
        c.env("XDG_RUNTIME_DIR", x);
    }
    let o = c.output().expect("running setpriv");
    Out {
        code: o.status.code().expect("mirrorctl was killed by a signal"),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The fixture's folder and images readable (not writable) by others, as an image a
/// monitoring user may read.
fn readable_by_others(fx: &Fx) {
    sh("chmod", &["755", fx.dir.path().to_str().unwrap()]);
    for e in std::fs::read_dir(fx.dir.path()).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "img") {
            sh("chmod", &["644", e.path().to_str().unwrap()]);
        }
    }
}

/// `promtool check metrics` accepts `text` (a missing promtool fails, naming the package).
fn promtool_accepts(text: &str) {
    require("promtool", "prometheus (promtool)");
    use std::io::Write;
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The value of the first sample whose line starts with `series`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every way `status` reports, run by `who`, while hosts write through serve: healthy,
/// serve named as running, the intents its writes in flight. Returns how many samples saw
/// intents marked (so a test can tell the check was made with something to judge).
fn status_while_hosts_write(srv: &Serving, who: &dyn Fn(&[&str]) -> Out) -> usize {
    let uri = srv.uri();
    let host = std::thread::spawn(move || {
        fio(
            &uri,
            &[
                "--rw=randwrite",
                "--bs=64k",
                "--iodepth=4",
                "--size=16M",
                "--time_based",
                "--runtime=2",
            ],
        )
    });
    let mut with_intents = 0;
    let t = Instant::now();
    while !host.is_finished() {
        let o = who(&["status", "a.img", "--json"]);
        assert_eq!(o.code, 0, "{o:?}");
        let s = o.json();
        assert_eq!(s["running"]["command"], "serve", "{s:#}");
        assert_eq!(s["healthy"], true, "{s:#}");
        assert_eq!(s["health_reasons"], serde_json::json!([]), "{s:#}");
        if u(&s["write_intent_regions"]) > 0 {
            with_intents += 1;
        }
        let o = who(&["status", "a.img"]);
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.contains("running       serve (pid"), "{o:?}");
        assert!(!o.stdout.contains("uncleanly"), "{o:?}");
        assert!(o.has_line("health        in sync"), "{o:?}");
        let o = who(&["status", "a.img", "--check"]);
        assert_eq!(o.code, 0, "{o:?}");
        let o = who(&["status", "a.img", "--format", "prometheus"]);
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(metric(&o.stdout, "mirrorctl_healthy{"), 1.0, "{}", o.stdout);
        assert_eq!(metric(&o.stdout, "mirrorctl_running{"), 1.0, "{}", o.stdout);
        assert!(t.elapsed() < Duration::from_secs(60));
    }
    host.join().unwrap();
    with_intents
}

#[test]
fn status_run_by_nobody_on_a_mirror_root_serves_finds_serve_running_and_the_mirror_healthy() {
    require_root("running status as nobody");
    require("setpriv", "util-linux");
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    readable_by_others(&fx);
    let srv = Serving::start(&fx, &[]);
    let seen = status_while_hosts_write(&srv, &|a| run_as_nobody(&fx, a, None));
    assert!(seen >= 1, "no sample saw the hosts' writes in flight");
    // The record is readable by others: 0755 directory, 0644 file.
    use std::os::unix::fs::PermissionsExt;
    let dir = std::fs::metadata("/run/mirrorctl").unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o755);
    let rec = std::fs::read_dir("/run/mirrorctl")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path())
                .is_ok_and(|t| t.contains(&format!("\"pid\":{}", srv.pid())))
        })
        .expect("serve's record in /run/mirrorctl");
    assert_eq!(rec.metadata().unwrap().permissions().mode() & 0o777, 0o644);
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn status_run_by_root_on_a_mirror_nobody_serves_finds_serve_running_and_the_mirror_healthy() {
    require_root("running serve as nobody");
    require("setpriv", "util-linux");
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    sh(
        "chown",
        &["-R", "65534:65534", fx.dir.path().to_str().unwrap()],
    );
    sh("chmod", &["755", fx.dir.path().to_str().unwrap()]);
    // nobody without a runtime directory: its record goes to /tmp/mirrorctl-65534.
    let wrapper = ["env", "-u", "XDG_RUNTIME_DIR"]
        .iter()
        .chain(AS_NOBODY.iter())
        .copied()
        .collect::<Vec<_>>();
    let srv = Serving::start_wrapped(&fx, &wrapper, &[], &fx.path("nobody.sock"), &[]);
    let seen = status_while_hosts_write(&srv, &|a| fx.run(a));
    assert!(seen >= 1, "no sample saw the hosts' writes in flight");
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_writer_whose_record_cannot_be_read_is_named_by_pid_and_its_intents_are_not_called_an_unclean_stop(
) {
    require_root("running serve as nobody");
    require("setpriv", "util-linux");
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    // nobody's runtime directory is private (0700), as /run/user/UID is: root's status
    // does not look there, and finds the serving pid in the kernel's lock table.
    let run = fx.path("run");
    std::fs::create_dir(&run).unwrap();
    sh(
        "chown",
        &["-R", "65534:65534", fx.dir.path().to_str().unwrap()],
    );
    sh("chmod", &["755", fx.dir.path().to_str().unwrap()]);
    sh("chmod", &["700", run.to_str().unwrap()]);
    let srv = Serving::start_wrapped(
        &fx,
        &AS_NOBODY,
        &[("XDG_RUNTIME_DIR", run.as_path())],
        &fx.path("nobody.sock"),
        &[],
    );
    let uri = srv.uri();
    let host = std::thread::spawn(move || {
        fio(
            &uri,
            &[
                "--rw=randwrite",
                "--bs=64k",
                "--size=16M",
                "--time_based",
                "--runtime=2",
            ],
        )
    });
    let mut with_intents = 0;
    while !host.is_finished() {
        // The record may not be found; an unreadable one must not make the mirror broken.
        let s = fx.status();
        if s["running"].is_null() {
            assert_eq!(s["lock_holder_pid"], srv.pid(), "{s:#}");
        }
        assert_eq!(s["healthy"], true, "{s:#}");
        if u(&s["write_intent_regions"]) > 0 {
            with_intents += 1;
            let o = fx.run(&["status", "a.img"]);
            assert!(!o.stdout.contains("uncleanly"), "{o:?}");
        }
        assert_eq!(fx.run(&["status", "a.img", "--check"]).code, 0);
    }
    host.join().unwrap();
    assert!(
        with_intents >= 1,
        "no sample saw the hosts' writes in flight"
    );
    let o = fx.run(&["status", "a.img"]);
    assert!(
        o.stdout
            .contains(&format!("a command (pid {}) holds the mirror", srv.pid())),
        "{o:?}"
    );
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn verify_with_nothing_to_compare_says_incomplete_not_clean_and_exits_3_as_status_records() {
    // No secondary at all.
    let fx = Fx::create("16M", "64K");
    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stdout.contains("result: incomplete"), "{o:?}");
    assert!(!o.stdout.contains("pass complete"), "{o:?}");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["result"], "incomplete", "{v:#}");
    assert_eq!(v["complete"], false, "{v:#}");
    assert_eq!(fx.status()["last_verify_result"], "incomplete");
    // A secondary that is not in sync: nothing compared either.
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "0"]);
    let (code, v) = fx.verify(&[]);
    assert_eq!(
        (code, &v["result"], &v["complete"]),
        (3, &"incomplete".into(), &false.into()),
        "{v:#}"
    );
    assert_eq!(fx.status()["last_verify_result"], "incomplete");
    // One in sync: a clean pass.
    fx.ok(&["resync", "a.img"]);
    let (code, v) = fx.verify(&[]);
    assert_eq!(
        (code, &v["result"], &v["complete"]),
        (0, &"clean".into(), &true.into()),
        "{v:#}"
    );
}

#[test]
fn after_serve_is_killed_the_health_line_names_the_write_intents_an_unclean_stop_left() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let srv = Serving::start(&fx, &[]);
    fio(
        &srv.uri(),
        &["--rw=randwrite", "--bs=64k", "--size=8M", "--io_size=4M"],
    );
    let s = fx.status();
    assert!(u(&s["write_intent_regions"]) > 0, "{s:#}");
    srv.kill9();
    let s = fx.status();
    let n = u(&s["write_intent_regions"]);
    assert!(n > 0, "{s:#}");
    assert_eq!(s["healthy"], false);
    let reasons = s["health_reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{s:#}");
    let r = reasons[0].as_str().unwrap();
    assert!(
        r.starts_with(&format!("{n} regions ("))
            && r.contains("of write intents pending from an unclean stop"),
        "{r}"
    );
    let o = fx.run(&["status", "a.img"]);
    assert_eq!(o.code, 0);
    let health = o
        .stdout
        .lines()
        .find(|l| l.starts_with("health"))
        .unwrap()
        .to_string();
    assert_eq!(health, format!("health        DEGRADED: {r}"), "{o:?}");
    assert!(!health.contains("slot 0"), "{health}");
    assert_eq!(fx.run(&["status", "a.img", "--check"]).code, 3);
    let m = fx.ok(&["status", "a.img", "--format", "prometheus"]).stdout;
    assert_eq!(metric(&m, "mirrorctl_healthy{"), 0.0);
    // The next command recovers them: the leg then lacks them by its own log, and says so.
    fx.ok(&["fracture", "a.img", "0"]);
    let s = fx.status();
    assert_eq!(
        s["health_reasons"],
        serde_json::json!(["slot 0 fractured-by-admin"]),
        "{s:#}"
    );
}

#[test]
fn metrics_of_a_secondary_and_of_a_replaced_primary_say_their_role_and_do_not_alert_forever() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    fx.write_random(0, MIB, 1);
    // A secondary: its role, healthy 1 in it; its JSON keeps `healthy` false (not a primary).
    let m = fx.ok(&["status", "b.img", "--format", "prometheus"]).stdout;
    promtool_accepts(&m);
    assert_eq!(metric(&m, "mirrorctl_healthy{"), 1.0, "{m}");
    assert!(m.contains("role=\"secondary\""), "{m}");
    let s = fx.ok(&["status", "b.img", "--json"]).json();
    assert_eq!(
        (&s["healthy"], &s["healthy_in_role"]),
        (&false.into(), &true.into()),
        "{s:#}"
    );
    // The primary of a degraded mirror still alerts.
    fx.ok(&["fracture", "a.img", "0"]);
    let m = fx.ok(&["status", "a.img", "--format", "prometheus"]).stdout;
    assert_eq!(metric(&m, "mirrorctl_healthy{"), 0.0, "{m}");
    fx.ok(&["resync", "a.img"]);
    // Unplanned failover: a.img away, b.img promoted, a.img back: replaced.
    let o = fx.while_away("a.img", || fx.run(&["promote", "b.img"]));
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    let m = fx.ok(&["status", "a.img", "--format", "prometheus"]).stdout;
    promtool_accepts(&m);
    assert!(m.contains("role=\"replaced\""), "{m}");
    assert_eq!(metric(&m, "mirrorctl_healthy{"), 1.0, "{m}");
    // Its JSON and --check keep saying the mirror, seen from it, is not healthy.
    let o = fx.run(&["status", "a.img", "--check"]);
    assert_eq!(o.code, 3, "{o:?}");
    // The new primary is the one that alerts until the old one is back.
    let m = fx.ok(&["status", "b.img", "--format", "prometheus"]).stdout;
    promtool_accepts(&m);
    assert!(m.contains("role=\"primary\""), "{m}");
    assert_eq!(metric(&m, "mirrorctl_healthy{"), 0.0, "{m}");
}

#[test]
fn every_report_of_a_compare_resync_says_what_it_compared_and_what_it_wrote() {
    let fx = Fx::with_legs("32M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 4 * MIB, 1);
    fx.flip("c.img", 1000);
    // An unplanned promotion marks c.img for a full resync; one byte of it differs.
    std::fs::rename(fx.path("a.img"), fx.path("a.away")).unwrap();
    let o = fx.run(&["promote", "b.img"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    let o = fx.run(&["resync", "b.img", "c.img", "--compare", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let r = o.json();
    let (bytes, written) = (u(&r["bytes"]), u(&r["written_bytes"]));
    assert_eq!(u(&r["compared_bytes"]), bytes, "{r:#}");
    assert_eq!(u(&r["legs"][0]["compared_bytes"]), bytes, "{r:#}");
    assert!(written < bytes, "{r:#}");
    let s = fx.ok(&["status", "b.img", "--json"]).json();
    assert_eq!(u(&s["last_resync_bytes"]), bytes, "{s:#}");
    assert_eq!(u(&s["last_resync_written_bytes"]), written, "{s:#}");
    assert_eq!(s["last_resync_compare"], true, "{s:#}");
    let text = fx.ok(&["status", "b.img"]).stdout;
    let line = text.lines().find(|l| l.starts_with("last resync")).unwrap();
    assert!(
        line.contains(", compared ") && line.contains(", wrote "),
        "{line}"
    );
}

#[test]
fn a_live_compare_resync_says_compared_and_wrote_in_its_output_serves_log_and_status() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let srv = Serving::start(&fx, &[]);
    fx.ok(&["fracture", "a.img", "0"]);
    fio(&srv.uri(), &["--rw=write", "--bs=64k", "--size=2M"]);
    let o = fx.run(&["resync", "a.img", "--compare"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.contains(": compared ") && o.stdout.contains(", wrote "),
        "{o:?}"
    );
    let t = Instant::now();
    while !srv.log().contains("resync ended") {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", srv.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = srv.log();
    let ended = log.lines().find(|l| l.contains("resync ended")).unwrap();
    assert!(
        ended.contains("compared ") && ended.contains(", wrote "),
        "{ended}"
    );
    let s = fx.status();
    assert_eq!(s["last_resync_compare"], true, "{s:#}");
    assert!(s["last_resync_written_bytes"].is_u64(), "{s:#}");
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn a_command_refused_while_serve_holds_the_mirror_names_what_serve_carries_out_not_wait() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    let srv = Serving::start(&fx, &[]);
    let o = fx.run(&["write", "a.img", "--input", "/dev/null"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(
        o.stderr
            .contains("fracture, resync, attach, detach and verify are sent to it"),
        "{o:?}"
    );
    assert!(!o.stderr.contains("pass --wait"), "{o:?}");
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn decimal_sizes_are_accepted_when_whole_bytes_and_refused_clearly_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["create", "a.img", "--size", "1.5G", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(u(&o.json()["data_size"]), 3 << 29);
    let o = run_in(dir.path(), &["create", "b.img", "--size", "0.1G"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("not a whole number of bytes"), "{o:?}");
    assert!(!dir.path().join("b.img").exists());
}

#[test]
fn a_mistyped_subcommand_gets_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["stauts", "a.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr
            .contains("tip: a similar subcommand exists: 'status'"),
        "{o:?}"
    );
    assert_eq!(o.stderr.lines().count(), 2, "{o:?}");
}

#[test]
fn a_split_brain_refusal_names_what_each_side_did_after_the_last_shared_generation() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    fx.write_random(0, MIB, 1);
    let write = |img: &str, off: u64, seed: u64| {
        random_file(&fx.path("w.bin"), 64 * KIB, seed);
        let off = off.to_string();
        let o = fx.run(&["write", img, "--offset", &off, "--input", "w.bin"]);
        assert!(matches!(o.code, 0 | 3), "{o:?}");
    };
    fx.while_away("a.img", || {
        let o = fx.run(&["promote", "b.img"]);
        assert!(matches!(o.code, 0 | 3), "{o:?}");
        write("b.img", 100 * 64 * KIB, 2);
    });
    fx.while_away("b.img", || {
        write("a.img", 200 * 64 * KIB, 3);
    });
    let o = fx.run(&["attach", "b.img", "a.img"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("split brain"), "{o:?}");
    assert!(o.stderr.contains("is the last they share"), "{o:?}");
    assert!(o.stderr.contains("a.img went through"), "{o:?}");
    assert!(o.stderr.contains("b.img went through"), "{o:?}");
}

#[test]
fn help_examples_stay_indented_at_80_100_and_200_columns() {
    let cmd = <mirrorctl::cli::Cli as clap::CommandFactory>::command();
    let mut subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    subs.push(String::new());
    for width in ["80", "100", "200"] {
        for sub in &subs {
            let mut args: Vec<&str> = vec![];
            if !sub.is_empty() {
                args.push(sub);
            }
            args.push("--help");
            let o = Command::new(bin())
                .args(&args)
                .env("COLUMNS", width)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let ex = text
                .split("EXAMPLES:\n")
                .nth(1)
                .unwrap_or_else(|| panic!("{sub} --help has no EXAMPLES:\n{text}"));
            for line in ex.lines().take_while(|l| !l.starts_with("EXIT STATUS")) {
                assert!(
                    line.is_empty() || line.starts_with("  "),
                    "{sub} --help at {width} columns: an example line at column 0: {line:?}\n{text}"
                );
            }
        }
    }
}
