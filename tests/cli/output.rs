//! Output contracts across commands (issue 16): in every JSON document a command prints, an
//! absent value is `null`, never an empty string.

use crate::support::*;
use serde_json::Value;

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
            assert!(
                h.trim_start().starts_with("usage: mirrorctl"),
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
