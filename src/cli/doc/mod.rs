//! Generation of man pages and shell completions from the clap definitions (hidden
//! `generate` subcommand).
//!
//! Everything written here comes from code: the section 1 pages from [`Cli`] (via
//! `clap_mangen`), the completions via `clap_complete`, and `mirrorctl-format(5)` from the
//! constants of [`crate::format::layout`] and [`crate::format`] plus a schema of the superblock
//! payload (`SUPERBLOCK`) that the unit tests below check against the real encoder, so the
//! page cannot drift from the code. Output is deterministic (no dates).
//! `tests/generated_docs.rs` fails when the checked-in files differ from [`render_all`].

mod format_page;
mod roff;

use format_page::format_page;
use roff::{title_line, Roff};

use crate::cli::{Cli, GenerateWhat};
use clap::CommandFactory;
use clap_complete::aot::{Generator, Shell};
use std::io;
use std::path::{Path, PathBuf};

const BIN: &str = "mirrorctl";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Name (and file stem) of the on-disk format page, in section 5.
const FORMAT_PAGE: &str = "mirrorctl-format";
const MAN_DIR: &str = "man";
const COMPLETIONS_DIR: &str = "completions";
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes the selected files under `out` (creating directories as needed) and returns the
/// paths written.
pub fn generate(out: &Path, what: GenerateWhat) -> io::Result<Vec<PathBuf>> {
    let files = match what {
        GenerateWhat::All => render_all(),
        GenerateWhat::Man => render_man(),
        GenerateWhat::Completions => render_completions(),
    };
    let mut written = Vec::with_capacity(files.len());
    for (rel, contents) in files {
        let path = out.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, contents)?;
        written.push(path);
    }
    Ok(written)
}

/// Every generated file: path relative to the repository root, and its contents.
pub fn render_all() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = render_man();
    files.extend(render_completions());
    files
}

/// The man pages: `mirrorctl.1`, one `mirrorctl-<sub>.1` per visible subcommand, and
/// `mirrorctl-format.5`.
pub fn render_man() -> Vec<(PathBuf, Vec<u8>)> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect_pages(&cmd, &mut pages);
    let names: Vec<String> = pages.iter().map(|(name, _)| name.clone()).collect();
    let mut files: Vec<(PathBuf, Vec<u8>)> = pages
        .into_iter()
        .map(|(name, c)| {
            let path = Path::new(MAN_DIR).join(format!("{name}.1"));
            (path, command_page(&name, c, &names))
        })
        .collect();
    files.push((
        Path::new(MAN_DIR).join(format!("{FORMAT_PAGE}.5")),
        format_page().into_bytes(),
    ));
    files
}

/// The command with its hidden subcommands (`generate`) left out, for completions.
fn without_hidden(cmd: clap::Command) -> clap::Command {
    let visible: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    let mut out = clap::Command::new(BIN)
        .args(cmd.get_arguments().cloned())
        .subcommands(visible);
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if cmd.get_version().is_some() {
        out = out.version(env!("CARGO_PKG_VERSION"));
    }
    out
}

/// Shell completions for bash, zsh and fish (hidden subcommands left out).
pub fn render_completions() -> Vec<(PathBuf, Vec<u8>)> {
    SHELLS
        .iter()
        .map(|&shell| {
            let mut cmd = without_hidden(Cli::command());
            let mut buf = Vec::new();
            clap_complete::aot::generate(shell, &mut cmd, BIN, &mut buf);
            (Path::new(COMPLETIONS_DIR).join(shell.file_name(BIN)), buf)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Section 1 pages

/// The command and every visible subcommand (recursively), with their page names.
fn collect_pages(cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    out.push((name, cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect_pages(sub, out);
    }
}

fn command_page(name: &str, cmd: clap::Command, all_pages: &[String]) -> Vec<u8> {
    // The after-help text becomes proper sections (EXIT STATUS ...) below instead of the
    // run-on "EXTRA" paragraph clap_mangen would make of it.
    let after_help = cmd.get_after_help().map(|s| s.to_string());
    let cmd = cmd.display_name(name.to_string()).after_help(None::<&str>);
    let man = clap_mangen::Man::new(cmd)
        .title(name)
        .section("1")
        .source(format!("{BIN} {VERSION}"));
    let mut buf = Vec::new();
    man.render(&mut buf)
        .expect("rendering to a Vec does not fail");
    let page = String::from_utf8(buf).expect("clap_mangen writes UTF-8");
    let mut r = Roff::default();
    if let Some(text) = after_help {
        r.after_help(&text);
    }
    r.sh("SEE ALSO");
    let mut refs: Vec<(String, &str)> = if name == BIN {
        all_pages
            .iter()
            .filter(|p| p.as_str() != BIN)
            .map(|p| (p.clone(), "1"))
            .collect()
    } else {
        vec![(BIN.to_string(), "1")]
    };
    refs.push((FORMAT_PAGE.to_string(), "5"));
    r.see_also(&refs);

    let mut out = String::with_capacity(page.len() + r.out.len());
    for line in page.lines() {
        if line.starts_with(".TH ") {
            // clap_mangen writes an empty date as nothing at all, which shifts the source
            // into the date's place; quote every field instead.
            out.push_str(&title_line(name, "1", ""));
        } else if line == ".SH VERSION" && !r.out.is_empty() {
            // Our sections go before VERSION (EXIT STATUS belongs next to OPTIONS).
            out.push_str(&std::mem::take(&mut r.out));
            out.push_str(line);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out.push_str(&r.out);
    out.into_bytes()
}
