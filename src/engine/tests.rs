//! Engine rules on the storage model, without files.

use crate::device::sim::{SimDevice, SimDevs, SimOpener, World};
use crate::device::Device;
use crate::engine::fence;
use crate::engine::serve;
use crate::engine::FlushPolicy;
use crate::engine::InitialSync;
use crate::engine::Mirror;
use crate::engine::NoProgress;
use crate::engine::Opener;
use crate::engine::ResyncOptions;
use crate::engine::CHUNK;
use crate::engine::MIN_HOT_EXTENTS;
use crate::format;
use crate::format::layout::BitmapId;
use crate::format::layout::Geometry;
use crate::format::layout::SlotIdx;
use crate::format::LegState;
use crate::format::Superblock;
use crate::meta::image::Image;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// An opener of `secs` as "s0"..
fn opener_of(secs: &[SimDevice]) -> SimOpener {
    SimOpener::new(
        secs.iter()
            .enumerate()
            .map(|(i, d)| (format!("s{i}"), d.clone()))
            .collect(),
    )
}

/// A primary "p" with `n` attached, in-sync secondaries "s0".. on the storage model.
fn mirror(regions: u64, n: u32) -> (Mirror, SimDevice, Vec<SimDevice>) {
    let g = Geometry::for_data_size(regions * 4096, 4096, 4).unwrap();
    let locs: Vec<String> = std::iter::once("p".to_string())
        .chain((0..n).map(|i| format!("s{i}")))
        .collect();
    let devs = SimDevs::new(
        &locs.iter().map(String::as_str).collect::<Vec<_>>(),
        g.total_len(),
    );
    let p = devs.dev("p").clone();
    Image::format(Arc::new(p.clone()), Superblock::new_primary(g, 0)).unwrap();
    let secs: Vec<SimDevice> = locs[1..].iter().map(|l| devs.dev(l).clone()).collect();
    let mut m = Mirror::open(Arc::new(p.clone()), "p", Arc::new(devs.opener()), false).unwrap();
    for (i, d) in secs.iter().enumerate() {
        let loc = format!("s{i}");
        let o = m
            .attach(
                Arc::new(d.clone()),
                &loc,
                &loc,
                InitialSync::AssumeClean,
                false,
                false,
            )
            .unwrap();
        assert_eq!(o.regions, 0);
    }
    (m, p, secs)
}

#[test]
fn a_streaming_write_pays_one_metadata_sync_per_window_not_per_chunk() {
    let (mut m, p, secs) = mirror(8192, 2); // 32 MiB of 4 KiB regions
    m.window = 8 << 20; // two chunks per window
    let before = m.bitmaps.flushes;
    let input = vec![7u8; 24 << 20]; // 6 chunks of CHUNK (4 MiB)
    m.write_stream(0, &mut &input[..], None, None, &FlushPolicy::End)
        .unwrap();
    let syncs = m.bitmaps.flushes - before;
    // 3 windows marked (the clear of the previous window rides along in the same
    // flush) plus the final clear; not one per chunk.
    assert_eq!(syncs, 3 + 1, "metadata syncs");
    assert_eq!(m.pending_intents().unwrap(), 0);
    for d in &secs {
        assert_eq!(d.data_area(&m.geometry()), p.data_area(&m.geometry()));
    }
}

#[test]
fn fracture_bits_set_ahead_of_a_short_write_are_trimmed_at_the_end() {
    let (mut m, _p, _secs) = mirror(1024, 2);
    m.fracture(1, Some("test")).unwrap();
    // A pipe of unknown length: the window (64 MiB > data area) is marked ahead.
    let input = vec![1u8; 10_000];
    m.write_stream(4096 * 5, &mut &input[..], None, None, &FlushPolicy::End)
        .unwrap();
    let runs = m
        .bitmaps
        .runs(BitmapId::Fracture(SlotIdx(1)), u64::MAX)
        .unwrap();
    assert_eq!(runs, vec![5..8], "only the written regions stay in the log");
    assert_eq!(m.bitmaps.count(BitmapId::Fracture(SlotIdx(0))).unwrap(), 0);
}

#[test]
fn a_failing_secondary_is_fractured_and_its_log_covers_the_write() {
    let (mut m, p, secs) = mirror(1024, 2);
    secs[0].fail_writes(libc::ENOSPC);
    let input = vec![3u8; 3 * 4096];
    let r = m
        .write_stream(
            4096 * 10,
            &mut &input[..],
            None,
            Some(input.len() as u64),
            &FlushPolicy::End,
        )
        .unwrap();
    assert_eq!(r.newly_fractured, vec![0]);
    let leg = &m.sb().legs[0];
    assert_eq!(leg.state(), LegState::FracturedByError);
    assert!(
        leg.last_error.contains("offset 40960"),
        "{}",
        leg.last_error
    );
    let runs = m
        .bitmaps
        .runs(BitmapId::Fracture(SlotIdx(0)), u64::MAX)
        .unwrap();
    assert!(
        runs.iter().any(|r| r.start <= 10 && r.end >= 13),
        "{runs:?}"
    );
    assert_eq!(secs[1].data_area(&m.geometry()), p.data_area(&m.geometry()));
}

#[test]
fn reads_fall_back_to_an_in_sync_secondary_when_the_primary_fails() {
    let (mut m, p, secs) = mirror(256, 2);
    let input: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    m.write_stream(0, &mut &input[..], None, None, &FlushPolicy::End)
        .unwrap();
    p.fail_reads(libc::EIO);
    let mut buf = vec![0u8; 8192];
    let used = m.read_at(&mut buf, 0).unwrap();
    assert_eq!(used.map(|(s, _)| s), Some(0));
    assert_eq!(buf, input);
    // A leg with the region in its log is not used.
    m.fracture(0, None).unwrap();
    m.bitmaps
        .set_range(BitmapId::Fracture(SlotIdx(1)), 0..1, true)
        .unwrap();
    let err = m.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(err.kind, crate::error::Kind::Primary);
    let _ = secs;
}

#[test]
fn a_served_read_the_primary_fails_comes_from_an_in_sync_leg_and_is_logged_once() {
    let (mut m, p, secs) = mirror(256, 1);
    let data = vec![0x5au8; 64 << 10];
    m.write_stream(0, &mut &data[..], None, None, &FlushPolicy::End)
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    let srv = m
        .serve(
            &serve::ServeConfig::default(),
            Box::new(move |s| l2.lock().unwrap().push(s.to_string())),
        )
        .unwrap();
    p.fail_reads(libc::EIO);
    for _ in 0..3 {
        let mut buf = vec![0u8; 4096];
        srv.read(4096, &mut buf, true).unwrap();
        assert!(buf.iter().all(|&b| b == 0x5a));
    }
    let l = lines.lock().unwrap().clone();
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].contains("secondary slot 0"), "{l:?}");
    // A region written while served (hot, in the write-intent log) is not trusted to the
    // leg: the read fails rather than risk stale data.
    p.heal();
    let t = srv.ticket(8192, 4096);
    srv.mutate(t, serve::Mutation::Write(&[1u8; 4096]), false)
        .unwrap();
    p.fail_reads(libc::EIO);
    let mut buf = vec![0u8; 4096];
    let f = srv.read(8192, &mut buf, false).unwrap_err();
    assert_eq!(f.kind, serve::FailureKind::Io);
    drop(secs);
}

/// The data areas of `a` and `b` are equal (else the first sector that differs).
fn assert_same_data(m: &Mirror, a: &SimDevice, b: &SimDevice) {
    let g = m.geometry();
    let (a, b) = (a.data_area(&g), b.data_area(&g));
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("the data areas differ from byte {i} (sector {})", i / 512);
    }
}

/// A device whose first write at or past `from` (once `arm`ed) waits at a gate until it is
/// opened; later writes pass: a host write held between its admission and its write to the
/// primary, or a resync's copy held between its read and its write.
struct Gate {
    inner: SimDevice,
    from: u64,
    /// (a write is waiting, the gate is open)
    state: Arc<(Mutex<(bool, bool)>, std::sync::Condvar)>,
}

