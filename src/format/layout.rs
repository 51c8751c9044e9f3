//! The on-disk layout: every byte offset mirrorctl uses comes from this module.
//!
//! ```text
//! 0          superblock copy A      (SB_COPY_SIZE bytes)
//! 128 KiB    superblock copy B      (SB_COPY_SIZE bytes)
//! 256 KiB    bitmap 0: write-intent log            (bitmap_stride bytes)
//!            bitmap 1+s: fracture log of slot s    (bitmap_stride bytes each)
//! bitmap area end: the written map (format 1.3), in the space left before data_offset
//! data_offset (1 MiB aligned)  data area, data_size bytes, region_count regions
//! ```
//! `man/mirrorctl-format.5` documents the same thing byte by byte.

use serde::{Deserialize, Serialize};
use std::ops::Range;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
/// Unit of bitmap I/O and of alignment inside the metadata area.
pub const PAGE: u64 = 4096;
/// Size reserved for one superblock copy.
pub const SB_COPY_SIZE: u64 = 128 * KIB;
/// Offsets of superblock copies A and B.
pub const SB_OFFSETS: [u64; 2] = [0, SB_COPY_SIZE];
/// Where the first bitmap starts.
pub const BITMAP_AREA_OFFSET: u64 = 2 * SB_COPY_SIZE;
/// The data area starts at a multiple of this on every leg.
pub const DATA_ALIGN: u64 = MIB;
pub const MIN_REGION_SIZE: u64 = 4 * KIB;
pub const MAX_REGION_SIZE: u64 = 64 * MIB;
pub const DEFAULT_REGION_SIZE: u64 = 64 * KIB;
pub const DEFAULT_SLOTS: u32 = 4;
pub const MAX_SLOTS: u32 = 32;
/// The data area is a whole number of these.
pub const DATA_GRANULE: u64 = 4 * KIB;

/// Index of a region in the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionIdx(pub u64);

/// Index of a secondary slot in the leg table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotIdx(pub u32);

impl std::fmt::Display for SlotIdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which bitmap of the metadata area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BitmapId {
    WriteIntent,
    Fracture(SlotIdx),
}

/// Where a primary's written map (format 1.3) lies and how coarse it is: one bit per chunk
/// of `chunk_size` bytes (a power-of-two number of regions), bit set once any write may
/// have reached the chunk. It fills the space between the last bitmap and `data_offset`
/// (the alignment slack), so the geometry, and every offset an older reader computes, is
/// the same as without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenMap {
    /// Byte offset of the map: the end of the bitmap area.
    pub offset: u64,
    /// Bytes of data area per bit.
    pub chunk_size: u64,
}

impl WrittenMap {
    /// Regions per chunk.
    pub fn chunk_regions(&self, g: &Geometry) -> u64 {
        self.chunk_size / g.region_size
    }

    /// Number of chunks (bits that name a chunk).
    pub fn chunks(&self, g: &Geometry) -> u64 {
        g.region_count.div_ceil(self.chunk_regions(g))
    }

    /// Bytes the map occupies (whole pages).
    pub fn size(&self, g: &Geometry) -> u64 {
        self.chunks(g).div_ceil(8).div_ceil(PAGE) * PAGE
    }

    /// Chunks touched by a run of regions.
    pub fn chunks_of(&self, g: &Geometry, regions: &Range<u64>) -> Range<u64> {
        let k = self.chunk_regions(g);
        if regions.is_empty() {
            return regions.start / k..regions.start / k;
        }
        regions.start / k..regions.end.div_ceil(k)
    }

    /// The regions of a run of chunks (the last chunk may hold fewer).
    pub fn regions_of(&self, g: &Geometry, chunks: &Range<u64>) -> Range<u64> {
        let k = self.chunk_regions(g);
        (chunks.start * k).min(g.region_count)..(chunks.end * k).min(g.region_count)
    }

