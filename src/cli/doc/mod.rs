//! Generation of man pages and shell completions from the clap definitions (hidden
//! `generate` subcommand).
//!
//! Everything written here comes from code: the section 1 pages from [`Cli`] (via
//! `clap_mangen`), the completions via `clap_complete`, and `mirrorctl-format(5)` from the
//! constants of [`crate::format::layout`] and [`crate::format`] plus a schema of the superblock
//! payload (`SUPERBLOCK`) that the unit tests below check against the real encoder, so the
//! page cannot drift from the code. Output is deterministic (no dates).
//! `tests/generated_docs.rs` fails when the checked-in files differ from [`render_all`].

use crate::cli::{Cli, GenerateWhat};
use crate::format::layout::{self, Geometry};
use crate::format::{self, LegState, Role};
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

/// A `.TH` line; no date, so the output does not change from day to day.
fn title_line(name: &str, section: &str, manual: &str) -> String {
    format!(
        ".TH {} {section} \"\" \"{BIN} {VERSION}\" \"{manual}\"",
        esc(name)
    )
}

// ---------------------------------------------------------------------------------------
// A small roff writer (the format page needs tbl and raw control lines)

#[derive(Default)]
struct Roff {
    out: String,
}

/// Escapes text for a roff text line (or a tbl cell).
fn esc(t: &str) -> String {
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
    fn raw(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }
    fn sh(&mut self, title: &str) {
        self.raw(&format!(".SH \"{}\"", title.replace('-', "\\-")));
    }
    fn ss(&mut self, title: &str) {
        self.raw(&format!(".SS \"{}\"", title.replace('-', "\\-")));
    }
    fn pp(&mut self) {
        self.raw(".PP");
    }
    /// A paragraph of text (`fill`ed, see [`fill`]).
    fn para(&mut self, text: &str) {
        self.pp();
        self.text(&fill(text));
    }
    fn text(&mut self, text: &str) {
        for line in text.lines() {
            self.raw(&esc(line));
        }
    }
    /// A tagged paragraph: bold `tag`, then `text`.
    fn tp(&mut self, tag: &str, text: &str) {
        self.raw(".TP");
        self.raw(&format!("\\fB{}\\fR", esc(tag)));
        self.text(&fill(text));
    }
    /// A bulleted item.
    fn bullet(&mut self, text: &str) {
        self.raw(".IP \\(bu 2");
        self.text(&fill(text));
    }
    /// Preformatted lines.
    fn example(&mut self, lines: &[String]) {
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
    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut spec = vec!["l"; header.len() - 1];
        spec.push("lx");
        self.table_with(&spec, header, rows);
    }
    /// A boxed table with tbl column specifiers (`l`, `lx`, `lw(20)` ...); cells of `x` and
    /// `w(..)` columns are text blocks that wrap.
    fn table_with(&mut self, spec: &[&str], header: &[&str], rows: &[Vec<String>]) {
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
    fn see_also(&mut self, refs: &[(String, &str)]) {
        for (i, (page, section)) in refs.iter().enumerate() {
            let sep = if i + 1 < refs.len() { "," } else { "" };
            self.raw(&format!(".BR {} ({}){sep}", esc(page), section));
        }
    }
    /// Renders clap's after-help text: a line like `EXIT STATUS:` starts a section, an
    /// indented `TERM  TEXT` line is a tagged paragraph, other lines are text.
    fn after_help(&mut self, text: &str) {
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

// ---------------------------------------------------------------------------------------
// Numbers of the format, by name, for the page text

/// `1048576 (1 MiB)`: a byte count with its exact binary unit when it has one.
fn bytes(n: u64) -> String {
    for (unit, size) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)] {
        if n >= size && n % size == 0 {
            return format!("{n} ({} {unit})", n / size);
        }
    }
    if n >= layout::KIB && n % layout::KIB == 0 {
        return format!("{n} ({} KiB)", n / layout::KIB);
    }
    n.to_string()
}

fn magic_text() -> String {
    String::from_utf8_lossy(&format::MAGIC).into_owned()
}

/// The named numbers a page text may use: `{NAME}` is the decimal value, `{NAME~}` adds the
/// binary unit (for byte counts).
fn constants() -> Vec<(&'static str, u64)> {
    vec![
        ("PAGE", layout::PAGE),
        ("SB_COPY_SIZE", layout::SB_COPY_SIZE),
        ("SB_A", layout::SB_OFFSETS[0]),
        ("SB_B", layout::SB_OFFSETS[1]),
        ("BITMAP_AREA_OFFSET", layout::BITMAP_AREA_OFFSET),
        ("DATA_ALIGN", layout::DATA_ALIGN),
        ("DATA_GRANULE", layout::DATA_GRANULE),
        ("MIN_REGION_SIZE", layout::MIN_REGION_SIZE),
        ("MAX_REGION_SIZE", layout::MAX_REGION_SIZE),
        ("DEFAULT_REGION_SIZE", layout::DEFAULT_REGION_SIZE),
        ("DEFAULT_SLOTS", layout::DEFAULT_SLOTS as u64),
        ("MAX_SLOTS", layout::MAX_SLOTS as u64),
        ("BITS_PER_BYTE", u8::BITS as u64),
        ("COPY_HEADER_LEN", format::COPY_HEADER_LEN as u64),
        ("CHECKSUM_OFFSET", checksum_offset() as u64),
        ("CHECKSUM_LEN", blake3::OUT_LEN as u64),
        ("MAX_PAYLOAD", format::MAX_PAYLOAD as u64),
        ("MAX_LOCATION", format::MAX_LOCATION as u64),
        ("MAX_TEXT", format::MAX_TEXT as u64),
        ("MAX_EVENT", format::MAX_EVENT as u64),
        ("MAX_HISTORY", format::MAX_HISTORY as u64),
        ("FORMAT_MAJOR", format::FORMAT_MAJOR as u64),
        ("FORMAT_MINOR", format::FORMAT_MINOR as u64),
    ]
}

/// Replaces `{NAME}` / `{NAME~}` (see [`constants`]) and `{MAGIC}` in `text`.
fn fill(text: &str) -> String {
    if !text.contains('{') {
        return text.to_string();
    }
    let mut s = text.replace("{MAGIC}", &magic_text());
    for (name, value) in constants() {
        s = s
            .replace(&format!("{{{name}~}}"), &bytes(value))
            .replace(&format!("{{{name}}}"), &value.to_string());
    }
    assert!(!s.contains('{'), "unknown placeholder in page text: {s}");
    s
}

// ---------------------------------------------------------------------------------------
// The superblock copy header

struct HeaderField {
    name: &'static str,
    size: usize,
    doc: &'static str,
}

/// Offset of the checksum in the copy header: it fills the end of the header.
fn checksum_offset() -> usize {
    format::COPY_HEADER_LEN - blake3::OUT_LEN
}

/// The copy header, field by field (sizes from the constants' types; see the unit test
/// that checks them against `format::encode_copy`).
fn header_fields() -> Vec<HeaderField> {
    let mut fields = vec![
        HeaderField {
            name: "magic",
            size: format::MAGIC.len(),
            doc: "The ASCII bytes \"{MAGIC}\". A copy without them was never written (or the \
                  image is not a mirrorctl image).",
        },
        HeaderField {
            name: "major",
            size: std::mem::size_of_val(&format::FORMAT_MAJOR),
            doc: "u16: format major version, {FORMAT_MAJOR}. A reader refuses a major it does \
                  not know.",
        },
        HeaderField {
            name: "minor",
            size: std::mem::size_of_val(&format::FORMAT_MINOR),
            doc: "u16: format minor version, {FORMAT_MINOR} in this version. Any minor of a \
                  known major is read.",
        },
        HeaderField {
            name: "payload_len",
            size: std::mem::size_of::<u32>(),
            doc: "u32: length n of the payload in bytes, at most {MAX_PAYLOAD} \
                  (SB_COPY_SIZE - COPY_HEADER_LEN).",
        },
        HeaderField {
            name: "seq",
            size: std::mem::size_of::<u64>(),
            doc: "u64: sequence number; each commit writes the previous sequence number + 1.",
        },
    ];
    let used: usize = fields.iter().map(|f| f.size).sum();
    fields.push(HeaderField {
        name: "reserved",
        size: checksum_offset() - used,
        doc: "Written as zero; covered by the checksum, otherwise not interpreted.",
    });
    fields.push(HeaderField {
        name: "checksum",
        size: blake3::OUT_LEN,
        doc: "BLAKE3 hash (32 bytes) of header bytes 0 to {CHECKSUM_OFFSET} (exclusive) \
              followed by the n payload bytes.",
    });
    fields
}

// ---------------------------------------------------------------------------------------
// The payload schema (checked against the encoder by the unit tests below)

/// How many elements a `Vec` holds.
#[derive(Clone, Copy)]
enum Count {
    /// Exactly `geometry.slots` entries.
    Slots,
    /// At most this many.
    AtMost(usize),
    Any,
}

#[derive(Clone, Copy)]
enum Ty {
    U32,
    U64,
    /// `[u8; 16]`
    Uuid,
    /// UTF-8 text, with the longest length mirrorctl stores, if it limits it.
    Str(Option<usize>),
    Vec(&'static Ty, Count),
    Opt(&'static Ty),
    Struct(&'static StructDoc),
    /// An enum whose variants carry no fields.
    Enum(&'static EnumDoc),
}

struct Field {
    name: &'static str,
    ty: Ty,
    doc: &'static str,
}

struct StructDoc {
    name: &'static str,
    doc: &'static str,
    fields: &'static [Field],
}

struct Variant {
    /// The Rust variant name.
    name: String,
    /// How `mirrorctl status` shows it.
    shown: &'static str,
    doc: &'static str,
}

struct EnumDoc {
    name: &'static str,
    doc: &'static str,
    /// Variants in declaration order: variant index = position.
    variants: fn() -> Vec<Variant>,
}

fn role_variants() -> Vec<Variant> {
    [Role::Primary, Role::Secondary, Role::Detached]
        .into_iter()
        .map(|r| Variant {
            name: format!("{r:?}"),
            shown: r.as_str(),
            // Exhaustive: a new variant fails to compile until it is documented here (and
            // added to the list above).
            doc: match r {
                Role::Primary => "This image is the primary of its mirror.",
                Role::Secondary => {
                    "This image is a secondary of the mirror whose primary is \
                                    primary_uuid."
                }
                Role::Detached => "A former secondary whose slot was freed by detach.",
            },
        })
        .collect()
}

fn leg_state_variants() -> Vec<Variant> {
    [
        LegState::Empty,
        LegState::InSync,
        LegState::Syncing,
        LegState::FracturedByAdmin,
        LegState::FracturedByError,
    ]
    .into_iter()
    .map(|s| Variant {
        name: format!("{s:?}"),
        shown: s.as_str(),
        doc: match s {
            LegState::Empty => {
                "The slot is free (all other fields of the entry are zero or \
                                empty)."
            }
            LegState::InSync => {
                "Receives every write; its fracture bitmap lists regions still \
                                 to copy (normally none)."
            }
            LegState::Syncing => {
                "Receives every write and has regions in its fracture bitmap \
                                  waiting for resync (initial sync, after crash recovery, or a \
                                  resync in progress)."
            }
            LegState::FracturedByAdmin => {
                "Stopped on purpose (mirrorctl fracture): receives \
                                           no writes; the regions written since are set in its \
                                           fracture bitmap."
            }
            LegState::FracturedByError => {
                "Stopped after an I/O error: receives no writes; the \
                                           regions written since (and the write-intent window \
                                           of the failed write) are set in its fracture bitmap."
            }
        },
    })
    .collect()
}

static ROLE: EnumDoc = EnumDoc {
    name: "Role",
    doc: "The role of the image holding the superblock.",
    variants: role_variants,
};

static LEG_STATE: EnumDoc = EnumDoc {
    name: "LegState",
    doc: "The state of a secondary slot. Writes go to InSync and Syncing legs.",
    variants: leg_state_variants,
};

static GEOMETRY: StructDoc = StructDoc {
    name: "Geometry",
    doc: "The layout of the image, identical on every leg. A copy whose geometry differs from \
          the one computed from data_size, region_size and slots (see IMAGE LAYOUT) is \
          rejected as damaged.",
    fields: &[
        Field {
            name: "data_offset",
            ty: Ty::U64,
            doc: "Byte offset of the data area: the end of the last bitmap rounded up to a \
                  multiple of {DATA_ALIGN~}.",
        },
        Field {
            name: "data_size",
            ty: Ty::U64,
            doc: "Bytes in the data area: a non-zero multiple of {DATA_GRANULE~}.",
        },
        Field {
            name: "region_size",
            ty: Ty::U64,
            doc: "Bytes tracked by one bitmap bit: a power of two from {MIN_REGION_SIZE~} to \
                  {MAX_REGION_SIZE~} (default {DEFAULT_REGION_SIZE~}).",
        },
        Field {
            name: "region_count",
            ty: Ty::U64,
            doc: "data_size / region_size rounded up (the last region may be short).",
        },
        Field {
            name: "slots",
            ty: Ty::U32,
            doc: "Number of secondary slots: 1 to {MAX_SLOTS} (default {DEFAULT_SLOTS}).",
        },
        Field {
            name: "bitmap_offset",
            ty: Ty::U64,
            doc: "Byte offset of the first bitmap: always {BITMAP_AREA_OFFSET~}.",
        },
        Field {
            name: "bitmap_stride",
            ty: Ty::U64,
            doc: "Bytes per bitmap: region_count / {BITS_PER_BYTE} rounded up, then rounded up \
                  to a multiple of {PAGE~}.",
        },
    ],
};

static LEG: StructDoc = StructDoc {
    name: "Leg",
    doc: "One entry of the leg table: the secondary in a slot. Entry s goes with the \
          fracture bitmap of slot s (bitmap 1 + s).",
    fields: &[
        Field {
            name: "image_uuid",
            ty: Ty::Uuid,
            doc: "Image UUID of the secondary in this slot (zero when empty).",
        },
        Field {
            name: "location",
            ty: Ty::Str(Some(format::MAX_LOCATION)),
            doc: "The path as the administrator gave it.",
        },
        Field {
            name: "canonical",
            ty: Ty::Str(Some(format::MAX_LOCATION)),
            doc: "The canonical path at attach time, used when location is relative.",
        },
        Field {
            name: "state",
            ty: Ty::Enum(&LEG_STATE),
            doc: "State of the slot.",
        },
        Field {
            name: "reason",
            ty: Ty::Str(Some(format::MAX_TEXT)),
            doc: "Why the leg is fractured (administrator text or a summary of the error); \
                  longer text is cut on a character boundary.",
        },
        Field {
            name: "last_error",
            ty: Ty::Str(Some(format::MAX_TEXT)),
            doc: "The last I/O error seen on this leg, with its offset; cut like reason.",
        },
        Field {
            name: "attached_at",
            ty: Ty::U64,
            doc: "Unix time (seconds) of the attach.",
        },
        Field {
            name: "state_changed_at",
            ty: Ty::U64,
            doc: "Unix time (seconds) of the last change of state.",
        },
        Field {
            name: "fractured_at",
            ty: Ty::Opt(&Ty::U64),
            doc: "Unix time (seconds) of the fracture, while fractured.",
        },
        Field {
            name: "fracture_generation",
            ty: Ty::U64,
            doc: "Mirror generation when the leg stopped receiving writes (0 if never).",
        },
    ],
};

static HISTORY_ENTRY: StructDoc = StructDoc {
    name: "HistoryEntry",
    doc: "One generation an image went through.",
    fields: &[
        Field {
            name: "generation",
            ty: Ty::U64,
            doc: "The generation number.",
        },
        Field {
            name: "id",
            ty: Ty::U64,
            doc: "Random identifier of this generation: two images that share an id went \
                  through the same generation (counters alone could collide after a split).",
        },
        Field {
            name: "at",
            ty: Ty::U64,
            doc: "Unix time (seconds).",
        },
        Field {
            name: "event",
            ty: Ty::Str(Some(format::MAX_EVENT)),
            doc: "What happened, cut to {MAX_EVENT} bytes.",
        },
    ],
};

static VERIFY_RECORD: StructDoc = StructDoc {
    name: "VerifyRecord",
    doc: "The result of the last verify.",
    fields: &[
        Field {
            name: "started_at",
            ty: Ty::U64,
            doc: "Unix time (seconds).",
        },
        Field {
            name: "finished_at",
            ty: Ty::U64,
            doc: "Unix time (seconds).",
        },
        Field {
            name: "cursor",
            ty: Ty::U64,
            doc: "Region where the next budgeted verify continues (0 after a complete pass).",
        },
        Field {
            name: "result",
            ty: Ty::Str(None),
            doc: "\"clean\", \"differences\", \"repaired\" or \"partial\".",
        },
        Field {
            name: "mismatched_regions",
            ty: Ty::U64,
            doc: "Regions found different.",
        },
        Field {
            name: "compared_bytes",
            ty: Ty::U64,
            doc: "Bytes compared.",
        },
        Field {
            name: "last_full_pass_at",
            ty: Ty::Opt(&Ty::U64),
            doc: "Unix time (seconds) of the last verify that covered the whole data area.",
        },
    ],
};

static RESYNC_RECORD: StructDoc = StructDoc {
    name: "ResyncRecord",
    doc: "The result of the last resync.",
    fields: &[
        Field {
            name: "finished_at",
            ty: Ty::U64,
            doc: "Unix time (seconds).",
        },
        Field {
            name: "slots",
            ty: Ty::Vec(&Ty::U32, Count::Any),
            doc: "The slots resynced.",
        },
        Field {
            name: "regions_copied",
            ty: Ty::U64,
            doc: "Regions copied.",
        },
        Field {
            name: "bytes_copied",
            ty: Ty::U64,
            doc: "Bytes copied.",
        },
    ],
};

static RECOVERY_RECORD: StructDoc = StructDoc {
    name: "RecoveryRecord",
    doc: "The last crash recovery.",
    fields: &[
        Field {
            name: "at",
            ty: Ty::U64,
            doc: "Unix time (seconds).",
        },
        Field {
            name: "regions",
            ty: Ty::U64,
            doc: "Write-intent regions found after an unclean stop and merged into the \
                  fracture bitmaps.",
        },
    ],
};

static LEG_TY: Ty = Ty::Struct(&LEG);
static HISTORY_TY: Ty = Ty::Struct(&HISTORY_ENTRY);
static VERIFY_TY: Ty = Ty::Struct(&VERIFY_RECORD);
static RESYNC_TY: Ty = Ty::Struct(&RESYNC_RECORD);
static RECOVERY_TY: Ty = Ty::Struct(&RECOVERY_RECORD);

/// The superblock payload, format 1.0, field by field in encoding order.
static SUPERBLOCK: StructDoc = StructDoc {
    name: "Superblock",
    doc: "The payload of a superblock copy.",
    fields: &[
        Field {
            name: "mirror_uuid",
            ty: Ty::Uuid,
            doc: "Identifies the mirror: the same on the primary and every secondary.",
        },
        Field {
            name: "image_uuid",
            ty: Ty::Uuid,
            doc: "Identifies this image.",
        },
        Field {
            name: "role",
            ty: Ty::Enum(&ROLE),
            doc: "This image's role.",
        },
        Field {
            name: "generation",
            ty: Ty::U64,
            doc: "Bumped on every change of mirror state (attach, fracture, resync done, \
                  recovery, promote ...).",
        },
        Field {
            name: "created_at",
            ty: Ty::U64,
            doc: "Unix time (seconds) the image was created.",
        },
        Field {
            name: "geometry",
            ty: Ty::Struct(&GEOMETRY),
            doc: "The layout of the image.",
        },
        Field {
            name: "primary_uuid",
            ty: Ty::Uuid,
            doc: "Image UUID of the primary this image belongs to (its own on the primary).",
        },
        Field {
            name: "primary_location",
            ty: Ty::Str(None),
            doc: "The primary's path as last recorded (empty on the primary).",
        },
        Field {
            name: "legs",
            ty: Ty::Vec(&LEG_TY, Count::Slots),
            doc: "The leg table: entry s describes slot s.",
        },
        Field {
            name: "in_sync_generation",
            ty: Ty::U64,
            doc: "On a secondary: the last mirror generation at which it was known in sync \
                  (0: never).",
        },
        Field {
            name: "history",
            ty: Ty::Vec(&HISTORY_TY, Count::AtMost(format::MAX_HISTORY)),
            doc: "Recent generations this image went through, oldest first.",
        },
        Field {
            name: "last_verify",
            ty: Ty::Opt(&VERIFY_TY),
            doc: "The last verify.",
        },
        Field {
            name: "last_resync",
            ty: Ty::Opt(&RESYNC_TY),
            doc: "The last resync.",
        },
        Field {
            name: "last_recovery",
            ty: Ty::Opt(&RECOVERY_TY),
            doc: "The last crash recovery.",
        },
    ],
};

/// Format versions, oldest first: (major, minor, first mirrorctl release, what changed).
/// The unit tests require the last entry to be the version this code writes.
const VERSION_HISTORY: &[(u16, u16, &str, &str)] = &[(1, 0, "0.1.0", "first version.")];

impl Ty {
    /// Encoded size when it does not depend on the value.
    fn fixed_size(&self) -> Option<usize> {
        match self {
            Ty::U32 | Ty::Enum(_) => Some(4),
            Ty::U64 => Some(8),
            Ty::Uuid => Some(16),
            Ty::Str(_) | Ty::Vec(..) | Ty::Opt(_) => None,
            Ty::Struct(s) => s.fields.iter().map(|f| f.ty.fixed_size()).sum(),
        }
    }

    fn name(&self) -> String {
        match self {
            Ty::U32 => "u32".into(),
            Ty::U64 => "u64".into(),
            Ty::Uuid => "[u8; 16]".into(),
            Ty::Str(_) => "String".into(),
            Ty::Vec(t, _) => format!("Vec<{}>", t.name()),
            Ty::Opt(t) => format!("Option<{}>", t.name()),
            Ty::Struct(s) => s.name.into(),
            Ty::Enum(e) => e.name.into(),
        }
    }

    /// How a value of variable size is laid out, for the field's description.
    fn encoding_note(&self) -> Option<String> {
        Some(match self {
            Ty::Str(Some(max)) => format!("A u64 length n (at most {max}), then n bytes."),
            Ty::Str(None) => "A u64 length n, then n bytes.".into(),
            Ty::Vec(t, count) => {
                let n = match count {
                    Count::Slots => format!("n = geometry.slots, at most {}", layout::MAX_SLOTS),
                    Count::AtMost(max) => format!("at most {max}"),
                    Count::Any => "n".into(),
                };
                let each = match t.fixed_size() {
                    Some(size) => format!("{} ({size} bytes each)", t.name()),
                    None => t.name(),
                };
                format!("A u64 count n ({n}), then n entries of type {each}.")
            }
            Ty::Opt(t) => format!(
                "A u8 tag: 0 (none), or 1 followed by the {}{}.",
                t.name(),
                t.fixed_size()
                    .map_or_else(String::new, |n| format!(" ({n} bytes)"))
            ),
            Ty::Enum(e) => format!("A u32 variant index, see {} below.", e.name),
            Ty::Struct(s) => format!("See {} below.", s.name),
            _ => return None,
        })
    }

    fn children(&self, out: &mut Vec<Ty>) {
        match self {
            Ty::Vec(t, _) | Ty::Opt(t) => {
                out.push(**t);
                t.children(out);
            }
            Ty::Struct(s) => {
                for f in s.fields {
                    out.push(f.ty);
                    f.ty.children(out);
                }
            }
            _ => {}
        }
    }
}

/// Offsets of a struct's fields from its start, while they do not depend on the contents.
fn fixed_offsets(s: &StructDoc) -> Vec<Option<usize>> {
    let mut at = Some(0usize);
    s.fields
        .iter()
        .map(|f| {
            let here = at;
            at = at.and_then(|a| f.ty.fixed_size().map(|n| a + n));
            here
        })
        .collect()
}

/// Payload offset of a top-level field of the superblock, if fixed.
fn payload_offset(field: &str) -> Option<usize> {
    let i = SUPERBLOCK.fields.iter().position(|f| f.name == field)?;
    fixed_offsets(&SUPERBLOCK)[i]
}

/// Every struct and enum reachable from the superblock, in order of first use.
fn nested_types() -> (Vec<&'static StructDoc>, Vec<&'static EnumDoc>) {
    let mut all = Vec::new();
    Ty::Struct(&SUPERBLOCK).children(&mut all);
    let (mut structs, mut enums): (Vec<&'static StructDoc>, Vec<&'static EnumDoc>) =
        (Vec::new(), Vec::new());
    for t in all {
        match t {
            Ty::Struct(s) if !structs.iter().any(|x| std::ptr::eq(*x, s)) => structs.push(s),
            Ty::Enum(e) if !enums.iter().any(|x| std::ptr::eq(*x, e)) => enums.push(e),
            _ => {}
        }
    }
    (structs, enums)
}

// ---------------------------------------------------------------------------------------
// mirrorctl-format(5)

/// The example of the worked-example section.
const EXAMPLE_DATA_SIZE: u64 = 1 << 30;

fn struct_table(r: &mut Roff, s: &StructDoc, base: Option<usize>) {
    let offsets = fixed_offsets(s);
    let rows: Vec<Vec<String>> = s
        .fields
        .iter()
        .zip(offsets)
        .map(|(f, off)| {
            let off = match (off, base) {
                (Some(o), Some(b)) => format!("{} (+{o})", b + o),
                (Some(o), None) => o.to_string(),
                (None, _) => "var.".to_string(),
            };
            let size =
                f.ty.fixed_size()
                    .map_or_else(|| "var.".to_string(), |n| n.to_string());
            vec![off, size, f.name.to_string(), f.ty.name()]
        })
        .collect();
    r.table_with(
        &["l", "l", "l", "l"],
        &["Offset", "Size", "Field", "Type"],
        &rows,
    );
    for f in s.fields {
        let mut text = f.doc.to_string();
        if let Some(enc) = f.ty.encoding_note() {
            text.push(' ');
            text.push_str(&enc);
        }
        r.tp(f.name, &text);
    }
}

fn format_page() -> String {
    let mut r = Roff::default();
    let hdr = format::COPY_HEADER_LEN;
    // Tell man(1) to run tbl.
    r.raw("'\\\" t");
    r.raw(&title_line(FORMAT_PAGE, "5", "File Formats"));
    r.sh("NAME");
    r.text(&format!(
        "{FORMAT_PAGE} - on-disk format of mirrorctl images (format {}.{})",
        format::FORMAT_MAJOR,
        format::FORMAT_MINOR
    ));

    r.sh("DESCRIPTION");
    r.para(
        "Every image of a mirror, the primary and each secondary, is a regular file or a block \
         device that starts with the same metadata area: two superblock copies, then the \
         bitmap area. The data area follows at the same offset on every leg, so region N \
         means the same bytes everywhere, and a secondary can be identified, re-attached \
         without a full copy, or promoted to primary.",
    );
    r.para(
        "This page describes format {FORMAT_MAJOR}.{FORMAT_MINOR}. All offsets and sizes are \
         in bytes; offsets are from the start of the image unless stated otherwise. All \
         integers are little-endian. It is generated from the constants and types of the \
         mirrorctl source (src/layout.rs, src/format.rs), so it matches the code it was \
         built from.",
    );

    // ---- layout
    r.sh("IMAGE LAYOUT");
    r.table_with(
        &["lw(20)", "lw(17)", "lx"],
        &["Offset", "Size", "Contents"],
        &[
            vec![
                bytes(layout::SB_OFFSETS[0]),
                bytes(layout::SB_COPY_SIZE),
                "Superblock copy A.".into(),
            ],
            vec![
                bytes(layout::SB_OFFSETS[1]),
                bytes(layout::SB_COPY_SIZE),
                "Superblock copy B.".into(),
            ],
            vec![
                bytes(layout::BITMAP_AREA_OFFSET),
                "bitmap_stride".into(),
                "Bitmap 0: the write-intent bitmap.".into(),
            ],
            vec![
                format!("{} + (1 + s) * bitmap_stride", layout::BITMAP_AREA_OFFSET),
                "bitmap_stride".into(),
                "Bitmap 1 + s: the fracture bitmap of slot s, for s = 0 to slots - 1.".into(),
            ],
            vec![
                format!(
                    "{} + (1 + slots) * bitmap_stride",
                    layout::BITMAP_AREA_OFFSET
                ),
                "up to data_offset".into(),
                "Padding: unused; mirrorctl neither reads nor writes it.".into(),
            ],
            vec![
                "data_offset".into(),
                "data_size".into(),
                "The data area: region r is data area bytes r * region_size up to \
                 (r + 1) * region_size (the last region may be short)."
                    .into(),
            ],
        ],
    );
    r.para(
        "The geometry (stored in every superblock, see Geometry below) follows from data_size, \
         region_size and slots:",
    );
    r.example(&[
        "region_count  = ceil(data_size / region_size)".into(),
        fill("bitmap_stride = ceil(ceil(region_count / {BITS_PER_BYTE}) / {PAGE}) * {PAGE}"),
        fill("bitmap_offset = {BITMAP_AREA_OFFSET}"),
        fill(
            "data_offset   = ceil(({BITMAP_AREA_OFFSET} + (1 + slots) * bitmap_stride) \
             / {DATA_ALIGN}) * {DATA_ALIGN}",
        ),
        "image length >= data_offset + data_size".into(),
    ]);
    r.para(
        "region_size is a power of two from {MIN_REGION_SIZE~} to {MAX_REGION_SIZE~} (default \
         {DEFAULT_REGION_SIZE~}); slots is 1 to {MAX_SLOTS} (default {DEFAULT_SLOTS}); \
         data_size is a non-zero multiple of {DATA_GRANULE~}. Each bitmap starts on a \
         {PAGE~} page boundary and the data area on a {DATA_ALIGN~} boundary. An image \
         shorter than data_offset + data_size is reported as truncated.",
    );

    // ---- worked example
    r.ss("Worked example");
    let rs = layout::DEFAULT_REGION_SIZE;
    let slots = layout::DEFAULT_SLOTS;
    let g = Geometry::for_data_size(EXAMPLE_DATA_SIZE, rs, slots)
        .expect("the example geometry is valid");
    r.para(&format!(
        "A data area of {}, {} regions and {slots} slots:",
        bytes(EXAMPLE_DATA_SIZE),
        bytes(rs)
    ));
    let mut rows = vec![
        vec![
            "region_count".to_string(),
            g.region_count.to_string(),
            format!("ceil({} / {})", g.data_size, g.region_size),
        ],
        vec![
            "bitmap_stride".into(),
            bytes(g.bitmap_stride),
            format!(
                "{} bytes of bits, rounded up to a multiple of {}",
                g.region_count.div_ceil(u8::BITS as u64),
                layout::PAGE
            ),
        ],
        vec![
            "write-intent bitmap".into(),
            bytes(g.bitmap(layout::BitmapId::WriteIntent)),
            "bitmap 0, at bitmap_offset".into(),
        ],
    ];
    for s in 0..g.slots {
        let off = g.bitmap(layout::BitmapId::Fracture(layout::SlotIdx(s)));
        rows.push(vec![
            format!("fracture bitmap, slot {s}"),
            bytes(off),
            format!("bitmap {}", 1 + s),
        ]);
    }
    rows.push(vec![
        "end of the bitmaps".into(),
        bytes(g.bitmap_area().end),
        format!(
            "{} + {} * {}",
            g.bitmap_offset,
            1 + g.slots as u64,
            g.bitmap_stride
        ),
    ]);
    rows.push(vec![
        "data_offset".into(),
        bytes(g.data_offset),
        format!("rounded up to a multiple of {}", layout::DATA_ALIGN),
    ]);
    rows.push(vec![
        "image length".into(),
        bytes(g.total_len()),
        "data_offset + data_size".into(),
    ]);
    r.table(&["Item", "Offset or value", "How"], &rows);

    // ---- superblock copies
    r.sh("SUPERBLOCK COPIES");
    r.para(
        "Each superblock copy is a {COPY_HEADER_LEN}-byte header followed by the payload. A \
         writer pads the copy with zeros to a multiple of {PAGE} bytes; the rest of the \
         {SB_COPY_SIZE~} reserved for the copy is ignored (zero after create). The header:",
    );
    let mut at = 0usize;
    let mut rows = Vec::new();
    for f in header_fields() {
        rows.push(vec![
            at.to_string(),
            f.size.to_string(),
            f.name.to_string(),
            f.doc.to_string(),
        ]);
        at += f.size;
    }
    assert_eq!(at, hdr, "the header fields fill the header");
    rows.push(vec![
        hdr.to_string(),
        "n".into(),
        "payload".into(),
        "The superblock, encoded as described under PAYLOAD.".into(),
    ]);
    r.table(&["Offset", "Size", "Field", "Contents"], &rows);

    r.ss("Reading");
    r.para(
        "A reader reads both copies ({SB_COPY_SIZE} bytes at offsets {SB_A} and {SB_B}) and \
         checks each one in this order, before the payload is decoded:",
    );
    r.bullet("the magic (no magic: the copy was never written);");
    r.bullet("payload_len, which must be at most {MAX_PAYLOAD};");
    r.bullet(
        "the checksum (a torn or corrupted write, including a torn version field, shows up \
         here);",
    );
    r.bullet(
        "the major version: a copy of another major than {FORMAT_MAJOR} is refused with a \
         message naming its version (upgrade mirrorctl). Any minor version of major \
         {FORMAT_MAJOR} is accepted, including a newer one: a newer minor only appends fields \
         to the end of the payload, and a reader ignores trailing payload bytes it does not \
         know.",
    );
    r.para(
        "Then the payload is decoded; its geometry must be consistent (see IMAGE LAYOUT) and \
         the leg table must have exactly slots entries. Of the copies that pass, the one with \
         the higher seq is used (copy A when equal). One damaged copy is survivable: it is \
         rewritten by the next commit. If neither copy passes, the image is unreadable; if \
         neither has the magic, it is not a mirrorctl image.",
    );
    r.ss("Writing");
    r.para(
        "A commit encodes the new superblock with the current seq + 1 and writes it to the \
         copy that does not hold the current superblock, then syncs the device. Until that \
         sync completes the current copy stays valid, so a torn write falls back to the state \
         before the commit. A writer always writes format {FORMAT_MAJOR}.{FORMAT_MINOR}; fields \
         of a newer minor that it read are not written back.",
    );
    r.para(
        "A new image is formatted by zeroing and syncing the whole superblock area (offsets \
         {SB_A} to {BITMAP_AREA_OFFSET}) first, so a crash part-way leaves no header rather \
         than a mix of old and new; then copy A is written with seq 1 and copy B with seq 2, \
         and the device is synced.",
    );

    // ---- payload
    r.sh("PAYLOAD");
    r.ss("Encoding");
    r.para(
        "The payload is the superblock encoded with bincode 2.0.1 in its standard \
         configuration with little-endian fixed-width integers:",
    );
    r.bullet("u32 and u64 are 4 and 8 bytes, little-endian;");
    r.bullet("[u8; 16] (UUIDs) is 16 raw bytes;");
    r.bullet(
        "String and Vec are a u64 length (bytes for String, elements for Vec) followed by the \
         UTF-8 bytes or the elements, without padding;",
    );
    r.bullet("Option is a u8 tag, 0 for none, or 1 followed by the value;");
    r.bullet(
        "an enum is a u32 variant index (below) followed by the variant's fields (none here);",
    );
    r.bullet("a struct is its fields in order, without padding or names.");
    r.para(
        "Offsets below are payload offsets (add {COPY_HEADER_LEN} for the offset in the copy) \
         where they do not depend on the contents, and \"var.\" after the first field of \
         variable length; sizes are \"var.\" where they depend on the contents.",
    );
    r.ss(SUPERBLOCK.name);
    r.para(SUPERBLOCK.doc);
    struct_table(&mut r, &SUPERBLOCK, None);
    if let Some(geo) = payload_offset("geometry") {
        let data_offset = geo + fixed_offsets(&GEOMETRY)[0].unwrap_or_default();
        r.para(&format!(
            "For example, geometry.data_offset is payload bytes {data_offset} to {}: bytes {} \
             to {} of copy A and {} to {} of the image for copy B.",
            data_offset + 8,
            hdr + data_offset,
            hdr + data_offset + 8,
            layout::SB_OFFSETS[1] as usize + hdr + data_offset,
            layout::SB_OFFSETS[1] as usize + hdr + data_offset + 8,
        ));
    }
    let (structs, enums) = nested_types();
    for s in structs {
        r.ss(s.name);
        r.para(s.doc);
        // A struct at a fixed payload position gets absolute payload offsets.
        let base = SUPERBLOCK
            .fields
            .iter()
            .zip(fixed_offsets(&SUPERBLOCK))
            .find(|(f, _)| matches!(f.ty, Ty::Struct(x) if std::ptr::eq(x, s)))
            .and_then(|(_, o)| o);
        if let Some(b) = base {
            r.para(&format!(
                "At payload offset {b}; the offsets are payload offsets, relative ones in \
                 parentheses."
            ));
        }
        struct_table(&mut r, s, base);
    }
    for e in enums {
        r.ss(e.name);
        r.para(&format!("{} Encoded as a u32 variant index:", e.doc));
        let rows: Vec<Vec<String>> = (e.variants)()
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                vec![
                    i.to_string(),
                    v.name,
                    v.shown.to_string(),
                    v.doc.to_string(),
                ]
            })
            .collect();
        r.table(&["Index", "Variant", "Shown as", "Meaning"], &rows);
    }
    r.ss("Compatibility rules");
    r.bullet(
        "A new minor version only appends fields to the end of the Superblock payload. Fields \
         are never removed, reordered or given another type or meaning, and nested structs \
         and enum variant numbers never change.",
    );
    r.bullet(
        "A field that is no longer used is retired: it is still written (with a neutral \
         value) and read, and its position is never reused for anything else.",
    );
    r.bullet(
        "Because a writer of an older minor drops appended fields on its next commit, an \
         appended field must be safe to lose.",
    );
    r.bullet("Any other change needs a new major version, which older readers refuse.");

    // ---- bitmaps
    r.sh("BITMAPS");
    r.para(
        "Each bitmap has one bit per region: region r is bit r mod 8 (the least significant \
         bit first) of byte floor(r / 8) of the bitmap. Bits for r >= region_count name no \
         region: they are written as zero, never counted or read as pending when set (a stray \
         write, an old tool), and cleared when their page next changes (rule B1). A set bit marks the region; a clear bit means nothing is pending for it. The bitmaps \
         are kept by the primary; every image reserves the area so that a secondary can be \
         promoted.",
    );
    r.tp(
        "Write-intent bitmap (bitmap 0)",
        "A set bit means a write to the region may be in progress, so the legs may differ \
         there. A bit is made durable before any leg is written in its region, and is \
         cleared only after the data written there is durable on every leg that receives \
         writes (in-sync and syncing legs). Regions stay marked while they are being written, \
         so a streaming write costs one metadata sync per window rather than per chunk.",
    );
    r.tp(
        "Fracture bitmap of slot s (bitmap 1 + s)",
        "A set bit means the secondary in slot s may differ from the primary in the region and \
         needs it copied by resync. Writes that a fractured leg does not receive are set in \
         its fracture bitmap durably before the data is written anywhere. When a leg fails, \
         the regions of the write in progress are set in its fracture bitmap durably before \
         its state changes and before the write-intent bits covering them are cleared; in \
         general, fracture bits are durable before the write-intent bits covering the same \
         regions are cleared. Resync \
         clears a bit only after the copied data is durable on the target, and a leg becomes \
         in-sync only when its fracture bitmap is empty. A free slot's fracture bitmap is \
         reset before a new secondary is recorded in the slot.",
    );
    r.tp(
        "Unclean stop",
        "Write-intent bits found set when a mirror is opened mean it was not closed cleanly. \
         Recovery merges (ORs) the write-intent bitmap into the fracture bitmap of every \
         non-empty slot and makes that durable, then records the affected legs as syncing in \
         the superblock, and only then clears the write-intent bitmap. A crash during \
         recovery repeats it. resync then copies exactly those regions.",
    );

    // ---- versions
    r.sh("VERSION HISTORY");
    for (major, minor, release, what) in VERSION_HISTORY {
        r.tp(
            &format!("{major}.{minor} (mirrorctl {release})"),
            &format!("{}{}", &what[..1].to_uppercase(), &what[1..]),
        );
    }

    r.sh("SEE ALSO");
    r.see_also(&[(BIN.to_string(), "1")]);
    r.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{
        HistoryEntry, Leg, RecoveryRecord, ResyncRecord, Superblock, VerifyRecord,
    };
    use serde_json::Value;

    /// A superblock in which every option is set and every list is non-empty.
    fn full_sample() -> Superblock {
        let g = Geometry::for_data_size(3 << 30, 128 * 1024, 3).unwrap();
        let leg = |i: u8, state| Leg {
            image_uuid: [i; 16],
            location: format!("leg-{i}.img"),
            canonical: format!("/srv/leg-{i}.img"),
            state,
            reason: format!("reason {i}"),
            last_error: "EIO at 4096".into(),
            attached_at: 1000 + i as u64,
            state_changed_at: 2000 + i as u64,
            fractured_at: if i % 2 == 0 { Some(3000) } else { None },
            fracture_generation: 40 + i as u64,
        };
        Superblock {
            mirror_uuid: [0xa1; 16],
            image_uuid: [0xb2; 16],
            role: Role::Secondary,
            generation: 0x0102_0304_0506_0708,
            created_at: 1_700_000_000,
            geometry: g,
            primary_uuid: [0xc3; 16],
            primary_location: "/dev/disk/by-id/primary".into(),
            legs: vec![
                leg(1, LegState::InSync),
                leg(2, LegState::FracturedByAdmin),
                leg(3, LegState::Syncing),
            ],
            in_sync_generation: 77,
            history: vec![
                HistoryEntry {
                    generation: 1,
                    id: 0xdead_beef,
                    at: 5,
                    event: "created".into(),
                },
                HistoryEntry {
                    generation: 2,
                    id: 0xfeed,
                    at: 6,
                    event: "attach".into(),
                },
            ],
            last_verify: Some(VerifyRecord {
                started_at: 10,
                finished_at: 11,
                cursor: 12,
                result: "partial".into(),
                mismatched_regions: 13,
                compared_bytes: 14,
                last_full_pass_at: Some(15),
            }),
            last_resync: Some(ResyncRecord {
                finished_at: 20,
                slots: vec![0, 2],
                regions_copied: 21,
                bytes_copied: 22,
            }),
            last_recovery: Some(RecoveryRecord {
                at: 30,
                regions: 31,
            }),
        }
    }

    fn payload_of(sb: &Superblock) -> Vec<u8> {
        let buf = format::encode_copy(sb, 9).unwrap();
        let end = format::peek_len(&buf).unwrap();
        buf[format::COPY_HEADER_LEN..end].to_vec()
    }

    fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize, path: &str) -> &'a [u8] {
        assert!(*pos + n <= buf.len(), "{path}: payload too short");
        let s = &buf[*pos..*pos + n];
        *pos += n;
        s
    }

    fn read_u64(buf: &[u8], pos: &mut usize, path: &str) -> u64 {
        u64::from_le_bytes(take(buf, pos, 8, path).try_into().unwrap())
    }

    /// Decodes `buf` by the documented schema and compares every value with serde's view
    /// of the same superblock (by field name), so a field added, removed, reordered or
    /// retyped in format.rs without updating the schema fails here.
    fn walk(ty: &Ty, buf: &[u8], pos: &mut usize, json: &Value, path: &str) {
        match ty {
            Ty::U32 => {
                let v = u32::from_le_bytes(take(buf, pos, 4, path).try_into().unwrap());
                assert_eq!(json.as_u64(), Some(v as u64), "{path}");
            }
            Ty::U64 => assert_eq!(json.as_u64(), Some(read_u64(buf, pos, path)), "{path}"),
            Ty::Uuid => {
                let raw = take(buf, pos, 16, path);
                let want: Vec<u64> = json
                    .as_array()
                    .unwrap_or_else(|| panic!("{path}: not an array"))
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                let got: Vec<u64> = raw.iter().map(|&b| b as u64).collect();
                assert_eq!(got, want, "{path}");
            }
            Ty::Str(_) => {
                let n = read_u64(buf, pos, path) as usize;
                let s = std::str::from_utf8(take(buf, pos, n, path)).unwrap();
                assert_eq!(json.as_str(), Some(s), "{path}");
            }
            Ty::Vec(t, _) => {
                let n = read_u64(buf, pos, path) as usize;
                let items = json
                    .as_array()
                    .unwrap_or_else(|| panic!("{path}: not an array"));
                assert_eq!(items.len(), n, "{path}: length");
                for (i, item) in items.iter().enumerate() {
                    walk(t, buf, pos, item, &format!("{path}[{i}]"));
                }
            }
            Ty::Opt(t) => match take(buf, pos, 1, path)[0] {
                0 => assert!(json.is_null(), "{path}: expected none"),
                1 => walk(t, buf, pos, json, path),
                tag => panic!("{path}: option tag {tag}"),
            },
            Ty::Enum(e) => {
                let i = u32::from_le_bytes(take(buf, pos, 4, path).try_into().unwrap());
                let variants = (e.variants)();
                let v = variants
                    .get(i as usize)
                    .unwrap_or_else(|| panic!("{path}: variant {i} undocumented"));
                assert_eq!(json.as_str(), Some(v.name.as_str()), "{path}: variant {i}");
            }
            Ty::Struct(s) => {
                let obj = json
                    .as_object()
                    .unwrap_or_else(|| panic!("{path}: not an object"));
                let mut documented: Vec<&str> = s.fields.iter().map(|f| f.name).collect();
                let mut actual: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
                documented.sort_unstable();
                actual.sort_unstable();
                assert_eq!(documented, actual, "{path}: fields of {}", s.name);
                for f in s.fields {
                    walk(&f.ty, buf, pos, &obj[f.name], &format!("{path}.{}", f.name));
                }
            }
        }
    }

    fn check_schema(sb: &Superblock) {
        let payload = payload_of(sb);
        let json = serde_json::to_value(sb).unwrap();
        let mut pos = 0;
        walk(&Ty::Struct(&SUPERBLOCK), &payload, &mut pos, &json, "sb");
        assert_eq!(
            pos,
            payload.len(),
            "the schema does not cover the whole payload"
        );
    }

    #[test]
    fn the_payload_schema_matches_the_encoder_field_by_field() {
        check_schema(&full_sample());
        let mut sb = full_sample();
        sb.last_verify = None;
        sb.last_resync = None;
        sb.last_recovery = None;
        sb.history.clear();
        sb.primary_location.clear();
        check_schema(&sb);
    }

    #[test]
    fn every_enum_variant_is_documented_with_its_encoded_index() {
        let role_at = payload_offset("role").unwrap();
        for (i, v) in role_variants().into_iter().enumerate() {
            let mut sb = full_sample();
            sb.role = serde_json::from_value(Value::String(v.name.clone())).unwrap();
            let p = payload_of(&sb);
            assert_eq!(
                p[role_at..role_at + 4],
                (i as u32).to_le_bytes(),
                "{}",
                v.name
            );
        }
        for v in leg_state_variants() {
            let mut sb = full_sample();
            sb.legs[0].state = serde_json::from_value(Value::String(v.name.clone())).unwrap();
            check_schema(&sb);
        }
    }

    #[test]
    fn fixed_payload_offsets_hold_the_documented_fields() {
        let sb = full_sample();
        let p = payload_of(&sb);
        let u64_at = |off: usize| u64::from_le_bytes(p[off..off + 8].try_into().unwrap());
        assert_eq!(p[0..16], sb.mirror_uuid);
        assert_eq!(u64_at(payload_offset("generation").unwrap()), sb.generation);
        let geo = payload_offset("geometry").unwrap();
        let goff = fixed_offsets(&GEOMETRY);
        assert_eq!(u64_at(geo + goff[0].unwrap()), sb.geometry.data_offset);
        assert_eq!(u64_at(geo + goff[6].unwrap()), sb.geometry.bitmap_stride);
        let pu = payload_offset("primary_uuid").unwrap();
        assert_eq!(p[pu..pu + 16], sb.primary_uuid);
        let pl = payload_offset("primary_location").unwrap();
        assert_eq!(u64_at(pl), sb.primary_location.len() as u64);
        assert!(payload_offset("legs").is_none());
    }

    #[test]
    fn the_documented_copy_header_matches_encode_copy() {
        let sb = full_sample();
        let buf = format::encode_copy(&sb, 0x1122_3344_5566_7788).unwrap();
        let end = format::peek_len(&buf).unwrap();
        let payload = &buf[format::COPY_HEADER_LEN..end];
        let mut at = 0;
        for f in header_fields() {
            let bytes = &buf[at..at + f.size];
            match f.name {
                "magic" => assert_eq!(bytes, format::MAGIC),
                "major" => assert_eq!(bytes, format::FORMAT_MAJOR.to_le_bytes()),
                "minor" => assert_eq!(bytes, format::FORMAT_MINOR.to_le_bytes()),
                "payload_len" => assert_eq!(bytes, (payload.len() as u32).to_le_bytes()),
                "seq" => assert_eq!(bytes, 0x1122_3344_5566_7788u64.to_le_bytes()),
                "reserved" => assert!(bytes.iter().all(|&b| b == 0)),
                "checksum" => {
                    let mut h = blake3::Hasher::new();
                    h.update(&buf[..checksum_offset()]);
                    h.update(payload);
                    assert_eq!(bytes, h.finalize().as_bytes());
                }
                other => panic!("header field {other} not checked"),
            }
            at += f.size;
        }
        assert_eq!(at, format::COPY_HEADER_LEN);
        assert_eq!(buf.len() as u64 % layout::PAGE, 0);
    }

    #[test]
    fn the_version_history_ends_with_the_version_written() {
        let &(major, minor, _, _) = VERSION_HISTORY.last().unwrap();
        assert_eq!((major, minor), (format::FORMAT_MAJOR, format::FORMAT_MINOR));
    }

    #[test]
    fn the_format_page_has_no_unfilled_placeholders() {
        let page = format_page();
        for (name, _) in constants() {
            assert!(!page.contains(&format!("{{{name}")), "{name}");
        }
        assert!(!page.contains("{MAGIC}"));
    }

    #[test]
    fn after_help_becomes_an_exit_status_section() {
        let mut r = Roff::default();
        r.after_help(crate::cli::AFTER_HELP);
        assert!(r.out.starts_with(".SH \"EXIT STATUS\"\n"), "{}", r.out);
        assert!(r
            .out
            .contains(".TP\n\\fB5\\fR\nbusy: another mirrorctl holds"));
    }
}
