//! The superblock payload schema, field by field, that `mirrorctl-format(5)` is generated
//! from (cli/doc/format_page.rs); the tests below walk the real encoder's output with it,
//! so the page cannot drift from the code.

use crate::format::layout;
use crate::format::{self, LegState, Role};

// ---------------------------------------------------------------------------------------
// The superblock copy header

pub struct HeaderField {
    pub name: &'static str,
    pub size: usize,
    pub doc: &'static str,
}

/// Offset of the checksum in the copy header: it fills the end of the header.
pub fn checksum_offset() -> usize {
    format::COPY_HEADER_LEN - blake3::OUT_LEN
}

/// The copy header, field by field (sizes from the constants' types; see the unit test
/// that checks them against `format::encode_copy`).
pub fn header_fields() -> Vec<HeaderField> {
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
pub enum Count {
    /// Exactly `geometry.slots` entries.
    Slots,
    /// At most this many.
    AtMost(usize),
    Any,
}

#[derive(Clone, Copy)]
pub enum Ty {
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

pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub doc: &'static str,
}

pub struct StructDoc {
    pub name: &'static str,
    pub doc: &'static str,
    pub fields: &'static [Field],
}

pub struct Variant {
    /// The Rust variant name.
    pub name: String,
    /// How `mirrorctl status` shows it.
    pub shown: &'static str,
    pub doc: &'static str,
}

pub struct EnumDoc {
    pub name: &'static str,
    pub doc: &'static str,
    /// Variants in declaration order: variant index = position.
    pub variants: fn() -> Vec<Variant>,
}

pub fn role_variants() -> Vec<Variant> {
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

pub fn leg_state_variants() -> Vec<Variant> {
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
                                           no writes; the regions written since, and those it \
                                           may have missed before (written since the last flush \
                                           that completed on every leg, or in flight), are set \
                                           in its fracture bitmap."
            }
            LegState::FracturedByError => {
                "Stopped after an I/O error: receives no writes; the \
                                           regions written since, and those it may have missed \
                                           before (written since the last flush that completed \
                                           on every leg, or in flight), are set in its fracture \
                                           bitmap."
            }
        },
    })
    .collect()
}

pub static ROLE: EnumDoc = EnumDoc {
    name: "Role",
    doc: "The role of the image holding the superblock.",
    variants: role_variants,
};

pub static LEG_STATE: EnumDoc = EnumDoc {
    name: "LegState",
    doc: "The state of a secondary slot. Writes go to InSync and Syncing legs.",
    variants: leg_state_variants,
};

/// Format 1.3: the written map's place, after the journal, encoded as an Option (tag 0: no
/// map, every region counts as written; tag 1 then these fields).
pub static WRITTEN_MAP: StructDoc = StructDoc {
    name: "WrittenMap",
    doc: "Where a primary's written map lies (see BITMAPS). After the journal, as an option: \
          a u8 tag, 0 (no map: every region counts as written) or 1 followed by these fields.",
    fields: &[
        Field {
            name: "offset",
            ty: Ty::U64,
            doc: "Byte offset of the map: the end of the last bitmap, bitmap_offset + (1 + \
                  slots) * bitmap_stride; the map ends at or before data_offset.",
        },
        Field {
            name: "chunk_size",
            ty: Ty::U64,
            doc: "Bytes of data area per bit: region_size times a power of two, the smallest \
                  for which ceil(ceil(data_size / chunk_size) / 8) rounded up to a multiple of \
                  {PAGE} fits between offset and data_offset.",
        },
    ],
};

