//! Durable region bitmaps (the write-intent log, one fracture log per slot, and a primary's
//! written map, one bit per chunk of regions, in the pages after them): bit math on
//! 4 KiB pages, mapped with memmap2 for real images and paged through the [`Device`] for
//! simulated ones. Only pages whose bits change are dirtied, and a flush writes only those.
//!
//! Bit order: region `r` of a bitmap is bit `r % 8` (least significant first) of byte `r / 8`.
//!
//! Rule (tagged at the lines that keep it):
//! - B1 Bits past `region_count` in a bitmap's last page name no region. They are never
//!   counted or iterated, and are cleared when that page next changes; without this, a stray
//!   bit there reads as a pending region no resync or recovery can clear, and the mirror
//!   stays degraded ("not closed cleanly") forever.

use crate::device::Device;
use crate::format::layout::{BitmapId, Geometry, WrittenMap, PAGE};
use bitvec::prelude::*;
use memmap2::MmapMut;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::ops::Range;
use std::sync::Arc;

const PAGE_BITS: u64 = PAGE * 8;

enum Store {
    Mapped(MmapMut),
    Paged(HashMap<u64, Box<[u8]>>),
}

/// Changed pages written by [`Bitmaps::prepare_sync`], durable once the primary syncs.
#[must_use]
pub struct PreparedPages(BTreeSet<u64>);

pub struct Bitmaps {
    geom: Geometry,
    /// The written map (format 1.3), in the pages right after the bitmap area; `None`: every
    /// region counts as written.
    written: Option<WrittenMap>,
    dev: Arc<dyn Device>,
    store: Store,
    /// Pages (index within the bitmap area) changed since the last flush.
    dirty: BTreeSet<u64>,
    /// Page ranges that held data when opened; `None` when unknown (all may hold data).
    extents: Option<Vec<Range<u64>>>,
    /// Pages this process allocated or wrote: they may hold bits even outside `extents`.
    touched: BTreeSet<u64>,
    /// Metadata syncs performed so far (one per flush that had dirty pages).
    pub flushes: u64,
}

impl Bitmaps {
    /// Opens the bitmaps of an image. `map` chooses memmap2 where the device can be mapped
    /// ([`Device::map_mut`]); otherwise pages are read and written through the device.
    pub fn open(dev: Arc<dyn Device>, geom: Geometry, map: bool) -> io::Result<Self> {
        Self::open_with_written(dev, geom, None, map)
    }

