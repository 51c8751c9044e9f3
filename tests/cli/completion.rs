//! The shell completions in the real shells (issue 16): bash, zsh (driven through a zpty,
//! as a person at a prompt) and fish complete image files for the paths, the mirror's legs
//! (slots and locations) for the secondary arguments, and the forms of `--flush`.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn completions() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("completions")
}

fn lines(out: std::process::Output, shell: &str) -> Vec<String> {
    assert!(
        out.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The real shells completing a command line in a directory, with the completions of this
/// tree and the binary under test first in PATH (the completions call `mirrorctl
/// complete-legs`). Each returns the words offered, sorted, once each.
pub struct Shells {
    dir: PathBuf,
    env: Vec<(String, PathBuf)>,
}

impl Shells {
    pub fn in_dir(dir: &Path) -> Shells {
        Shells {
            dir: dir.to_path_buf(),
            env: Vec::new(),
        }
    }

    /// With `key=value` in the shells' environment too.
    pub fn with_env(mut self, key: &str, value: &Path) -> Shells {
        self.env.push((key.to_string(), value.to_path_buf()));
        self
    }

    fn command(&self, program: &str) -> Command {
        let bin_dir = Path::new(bin()).parent().unwrap().display().to_string();
        let mut c = Command::new(program);
        c.current_dir(&self.dir).env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        );
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// bash: `words` as COMP_WORDS, the last one being completed.
    pub fn bash(&self, words: &[&str]) -> Vec<String> {
        require("bash", "bash");
        let script = format!(
            r#"source {}/mirrorctl.bash
COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
_mirrorctl_extra mirrorctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
            completions().display()
        );
        let out = self
            .command("bash")
            .arg("-c")
            .arg(script)
            .arg("bash")
            .args(words)
            .output()
            .unwrap();
        lines(out, "bash")
    }

    /// fish: `complete -C line`.
    pub fn fish(&self, line: &str) -> Vec<String> {
        require("fish", "fish");
        let out = self
            .command("fish")
            .arg("-c")
            .arg(format!(
                "source {}/mirrorctl.fish; complete -C '{line}'",
                completions().display()
            ))
            .output()
            .unwrap();
        lines(out, "fish")
    }

    /// The line typed at an interactive zsh with compinit, then Tab: what compadd was given.
    pub fn zsh(&self, line: &str) -> Vec<String> {
        require("zsh", "zsh");
        let capture = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            capture.path(),
            r#"zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PROMPT='%% '; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd() { builtin compadd -O __hits "$@"; print -r -- "" "<<${^__hits[@]}>>" >&2 }'
zpty -w z "bindkey '^I' complete-word"
zpty -n -w z "$2"$'\t'
sleep 2
zpty -rt z out 2>/dev/null; all=$out
while zpty -rt z out 2>/dev/null; do all+=$out; done
zpty -d z
print -r -- "$all" | tr -d '\r' | grep -o '<<[^>]*>>' | sed 's/<<\(.*\)>>/\1/' | grep -v '^\$'
"#,
        )
        .unwrap();
        let out = self
            .command("zsh")
            .arg(capture.path())
            .arg(completions())
            .arg(line)
            .output()
            .unwrap();
        lines(out, "zsh")
    }
}

fn has(got: &[String], want: &[&str], what: &str) {
    for w in want {
        assert!(
            got.iter().any(|g| g == w),
            "{what}: {w} not offered in {got:?}"
        );
    }
}

#[test]
fn bash_zsh_and_fish_complete_image_files_legs_and_flush_policies() {
    let fx = Fx::with_legs("32M", "64K", &["b.img", "c.img"]);
    let sh = Shells::in_dir(fx.dir.path());
    std::fs::write(fx.path("notes.txt"), "x").unwrap();
    let legs = ["0", "b.img", "1", "c.img"];
    // Image files at once for a path.
    has(
        &sh.bash(&["mirrorctl", "status", ""]),
        &["a.img", "b.img"],
        "bash status",
    );
    has(
        &sh.zsh("mirrorctl status "),
        &["a.img", "b.img"],
        "zsh status",
    );
    has(
        &sh.fish("mirrorctl status "),
        &["a.img", "b.img"],
        "fish status",
    );
    // The legs for a secondary, read from the mirror named before it.
    for sub in ["fracture", "resync", "detach", "verify"] {
        let b = sh.bash(&["mirrorctl", sub, "a.img", ""]);
        has(&b, &legs, &format!("bash {sub}"));
        assert!(!b.iter().any(|x| x == "notes.txt"), "bash {sub}: {b:?}");
        has(
            &sh.fish(&format!("mirrorctl {sub} a.img ")),
            &legs,
            &format!("fish {sub}"),
        );
    }
    has(&sh.zsh("mirrorctl fracture a.img "), &legs, "zsh fracture");
    has(&sh.zsh("mirrorctl verify a.img "), &legs, "zsh verify");
    // Options that take a value are skipped when finding the primary.
    has(
        &sh.bash(&["mirrorctl", "resync", "--rate", "50M/s", "a.img", ""]),
        &legs,
        "bash resync --rate",
    );
    // --flush offers its forms.
    let forms = ["end", "always", "every="];
    has(
        &sh.bash(&["mirrorctl", "write", "a.img", "--flush", ""]),
        &forms,
        "bash --flush",
    );
    has(
        &sh.zsh("mirrorctl write a.img --flush "),
        &forms,
        "zsh --flush",
    );
    has(
        &sh.fish("mirrorctl write a.img --flush "),
        &forms,
        "fish --flush",
    );
    // A path that is no mirror: no legs, no error.
    assert!(sh
        .bash(&["mirrorctl", "fracture", "notes.txt", ""])
        .is_empty());
}

#[test]
fn sizes_rates_and_durations_complete_as_examples_in_bash_zsh_and_fish() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let sh = Shells::in_dir(fx.dir.path());
    let cases: [(&str, &[&str]); 5] = [
        ("mirrorctl create n.img --size ", &["1G", "10G", "10GB"]),
        ("mirrorctl create n.img --region-size ", &["64K", "1M"]),
        ("mirrorctl write a.img --offset ", &["1G"]),
        ("mirrorctl resync a.img --rate ", &["50M/s", "1G/s"]),
        ("mirrorctl verify a.img --max-time ", &["10m", "1h"]),
    ];
    for (line, want) in cases {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        words.push("");
        has(&sh.bash(&words), want, &format!("bash {line}"));
        has(&sh.zsh(line), want, &format!("zsh {line}"));
        has(&sh.fish(line), want, &format!("fish {line}"));
    }
}
