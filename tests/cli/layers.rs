//! The house's layers: the top-level modules under `src/` (cli, engine, nbd_server, device,
//! meta, format, ...) use one another without a cycle, so each can be read knowing only the
//! ones below it. Made from the `crate::NAME` paths in each file outside its unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module -> the other top-level modules its code names.
fn uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    crate::rule_index::rust_files(src, &mut files);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).expect("under src");
        let top = rel.iter().next().expect("a file name").to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let deps = out.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    out
}

/// A cycle through `from`, as the modules on it, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            let mut c = path[i..].to_vec();
            c.push(at.to_string());
            return Some(c);
        }
        if !done.insert(at.to_string()) {
            return None;
        }
        path.push(at.to_string());
        for next in g.get(at).into_iter().flatten() {
            if let Some(c) = walk(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| walk(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_use_one_another_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = uses(&src);
    // The reading found the layers it should (a wrong reading would find no cycle either).
    assert!(g["cli"].contains("engine"), "{g:?}");
    assert!(g["nbd_server"].contains("engine"), "{g:?}");
    assert!(g["engine"].contains("device"), "{g:?}");
    if let Some(c) = cycle(&g) {
        panic!(
            "the modules under src/ use one another in a cycle: {}; move what the lower one needs down (as nbd_server's Backend impls for engine types live in nbd_server/backend.rs)",
            c.join(" -> ")
        );
    }
}

#[test]
fn a_cycle_between_two_modules_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycle(&g).map(|c| c.join(">")), Some("a>b>c>a".to_string()));
    let mut acyclic = g.clone();
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(cycle(&acyclic), None);
}
