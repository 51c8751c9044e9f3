//! The foundation (issue 2): the golden v1 superblock fixture, damaged superblock copies
//! (A, B, both), an unknown major version, a truncated image, `create` on sparse files and
//! loop devices, its refusals and bad sizes, `status` text and JSON, and the lock (exit 5,
//! `--wait`). Format round trips and size bounds are unit tests in `src/format/superblock.rs`.
//!
//! The golden fixture `tests/fixtures/superblock-v1.bin` is one encoded superblock copy of a
//! fully populated, fixed superblock. A change to the encoding fails
//! `the_v1_superblock_encoding_matches_the_golden_fixture_byte_for_byte`; only an intended
//! format change (with a new version in `man/mirrorctl-format.5`) may regenerate it, with
//! `MIRRORCTL_BLESS=1 cargo test --test cli create_status`, and the new file is then committed.

use crate::support::*;
use mirrorctl::format::layout::{Geometry, SB_OFFSETS};
use mirrorctl::format::{
    decode_copy, encode_copy, HistoryEntry, Leg, LegState, RecoveryRecord, ResyncRecord, Role,
    Superblock, VerifyRecord, FORMAT_MAJOR,
};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

const FIXTURE: &str = "tests/fixtures/superblock-v1.bin";

fn golden_superblock() -> Superblock {
    let g = Geometry::for_data_size(20 << 30, 64 * KIB, 4).unwrap();
    let mut legs: Vec<Leg> = (0..4).map(|_| Leg::empty()).collect();
    // States only through the checked transitions, as the engine sets them.
    legs[0] = Leg::for_image(
        [0x11; 16],
        "/mnt/disk2/vm.img",
        "/mnt/disk2/vm.img",
        1_700_000_100,
    );
    legs[0].set_state(LegState::InSync, 1_700_000_200);
    legs[2] = Leg::for_image([0x33; 16], "/dev/loop7", "/dev/loop7", 1_700_000_300);
    legs[2].reason = "write failed".into();
    legs[2].last_error =
        "write at data offset 4194304: No space left on device (os error 28)".into();
    legs[2].fractured_at = Some(1_700_000_400);
    legs[2].fracture_generation = 6;
    legs[2].set_state(LegState::InSync, 1_700_000_300);
    legs[2].set_state(LegState::FracturedByError, 1_700_000_400);
    Superblock {
        mirror_uuid: [0xa5; 16],
        image_uuid: [0x5a; 16],
        role: Role::Primary,
        generation: 7,
        created_at: 1_700_000_000,
        geometry: g,
        primary_uuid: [0x5a; 16],
        primary_location: String::new(),
        legs,
        in_sync_generation: 0,
        history: vec![HistoryEntry {
            generation: 7,
            id: 0x0123_4567_89ab_cdef,
            at: 1_700_000_400,
            event: "slot 2 fractured by error".into(),
        }],
        last_verify: Some(VerifyRecord {
            started_at: 1_700_000_500,
            finished_at: 1_700_000_600,
            cursor: 1234,
            result: "clean".into(),
            mismatched_regions: 0,
            compared_bytes: 1 << 30,
            last_full_pass_at: Some(1_700_000_600),
        }),
        last_resync: Some(ResyncRecord {
            finished_at: 1_700_000_250,
            slots: vec![0],
            regions_copied: 16,
            bytes_copied: 1 << 20,
        }),
        last_recovery: Some(RecoveryRecord {
            at: 1_700_000_050,
            regions: 3,
        }),
        journal: None,
        written_map: None,
    }
}

#[test]
fn the_v1_superblock_encoding_matches_the_golden_fixture_byte_for_byte() {
    let sb = golden_superblock();
    let bytes = encode_copy(&sb, 3).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    if std::env::var_os("MIRRORCTL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{FIXTURE}: {e} (generate it once with MIRRORCTL_BLESS=1 and commit it)")
    });
    assert_eq!(golden.len(), bytes.len(), "encoded size changed");
    if let Some(i) = golden.iter().zip(&bytes).position(|(a, b)| a != b) {
        panic!("the v1 encoding changed at byte {i}: a format change needs a new version (see man/mirrorctl-format.5)");
    }
    // And the fixture decodes to exactly that superblock, at sequence 3, version 1.0.
    let d = decode_copy(&golden).unwrap();
    assert_eq!(d.seq, 3);
    assert_eq!(d.minor, 0);
    assert_eq!(d.sb, sb);
    assert_eq!(&golden[0..8], b"MRRCTLSB");
    assert_eq!(u16::from_le_bytes([golden[8], golden[9]]), FORMAT_MAJOR);
}

