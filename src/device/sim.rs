//! Simulated devices for tests: a storage model that loses unsynced writes at a power cut,
//! and injectable write failures (EIO, ENOSPC) in the spirit of crucible's failure queue;
//! [`SimDevs`] is the set of them one mirror lives on, shared by the engine's tests and the
//! storage-model suites (tests/model).

use crate::device::open::Opener;
use crate::device::Device;
use crate::format::layout::Geometry;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const SECTOR: u64 = 512;

/// Shared clock of sync points across all devices of one scenario.
#[derive(Default)]
pub struct World {
    syncs: AtomicU64,
    crash_at: Mutex<Option<u64>>,
    crashed: AtomicBool,
}

impl World {
    pub fn new() -> Arc<Self> {
        Arc::new(World::default())
    }
    /// Power fails when sync point `n` (0-based, counted over every device) is reached:
    /// that sync and everything after it fails, and unsynced writes are at risk.
    pub fn crash_at(&self, n: u64) {
        *self.crash_at.lock().unwrap() = Some(n);
    }
    pub fn sync_points(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }
    fn check(&self) -> io::Result<()> {
        if self.crashed() {
            return Err(io::Error::other("simulated power cut"));
        }
        Ok(())
    }
    fn sync_point(&self) -> io::Result<()> {
        self.check()?;
        let n = self.syncs.fetch_add(1, Ordering::SeqCst);
        if *self.crash_at.lock().unwrap() == Some(n) {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(io::Error::other("simulated power cut"));
        }
        Ok(())
    }
}

struct Inner {
    durable: Vec<u8>,
    live: Vec<u8>,
    /// Sectors written since the last sync, in order: (sector offset, contents).
    pending: Vec<(u64, Vec<u8>)>,
    fail_writes: Option<i32>,
    fail_after_writes: Option<u64>,
    fail_reads: Option<i32>,
    writes: u64,
}

/// Which unsynced sectors survive a power cut.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    Nothing,
    Everything,
    /// Each unsynced sector survives with probability 1/2 (the PRNG seeded with this).
    Half(u64),
}

/// An in-memory device with a durable image and a live image.
#[derive(Clone)]
pub struct SimDevice {
    inner: Arc<Mutex<Inner>>,
    world: Arc<World>,
}

impl SimDevice {
    pub fn new(world: &Arc<World>, len: u64) -> Self {
        SimDevice {
            inner: Arc::new(Mutex::new(Inner {
                durable: vec![0; len as usize],
                live: vec![0; len as usize],
                pending: Vec::new(),
                fail_writes: None,
                fail_after_writes: None,
                fail_reads: None,
                writes: 0,
            })),
            world: world.clone(),
        }
    }