impl Gate {
    fn new(inner: SimDevice, from: u64) -> Arc<Gate> {
        Arc::new(Gate {
            inner,
            from,
            state: Arc::new((Mutex::new((false, true)), std::sync::Condvar::new())),
        })
    }
    /// Holds the next write.
    fn arm(&self) {
        *self.state.0.lock().unwrap() = (false, false);
    }
}

impl Gate {
    fn wait_for_writer(&self) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        while !s.0 {
            s = cv.wait(s).unwrap();
        }
    }
    fn open(&self) {
        let (m, cv) = &*self.state;
        m.lock().unwrap().1 = true;
        cv.notify_all();
    }
}

impl Device for Arc<Gate> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inner.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if off >= self.from {
            let (m, cv) = &*self.state;
            let mut s = m.lock().unwrap();
            if !s.0 && !s.1 {
                s.0 = true;
                cv.notify_all();
                while !s.1 {
                    s = cv.wait(s).unwrap();
                }
            }
        }
        self.inner.write_at(buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
}

/// A served primary on a gate that holds data writes, and no secondary.
fn gated_server(regions: u64, cfg: &serve::ServeConfig) -> (serve::Server, Arc<Gate>, Arc<World>) {
    let w = World::new();
    let g = Geometry::for_data_size(regions * 4096, 4096, 4).unwrap();
    let p = SimDevice::new(&w, g.total_len());
    Image::format(Arc::new(p.clone()), Superblock::new_primary(g, 0)).unwrap();
    let gate = Gate::new(p, g.data_offset);
    let m = Mirror::open(
        Arc::new(gate.clone()),
        "p",
        Arc::new(SimOpener::<SimDevice>::new(HashMap::new())),
        false,
    )
    .unwrap();
    (m.serve(cfg, Box::new(|_| {})).unwrap(), gate, w)
}

#[test]
fn a_leg_attached_while_a_host_write_is_in_flight_gets_that_write_from_its_initial_sync() {
    let (srv, gate, w) = gated_server(256, &serve::ServeConfig::default());
    let srv = Arc::new(srv);
    gate.arm(); // hold the next data write
    let host = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            let t = srv.ticket(8192, 4096);
            srv.mutate(t, serve::Mutation::Write(&[0xaa; 4096]), false)
        })
    };
    // The write is admitted (its extent hot, the legs it goes to chosen) and waits at the
    // primary; now a leg declared identical (--assume-clean) is attached.
    gate.wait_for_writer();
    let n = SimDevice::new(&w, gate.len());
    let o = srv
        .attach_leg(
            Arc::new(n.clone()),
            "n",
            "n",
            InitialSync::AssumeClean,
            false,
            false,
            &|_| {},
        )
        .unwrap();
    // H7: the write in flight is in its log, so it is syncing, not in sync.
    assert!(o.regions > 0, "the write in flight is in no log");
    assert_eq!(
        srv.with_mirror(|m| m.sb().legs[o.slot as usize].state()),
        LegState::Syncing
    );
    gate.open();
    host.join().unwrap().unwrap();
    let r = srv
        .resync_legs(
            &[o.slot],
            &ResyncOptions::default(),
            false,
            &NoProgress,
            &|_| {},
        )
        .unwrap();
    assert!(r.legs[0].error.is_none(), "{r:?}");
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[o.slot as usize].state(), LegState::InSync);
    assert_same_data(&m, &n, &gate.inner);
}

#[test]
fn a_slot_detached_and_attached_again_while_served_keeps_its_whole_initial_log_at_eviction() {
    // Extents of 4 regions, 16 of them hot at most: writes to 17 others evict the first.
    let cfg = serve::ServeConfig {
        hot_extents: MIN_HOT_EXTENTS,
        extent_bytes: 4 * 4096,
        ..Default::default()
    };
    let (mut m, _p, secs) = mirror(1024, 2);
    m.fracture(1, None).unwrap();
    m.resync(&[1], None, &NoProgress).unwrap();
    let srv = m.serve(&cfg, Box::new(|_| {})).unwrap();
    let write = |off: u64| {
        let t = srv.ticket(off, 4096);
        srv.mutate(t, serve::Mutation::Write(&[1; 4096]), false)
            .unwrap();
    };
    write(0); // extent 0 hot, region 0 written, not flushed
              // An admin fracture puts region 0 in slot 1's log (H5).
    assert!(srv.fracture_leg(1, None, &|_| {}).unwrap());
    srv.detach_leg(1, &|_| {}).unwrap();
    // The slot's next leg: every region in its initial log (a device that cannot tell its
    // holes), not synced yet.
    let o = srv
        .attach_leg(
            Arc::new(secs[1].clone()),
            "s1",
            "s1",
            InitialSync::Copy,
            true,
            false,
            &|_| {},
        )
        .unwrap();
    assert_eq!(o.slot, 1);
    let id = BitmapId::Fracture(SlotIdx(1));
    let all = srv.with_mirror(|m| m.bitmaps.count(id).unwrap());
    assert_eq!(all, 1024);
    for e in 1..=MIN_HOT_EXTENTS as u64 + 1 {
        write(e * 4 * 4096);
    }
    // Extent 0 left the hot set: nothing of the new leg's log was trimmed.
    assert_eq!(srv.with_mirror(|m| m.bitmaps.count(id).unwrap()), 1024);
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[1].state(), LegState::Syncing);
}

#[test]
fn a_host_write_sent_while_a_live_resync_copies_its_region_lands_after_the_copy_on_the_leg() {
    let (srv, primary, w) = gated_server(256, &serve::ServeConfig::default());
    let srv = Arc::new(srv);
    let g = srv.with_mirror(|m| m.geometry());
    let leg = Gate::new(SimDevice::new(&w, g.total_len()), g.data_offset);
    let o = srv
        .attach_leg(
            Arc::new(leg.clone()),
            "n",
            "n",
            InitialSync::AssumeClean,
            false,
            false,
            &|_| {},
        )
        .unwrap();
    let write = |byte: u8| {
        let t = srv.ticket(8192, 4096);
        srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
    };
    // Written while the leg is fractured: in its log, for the resync to copy.
    assert!(srv.fracture_leg(o.slot, None, &|_| {}).unwrap());
    write(0x11).unwrap();
    // The copy reads 0x11 from the primary and waits before writing it to the leg.
    leg.arm();
    let resync = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            srv.resync_legs(
                &[o.slot],
                &ResyncOptions::default(),
                false,
                &NoProgress,
                &|_| {},
            )
        })
    };
    leg.wait_for_writer();
    // A host write to the same region now (the leg receives writes: H7). H4: it waits for
    // the copy, whose place in arrival order came first; without it, it would reach the
    // leg before the copy's older data and be overwritten.
    let host = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            let t = srv.ticket(8192, 4096);
            srv.mutate(t, serve::Mutation::Write(&[0x22; 4096]), false)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    leg.open();
    host.join().unwrap().unwrap();
    let r = resync.join().unwrap().unwrap();
    assert!(r.legs[0].error.is_none(), "{r:?}");
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[o.slot as usize].state(), LegState::InSync);
    let at = (g.data_offset + 8192) as usize;
    assert!(
        leg.inner.contents()[at..at + 4096] == [0x22; 4096],
        "the host's write is not on the leg"
    );
    assert_same_data(&m, &leg.inner, &primary.inner);
}