const FIXTURE_1_1: &str = "tests/fixtures/superblock-v1.1.bin";

/// The v1 golden superblock with an event journal: what format 1.1 adds.
fn golden_superblock_1_1() -> Superblock {
    use mirrorctl::format::journal::{Event, Journal, Kind};
    let mut sb = golden_superblock();
    sb.journal = Some(Journal {
        next_seq: 9,
        events: vec![
            Event {
                seq: 7,
                at: 1_700_000_400,
                kind: Kind::Fractured.code(),
                slot: Some(2),
                detail: "by error: write at data offset 4194304: No space left on device".into(),
            },
            Event {
                seq: 8,
                at: 1_700_000_600,
                kind: Kind::VerifyFinished.code(),
                slot: None,
                detail: "clean: 0 mismatched regions, regions 0..327680 of 327680".into(),
            },
        ],
    });
    sb
}

#[test]
fn a_v1_1_superblock_with_a_journal_written_by_an_older_mirrorctl_still_decodes_and_extends_v1_0() {
    // Format 1.2 changed no encoding: the 1.1 fixture (committed, never re-blessed) still
    // decodes to the same superblock, journal included.
    let sb = golden_superblock_1_1();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_1_1);
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{FIXTURE_1_1}: {e}"));
    let d = decode_copy(&golden).unwrap();
    assert_eq!((d.seq, d.minor), (3, 1));
    assert_eq!(d.sb, sb);
    // Written again today, only the minor version (and so the checksum) differs.
    let bytes = encode_copy(&sb, 3).unwrap();
    assert_eq!(golden.len(), bytes.len(), "encoded size changed");
    assert_eq!(
        golden[64..],
        bytes[64..],
        "the 1.1 payload encoding changed"
    );
    // The 1.0 payload is a prefix of the 1.1 one: a 1.0 reader sees the same superblock.
    let v10 = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)).unwrap();
    let len = |b: &[u8]| u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let (n10, n11) = (len(&v10), len(&golden));
    assert!(n11 > n10);
    assert_eq!(v10[64..64 + n10], golden[64..64 + n10]);
}

const FIXTURE_1_2: &str = "tests/fixtures/superblock-v1.2.bin";

/// The 1.1 golden superblock with a detail longer than 1.1's 96 bytes: what 1.2 allows.
fn golden_superblock_1_2() -> Superblock {
    use mirrorctl::format::journal::{Event, Kind, MAX_DETAIL};
    let mut sb = golden_superblock_1_1();
    let detail = "by error: write at data offset 4194304: NBD connection to nbds://10.0.0.2:10809/vm (TLS): Connection reset by peer (os error 104)";
    assert!(detail.len() > 96 && detail.len() <= MAX_DETAIL);
    sb.journal.as_mut().unwrap().events.push(Event {
        seq: 9,
        at: 1_700_000_700,
        kind: Kind::Fractured.code(),
        slot: Some(0),
        detail: detail.into(),
    });
    sb.journal.as_mut().unwrap().next_seq = 10;
    sb
}

#[test]
fn the_v1_2_superblock_with_a_long_event_detail_written_by_an_older_mirrorctl_still_decodes() {
    // The 1.2 fixture (committed, never re-blessed since 1.3) decodes to the same superblock
    // without a written map: every region counts as written.
    let sb = golden_superblock_1_2();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_1_2);
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{FIXTURE_1_2}: {e}"));
    let d = decode_copy(&golden).unwrap();
    assert_eq!((d.seq, d.minor), (3, 2));
    assert_eq!(d.sb, sb);
    assert_eq!(d.sb.written_map, None);
    // Written again today, the 1.2 payload is a prefix of the 1.3 one, which adds the
    // written map's place (one byte: none).
    let bytes = encode_copy(&sb, 3).unwrap();
    let len = |b: &[u8]| u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    assert_eq!(len(&bytes), len(&golden) + 1);
    assert_eq!(golden[64..64 + len(&golden)], bytes[64..64 + len(&golden)]);
    assert_eq!(bytes[64 + len(&golden)], 0);
}

const FIXTURE_1_3: &str = "tests/fixtures/superblock-v1.3.bin";

