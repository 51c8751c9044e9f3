//! The index of durability rules in the README's "Crash safety": one row per rule (code,
//! what it keeps in one line, the file that keeps it), made from the `//! - CODE ...` lines
//! at the tops of the files under `src/`, so that it cannot go stale. Every rule is defined
//! once and tagged somewhere outside its definition. `MIRRORCTL_BLESS=1` rewrites the table.

use std::path::{Path, PathBuf};

const BEGIN: &str = "<!-- rule index: made from the `//! - CODE` lines under src/; tests/cli/rule_index.rs checks it -->";
const END: &str = "<!-- end of rule index -->";

struct Rule {
    code: String,
    file: String,
    /// The whole rule text, continuation lines joined.
    text: String,
}

pub(crate) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A rule code: one capital letter, then digits.
fn code_of(word: &str) -> Option<&str> {
    let mut chars = word.chars();
    let first = chars.next()?;
    (first.is_ascii_uppercase() && word.len() > 1 && chars.all(|c| c.is_ascii_digit()))
        .then_some(word)
}

fn rules(root: &Path) -> Vec<Rule> {
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let Some(rest) = lines[i].strip_prefix("//! - ") else {
                i += 1;
                continue;
            };
            let (word, body) = rest.split_once(' ').unwrap_or((rest, ""));
            let Some(code) = code_of(word) else {
                i += 1;
                continue;
            };
            let mut body = body.to_string();
            i += 1;
            while let Some(more) = lines.get(i).and_then(|l| l.strip_prefix("//!   ")) {
                body.push(' ');
                body.push_str(more.trim());
                i += 1;
            }
            out.push(Rule {
                code: code.to_string(),
                file: rel.clone(),
                text: body,
            });
        }
    }
    out.sort_by(|a, b| {
        let key = |r: &Rule| {
            (
                r.code[..1].to_string(),
                r.code[1..].parse::<u32>().unwrap_or(0),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

/// The rule's first clause: its text up to the first `;`, sentence end, or colon before
/// what breaks without it, outside parentheses and backquotes.
fn summary(text: &str) -> String {
    let b = text.as_bytes();
    let (mut depth, mut quoted) = (0i32, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'`' => quoted = !quoted,
            b'(' | b'[' if !quoted => depth += 1,
            b')' | b']' if !quoted => depth -= 1,
            b';' | b':' | b'.' if !quoted && depth == 0 => {
                let at_end = b.get(i + 1).is_none_or(|&n| n == b' ');
                let abbreviation =
                    c == b'.' && (text[..i].ends_with("i.e") || text[..i].ends_with("e.g"));
                // A colon ends the clause only before what breaks without the rule.
                let breaks = c != b':'
                    || [" without", " otherwise", " a crash"]
                        .iter()
                        .any(|w| text[i + 1..].starts_with(w));
                if at_end && !abbreviation && breaks {
                    return text[..i].trim_end_matches(',').to_string();
                }
            }
            _ => {}
        }
    }
    text.trim_end_matches(['.', ',']).to_string()
}

fn table(rules: &[Rule]) -> String {
    let mut t = String::from("| rule | what it keeps | kept in |\n|---|---|---|\n");
    for r in rules {
        t.push_str(&format!(
            "| {} | {} | `{}` |\n",
            r.code,
            summary(&r.text).replace('|', "\\|"),
            r.file
        ));
    }
    t
}

#[test]
fn every_durability_rule_is_defined_once_tagged_where_it_is_kept_and_listed_in_the_readme_index() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = rules(root);
    assert!(
        rules.len() >= 40,
        "only {} rules found under src/",
        rules.len()
    );
    for w in rules.windows(2) {
        assert_ne!(
            w[0].code, w[1].code,
            "rule {} is defined twice: {} and {}",
            w[0].code, w[0].file, w[1].file
        );
    }
    // Tagged: the code appears in src/ on a line that is not part of a rule's definition.
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let code_text: Vec<String> = files
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("//!"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    for r in &rules {
        let tagged = code_text.iter().any(|t| {
            t.match_indices(r.code.as_str()).any(|(i, _)| {
                let before = t[..i].chars().next_back();
                let after = t[i + r.code.len()..].chars().next();
                !before.is_some_and(|c| c.is_ascii_alphanumeric())
                    && !after.is_some_and(|c| c.is_ascii_alphanumeric())
            })
        });
        assert!(
            tagged,
            "rule {} ({}) is tagged at no line that keeps it",
            r.code, r.file
        );
    }

    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let want = table(&rules);
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no rule index between {BEGIN:?} and {END:?}");
    };
    let have = &readme[b + BEGIN.len() + 1..e];
    if have != want {
        if std::env::var_os("MIRRORCTL_BLESS").is_some() {
            let new = format!("{}{BEGIN}\n{want}{}", &readme[..b], &readme[e..]);
            std::fs::write(&readme_path, new).unwrap();
        } else {
            panic!(
                "the README's rule index is stale; rewrite it with MIRRORCTL_BLESS=1 cargo test --release --test cli rule_index\n--- README\n{have}--- src/\n{want}"
            );
        }
    }
}

#[test]
fn a_rules_summary_ends_at_its_first_clause_outside_parentheses() {
    assert_eq!(
        summary("A new header is durable before X; otherwise Y."),
        "A new header is durable before X"
    );
    assert_eq!(
        summary("Legs by identity ([`LegId`]: slot, uuid); more"),
        "Legs by identity ([`LegId`]: slot, uuid)"
    );
    assert_eq!(
        summary("logged together with W1, i.e. before the data"),
        "logged together with W1, i.e. before the data"
    );
    assert_eq!(summary("first: a or b. More"), "first: a or b");
    assert_eq!(summary("X durably: a crash in between"), "X durably");
    assert_eq!(
        summary("first merges X and makes that durable,"),
        "first merges X and makes that durable"
    );
}
