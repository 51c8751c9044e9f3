//! `mirrorctl-format(5)`: the on-disk format page, rendered from the constants of
//! `format::layout` and `format` and from the payload schema in `format::schema`.

use super::roff::{title_line, Roff};
use super::{BIN, FORMAT_PAGE};
use crate::format;
use crate::format::layout::{self, Geometry};
use crate::format::schema::*;

// ---------------------------------------------------------------------------------------
// Numbers of the format, by name, for the page text

/// `1048576 (1 MiB)`: a byte count with its exact binary unit when it has one.
pub(super) fn bytes(n: u64) -> String {
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

pub(super) fn magic_text() -> String {
    String::from_utf8_lossy(&format::MAGIC).into_owned()
}

/// The named numbers a page text may use: `{NAME}` is the decimal value, `{NAME~}` adds the
/// binary unit (for byte counts).
pub(super) fn constants() -> Vec<(&'static str, u64)> {
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
        ("MAX_EVENTS", format::journal::MAX_EVENTS as u64),
        ("MAX_DETAIL", format::journal::MAX_DETAIL as u64),
        (
            "MAX_CLIENT_EVENTS",
            format::journal::MAX_CLIENT_EVENTS as u64,
        ),
    ]
}

/// Replaces `{NAME}` / `{NAME~}` (see [`constants`]) and `{MAGIC}` in `text`.
pub(super) fn fill(text: &str) -> String {
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

/// The data size of the worked-example section.
const EXAMPLE_DATA_SIZE: u64 = 1 << 30;

pub(super) fn struct_table(r: &mut Roff, s: &StructDoc, base: Option<usize>) {
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

pub(super) fn format_page() -> String {
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
         mirrorctl source (src/format/layout.rs, src/format/superblock.rs, src/format/schema.rs), so it matches the code it was \
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
                "Padding. From format 1.3 a primary's written map (see WrittenMap and \
                 BITMAPS) starts here, at written_map.offset, when the superblock names \
                 one; the rest is unused: mirrorctl neither reads nor writes it."
                    .into(),
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
    if let Some(m) = g.written_map() {
        rows.push(vec![
            "written map".into(),
            bytes(m.offset),
            format!(
                "{} bytes, one bit per {} (chunk_size), in the {} bytes left before data_offset",
                m.size(&g),
                bytes(m.chunk_size),
                g.data_offset - m.offset
            ),
        ]);
    }
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
         before the commit. A writer writes format {FORMAT_MAJOR}.{FORMAT_MINOR} (a primary's \
         superblock, with its event journal) or {FORMAT_MAJOR}.0 (one without a journal, a \
         secondary's: byte for byte what format {FORMAT_MAJOR}.0 wrote); fields of a newer \
         minor that it read are not written back.",
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
    // ---- the journal (1.1)
    r.ss("The event journal (format 1.1)");
    r.para(
        "A primary's payload goes on after the last Superblock field with its event journal, \
         and its copy header says minor 1; a payload without one (a secondary's, or one \
         written by format 1.0) ends with the Superblock fields and its header says minor 0. \
         A 1.0 reader decodes the Superblock fields and ignores the journal. Events are added \
         by the command that changes the mirror and are written in the same commit as the \
         state change they report, so after a crash both or neither are there. The payload \
         must fit in {MAX_PAYLOAD} bytes: a writer drops events as far as needed, the oldest \
         client-connected events first, then the oldest of any kind (with a leg table of \
         {MAX_SLOTS} slots and the longest paths, a few hundred events remain; with short \
         paths, the newest {MAX_EVENTS}). Client-connected events keep at most \
         {MAX_CLIENT_EVENTS} places (a writer drops the oldest one when it adds another past \
         that), so connections never push the state events out; sequence numbers may then \
         skip the dropped ones.",
    );
    r.ss(JOURNAL.name);
    r.para(JOURNAL.doc);
    struct_table(&mut r, &JOURNAL, None);
    // ---- the written map (1.3)
    r.ss("The written map (format 1.3)");
    r.para(
        "A primary's payload goes on after the journal with the written map's place, and its \
         copy header says minor 3: one u8 tag, 0 when the image keeps no map, or 1 followed \
         by a WrittenMap. A 1.2 reader stops after the journal and ignores it; a 1.2 writer \
         drops it on its next commit, and a payload without it (written by 1.2 or earlier) \
         has no map. Without a map every region counts as written. create writes the map (all \
         clear, or set where a regular file already holds data, or all set after --force over \
         an image of unknown contents) before the header that names it.",
    );
    r.ss(WRITTEN_MAP.name);
    r.para(WRITTEN_MAP.doc);
    struct_table(&mut r, &WRITTEN_MAP, None);
    r.ss(EVENT.name);
    r.para(EVENT.doc);
    struct_table(&mut r, &EVENT, None);
    r.ss("Event kinds");
    r.para("The kind field of an Event, and the name `mirrorctl events` shows:");
    let rows: Vec<Vec<String>> = format::journal::KINDS
        .iter()
        .enumerate()
        .map(|(i, (_, name, doc))| vec![i.to_string(), name.to_string(), doc.to_string()])
        .collect();
    r.table(&["Code", "Name", "Meaning"], &rows);
    r.para(
        "Codes are never reused or renumbered; a new kind gets the next code. replaced-primary \
         is not stored in the replaced image (nothing is written to it, rule P6): `mirrorctl \
         events` reports it when it finds the condition.",
    );
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
         there. When bits are set and cleared is rules W1, W2, W5 and W6 (src/engine/write.rs). \
         Regions stay marked while they are being written, so a streaming write costs one \
         metadata sync per window rather than per chunk.",
    );
    r.tp(
        "Fracture bitmap of slot s (bitmap 1 + s)",
        "A set bit means the secondary in slot s may differ from the primary in the region and \
         needs it copied by resync: set under rules W3 and W4 (writes a leg did not receive, \
         a leg that failed), A2 and A3 (attach), R1 (recovery), V1 (differences verify \
         found) and P3 (promotion); cleared under S1 and S2 (src/engine/resync.rs) and D2 \
         (detach).",
    );
    r.tp(
        "Written map (format 1.3, after the last bitmap)",
        "One bit per chunk of chunk_size bytes of the data area (chunk c is bit c mod 8 of \
         byte floor(c / 8)); bits past the last chunk name none and are ignored. A set bit \
         means a write may have reached the chunk: it is set durably in the same flush as \
         the write-intent bits of that write, before any leg is written there (rule W7, \
         src/engine/write.rs), and never cleared; zeroing and trim requests count as writes. \
         A clear bit means no write ever reached the chunk: its bytes are whatever the device \
         held before create, they are not the mirror's data, and attach and verify skip the \
         chunk (legs may differ there). Only the primary keeps one: a secondary's header has \
         none, and a promoted secondary counts every region as written. A writer older than \
         1.3 does not set its bits: an image with a map must not be written by an older \
         mirrorctl that does not commit its header first (it would leave data in chunks the \
         map calls never written); one that commits drops the map.",
    );
    r.tp(
        "Unclean stop",
        "Write-intent bits found set when a mirror is opened mean it was not closed cleanly; \
         the next command that changes the mirror recovers under rules R1 to R3 \
         (src/engine/recover.rs), and resync then copies exactly those regions.",
    );

    // ---- media
    r.sh("MEDIA ASSUMPTIONS");
    r.para(
        "What the code assumes of the storage under an image, and what a failure of each \
         assumption would mean. The storage model the crash tests run on \
         (src/device/sim.rs) is built to these assumptions and no stronger ones.",
    );
    r.tp(
        "Sector atomicity",
        "Nothing larger than a 512-byte sector is assumed to be written atomically; the \
         storage model tears an interrupted write at 512-byte sectors. A superblock copy \
         spans many sectors, so any copy may be torn: each copy carries a blake3 checksum over \
         its header and payload, and commits alternate between the copies (rule F2), so a \
         torn copy fails its checksum and the other, previous copy is used. A new header is \
         written over a zeroed and synced superblock area (F1), so a crash part-way leaves no \
         header rather than a mix of an old and a new one.",
    );
    r.tp(
        "Write ordering",
        "No order between writes is assumed without a sync: whatever must be durable before \
         something else is written is synced first. At a power cut the storage model keeps \
         any subset of the writes not yet synced (none, all, or a random half).",
    );
    r.tp(
        "fdatasync",
        "On a regular file or a block device, fdatasync(2) is assumed to make every completed \
         write durable, with the file-size metadata needed to read it back, and to flush a \
         disk's volatile write cache. On an NBD export the same role is played by \
         NBD_CMD_FLUSH (or FUA writes where the server offers no flush).",
    );
    r.tp(
        "msync",
        "Bitmap pages of a file or block device are mapped and made durable with \
         msync(MS_SYNC) over the span of the pages changed. On a regular file a page is \
         allocated (fallocate) before its first write, so a full file system is an error \
         rather than a SIGBUS; an I/O error on a mapped page does arrive as SIGBUS, which ends \
         the command with exit status 4 before anything more is acknowledged.",
    );
    r.tp(
        "A torn bitmap page",
        "Bitmap pages carry no checksum: a torn page mixes old and new bits of one flush. \
         Either value of each bit is safe, because bits are set durably before the data they \
         protect is written (W1, W3, W4: a lost set bit belongs to a write that never \
         started) and cleared only after that data is durable (W2, S1: a clear that is lost \
         only copies a region again). Bits past the last region are ignored (B1).",
    );
    r.tp(
        "A torn superblock on a secondary",
        "A secondary's header is rewritten only on state changes, with the same F1 and F2 \
         rules; a secondary whose header cannot be read is fractured, never written.",
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

    #[test]
    fn the_format_page_has_no_unfilled_placeholders() {
        let page = format_page();
        for (name, _) in constants() {
            assert!(!page.contains(&format!("{{{name}")), "{name}");
        }
        assert!(!page.contains("{MAGIC}"));
    }
}