#[test]
fn a_live_resync_copies_a_region_only_after_a_host_write_sent_before_it_finished() {
    let (srv, primary, w) = gated_server(256, &serve::ServeConfig::default());
    let srv = Arc::new(srv);
    let g = srv.with_mirror(|m| m.geometry());
    let leg = SimDevice::new(&w, g.total_len());
    let o = srv
        .attach_leg(
            Arc::new(leg.clone()),
            "n",
            "n",
            InitialSync::AssumeClean,
            false,
            false,
            &|_| {},
        )
        .unwrap();
    let write = |byte: u8| {
        let t = srv.ticket(8192, 4096);
        srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
    };
    // Written while the leg is fractured: in its log, for the resync to copy.
    assert!(srv.fracture_leg(o.slot, None, &|_| {}).unwrap());
    write(0x11).unwrap();
    // A host write to the region, sent before the resync, waits at the primary ...
    primary.arm();
    let host = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            let t = srv.ticket(8192, 4096);
            srv.mutate(t, serve::Mutation::Write(&[0x22; 4096]), false)
        })
    };
    primary.wait_for_writer();
    // ... while the resync copies the region: H4 makes the copy wait for it; without it,
    // the copy took the primary's older data to the leg and cleared its bit.
    let resync = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            srv.resync_legs(
                &[o.slot],
                &ResyncOptions::default(),
                false,
                &NoProgress,
                &|_| {},
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    primary.open();
    host.join().unwrap().unwrap();
    let r = resync.join().unwrap().unwrap();
    assert!(r.legs[0].error.is_none(), "{r:?}");
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[o.slot as usize].state(), LegState::InSync);
    assert_same_data(&m, &leg, &primary.inner);
}

/// Opens "s0".. as given, and refuses `refused` as TLS refuses a server it cannot trust.
struct Refusing(SimOpener, &'static str);
impl Opener for Refusing {
    fn open(&self, location: &str) -> io::Result<Arc<dyn Device>> {
        if location == self.1 {
            return Err(crate::tls::refused(
                "TLS: the peer's certificate is not for the name it was reached by",
            ));
        }
        self.0.open(location)
    }
}

#[test]
fn a_leg_tls_refuses_stops_a_write_before_anything_is_written_and_stays_in_sync_o1() {
    let (m, p, secs) = mirror(1024, 2);
    drop(m);
    let before = p.contents();
    let opener = Refusing(opener_of(&secs), "s1");
    let mut m = Mirror::open(Arc::new(p.clone()), "p", Arc::new(opener), false).unwrap();
    let input = vec![9u8; 64 << 10];
    let e = m
        .write_stream(0, &mut &input[..], None, None, &FlushPolicy::End)
        .unwrap_err();
    assert_eq!(e.kind, crate::error::Kind::Invalid, "{e}");
    assert!(e.to_string().contains("not fractured"), "{e}");
    assert_eq!(m.sb().legs[1].state(), LegState::InSync);
    assert_eq!(m.sb().legs[0].state(), LegState::InSync);
    assert!(p.contents() == before, "the primary was written");
    drop(m);
    // The same leg merely gone (a server that is down) is fractured, and the write goes on.
    let gone = opener_of(&secs);
    gone.set_missing("s1", true);
    let mut m = Mirror::open(Arc::new(p.clone()), "p", Arc::new(gone), false).unwrap();
    m.write_stream(0, &mut &input[..], None, None, &FlushPolicy::End)
        .unwrap();
    assert_eq!(m.sb().legs[1].state(), LegState::FracturedByError);
    assert_eq!(secs[0].data_area(&m.geometry()), p.data_area(&m.geometry()));
}

#[test]
fn a_leg_failing_mid_stream_after_a_flush_logs_only_what_it_missed_not_the_window() {
    let (mut m, p, secs) = mirror(8192, 2); // 32 MiB of 4 KiB regions, one 64 MiB window
                                            // Every chunk synced: the first two chunks are durable on every leg when the third fails.
    secs[0].fail_after_writes(2);
    let input = vec![5u8; 4 * CHUNK];
    let r = m
        .write_stream(0, &mut &input[..], None, None, &FlushPolicy::Always)
        .unwrap();
    assert_eq!(r.newly_fractured, vec![0]);
    let runs = m
        .bitmaps
        .runs(BitmapId::Fracture(SlotIdx(0)), u64::MAX)
        .unwrap();
    let per_chunk = CHUNK as u64 / 4096;
    // W4: the chunk it failed and the ones after it, not the two it holds durably, and not
    // the rest of the window the stream never wrote.
    assert_eq!(runs, vec![2 * per_chunk..4 * per_chunk], "{runs:?}");
    assert_eq!(secs[1].data_area(&m.geometry()), p.data_area(&m.geometry()));
    let (leg, prim) = (secs[0].data_area(&m.geometry()), p.data_area(&m.geometry()));
    let upto = 2 * CHUNK;
    assert!(
        leg[..upto] == prim[..upto],
        "the synced chunks are on the leg"
    );
}

#[test]
fn a_ticket_dropped_without_release_holds_up_no_later_request() {
    let (m, _p, _secs) = mirror(256, 1);
    let srv = m
        .serve(&serve::ServeConfig::default(), Box::new(|_| {}))
        .unwrap();
    // As if the thread that took it panicked before the request ran.
    let lost = srv.ticket(0, 8192);
    drop(lost);
    let t = srv.ticket(4096, 4096);
    let started = std::time::Instant::now();
    srv.mutate(t, serve::Mutation::Write(&[7; 4096]), false)
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the write waited for a ticket nobody holds"
    );
    srv.stop().unwrap();
}

/// Opens like [`SimOpener`], but an open of `slow` waits until released, 2 s at most (a server
/// that does not answer; bounded, so that code opening it under the lock fails the test
/// rather than hanging it).
struct SlowOpen {
    legs: SimOpener,
    slow: &'static str,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
}
impl Opener for SlowOpen {
    fn open(&self, location: &str) -> io::Result<Arc<dyn Device>> {
        if location == self.slow {
            let (m, cv) = &*self.gate;
            let open = m.lock().unwrap();
            let _ = cv
                .wait_timeout_while(open, std::time::Duration::from_secs(2), |o| !*o)
                .unwrap();
        }
        self.legs.open(location)
    }
}

#[test]
fn a_live_resync_opening_a_leg_whose_server_hangs_stalls_no_host_write() {
    let (m, p, secs) = mirror(256, 2);
    drop(m);
    let gate = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
    let legs = opener_of(&secs);
    let opener = SlowOpen {
        legs,
        slow: "s1",
        gate: gate.clone(),
    };
    let mut m = Mirror::open(Arc::new(p.clone()), "p", Arc::new(opener), false).unwrap();
    m.fracture_by_error(1, "test", "gone").unwrap();
    let srv = Arc::new(
        m.serve(&serve::ServeConfig::default(), Box::new(|_| {}))
            .unwrap(),
    );
    *gate.0.lock().unwrap() = false; // from now on s1's server does not answer
    let resync = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            srv.resync_legs(&[1], &ResyncOptions::default(), false, &NoProgress, &|_| {})
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = std::time::Instant::now();
    let t = srv.ticket(4096, 4096);
    srv.mutate(t, serve::Mutation::Write(&[3; 4096]), false)
        .unwrap();
    srv.flush().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_millis(500),
        "a host write waited {:?} for a secondary being opened",
        started.elapsed()
    );
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let r = resync.join().unwrap().unwrap();
    assert!(r.legs[0].error.is_none(), "{r:?}");
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[1].state(), LegState::InSync);
    assert_same_data(&m, &secs[1], &p);
}

/// Kinds of the events in the mirror's journal, oldest first.
fn event_kinds(m: &Mirror) -> Vec<String> {
    m.sb()
        .journal
        .as_ref()
        .map(|j| {
            j.events
                .iter()
                .map(|e| format::journal::kind_name(e.kind))
                .collect()
        })
        .unwrap_or_default()
}

fn quorum_cfg(min: u32, wait: Duration) -> serve::ServeConfig {
    serve::ServeConfig {
        min_in_sync: min,
        quorum_wait: wait,
        ..Default::default()
    }
}

