//! The man pages and shell completions checked in under man/ and completions/ must be exactly
//! what `mirrorctl generate` produces from the current CLI definitions and format constants.

use mirrorctl::format::{self, layout};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const REGENERATE: &str = "run `cargo run -- generate` to regenerate man/ and completions/";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    mirrorctl::cli::doc::render_all()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn checked_in_man_pages_and_completions_match_the_cli_definitions() {
    let mut problems = Vec::new();
    for (rel, want) in generated() {
        match std::fs::read(root().join(&rel)) {
            Ok(have) if have == want => {}
            Ok(_) => problems.push(format!("{} is out of date", rel.display())),
            Err(e) => problems.push(format!("{} is missing ({e})", rel.display())),
        }
    }
    assert!(problems.is_empty(), "{}\n{REGENERATE}", problems.join("\n"));
}

#[test]
fn every_checked_in_page_and_completion_is_still_generated() {
    let produced: BTreeSet<PathBuf> = generated().into_iter().map(|(p, _)| p).collect();
    let mut present = Vec::new();
    for dir in ["man", "completions"] {
        files_under(&root().join(dir), &mut present);
    }
    let orphans: Vec<String> = present
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .filter(|p| !produced.contains(p))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        orphans.is_empty(),
        "not produced by `mirrorctl generate` any more (delete them): {}\n{REGENERATE}",
        orphans.join(", ")
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(generated(), generated());
}

#[test]
fn the_format_page_states_the_layout_numbers_of_the_code() {
    let files = generated();
    let page = files
        .iter()
        .find(|(p, _)| p == Path::new("man/mirrorctl-format.5"))
        .map(|(_, c)| String::from_utf8(c.clone()).unwrap())
        .expect("man/mirrorctl-format.5 is generated");
    let magic = std::str::from_utf8(&format::MAGIC).unwrap();
    assert!(page.contains(magic), "magic {magic}");
    for n in [
        layout::BITMAP_AREA_OFFSET,
        layout::SB_OFFSETS[1],
        layout::SB_COPY_SIZE,
        layout::DATA_ALIGN,
        format::MAX_PAYLOAD as u64,
        format::MAX_LOCATION as u64,
    ] {
        assert!(
            page.contains(&n.to_string()),
            "{n} missing from the format page"
        );
    }
    let version = format!("{}.{}", format::FORMAT_MAJOR, format::FORMAT_MINOR);
    assert!(
        page.contains(&format!("{version} (mirrorctl ")),
        "version history"
    );
    let g = layout::Geometry::for_data_size(1 << 30, layout::DEFAULT_REGION_SIZE, 4).unwrap();
    for n in [g.region_count, g.bitmap_stride, g.data_offset] {
        assert!(page.contains(&n.to_string()), "worked example: {n}");
    }
    for s in 0..4 {
        let off = g.bitmap(layout::BitmapId::Fracture(layout::SlotIdx(s)));
        assert!(
            page.contains(&off.to_string()),
            "worked example: slot {s} at {off}"
        );
    }
}

#[test]
fn the_top_level_page_has_exit_status_and_refers_to_every_page() {
    let files = generated();
    let top = files
        .iter()
        .find(|(p, _)| p == Path::new("man/mirrorctl.1"))
        .map(|(_, c)| String::from_utf8(c.clone()).unwrap())
        .expect("man/mirrorctl.1 is generated");
    assert!(top.contains(".SH \"EXIT STATUS\""));
    assert!(top.contains("another mirrorctl holds the mirror"));
    let see_also = &top[top.find(".SH \"SEE ALSO\"").expect("SEE ALSO")..];
    for (p, _) in &files {
        let Some(name) = p.strip_prefix("man").ok().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == "mirrorctl.1" {
            continue;
        }
        let (stem, section) = name.rsplit_once('.').unwrap();
        let reference = format!(".BR {} ({section})", stem.replace('-', "\\-"));
        assert!(see_also.contains(&reference), "SEE ALSO lacks {reference}");
    }
    assert!(!files
        .iter()
        .any(|(p, _)| p == Path::new("man/mirrorctl-generate.1")));
}

