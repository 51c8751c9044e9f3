//! One image's superblock pair: reading and choosing the valid copy, and committing updates
//! alternately so that a torn write always leaves the previous copy intact.
//!
//! Rules (tagged where they are kept):
//! - F1 A brand-new header is written over a zeroed and synced superblock area; otherwise a
//!   crash part-way could leave a mix of an old and a new header that both verify.
//! - F2 A commit writes the copy not holding the current version, with the next sequence
//!   number, then syncs; otherwise a torn write could destroy the only good copy.

use crate::device::Device;
use crate::format::layout::{Geometry, SB_COPY_SIZE, SB_OFFSETS};
use crate::format::{self, CopyError, Superblock};
use std::io;
use std::sync::Arc;

pub struct Image {
    pub dev: Arc<dyn Device>,
    pub sb: Superblock,
    /// Sequence number of the copy `sb` came from (or was last written to).
    seq: u64,
    /// Which copy (0 = A, 1 = B) holds `seq`.
    current: usize,
    /// Minor format version of the copy read.
    pub minor: u16,
    /// A copy that failed to verify when the image was opened (rewritten on next commit).
    pub damaged: Option<(usize, CopyError)>,
}

/// Why an image's superblock could not be used.
#[derive(Debug)]
pub enum ReadError {
    /// Neither copy carries the mirrorctl magic.
    NotMirrorctl,
    /// The device is shorter than the superblock area or the geometry requires.
    Truncated {
        have: u64,
        need: u64,
    },
    /// Both copies are damaged (or of an unknown version).
    Unreadable([CopyError; 2]),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotMirrorctl => write!(f, "no mirrorctl header (not a mirrorctl image)"),
            ReadError::Truncated { have, need } => write!(
                f,
                "image is truncated: {have} bytes, but its header describes {need} bytes"
            ),
            ReadError::Unreadable([a, b]) => {
                if let CopyError::UnknownMajor { .. } = a {
                    write!(f, "{a}")
                } else if let CopyError::UnknownMajor { .. } = b {
                    write!(f, "{b}")
                } else {
                    write!(
                        f,
                        "both superblock copies are damaged (copy A: {a}; copy B: {b})"
                    )
                }
            }
            ReadError::Io(e) => write!(f, "reading the superblock: {e}"),
        }
    }
}

pub fn copy_name(i: usize) -> &'static str {
    ["A", "B"][i]
}

impl Image {
    /// Reads both superblock copies and keeps the valid one with the higher sequence.
    pub fn read(dev: Arc<dyn Device>) -> Result<Image, ReadError> {
        let len = dev.len();
        if len < 2 * SB_COPY_SIZE {
            // Too short to hold even the superblocks; maybe a truncated image.
            let mut head = vec![0u8; (len as usize).min(8)];
            dev.read_at(&mut head, 0).map_err(ReadError::Io)?;
            if head.len() == 8 && head[..] == format::MAGIC {
                return Err(ReadError::Truncated {
                    have: len,
                    need: 2 * SB_COPY_SIZE,
                });
            }
            return Err(ReadError::NotMirrorctl);
        }
        let mut decoded = Vec::with_capacity(2);
        for off in SB_OFFSETS {
            let mut buf = vec![0u8; SB_COPY_SIZE as usize];
            dev.read_at(&mut buf, off).map_err(ReadError::Io)?;
            decoded.push(format::decode_copy(&buf));
        }
        let b = decoded.pop().unwrap();
        let a = decoded.pop().unwrap();
        let (current, copy, damaged) = match format::choose(a, b) {
            Ok(x) => x,
            Err([CopyError::NoMagic, CopyError::NoMagic]) => return Err(ReadError::NotMirrorctl),
            Err(errs) => return Err(ReadError::Unreadable(errs)),
        };
        let need = copy.sb.geometry.total_len();
        if len < need {
            return Err(ReadError::Truncated { have: len, need });
        }
        Ok(Image {
            dev,
            sb: copy.sb,
            seq: copy.seq,
            current,
            minor: copy.minor,
            damaged,
        })
    }

    /// Writes the header of a new mirror's primary onto `dev`: new mirror and image UUIDs,
    /// an empty leg table, cleared bitmaps, generation 1 ("created"). The data area is left
    /// as it is.
    pub fn create_primary(dev: Arc<dyn Device>, g: Geometry, now: u64) -> io::Result<Image> {
        Self::create_primary_written(dev, g, now, &[])
    }

    /// [`Image::create_primary`] with a written map (format 1.3, where the geometry leaves
    /// room for one) in which the chunks of `written` (regions) are set: what the data area
    /// may already hold. The map is written before F1's sync, so it is durable before the
    /// header that declares it exists.
    pub fn create_primary_written(
        dev: Arc<dyn Device>,
        g: Geometry,
        now: u64,
        written: &[std::ops::Range<u64>],
    ) -> io::Result<Image> {
        let mut sb = Superblock::new_primary(g, now);
        dev.zero_range(g.bitmap_offset, g.bitmap_area().end - g.bitmap_offset)?;
        if let Some(m) = g.written_map() {
            let mut buf = vec![0u8; m.size(&g) as usize];
            for r in written {
                for c in m.chunks_of(&g, r) {
                    buf[(c / 8) as usize] |= 1 << (c % 8);
                }
            }
            dev.write_at(&buf, m.offset)?;
            sb.written_map = Some(m);
        }
        Image::format(dev, sb)
    }

    /// Writes a brand-new superblock pair. Rule F1: the old superblock area is zeroed and
    /// synced first, so a crash part-way leaves no header rather than a mix of old and new.
    pub fn format(dev: Arc<dyn Device>, sb: Superblock) -> io::Result<Image> {
        dev.zero_range(0, 2 * SB_COPY_SIZE)?;
        dev.sync()?;
        let a = format::encode_copy(&sb, 1).map_err(io::Error::other)?;
        let b = format::encode_copy(&sb, 2).map_err(io::Error::other)?;
        dev.write_at(&a, SB_OFFSETS[0])?;
        dev.write_at(&b, SB_OFFSETS[1])?;
        dev.sync()?;
        Ok(Image {
            dev,
            sb,
            seq: 2,
            current: 1,
            minor: format::FORMAT_MINOR,
            damaged: None,
        })
    }

    /// Makes `self.sb` durable. Rule F2: the new version goes to the copy *not* holding the
    /// current one, with seq + 1, followed by a sync; until that sync completes the current
    /// copy stays valid, so a torn write falls back to the state before this commit.
    pub fn commit(&mut self) -> io::Result<()> {
        let next = 1 - self.current;
        let buf = format::encode_copy(&self.sb, self.seq + 1).map_err(io::Error::other)?;
        self.dev.write_at(&buf, SB_OFFSETS[next])?;
        self.dev.sync()?;
        self.seq += 1;
        self.current = next;
        if matches!(self.damaged, Some((i, _)) if i == next) {
            self.damaged = None;
        }
        Ok(())
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }
}