    /// The device as found after the power cut, in a new world: the durable image plus
    /// the unsynced sectors for which `keep` says true (applied in write order).
    pub fn after_power_cut(&self, world: &Arc<World>, mut keep: impl FnMut() -> bool) -> Self {
        let g = self.inner.lock().unwrap();
        let mut img = g.durable.clone();
        for (off, data) in &g.pending {
            if keep() {
                img[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
        }
        SimDevice {
            inner: Arc::new(Mutex::new(Inner {
                durable: img.clone(),
                live: img,
                pending: Vec::new(),
                fail_writes: None,
                fail_after_writes: None,
                fail_reads: None,
                writes: 0,
            })),
            world: world.clone(),
        }
    }

    /// The device as found after a power cut now, in the new `world`, keeping what `keep`
    /// says of its unsynced sectors.
    pub fn survive(&self, world: &Arc<World>, keep: Keep) -> Self {
        match keep {
            Keep::Nothing => self.after_power_cut(world, || false),
            Keep::Everything => self.after_power_cut(world, || true),
            Keep::Half(seed) => {
                let mut rng = Rng::new(seed);
                self.after_power_cut(world, move || rng.chance(50))
            }
        }
    }

    /// The data area of the image of geometry `g` this device holds.
    pub fn data_area(&self, g: &Geometry) -> Vec<u8> {
        self.contents()[g.data_offset as usize..g.total_len() as usize].to_vec()
    }

    /// Current contents as a reader would see them.
    pub fn contents(&self) -> Vec<u8> {
        self.inner.lock().unwrap().live.clone()
    }

    /// Every later write fails with this errno (e.g. `libc::EIO`, `libc::ENOSPC`).
    pub fn fail_writes(&self, errno: i32) {
        self.inner.lock().unwrap().fail_writes = Some(errno);
    }

    /// Writes after the next `n` succeed fail with EIO.
    pub fn fail_after_writes(&self, n: u64) {
        let mut g = self.inner.lock().unwrap();
        g.fail_after_writes = Some(g.writes + n);
    }

    pub fn fail_reads(&self, errno: i32) {
        self.inner.lock().unwrap().fail_reads = Some(errno);
    }

    pub fn heal(&self) {
        let mut g = self.inner.lock().unwrap();
        g.fail_writes = None;
        g.fail_after_writes = None;
        g.fail_reads = None;
    }
}

impl Device for SimDevice {
    fn len(&self) -> u64 {
        self.inner.lock().unwrap().live.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.world.check()?;
        let g = self.inner.lock().unwrap();
        if let Some(e) = g.fail_reads {
            return Err(io::Error::from_raw_os_error(e));
        }
        let end = off as usize + buf.len();
        if end > g.live.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&g.live[off as usize..end]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.world.check()?;
        let mut g = self.inner.lock().unwrap();
        if let Some(e) = g.fail_writes {
            return Err(io::Error::from_raw_os_error(e));
        }
        if let Some(n) = g.fail_after_writes {
            if g.writes >= n {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        g.writes += 1;
        let end = off as usize + buf.len();
        if end > g.live.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        g.live[off as usize..end].copy_from_slice(buf);
        // Record per sector so a power cut can tear a write at any sector boundary.
        let mut pos = off;
        while pos < end as u64 {
            let next = ((pos / SECTOR + 1) * SECTOR).min(end as u64);
            let slice = g.live[pos as usize..next as usize].to_vec();
            g.pending.push((pos, slice));
            pos = next;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.world.sync_point()?;
        let mut g = self.inner.lock().unwrap();
        if let Some(e) = g.fail_writes {
            return Err(io::Error::from_raw_os_error(e));
        }
        g.durable = g.live.clone();
        g.pending.clear();
        Ok(())
    }
}

/// A small deterministic random generator for power-cut choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    /// Fills `buf` with the next bytes of the sequence.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Deterministic pseudo-random bytes for test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill(&mut out);
    out
}

/// Simulated devices of one world by location (a primary, its secondaries, spares): what
/// the engine's tests and the storage-model suites (tests/model) build their mirrors on.
#[derive(Clone)]
pub struct SimDevs {
    pub world: Arc<World>,
    devs: Vec<(String, SimDevice)>,
}

impl SimDevs {
    /// A new world with a zeroed device of `len` bytes at each of `locations`.
    pub fn new(locations: &[&str], len: u64) -> SimDevs {
        let world = World::new();
        let devs = locations
            .iter()
            .map(|l| (l.to_string(), SimDevice::new(&world, len)))
            .collect();
        SimDevs { world, devs }
    }

    /// The device at `location` (panics if there is none: a test bug).
    pub fn dev(&self, location: &str) -> &SimDevice {
        self.devs
            .iter()
            .find(|(l, _)| l == location)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no simulated device at {location}"))
    }

    /// The devices with their locations, in the order given to [`SimDevs::new`].
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SimDevice)> {
        self.devs.iter().map(|(l, d)| (l.as_str(), d))
    }

    /// An opener of every device.
    pub fn opener(&self) -> SimOpener {
        self.opener_of(|d| d.clone())
    }

    /// An opener of every device as `wrap` makes it (a device that holds or counts its
    /// writes, say).
    pub fn opener_of<D>(&self, wrap: impl Fn(&SimDevice) -> D) -> SimOpener<D> {
        SimOpener::new(
            self.devs
                .iter()
                .map(|(l, d)| (l.clone(), wrap(d)))
                .collect(),
        )
    }

    /// The devices as found after a power cut now, in a new world: device `i` (in the
    /// order given to [`SimDevs::new`]) keeps what `keep(i)` says of its unsynced sectors.
    pub fn cut(&self, keep: impl Fn(usize) -> Keep) -> SimDevs {
        let world = World::new();
        let devs = self
            .devs
            .iter()
            .enumerate()
            .map(|(i, (l, d))| (l.clone(), d.survive(&world, keep(i))))
            .collect();
        SimDevs { world, devs }
    }
}

/// Opens simulated devices (or devices wrapping them) by location, like the real opener
/// opens paths; a location can be made missing (as if the disk were pulled).
pub struct SimOpener<D = SimDevice> {
    devs: HashMap<String, D>,
    missing: Mutex<HashSet<String>>,
}

impl<D> SimOpener<D> {
    pub fn new(devs: HashMap<String, D>) -> Self {
        SimOpener {
            devs,
            missing: Mutex::new(HashSet::new()),
        }
    }

    pub fn set_missing(&self, location: &str, missing: bool) {
        let mut m = self.missing.lock().unwrap();
        if missing {
            m.insert(location.to_string());
        } else {
            m.remove(location);
        }
    }

    pub fn is_missing(&self, location: &str) -> bool {
        self.missing.lock().unwrap().contains(location)
    }

    /// The device at `location` (panics if there is none: a test bug).
    pub fn dev(&self, location: &str) -> &D {
        self.devs
            .get(location)
            .unwrap_or_else(|| panic!("no simulated device at {location}"))
    }
}

impl<D: Device + Clone + 'static> Opener for SimOpener<D> {
    fn open(&self, location: &str) -> io::Result<Arc<dyn Device>> {
        if self.is_missing(location) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{location}: no such device (simulated)"),
            ));
        }
        match self.devs.get(location) {
            Some(d) => Ok(Arc::new(d.clone())),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{location}: no such device"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_can_be_lost_and_synced_ones_cannot() {
        let w = World::new();
        let d = SimDevice::new(&w, 4096);
        d.write_at(&[1; 512], 0).unwrap();
        d.sync().unwrap();
        d.write_at(&[2; 1024], 512).unwrap();
        let w2 = World::new();
        let lost = d.after_power_cut(&w2, || false);
        let mut b = [0u8; 1536];
        lost.read_at(&mut b, 0).unwrap();
        assert_eq!(&b[..512], &[1; 512]);
        assert_eq!(&b[512..], &[0; 1024]);
        let kept = d.after_power_cut(&w2, || true);
        kept.read_at(&mut b, 0).unwrap();
        assert_eq!(&b[512..], &[2; 1024]);
    }

    #[test]
    fn a_crash_at_a_sync_point_fails_that_sync_and_everything_after() {
        let w = World::new();
        let d = SimDevice::new(&w, 4096);
        w.crash_at(1);
        d.sync().unwrap();
        assert!(d.sync().is_err());
        assert!(d.write_at(&[1], 0).is_err());
        assert_eq!(w.sync_points(), 2);
    }

    #[test]
    fn injected_failures_return_the_chosen_errno() {
        let w = World::new();
        let d = SimDevice::new(&w, 4096);
        d.fail_after_writes(1);
        d.write_at(&[1], 0).unwrap();
        assert_eq!(
            d.write_at(&[1], 0).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        d.heal();
        d.fail_writes(libc::ENOSPC);
        assert_eq!(
            d.write_at(&[1], 0).unwrap_err().raw_os_error(),
            Some(libc::ENOSPC)
        );
    }
}
