//! Superblock format v1: the fixed copy header, the payload schema, and its encoding.
//!
//! This is the only module that names bincode (pinned to exactly 2.0.1 in Cargo.toml).
//! Payload encoding: bincode 2 "standard" config with little-endian fixed-width integers:
//! integers are fixed-width little-endian, `[u8; 16]` is 16 raw bytes, `String` and `Vec`
//! are a u64 length then the elements, `Option` is a u8 tag (0 none, 1 some) then the value,
//! enums are a u32 variant index then the fields. Newer minor versions only append fields
//! to the end of [`Superblock`]; a reader ignores trailing payload bytes it does not know.

use crate::format::layout::{Geometry, WrittenMap, SB_COPY_SIZE};
use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"MRRCTLSB";
pub const FORMAT_MAJOR: u16 = 1;
/// The minor version this code writes for a superblock with an event journal (a primary's);
/// one without (a secondary's) is written as 1.0, byte for byte what 1.0 wrote.
pub const FORMAT_MINOR: u16 = 3;
/// Size of the fixed header in front of each superblock copy's payload.
pub const COPY_HEADER_LEN: usize = 64;
/// Largest payload a copy can hold.
pub const MAX_PAYLOAD: usize = SB_COPY_SIZE as usize - COPY_HEADER_LEN;
/// Longest path stored for a leg.
pub const MAX_LOCATION: usize = 1024;
/// Longest reason / error text stored for a leg (longer text is cut).
pub const MAX_TEXT: usize = 256;
/// How many generation-history entries an image keeps.
pub const MAX_HISTORY: usize = 64;
/// Longest event text in a history entry.
pub const MAX_EVENT: usize = 64;

pub type Uuid = [u8; 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Secondary,
    /// A former secondary whose slot was freed by `detach`.
    Detached,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Detached => "detached",
        }
    }
}

/// State of a secondary slot. Writes go to `InSync` and `Syncing` legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LegState {
    Empty,
    /// Receives every write; its fracture log lists regions still to copy (normally none).
    InSync,
    /// Receives every write and has regions in its fracture log waiting for `resync`
    /// (initial sync, after crash recovery, or a resync in progress).
    Syncing,
    FracturedByAdmin,
    FracturedByError,
}

impl LegState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LegState::Empty => "empty",
            LegState::InSync => "in-sync",
            LegState::Syncing => "syncing",
            LegState::FracturedByAdmin => "fractured-by-admin",
            LegState::FracturedByError => "fractured-by-error",
        }
    }
    /// Does this leg receive mirrored writes?
    pub fn receives_writes(&self) -> bool {
        matches!(self, LegState::InSync | LegState::Syncing)
    }
    pub fn is_fractured(&self) -> bool {
        matches!(
            self,
            LegState::FracturedByAdmin | LegState::FracturedByError
        )
    }
}

/// One slot of the leg table. Its state (and when it changed) is private: read with
/// [`Leg::state`], changed only through [`Leg::set_state`], which checks the transition
/// table. A new entry ([`Leg::empty`], [`Leg::for_image`]) is always `Empty`, so replacing a
/// whole entry is the always-legal change to `Empty` (detach); decoding a stored table
/// restores what was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub image_uuid: Uuid,
    /// The path as the admin gave it.
    pub location: String,
    /// The canonical path at attach time.
    pub canonical: String,
    state: LegState,
    /// Why the leg is fractured (admin text or a summary of the error).
    pub reason: String,
    /// The last I/O error seen on this leg, with offset.
    pub last_error: String,
    pub attached_at: u64,
    state_changed_at: u64,
    pub fractured_at: Option<u64>,
    /// Mirror generation when the leg stopped receiving writes (0 if never).
    pub fracture_generation: u64,
}

