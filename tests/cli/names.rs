//! Mirrors by name (issue 26), with MIRRORCTL_CONFIG_DIR at a temporary directory:
//! `create --name`, every command by name, `mirrorctl name`, `status --all` as text, JSON and
//! Prometheus metrics (checked by promtool), the name following planned and unplanned
//! promotions, the refusals (ambiguous, stale, a replaced primary, bad files), serve by name
//! with its options from the file (reached with nbdinfo), and the names in bash completion.

use crate::completion::Shells;
use crate::support::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A folder for images and a configuration directory (`etc`, not made yet).
struct Names {
    dir: tempfile::TempDir,
}

impl Names {
    fn new() -> Names {
        Names {
            dir: tempfile::Builder::new()
                .prefix("mirrorctl-names-")
                .tempdir()
                .unwrap(),
        }
    }
    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn p(&self, n: &str) -> String {
        self.path(n).display().to_string()
    }
    fn run_at(&self, cwd: &Path, args: &[&str]) -> Out {
        self.run_with(cwd, &self.etc(), args)
    }
    fn run_with(&self, cwd: &Path, etc: &Path, args: &[&str]) -> Out {
        let o = Command::new(bin())
            .args(args)
            .current_dir(cwd)
            .env("MIRRORCTL_CONFIG_DIR", etc)
            .output()
            .expect("running mirrorctl");
        Out {
            code: o.status.code().expect("mirrorctl was killed by a signal"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    fn run(&self, args: &[&str]) -> Out {
        self.run_at(self.dir.path(), args)
    }
    fn ok(&self, args: &[&str]) -> Out {
        let o = self.run(args);
        assert_eq!(o.code, 0, "mirrorctl {args:?}: {o:?}");
        o
    }
    /// Exit 2, nothing on stdout but what --json asks for, and stderr saying all of `says`.
    fn refused(&self, args: &[&str], says: &[&str]) -> Out {
        let o = self.run(args);
        assert_eq!(o.code, 2, "mirrorctl {args:?} should be refused: {o:?}");
        for s in says {
            assert!(o.stderr.contains(s), "{args:?}: stderr lacks {s:?}: {o:?}");
        }
        o
    }
    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.etc().join(format!("{name}.toml"))).unwrap()
    }
    fn primary_in_file(&self, name: &str) -> String {
        let f = self.file(name);
        let l = f
            .lines()
            .find(|l| l.starts_with("primary = "))
            .unwrap_or_else(|| panic!("no primary in {f}"));
        l["primary = ".len()..].trim_matches('"').to_string()
    }
    fn status(&self, name: &str) -> Value {
        self.ok(&["status", name, "--json"]).json()
    }
}

#[test]
fn create_with_a_name_writes_its_file_and_every_command_takes_the_name_from_any_directory() {
    let n = Names::new();
    let o = n.ok(&["create", "a.img", "--size", "16M", "--name", "vm", "--json"]);
    let c = o.json();
    assert_eq!(c["name"], "vm");
    let uuid = c["mirror_uuid"].as_str().unwrap().to_string();
    // The file: mode 0644 in a directory made 0755, the three keys.
    let meta = std::fs::metadata(n.etc().join("vm.toml")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let dmeta = std::fs::metadata(n.etc()).unwrap();
    assert_eq!(dmeta.permissions().mode() & 0o777, 0o755);
    let f = n.file("vm");
    assert!(f.contains("name = \"vm\""), "{f}");
    assert!(f.contains(&format!("mirror = \"{uuid}\"")), "{f}");
    assert_eq!(n.primary_in_file("vm"), n.p("a.img"));
    // Every command by name, from another directory (the name is not a path there).
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let o = n.run_at(elsewhere.path(), args);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
        o
    };
    let b = n.p("b.img");
    run(&["attach", "vm", &b]);
    random_file(&n.path("in.bin"), 256 * KIB, 7);
    let input = n.p("in.bin");
    run(&["write", "vm", "--offset", "64K", "--input", &input]);
    let out = n.p("out.bin");
    run(&[
        "read", "vm", "--offset", "64K", "--length", "256K", "-o", &out,
    ]);
    assert_eq!(std::fs::read(&input).unwrap(), std::fs::read(&out).unwrap());
    let s: Value = run(&["status", "vm", "--json"]).json();
    assert_eq!(s["mirror_uuid"], uuid.as_str());
    assert_eq!(s["path"], n.p("a.img"));
    assert_eq!(s["healthy"], true, "{s:#}");
    run(&["fracture", "vm", &b, "--reason", "backup"]);
    let s: Value = run(&["status", "vm", "--json"]).json();
    assert_eq!(leg(&s, 0)["state"], "fractured-by-admin", "{s:#}");
    // Exit 3: written, with b.img fractured.
    let o = n.run_at(
        elsewhere.path(),
        &["write", "vm", "--offset", "1M", "--input", &input],
    );
    assert_eq!(o.code, 3, "{o:?}");
    let r: Value = run(&["resync", "vm", "--json"]).json();
    assert_eq!(r["legs"][0]["state"], "in-sync", "{r:#}");
    let v: Value = run(&["verify", "vm", "--json"]).json();
    assert_eq!(v["result"], "clean", "{v:#}");
    let e = run(&["events", "vm", "--json"]);
    assert!(e.stdout.contains("\"fracture"), "{e:?}");
    run(&["detach", "vm", "0"]);
    let s: Value = run(&["status", "vm", "--json"]).json();
    assert_eq!(s["secondaries"], 0, "{s:#}");
    // The list.
    let l = n.ok(&["name", "--json"]).json();
    assert_eq!(l[0]["name"], "vm");
    assert_eq!(l[0]["mirror"], uuid.as_str());
    assert_eq!(l[0]["primary"], n.p("a.img"));
    assert!(n.ok(&["name"]).stdout.contains("vm "), "the text list");
}

#[test]
fn names_are_given_checked_and_forgotten_without_ever_taking_another_mirrors_name() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    // A taken name: refused, and nothing is created.
    n.refused(
        &["create", "c.img", "--size", "16M", "--name", "vm"],
        &["--name vm", "taken", "vm.toml"],
    );
    assert!(!n.path("c.img").exists());
    // Not a name.
    n.refused(
        &["create", "c.img", "--size", "16M", "--name", "bad/name"],
        &["not a valid mirror name"],
    );
    assert!(!n.path("c.img").exists());
    n.ok(&["create", "c.img", "--size", "16M"]);
    n.ok(&["attach", "c.img", "d.img"]);
    // A secondary is not a primary: refused, naming its primary.
    n.refused(&["name", "d.img", "db"], &["secondary", "c.img"]);
    // Another mirror's name: refused, naming it, unless --force.
    n.refused(&["name", "c.img", "vm"], &["taken by mirror", "a.img"]);
    n.ok(&["name", "c.img", "db"]);
    // A mirror has one name.
    n.refused(&["name", "c.img", "db2"], &["already named db"]);
    // Forgotten: the file goes, the mirror stays.
    let o = n.ok(&["name", "--remove", "db"]);
    assert!(o.stdout.contains("forgot"), "{o:?}");
    assert!(!n.etc().join("db.toml").exists());
    n.ok(&["status", "c.img"]);
    n.refused(&["name", "--remove", "db"], &["no mirror is named db"]);
    // --force takes the name over.
    n.ok(&["name", "c.img", "vm", "--force"]);
    assert_eq!(n.primary_in_file("vm"), n.p("c.img"));
    // create --force re-creates the mirror a name points at, under that name.
    n.ok(&[
        "create", "c.img", "--size", "16M", "--name", "vm", "--force",
    ]);
    assert_eq!(n.status("vm")["secondaries"], 0);
}

