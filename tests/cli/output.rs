//! Output contracts across commands (issue 16): in every JSON document a command prints, an
//! absent value is `null`, never an empty string.

use crate::support::*;
use serde_json::Value;
use std::path::Path;

/// Paths of every empty string in `v`.
fn empty_strings(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.is_empty() => out.push(path.to_string()),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                empty_strings(x, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                empty_strings(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn absent_values_are_null_in_the_json_of_every_command() {
    let fx = Fx::create("16M", "64K");
    let mut docs: Vec<(String, Value)> = Vec::new();
    let mut run = |args: &[&str]| {
        let o = fx.run(args);
        assert!(matches!(o.code, 0..=3), "{args:?}: {o:?}");
        docs.push((format!("{args:?}"), o.json()));
    };
    run(&["status", "a.img", "--json"]);
    run(&["attach", "a.img", "b.img", "--json"]);
    run(&["attach", "a.img", "c.img", "--json"]);
    random_file(&fx.path("in.bin"), 256 * KIB, 1);
    run(&["write", "a.img", "--input", "in.bin", "--json"]);
    fx.ok(&["fracture", "a.img", "c.img"]);
    run(&["write", "a.img", "--input", "in.bin", "--json"]);
    run(&["status", "a.img", "--json"]);
    run(&["status", "b.img", "--json"]);
    run(&["resync", "a.img", "--dry-run", "--json"]);
    run(&["resync", "a.img", "--json"]);
    run(&["verify", "a.img", "--json"]);
    fx.ok(&["detach", "a.img", "c.img"]);
    run(&["status", "c.img", "--json"]);
    run(&["promote", "b.img", "--json"]);
    run(&["status", "b.img", "--json"]);
    run(&["status", "a.img", "--json"]);
    run(&["create", "d.img", "--size", "8M", "--json"]);
    run(&["status", "missing.img", "--json"]);
    let mut bad = Vec::new();
    for (cmd, doc) in &docs {
        let mut found = Vec::new();
        empty_strings(doc, "", &mut found);
        if !found.is_empty() {
            bad.push(format!("{cmd}: {found:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "empty strings where null belongs:\n{}",
        bad.join("\n")
    );
    // A primary has no in-sync generation or primary of its own; a secondary has both
    // (a.img became b.img's secondary when b.img was promoted).
    let primary = fx.ok(&["status", "b.img", "--json"]).json();
    assert_eq!(primary["in_sync_generation"], Value::Null, "{primary:#}");
    assert_eq!(primary["primary_path"], Value::Null, "{primary:#}");
    let secondary = fx.status();
    assert!(secondary["in_sync_generation"].is_u64(), "{secondary:#}");
    assert!(secondary["primary_path"].is_string(), "{secondary:#}");
}

#[test]
fn write_json_counts_the_secondaries_written_under_a_clear_name_and_the_old_one() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    random_file(&fx.path("in.bin"), 256 * KIB, 1);
    let both = fx
        .ok(&["write", "a.img", "--input", "in.bin", "--json"])
        .json();
    assert_eq!(both["secondaries_written"], 2, "{both:#}");
    assert_eq!(
        both["legs_written"], both["secondaries_written"],
        "{both:#}"
    );
    fx.ok(&["fracture", "a.img", "c.img"]);
    let one = fx.run(&["write", "a.img", "--input", "in.bin", "--json"]);
    assert_eq!(one.code, 3, "{one:?}");
    let one = one.json();
    assert_eq!(one["secondaries_written"], 1, "{one:#}");
    assert_eq!(one["legs_written"], 1, "{one:#}");
}

#[test]
fn a_detached_image_does_not_list_itself_and_promote_suggests_no_resync_with_nothing_to_copy() {
    let fx = Fx::with_legs("16M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, MIB, 1);
    fx.ok(&["detach", "a.img", "c.img"]);
    let c = fx.ok(&["status", "c.img", "--json"]).json();
    assert_eq!(c["role"], "detached", "{c:#}");
    let me = c["image_uuid"].clone();
    let listed: Vec<&Value> = c["legs"].as_array().unwrap().iter().collect();
    assert!(
        listed.iter().all(|l| l["image_uuid"] != me),
        "the detached image lists itself: {c:#}"
    );
    assert_eq!(c["secondaries"], listed.len() as u64);
    // A planned promotion leaves nothing to copy: no resync is suggested.
    let p = fx.ok(&["promote", "b.img", "--json"]).json();
    let notes: Vec<&str> = p["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("nothing to copy")),
        "{notes:?}"
    );
    assert!(
        !notes.iter().any(|n| n.contains("mirrorctl resync")),
        "a resync is suggested with nothing to copy: {notes:?}"
    );
    assert_eq!(fx.run(&["status", "b.img", "--check"]).code, 0);
}

#[test]
fn argument_errors_are_one_mirrorctl_line_with_at_most_a_usage_hint() {
    let fx = Fx::create("16M", "64K");
    for args in [
        &["verify", "a.img", "--bogus"][..],
        &["bogus"],
        &["attach"],
        &["--wait=5x", "status", "a.img"],
        &["create", "x.img", "--size", "5q"],
        &["write", "a.img", "--flush", "sometimes"],
    ] {
        let o = fx.run(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert!(
            lines.len() <= 2 && lines[0].starts_with("mirrorctl: "),
            "{args:?}: {o:?}"
        );
        if let Some(h) = lines.get(1) {
            // The usage, or clap's suggestion of a similar name.
            assert!(
                h.trim_start().starts_with("usage: mirrorctl")
                    || h.trim_start().starts_with("tip: a similar "),
                "{args:?}: {o:?}"
            );
        }
        assert!(!o.stderr.contains("error:"), "{args:?}: {o:?}");
    }
    let o = fx.run(&["attach", "--json"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert_eq!(o.json()["exit_code"], 2, "{o:?}");
    // Help still goes to stdout, exit 0.
    let o = fx.run(&["write", "--help"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("Usage: mirrorctl write"), "{o:?}");
}

#[test]
fn sizes_follow_the_coreutils_convention_k_and_kib_binary_kb_decimal() {
    let fx = Fx::create("64M", "64K");
    let make = |name: &str, size: &str| -> Value {
        fx.ok(&["create", name, "--size", size, "--json"]).json()
    };
    assert_eq!(make("mb.img", "256MB")["data_size"], 256_000_000);
    assert_eq!(make("m.img", "256M")["data_size"], 256 << 20);
    assert_eq!(make("mib.img", "256MiB")["data_size"], 256 << 20);
    assert_eq!(make("kb.img", "4096kB")["data_size"], 4_096_000);
    // A decimal region size is no power of two: refused, saying what is allowed.
    let o = fx.run(&["create", "r.img", "--size", "64M", "--region-size", "64KB"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("power of two"), "{o:?}");
    assert!(!fx.path("r.img").exists());
    let o = fx.run(&["create", "x.img", "--size", "64XB"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("powers of 1000"), "{o:?}");
    // Rates too.
    fx.ok(&["attach", "a.img", "b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    random_file(&fx.path("in.bin"), MIB_, 1);
    assert_eq!(fx.run(&["write", "a.img", "-i", "in.bin"]).code, 3);
    let o = fx.run(&["resync", "a.img", "--rate", "50MB/s", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
}

const MIB_: u64 = 1 << 20;

#[test]
fn short_options_do_what_their_long_names_do() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    random_file(&fx.path("in.bin"), MIB_, 3);
    fx.ok(&["write", "a.img", "-i", "in.bin"]);
    fx.ok(&["read", "a.img", "--length", "1M", "-o", "out.bin"]);
    assert_eq!(
        std::fs::read(fx.path("out.bin")).unwrap(),
        std::fs::read(fx.path("in.bin")).unwrap()
    );
    fx.ok(&["fracture", "a.img", "b.img"]);
    let o = fx.run(&["write", "a.img", "--offset", "2M", "-i", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let dry = fx.ok(&["resync", "a.img", "-n", "-j"]).json();
    assert_eq!(dry["dry_run"], true, "{dry:#}");
    assert_eq!(dry["bytes"], MIB_);
    let s = fx.ok(&["status", "a.img", "-j"]).json();
    assert_eq!(s["legs"][0]["state"], "fractured-by-admin");
    random_file(&fx.path("junk.img"), 70 * MIB_, 5);
    fx.ok(&["create", "junk.img", "-f"]);
    // Each is listed in --help with its long name.
    let h = fx.ok(&["resync", "--help"]).stdout;
    assert!(
        h.contains("-n, --dry-run") && h.contains("-j, --json"),
        "{h}"
    );
}

#[test]
fn status_and_create_say_the_size_every_image_of_the_mirror_needs() {
    let fx = Fx::create("64M", "64K");
    let s = fx.status();
    let need = u(&s["data_offset"]) + u(&s["data_size"]);
    assert_eq!(u(&s["image_size"]), need);
    let text = fx.ok(&["status", "a.img"]).stdout;
    assert!(
        text.contains(&format!("image size    65.0 MiB ({need} bytes)")),
        "{text}"
    );
    let h = fx.ok(&["attach", "--help"]).stdout;
    assert!(h.contains("image size"), "{h}");
    // --size on a larger file: said which part the mirror uses.
    std::fs::File::create(fx.path("big.img"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let o = fx.ok(&["create", "big.img", "--size", "64M", "--json"]);
    assert_eq!(o.json()["image_size"], need);
    assert!(
        o.stderr
            .contains(&format!("big.img has 1.0 GiB (1073741824 bytes); the mirror uses the first 65.0 MiB ({need} bytes")),
        "{o:?}"
    );
}

#[test]
fn status_lists_the_legs_in_columns_under_a_header_with_the_error_said_once_and_no_os_error_numbers(
) {
    let fx = Fx::create("64M", "64K");
    let small = Tmpfs::mount("20M");
    let d = small.join("d.img");
    let d_s = d.to_str().unwrap().to_string();
    fx.ok(&["attach", "a.img", "b.img"]);
    fx.ok(&["attach", "a.img", &d_s]);
    fx.ok(&["attach", "a.img", "c.img"]);
    fx.ok(&["fracture", "a.img", "c.img", "--reason", "backup window"]);
    random_file(&fx.path("in.bin"), 40 * MIB_, 8);
    let o = fx.run(&["write", "a.img", "-i", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(!o.stderr.contains("os error"), "{o:?}");
    let text = fx.run(&["status", "a.img"]).stdout;
    let lines: Vec<&str> = text.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.trim_start().starts_with("SLOT"))
        .unwrap_or_else(|| panic!("no header:\n{text}"));
    let cols = ["SLOT", "STATE", "OUT OF SYNC", "GENERATION", "PATH"];
    let at: Vec<usize> = cols.iter().map(|c| lines[head].find(c).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    // One line per leg, each value starting under its column.
    let row = |slot: &str| -> &str {
        lines[head + 1..]
            .iter()
            .find(|l| l[at[0]..].starts_with(slot))
            .unwrap_or_else(|| panic!("no slot {slot}:\n{text}"))
    };
    let b = row("0 ");
    assert_eq!(&b[at[1]..at[1] + 7], "in-sync", "{text}");
    assert_eq!(&b[at[2]..at[2] + 4], "none", "{text}");
    assert!(
        b[at[3]..].contains("(current)") && b.ends_with("b.img"),
        "{text}"
    );
    let e = row("1 ");
    assert!(e[at[1]..].starts_with("fractured-by-error"), "{text}");
    assert!(e.ends_with(&d_s), "{text}");
    let c = row("2 ");
    assert!(c[at[1]..].starts_with("fractured-by-admin"), "{text}");
    assert!(c[at[3]..].contains("(the primary is at "), "{text}");
    // The error once, on its own indented line, with no "(os error N)".
    assert_eq!(text.matches("No space left on device").count(), 1, "{text}");
    assert!(!text.contains("os error"), "{text}");
    let why = lines.iter().find(|l| l.contains("No space left")).unwrap();
    assert!(
        why.starts_with(&" ".repeat(at[1])) && why.trim_start().starts_with("fractured "),
        "{text}"
    );
    assert!(
        text.contains("fractured ") && text.contains(": backup window"),
        "{text}"
    );
    // The JSON keeps the texts too, without the number.
    let s = fx.status();
    let l = leg(&s, 1);
    assert!(
        l["last_error"]
            .as_str()
            .unwrap()
            .ends_with("No space left on device"),
        "{l:#}"
    );
}

#[test]
fn verify_says_how_much_data_it_went_over_and_what_was_holes_and_a_run_comparing_nothing_is_no_pass(
) {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    fx.write_random(0, 8 * MIB_, 2);
    let o = fx.ok(&["verify", "a.img"]);
    let first = o.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("verified regions 0..1024 of 1024 (pass complete): 64.0 MiB of data, 128.0 MiB compared on 2 legs (112.0 MiB of it never written, not read)"),
        "{first}"
    );
    let (_, v) = fx.verify(&[]);
    assert_eq!(u(&v["data_bytes"]), 64 * MIB_);
    assert_eq!(u(&v["bytes_compared"]), 128 * MIB_);
    // The 56 MiB of each leg no write reached are skipped by the written map (W7).
    assert_eq!(u(&v["unwritten_bytes"]), 112 * MIB_);
    assert_eq!(u(&v["hole_bytes"]), 0);
    let full = fx.status()["last_full_verify_at"].clone();
    // Every leg fractured: nothing compared, no pass, the last full pass unchanged.
    fx.ok(&["fracture", "a.img", "0"]);
    fx.ok(&["fracture", "a.img", "1"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = fx.run(&["verify", "a.img"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(!o.stdout.contains("pass complete"), "{o:?}");
    assert!(o.stdout.contains("nothing compared"), "{o:?}");
    let s = fx.status();
    assert_eq!(s["last_verify_result"], "incomplete", "{s:#}");
    assert_eq!(s["last_full_verify_at"], full, "{s:#}");
}

#[test]
fn write_on_a_terminal_shows_a_bar_in_one_unit_and_a_summary_and_nothing_when_piped() {
    require("script", "bsdutils");
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    random_file(&fx.path("in.bin"), 16 * MIB_, 4);
    // On a terminal (script(1) gives the command one).
    let cmd = format!("{} write a.img -i in.bin", bin());
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(fx.dir.path())
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout).replace('\r', "\n");
    assert!(o.status.success(), "{tty}");
    assert!(tty.contains("16.00 MiB/16.00 MiB"), "{tty}");
    assert!(
        !tty.contains(" MB/") && !tty.contains(" MB "),
        "one unit per bar: {tty}"
    );
    assert!(
        tty.contains("wrote 16.0 MiB at offset 0 to the primary and 2 secondaries in "),
        "{tty}"
    );
    // Piped: nothing but what the command always says (here nothing).
    let o = fx.run(&["write", "a.img", "-i", "in.bin"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stderr, "", "{o:?}");
    assert_eq!(o.stdout, "", "{o:?}");
}

#[test]
fn an_interrupted_resync_says_so_and_how_to_go_on_and_the_next_one_continues() {
    let fx = Fx::with_legs("64M", "64K", &["b.img"]);
    fx.ok(&["fracture", "a.img", "b.img"]);
    random_file(&fx.path("in.bin"), 32 * MIB_, 6);
    assert_eq!(fx.run(&["write", "a.img", "-i", "in.bin"]).code, 3);
    let child = std::process::Command::new(bin())
        .args(["resync", "a.img", "--rate", "8M"])
        .current_dir(fx.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(libc::SIGINT), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("mirrorctl: resync interrupted; what it copied up to its last checkpoint stays copied; `mirrorctl resync a.img` continues from the logs"),
        "{err}"
    );
    let left = u(&leg(&fx.status(), 0)["out_of_sync_bytes"]);
    assert!(left > 0 && left < 32 * MIB_, "{left}");
    let r = fx.ok(&["resync", "a.img", "--json"]).json();
    assert_eq!(u(&r["bytes"]), left, "{r:#}");
    assert_eq!(fx.status()["healthy"], true);
}

#[test]
fn a_leg_whose_image_moved_is_named_by_its_uuid_and_attach_at_the_new_path_keeps_its_log() {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    let uuid = leg(&fx.status(), 0)["image_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    // The image moves (a renumbered loop device, a renamed disk).
    std::fs::rename(fx.path("b.img"), fx.path("moved.img")).unwrap();
    random_file(&fx.path("in.bin"), 2 * MIB_, 9);
    let o = fx.run(&["write", "a.img", "-i", "in.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stderr.contains(&format!(
            "`mirrorctl attach a.img NEWPATH` re-attaches image {uuid} in slot 0, keeping its log"
        )),
        "{o:?}"
    );
    let j = fx.ok(&["attach", "a.img", "moved.img", "--json"]).json();
    assert_eq!(j["slot"], 0, "{j:#}");
    assert_eq!(j["reattached"], true, "{j:#}");
    // Only what it missed is copied, not the whole data area.
    assert!(u(&j["copied_bytes"]) <= 4 * MIB_, "{j:#}");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
}

/// A link under /dev/disk/by-id to a device, as udev makes them (this container has no
/// udev); removed on drop with the directories it had to make.
struct ByIdLink {
    link: std::path::PathBuf,
    made: Vec<std::path::PathBuf>,
}

impl ByIdLink {
    fn new(name: &str, target: &str) -> ByIdLink {
        let dir = Path::new("/dev/disk/by-id");
        let mut made = Vec::new();
        for d in [Path::new("/dev/disk"), dir] {
            if !d.exists() {
                std::fs::create_dir(d).unwrap();
                made.push(d.to_path_buf());
            }
        }
        let link = dir.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        ByIdLink { link, made }
    }

    /// Points the link at another device (what udev does when the disk comes back under
    /// another kernel name).
    fn retarget(&self, target: &str) {
        std::fs::remove_file(&self.link).unwrap();
        std::os::unix::fs::symlink(target, &self.link).unwrap();
    }

    fn as_str(&self) -> &str {
        self.link.to_str().unwrap()
    }
}

impl Drop for ByIdLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        for d in self.made.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn a_block_device_is_recorded_by_its_dev_disk_by_id_name_and_found_after_renumbering() {
    let fx = Fx::create("16M", "64K");
    let total = u(&fx.status()["image_size"]);
    let mut b = LoopDev::with_size(&fx.path("b.bin"), total);
    let id = ByIdLink::new("mirrorctl-test-disk", b.as_str());
    let j = fx.ok(&["attach", "a.img", b.as_str(), "--json"]).json();
    assert_eq!(j["path"], b.as_str(), "{j:#}");
    assert_eq!(j["recorded_as"], id.as_str(), "{j:#}");
    assert_eq!(leg(&fx.status(), 0)["path"], id.as_str());
    // The text output says under which name it was recorded.
    fx.ok(&["detach", "a.img", "0"]);
    let t = fx.ok(&["attach", "a.img", b.as_str(), "--assume-clean"]);
    assert!(
        t.stdout
            .contains(&format!("as slot 0 (recorded as {})", id.as_str())),
        "{t:?}"
    );
    // The disk comes back under another kernel name: the leg is still found by its by-id
    // name, and writes reach it.
    b.detach();
    let _taken = LoopDev::with_size(&fx.path("spare.bin"), MIB_);
    let b2 = LoopDev::attach(&fx.path("b.bin"));
    assert_ne!(
        b2.as_str(),
        b.as_str(),
        "the loop device was not renumbered"
    );
    id.retarget(b2.as_str());
    fx.write_random(0, MIB_, 3);
    let s = fx.status();
    assert_eq!(leg(&s, 0)["state"], "in-sync", "{s:#}");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    // Given by its by-id name, a device keeps that name.
    fx.ok(&["detach", "a.img", "0"]);
    let j = fx
        .ok(&["attach", "a.img", id.as_str(), "--assume-clean", "--json"])
        .json();
    assert_eq!(j["recorded_as"], id.as_str(), "{j:#}");
    // So does a device given by another link the admin chose (/dev/mapper, /dev/VG/LV).
    fx.ok(&["detach", "a.img", "0"]);
    let mine = fx.path("my-disk");
    std::os::unix::fs::symlink(b2.as_str(), &mine).unwrap();
    let mine = mine.to_str().unwrap();
    let j = fx
        .ok(&["attach", "a.img", mine, "--assume-clean", "--json"])
        .json();
    assert_eq!(j["recorded_as"], mine, "{j:#}");
}
