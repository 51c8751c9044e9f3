//! What an image holds before mirrorctl writes over it: known on-disk signatures
//! (filesystems, volume managers, encrypted volumes, RAID members, partition tables) and,
//! failing those, any other data. Pure: the signature checks read through a closure, so
//! they are unit-tested on byte vectors without devices.
//!
//! Rule (tagged at the lines that keep it):
//! - D0 An image is overwritten (by `attach`, or `create --force`) only when it holds nothing
//!   (no signature, no data in its first and last MiB, and for a file no allocated extent) or
//!   the admin said `--force`; otherwise the command refuses with nothing written and names
//!   what it found. Without it `attach` over a formatted disk destroys a filesystem silently.

use crate::device::Device;
use crate::format::layout::{KIB, MIB};
use std::io;

/// Something found on an image: what it is ("an ext4 filesystem labelled 'precious'") and
/// the byte offset of the signature that identified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub what: String,
    pub offset: u64,
    /// A known signature (false: plain data, no format recognised).
    pub signature: bool,
}

/// Reads `len` bytes at `off`; `None` past the end of the image.
pub type ReadFn<'a> = dyn Fn(u64, usize) -> io::Result<Option<Vec<u8>>> + 'a;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A NUL-padded label as text, if it has any printable content.
fn label(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim().to_string();
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then_some(s)
}

fn named(kind: &str, lbl: Option<String>) -> String {
    match lbl {
        Some(l) => format!("{kind} labelled '{l}'"),
        None => kind.to_string(),
    }
}

/// The first known signature on an image of `len` bytes, checked in order from the most
/// specific (filesystems) to the least (a bare MBR boot sector).
pub fn identify(read: &ReadFn, len: u64) -> io::Result<Option<Found>> {
    let found = |what: String, offset: u64| {
        Ok(Some(Found {
            what,
            offset,
            signature: true,
        }))
    };
    // LUKS: "LUKS\xba\xbe" at 0, version (be16) at 6; LUKS2 keeps a label at 24.
    if let Some(b) = read(0, 512)? {
        if b[..6] == *b"LUKS\xba\xbe" {
            let v = u16::from_be_bytes([b[6], b[7]]);
            let lbl = if v == 2 { label(&b[24..72]) } else { None };
            return found(named(&format!("a LUKS{v} encrypted volume"), lbl), 0);
        }
        // XFS: "XFSB" at 0, label (12 bytes) at 108.
        if b[..4] == *b"XFSB" {
            return found(named("an XFS filesystem", label(&b[108..120])), 0);
        }
        // NTFS: "NTFS    " at 3.
        if b[3..11] == *b"NTFS    " {
            return found("an NTFS filesystem".into(), 3);
        }
    }
    // LVM2 physical volume: "LABELONE" in one of the first four sectors, "LVM2 001" at +24.
    if let Some(b) = read(0, 2048)? {
        for s in 0..4 {
            let at = s * 512;
            if b[at..at + 8] == *b"LABELONE" && b[at + 24..at + 32] == *b"LVM2 001" {
                return found("an LVM2 physical volume".into(), at as u64);
            }
        }
    }
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +56, label at +120.
    if let Some(b) = read(1024, 1024)? {
        if le16(&b, 56) == 0xEF53 {
            let compat = le32(&b, 0x5C);
            let incompat = le32(&b, 0x60);
            // extents, 64bit or flex_bg make it ext4; a journal without them ext3.
            let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 {
                "ext4"
            } else if compat & 0x4 != 0 {
                "ext3"
            } else {
                "ext2"
            };
            return found(
                named(&format!("an {kind} filesystem"), label(&b[120..136])),
                1024 + 56,
            );
        }
    }
    // Btrfs: "_BHRfS_M" at 64 KiB + 64, label (256 bytes) at 64 KiB + 0x12b.
    if let Some(b) = read(64 * KIB, 1024)? {
        if b[64..72] == *b"_BHRfS_M" {
            return found(
                named("a Btrfs filesystem", label(&b[0x12b..0x12b + 256])),
                64 * KIB + 64,
            );
        }
    }
    // md RAID member: magic 0xa92b4efc. v1.1 at 0, v1.2 at 4 KiB (name at +32), v1.0 8 KiB
    // before the end (4 KiB aligned), v0.90 in the last 64 KiB-aligned 64 KiB.
    let mut md_at = vec![0, 4 * KIB];
    if len >= 12 * KIB {
        md_at.push((len - 8 * KIB) & !(4 * KIB - 1));
    }
    if len >= 128 * KIB {
        md_at.push((len & !(64 * KIB - 1)) - 64 * KIB);
    }
    for at in md_at {
        if let Some(b) = read(at, 64)? {
            if le32(&b, 0) == 0xa92b_4efc {
                let lbl = (le32(&b, 4) == 1).then(|| label(&b[32..64])).flatten();
                return found(named("an md RAID member", lbl), at);
            }
        }
    }
    // ZFS: uberblocks (magic 0x00bab10c, either byte order) from 128 KiB into label 0 or 1.
    for label_at in [0, 256 * KIB] {
        if let Some(b) = read(label_at + 128 * KIB, 128 * 1024)? {
            for at in (0..b.len()).step_by(1024) {
                let m = le64(&b, at);
                if m == 0x00ba_b10c || m.swap_bytes() == 0x00ba_b10c {
                    return found(
                        "a ZFS pool member (vdev label)".into(),
                        label_at + 128 * KIB,
                    );
                }
            }
        }
    }
    // Swap: "SWAPSPACE2" (or the old "SWAP-SPACE") at the end of the first page; label at
    // 1024 + 28 for the new kind.
    for page in [4 * KIB, 8 * KIB, 16 * KIB, 64 * KIB] {
        if let Some(b) = read(page - 10, 10)? {
            if b[..] == *b"SWAPSPACE2" || b[..] == *b"SWAP-SPACE" {
                let lbl = read(1024 + 28, 16)?.and_then(|l| label(&l));
                return found(named("a swap area", lbl), page - 10);
            }
        }
    }
    // GPT: "EFI PART" in LBA 1 (512- or 4096-byte sectors).
    for at in [512, 4096] {
        if let Some(b) = read(at, 8)? {
            if b[..] == *b"EFI PART" {
                return found("a GPT partition table".into(), at);
            }
        }
    }
    if let Some(b) = read(0, 512)? {
        if b[510] == 0x55 && b[511] == 0xAA {
            // FAT boot sectors carry the same 0x55AA: their type string tells.
            if b[82..87] == *b"FAT32" || b[54..59] == *b"FAT12" || b[54..59] == *b"FAT16" {
                return found("a FAT filesystem".into(), 0);
            }
            // An MBR: four entries at 446, boot flag 0x00 or 0x80, at least one typed.
            let entries: Vec<&[u8]> = (0..4).map(|i| &b[446 + i * 16..462 + i * 16]).collect();
            let flags_ok = entries.iter().all(|e| e[0] == 0 || e[0] == 0x80);
            if flags_ok && entries.iter().any(|e| e[4] != 0) {
                return found("an MBR partition table".into(), 510);
            }
            return found("a boot sector (0x55AA signature)".into(), 510);
        }
    }
    Ok(None)
}