/// Every legal change of a leg's state, in one place (crucible's
/// `checked_state_transition`): an illegal one is a bug, caught by the assertion in
/// [`Leg::set_state`] wherever a test reaches it, never a silent assignment.
pub fn transition_allowed(from: LegState, to: LegState) -> bool {
    use LegState::*;
    match (from, to) {
        (a, b) if a == b => true,
        // attach (A2), detach
        (Empty, InSync | Syncing) | (_, Empty) => true,
        // recovery (R2), resync starting (S3), verify differences (V1)
        (InSync, Syncing) => true,
        // resync complete (S2)
        (Syncing, InSync) => true,
        // admin fracture, a failure (W4); a fractured leg that also fails
        (InSync | Syncing, FracturedByAdmin | FracturedByError) => true,
        (FracturedByAdmin, FracturedByError) => true,
        // resync or re-attach of a fractured leg; re-attach --assume-clean, or a demoted
        // former primary with nothing to copy
        (FracturedByAdmin | FracturedByError, Syncing | InSync) => true,
        // a fracture comes from a leg that was attached; an error does not make an admin
        // fracture
        (Empty, FracturedByAdmin | FracturedByError) | (FracturedByError, FracturedByAdmin) => {
            false
        }
        // the guard above covers a == b; the compiler cannot see it
        (InSync, InSync)
        | (Syncing, Syncing)
        | (FracturedByAdmin, FracturedByAdmin)
        | (FracturedByError, FracturedByError) => true,
    }
}

impl Leg {
    pub fn state(&self) -> LegState {
        self.state
    }

    /// When the state last changed (unix seconds; 0 if never).
    pub fn state_changed_at(&self) -> u64 {
        self.state_changed_at
    }

    /// Changes the leg's state (and when it changed); panics on an illegal transition.
    pub fn set_state(&mut self, to: LegState, now: u64) {
        assert!(
            transition_allowed(self.state, to),
            "illegal leg state transition {:?} -> {:?}",
            self.state,
            to
        );
        if self.state != to {
            self.state = to;
            self.state_changed_at = now;
        }
    }

    /// The path to open: as given if absolute (stable names like /dev/disk/by-id/...),
    /// else the canonical path recorded at attach (independent of the working directory).
    pub fn open_path(&self) -> &str {
        if self.location.starts_with('/') || self.canonical.is_empty() {
            &self.location
        } else {
            &self.canonical
        }
    }

    pub fn empty() -> Self {
        Leg {
            image_uuid: [0; 16],
            location: String::new(),
            canonical: String::new(),
            state: LegState::Empty,
            reason: String::new(),
            last_error: String::new(),
            attached_at: 0,
            state_changed_at: 0,
            fractured_at: None,
            fracture_generation: 0,
        }
    }

    /// A new entry naming the image `image_uuid` at `location`, still `Empty`: attach gives
    /// it its state through [`Leg::set_state`].
    pub fn for_image(image_uuid: Uuid, location: &str, canonical: &str, attached_at: u64) -> Self {
        Leg {
            image_uuid,
            location: location.to_string(),
            canonical: canonical.to_string(),
            attached_at,
            ..Leg::empty()
        }
    }

    /// Test fixtures only: this leg in `state`, changed at `at`, past the transition table
    /// (a table as a crash or an older version may have left it).
    #[cfg(test)]
    pub(crate) fn in_state_for_test(mut self, state: LegState, at: u64) -> Self {
        self.state = state;
        self.state_changed_at = at;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub started_at: u64,
    pub finished_at: u64,
    /// Region where the next budgeted verify continues.
    pub cursor: u64,
    /// "clean", "differences", "repaired", "partial".
    pub result: String,
    pub mismatched_regions: u64,
    pub compared_bytes: u64,
    pub last_full_pass_at: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRecord {
    pub finished_at: u64,
    pub slots: Vec<u32>,
    pub regions_copied: u64,
    pub bytes_copied: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    pub at: u64,
    /// Write-intent regions found after an unclean stop and moved to the legs' fracture logs.
    pub regions: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub generation: u64,
    /// Random identifier of this generation: two images that share an id went through the
    /// same generation (counters alone could collide after a split).
    pub id: u64,
    pub at: u64,
    pub event: String,
}

/// The superblock payload (format 1.0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub mirror_uuid: Uuid,
    pub image_uuid: Uuid,
    pub role: Role,
    /// Bumped on every change of mirror state (attach, fracture, resync done, recovery ...).
    pub generation: u64,
    pub created_at: u64,
    pub geometry: Geometry,
    /// Image UUID of the primary this image belongs to (its own on the primary).
    pub primary_uuid: Uuid,
    /// The primary's path as last recorded (empty on the primary).
    pub primary_location: String,
    /// Leg table, exactly `geometry.slots` entries.
    pub legs: Vec<Leg>,
    /// On a secondary: the last mirror generation at which it was known in sync (0: never).
    pub in_sync_generation: u64,
    /// Recent generations this image went through, oldest first.
    pub history: Vec<HistoryEntry>,
    pub last_verify: Option<VerifyRecord>,
    pub last_resync: Option<ResyncRecord>,
    pub last_recovery: Option<RecoveryRecord>,
    /// Format 1.1: the event journal (a primary's), encoded after the 1.0 fields (so a 1.0
    /// reader ignores it); `None` in a 1.0 copy.
    #[serde(skip)]
    pub journal: Option<crate::format::journal::Journal>,
    /// Format 1.3: where the primary's written map lies (encoded after the journal, so older
    /// readers ignore it, and an older writer drops it: then every region counts as written).
    /// `None`: no map, every region counts as written (images made before 1.3, secondaries,
    /// a promoted secondary).
    #[serde(skip)]
    pub written_map: Option<WrittenMap>,
}

impl Superblock {
    pub fn slot_of_uuid(&self, uuid: &Uuid) -> Option<usize> {
        self.legs
            .iter()
            .position(|l| l.state != LegState::Empty && &l.image_uuid == uuid)
    }