    /// Checks a map read from a superblock against its geometry.
    pub fn validate(&self, g: &Geometry) -> Result<(), String> {
        let ok = self.offset == g.bitmap_area().end
            && self.chunk_size.is_power_of_two()
            && self.chunk_size >= g.region_size
            && self.offset + self.size(g) <= g.data_offset;
        if !ok {
            return Err(format!(
                "inconsistent written map (offset {}, chunk size {}; the bitmap area ends at {}, data starts at {})",
                self.offset,
                self.chunk_size,
                g.bitmap_area().end,
                g.data_offset
            ));
        }
        Ok(())
    }
}

/// Geometry of a mirror: identical on every leg, stored in every superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub data_offset: u64,
    pub data_size: u64,
    pub region_size: u64,
    pub region_count: u64,
    pub slots: u32,
    pub bitmap_offset: u64,
    pub bitmap_stride: u64,
}

pub fn check_region_size(region_size: u64) -> Result<(), String> {
    if !region_size.is_power_of_two() || !(MIN_REGION_SIZE..=MAX_REGION_SIZE).contains(&region_size)
    {
        return Err(format!(
            "region size {region_size} is not a power of two from 4 KiB to 64 MiB (e.g. 64K, 1M)"
        ));
    }
    Ok(())
}

pub fn check_slots(slots: u32) -> Result<(), String> {
    if !(1..=MAX_SLOTS).contains(&slots) {
        return Err(format!(
            "{slots} secondaries is out of range: choose 1 to {MAX_SLOTS}"
        ));
    }
    Ok(())
}

impl Geometry {
    /// Geometry for a data area of exactly `data_size` bytes.
    pub fn for_data_size(data_size: u64, region_size: u64, slots: u32) -> Result<Self, String> {
        check_region_size(region_size)?;
        check_slots(slots)?;
        if data_size == 0 || data_size % DATA_GRANULE != 0 {
            return Err(format!(
                "data size {data_size} must be a non-zero multiple of 4 KiB"
            ));
        }
        let region_count = data_size.div_ceil(region_size);
        let bitmap_stride = region_count.div_ceil(8).div_ceil(PAGE) * PAGE;
        let bitmaps = (1 + slots as u64)
            .checked_mul(bitmap_stride)
            .ok_or("metadata size overflows")?;
        let data_offset = (BITMAP_AREA_OFFSET + bitmaps).div_ceil(DATA_ALIGN) * DATA_ALIGN;
        data_offset
            .checked_add(data_size)
            .ok_or_else(|| format!("data size {data_size} is too large"))?;
        Ok(Geometry {
            data_offset,
            data_size,
            region_size,
            region_count,
            slots,
            bitmap_offset: BITMAP_AREA_OFFSET,
            bitmap_stride,
        })
    }

    /// The largest geometry whose metadata plus data fit in `capacity` bytes.
    pub fn fit(capacity: u64, region_size: u64, slots: u32) -> Result<Self, String> {
        check_region_size(region_size)?;
        check_slots(slots)?;
        let mut data = capacity / DATA_GRANULE * DATA_GRANULE;
        // The metadata shrinks as the data area shrinks, so this converges in a few steps.
        for _ in 0..64 {
            if data == 0 {
                break;
            }
            let g = Self::for_data_size(data, region_size, slots)?;
            if g.total_len() <= capacity {
                // Try to grow back into space freed by a smaller metadata area.
                let spare = (capacity - g.total_len()) / DATA_GRANULE * DATA_GRANULE;
                if spare > 0 {
                    if let Ok(g2) = Self::for_data_size(data + spare, region_size, slots) {
                        if g2.total_len() <= capacity {
                            return Ok(g2);
                        }
                    }
                }
                return Ok(g);
            }
            let over = g.total_len() - capacity;
            data = data.saturating_sub(over.div_ceil(DATA_GRANULE) * DATA_GRANULE);
        }
        Err(format!(
            "{capacity} bytes is too small: the metadata area alone needs at least {} bytes plus 4 KiB of data",
            Self::for_data_size(DATA_GRANULE, region_size, slots)?.data_offset
        ))
    }