/// What `dev` holds that overwriting it would destroy: a known signature, else non-zero
/// bytes in its first or last MiB, else (a regular file) any allocated extent.
pub fn holds_data(dev: &dyn Device) -> io::Result<Option<Found>> {
    let len = dev.len();
    let read = |off: u64, n: usize| -> io::Result<Option<Vec<u8>>> {
        if off.checked_add(n as u64).is_none_or(|e| e > len) {
            return Ok(None);
        }
        let mut b = vec![0u8; n];
        dev.read_at(&mut b, off)?;
        Ok(Some(b))
    };
    if let Some(f) = identify(&read, len)? {
        return Ok(Some(f));
    }
    let edge = MIB.min(len);
    for start in [0, len - edge] {
        let mut b = vec![0u8; edge as usize];
        dev.read_at(&mut b, start)?;
        if let Some(i) = b.iter().position(|&c| c != 0) {
            return Ok(Some(Found {
                what: format!("data (a non-zero byte at offset {})", start + i as u64),
                offset: start + i as u64,
                signature: false,
            }));
        }
    }
    // Files (and anything else that knows its holes): any allocated extent is data.
    if let Some(ext) = dev.data_extents(0..len)? {
        if let Some(first) = ext.first() {
            let bytes: u64 = ext.iter().map(|r| r.end - r.start).sum();
            return Ok(Some(Found {
                what: format!(
                    "{} of allocated data (from offset {})",
                    crate::units::format_size(bytes),
                    first.start
                ),
                offset: first.start,
                signature: false,
            }));
        }
    }
    Ok(None)
}