#[test]
fn the_v1_3_superblock_with_a_written_map_matches_its_golden_fixture() {
    let mut sb = golden_superblock_1_2();
    // 1.3: the written map after the journal.
    sb.written_map = sb.geometry.written_map();
    assert!(sb.written_map.is_some());
    let bytes = encode_copy(&sb, 3).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_1_3);
    if std::env::var_os("MIRRORCTL_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{FIXTURE_1_3}: {e} (generate it once with MIRRORCTL_BLESS=1 and commit it)")
    });
    assert_eq!(golden.len(), bytes.len(), "encoded size changed");
    if let Some(i) = golden.iter().zip(&bytes).position(|(a, b)| a != b) {
        panic!("the v1.3 encoding changed at byte {i}: a format change needs a new version (see man/mirrorctl-format.5)");
    }
    let d = decode_copy(&golden).unwrap();
    assert_eq!((d.seq, d.minor), (3, 3));
    assert_eq!(d.sb, sb);
    // The map's place: tag 1, then offset and chunk size as u64 little-endian, last in
    // the payload.
    let n = u32::from_le_bytes(golden[12..16].try_into().unwrap()) as usize;
    let m = sb.written_map.unwrap();
    let tail = &golden[64 + n - 17..64 + n];
    assert_eq!(tail[0], 1);
    assert_eq!(tail[1..9], m.offset.to_le_bytes());
    assert_eq!(tail[9..17], m.chunk_size.to_le_bytes());
}

fn image_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Inverts one byte of superblock copy `copy` (0 = A, 1 = B) inside its payload.
fn damage_copy(p: &Path, copy: usize) {
    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let at = SB_OFFSETS[copy] + 100;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] = !b[0];
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn one_damaged_superblock_copy_is_survived_either_way_and_both_damaged_is_exit_4_with_nothing_written(
) {
    for copy in [0, 1] {
        let fx = Fx::create("16M", "64K");
        // A few commits so both copies hold a valid superblock.
        fx.ok(&["attach", "a.img", "b.img"]);
        let gen = fx.status()["generation"].clone();
        damage_copy(&fx.path("a.img"), copy);
        let s = fx.status();
        assert_eq!(s["role"], "primary");
        // The other copy holds the previous commit: never a newer or garbled state.
        assert!(u(&s["generation"]) <= u(&gen), "{s:#}");
        assert!(
            !s["superblock_warning"].as_str().unwrap_or("").is_empty(),
            "copy {copy} damaged: status must warn: {s:#}"
        );
        // The next commit rewrites the damaged copy: two good copies again.
        let o = fx.run(&["attach", "a.img", "c.img"]);
        assert!(matches!(o.code, 0 | 3), "{o:?}");
        let s = fx.status();
        assert_eq!(s["superblock_warning"].as_str().unwrap_or(""), "", "{s:#}");
    }
    let fx = Fx::create("16M", "64K");
    fx.ok(&["attach", "a.img", "b.img"]);
    damage_copy(&fx.path("a.img"), 0);
    damage_copy(&fx.path("a.img"), 1);
    let before = image_bytes(&fx.path("a.img"));
    for args in [
        vec!["status", "a.img"],
        vec!["write", "a.img", "--input", "/dev/null"],
        vec!["resync", "a.img"],
        vec!["verify", "a.img"],
    ] {
        let o = fx.run(&args);
        assert_eq!(o.code, 4, "{args:?}: {o:?}");
        assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
        assert!(o.stderr.starts_with("mirrorctl: "), "{o:?}");
        assert!(o.stderr.contains("a.img"), "{o:?}");
    }
    assert!(
        image_bytes(&fx.path("a.img")) == before,
        "a damaged image was written to"
    );
}

/// Rewrites both copies of `p` with the given major/minor, recomputing checksums.
fn set_version(p: &Path, major: u16, minor: u16) {
    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    for &off in &SB_OFFSETS {
        let mut head = vec![0u8; 128 * KIB as usize];
        f.read_exact_at(&mut head, off).unwrap();
        let d = decode_copy(&head).unwrap();
        let mut bytes = encode_copy(&d.sb, d.seq).unwrap();
        bytes[8..10].copy_from_slice(&major.to_le_bytes());
        bytes[10..12].copy_from_slice(&minor.to_le_bytes());
        let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let mut h = blake3::Hasher::new();
        h.update(&bytes[0..32]);
        h.update(&bytes[64..64 + len]);
        let sum = *h.finalize().as_bytes();
        bytes[32..64].copy_from_slice(&sum);
        f.write_all_at(&bytes, off).unwrap();
    }
}