    /// Checks a geometry read from disk for internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        let expect = Self::for_data_size(self.data_size, self.region_size, self.slots)?;
        if expect != *self {
            return Err(format!(
                "inconsistent geometry (data_offset {}, region_count {}, bitmap_stride {}; expected {}, {}, {})",
                self.data_offset,
                self.region_count,
                self.bitmap_stride,
                expect.data_offset,
                expect.region_count,
                expect.bitmap_stride
            ));
        }
        Ok(())
    }

    /// Bytes an image needs to hold metadata plus data.
    pub fn total_len(&self) -> u64 {
        self.data_offset + self.data_size
    }

    /// Byte offset (from the start of the image) of a bitmap.
    pub fn bitmap(&self, id: BitmapId) -> u64 {
        let idx = match id {
            BitmapId::WriteIntent => 0,
            BitmapId::Fracture(s) => 1 + s.0 as u64,
        };
        self.bitmap_offset + idx * self.bitmap_stride
    }

    /// Byte range of the whole bitmap area.
    pub fn bitmap_area(&self) -> Range<u64> {
        self.bitmap_offset..self.bitmap_offset + (1 + self.slots as u64) * self.bitmap_stride
    }

    /// The finest written map that fits between the bitmap area and the data area: chunks of
    /// a power-of-two number of regions, as small as the space allows. `None` when less than
    /// a page is left (then every region counts as written).
    pub fn written_map(&self) -> Option<WrittenMap> {
        let offset = self.bitmap_area().end;
        let room = self.data_offset.saturating_sub(offset);
        if room < PAGE {
            return None;
        }
        let mut chunk_size = self.region_size;
        loop {
            let m = WrittenMap { offset, chunk_size };
            if m.size(self) <= room {
                return Some(m);
            }
            chunk_size = chunk_size.checked_mul(2)?;
        }
    }

    /// Byte range, within the data area, of a region (the last one may be short).
    pub fn region_bytes(&self, r: RegionIdx) -> Range<u64> {
        let start = r.0 * self.region_size;
        start..(start + self.region_size).min(self.data_size)
    }

    /// Byte range, within the data area, of a run of regions.
    pub fn regions_bytes(&self, rs: Range<u64>) -> Range<u64> {
        rs.start * self.region_size..(rs.end * self.region_size).min(self.data_size)
    }

    /// Regions touched by `len` bytes at data offset `off`.
    pub fn regions_for(&self, off: u64, len: u64) -> Range<u64> {
        if len == 0 {
            return off / self.region_size..off / self.region_size;
        }
        off / self.region_size..(off + len).div_ceil(self.region_size)
    }

    /// Bytes covered by `n` regions counted from `first` (accounts for a short last region).
    pub fn bytes_of_regions(&self, count: u64, includes_last: bool) -> u64 {
        if count == 0 {
            return 0;
        }
        let tail = self.region_count * self.region_size - self.data_size;
        count * self.region_size - if includes_last { tail } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_offset_is_one_mib_aligned_and_after_all_bitmaps() {
        for (size, rs, slots) in [
            (4096, 4096, 1),
            (1 << 30, 64 * KIB, 4),
            (16 << 40, 64 * KIB, 4),
            (16 << 40, 4 * KIB, 32),
            (1 << 20, 64 * MIB, 32),
        ] {
            let g = Geometry::for_data_size(size, rs, slots).unwrap();
            assert_eq!(g.data_offset % DATA_ALIGN, 0);
            assert!(g.bitmap_area().end <= g.data_offset);
            assert!(g.bitmap_stride * 8 >= g.region_count);
            assert_eq!(g.bitmap_stride % PAGE, 0);
            g.validate().unwrap();
        }
    }

    #[test]
    fn a_16_tib_image_with_64k_regions_has_32_mib_bitmaps() {
        let g = Geometry::for_data_size(16 << 40, 64 * KIB, 4).unwrap();
        assert_eq!(g.region_count, 1 << 28);
        assert_eq!(g.bitmap_stride, 32 * MIB);
    }

    #[test]
    fn fit_fills_the_capacity_without_exceeding_it() {
        for cap in [
            2 * MIB,
            3 * MIB + 512,
            1 << 30,
            (1 << 30) + 12345,
            100 << 30,
        ] {
            let g = Geometry::fit(cap, 64 * KIB, 4).unwrap();
            assert!(g.total_len() <= cap, "{cap}");
            assert!(
                cap - g.total_len() < DATA_GRANULE + DATA_ALIGN,
                "{cap}: {g:?}"
            );
        }
        assert!(Geometry::fit(MIB, 64 * KIB, 4).is_err());
    }

    #[test]
    fn region_sizes_and_slots_out_of_range_are_refused() {
        for rs in [0, 1000, 2048, 128 * MIB, 3 * 4096] {
            assert!(check_region_size(rs).is_err(), "{rs}");
        }
        assert!(check_slots(0).is_err());
        assert!(check_slots(33).is_err());
        assert!(Geometry::for_data_size(4095, 4096, 1).is_err());
    }

    #[test]
    fn the_last_region_may_be_short() {
        let g = Geometry::for_data_size(10 * PAGE, 4 * PAGE, 1).unwrap();
        assert_eq!(g.region_count, 3);
        assert_eq!(g.region_bytes(RegionIdx(2)), 8 * PAGE..10 * PAGE);
        assert_eq!(g.regions_for(0, 1), 0..1);
        assert_eq!(g.regions_for(4 * PAGE - 1, 2), 0..2);
        assert_eq!(g.bytes_of_regions(3, true), 10 * PAGE);
    }

    #[test]
    fn the_written_map_fits_between_the_bitmaps_and_the_data_and_covers_every_region() {
        for (size, rs, slots) in [
            (4096, 4096, 1),
            (2 << 30, 64 * KIB, 4),
            (1 << 40, 64 * KIB, 4),
            (16 << 40, 4 * KIB, 32),
            (16 << 40, 64 * KIB, 4),
            ((1 << 30) + 4096, 4 * KIB, 3),
        ] {
            let g = Geometry::for_data_size(size, rs, slots).unwrap();
            let Some(m) = g.written_map() else {
                assert!(g.data_offset - g.bitmap_area().end < PAGE, "{g:?}");
                continue;
            };
            m.validate(&g).unwrap();
            assert_eq!(m.offset, g.bitmap_area().end);
            assert!(m.offset + m.size(&g) <= g.data_offset);
            assert!(m.chunks(&g) * m.chunk_regions(&g) >= g.region_count);
            assert!(m.size(&g) * 8 >= m.chunks(&g));
            // The finest that fits: half the chunk would not.
            if m.chunk_size > rs {
                let finer = WrittenMap {
                    chunk_size: m.chunk_size / 2,
                    ..m
                };
                assert!(m.offset + finer.size(&g) > g.data_offset, "{g:?} {m:?}");
            }
        }
        // 2 GiB of 64 KiB regions: one bit per region.
        let g = Geometry::for_data_size(2 << 30, 64 * KIB, 4).unwrap();
        assert_eq!(g.written_map().unwrap().chunk_size, 64 * KIB);
    }

    #[test]
    fn chunks_and_regions_convert_both_ways_with_a_short_last_chunk() {
        let g = Geometry::for_data_size(10 * PAGE, PAGE, 1).unwrap();
        let m = WrittenMap {
            offset: g.bitmap_area().end,
            chunk_size: 4 * PAGE,
        };
        assert_eq!(m.chunks(&g), 3);
        assert_eq!(m.chunks_of(&g, &(3..5)), 0..2);
        assert_eq!(m.chunks_of(&g, &(4..4)), 1..1);
        assert_eq!(m.regions_of(&g, &(1..3)), 4..10);
        let bad = WrittenMap { offset: 0, ..m };
        assert!(bad.validate(&g).is_err());
    }

    #[test]
    fn bitmaps_do_not_overlap() {
        let g = Geometry::for_data_size(1 << 30, 4096, 3).unwrap();
        let wil = g.bitmap(BitmapId::WriteIntent);
        let s0 = g.bitmap(BitmapId::Fracture(SlotIdx(0)));
        let s2 = g.bitmap(BitmapId::Fracture(SlotIdx(2)));
        assert_eq!(s0 - wil, g.bitmap_stride);
        assert_eq!(s2 + g.bitmap_stride, g.bitmap_area().end);
    }
}