    /// The superblock of a new mirror's primary (the one superblock builder): new mirror and
    /// image UUIDs, an empty leg table, generation 1 ("created").
    pub fn new_primary(g: Geometry, now: u64) -> Superblock {
        let image_uuid = *uuid::Uuid::new_v4().as_bytes();
        let mut sb = Superblock {
            mirror_uuid: *uuid::Uuid::new_v4().as_bytes(),
            image_uuid,
            role: Role::Primary,
            generation: 0,
            created_at: now,
            geometry: g,
            primary_uuid: image_uuid,
            primary_location: String::new(),
            legs: (0..g.slots).map(|_| Leg::empty()).collect(),
            in_sync_generation: 0,
            history: vec![],
            last_verify: None,
            last_resync: None,
            last_recovery: None,
            journal: Some(crate::format::journal::Journal::new()),
            written_map: None,
        };
        sb.bump_generation("created", now);
        let what = format!(
            "data area {} bytes, {} regions of {} bytes, {} slots",
            g.data_size, g.region_count, g.region_size, g.slots
        );
        if let Some(j) = &mut sb.journal {
            j.push(crate::format::journal::Kind::Created, None, &what, now);
        }
        sb
    }

    /// Bumps the generation and records why.
    pub fn bump_generation(&mut self, event: &str, now: u64) {
        self.generation += 1;
        self.history.push(HistoryEntry {
            generation: self.generation,
            id: uuid::Uuid::new_v4().as_u64_pair().0,
            at: now,
            event: cut(event, MAX_EVENT),
        });
        if self.history.len() > MAX_HISTORY {
            let drop = self.history.len() - MAX_HISTORY;
            self.history.drain(..drop);
        }
    }
}

/// Cuts text to at most `max` bytes on a character boundary.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ MAX_PAYLOAD }>()
}

/// Why one superblock copy could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// No mirrorctl magic: never written (or not a mirrorctl image).
    NoMagic,
    UnknownMajor {
        major: u16,
        minor: u16,
    },
    BadLength(u32),
    Checksum,
    Decode(String),
    Geometry(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::NoMagic => write!(f, "no mirrorctl magic"),
            CopyError::UnknownMajor { major, minor } if *major > FORMAT_MAJOR => write!(
                f,
                "format version {major}.{minor} is newer than this mirrorctl reads ({FORMAT_MAJOR}.x, writes {FORMAT_MAJOR}.{FORMAT_MINOR}); upgrade mirrorctl"
            ),
            // No mirrorctl release wrote a version before 1.0: not a header we made.
            CopyError::UnknownMajor { major, minor } => write!(
                f,
                "format version {major}.{minor} was never written by any mirrorctl (the first format is {FORMAT_MAJOR}.0): the header is corrupt or not mirrorctl's"
            ),
            CopyError::BadLength(n) => write!(f, "payload length {n} out of range"),
            CopyError::Checksum => write!(f, "checksum mismatch (torn or corrupted write)"),
            CopyError::Decode(e) => write!(f, "payload does not decode: {e}"),
            CopyError::Geometry(e) => write!(f, "{e}"),
        }
    }
}