#[test]
fn a_name_that_is_also_a_file_here_is_refused_as_ambiguous_and_dot_slash_means_the_file() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    std::fs::write(n.path("vm"), b"not an image").unwrap();
    n.refused(&["status", "vm"], &["ambiguous", "./vm"]);
    n.refused(&["write", "vm", "--input", "/dev/null"], &["ambiguous"]);
    // ./vm is the file (which holds no mirror).
    let o = n.run(&["status", "./vm"]);
    assert_ne!(o.code, 0);
    assert!(!o.stderr.contains("ambiguous"), "{o:?}");
    // From elsewhere the name is just the name.
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(n.run_at(elsewhere.path(), &["status", "vm"]).code, 0);
}

#[test]
fn a_stale_name_and_bad_files_are_refused_naming_the_file_and_what_is_wrong() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    let old = n.status("vm")["mirror_uuid"].as_str().unwrap().to_string();
    // The image re-created behind the name's back: another mirror there now.
    n.ok(&["create", "a.img", "--size", "16M", "--force"]);
    let before = std::fs::read(n.path("a.img")).unwrap();
    n.refused(
        &["write", "vm", "--input", "/dev/null"],
        &["vm.toml", "stale", &old],
    );
    assert_eq!(std::fs::read(n.path("a.img")).unwrap(), before);
    n.refused(&["status", "vm"], &["stale"]);
    // Repointed by `name`, which keeps the file's other lines.
    let f = n
        .file("vm")
        .replace("# [serve]\n", "# kept comment\n[serve]\nexport = \"vm\"\n");
    std::fs::write(n.etc().join("vm.toml"), &f).unwrap();
    n.ok(&["name", "a.img", "vm", "--force"]);
    let f = n.file("vm");
    assert!(
        f.contains("# kept comment") && f.contains("export = \"vm\""),
        "{f}"
    );
    n.ok(&["status", "vm"]);
    // An unknown key, bad TOML: refused, naming the file and the key.
    let file = n.etc().join("vm.toml");
    let good = n.file("vm");
    std::fs::write(&file, good.replace("export = ", "exprot = ")).unwrap();
    n.refused(&["status", "vm"], &[&file.display().to_string(), "exprot"]);
    std::fs::write(&file, good.replace("[serve]", "[serve")).unwrap();
    n.refused(&["status", "vm"], &[&file.display().to_string()]);
    let o = n.run(&["status", "--all", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    assert_eq!(v[0]["name"], "vm");
    assert_eq!(v[0]["healthy"], false);
    assert!(v[0]["error"].as_str().unwrap().contains("vm.toml"), "{v:#}");
    std::fs::write(&file, &good).unwrap();
    n.ok(&["status", "vm"]);
}

/// db: one leg fractured (degraded); vm: healthy with a leg; gone: its primary deleted.
fn three_names(n: &Names) {
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    n.ok(&["attach", "vm", "b.img"]);
    n.ok(&["create", "c.img", "--size", "16M", "--name", "db"]);
    n.ok(&["attach", "db", "d.img"]);
    n.ok(&["fracture", "db", "d.img"]);
    n.ok(&["create", "e.img", "--size", "16M", "--name", "gone"]);
    std::fs::remove_file(n.path("e.img")).unwrap();
}

#[test]
fn status_all_shows_every_named_mirror_as_text_json_and_metrics_promtool_accepts() {
    let n = Names::new();
    three_names(&n);
    // Text: a block per name, the unreadable one with its error.
    let o = n.ok(&["status", "--all"]);
    for name in ["vm", "db", "gone"] {
        assert!(
            o.stdout.contains(&format!("name          {name} (")),
            "{name}: {o:?}"
        );
    }
    assert!(o.stdout.contains(&n.p("e.img")), "{o:?}");
    assert!(o.stdout.contains("error "), "{o:?}");
    // JSON: an array, each the status document plus its name.
    let v = n.ok(&["status", "--all", "--json"]).json();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 3, "{v:#}");
    let by = |name: &str| a.iter().find(|e| e["name"] == name).unwrap().clone();
    assert_eq!(by("vm")["healthy"], true);
    assert_eq!(by("vm")["path"], n.p("a.img"));
    assert_eq!(by("db")["healthy"], false);
    assert_eq!(by("db")["legs"][0]["state"], "fractured-by-admin");
    assert_eq!(by("gone")["healthy"], false);
    assert!(by("gone")["error"].is_string(), "{v:#}");
    // Metrics: one HELP and TYPE per family, a name label on every sample.
    let m = n.ok(&["status", "--all", "--format", "prometheus"]).stdout;
    require("promtool", "prometheus");
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{m}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(m.matches("# HELP mirrorctl_healthy ").count(), 1, "{m}");
    assert!(m.contains("mirrorctl_healthy{name=\"vm\","), "{m}");
    assert!(m.contains("mirrorctl_healthy{name=\"db\","), "{m}");
    assert!(
        m.contains("mirrorctl_name_readable{name=\"gone\"} 0"),
        "{m}"
    );
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        assert!(l.contains("{name=\""), "a sample without its name: {l}");
    }
}