#[test]
fn a_served_write_with_fewer_in_sync_secondaries_than_the_minimum_is_refused_and_changes_nothing() {
    let (m, p, _secs) = mirror(64, 2);
    let srv = m
        .serve(&quorum_cfg(2, Duration::ZERO), Box::new(|_| {}))
        .unwrap();
    let write = |byte: u8| {
        let t = srv.ticket(0, 4096);
        srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
    };
    write(1).unwrap();
    srv.flush().unwrap();
    assert!(srv.fracture_leg(1, None, &|_| {}).unwrap());
    assert_eq!(
        srv.writes_refused().as_deref(),
        Some("1 of min 2 in-sync secondaries (slot 1 fractured-by-admin)")
    );
    for _ in 0..3 {
        let f = write(2).unwrap_err();
        assert_eq!(f.kind, serve::FailureKind::Io);
        assert!(f.msg.contains("writes refused: 1 of min 2"), "{}", f.msg);
    }
    assert!(srv.flush().is_err(), "a flush below the minimum is refused");
    // Nothing of the refused writes reached the primary or the fracture log.
    let g = srv.with_mirror(|m| m.geometry());
    assert_eq!(p.contents()[g.data_offset as usize], 1);
    assert_eq!(
        srv.with_mirror(|m| m.bitmaps.count(BitmapId::Fracture(SlotIdx(1))).unwrap()),
        0
    );
    // Lowered live: the next write goes on.
    assert_eq!(srv.set_min_in_sync(1).unwrap(), 2);
    assert_eq!(srv.writes_refused(), None);
    write(3).unwrap();
    srv.flush().unwrap();
    assert_eq!(p.contents()[g.data_offset as usize], 3);
    let (m, c) = srv.stop().unwrap();
    assert_eq!(c.refused, 4);
    let kinds = event_kinds(&m);
    let refused: Vec<&String> = kinds.iter().filter(|k| k.starts_with("writes-")).collect();
    // Once per transition, not per write.
    assert_eq!(refused, ["writes-refused", "writes-resumed"]);
}

#[test]
fn a_leg_failing_during_a_served_write_below_the_minimum_gets_the_host_an_error_and_its_log_the_write(
) {
    let (m, _p, secs) = mirror(64, 1);
    let srv = m
        .serve(&quorum_cfg(1, Duration::ZERO), Box::new(|_| {}))
        .unwrap();
    secs[0].fail_writes(libc::EIO);
    let t = srv.ticket(8 * 4096, 4096);
    let f = srv
        .mutate(t, serve::Mutation::Write(&[9; 4096]), false)
        .unwrap_err();
    assert!(f.msg.contains("not acknowledged"), "{}", f.msg);
    assert!(srv.flush().is_err());
    let (mut m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[0].state(), LegState::FracturedByError);
    // The leg is never silently different: the write is in its log.
    let id = BitmapId::Fracture(SlotIdx(0));
    assert!(m.bitmaps.next_run(id, 8, 9).unwrap().is_some());
    assert_eq!(m.pending_intents().unwrap(), 0);
}

#[test]
fn a_served_write_waiting_for_the_minimum_goes_on_when_a_live_resync_brings_a_leg_back() {
    let (m, p, secs) = mirror(64, 2);
    let srv = Arc::new(
        m.serve(&quorum_cfg(2, Duration::from_secs(600)), Box::new(|_| {}))
            .unwrap(),
    );
    // Region 0 written while slot 1 is fractured under min 1: in its log.
    srv.set_min_in_sync(1).unwrap();
    assert!(srv.fracture_leg(1, None, &|_| {}).unwrap());
    let t = srv.ticket(0, 4096);
    srv.mutate(t, serve::Mutation::Write(&[5; 4096]), false)
        .unwrap();
    srv.set_min_in_sync(2).unwrap();
    // A write to the same region waits for a second leg in sync ...
    let host = {
        let srv = srv.clone();
        std::thread::spawn(move || {
            let t = srv.ticket(0, 4096);
            srv.mutate(t, serve::Mutation::Write(&[6; 4096]), false)
        })
    };
    while !srv.waiting() {
        std::thread::yield_now();
    }
    // ... and does not hold up the resync copying that region (H9).
    let r = srv
        .resync_legs(&[1], &ResyncOptions::default(), false, &NoProgress, &|_| {})
        .unwrap();
    assert!(r.legs[0].error.is_none(), "{r:?}");
    host.join().unwrap().unwrap();
    srv.flush().unwrap();
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(p.data_area(&m.geometry())[0], 6);
    for d in &secs {
        assert_eq!(d.data_area(&m.geometry()), p.data_area(&m.geometry()));
    }
    assert_eq!(m.sb().legs[1].state(), LegState::InSync);
}

#[test]
fn a_stream_write_below_the_minimum_is_refused_before_anything_is_written() {
    let (mut m, p, _secs) = mirror(1024, 2);
    m.fracture(1, None).unwrap();
    m.min_in_sync = 2;
    let before = p.contents();
    let input = vec![7u8; 8192];
    let e = m
        .write_stream(0, &mut &input[..], None, None, &FlushPolicy::End)
        .unwrap_err();
    assert_eq!(e.kind, crate::error::Kind::Degraded);
    assert!(e.msg.contains("nothing was written"), "{}", e.msg);
    assert_eq!(p.contents(), before);
}

#[test]
fn a_stream_that_loses_a_leg_below_the_minimum_stops_and_reports_only_what_was_synced_with_it() {
    let (mut m, p, secs) = mirror(8192, 1); // 32 MiB
    m.min_in_sync = 1;
    // Two chunks reach the leg, the third fails on it.
    secs[0].fail_after_writes(2);
    let input = vec![7u8; 6 * CHUNK];
    let e = m
        .write_stream(0, &mut &input[..], None, None, &FlushPolicy::Always)
        .unwrap_err();
    assert_eq!(e.kind, crate::error::Kind::Degraded);
    let detail = |k: &str| {
        e.details
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(detail("bytes_written"), Some((2 * CHUNK as u64).into()));
    assert!(detail("writes_refused").is_some());
    // The stream stopped: the fourth chunk was never written to the primary.
    let g = m.geometry();
    assert_eq!(p.contents()[(g.data_offset as usize) + 3 * CHUNK], 0);
    // What the leg missed is in its log; no intent is left.
    let id = BitmapId::Fracture(SlotIdx(0));
    let third = (2 * CHUNK as u64) / 4096;
    assert!(m.bitmaps.next_run(id, third, third + 1).unwrap().is_some());
    assert_eq!(m.pending_intents().unwrap(), 0);
}

fn fence_cfg(cmd: &str) -> serve::ServeConfig {
    serve::ServeConfig {
        fence: fence::FenceHooks {
            fence_peer: Some(cmd.into()),
            unfence: None,
            timeout: Duration::from_secs(60),
            primary: "p".into(),
        },
        ..Default::default()
    }
}

#[test]
fn a_served_write_that_loses_a_leg_is_acknowledged_only_after_its_fence_hook_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("fenced");
    let (m, _p, secs) = mirror(64, 1);
    let cmd = format!("echo \"$MIRRORCTL_SLOT\" > {}", mark.display());
    let srv = m.serve(&fence_cfg(&cmd), Box::new(|_| {})).unwrap();
    secs[0].fail_writes(libc::EIO);
    let t = srv.ticket(0, 4096);
    srv.mutate(t, serve::Mutation::Write(&[1; 4096]), false)
        .unwrap();
    // E1: the hook had run (and exited 0) before the reply.
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "0\n");
    assert_eq!(srv.writes_held(), None);
    assert_eq!(srv.writes_refused(), None);
    srv.flush().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[0].state(), LegState::FracturedByError);
}

#[test]
fn a_failing_fence_hook_gets_served_writes_and_flushes_refused_until_the_leg_is_back_in_sync() {
    let (m, p, _secs) = mirror(64, 2);
    let srv = m.serve(&fence_cfg("exit 1"), Box::new(|_| {})).unwrap();
    assert!(srv.fracture_leg(1, Some("test"), &|_| {}).unwrap());
    let write = |byte: u8| {
        let t = srv.ticket(0, 4096);
        srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
    };
    let f = write(2).unwrap_err();
    assert!(
        f.msg.contains("--fence-peer for slot 1 failed"),
        "{}",
        f.msg
    );
    assert!(srv.flush().is_err());
    let g = srv.with_mirror(|m| m.geometry());
    assert_eq!(
        p.contents()[g.data_offset as usize],
        0,
        "a refused write ran"
    );
    srv.resync_legs(&[1], &ResyncOptions::default(), false, &NoProgress, &|_| {})
        .unwrap();
    assert_eq!(srv.writes_refused(), None);
    write(3).unwrap();
    srv.flush().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[1].state(), LegState::InSync);
    let kinds = event_kinds(&m);
    let w: Vec<&String> = kinds.iter().filter(|k| k.starts_with("writes-")).collect();
    assert_eq!(w, ["writes-refused", "writes-resumed"]);
}