#[test]
fn an_unknown_major_version_is_refused_naming_both_versions_and_a_newer_minor_is_read() {
    let fx = Fx::create("16M", "64K");
    // The checksum recipe of the test matches the library's: the unchanged version reads.
    set_version(&fx.path("a.img"), FORMAT_MAJOR, 0);
    fx.ok(&["status", "a.img"]);
    set_version(&fx.path("a.img"), FORMAT_MAJOR, 7);
    let s = fx.status();
    assert_eq!(s["role"], "primary", "a newer minor version is read: {s:#}");
    set_version(&fx.path("a.img"), FORMAT_MAJOR + 1, 0);
    let before = image_bytes(&fx.path("a.img"));
    let o = fx.run(&["status", "a.img"]);
    assert_eq!(o.code, 4, "{o:?}");
    assert!(
        o.stderr.contains(&format!("{}.0", FORMAT_MAJOR + 1)),
        "{o:?}"
    );
    assert!(o.stderr.contains(&format!("{FORMAT_MAJOR}.")), "{o:?}");
    let o = fx.run(&["attach", "a.img", "b.img"]);
    assert_eq!(o.code, 4, "{o:?}");
    assert!(image_bytes(&fx.path("a.img")) == before);
    assert!(
        !fx.path("b.img").exists(),
        "nothing may be created for an unreadable mirror"
    );
}