/// A decoded, verified superblock copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCopy {
    pub seq: u64,
    pub minor: u16,
    pub sb: Superblock,
}

/// Encodes one superblock copy, padded to a whole number of 4 KiB pages: format 1.3 with
/// the journal after the 1.0 fields (its oldest events dropped as far as needed to fit) and
/// the written map's place after it, or 1.0 without a journal (and then without a map).
pub fn encode_copy(sb: &Superblock, seq: u64) -> Result<Vec<u8>, String> {
    let mut payload = bincode::serde::encode_to_vec(sb, config())
        .map_err(|e| format!("superblock does not fit in {MAX_PAYLOAD} bytes: {e}"))?;
    let minor = match &sb.journal {
        None => 0,
        Some(j) => {
            let map = bincode::serde::encode_to_vec(sb.written_map, config())
                .map_err(|e| format!("encoding the written map: {e}"))?;
            let mut j = j.clone();
            j.trim(MAX_PAYLOAD.saturating_sub(payload.len() + map.len()));
            let tail = bincode::serde::encode_to_vec(&j, config())
                .map_err(|e| format!("encoding the event journal: {e}"))?;
            payload.extend_from_slice(&tail);
            payload.extend_from_slice(&map);
            FORMAT_MINOR
        }
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "superblock payload of {} bytes exceeds {MAX_PAYLOAD}",
            payload.len()
        ));
    }
    let total = (COPY_HEADER_LEN + payload.len()).div_ceil(4096) * 4096;
    let mut buf = vec![0u8; total];
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
    buf[10..12].copy_from_slice(&minor.to_le_bytes());
    buf[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[COPY_HEADER_LEN..COPY_HEADER_LEN + payload.len()].copy_from_slice(&payload);
    let sum = checksum(&buf[0..32], &payload);
    buf[32..64].copy_from_slice(&sum);
    Ok(buf)
}

fn checksum(head: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(payload);
    *h.finalize().as_bytes()
}

/// Reads the payload length a copy claims, so a caller can read just enough bytes.
pub fn peek_len(head: &[u8]) -> Option<usize> {
    if head.len() < COPY_HEADER_LEN || head[0..8] != MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(head[12..16].try_into().unwrap()) as usize;
    (n <= MAX_PAYLOAD).then_some(COPY_HEADER_LEN + n)
}

/// Decodes and verifies one copy. Magic and version are checked before the payload.
pub fn decode_copy(buf: &[u8]) -> Result<DecodedCopy, CopyError> {
    if buf.len() < COPY_HEADER_LEN || buf[0..8] != MAGIC {
        return Err(CopyError::NoMagic);
    }
    let major = u16::from_le_bytes([buf[8], buf[9]]);
    let minor = u16::from_le_bytes([buf[10], buf[11]]);
    let len = u32::from_le_bytes(buf[12..16].try_into().unwrap());
    if len as usize > MAX_PAYLOAD || COPY_HEADER_LEN + len as usize > buf.len() {
        return Err(CopyError::BadLength(len));
    }
    let payload = &buf[COPY_HEADER_LEN..COPY_HEADER_LEN + len as usize];
    if checksum(&buf[0..32], payload) != buf[32..64] {
        // A torn major/minor field shows up as a checksum error, never as a version error.
        return Err(CopyError::Checksum);
    }
    if major != FORMAT_MAJOR {
        return Err(CopyError::UnknownMajor { major, minor });
    }
    let seq = u64::from_le_bytes(buf[16..24].try_into().unwrap());
    let (mut sb, used): (Superblock, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| CopyError::Decode(e.to_string()))?;
    if minor >= 1 && used < payload.len() {
        // 1.1 and later: the journal follows; what a newer minor appends after it is ignored.
        let (j, n): (crate::format::journal::Journal, usize) =
            bincode::serde::decode_from_slice(&payload[used..], config())
                .map_err(|e| CopyError::Decode(format!("event journal: {e}")))?;
        sb.journal = Some(j);
        let rest = &payload[used + n..];
        if minor >= 3 && !rest.is_empty() {
            // 1.3 and later: the written map's place.
            let (m, _): (Option<WrittenMap>, usize) =
                bincode::serde::decode_from_slice(rest, config())
                    .map_err(|e| CopyError::Decode(format!("written map: {e}")))?;
            sb.written_map = m;
        }
    }
    sb.geometry.validate().map_err(CopyError::Geometry)?;
    if let Some(m) = &sb.written_map {
        m.validate(&sb.geometry).map_err(CopyError::Geometry)?;
    }
    if sb.legs.len() != sb.geometry.slots as usize {
        return Err(CopyError::Decode(format!(
            "leg table has {} entries for {} slots",
            sb.legs.len(),
            sb.geometry.slots
        )));
    }
    Ok(DecodedCopy { seq, minor, sb })
}

