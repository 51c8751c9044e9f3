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
