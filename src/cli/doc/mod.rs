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
use roff::{esc, title_line, Roff};

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
        if path.ends_with(OCF_WRAPPER) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    Ok(written)
}

/// Every generated file: path relative to the repository root, and its contents.
pub fn render_all() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = render_man();
    files.extend(render_completions());
    files.push((
        PathBuf::from(OCF_WRAPPER),
        crate::ocf::wrapper().into_bytes(),
    ));
    files
}

/// The OCF agent's wrapper, installed as PREFIX/lib/ocf/resource.d/mirrorctl/mirror.
pub const OCF_WRAPPER: &str = "ocf/mirror";

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

/// Shell completions for bash, zsh and fish (hidden subcommands left out), with what
/// clap's do not do: image files for the positional paths (bash), and the mirror's legs
/// (slots and locations, from `mirrorctl complete-legs PRIMARY`) for the secondary
/// arguments of fracture, resync, detach and verify (all three).
pub fn render_completions() -> Vec<(PathBuf, Vec<u8>)> {
    SHELLS
        .iter()
        .map(|&shell| {
            let mut cmd = without_hidden(Cli::command());
            let mut buf = Vec::new();
            clap_complete::aot::generate(shell, &mut cmd, BIN, &mut buf);
            let text = String::from_utf8(buf).expect("clap_complete writes UTF-8");
            let text = match shell {
                Shell::Bash => bash_extras(text, &cmd),
                Shell::Zsh => zsh_extras(text),
                Shell::Fish => fish_extras(text),
                _ => text,
            };
            (
                Path::new(COMPLETIONS_DIR).join(shell.file_name(BIN)),
                text.into_bytes(),
            )
        })
        .collect()
}

/// Subcommands whose positionals after the primary name legs.
const LEG_COMMANDS: [&str; 4] = ["fracture", "resync", "detach", "verify"];

/// Subcommands whose first positional is a primary, which a mirror's name may stand for.
const NAMED_COMMANDS: [&str; 10] = [
    "status", "events", "attach", "write", "read", "fracture", "resync", "detach", "verify",
    "serve",
];

/// Every option that takes its value as the next word (so it is not a positional).
fn value_options(cmd: &clap::Command) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut add = |c: &clap::Command| {
        for a in c.get_arguments() {
            let takes = a.get_action().takes_values() && !a.is_require_equals_set();
            if !takes || a.is_positional() {
                continue;
            }
            if let Some(l) = a.get_long() {
                out.insert(format!("--{l}"));
            }
            if let Some(s) = a.get_short() {
                out.insert(format!("-{s}"));
            }
        }
    };
    add(cmd);
    for sub in cmd.get_subcommands() {
        add(sub);
    }
    out.into_iter().collect()
}

fn bash_extras(text: String, cmd: &clap::Command) -> String {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| s.get_arguments().any(|a| a.is_positional()))
        .map(|s| s.get_name().to_string())
        .collect();
    let registration = format!("complete -F _{BIN} -o nosort -o bashdefault -o default {BIN}");
    let extra = format!(
        r#"# Added by mirrorctl: positionals complete as files, the secondaries of {legs}
# as the mirror's legs (slots and locations).
_{BIN}_extra() {{
    _{BIN} "$@"
    local cur="${{COMP_WORDS[COMP_CWORD]}}" sub="${{COMP_WORDS[1]}}" i w n=0 primary=""
    [[ "$cur" == -* ]] && return 0
    case "${{COMP_WORDS[COMP_CWORD-1]}}" in
        {opts}) return 0 ;;
    esac
    for ((i = 2; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in
            {opts}) ((i++)) ;;
            -*) ;;
            *) ((n == 0)) && primary="$w"; ((n++)) ;;
        esac
    done
    case "$sub" in
        {legs_case})
            if ((n >= 1)); then
                local IFS=$'
'
                COMPREPLY=($(compgen -W "$({BIN} complete-legs "$primary" 2>/dev/null)" -- "$cur"))
                return 0
            fi ;;
    esac
    case "$sub" in
        {subs_case})
            local IFS=$'
'
            COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
    # The mirrors' names (mirrorctl name) where a primary goes.
    case "$sub" in
        {named_case})
            if ((n == 0)); then
                local IFS=$'
'
                COMPREPLY+=($(compgen -W "$({BIN} complete-names 2>/dev/null)" -- "$cur"))
            fi ;;
    esac
}}
complete -F _{BIN}_extra -o nosort -o bashdefault -o default {BIN}
"#,
        legs = LEG_COMMANDS.join(", "),
        opts = value_options(cmd).join("|"),
        legs_case = LEG_COMMANDS.join("|"),
        subs_case = subs.join("|"),
        named_case = NAMED_COMMANDS.join("|"),
    );
    assert!(
        text.contains(&registration),
        "clap's bash registration changed"
    );
    format!("{text}\n{extra}")
}