#[test]
fn with_too_few_in_sync_secondaries_a_write_is_refused_without_running_or_waiting_for_the_fence_hook(
) {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("fenced");
    let delay = dir.path().join("delay");
    // A hook that cannot reach the cluster (an isolated node) hangs until its time limit.
    std::fs::write(&delay, "30").unwrap();
    let (m, _p, secs) = mirror(64, 1);
    let cmd = format!(
        "sleep \"$(cat {})\"; echo \"$MIRRORCTL_SLOT\" > {}",
        delay.display(),
        mark.display()
    );
    let cfg = serve::ServeConfig {
        min_in_sync: 1,
        quorum_wait: Duration::from_millis(300),
        ..fence_cfg(&cmd)
    };
    let srv = m.serve(&cfg, Box::new(|_| {})).unwrap();
    secs[0].fail_writes(libc::EIO);
    let write = |byte: u8| {
        let t = srv.ticket(0, 4096);
        srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
    };
    let start = std::time::Instant::now();
    let f = write(1).unwrap_err();
    assert!(f.msg.contains("fewer than --min-in-sync 1"), "{}", f.msg);
    assert!(write(2).is_err());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "refused only after {:?}: the writes waited for the hook",
        start.elapsed()
    );
    assert!(!mark.exists(), "a refused write ran the hook");
    // The minimum lowered: the next write could be acknowledged without the peer, so the
    // hook runs first (E1) and the write is acknowledged only after it exited 0.
    std::fs::write(&delay, "0").unwrap();
    srv.set_min_in_sync(0).unwrap();
    write(3).unwrap();
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "0\n");
    srv.flush().unwrap();
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[0].state(), LegState::FracturedByError);
}

#[test]
fn a_fracture_that_leaves_writes_refused_marks_its_generation_and_the_next_acknowledged_write_ends_it_durably_first(
) {
    let (m, p, secs) = mirror(64, 1);
    let cfg = quorum_cfg(1, Duration::from_millis(100));
    let srv = m.serve(&cfg, Box::new(|_| {})).unwrap();
    let write = |srv: &serve::Server, byte: u8| {
        let t = srv.ticket(0, 4096);
        srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
    };
    write(&srv, 1).unwrap();
    secs[0].fail_writes(libc::EIO);
    assert!(write(&srv, 2).is_err());
    let last = |srv: &serve::Server| srv.with_mirror(|m| m.sb().history.last().unwrap().clone());
    let refusing = last(&srv);
    assert!(
        super::quorum::acknowledged_nothing(&refusing.event),
        "{}",
        refusing.event
    );
    assert!(write(&srv, 3).is_err());
    assert_eq!(
        last(&srv).id,
        refusing.id,
        "a refused write changed the generation"
    );
    // Stopped and served again with no minimum: its first write ends the refusing
    // generation (committed) before it is acknowledged.
    let (m, _) = srv.stop().unwrap();
    let srv = m
        .serve(&quorum_cfg(0, Duration::ZERO), Box::new(|_| {}))
        .unwrap();
    write(&srv, 4).unwrap();
    let now = last(&srv);
    assert_eq!(now.event, super::quorum::ACKNOWLEDGING);
    assert_eq!(now.generation, refusing.generation + 1);
    drop(srv.stop().unwrap());
    let img = Image::read(Arc::new(p.clone())).unwrap();
    assert_eq!(
        img.sb.history.last().unwrap().event,
        super::quorum::ACKNOWLEDGING
    );
}

#[test]
fn a_failed_commit_of_the_generation_that_ends_a_refusing_one_is_retried_before_any_write_is_acknowledged(
) {
    let (m, p, secs) = mirror(64, 1);
    let srv = m
        .serve(&quorum_cfg(1, Duration::from_millis(100)), Box::new(|_| {}))
        .unwrap();
    let write = |byte: u8| {
        let t = srv.ticket(0, 4096);
        srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
    };
    secs[0].fail_writes(libc::EIO);
    assert!(write(1).is_err());
    srv.set_min_in_sync(0).unwrap();
    // The primary's superblock write fails: nothing may be acknowledged.
    p.fail_writes(libc::EIO);
    assert!(write(2).is_err());
    p.heal();
    let on_disk = || {
        Image::read(Arc::new(p.clone()))
            .unwrap()
            .sb
            .history
            .last()
            .unwrap()
            .event
            .clone()
    };
    assert!(super::quorum::acknowledged_nothing(&on_disk()));
    write(3).unwrap();
    // Acknowledged only once the generation that ends the refusing one is on disk (Q2).
    assert_eq!(on_disk(), super::quorum::ACKNOWLEDGING);
    drop(srv.stop());
}

/// A live resync asked for a leg that is in sync, logs nothing and receives every write
/// (another resync brought it back a moment ago) copies nothing and never shows it syncing:
/// set to syncing, the leg would be reported syncing by whichever command looked then.
#[test]
fn a_live_resync_of_a_leg_in_sync_with_nothing_logged_leaves_it_in_sync_throughout() {
    let (m, _p, _secs) = mirror(256, 2);
    let srv = m
        .serve(&serve::ServeConfig::default(), Box::new(|_| {}))
        .unwrap();
    /// The leg's state when the copy's total is set (after the resync's setup).
    struct Seen<'a> {
        srv: &'a serve::Server,
        state: Mutex<Option<LegState>>,
    }
    impl crate::engine::Progress for Seen<'_> {
        fn set_total(&self, _total: u64) {
            let now = self.srv.with_mirror(|m| m.sb().legs[1].state());
            *self.state.lock().unwrap() = Some(now);
        }
    }
    let seen = Seen {
        srv: &srv,
        state: Mutex::new(None),
    };
    let r = srv
        .resync_legs(&[1], &ResyncOptions::default(), false, &seen, &|_| {})
        .unwrap();
    assert!(r.legs[0].error.is_none(), "{r:?}");
    assert_eq!(r.legs[0].bytes, 0, "{r:?}");
    assert_eq!(*seen.state.lock().unwrap(), Some(LegState::InSync));
    let (m, _) = srv.stop().unwrap();
    assert_eq!(m.sb().legs[1].state(), LegState::InSync);
    assert!(
        !event_kinds(&m).iter().any(|k| k.starts_with("resync")),
        "{:?}",
        event_kinds(&m)
    );
}

/// What [`Watched`] devices saw: primary syncs, and data writes that found their region's
/// write intent not durable on the primary (W1).
#[derive(Default)]
struct Watch {
    /// (syncs of the primary begun, the next one is held, one is waiting at the hold)
    st: Mutex<(u64, bool, bool)>,
    cv: std::sync::Condvar,
    unmarked: Mutex<Vec<String>>,
}

/// A device of the storage model whose data writes check, before they start, that the
/// primary's durable image has the write intents of their regions; the primary's syncs
/// are counted and can be held.
#[derive(Clone)]
struct Watched {
    dev: SimDevice,
    primary: SimDevice,
    is_primary: bool,
    g: Geometry,
    watch: Arc<Watch>,
}