#[test]
fn status_all_check_exits_3_when_any_named_mirror_is_unhealthy_or_cannot_be_read() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    n.ok(&["attach", "vm", "b.img"]);
    n.ok(&["status", "--all", "--check"]);
    n.ok(&["create", "c.img", "--size", "16M", "--name", "db"]);
    n.ok(&["attach", "db", "d.img"]);
    n.ok(&["status", "--all", "--check"]);
    n.ok(&["fracture", "db", "d.img"]);
    assert_eq!(n.run(&["status", "--all", "--check"]).code, 3);
    n.ok(&["resync", "db"]);
    n.ok(&["status", "--all", "--check"]);
    std::fs::rename(n.path("c.img"), n.path("c.away")).unwrap();
    let o = n.run(&["status", "--all", "--check"]);
    assert_eq!(o.code, 3, "an unreadable primary is unhealthy: {o:?}");
    assert!(o.stdout.contains("name          db ("), "reported: {o:?}");
}

#[test]
fn after_a_planned_promotion_the_name_points_at_the_new_primary() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    n.ok(&["attach", "vm", "b.img"]);
    // A name is the primary: promote wants the secondary, and says so.
    n.refused(
        &["promote", "vm"],
        &["promote takes the secondary", "status vm"],
    );
    let o = n.ok(&["promote", "b.img", "--json"]);
    let p = o.json();
    assert_eq!(p["old_primary_reachable"], true, "{p:#}");
    assert_eq!(p["names"][0], "vm", "{p:#}");
    assert!(o.stderr.contains("the name vm now points at"), "{o:?}");
    assert_eq!(n.primary_in_file("vm"), n.p("b.img"));
    let s = n.status("vm");
    assert_eq!(s["path"], n.p("b.img"));
    assert_eq!(s["role"], "primary");
    n.ok(&["write", "vm", "--input", "/dev/null"]);
}

