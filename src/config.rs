//! Mirrors by name, pure: what a name may be, the `NAME.toml` file of a named mirror (parsed,
//! checked, rendered, its primary rewritten in place), and the rule that tells a name from a
//! path. The files themselves are read and written at the edge (`cli::names`).

use serde::Deserialize;
use std::time::Duration;

/// The directory of the mirrors' files, unless `MIRRORCTL_CONFIG_DIR` names another.
pub const DEFAULT_DIR: &str = "/etc/mirrorctl";
/// The environment variable that overrides [`DEFAULT_DIR`].
pub const DIR_ENV: &str = "MIRRORCTL_CONFIG_DIR";
/// The longest name.
pub const MAX_NAME: usize = 64;

/// A mirror's name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Name, String> {
        if is_name(s) {
            Ok(Name(s.to_string()))
        } else {
            Err(format!(
                "'{s}' is not a valid mirror name: use 1 to {MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter or digit (e.g. vm1, db.prod)"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The file that holds it, within the configuration directory.
    pub fn file_name(&self) -> String {
        format!("{}.toml", self.0)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` has the form of a name.
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// What a command's IMAGE/PRIMARY argument stands for.
#[derive(Debug, PartialEq, Eq)]
pub enum Arg {
    /// A path, as given.
    Path,
    /// The mirror of that name.
    Name,
    /// Both a name and a file `./ARG` exist: refused.
    Ambiguous,
}

/// The resolution rule: an argument with a `/` is a path; otherwise it is a name when
/// `CONFIG_DIR/ARG.toml` exists (`named`), and a path when not; both a name and a file
/// `./ARG` (`file`) are ambiguous.
pub fn classify(arg: &str, named: bool, file: bool) -> Arg {
    if arg.contains('/') || !is_name(arg) || !named {
        Arg::Path
    } else if file {
        Arg::Ambiguous
    } else {
        Arg::Name
    }
}

/// One named mirror's file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub name: String,
    /// The mirror UUID (`status` shows it as mirror_uuid).
    pub mirror: String,
    /// The primary's location: an absolute path, or a /dev/disk name for a block device.
    pub primary: String,
    #[serde(default)]
    pub serve: ServeConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
}

/// `[serve]`: defaults for `mirrorctl serve NAME`, one key per long flag (`-` as `_`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub socket: Option<String>,
    pub listen: Option<String>,
    pub export: Option<String>,
    pub read_only: Option<bool>,
    pub hot_extents: Option<u64>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_allow: Option<Vec<String>>,
    pub tls: Option<String>,
    pub handshake_limit: Option<String>,
    pub write_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub insecure: Option<bool>,
}

/// `[verify]`: defaults for `mirrorctl verify NAME`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    pub repair: Option<bool>,
    pub max_time: Option<String>,
}

/// The keys each table takes (for the documentation and the hint on a misspelt one).
pub const SERVE_KEYS: &[&str] = &[
    "socket",
    "listen",
    "export",
    "read_only",
    "hot_extents",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_allow",
    "tls",
    "handshake_limit",
    "write_timeout",
    "max_connections",
    "insecure",
];
pub const VERIFY_KEYS: &[&str] = &["repair", "max_time"];

/// Parses and checks the text of `NAME.toml` (`file` names it in errors; `name` is the
/// name its file is for). Every error names the key at fault.
pub fn parse(text: &str, file: &str, name: &Name) -> Result<MirrorConfig, String> {
    let c: MirrorConfig = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        // The line at fault, which names the key.
        let at = e
            .span()
            .map(|s| {
                let n = text[..s.start].matches('\n').count();
                let line = text.lines().nth(n).unwrap_or("").trim();
                format!(" (line {}: {line})", n + 1)
            })
            .unwrap_or_default();
        let hint = if msg.starts_with("unknown field") {
            " (the keys are name, mirror, primary, and the tables [serve] and [verify]: see `man mirrorctl-name`; a flag's - is written _ here)"
        } else {
            ""
        };
        format!("{file}{at}: {}{hint}", one_line(&msg))
    })?;
    check(&c, name).map_err(|e| format!("{file}: {e}"))?;
    Ok(c)
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

fn check(c: &MirrorConfig, name: &Name) -> Result<(), String> {
    if c.name != name.as_str() {
        return Err(format!(
            "name = \"{}\" but the file is {}: a mirror's name is its file's; rename the file or fix the key",
            c.name,
            name.file_name()
        ));
    }
    if uuid::Uuid::parse_str(&c.mirror).is_err() {
        return Err(format!(
            "mirror = \"{}\" is not a UUID (`mirrorctl status PRIMARY --json` shows it as mirror_uuid)",
            c.mirror
        ));
    }
    if !c.primary.starts_with('/') {
        return Err(format!(
            "primary = \"{}\" is not an absolute path",
            c.primary
        ));
    }
    let s = &c.serve;
    if s.socket.is_some() && s.listen.is_some() {
        return Err("[serve] has both socket and listen: give one".into());
    }
    for (k, v) in [
        ("socket", &s.socket),
        ("tls_cert", &s.tls_cert),
        ("tls_key", &s.tls_key),
        ("tls_ca", &s.tls_ca),
    ] {
        if let Some(p) = v {
            if !p.starts_with('/') {
                return Err(format!(
                    "[serve] {k} = \"{p}\" is not an absolute path (serve may run from any directory)"
                ));
            }
        }
    }
    if s.tls_cert.is_some() != s.tls_key.is_some() {
        return Err("[serve] tls_cert and tls_key go together: give both or neither".into());
    }
    if s.tls_ca.is_some() && s.tls_cert.is_none() {
        return Err("[serve] tls_ca needs tls_cert and tls_key".into());
    }
    if s.tls_allow.is_some() && s.tls_ca.is_none() {
        return Err("[serve] tls_allow needs tls_ca".into());
    }
    if let Some(t) = &s.tls {
        if !matches!(t.as_str(), "off" | "on" | "require") {
            return Err(format!(
                "[serve] tls = \"{t}\": use \"off\", \"on\" or \"require\""
            ));
        }
    }
    for (k, v) in [
        ("handshake_limit", &s.handshake_limit),
        ("write_timeout", &s.write_timeout),
    ] {
        if let Some(d) = v {
            duration(d).map_err(|e| format!("[serve] {k} = \"{d}\": {e}"))?;
        }
    }
    if let Some(d) = &c.verify.max_time {
        duration(d).map_err(|e| format!("[verify] max_time = \"{d}\": {e}"))?;
    }
    Ok(())
}

/// A duration above zero, as the flags take it ("30s", "2h").
pub fn duration(s: &str) -> Result<Duration, String> {
    match crate::units::parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// TOML's basic string for `s`.
fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_string()
}

/// The file a new name gets: the three keys, and the optional tables as comments.
pub fn render_new(name: &Name, mirror: &str, primary: &str) -> String {
    format!(
        "# The mirror named {name}: `mirrorctl COMMAND {name}` opens its primary (see mirrorctl-name(1)).\n\
name = {}\n\
mirror = {}\n\
primary = {}\n\
\n\
# Defaults for `mirrorctl serve {name}` and `mirrorctl verify {name}` (flags override them):\n\
# [serve]\n\
# socket = \"/run/mirrorctl/{name}.sock\"\n\
# [verify]\n\
# max_time = \"2h\"\n\
# repair = true\n",
        quote(name.as_str()),
        quote(mirror),
        quote(primary)
    )
}

/// `text` with `primary` (and `mirror`) set to new values, everything else (comments, the
/// tables) kept as it was.
pub fn set_primary(text: &str, mirror: &str, primary: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| one_line(e.message()))?;
    doc["primary"] = toml_edit::value(primary);
    doc["mirror"] = toml_edit::value(mirror);
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    const U: &str = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

    fn file(extra: &str) -> String {
        format!("name = \"vm\"\nmirror = \"{U}\"\nprimary = \"/srv/vm.img\"\n{extra}")
    }

    #[test]
    fn names_are_letters_digits_and_dot_dash_underscore_starting_alphanumeric() {
        for ok in ["vm", "vm1", "db.prod", "a-b_c", "9", &"x".repeat(64)] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".vm",
            "-vm",
            "_vm",
            "a/b",
            "a b",
            "vm!",
            &"x".repeat(65),
            "é",
        ] {
            assert!(!is_name(bad), "{bad}");
            assert!(Name::parse(bad).is_err());
        }
    }

    #[test]
    fn a_slash_means_a_path_an_existing_name_a_name_and_both_a_name_and_a_file_are_ambiguous() {
        assert_eq!(classify("./vm", true, true), Arg::Path);
        assert_eq!(classify("/srv/vm.img", true, true), Arg::Path);
        assert_eq!(classify("vm", true, false), Arg::Name);
        assert_eq!(classify("vm", false, true), Arg::Path);
        assert_eq!(classify("vm", false, false), Arg::Path);
        assert_eq!(classify("vm", true, true), Arg::Ambiguous);
        // Not a name's form: a path, whatever exists.
        assert_eq!(classify("a b", true, false), Arg::Path);
    }

    #[test]
    fn a_file_with_serve_and_verify_tables_parses() {
        let c = parse(
            &file(
                "[serve]\nsocket = \"/run/vm.sock\"\nhot_extents = 64\nexport = \"vm\"\n\
                 tls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"\ntls_ca = \"/etc/ca.pem\"\n\
                 tls_allow = [\"host1\"]\ntls = \"require\"\nwrite_timeout = \"10s\"\n\
                 [verify]\nmax_time = \"2h\"\nrepair = true\n",
            ),
            "vm.toml",
            &n("vm"),
        )
        .unwrap();
        assert_eq!(c.serve.socket.as_deref(), Some("/run/vm.sock"));
        assert_eq!(c.serve.hot_extents, Some(64));
        assert_eq!(c.serve.tls_allow, Some(vec!["host1".to_string()]));
        assert_eq!(c.verify.max_time.as_deref(), Some("2h"));
        assert_eq!(c.verify.repair, Some(true));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_file_and_the_key() {
        let e = parse(
            &file("[serve]\nsockt = \"/run/x\"\n"),
            "/etc/mirrorctl/vm.toml",
            &n("vm"),
        )
        .unwrap_err();
        assert!(e.starts_with("/etc/mirrorctl/vm.toml"), "{e}");
        assert!(e.contains("sockt"), "{e}");
        assert!(e.contains("line 5"), "{e}");
        let e = parse(&file("colour = 1\n"), "vm.toml", &n("vm")).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse(&file("[serve]\nhot-extents = 64\n"), "vm.toml", &n("vm")).unwrap_err();
        assert!(e.contains("hot-extents") && e.contains("_"), "{e}");
    }

    #[test]
    fn bad_toml_missing_keys_and_bad_values_are_refused_naming_the_file() {
        for (text, says) in [
            ("name = \"vm\"\nmirror = \n".to_string(), "vm.toml"),
            ("name = \"vm\"\n".to_string(), "mirror"),
            (file("").replace("/srv/vm.img", "srv/vm.img"), "absolute"),
            (file("").replace(U, "nope"), "not a UUID"),
            (
                file("").replace("name = \"vm\"", "name = \"db\""),
                "rename the file",
            ),
            (
                file("[serve]\nsocket = \"/a\"\nlisten = \"127.0.0.1:1\"\n"),
                "both socket and listen",
            ),
            (file("[serve]\ntls_cert = \"/c\"\n"), "go together"),
            (file("[serve]\ntls = \"maybe\"\n"), "\"require\""),
            (file("[serve]\nhot_extents = \"many\"\n"), "hot_extents"),
            (file("[verify]\nmax_time = \"soon\"\n"), "max_time"),
            (file("[verify]\nmax_time = \"0s\"\n"), "more than 0"),
        ] {
            let e = parse(&text, "vm.toml", &n("vm")).unwrap_err();
            assert!(e.starts_with("vm.toml"), "{e}");
            assert!(e.contains(says), "{says}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn a_new_file_parses_back_to_what_was_recorded() {
        let text = render_new(&n("vm"), U, "/srv/a \"b\".img");
        let c = parse(&text, "vm.toml", &n("vm")).unwrap();
        assert_eq!(c.primary, "/srv/a \"b\".img");
        assert_eq!(c.mirror, U);
        assert_eq!(c.serve, ServeConfig::default());
    }

    #[test]
    fn setting_the_primary_keeps_comments_and_tables() {
        let text = file("# the VM's disk\n[serve]\nsocket = \"/run/vm.sock\" # for qemu\n");
        let new = set_primary(&text, U, "/mnt/b.img").unwrap();
        let c = parse(&new, "vm.toml", &n("vm")).unwrap();
        assert_eq!(c.primary, "/mnt/b.img");
        assert_eq!(c.serve.socket.as_deref(), Some("/run/vm.sock"));
        assert!(
            new.contains("# the VM's disk") && new.contains("# for qemu"),
            "{new}"
        );
    }
}