pub static GEOMETRY: StructDoc = StructDoc {
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

pub static LEG: StructDoc = StructDoc {
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
            doc: "The path or NBD URI as the administrator gave it; for an nbds URI, with the TLS files given as flags added as its tls-ca=, tls-cert= and tls-key= query parameters.",
        },
        Field {
            name: "canonical",
            ty: Ty::Str(Some(format::MAX_LOCATION)),
            doc: "The canonical path at attach time, used when location is relative; for an NBD URI its canonical form (socket and TLS files as absolute paths), which is what is opened.",
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

pub static HISTORY_ENTRY: StructDoc = StructDoc {
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

pub static VERIFY_RECORD: StructDoc = StructDoc {
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

pub static RESYNC_RECORD: StructDoc = StructDoc {
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

pub static RECOVERY_RECORD: StructDoc = StructDoc {
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

pub static LEG_TY: Ty = Ty::Struct(&LEG);
pub static HISTORY_TY: Ty = Ty::Struct(&HISTORY_ENTRY);
pub static VERIFY_TY: Ty = Ty::Struct(&VERIFY_RECORD);
pub static RESYNC_TY: Ty = Ty::Struct(&RESYNC_RECORD);
pub static RECOVERY_TY: Ty = Ty::Struct(&RECOVERY_RECORD);
pub static U32_TY: Ty = Ty::U32;
pub static EVENT_TY: Ty = Ty::Struct(&EVENT);

/// One journal event (format 1.1).
pub static EVENT: StructDoc = StructDoc {
    name: "Event",
    doc: "One event of the journal.",
    fields: &[
        Field {
            name: "seq",
            ty: Ty::U64,
            doc: "Sequence number: 1 for the journal's first event, then one more for each; never reused.",
        },
        Field {
            name: "at",
            ty: Ty::U64,
            doc: "Unix time (seconds).",
        },
        Field {
            name: "kind",
            ty: Ty::U32,
            doc: "What happened: a code from EVENT KINDS. A reader shows a code it does not know as unknown-N.",
        },
        Field {
            name: "slot",
            ty: Ty::Opt(&U32_TY),
            doc: "The slot the event is about, if any.",
        },
        Field {
            name: "detail",
            ty: Ty::Str(Some(format::journal::MAX_DETAIL)),
            doc: "Details (a fracture's reason or error, a verify's result ...), cut to \
                  {MAX_DETAIL} bytes (96 before format 1.2). An NBD leg is named by its short \
                  form (the URI without its query).",
        },
    ],
};

/// The event journal, appended to the payload after the 1.0 fields (format 1.1).
pub static JOURNAL: StructDoc = StructDoc {
    name: "Journal",
    doc: "The event journal of a primary (format 1.1), encoded right after the Superblock \
          fields in the same payload; a 1.0 payload ends before it.",
    fields: &[
        Field {
            name: "next_seq",
            ty: Ty::U64,
            doc: "The sequence number the next event gets.",
        },
        Field {
            name: "events",
            ty: Ty::Vec(&EVENT_TY, Count::AtMost(format::journal::MAX_EVENTS)),
            doc: "The newest events, oldest first: at most {MAX_EVENTS}, of which at most \
                  {MAX_CLIENT_EVENTS} client-connected ones; client-connected events, then the \
                  oldest of any kind, are dropped as far as needed for the payload to fit in \
                  {MAX_PAYLOAD} bytes.",
        },
    ],
};

/// The superblock payload, format 1.0, field by field in encoding order.
pub static SUPERBLOCK: StructDoc = StructDoc {
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
pub const VERSION_HISTORY: &[(u16, u16, &str, &str)] = &[
    (1, 0, "0.1.0", "first version."),
    (
        1,
        1,
        "0.1.0",
        "the event journal (Journal) after the 1.0 payload of a primary; a superblock \
         without one (a secondary's) is still written as 1.0.",
    ),
    (
        1,
        2,
        "0.1.0",
        "event details (Event.detail) up to 256 bytes instead of 96, so the cause of a \
         failure is kept; the encoding is unchanged (a 1.1 reader reads them), and the journal \
         still keeps only what fits in the payload.",
    ),
    (
        1,
        3,
        "0.1.0",
        "the written map (WrittenMap) after the journal of a primary: one bit per chunk of the \
         data area, set durably before any write can reach the chunk, kept in the padding \
         between the bitmaps and the data area (the geometry is unchanged); attach and verify \
         skip chunks never written. A 1.2 reader ignores it and a 1.2 writer drops it on its \
         next commit (every region then counts as written again). Images without it (made \
         before 1.3, secondaries, promoted secondaries) count every region as written.",
    ),
];

impl Ty {
    /// Encoded size when it does not depend on the value.
    pub fn fixed_size(&self) -> Option<usize> {
        match self {
            Ty::U32 | Ty::Enum(_) => Some(4),
            Ty::U64 => Some(8),
            Ty::Uuid => Some(16),
            Ty::Str(_) | Ty::Vec(..) | Ty::Opt(_) => None,
            Ty::Struct(s) => s.fields.iter().map(|f| f.ty.fixed_size()).sum(),
        }
    }

    pub fn name(&self) -> String {
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
    pub fn encoding_note(&self) -> Option<String> {
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

    pub fn children(&self, out: &mut Vec<Ty>) {
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
pub fn fixed_offsets(s: &StructDoc) -> Vec<Option<usize>> {
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
pub fn payload_offset(field: &str) -> Option<usize> {
    let i = SUPERBLOCK.fields.iter().position(|f| f.name == field)?;
    fixed_offsets(&SUPERBLOCK)[i]
}

/// Every struct and enum reachable from the superblock, in order of first use.
pub fn nested_types() -> (Vec<&'static StructDoc>, Vec<&'static EnumDoc>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::Geometry;
    use crate::format::{
        HistoryEntry, Leg, RecoveryRecord, ResyncRecord, Superblock, VerifyRecord,
    };
    use serde_json::Value;

    /// A superblock in which every option is set and every list is non-empty.
    fn full_sample() -> Superblock {
        let g = Geometry::for_data_size(3 << 30, 128 * 1024, 3).unwrap();
        let leg = |i: u8, state| {
            let mut l = Leg::for_image(
                [i; 16],
                &format!("leg-{i}.img"),
                &format!("/srv/leg-{i}.img"),
                1000 + i as u64,
            )
            .in_state_for_test(state, 2000 + i as u64);
            l.reason = format!("reason {i}");
            l.last_error = "EIO at 4096".into();
            l.fractured_at = if i % 2 == 0 { Some(3000) } else { None };
            l.fracture_generation = 40 + i as u64;
            l
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
            journal: Some(crate::format::journal::Journal {
                next_seq: 43,
                events: vec![
                    crate::format::journal::Event {
                        seq: 41,
                        at: 50,
                        kind: 1,
                        slot: Some(2),
                        detail: "by admin: backup".into(),
                    },
                    crate::format::journal::Event {
                        seq: 42,
                        at: 51,
                        kind: 12,
                        slot: None,
                        detail: String::new(),
                    },
                ],
            }),
            written_map: None,
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
        if let Some(j) = &sb.journal {
            let json = serde_json::to_value(j).unwrap();
            walk(&Ty::Struct(&JOURNAL), &payload, &mut pos, &json, "journal");
            // 1.3: the written map's place, an option.
            let tag = payload[pos];
            pos += 1;
            match &sb.written_map {
                None => assert_eq!(tag, 0, "no written map"),
                Some(m) => {
                    assert_eq!(tag, 1, "a written map");
                    let json = serde_json::to_value(m).unwrap();
                    walk(
                        &Ty::Struct(&WRITTEN_MAP),
                        &payload,
                        &mut pos,
                        &json,
                        "written_map",
                    );
                }
            }
        }
        assert_eq!(
            pos,
            payload.len(),
            "the schema does not cover the whole payload"
        );
    }

    #[test]
    fn the_payload_schema_matches_the_encoder_field_by_field() {
        check_schema(&full_sample());
        let mut with_map = full_sample();
        with_map.written_map = with_map.geometry.written_map();
        assert!(with_map.written_map.is_some());
        check_schema(&with_map);
        let mut sb = full_sample();
        sb.last_verify = None;
        sb.last_resync = None;
        sb.last_recovery = None;
        sb.history.clear();
        sb.primary_location.clear();
        check_schema(&sb);
        // A 1.0 payload (no journal) ends with the Superblock fields.
        sb.journal = None;
        check_schema(&sb);
        let buf = format::encode_copy(&sb, 1).unwrap();
        assert_eq!(buf[10..12], 0u16.to_le_bytes(), "written as 1.0");
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
            let state = serde_json::from_value(Value::String(v.name.clone())).unwrap();
            sb.legs[0] = sb.legs[0].clone().in_state_for_test(state, 2001);
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
}