#[test]
fn generate_writes_the_selected_files_under_the_output_directory() {
    use mirrorctl::cli::GenerateWhat;
    let dir = tempfile::tempdir().unwrap();
    let all = mirrorctl::cli::doc::generate(dir.path(), GenerateWhat::All).unwrap();
    let want: Vec<PathBuf> = generated()
        .into_iter()
        .map(|(p, _)| dir.path().join(p))
        .collect();
    assert_eq!(all, want);
    for (rel, contents) in generated() {
        assert_eq!(std::fs::read(dir.path().join(rel)).unwrap(), contents);
    }
    let man = mirrorctl::cli::doc::generate(dir.path(), GenerateWhat::Man).unwrap();
    assert!(!man.is_empty() && man.iter().all(|p| p.starts_with(dir.path().join("man"))));
    let comp = mirrorctl::cli::doc::generate(dir.path(), GenerateWhat::Completions).unwrap();
    assert_eq!(comp.len(), 3);
    assert!(comp
        .iter()
        .all(|p| p.starts_with(dir.path().join("completions"))));
}

#[test]
fn completions_offer_every_visible_subcommand_and_not_the_hidden_generate() {
    for (path, body) in generated() {
        if !path.starts_with("completions") {
            continue;
        }
        let text = String::from_utf8(body).unwrap();
        for sub in [
            "create", "attach", "write", "fracture", "resync", "verify", "promote",
        ] {
            assert!(
                text.contains(sub),
                "{} does not offer `{sub}`",
                path.display()
            );
        }
        assert!(
            !text.contains("generate"),
            "{} offers the hidden `generate` subcommand",
            path.display()
        );
    }
}