#[test]
fn a_truncated_image_is_exit_4_with_a_clear_message() {
    let fx = Fx::create("16M", "64K");
    let f = OpenOptions::new()
        .write(true)
        .open(fx.path("a.img"))
        .unwrap();
    f.set_len(600 * KIB).unwrap();
    let o = fx.run(&["status", "a.img"]);
    assert_eq!(o.code, 4, "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(o.stderr.contains("a.img"), "{o:?}");
}

#[test]
fn create_makes_a_sparse_file_of_metadata_plus_the_data_size() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_in(dir.path(), &["create", "a.img", "--size", "1G", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    let m = std::fs::metadata(dir.path().join("a.img")).unwrap();
    assert_eq!(m.len(), u(&v["data_offset"]) + (1 << 30));
    assert_eq!(v["data_size"], 1u64 << 30);
    assert_eq!(u(&v["data_offset"]) % MIB, 0);
    assert_eq!(v["region_size"], 64 * KIB);
    assert_eq!(v["region_count"], (1u64 << 30) / (64 * KIB));
    assert_eq!(v["max_secondaries"], 4);
    assert!(
        m.blocks() * 512 < 4 * MIB,
        "not sparse: {} blocks",
        m.blocks()
    );
}

#[test]
fn create_on_a_loop_device_uses_its_real_size_and_refuses_a_second_create() {
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDev::with_size(&dir.path().join("backing"), 64 * MIB);
    let o = run_in(dir.path(), &["create", dev.as_str(), "--region-size", "4K"]);
    assert_eq!(o.code, 0, "{o:?}");
    let s = run_in(dir.path(), &["status", dev.as_str(), "--json"]).json();
    assert_eq!(u(&s["data_offset"]) + u(&s["data_size"]), 64 * MIB, "{s:#}");
    assert_eq!(s["region_size"], 4 * KIB);
    let o = run_in(dir.path(), &["create", dev.as_str()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--force"), "{o:?}");
    let o = run_in(dir.path(), &["create", dev.as_str(), "--force"]);
    assert_eq!(o.code, 0, "{o:?}");
    let s2 = run_in(dir.path(), &["status", dev.as_str(), "--json"]).json();
    assert_ne!(
        s2["mirror_uuid"], s["mirror_uuid"],
        "--force makes a new mirror"
    );
}

#[test]
fn create_on_an_existing_file_uses_its_size_and_refuses_headers_data_and_small_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.raw");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let o = run_in(dir.path(), &["create", "disk.raw", "--json"]);
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    assert_eq!(u(&v["data_offset"]) + u(&v["data_size"]), 32 * MIB);
    // Already a mirrorctl image.
    let before = image_bytes(&p);
    let o = run_in(dir.path(), &["create", "disk.raw"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("disk.raw") && o.stderr.contains("--force"),
        "{o:?}"
    );
    assert!(image_bytes(&p) == before);
    // Data where the metadata would go.
    let q = dir.path().join("used.raw");
    let f = std::fs::File::create(&q).unwrap();
    f.set_len(32 * MIB).unwrap();
    f.write_all_at(b"important", 300 * KIB).unwrap();
    let before = image_bytes(&q);
    let o = run_in(dir.path(), &["create", "used.raw"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(image_bytes(&q) == before);
    // Too small for metadata and one region.
    let r = dir.path().join("tiny.raw");
    std::fs::File::create(&r)
        .unwrap()
        .set_len(512 * KIB)
        .unwrap();
    let o = run_in(dir.path(), &["create", "tiny.raw"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("small"), "{o:?}");
}

#[test]
fn bad_sizes_region_sizes_and_slot_counts_are_usage_errors_that_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--size", "12Q"],
        vec!["--size", "-1"],
        vec!["--size", "0"],
        vec!["--size", "0.1G"],
        vec!["--size", ""],
        vec!["--size", "64M", "--region-size", "3K"],
        vec!["--size", "64M", "--region-size", "2K"],
        vec!["--size", "64M", "--region-size", "128M"],
        vec!["--size", "64M", "--region-size", "96K"],
        vec!["--size", "64M", "--max-secondaries", "0"],
        vec!["--size", "64M", "--max-secondaries", "33"],
    ] {
        let mut a = vec!["create", "x.img"];
        a.extend_from_slice(&args);
        let o = run_in(dir.path(), &a);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(
            o.stderr.contains("mirrorctl") || o.stderr.contains("error"),
            "{o:?}"
        );
        assert!(
            !dir.path().join("x.img").exists(),
            "{args:?} created a file"
        );
    }
    let o = run_in(dir.path(), &["create", "x.img"]);
    assert_eq!(o.code, 2, "a missing file needs --size: {o:?}");
    assert!(o.stderr.contains("--size"), "{o:?}");
}

#[test]
fn sizes_accept_plain_bytes_and_binary_suffixes() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (size, bytes)) in [
        ("1048576", MIB),
        ("4096K", 4 * MIB),
        ("64KiB", 64 * KIB),
        ("3M", 3 * MIB),
        ("1G", 1 << 30),
        ("1T", 1 << 40),
    ]
    .iter()
    .enumerate()
    {
        let name = format!("s{i}.img");
        let o = run_in(dir.path(), &["create", &name, "--size", size, "--json"]);
        assert_eq!(o.code, 0, "{size}: {o:?}");
        assert_eq!(u(&o.json()["data_size"]), *bytes, "{size}");
    }
}

#[test]
fn status_text_and_json_show_geometry_legs_out_of_sync_regions_and_intents() {
    let fx = Fx::with_legs("64M", "64K", &["b.img", "c.img"]);
    fx.ok(&["fracture", "a.img", "c.img", "--reason", "backup window"]);
    random_file(&fx.path("w.bin"), 3 * 64 * KIB + 1, 3);
    let o = fx.run(&["write", "a.img", "--offset", "1M", "--input", "w.bin"]);
    assert_eq!(o.code, 3, "{o:?}");
    let s = fx.status();
    for k in [
        "format_version",
        "mirror_uuid",
        "image_uuid",
        "role",
        "generation",
        "data_offset",
        "data_size",
        "region_size",
        "region_count",
        "write_intent_regions",
        "write_intent_bytes",
        "healthy",
        "legs",
    ] {
        assert!(s.get(k).is_some(), "status --json lacks {k}: {s:#}");
    }
    assert_eq!(s["format_version"], "1.3");
    assert_eq!(s["role"], "primary");
    assert_eq!(s["data_size"], 64 * MIB);
    assert_eq!(s["region_count"], 1024);
    assert_eq!(s["write_intent_regions"], 0);
    assert_eq!(s["write_intent_bytes"], 0);
    assert_eq!(s["healthy"], false);
    let legs = s["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 2);
    let b = &legs[0];
    assert_eq!(
        (b["slot"].as_u64(), b["path"].as_str()),
        (Some(0), Some("b.img"))
    );
    assert_eq!(b["state"], "in-sync");
    assert_eq!(b["out_of_sync_regions"], 0);
    assert_eq!(b["fractured_at"], serde_json::Value::Null);
    let c = &legs[1];
    assert_eq!(c["state"], "fractured-by-admin");
    assert_eq!(c["reason"], "backup window");
    assert_eq!(
        c["out_of_sync_regions"], 4,
        "3 regions and 1 byte span 4: {c:#}"
    );
    assert_eq!(c["out_of_sync_bytes"], 4 * 64 * KIB);
    assert!(is_time(&c["fractured_at"]), "{c:#}");
    assert_eq!(c["last_error"], serde_json::Value::Null, "absent is null");
    let o = fx.run(&["status", "a.img", "--check"]);
    assert_eq!(o.code, 3, "{o:?}");

    let text = fx.ok(&["status", "a.img"]).stdout;
    for want in [
        "64.0 MiB",
        "64.0 KiB",
        "b.img",
        "c.img",
        "fractured-by-admin",
        "in-sync",
        "generation",
    ] {
        assert!(text.contains(want), "status text lacks {want:?}:\n{text}");
    }
    assert!(
        text.contains("4 regions") || text.contains("4 region"),
        "{text}"
    );

    fx.ok(&["resync", "a.img"]);
    let o = fx.run(&["status", "a.img", "--check"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(fx.status()["healthy"], true);
}

/// Holds the mirror's lock from another process: a `write` reading a pipe that stays open.
/// The holder itself waits (`--wait`): the probe below takes the lock for a moment, and a
/// holder that started during that moment would otherwise exit 5 and never hold it.
fn hold_lock(fx: &Fx) -> std::process::Child {
    let mut child = spawn_piped(fx.dir.path(), &["--wait", "write", "a.img"], true);
    // Wait until it holds the lock (a non-waiting writer gets exit 5).
    let t = Instant::now();
    loop {
        let o = fx.run(&["fracture", "a.img", "9"]);
        if o.code == 5 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the lock holder exited ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the lock was never taken: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn a_second_writer_gets_exit_5_or_waits_with_wait() {
    let fx = Fx::with_legs("16M", "64K", &["b.img"]);
    let mut holder = hold_lock(&fx);
    let o = fx.run(&["write", "a.img", "--input", "/dev/null"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(
        o.stderr.contains("a.img") && o.stderr.contains("--wait"),
        "{o:?}"
    );
    // The message names the holder.
    let pid = holder.id();
    assert!(
        o.stderr.contains(&format!("`mirrorctl write` (pid {pid}")),
        "{o:?}"
    );
    // Status takes no lock: it answers at once and shows the holder (issue 14).
    let t = Instant::now();
    let o = fx.run(&["status", "a.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(
        o.stdout
            .contains(&format!("running       write (pid {pid})")),
        "{o:?}"
    );
    let s = fx.status();
    assert_eq!(s["running"]["command"], "write");
    assert_eq!(s["running"]["pid"], pid);
    let t = Instant::now();
    let o = fx.run(&["--wait=300ms", "fracture", "a.img", "b.img"]);
    assert_eq!(o.code, 5, "{o:?}");
    assert!(t.elapsed() >= Duration::from_millis(250), "did not wait");
    // It waited already: the message says how long, and does not say to pass --wait.
    assert!(o.stderr.contains("after waiting 300ms"), "{o:?}");
    assert!(!o.stderr.contains("pass --wait"), "{o:?}");
    // Released while a waiter waits: the waiter goes on.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        drop(holder.stdin.take());
        holder.wait().unwrap()
    });
    let o = fx.run(&["--wait", "fracture", "a.img", "b.img"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(release.join().unwrap().success());
    assert_eq!(fx.status()["legs"][0]["state"], "fractured-by-admin");
    // The writer is gone: nothing is shown running.
    assert!(fx.status()["running"].is_null());
}

#[test]
fn status_of_a_sparse_16_tib_mirror_answers_at_once() {
    let fs = Tmpfs::mount("256M");
    let p = fs.join("huge.img");
    let ps = p.to_str().unwrap();
    let o = run_in(fs.path(), &["create", ps, "--size", "16T"]);
    assert_eq!(o.code, 0, "{o:?}");
    let o = run_in(fs.path(), &["attach", ps, "sec.img", "--no-sync"]);
    assert!(matches!(o.code, 0 | 3), "{o:?}");
    let t = Instant::now();
    let o = run_in(fs.path(), &["status", ps, "--json"]);
    let took = t.elapsed();
    assert_eq!(o.code, 0, "{o:?}");
    eprintln!("status of a 16 TiB mirror took {took:?}");
    assert!(took < Duration::from_secs(2), "status took {took:?}");
    let s = o.json();
    assert_eq!(s["data_size"], 16u64 << 40);
    assert_eq!(s["region_count"], (16u64 << 40) / (64 * KIB));
}