impl Device for Watched {
    fn len(&self) -> u64 {
        self.dev.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.dev.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if off >= self.g.data_offset {
            // W1: the durable image, as a power cut now would leave it.
            let durable = self.primary.after_power_cut(&World::new(), || false);
            let img = durable.contents();
            let base = self.g.bitmap(BitmapId::WriteIntent) as usize;
            let at = off - self.g.data_offset;
            for r in self.g.regions_for(at, buf.len() as u64) {
                if img[base + (r / 8) as usize] & (1 << (r % 8)) == 0 {
                    let who = if self.is_primary { "primary" } else { "leg" };
                    self.watch
                        .unmarked
                        .lock()
                        .unwrap()
                        .push(format!("{who} written in region {r}"));
                }
            }
        }
        self.dev.write_at(buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        if self.is_primary {
            let mut s = self.watch.st.lock().unwrap();
            s.0 += 1;
            while s.1 {
                s.2 = true;
                self.watch.cv.notify_all();
                s = self.watch.cv.wait(s).unwrap();
            }
            s.2 = false;
        }
        self.dev.sync()
    }
}

/// A mirror on `primary` (formatted already) with `leg` attached as "s0" (assumed clean),
/// served with the smallest hot set in extents of 4 regions of 4 KiB: the activity-log
/// tests' setup.
fn serve_small<P, L>(primary: P, leg: L) -> Arc<serve::Server>
where
    P: Device + Clone + 'static,
    L: Device + Clone + 'static,
{
    let legs = SimOpener::new(HashMap::from([("s0".to_string(), leg.clone())]));
    let mut m = Mirror::open(Arc::new(primary), "p", Arc::new(legs), false).unwrap();
    m.attach(
        Arc::new(leg),
        "s0",
        "s0",
        InitialSync::AssumeClean,
        false,
        false,
    )
    .unwrap();
    let cfg = serve::ServeConfig {
        hot_extents: MIN_HOT_EXTENTS,
        extent_bytes: 4 * 4096,
        ..Default::default()
    };
    Arc::new(m.serve(&cfg, Box::new(|_| {})).unwrap())
}

/// The data offset of extent `e` of [`serve_small`]'s mirror.
fn extent(e: u64) -> u64 {
    e * 4 * 4096
}

/// A 4 KiB host write of `byte` at the start of extent `e`.
fn write_extent(srv: &serve::Server, e: u64, byte: u8) -> serve::Served<()> {
    let t = srv.ticket(extent(e), 4096);
    srv.mutate(t, serve::Mutation::Write(&[byte; 4096]), false)
}

#[test]
fn concurrent_writes_to_distinct_cold_extents_share_one_metadata_sync_wake_only_when_granted_and_none_writes_before_its_intent_is_durable(
) {
    // Extents of 4 regions of 4 KiB, 16 hot at most, one secondary.
    let w = World::new();
    let g = Geometry::for_data_size(256 * 4096, 4096, 4).unwrap();
    let p = SimDevice::new(&w, g.total_len());
    Image::format(Arc::new(p.clone()), Superblock::new_primary(g, 0)).unwrap();
    let watch = Arc::new(Watch::default());
    let dev = |d: &SimDevice, is_primary| Watched {
        dev: d.clone(),
        primary: p.clone(),
        is_primary,
        g,
        watch: watch.clone(),
    };
    let s = SimDevice::new(&w, g.total_len());
    let srv = serve_small(dev(&p, true), dev(&s, false));
    let write = |srv: &serve::Server, e: u64| write_extent(srv, e, e as u8);
    // The hot set full of written extents (every other one: no writer looks sequential).
    for e in 0..MIN_HOT_EXTENTS as u64 {
        write(&srv, 2 * e).unwrap();
    }
    assert_eq!(srv.hot().0, MIN_HOT_EXTENTS);
    // A write whose transaction's sync is held: the requests after it queue.
    watch.st.lock().unwrap().1 = true;
    let first = {
        let srv = srv.clone();
        std::thread::spawn(move || write(&srv, 33))
    };
    {
        let mut s = watch.st.lock().unwrap();
        while !s.2 {
            s = watch.cv.wait(s).unwrap();
        }
    }
    let syncs = |srv: &serve::Server| srv.with_mirror(|m| m.metadata_syncs());
    let (meta0, primary0) = (syncs(&srv), watch.st.lock().unwrap().0);
    const N: u64 = 8;
    let writers: Vec<_> = (0..N)
        .map(|i| {
            let srv = srv.clone();
            std::thread::spawn(move || write(&srv, 35 + 2 * i))
        })
        .collect();
    // The held transaction's own request stays queued until its sync returns: N more.
    while srv.queued() < N as usize + 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Each needs an extent evicted (dirty ones): none of that is a sync of its own.
    {
        let mut s = watch.st.lock().unwrap();
        s.1 = false;
        watch.cv.notify_all();
    }
    first.join().unwrap().unwrap();
    for t in writers {
        t.join().unwrap().unwrap();
    }
    let meta = syncs(&srv) - meta0;
    let primary = watch.st.lock().unwrap().0 - primary0;
    // The held transaction's sync, then one for all N.
    assert_eq!(meta, 1 + 1, "metadata syncs for {N} writes to cold extents");
    assert_eq!(primary, 1, "primary syncs after the held one");
    // Each queued request woke once: when granted (or to lead the one transaction). Waking
    // every queued request at each change wakes them about N times each.
    assert_eq!(
        srv.idle_wakeups(),
        0,
        "wake-ups of queued requests with nothing to do"
    );
    let unmarked = watch.unmarked.lock().unwrap().clone();
    assert!(unmarked.is_empty(), "W1 broken: {unmarked:?}");
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (mut m, _) = srv.stop().unwrap();
    for e in std::iter::once(33).chain((0..N).map(|i| 35 + 2 * i)) {
        let at = (g.data_offset + extent(e)) as usize;
        assert_eq!(p.contents()[at..at + 4096], [e as u8; 4096], "extent {e}");
    }
    assert_same_data(&m, &p, &s);
    assert_eq!(m.pending_intents().unwrap(), 0);
}

/// `impl Device` for a test device that wraps the [`SimDevice`] in its `inner` and changes
/// only its syncs: its `before_sync` answers a sync itself (`Some`) or lets the inner
/// device's go on (`None`).
macro_rules! sync_wrapper {
    ($t:ty) => {
        impl Device for $t {
            fn len(&self) -> u64 {
                self.inner.len()
            }
            fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
                self.inner.read_at(buf, off)
            }
            fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
                self.inner.write_at(buf, off)
            }
            fn sync(&self) -> io::Result<()> {
                match self.before_sync() {
                    Some(r) => r,
                    None => self.inner.sync(),
                }
            }
        }
    };
}

/// (holding, syncs waiting for a turn, turns given and not taken)
type Turns = (bool, u64, u64);

/// A primary whose syncs, once `hold` is called, each wait for a turn given by `let_one`.
#[derive(Clone)]
struct Turnstile {
    inner: SimDevice,
    st: Arc<(Mutex<Turns>, std::sync::Condvar)>,
}

impl Turnstile {
    fn new(inner: SimDevice) -> Turnstile {
        Turnstile {
            inner,
            st: Arc::new((Mutex::new((false, 0, 0)), std::sync::Condvar::new())),
        }
    }
    fn hold(&self) {
        self.st.0.lock().unwrap().0 = true;
    }
    /// Waits until a sync stands at the turnstile.
    fn wait_held(&self) {
        let (m, cv) = &*self.st;
        let mut s = m.lock().unwrap();
        while s.1 == 0 {
            s = cv.wait(s).unwrap();
        }
    }
    /// Lets the sync standing at the turnstile go on, and waits until it went.
    fn let_one(&self) {
        let (m, cv) = &*self.st;
        let mut s = m.lock().unwrap();
        s.2 += 1;
        cv.notify_all();
        while s.2 > 0 {
            s = cv.wait(s).unwrap();
        }
    }
    fn open(&self) {
        let (m, cv) = &*self.st;
        m.lock().unwrap().0 = false;
        cv.notify_all();
    }
}

sync_wrapper!(Turnstile);

impl Turnstile {
    /// Once held, a sync waits for its turn, then goes on.
    fn before_sync(&self) -> Option<io::Result<()>> {
        let (m, cv) = &*self.st;
        let mut s = m.lock().unwrap();
        if s.0 {
            s.1 += 1;
            cv.notify_all();
            while s.0 && s.2 == 0 {
                s = cv.wait(s).unwrap();
            }
            if s.2 > 0 {
                s.2 -= 1;
            }
            s.1 -= 1;
            cv.notify_all();
        }
        None
    }
}