#[test]
fn every_positional_and_option_of_every_subcommand_has_a_description() {
    use clap::CommandFactory;
    let mut missing = Vec::new();
    let root = mirrorctl::cli::Cli::command();
    let mut cmds = vec![root.clone()];
    cmds.extend(root.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    for c in &cmds {
        for a in c.get_arguments() {
            if a.is_hide_set() || ["help", "version"].contains(&a.get_id().as_str()) {
                continue;
            }
            if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                missing.push(format!("{} {}", c.get_name(), a.get_id()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "arguments without a description: {missing:?}"
    );
}

#[test]
fn each_subcommand_lists_only_the_exit_statuses_it_can_return() {
    let expect: [(&str, &[u8]); 10] = [
        ("create", &[0, 2, 4, 5]),
        ("status", &[0, 2, 3, 4]),
        ("attach", &[0, 2, 3, 4, 5]),
        ("write", &[0, 2, 3, 4, 5]),
        ("read", &[0, 2, 3, 4, 5]),
        ("fracture", &[0, 2, 4, 5]),
        ("resync", &[0, 2, 3, 4, 5]),
        ("detach", &[0, 2, 4, 5]),
        ("promote", &[0, 2, 3, 4, 5]),
        ("verify", &[0, 1, 2, 3, 4, 5]),
    ];
    for (sub, codes) in expect {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mirrorctl"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        let section = help
            .split("EXIT STATUS:")
            .nth(1)
            .expect("an EXIT STATUS section");
        let listed: Vec<u8> = section
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(listed, codes, "{sub} --help lists {listed:?}");
        let page = std::fs::read_to_string(root().join(format!("man/mirrorctl-{sub}.1"))).unwrap();
        for c in 0..=5u8 {
            let line = format!(".TP\n\\fB{c}\\fR\n");
            assert_eq!(
                page.contains(&line),
                codes.contains(&c),
                "{sub}.1, status {c}"
            );
        }
    }
}

/// Shell words of a simple command line (single quotes only), up to a pipe or redirection.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            '|' | '>' if !quoted => break,
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

#[test]
fn every_page_has_examples_and_every_example_is_a_valid_command_line() {
    use clap::Parser;
    let cmd = <mirrorctl::cli::Cli as clap::CommandFactory>::command();
    let mut subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    subs.push("mirrorctl".into());
    for sub in &subs {
        let ex = mirrorctl::cli::examples(sub);
        assert!(ex.len() >= 2, "{sub}: fewer than two examples");
        for (line, what) in ex {
            assert!(!what.is_empty(), "{line}");
            // From the first `mirrorctl` on (a pipe may feed it).
            let from = line.find("mirrorctl ").unwrap_or_else(|| panic!("{line}"));
            let w = words(&line[from..]);
            if let Err(e) = mirrorctl::cli::Cli::try_parse_from(&w) {
                panic!("example `{line}` does not parse: {e}");
            }
        }
        let page = if sub == "mirrorctl" {
            "mirrorctl.1".to_string()
        } else {
            format!("mirrorctl-{sub}.1")
        };
        let text = std::fs::read_to_string(root().join("man").join(&page)).unwrap();
        assert!(text.contains(".SH \"EXAMPLES\""), "{page}");
        let help = crate::support::run_in(
            &root(),
            &if sub == "mirrorctl" {
                vec!["--help"]
            } else {
                vec![sub.as_str(), "--help"]
            },
        );
        assert!(help.stdout.contains("EXAMPLES:"), "{sub} --help");
    }
}

#[test]
fn every_man_page_renders_without_groff_warnings() {
    crate::support::require("groff", "groff-base");
    let mut problems = Vec::new();
    for (rel, contents) in generated() {
        if !rel.starts_with("man") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join(rel.file_name().unwrap());
        std::fs::write(&page, &contents).unwrap();
        let o = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&page)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() || !err.trim().is_empty() {
            problems.push(format!("{}: {}", rel.display(), err.trim()));
        }
    }
    assert!(problems.is_empty(), "groff warns:\n{}", problems.join("\n"));
}

#[test]
fn every_synopsis_names_the_value_each_option_takes() {
    let files = generated();
    let page = |name: &str| {
        let (_, c) = files
            .iter()
            .find(|(p, _)| p == Path::new(name))
            .unwrap_or_else(|| panic!("{name} is generated"));
        let text = String::from_utf8(c.clone()).unwrap();
        let synopsis = text
            .split(".SH SYNOPSIS\n")
            .nth(1)
            .and_then(|s| s.lines().next())
            .expect("a SYNOPSIS line")
            .to_string();
        synopsis
    };
    let create = page("man/mirrorctl-create.1");
    assert!(create.contains(r"[\fB\-\-size\fR \fISIZE\fR]"), "{create}");
    assert!(create.contains(r"[\fB\-f\fR|\fB\-\-force\fR]"), "{create}");
    assert!(create.ends_with(r"\fIIMAGE\fR"), "{create}");
    let verify = page("man/mirrorctl-verify.1");
    assert!(
        verify.contains(r"[\fB\-\-max\-time\fR \fIDURATION\fR]"),
        "{verify}"
    );
    assert!(verify.contains(r"[\fISECONDARIES\fR...]"), "{verify}");
    let top = page("man/mirrorctl.1");
    assert!(top.contains(r"[\fB\-\-wait\fR[=\fIDURATION\fR]]"), "{top}");
    assert!(top.ends_with(r"\fICOMMAND\fR"), "{top}");
}

#[test]
fn no_generated_page_has_runs_of_spaces_inside_a_text_line() {
    let mut problems = Vec::new();
    for (rel, text) in generated() {
        if !rel.starts_with("man") {
            continue;
        }
        let text = String::from_utf8_lossy(&text);
        let mut fill = true;
        for (n, line) in text.lines().enumerate() {
            match line {
                l if l.starts_with(".nf") || l.starts_with(".EX") => fill = false,
                l if l.starts_with(".fi") || l.starts_with(".EE") => fill = true,
                _ => {}
            }
            // Text lines (not requests), in filled text, after their leading indentation.
            if fill && !line.starts_with('.') && line.trim_start().contains("  ") {
                problems.push(format!("{}:{}: {line}", rel.display(), n + 1));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "runs of spaces inside sentences (fix the source text):\n{}",
        problems.join("\n")
    );
}