/// Picks the copy to trust: the valid one with the higher sequence number.
/// The chosen copy's index, the copy, and the other copy's index and error if it was bad.
pub type Choice = (usize, DecodedCopy, Option<(usize, CopyError)>);

pub fn choose(
    a: Result<DecodedCopy, CopyError>,
    b: Result<DecodedCopy, CopyError>,
) -> Result<Choice, [CopyError; 2]> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(if b.seq > a.seq {
            (1, b, None)
        } else {
            (0, a, None)
        }),
        (Ok(a), Err(e)) => Ok((0, a, Some((1, e)))),
        (Err(e), Ok(b)) => Ok((1, b, Some((0, e)))),
        (Err(ea), Err(eb)) => Err([ea, eb]),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::layout::SlotIdx;

    pub fn sample(slots: u32) -> Superblock {
        let g = Geometry::for_data_size(1 << 30, 64 * 1024, slots).unwrap();
        Superblock {
            mirror_uuid: [1; 16],
            image_uuid: [2; 16],
            role: Role::Primary,
            generation: 7,
            created_at: 1_700_000_000,
            geometry: g,
            primary_uuid: [2; 16],
            primary_location: String::new(),
            legs: (0..slots).map(|_| Leg::empty()).collect(),
            in_sync_generation: 0,
            history: vec![],
            last_verify: None,
            last_resync: None,
            last_recovery: None,
            journal: None,
            written_map: None,
        }
    }

    #[test]
    fn a_copy_round_trips_with_its_sequence_number() {
        let sb = sample(4);
        let buf = encode_copy(&sb, 42).unwrap();
        assert_eq!(buf.len() % 4096, 0);
        let d = decode_copy(&buf).unwrap();
        assert_eq!(d.seq, 42);
        assert_eq!(d.sb, sb);
        assert!(peek_len(&buf).unwrap() <= buf.len());
    }

    #[test]
    fn the_largest_possible_leg_table_fits_in_one_copy() {
        let mut sb = sample(32);
        for (i, l) in sb.legs.iter_mut().enumerate() {
            l.set_state(LegState::InSync, i as u64);
            l.set_state(LegState::FracturedByError, i as u64);
            l.location = "x".repeat(MAX_LOCATION);
            l.canonical = "y".repeat(MAX_LOCATION);
            l.reason = "r".repeat(MAX_TEXT);
            l.last_error = "e".repeat(MAX_TEXT);
            l.fractured_at = Some(i as u64);
        }
        sb.primary_location = "p".repeat(MAX_LOCATION);
        for g in 0..MAX_HISTORY as u64 + 3 {
            sb.bump_generation(&"h".repeat(MAX_TEXT), g);
        }
        assert_eq!(sb.history.len(), MAX_HISTORY);
        sb.last_verify = Some(VerifyRecord {
            started_at: 1,
            finished_at: 2,
            cursor: 3,
            result: "differences".into(),
            mismatched_regions: 4,
            compared_bytes: 5,
            last_full_pass_at: Some(6),
        });
        let buf = encode_copy(&sb, 1).unwrap();
        assert!(buf.len() as u64 <= SB_COPY_SIZE);
        assert_eq!(decode_copy(&buf).unwrap().sb, sb);
    }

    #[test]
    fn every_flipped_byte_in_header_or_payload_is_detected() {
        let sb = sample(2);
        let buf = encode_copy(&sb, 3).unwrap();
        let used = peek_len(&buf).unwrap();
        for i in 0..used {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(decode_copy(&b).is_err(), "flip at {i} undetected");
        }
    }

    /// A valid copy of a sample superblock claiming format version `major.minor`.
    fn copy_with_version(major: u16, minor: u16) -> Vec<u8> {
        let mut buf = encode_copy(&sample(1), 1).unwrap();
        buf[8..10].copy_from_slice(&major.to_le_bytes());
        buf[10..12].copy_from_slice(&minor.to_le_bytes());
        let payload_len = peek_len(&buf).unwrap() - COPY_HEADER_LEN;
        let sum = checksum(&buf[0..32], &buf[64..64 + payload_len]);
        buf[32..64].copy_from_slice(&sum);
        buf
    }

    #[test]
    fn leg_state_transitions_are_checked_in_one_table() {
        use LegState::*;
        let all = [Empty, InSync, Syncing, FracturedByAdmin, FracturedByError];
        let illegal = [
            (Empty, FracturedByAdmin),
            (Empty, FracturedByError),
            (FracturedByError, FracturedByAdmin),
        ];
        for a in all {
            for b in all {
                assert_eq!(
                    transition_allowed(a, b),
                    !illegal.contains(&(a, b)),
                    "{a:?} -> {b:?}"
                );
            }
        }
        let mut l = Leg::empty();
        l.set_state(Syncing, 7);
        assert_eq!((l.state, l.state_changed_at), (Syncing, 7));
        l.set_state(Syncing, 9);
        assert_eq!(l.state_changed_at, 7, "no change, no new time");
        let r = std::panic::catch_unwind(|| {
            let mut e = Leg::empty();
            e.set_state(FracturedByAdmin, 1);
        });
        assert!(r.is_err(), "an illegal transition must not pass silently");
    }

    #[test]
    fn an_unknown_major_version_is_named_in_the_error() {
        let err = decode_copy(&copy_with_version(2, 5)).unwrap_err();
        assert_eq!(err, CopyError::UnknownMajor { major: 2, minor: 5 });
        let msg = err.to_string();
        assert!(msg.contains("2.5") && msg.contains("1.x"), "{msg}");
    }

    #[test]
    fn a_version_before_1_0_is_called_corrupt_never_a_reason_to_upgrade() {
        let msg = decode_copy(&copy_with_version(0, 9))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("0.9") && msg.contains("never written"),
            "{msg}"
        );
        assert!(!msg.contains("upgrade"), "{msg}");
    }

    #[test]
    fn a_newer_minor_version_with_fields_appended_after_the_journal_is_read() {
        let mut sb = sample(1);
        let mut j = crate::format::journal::Journal::new();
        j.push(crate::format::journal::Kind::Attached, Some(0), "b.img", 5);
        sb.journal = Some(j.clone());
        let mut payload = bincode::serde::encode_to_vec(&sb, config()).unwrap();
        payload.extend_from_slice(&bincode::serde::encode_to_vec(&j, config()).unwrap());
        let none: Option<WrittenMap> = None;
        payload.extend_from_slice(&bincode::serde::encode_to_vec(none, config()).unwrap());
        payload.extend_from_slice(&[9u8; 40]); // fields a future 1.4 appends
        let mut buf = vec![0u8; 8192];
        buf[0..8].copy_from_slice(&MAGIC);
        buf[8..10].copy_from_slice(&1u16.to_le_bytes());
        buf[10..12].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());
        buf[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        buf[64..64 + payload.len()].copy_from_slice(&payload);
        let sum = checksum(&buf[0..32], &payload);
        buf[32..64].copy_from_slice(&sum);
        let d = decode_copy(&buf).unwrap();
        assert_eq!(d.minor, FORMAT_MINOR + 1);
        assert_eq!(d.sb, sb);
    }

    #[test]
    fn a_1_0_reader_sees_a_1_1_payload_as_its_own_fields_and_ignores_the_journal() {
        // What 1.0 did: decode the Superblock fields, ignore the rest.
        let mut sb = sample(2);
        let mut j = crate::format::journal::Journal::new();
        j.push(crate::format::journal::Kind::Created, None, "", 1);
        sb.journal = Some(j);
        let buf = encode_copy(&sb, 3).unwrap();
        assert_eq!(buf[10..12], FORMAT_MINOR.to_le_bytes());
        let n = peek_len(&buf).unwrap();
        let (old, used): (Superblock, usize) =
            bincode::serde::decode_from_slice(&buf[COPY_HEADER_LEN..n], config()).unwrap();
        assert!(used < n - COPY_HEADER_LEN);
        assert_eq!(old.journal, None);
        assert_eq!(
            Superblock {
                journal: None,
                ..sb.clone()
            },
            old
        );
        assert_eq!(decode_copy(&buf).unwrap().sb, sb);
    }

    #[test]
    fn a_journal_too_big_for_the_copy_keeps_its_newest_events() {
        let mut sb = sample(32);
        for l in &mut sb.legs {
            l.location = "l".repeat(MAX_LOCATION);
            l.canonical = "c".repeat(MAX_LOCATION);
        }
        let mut j = crate::format::journal::Journal::new();
        for i in 0..2000 {
            j.push(
                crate::format::journal::Kind::Fractured,
                Some(3),
                &"e".repeat(90),
                i,
            );
        }
        sb.journal = Some(j);
        let d = decode_copy(&encode_copy(&sb, 1).unwrap()).unwrap();
        let kept = d.sb.journal.unwrap();
        assert!(
            kept.events.len() > 300 && kept.events.len() < 1024,
            "{}",
            kept.events.len()
        );
        assert_eq!(kept.events.last().unwrap().seq, 2000);
        assert_eq!(kept.next_seq, 2001);
    }

    /// How many events a copy keeps: `slots` legs with paths of `path` bytes, each event's
    /// detail `detail` bytes. (The README states these numbers.)
    fn events_kept(slots: u32, path: usize, detail: usize) -> usize {
        let mut sb = sample(slots);
        for l in &mut sb.legs {
            l.location = "l".repeat(path);
            l.canonical = "c".repeat(path);
            l.reason = "r".repeat(MAX_TEXT);
            l.last_error = "e".repeat(MAX_TEXT);
        }
        let mut j = crate::format::journal::Journal::new();
        for i in 0..2000 {
            j.push(
                crate::format::journal::Kind::Fractured,
                Some(0),
                &"d".repeat(detail),
                i,
            );
        }
        sb.journal = Some(j);
        let d = decode_copy(&encode_copy(&sb, 1).unwrap()).unwrap();
        d.sb.journal.unwrap().events.len()
    }

    #[test]
    fn the_journal_keeps_1024_usual_events_and_at_least_the_documented_floor_of_long_ones() {
        use crate::format::journal::{MAX_DETAIL, MAX_EVENTS};
        // Details of 60 bytes (a fracture by error of a local leg) with 4 legs: all.
        assert_eq!(events_kept(4, 40, 60), MAX_EVENTS);
        // Every detail as long as it may be, 4 legs: README says "about 440".
        let n = events_kept(4, 40, MAX_DETAIL);
        assert!((400..=450).contains(&n), "{n}");
        // The worst: 32 legs with 1 KiB paths, every detail at its longest: "about 160".
        let n = events_kept(32, MAX_LOCATION, MAX_DETAIL);
        assert!((120..=180).contains(&n), "{n}");
    }

    #[test]
    fn choose_prefers_the_higher_sequence_and_survives_one_bad_copy() {
        let sb = sample(1);
        let a = decode_copy(&encode_copy(&sb, 5).unwrap());
        let b = decode_copy(&encode_copy(&sb, 6).unwrap());
        assert_eq!(choose(a.clone(), b.clone()).unwrap().0, 1);
        assert_eq!(choose(a.clone(), Err(CopyError::Checksum)).unwrap().0, 0);
        assert_eq!(choose(Err(CopyError::Checksum), b).unwrap().0, 1);
        assert!(choose(Err(CopyError::Checksum), Err(CopyError::NoMagic)).is_err());
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
        let _ = SlotIdx(0);
    }
}