#[test]
fn a_request_granted_by_a_transaction_its_leader_was_left_out_of_goes_on_while_the_leader_syncs_its_own(
) {
    let (g, p, s) = small_devices();
    let primary = Turnstile::new(p.clone());
    let leg = Gate::new(s.clone(), g.data_offset);
    let srv = serve_small(primary.clone(), leg.clone());
    let write = |srv: &Arc<serve::Server>, e: u64, n: u64, b: u8| {
        let srv = srv.clone();
        std::thread::spawn(move || {
            let t = srv.ticket(extent(e), n * extent(1));
            let buf = vec![b; (n * extent(1)) as usize];
            srv.mutate(t, serve::Mutation::Write(&buf), false)
        })
    };
    // The hot set full: extents 40..52 (X's), then 0, 2, 4, 6.
    write(&srv, 40, 12, 1).join().unwrap().unwrap();
    for e in [0, 2, 4, 6] {
        write(&srv, e, 1, 2).join().unwrap().unwrap();
    }
    assert_eq!(srv.hot().0, MIN_HOT_EXTENTS);
    // X holds 12 of the 16 hot extents while its leg write is held.
    leg.arm();
    let x = write(&srv, 40, 12, 3);
    leg.wait_for_writer();
    // L needs 5 cold extents: no room (4 idle); it queues first.
    let l = write(&srv, 20, 5, 4);
    while srv.queued() < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Y fits (an idle extent evicted): its transaction, left L out, is held.
    primary.hold();
    let y = write(&srv, 60, 1, 5);
    primary.wait_held();
    // B queues behind L while Y's transaction syncs.
    let b = write(&srv, 62, 1, 6);
    while srv.queued() < 3 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Y's transaction ends; Y wakes L, which leads one for B (L still has no room): held.
    primary.let_one();
    y.join().unwrap().unwrap();
    primary.wait_held();
    // X ends: room for L once B's transaction ended.
    leg.open();
    x.join().unwrap().unwrap();
    // B's transaction ends; its leader L goes on to one of its own, held.
    primary.let_one();
    primary.wait_held();
    // B was granted: it writes while L's own transaction syncs.
    let t = std::time::Instant::now();
    while !b.is_finished() && t.elapsed() < Duration::from_millis(100) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let waited = t.elapsed();
    primary.open();
    b.join().unwrap().unwrap();
    l.join().unwrap().unwrap();
    assert!(
        waited < Duration::from_millis(100),
        "a granted request stood asleep {waited:?} while its leader synced another transaction"
    );
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (m, _) = srv.stop().unwrap();
    for (e, n, byte) in [(40, 12, 3), (20, 5, 4), (60, 1, 5), (62, 1, 6)] {
        let at = (g.data_offset + extent(e)) as usize;
        let len = (n * extent(1)) as usize;
        assert!(
            p.contents()[at..at + len].iter().all(|&x| x == byte),
            "extent {e}"
        );
    }
    assert_same_data(&m, &p, &s);
}

