//! The shell completions in the real shells (issue 16): bash, zsh (driven through a zpty,
//! as a person at a prompt) and fish complete image files for the paths, the mirror's legs
//! (slots and locations) for the secondary arguments, and the forms of `--flush`.

use crate::support::*;
use std::path::Path;
use std::process::Command;

fn completions() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("completions")
}

/// PATH with the binary under test first (the completions call `mirrorctl complete-legs`).
fn path_env() -> String {
    let dir = Path::new(bin()).parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
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

fn bash(fx: &Fx, words: &[&str]) -> Vec<String> {
    require("bash", "bash");
    let script = format!(
        r#"source {}/mirrorctl.bash
COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
_mirrorctl_extra mirrorctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        completions().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .args(words)
        .current_dir(fx.dir.path())
        .env("PATH", path_env())
        .output()
        .unwrap();
    lines(out, "bash")
}

fn fish(fx: &Fx, line: &str) -> Vec<String> {
    require("fish", "fish");
    let out = Command::new("fish")
        .arg("-c")
        .arg(format!(
            "source {}/mirrorctl.fish; complete -C '{line}'",
            completions().display()
        ))
        .current_dir(fx.dir.path())
        .env("PATH", path_env())
        .output()
        .unwrap();
    lines(out, "fish")
}

/// The line typed at an interactive zsh with compinit, then Tab: what compadd was given.
fn zsh(fx: &Fx, line: &str) -> Vec<String> {
    require("zsh", "zsh");
    let capture = fx.path("capture.zsh");
    std::fs::write(
        &capture,
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
    let out = Command::new("zsh")
        .arg(&capture)
        .arg(completions())
        .arg(line)
        .current_dir(fx.dir.path())
        .env("PATH", path_env())
        .output()
        .unwrap();
    lines(out, "zsh")
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
    std::fs::write(fx.path("notes.txt"), "x").unwrap();
    let legs = ["0", "b.img", "1", "c.img"];
    // Image files at once for a path.
    has(
        &bash(&fx, &["mirrorctl", "status", ""]),
        &["a.img", "b.img"],
        "bash status",
    );
    has(
        &zsh(&fx, "mirrorctl status "),
        &["a.img", "b.img"],
        "zsh status",
    );
    has(
        &fish(&fx, "mirrorctl status "),
        &["a.img", "b.img"],
        "fish status",
    );
    // The legs for a secondary, read from the mirror named before it.
    for sub in ["fracture", "resync", "detach", "verify"] {
        let b = bash(&fx, &["mirrorctl", sub, "a.img", ""]);
        has(&b, &legs, &format!("bash {sub}"));
        assert!(!b.iter().any(|x| x == "notes.txt"), "bash {sub}: {b:?}");
        has(
            &fish(&fx, &format!("mirrorctl {sub} a.img ")),
            &legs,
            &format!("fish {sub}"),
        );
    }
    has(
        &zsh(&fx, "mirrorctl fracture a.img "),
        &legs,
        "zsh fracture",
    );
    has(&zsh(&fx, "mirrorctl verify a.img "), &legs, "zsh verify");
    // Options that take a value are skipped when finding the primary.
    has(
        &bash(
            &fx,
            &["mirrorctl", "resync", "--rate", "50M/s", "a.img", ""],
        ),
        &legs,
        "bash resync --rate",
    );
    // --flush offers its forms.
    let forms = ["end", "always", "every="];
    has(
        &bash(&fx, &["mirrorctl", "write", "a.img", "--flush", ""]),
        &forms,
        "bash --flush",
    );
    has(
        &zsh(&fx, "mirrorctl write a.img --flush "),
        &forms,
        "zsh --flush",
    );
    has(
        &fish(&fx, "mirrorctl write a.img --flush "),
        &forms,
        "fish --flush",
    );
    // A path that is no mirror: no legs, no error.
    assert!(bash(&fx, &["mirrorctl", "fracture", "notes.txt", ""]).is_empty());
}

#[test]
fn sizes_rates_and_durations_complete_as_examples_in_bash_zsh_and_fish() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
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
        has(&bash(&fx, &words), want, &format!("bash {line}"));
        has(&zsh(&fx, line), want, &format!("zsh {line}"));
        has(&fish(&fx, line), want, &format!("fish {line}"));
    }
}