#[test]
fn after_an_unplanned_promotion_the_name_points_at_the_new_primary() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    n.ok(&["attach", "vm", "b.img"]);
    std::fs::rename(n.path("a.img"), n.path("a.away")).unwrap();
    let o = n.run(&["promote", "b.img", "--json"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    assert_eq!(o.json()["old_primary_reachable"], false);
    assert_eq!(n.primary_in_file("vm"), n.p("b.img"));
    assert_eq!(n.status("vm")["path"], n.p("b.img"));
}

#[test]
fn a_name_whose_primary_was_replaced_elsewhere_is_refused_naming_the_new_primary() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    n.ok(&["attach", "vm", "b.img", "--json"]);
    n.ok(&["attach", "vm", "c.img"]);
    // Promoted with another configuration directory (another machine's): this name stays.
    std::fs::rename(n.path("a.img"), n.path("a.away")).unwrap();
    let other = n.path("other-etc");
    let o = n.run_with(n.dir.path(), &other, &["promote", "b.img"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    std::fs::rename(n.path("a.away"), n.path("a.img")).unwrap();
    let before = std::fs::read(n.path("a.img")).unwrap();
    for args in [
        &["write", "vm", "--input", "/dev/null"][..],
        &["status", "vm"],
        &["resync", "vm"],
    ] {
        n.refused(
            args,
            &["replaced by a promotion", "b.img", "mirrorctl name", "vm"],
        );
    }
    assert_eq!(std::fs::read(n.path("a.img")).unwrap(), before);
    // Naming the replaced primary again is refused the same way.
    n.refused(
        &["name", "a.img", "vm"],
        &["replaced by a promotion", "b.img"],
    );
    // The fix it says: the name pointed at the new primary.
    n.ok(&["name", "b.img", "vm"]);
    assert_eq!(n.status("vm")["path"], n.p("b.img"));
    // A planned promotion elsewhere makes the old primary a secondary: refused too.
    let o = n.run(&["resync", "vm", "c.img"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    let o = n.run_with(n.dir.path(), &other, &["promote", "c.img"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    n.refused(&["status", "vm"], &["no longer the primary", "c.img"]);
}

#[test]
fn verify_by_name_takes_repair_from_the_file() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    n.ok(&["attach", "vm", "b.img"]);
    random_file(&n.path("in.bin"), 64 * KIB, 3);
    n.ok(&["write", "vm", "--input", "in.bin"]);
    let f = n.file("vm") + "[verify]\nrepair = true\n";
    std::fs::write(n.etc().join("vm.toml"), f).unwrap();
    // A byte of b.img changed behind mirrorctl's back.
    let data_offset = u(&n.status("vm")["data_offset"]);
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(n.path("b.img"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&img, b"X", data_offset + 100).unwrap();
    drop(img);
    let o = n.run(&["verify", "vm", "--json"]);
    let v = o.json();
    assert_eq!(v["result"], "repaired", "{o:?}");
    assert_eq!(n.status("vm")["healthy"], true);
    // While serve holds the mirror, the serving process verifies with the file's repair too.
    let sock = n.path("vm.sock");
    let mut child = start_serve(
        &n,
        &["serve", "vm", "--socket", sock.to_str().unwrap()],
        &sock,
    );
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(n.path("b.img"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&img, b"Y", data_offset + 200).unwrap();
    drop(img);
    let o = n.run(&["verify", "vm", "--json"]);
    stop_serve(&mut child);
    assert_eq!(o.json()["result"], "repaired", "{o:?}");
    assert_eq!(n.status("vm")["healthy"], true);
}

/// `mirrorctl ARGS` (a serve) with the names' directory, once it listens on `sock`.
fn start_serve(n: &Names, args: &[&str], sock: &Path) -> std::process::Child {
    let log = n.path("serve.log");
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(n.dir.path())
        .env("MIRRORCTL_CONFIG_DIR", n.etc())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let read_log = text_of(&log);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        still_starting("serve", &mut child, t, Duration::from_secs(10), &read_log);
    }
    child
}

/// SIGTERM, and the clean stop's exit 0.
fn stop_serve(child: &mut std::process::Child) {
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let st = child.wait().unwrap();
    assert!(st.success(), "serve ended with {st}");
}

#[test]
fn serve_by_name_listens_where_the_file_says_and_flags_override_the_file() {
    require("nbdinfo", "libnbd-bin");
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm"]);
    let sock = n.path("vm.sock");
    let f = n.file("vm")
        + &format!(
            "[serve]\nsocket = \"{}\"\nexport = \"vm\"\nhot_extents = 64\n",
            sock.display()
        );
    std::fs::write(n.etc().join("vm.toml"), &f).unwrap();
    // A bad value in the file: refused before serving, naming the file and key.
    std::fs::write(
        n.etc().join("vm.toml"),
        f.replace("hot_extents = 64", "hot_extents = 3"),
    )
    .unwrap();
    n.refused(&["serve", "vm"], &["vm.toml", "hot_extents"]);
    assert!(!sock.exists());
    std::fs::write(n.etc().join("vm.toml"), &f).unwrap();
    // The socket from the file, the export name from the command line.
    let mut child = start_serve(&n, &["serve", "vm", "--export", "other"], &sock);
    let info = Command::new("nbdinfo")
        .args([
            "--json",
            &format!("nbd+unix:///other?socket={}", sock.display()),
        ])
        .output()
        .unwrap();
    stop_serve(&mut child);
    assert!(
        info.status.success(),
        "nbdinfo: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let v: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["exports"][0]["export-name"], "other", "{v:#}");
    assert_eq!(u(&v["exports"][0]["export-size"]), 16 * MIB, "{v:#}");
    // Without --export, the file's.
    let mut child = start_serve(&n, &["serve", "vm"], &sock);
    let info = Command::new("nbdinfo")
        .args([
            "--json",
            &format!("nbd+unix:///vm?socket={}", sock.display()),
        ])
        .output()
        .unwrap();
    stop_serve(&mut child);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let v: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["exports"][0]["export-name"], "vm", "{v:#}");
}

#[test]
fn bash_zsh_and_fish_completion_offer_the_names_where_a_primary_goes() {
    let n = Names::new();
    n.ok(&["create", "a.img", "--size", "16M", "--name", "vm1"]);
    n.ok(&["create", "c.img", "--size", "16M", "--name", "vm2"]);
    let sh = Shells::in_dir(n.dir.path()).with_env("MIRRORCTL_CONFIG_DIR", &n.etc());
    let got = sh.bash(&["mirrorctl", "status", ""]);
    for w in ["vm1", "vm2", "a.img"] {
        assert!(got.iter().any(|g| g == w), "{w} not offered: {got:?}");
    }
    let got = sh.bash(&["mirrorctl", "serve", "vm"]);
    assert!(got.iter().any(|g| g == "vm1"), "{got:?}");
    // Not for a secondary.
    let got = sh.bash(&["mirrorctl", "attach", "vm1", "v"]);
    assert!(!got.iter().any(|g| g == "vm2"), "{got:?}");
    // fish and zsh (through a zpty, as at a prompt).
    let got = sh.fish("mirrorctl verify ");
    for w in ["vm1", "vm2", "a.img"] {
        assert!(got.iter().any(|g| g == w), "fish: {w} not offered: {got:?}");
    }
    let got = sh.zsh("mirrorctl status ");
    for w in ["vm1", "vm2", "a.img"] {
        assert!(got.iter().any(|g| g == w), "zsh: {w} not offered: {got:?}");
    }
    // The legs of the mirror a name stands for.
    n.ok(&["attach", "vm1", "b.img"]);
    let got = sh.bash(&["mirrorctl", "fracture", "vm1", ""]);
    for w in ["0", "b.img"] {
        assert!(got.iter().any(|g| g == w), "{w} not offered: {got:?}");
    }
}