#[test]
fn a_sync_that_fails_for_an_earlier_one_that_found_the_disk_full_tells_the_host_no_space() {
    use crate::device::sync_order::{Descriptor, SyncSlots};
    struct Full;
    impl Descriptor for Full {
        fn sync_data(&self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }
    let slots = SyncSlots::<Full>::default();
    // The first sync finds the disk full; every later one fails with its kind (Y1), no
    // number of its own.
    let errs = [
        slots.sync(|| Ok(vec![Full])).unwrap_err(),
        slots.sync(|| Ok(Vec::new())).unwrap_err(),
    ];
    assert!(errs[1].raw_os_error().is_none(), "{}", errs[1]);
    for e in errs {
        let f = serve::Failure::io("syncing primary p".into(), &e);
        assert_eq!(f.kind, serve::FailureKind::NoSpace, "{}", f.msg);
    }
}

/// A leg whose first sync after [`HeldSync::arm`] waits until [`HeldSync::fail`], then
/// fails with EIO: the one sync Linux reports the leg's lost writeback to, while syncs
/// beside it succeed.
#[derive(Clone)]
struct HeldSync {
    inner: SimDevice,
    st: Arc<(Mutex<Held>, std::sync::Condvar)>,
}

/// (armed, a sync waits, failed)
type Held = (bool, bool, bool);

impl HeldSync {
    fn new(inner: SimDevice) -> HeldSync {
        HeldSync {
            inner,
            st: Arc::new((Mutex::new((false, false, false)), std::sync::Condvar::new())),
        }
    }
    fn arm(&self) {
        self.st.0.lock().unwrap().0 = true;
    }
    fn wait_held(&self) {
        let (m, cv) = &*self.st;
        let mut s = m.lock().unwrap();
        while !s.1 {
            s = cv.wait(s).unwrap();
        }
    }
    fn fail(&self) {
        let (m, cv) = &*self.st;
        m.lock().unwrap().2 = true;
        cv.notify_all();
    }
}

sync_wrapper!(HeldSync);

impl HeldSync {
    /// The first sync once armed is held, then fails with EIO.
    fn before_sync(&self) -> Option<io::Result<()>> {
        let (m, cv) = &*self.st;
        let mut s = m.lock().unwrap();
        if s.0 {
            s.0 = false;
            s.1 = true;
            cv.notify_all();
            while !s.2 {
                s = cv.wait(s).unwrap();
            }
            return Some(Err(io::Error::from_raw_os_error(libc::EIO)));
        }
        None
    }
}

/// Every region where `leg` (slot `slot`) differs from `primary` is in the slot's fracture
/// log, or (when `intents` count) in the write-intent log.
fn assert_differences_logged(
    m: &mut Mirror,
    primary: &SimDevice,
    leg: &SimDevice,
    slot: u32,
    intents: bool,
    ctx: &str,
) {
    let g = m.geometry();
    let (a, b) = (primary.data_area(&g), leg.data_area(&g));
    let rs = g.region_size as usize;
    for r in 0..g.region_count {
        let span = r as usize * rs..(r as usize + 1) * rs;
        if a[span.clone()] == b[span] {
            continue;
        }
        let logged = m.log_bit(BitmapId::Fracture(SlotIdx(slot)), r).unwrap();
        let marked = intents && m.log_bit(BitmapId::WriteIntent, r).unwrap();
        assert!(
            logged || marked,
            "{ctx}: slot {slot} differs from the primary in region {r}, which no log names"
        );
    }
}

/// A formatted primary and a blank secondary for [`serve_small`]: 256 regions of 4 KiB,
/// 64 extents of 4 regions (4 x the smallest hot set).
fn small_devices() -> (Geometry, SimDevice, SimDevice) {
    let w = World::new();
    let g = Geometry::for_data_size(256 * 4096, 4096, 4).unwrap();
    let p = SimDevice::new(&w, g.total_len());
    Image::format(Arc::new(p.clone()), Superblock::new_primary(g, 0)).unwrap();
    let s = SimDevice::new(&w, g.total_len());
    (g, p, s)
}

/// Fills the hot set with written extents (extent 0 the least recently used), starts a
/// flush whose sync `held` holds, and meanwhile writes two cold extents: the first
/// transaction evicts extent 0 and syncs the legs (those syncs succeed), the next one may
/// clear what the first made clean. Returns the flush, still held.
fn evict_during_a_held_flush(
    srv: &Arc<serve::Server>,
    held: &HeldSync,
) -> std::thread::JoinHandle<serve::Served<()>> {
    for e in 0..MIN_HOT_EXTENTS as u64 {
        write_extent(srv, 2 * e, 2 * e as u8 + 1).unwrap();
    }
    held.arm();
    let flush = {
        let srv = srv.clone();
        std::thread::spawn(move || srv.flush())
    };
    held.wait_held();
    write_extent(srv, 40, 41).unwrap();
    write_extent(srv, 42, 43).unwrap();
    flush
}

#[test]
fn an_extent_evicted_while_an_earlier_flush_still_syncs_keeps_its_writes_for_the_leg_that_flush_finds_failed(
) {
    let (g, p, s) = small_devices();
    let leg = HeldSync::new(s.clone());
    let srv = serve_small(p.clone(), leg.clone());
    // Linux will report the leg's lost writeback of extent 0 to the held flush alone (H5).
    let flush = evict_during_a_held_flush(&srv, &leg);
    // The leg lost extent 0's write; the held flush is told.
    s.write_at(&[0; 4096], g.data_offset + extent(0)).unwrap();
    leg.fail();
    flush.join().unwrap().unwrap();
    srv.with_mirror(|m| {
        assert!(m.sb().legs[0].state().is_fractured());
        assert_differences_logged(m, &p, &s, 0, true, "while serving");
    });
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (mut m, _) = srv.stop().unwrap();
    assert_differences_logged(&mut m, &p, &s, 0, false, "after a clean stop");
    let rep = m.resync(&[0], None, &NoProgress).unwrap();
    assert!(rep.legs.iter().all(|l| l.error.is_none()), "{rep:?}");
    assert_same_data(&m, &p, &s);
}

#[test]
fn an_extent_evicted_while_an_earlier_flush_still_syncs_keeps_its_intents_when_that_flush_finds_the_primary_failed(
) {
    let (g, p, s) = small_devices();
    let primary = HeldSync::new(p.clone());
    let srv = serve_small(primary.clone(), s.clone());
    // The primary's lost writeback of extent 0 is reported to the held flush alone; the
    // transactions' syncs beside it succeed.
    let flush = evict_during_a_held_flush(&srv, &primary);
    p.write_at(&[0; 4096], g.data_offset + extent(0)).unwrap();
    primary.fail();
    assert!(flush.join().unwrap().is_err());
    // W6: nothing that flush covered is cleared, by this transaction or any later one.
    write_extent(&srv, 44, 45).unwrap();
    write_extent(&srv, 46, 47).unwrap();
    srv.with_mirror(|m| assert_differences_logged(m, &p, &s, 0, true, "while serving"));
    let srv = Arc::try_unwrap(srv).ok().unwrap();
    let (mut m, _) = srv.stop().unwrap();
    assert_differences_logged(&mut m, &p, &s, 0, true, "after a clean stop");
}

#[test]
fn concurrent_writers_beyond_the_hot_set_leave_every_difference_logged_after_a_power_cut_at_any_sync_point(
) {
    writers_beyond_the_hot_set_cut_at_every_sync_point(None, false);
}

#[test]
fn a_leg_fractured_by_the_admin_or_failing_among_writers_beyond_the_hot_set_keeps_every_difference_logged_after_a_power_cut(
) {
    writers_beyond_the_hot_set_cut_at_every_sync_point(Some(false), false);
    writers_beyond_the_hot_set_cut_at_every_sync_point(Some(true), false);
}

#[test]
fn a_live_resync_among_writers_beyond_the_hot_set_keeps_every_difference_logged_after_a_power_cut()
{
    writers_beyond_the_hot_set_cut_at_every_sync_point(Some(false), true);
}

/// Four threads write 4 KiB at random over 4 times the hot set (group commits, evictions,
/// retired extents cleared), with flushes; the power fails at each sync point in turn
/// (the clean stop's included). After recovery every region where the leg differs from the
/// primary is in its log, every flushed write is on the primary, and a resync makes them
/// equal. `leg_trouble`: halfway, the leg is fractured by the admin (`false`) or its
/// writes start failing (`true`); `resync`: three quarters of the way, a live resync of it.
fn writers_beyond_the_hot_set_cut_at_every_sync_point(leg_trouble: Option<bool>, resync: bool) {
    // 64 extents of 4 regions, 16 hot: most writes need a transaction, most evict.
    const REGIONS: u64 = 256;
    const THREADS: u64 = 4;
    const WRITES: u64 = 24;
    let g = Geometry::for_data_size(REGIONS * 4096, 4096, 4).unwrap();
    let cfg = serve::ServeConfig {
        hot_extents: MIN_HOT_EXTENTS,
        extent_bytes: 4 * 4096,
        ..Default::default()
    };
    let mut cut_at = 0;
    let mut runs = 0;
    loop {
        let devs = SimDevs::new(&["p", "s0"], g.total_len());
        let p = devs.dev("p").clone();
        Image::format(Arc::new(p.clone()), Superblock::new_primary(g, 0)).unwrap();
        let mut m = Mirror::open(Arc::new(p.clone()), "p", Arc::new(devs.opener()), false).unwrap();
        let s = devs.dev("s0").clone();
        m.attach(
            Arc::new(s.clone()),
            "s0",
            "s0",
            InitialSync::AssumeClean,
            false,
            false,
        )
        .unwrap();
        let srv = Arc::new(m.serve(&cfg, Box::new(|_| {})).unwrap());
        devs.world.crash_at(devs.world.sync_points() + cut_at);
        // Each thread writes its own regions (r % THREADS == t), so a region's bytes are
        // those of its thread's last write; a flush that succeeded after a write's reply
        // makes it one the primary must keep.
        let flushed: Vec<Vec<(u64, u8)>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (srv, s) = (srv.clone(), &s);
                    sc.spawn(move || {
                        let mut rng = crate::device::sim::Rng::new(cut_at * 7 + t + 1);
                        let (mut acked, mut kept) = (Vec::new(), Vec::new());
                        for i in 0..WRITES {
                            if t == 0 && i == WRITES / 2 {
                                match leg_trouble {
                                    Some(false) => {
                                        let _ = srv.fracture_leg(0, None, &|_| {});
                                    }
                                    Some(true) => s.fail_writes(libc::EIO),
                                    None => {}
                                }
                            }
                            if t == 1 && i == 3 * WRITES / 4 && resync {
                                let _ = srv.resync_legs(
                                    &[0],
                                    &ResyncOptions::default(),
                                    false,
                                    &NoProgress,
                                    &|_| {},
                                );
                            }
                            let r = (rng.next_u64() % (REGIONS / THREADS)) * THREADS + t;
                            let b = (t * WRITES + i) as u8 | 1;
                            let tk = srv.ticket(r * 4096, 4096);
                            // Until a flush covers it, either bytes may survive a cut.
                            acked.retain(|(x, _)| *x != r);
                            kept.retain(|(x, _)| *x != r);
                            if srv
                                .mutate(tk, serve::Mutation::Write(&[b; 4096]), false)
                                .is_ok()
                            {
                                acked.push((r, b));
                            }
                            if i % 6 == 5 && srv.flush().is_ok() {
                                kept.append(&mut acked);
                            }
                        }
                        kept
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        runs += 1;
        // The clean stop's syncs are sync points too.
        let stopped = Arc::try_unwrap(srv).ok().unwrap().stop();
        if !devs.world.crashed() {
            // Every sync point was passed with no cut: a clean stop leaves nothing logged.
            let (mut m, _) = stopped.unwrap();
            if leg_trouble.is_none() {
                assert_same_data(&m, &p, &s);
            } else {
                assert_differences_logged(&mut m, &p, &s, 0, false, "after a clean stop");
            }
            assert_eq!(m.pending_intents().unwrap(), 0);
            break;
        }
        drop(stopped);
        let after = devs.cut(|i| crate::device::sim::Keep::Half(cut_at * 13 + i as u64));
        let (p2, s2) = (after.dev("p").clone(), after.dev("s0").clone());
        let mut m = Mirror::open(Arc::new(p2.clone()), "p", Arc::new(after.opener()), false)
            .unwrap_or_else(|e| panic!("cut at sync {cut_at}: reopening: {e}"));
        m.prepare_for_change()
            .unwrap_or_else(|e| panic!("cut at sync {cut_at}: recovering: {e}"));
        let ctx = format!("{leg_trouble:?}, resync {resync}: cut at sync {cut_at}, recovered");
        assert_differences_logged(&mut m, &p2, &s2, 0, false, &ctx);
        let data = p2.data_area(&g);
        for (r, b) in flushed.iter().flatten() {
            let at = (*r * 4096) as usize;
            assert!(
                data[at..at + 4096] == [*b; 4096],
                "{ctx}: a flushed write to region {r} is not on the primary"
            );
        }
        let rep = m.resync(&[0], None, &NoProgress).unwrap();
        assert!(rep.legs.iter().all(|l| l.error.is_none()), "{ctx}: {rep:?}");
        assert_same_data(&m, &p2, &s2);
        cut_at += 1;
        assert!(cut_at < 5_000, "the workload never ends");
    }
    assert!(runs > 20, "only {runs} sync points");
    eprintln!("{runs} power cuts checked");
}