/// First non-zero byte in `range`, skipping holes.
pub fn first_nonzero(dev: &dyn Device, range: std::ops::Range<u64>) -> io::Result<Option<u64>> {
    let range = range.start..range.end.min(dev.len());
    let extents = dev
        .data_extents(range.clone())?
        .unwrap_or_else(|| vec![range.clone()]);
    let mut buf = vec![0u8; 1 << 20];
    for e in extents {
        let mut p = e.start;
        while p < e.end {
            let n = ((e.end - p) as usize).min(buf.len());
            dev.read_at(&mut buf[..n], p)?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Ok(Some(p + i as u64));
            }
            p += n as u64;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(img: &[u8]) -> Option<Found> {
        let read = |off: u64, n: usize| -> io::Result<Option<Vec<u8>>> {
            let (s, e) = (off as usize, off as usize + n);
            Ok((e <= img.len()).then(|| img[s..e].to_vec()))
        };
        identify(&read, img.len() as u64).unwrap()
    }

    fn put(img: &mut [u8], at: usize, bytes: &[u8]) {
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn an_empty_image_has_no_signature() {
        assert_eq!(on(&vec![0u8; 4 << 20]), None);
        assert_eq!(on(&[]), None);
    }

    #[test]
    fn ext_filesystems_are_told_apart_by_their_features_and_named_by_label() {
        let mut img = vec![0u8; 1 << 20];
        put(&mut img, 1024 + 56, &0xEF53u16.to_le_bytes());
        put(&mut img, 1024 + 120, b"precious\0");
        assert_eq!(
            on(&img).unwrap().what,
            "an ext2 filesystem labelled 'precious'"
        );
        put(&mut img, 1024 + 0x5C, &4u32.to_le_bytes());
        assert_eq!(
            on(&img).unwrap().what,
            "an ext3 filesystem labelled 'precious'"
        );
        put(&mut img, 1024 + 0x60, &0x2c2u32.to_le_bytes());
        let f = on(&img).unwrap();
        assert_eq!(f.what, "an ext4 filesystem labelled 'precious'");
        assert_eq!(f.offset, 1080);
    }

    #[test]
    fn every_kind_the_issue_names_is_recognised() {
        let size = 4 << 20;
        let cases: Vec<(usize, Vec<u8>, &str)> = vec![
            (0, b"XFSB".to_vec(), "an XFS filesystem"),
            (64 * 1024 + 64, b"_BHRfS_M".to_vec(), "a Btrfs filesystem"),
            (4096 - 10, b"SWAPSPACE2".to_vec(), "a swap area"),
            (
                0,
                b"LUKS\xba\xbe\x00\x01".to_vec(),
                "a LUKS1 encrypted volume",
            ),
            (
                4096,
                0xa92b_4efcu32.to_le_bytes().to_vec(),
                "an md RAID member",
            ),
            (
                128 * 1024 + 2048,
                0x00ba_b10cu64.to_le_bytes().to_vec(),
                "a ZFS pool member (vdev label)",
            ),
            (512, b"EFI PART".to_vec(), "a GPT partition table"),
            (3, b"NTFS    ".to_vec(), "an NTFS filesystem"),
        ];
        for (at, sig, want) in cases {
            let mut img = vec![0u8; size];
            put(&mut img, at, &sig);
            assert_eq!(on(&img).map(|f| f.what), Some(want.to_string()), "{want}");
        }
        // LVM: LABELONE in sector 1 with its type at +24.
        let mut img = vec![0u8; size];
        put(&mut img, 512, b"LABELONE");
        put(&mut img, 512 + 24, b"LVM2 001");
        assert_eq!(on(&img).unwrap().what, "an LVM2 physical volume");
        // md v0.90 near the end of the device.
        let mut img = vec![0u8; size];
        put(&mut img, size - 64 * 1024, &0xa92b_4efcu32.to_le_bytes());
        assert_eq!(on(&img).unwrap().what, "an md RAID member");
        // An MBR with one typed partition; a bare 0x55AA boot sector is still reported.
        let mut img = vec![0u8; size];
        put(&mut img, 510, &[0x55, 0xAA]);
        assert_eq!(on(&img).unwrap().what, "a boot sector (0x55AA signature)");
        img[446 + 4] = 0x83;
        assert_eq!(on(&img).unwrap().what, "an MBR partition table");
    }

    #[test]
    fn a_label_with_control_characters_is_left_out() {
        let mut img = vec![0u8; 1 << 20];
        put(&mut img, 0, b"XFSB");
        put(&mut img, 108, b"\x01\x02bad");
        assert_eq!(on(&img).unwrap().what, "an XFS filesystem");
    }
}
