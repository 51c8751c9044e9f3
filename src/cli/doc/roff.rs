//! A small roff writer for the man pages (the format page needs tbl and raw control lines).
//!
//! Kept rather than the `roff` crate that clap_mangen brings into the tree: that crate writes
//! only escaped text lines and control requests, with an apostrophe-string preamble of its
//! own, while the format page writes tbl tables (format lines, `T{ T}` cell blocks) and
//! preformatted examples as raw lines, and the pages stay byte-for-byte as they are (a test
//! compares the checked-in copies). clap_mangen still renders the command pages' option
//! lists; this writer adds the sections after them.

use super::format_page::fill;
use super::{BIN, VERSION};

/// A `.TH` line; no date, so the output does not change from day to day.
pub(super) fn title_line(name: &str, section: &str, manual: &str) -> String {
    format!(
        ".TH {} {section} \"\" \"{BIN} {VERSION}\" \"{manual}\"",
        esc(name)
    )
}

#[derive(Default)]
pub(super) struct Roff {
    pub(super) out: String,
}

/// Escapes text for a roff text line (or a tbl cell).
pub(super) fn esc(t: &str) -> String {
    let s = t
        .replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\(aq");
    if s.starts_with('.') {
        format!("\\&{s}")
    } else {
        s
    }
}

impl Roff {
    pub(super) fn raw(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }
    pub(super) fn sh(&mut self, title: &str) {
        self.raw(&format!(".SH \"{}\"", title.replace('-', "\\-")));
    }
    pub(super) fn ss(&mut self, title: &str) {
        self.raw(&format!(".SS \"{}\"", title.replace('-', "\\-")));
    }
    pub(super) fn pp(&mut self) {
        self.raw(".PP");
    }
    /// A paragraph of text (`fill`ed, see [`fill`]).
    pub(super) fn para(&mut self, text: &str) {
        self.pp();
        self.text(&fill(text));
    }
    pub(super) fn text(&mut self, text: &str) {
        for line in text.lines() {
            self.raw(&esc(line));
        }
    }
    /// A tagged paragraph: bold `tag`, then `text`.
    pub(super) fn tp(&mut self, tag: &str, text: &str) {
        self.raw(".TP");
        self.raw(&format!("\\fB{}\\fR", esc(tag)));
        self.text(&fill(text));
    }
    /// A bulleted item.
    pub(super) fn bullet(&mut self, text: &str) {
        self.raw(".IP \\(bu 2");
        self.text(&fill(text));
    }
    /// Preformatted lines.
    pub(super) fn example(&mut self, lines: &[String]) {
        self.raw(".PP");
        self.raw(".RS 4");
        self.raw(".nf");
        for l in lines {
            self.raw(&esc(l));
        }
        self.raw(".fi");
        self.raw(".RE");
    }
    /// A boxed table; the last column wraps (tbl text block).
    pub(super) fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut spec = vec!["l"; header.len() - 1];
        spec.push("lx");
        self.table_with(&spec, header, rows);
    }
    /// A boxed table with tbl column specifiers (`l`, `lx`, `lw(20)` ...); cells of `x` and
    /// `w(..)` columns are text blocks that wrap.
    pub(super) fn table_with(&mut self, spec: &[&str], header: &[&str], rows: &[Vec<String>]) {
        let n = header.len();
        assert_eq!(spec.len(), n, "table spec width");
        self.raw(".PP");
        // Left-adjusted text in the narrow cells (no stretched spaces), restored below.
        self.raw(".ad l");
        self.raw(".TS");
        self.raw("allbox;");
        self.raw(&vec!["lb"; n].join(" "));
        self.raw(&format!("{}.", spec.join(" ")));
        self.raw(&header.iter().map(|h| esc(h)).collect::<Vec<_>>().join("\t"));
        for row in rows {
            assert_eq!(row.len(), n, "table row width");
            let cells: Vec<String> = row
                .iter()
                .zip(spec)
                .map(|(c, s)| {
                    if s.contains('x') || s.contains("w(") {
                        format!("T{{\n{}\nT}}", esc(&fill(c)))
                    } else {
                        esc(c)
                    }
                })
                .collect();
            self.raw(&cells.join("\t"));
        }
        self.raw(".TE");
        self.raw(".ad");
        self.raw(".sp");
    }
    pub(super) fn see_also(&mut self, refs: &[(String, &str)]) {
        for (i, (page, section)) in refs.iter().enumerate() {
            let sep = if i + 1 < refs.len() { "," } else { "" };
            self.raw(&format!(".BR {} ({}){sep}", esc(page), section));
        }
    }
    /// Renders clap's after-help text: a line like `EXIT STATUS:` starts a section, an
    /// indented `TERM  TEXT` line is a tagged paragraph, other lines are text.
    pub(super) fn after_help(&mut self, text: &str) {
        let mut in_section = false;
        for line in text.lines() {
            let t = line.trim();
            if t.is_empty() {
                self.pp();
            } else if !line.starts_with(char::is_whitespace)
                && t.ends_with(':')
                && t == t.to_uppercase()
            {
                self.sh(t.trim_end_matches(':'));
                in_section = true;
            } else {
                if !in_section {
                    self.sh("NOTES");
                    in_section = true;
                }
                match t.split_once("  ") {
                    Some((term, rest)) if line.starts_with(char::is_whitespace) => {
                        self.tp(term, rest.trim())
                    }
                    _ => self.text(t),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_help_becomes_an_exit_status_section() {
        let mut r = Roff::default();
        r.after_help(&crate::cli::exit_status(crate::cli::exit_codes(
            "mirrorctl",
        )));
        assert!(r.out.starts_with(".SH \"EXIT STATUS\"\n"), "{}", r.out);
        assert!(r
            .out
            .contains(".TP\n\\fB5\\fR\nbusy: another mirrorctl holds"));
    }
}