    /// [`Bitmaps::open`] for a primary with a written map (mapped and flushed with the
    /// bitmaps, so marking it costs no sync of its own).
    pub fn open_with_written(
        dev: Arc<dyn Device>,
        geom: Geometry,
        written: Option<WrittenMap>,
        map: bool,
    ) -> io::Result<Self> {
        let area = geom.bitmap_area();
        let area = match written {
            Some(m) if m.offset == area.end => area.start..m.offset + m.size(&geom),
            _ => area,
        };
        let mapped = if map {
            // SAFETY: the mapping is private to this process's use under the mirror lock;
            // other mirrorctl processes do not write the bitmap area while we hold it, and
            // an I/O error on a mapped page raises SIGBUS, which the binary turns into a
            // clean exit 4.
            unsafe { dev.map_mut(area.clone())? }
        } else {
            None
        };
        let store = match mapped {
            Some(m) => Store::Mapped(m),
            None => Store::Paged(HashMap::new()),
        };
        let extents = dev.data_extents(area.clone())?.map(|v| {
            v.into_iter()
                .map(|r| (r.start - area.start) / PAGE..(r.end - area.start).div_ceil(PAGE))
                .collect()
        });
        Ok(Bitmaps {
            geom,
            written,
            dev,
            store,
            dirty: BTreeSet::new(),
            extents,
            touched: BTreeSet::new(),
            flushes: 0,
        })
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    fn first_page(&self, id: BitmapId) -> u64 {
        (self.geom.bitmap(id) - self.geom.bitmap_offset) / PAGE
    }

    /// The first page at or after `p` (and before `end`) that may hold set bits.
    fn next_candidate_page(&self, p: u64, end: u64) -> Option<u64> {
        let Some(ext) = &self.extents else {
            return (p < end).then_some(p);
        };
        let from_ext = match ext.binary_search_by(|r| {
            if r.end <= p {
                std::cmp::Ordering::Less
            } else if r.start > p {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(_) => Some(p),
            Err(i) => ext.get(i).map(|r| r.start),
        };
        let from_touched = self.touched.range(p..).next().copied();
        let c = match (from_ext, from_touched) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        (c < end).then_some(c)
    }

    fn load(&mut self, p: u64) -> io::Result<()> {
        if let Store::Paged(pages) = &mut self.store {
            if let std::collections::hash_map::Entry::Vacant(v) = pages.entry(p) {
                let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
                self.dev
                    .read_at(&mut buf, self.geom.bitmap_offset + p * PAGE)?;
                v.insert(buf);
            }
        }
        Ok(())
    }

    fn page(&mut self, p: u64) -> io::Result<&[u8]> {
        self.load(p)?;
        Ok(match &self.store {
            Store::Mapped(m) => &m[(p * PAGE) as usize..((p + 1) * PAGE) as usize],
            Store::Paged(pages) => &pages[&p],
        })
    }

    /// For the last page of a bitmap: the bit (within the page) where regions end. Bits
    /// from there on name no region (B1).
    fn tail_bit(&self, p: u64) -> Option<usize> {
        let stride_pages = self.geom.bitmap_stride / PAGE;
        let area_pages = (1 + self.geom.slots as u64) * stride_pages;
        let last = (self.geom.region_count - 1) / PAGE_BITS;
        let used = (self.geom.region_count % PAGE_BITS) as usize;
        // The written map's pages (after the area) have their own length: bits past its
        // last chunk are never read as chunks (next_bits stops at the count).
        (p < area_pages && p % stride_pages == last && used != 0).then_some(used)
    }

    fn page_mut(&mut self, p: u64) -> io::Result<&mut [u8]> {
        if !self.touched.contains(&p) {
            if self.dev.needs_allocation() && matches!(self.store, Store::Mapped(_)) {
                // Allocate before the first write fault so a full filesystem is an error
                // here rather than a SIGBUS.
                self.dev
                    .allocate(self.geom.bitmap_offset + p * PAGE, PAGE)?;
            }
            self.touched.insert(p);
        }
        self.load(p)?;
        let tail = self.tail_bit(p);
        let page = match &mut self.store {
            Store::Mapped(m) => &mut m[(p * PAGE) as usize..((p + 1) * PAGE) as usize],
            Store::Paged(pages) => pages.get_mut(&p).unwrap(),
        };
        // B1: bits past the last region are garbage (a stray write, an old tool); they are
        // never counted and are cleared with the page's next change.
        if let Some(t) = tail {
            page.view_bits_mut::<Lsb0>()[t..].fill(false);
        }
        Ok(page)
    }

    fn check_range(&self, rs: &Range<u64>) {
        assert!(
            rs.start <= rs.end && rs.end <= self.geom.region_count,
            "region range {rs:?} outside 0..{}",
            self.geom.region_count
        );
    }

    /// Is region `r` set?
    pub fn get(&mut self, id: BitmapId, r: u64) -> io::Result<bool> {
        self.check_range(&(r..r + 1));
        let p = self.first_page(id) + r / PAGE_BITS;
        if self.next_candidate_page(p, p + 1).is_none() {
            return Ok(false);
        }
        let bit = (r % PAGE_BITS) as usize;
        Ok(self.page(p)?.view_bits::<Lsb0>()[bit])
    }

    /// Sets (or clears) every region in `rs`; returns whether any bit changed. Pages whose
    /// bits already have the value are not touched.
    pub fn set_range(&mut self, id: BitmapId, rs: Range<u64>, value: bool) -> io::Result<bool> {
        self.check_range(&rs);
        let base = self.first_page(id);
        self.set_bits(base, rs, value)
    }

    /// Sets (or clears) bits `rs` of the bit array starting at page `base`.
    fn set_bits(&mut self, base: u64, rs: Range<u64>, value: bool) -> io::Result<bool> {
        let mut changed = false;
        let mut r = rs.start;
        while r < rs.end {
            let p = base + r / PAGE_BITS;
            let lo = (r % PAGE_BITS) as usize;
            let hi = ((rs.end - r) + lo as u64).min(PAGE_BITS) as usize;
            let skip = !value && self.next_candidate_page(p, p + 1).is_none();
            if !skip {
                let bits = self.page(p)?.view_bits::<Lsb0>();
                let needs = if value {
                    !bits[lo..hi].all()
                } else {
                    bits[lo..hi].any()
                };
                if needs {
                    self.page_mut(p)?.view_bits_mut::<Lsb0>()[lo..hi].fill(value);
                    self.dirty.insert(p);
                    changed = true;
                }
            }
            r += (hi - lo) as u64;
        }
        Ok(changed)
    }

    /// First region at or after `from` whose bit equals `value`, or `region_count`.
    fn next_with(&mut self, id: BitmapId, from: u64, value: bool) -> io::Result<u64> {
        let base = self.first_page(id);
        self.next_bit(base, self.geom.region_count, from, value)
    }

    /// First bit at or after `from` (below `n`) of the bit array at page `base` whose value
    /// is `value`, or `n`.
    fn next_bit(&mut self, base: u64, n: u64, from: u64, value: bool) -> io::Result<u64> {
        let end_page = base + n.div_ceil(PAGE_BITS);
        let mut r = from;
        while r < n {
            let p = base + r / PAGE_BITS;
            if value {
                match self.next_candidate_page(p, end_page) {
                    None => return Ok(n),
                    Some(c) if c > p => {
                        r = (c - base) * PAGE_BITS;
                        continue;
                    }
                    _ => {}
                }
            } else if self.next_candidate_page(p, p + 1).is_none() {
                return Ok(r);
            }
            let page_start = (p - base) * PAGE_BITS;
            let page = self.page(p)?;
            let mut w = ((r - page_start) / 64) as usize;
            let mut first = true;
            while w < (PAGE / 8) as usize {
                let mut word = u64::from_le_bytes(page[w * 8..w * 8 + 8].try_into().unwrap());
                if !value {
                    word = !word;
                }
                if first {
                    let shift = (r - page_start) % 64;
                    word &= u64::MAX << shift;
                    first = false;
                }
                if word != 0 {
                    let found = page_start + w as u64 * 64 + word.trailing_zeros() as u64;
                    return Ok(found.min(n));
                }
                w += 1;
            }
            r = page_start + PAGE_BITS;
        }
        Ok(n)
    }

    /// The next run of set regions starting at or after `from`, at most `max` long.
    pub fn next_run(
        &mut self,
        id: BitmapId,
        from: u64,
        max: u64,
    ) -> io::Result<Option<Range<u64>>> {
        let s = self.next_with(id, from, true)?;
        if s >= self.geom.region_count {
            return Ok(None);
        }
        let limit = s.saturating_add(max).min(self.geom.region_count);
        let mut e = self.next_with(id, s, false)?;
        e = e.min(limit);
        Ok(Some(s..e))
    }

    /// Every run of set regions, in order (each at most `max` long).
    pub fn runs(&mut self, id: BitmapId, max: u64) -> io::Result<Vec<Range<u64>>> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(r) = self.next_run(id, from, max)? {
            from = r.end;
            out.push(r);
        }
        Ok(out)
    }

    /// Number of set regions, reading only pages that can hold bits.
    pub fn count(&mut self, id: BitmapId) -> io::Result<u64> {
        let base = self.first_page(id);
        let end = base + self.geom.region_count.div_ceil(PAGE_BITS);
        let mut total = 0u64;
        let mut p = base;
        while let Some(c) = self.next_candidate_page(p, end) {
            let tail = self.tail_bit(c).unwrap_or(PAGE_BITS as usize);
            let page = self.page(c)?;
            // B1: only bits that name a region count.
            total += page.view_bits::<Lsb0>()[..tail].count_ones() as u64;
            p = c + 1;
        }
        Ok(total)
    }

    /// Bytes of data covered by the set regions (the last region may be short).
    pub fn count_bytes(&mut self, id: BitmapId) -> io::Result<(u64, u64)> {
        let n = self.count(id)?;
        let last = self.geom.region_count - 1;
        let has_last = n > 0 && self.get(id, last)?;
        Ok((n, self.geom.bytes_of_regions(n, has_last)))
    }

    /// Sets in `dst` every region set in `src`; returns how many regions `src` had.
    pub fn or_into(&mut self, src: BitmapId, dst: BitmapId) -> io::Result<u64> {
        let mut n = 0;
        for r in self.runs(src, u64::MAX)? {
            n += r.end - r.start;
            self.set_range(dst, r, true)?;
        }
        Ok(n)
    }

    /// Clears a whole bitmap, touching only pages that hold bits.
    pub fn clear_all(&mut self, id: BitmapId) -> io::Result<()> {
        for r in self.runs(id, u64::MAX)? {
            self.set_range(id, r, false)?;
        }
        Ok(())
    }

    /// The page where the written map starts, if there is one.
    fn written_base(&self) -> Option<(WrittenMap, u64)> {
        let m = self.written?;
        Some((m, (m.offset - self.geom.bitmap_offset) / PAGE))
    }

    /// Whether this image keeps a written map (otherwise every region counts as written).
    pub fn has_written_map(&self) -> bool {
        self.written.is_some()
    }

    /// Marks the chunks holding `regions` written (the caller flushes, with the intents that
    /// protect the same writes); returns whether a bit changed. Without a map, nothing.
    pub fn mark_written(&mut self, regions: Range<u64>) -> io::Result<bool> {
        self.check_range(&regions);
        let Some((m, base)) = self.written_base() else {
            return Ok(false);
        };
        let chunks = m.chunks_of(&self.geom, &regions);
        self.set_bits(base, chunks, true)
    }

    /// Runs of regions that may have been written, in order: those of set chunks, or every
    /// region without a map.
    pub fn written_runs(&mut self) -> io::Result<Vec<Range<u64>>> {
        let Some((m, base)) = self.written_base() else {
            return Ok(std::iter::once(0..self.geom.region_count).collect());
        };
        let n = m.chunks(&self.geom);
        let mut out = Vec::new();
        let mut from = 0;
        while from < n {
            let s = self.next_bit(base, n, from, true)?;
            if s >= n {
                break;
            }
            let e = self.next_bit(base, n, s, false)?;
            out.push(m.regions_of(&self.geom, &(s..e)));
            from = e;
        }
        Ok(out)
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Makes every changed page durable with one metadata sync (an msync of the span of
    /// dirty pages, or page writes plus one device sync), and nothing when nothing changed.
    pub fn flush(&mut self) -> io::Result<()> {
        let (Some(&first), Some(&last)) = (self.dirty.first(), self.dirty.last()) else {
            return Ok(());
        };
        match &mut self.store {
            Store::Mapped(m) => {
                m.flush_range(
                    (first * PAGE) as usize,
                    ((last + 1 - first) * PAGE) as usize,
                )?;
            }
            Store::Paged(pages) => {
                for p in &self.dirty {
                    self.dev
                        .write_at(&pages[p], self.geom.bitmap_offset + p * PAGE)?;
                }
                self.dev.sync()?;
            }
        }
        self.dirty.clear();
        self.flushes += 1;
        Ok(())
    }

    /// The first half of a flush whose sync the caller makes (a device sync of the primary,
    /// with no lock held, while later changes go on in memory): writes the changed pages
    /// (paged store; a mapped store's are in the file's page cache already, which the
    /// primary's sync writes back) and hands them over. Give them back with
    /// [`Self::synced`] once the primary's sync returned, or [`Self::sync_failed`].
    /// A page changed again meanwhile stays changed for the next flush.
    pub fn prepare_sync(&mut self) -> io::Result<PreparedPages> {
        if let Store::Paged(pages) = &self.store {
            for p in &self.dirty {
                self.dev
                    .write_at(&pages[p], self.geom.bitmap_offset + p * PAGE)?;
            }
        }
        Ok(PreparedPages(std::mem::take(&mut self.dirty)))
    }

    /// The primary synced after [`Self::prepare_sync`]: those pages are durable (one
    /// metadata sync when there were any).
    pub fn synced(&mut self, p: PreparedPages) {
        if !p.0.is_empty() {
            self.flushes += 1;
        }
    }

    /// The primary's sync failed: the pages count as changed again.
    pub fn sync_failed(&mut self, p: PreparedPages) {
        self.dirty.extend(p.0);
    }

    /// Throws away cached pages (paged store), e.g. after a failed flush.
    pub fn forget_cache(&mut self) {
        if let Store::Paged(p) = &mut self.store {
            p.clear();
        }
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::sim::{Rng, SimDevice, World};
    use crate::format::layout::SlotIdx;
    use std::collections::BTreeSet as Set;

    fn setup(regions: u64) -> (SimDevice, Bitmaps) {
        let g = Geometry::for_data_size(regions * 4096, 4096, 2).unwrap();
        let w = World::new();
        let d = SimDevice::new(&w, g.data_offset);
        let b = Bitmaps::open(Arc::new(d.clone()), g, false).unwrap();
        (d, b)
    }

    const F0: BitmapId = BitmapId::Fracture(SlotIdx(0));
    const F1: BitmapId = BitmapId::Fracture(SlotIdx(1));
    const WI: BitmapId = BitmapId::WriteIntent;

    #[test]
    fn the_written_map_marks_whole_chunks_survives_a_flush_and_leaves_the_logs_alone() {
        let w = World::new();
        let g = Geometry::for_data_size(1 << 30, 4096, 2).unwrap();
        let d = SimDevice::new(&w, g.data_offset);
        let m = WrittenMap {
            offset: g.bitmap_area().end,
            chunk_size: 4 * 4096,
        };
        let mut b = Bitmaps::open_with_written(Arc::new(d.clone()), g, Some(m), false).unwrap();
        assert_eq!(b.written_runs().unwrap(), Vec::<Range<u64>>::new());
        assert!(b.mark_written(5..6).unwrap());
        assert!(!b.mark_written(4..8).unwrap(), "already marked: no change");
        b.mark_written(g.region_count - 1..g.region_count).unwrap();
        b.flush().unwrap();
        assert_eq!(b.count(BitmapId::WriteIntent).unwrap(), 0);
        let mut b2 = Bitmaps::open_with_written(Arc::new(d.clone()), g, Some(m), false).unwrap();
        let last = (g.region_count - 1) / 4 * 4;
        assert_eq!(b2.written_runs().unwrap(), vec![4..8, last..g.region_count]);
        // Without a map every region counts as written, and nothing is marked.
        let mut b3 = Bitmaps::open(Arc::new(d), g, false).unwrap();
        assert!(!b3.mark_written(0..1).unwrap());
        assert_eq!(
            b3.written_runs().unwrap(),
            crate::engine::plan::every(g.region_count)
        );
    }

    #[test]
    fn set_ranges_across_page_boundaries_count_and_iterate_exactly() {
        let (_d, mut b) = setup(100_000);
        b.set_range(F0, 32_760..32_780, true).unwrap();
        b.set_range(F0, 99_990..100_000, true).unwrap();
        assert_eq!(b.count(F0).unwrap(), 30);
        assert_eq!(b.count(WI).unwrap(), 0);
        assert_eq!(
            b.runs(F0, u64::MAX).unwrap(),
            vec![32_760..32_780, 99_990..100_000]
        );
        assert_eq!(
            b.runs(F0, 8).unwrap()[..3],
            [32_760..32_768, 32_768..32_776, 32_776..32_780]
        );
        assert!(b.get(F0, 32_779).unwrap());
        assert!(!b.get(F0, 32_780).unwrap());
        assert!(!b.get(F1, 32_779).unwrap());
    }

    #[test]
    fn bits_survive_flush_and_reopen_and_only_changed_pages_are_dirtied() {
        let (d, mut b) = setup(100_000);
        assert!(b.set_range(WI, 5..9, true).unwrap());
        assert!(
            !b.set_range(WI, 5..9, true).unwrap(),
            "setting set bits dirtied a page"
        );
        assert_eq!(b.dirty.len(), 1);
        b.flush().unwrap();
        assert_eq!(b.flushes, 1);
        b.flush().unwrap();
        assert_eq!(b.flushes, 1, "a flush with nothing dirty must not sync");
        let g = *b.geometry();
        let mut b2 = Bitmaps::open(Arc::new(d), g, false).unwrap();
        assert_eq!(b2.runs(WI, u64::MAX).unwrap(), vec![5..9]);
    }

    #[test]
    fn or_into_and_clear_all_move_whole_logs() {
        let (_d, mut b) = setup(70_000);
        b.set_range(WI, 1..3, true).unwrap();
        b.set_range(WI, 65_000..65_536, true).unwrap();
        b.set_range(F1, 2..4, true).unwrap();
        assert_eq!(b.or_into(WI, F1).unwrap(), 538);
        assert_eq!(b.runs(F1, u64::MAX).unwrap(), vec![1..4, 65_000..65_536]);
        b.clear_all(WI).unwrap();
        assert_eq!(b.count(WI).unwrap(), 0);
    }

    #[test]
    fn garbage_past_the_last_region_is_never_counted_and_goes_with_the_next_change() {
        let (d, b) = setup(100);
        let g = *b.geometry();
        // Bits 100.. of the write-intent page and of slot 1's page set behind our back.
        for id in [WI, F1] {
            let at = g.bitmap(id) + 100 / 8;
            d.write_at(&[0xf0, 0xff, 0xff], at).unwrap();
        }
        d.sync().unwrap();
        let mut b = Bitmaps::open(Arc::new(d.clone()), g, false).unwrap();
        assert_eq!(b.count(WI).unwrap(), 0);
        assert_eq!(b.count(F1).unwrap(), 0);
        assert_eq!(b.runs(F1, u64::MAX).unwrap(), vec![]);
        b.set_range(F1, 3..4, true).unwrap();
        b.flush().unwrap();
        assert_eq!(b.count(F1).unwrap(), 1);
        let mut raw = [0u8; 3];
        d.read_at(&mut raw, g.bitmap(F1) + 100 / 8).unwrap();
        assert_eq!(raw, [0, 0, 0], "the changed page's tail is cleared");
    }

    #[test]
    fn random_operations_match_a_simple_set_model() {
        let (_d, mut b) = setup(3 * 32_768 + 17);
        let n = b.geometry().region_count;
        let mut model: Set<u64> = Set::new();
        let mut rng = Rng::new(7);
        for _ in 0..300 {
            let s = rng.next_u64() % n;
            let len = (rng.next_u64() % 70_000).min(n - s);
            let v = rng.chance(60);
            b.set_range(F0, s..s + len, v).unwrap();
            for r in s..s + len {
                if v {
                    model.insert(r);
                } else {
                    model.remove(&r);
                }
            }
            if rng.chance(20) {
                b.flush().unwrap();
            }
        }
        assert_eq!(b.count(F0).unwrap(), model.len() as u64);
        let from_runs: Set<u64> = b.runs(F0, 1000).unwrap().into_iter().flatten().collect();
        assert_eq!(from_runs, model);
    }
}