fn zsh_extras(text: String) -> String {
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('(').and_then(|l| l.strip_suffix(')')) {
            section = name.to_string();
        }
        let legs = LEG_COMMANDS.contains(&section.as_str())
            && (line.starts_with("':secondary -- ") || line.starts_with("'*::secondaries -- "));
        let primary = NAMED_COMMANDS.contains(&section.as_str())
            && (line.starts_with("':primary -- ") || line.starts_with("'::image -- "));
        if legs {
            out.push_str(&line.replacen(":_files'", ":_mirrorctl_legs'", 1));
        } else if primary {
            out.push_str(&line.replacen(":_files'", ":_mirrorctl_primary'", 1));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let func = format!(
        r#"
# Added by mirrorctl: the mirror's legs (slots and locations) for a secondary argument.
(( $+functions[_{BIN}_legs] )) ||
_{BIN}_legs() {{
    local -a legs
    legs=(${{(f)"$({BIN} complete-legs ${{(Q)line[1]}} 2>/dev/null)"}})
    compadd -a legs
}}

# Added by mirrorctl: the mirrors' names (mirrorctl name) and files, where a primary goes.
(( $+functions[_{BIN}_primary] )) ||
_{BIN}_primary() {{
    local -a names
    names=(${{(f)"$({BIN} complete-names 2>/dev/null)"}})
    compadd -a names
    _files
}}
"#
    );
    // Before the last block (which calls or registers the function).
    match out.rfind("\nif [ \"$funcstack[1]\" = ") {
        Some(i) => {
            out.insert_str(i, &func);
            out
        }
        None => panic!("clap's zsh script ending changed"),
    }
}

fn fish_extras(text: String) -> String {
    let mut out = text;
    out.push_str(&format!(
        r#"
# Added by mirrorctl: the mirror's legs (slots and locations) for a secondary argument.
function __fish_{BIN}_legs
    set -l words (commandline -opc)
    for w in $words[3..-1]
        if not string match -q -- '-*' $w
            {BIN} complete-legs $w 2>/dev/null
            return
        end
    end
end
function __fish_{BIN}_has_primary
    set -l words (commandline -opc)
    for w in $words[3..-1]
        if not string match -q -- '-*' $w
            return 0
        end
    end
    return 1
end
"#
    ));
    for sub in LEG_COMMANDS {
        out.push_str(&format!(
            "complete -c {BIN} -n \"__fish_{BIN}_using_subcommand {sub}; and __fish_{BIN}_has_primary\" -f -a \"(__fish_{BIN}_legs)\"\n"
        ));
    }
    out.push_str(
        "# Added by mirrorctl: the mirrors' names (mirrorctl name) where a primary goes.\n",
    );
    for sub in NAMED_COMMANDS {
        out.push_str(&format!(
            "complete -c {BIN} -n \"__fish_{BIN}_using_subcommand {sub}; and not __fish_{BIN}_has_primary\" -a \"({BIN} complete-names 2>/dev/null)\" -d 'mirror name'\n"
        ));
    }
    out
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

/// The SYNOPSIS line: the command in bold, then every visible option with its value name
/// (`[--size SIZE]`, `[--wait[=DURATION]]`; required ones without brackets), then the
/// positionals, or `COMMAND` for the top level.
fn synopsis(name: &str, cmd: &clap::Command) -> String {
    let mut parts = vec![format!("\\fB{}\\fR", esc(&name.replace('-', " ")))];
    let value_of = |a: &clap::Arg| {
        a.get_value_names()
            .and_then(|v| v.first().map(|n| n.to_string()))
            .unwrap_or_else(|| a.get_id().to_string().to_uppercase())
    };
    for a in cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_hide_set())
    {
        let mut names = Vec::new();
        if let Some(s) = a.get_short() {
            names.push(format!("\\fB\\-{}\\fR", esc(&s.to_string())));
        }
        if let Some(l) = a.get_long() {
            names.push(format!("\\fB\\-\\-{}\\fR", esc(l)));
        }
        let mut p = names.join("|");
        if a.get_action().takes_values() {
            let v = format!("\\fI{}\\fR", esc(&value_of(a)));
            let optional = a.get_num_args().is_some_and(|n| n.min_values() == 0);
            if optional {
                p.push_str(&format!("[={v}]"));
            } else {
                p.push_str(&format!(" {v}"));
            }
        }
        if a.is_required_set() {
            parts.push(p);
        } else {
            parts.push(format!("[{p}]"));
        }
    }
    for a in cmd
        .get_arguments()
        .filter(|a| a.is_positional() && !a.is_hide_set())
    {
        let v = format!("\\fI{}\\fR", esc(&value_of(a)));
        let many = a.get_num_args().is_some_and(|n| n.max_values() > 1);
        let v = if many { format!("{v}...") } else { v };
        parts.push(if a.is_required_set() {
            v
        } else {
            format!("[{v}]")
        });
    }
    if cmd.has_subcommands() {
        parts.push("\\fICOMMAND\\fR".into());
    }
    parts.join(" ")
}

fn command_page(name: &str, cmd: clap::Command, all_pages: &[String]) -> Vec<u8> {
    // The after-help text becomes proper sections (EXIT STATUS ...) below instead of the
    // run-on "EXTRA" paragraph clap_mangen would make of it.
    // (Laid out for roff, not for a terminal: see `cli::after_for_man`.)
    let after_help = cmd
        .get_after_help()
        .map(|_| crate::cli::after_for_man(name.strip_prefix("mirrorctl-").unwrap_or(name)));
    let cmd = cmd.display_name(name.to_string()).after_help(None::<&str>);
    let cmd_for_synopsis = cmd.clone();
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
    let mut in_synopsis = false;
    for line in page.lines() {
        if in_synopsis {
            // clap_mangen's synopsis names options without their values: ours says
            // `--size SIZE`, as the usage line of `--help` does.
            in_synopsis = false;
            out.push_str(&synopsis(name, &cmd_for_synopsis));
            out.push('\n');
            continue;
        }
        if line == ".SH SYNOPSIS" {
            in_synopsis = true;
            out.push_str(line);
            out.push('\n');
            continue;
        }
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
