//! W7 on the storage model: writes to a fresh primary (its written map all clear) with the
//! power cut at every sync point never leave data the primary holds in a chunk the map
//! calls never written, so an attach afterwards, which copies only written chunks, still
//! gives a secondary equal to the primary.

use mirrorctl::device::sim::{pattern, Keep, SimDevice, SimOpener, World};
use mirrorctl::engine::create;
use mirrorctl::engine::{FlushPolicy, InitialSync, Mirror, NoProgress};
use mirrorctl::format::layout::{Geometry, KIB, MIB};
use std::collections::HashMap;
use std::sync::Arc;

const SEC: &str = "sec0";

/// (offset, length, length known to the stream)
const WRITES: [(u64, usize, bool); 3] = [
    (0, 64 * KIB as usize, true),
    (MIB + 4096, 40 * KIB as usize, true),
    // A stream of unknown length marks its window: here to the end of the data area.
    (3 * MIB + 5 * KIB, 10 * KIB as usize, false),
];

fn geometry() -> Geometry {
    Geometry::for_data_size(4 * MIB, 16 * KIB, 1).unwrap()
}

/// A fresh primary in a new world, made by `create`'s engine call (the probe finds nothing
/// on it, so the map starts clear).
fn fresh(world: &Arc<World>) -> SimDevice {
    let g = geometry();
    let p = SimDevice::new(world, g.total_len());
    create::format_primary(Arc::new(p.clone()), "primary", g, false).unwrap();
    p
}

fn open(p: &SimDevice, sec: Option<&SimDevice>) -> Mirror {
    let devs: HashMap<String, SimDevice> = sec
        .map(|s| (SEC.to_string(), s.clone()))
        .into_iter()
        .collect();
    Mirror::open(
        Arc::new(p.clone()),
        "primary",
        Arc::new(SimOpener::new(devs)),
        false,
    )
    .unwrap()
}

/// Runs the writes, stopping at the first error (the power cut). Returns sync points used.
fn run_writes(world: &Arc<World>, p: &SimDevice) -> u64 {
    let mut m = open(p, None);
    for (i, &(off, len, known)) in WRITES.iter().enumerate() {
        let data = pattern(40 + i as u64, len);
        let l = len as u64;
        let r = m.write_stream(
            off,
            &mut &data[..],
            known.then_some(l),
            known.then_some(l),
            &FlushPolicy::End,
        );
        if r.is_err() {
            break;
        }
    }
    world.sync_points()
}

/// After the cut: every non-zero byte of the primary lies in a written chunk, and a new
/// secondary attached and resynced equals the primary.
fn check(p: &SimDevice, ctx: &str) {
    let g = geometry();
    let sec_world = World::new();
    let sec = SimDevice::new(&sec_world, g.total_len());
    let mut m = open(p, Some(&sec));
    m.prepare_for_change().unwrap();
    let written = m.written_runs().unwrap();
    let data = p.data_area(&g);
    for (n, region) in data.chunks(g.region_size as usize).enumerate() {
        let r = n as u64;
        if region.iter().any(|&b| b != 0) {
            assert!(
                written.iter().any(|w| w.contains(&r)),
                "{ctx}: region {r} holds data but is recorded as never written ({written:?})"
            );
        }
    }
    m.attach(
        Arc::new(sec.clone()),
        SEC,
        SEC,
        InitialSync::Copy,
        false,
        false,
    )
    .unwrap();
    let cands = m.resync_candidates().unwrap();
    let rep = m.resync(&cands, None, &NoProgress).unwrap();
    assert!(rep.legs.iter().all(|l| l.error.is_none()), "{ctx}");
    assert!(
        sec.data_area(&g) == data,
        "{ctx}: the attached secondary differs"
    );
}

#[test]
fn attach_after_a_power_cut_at_every_sync_point_of_writes_to_a_fresh_primary_copies_all_it_holds() {
    let world = World::new();
    let p = fresh(&world);
    let base = world.sync_points();
    let n = run_writes(&world, &p) - base;
    assert!(n > 3, "{n} sync points");
    // Without a crash the map holds the three writes' chunks only.
    let cut = p.survive(&World::new(), Keep::Everything);
    let mut m = open(&cut, None);
    let chunks: u64 = m
        .written_runs()
        .unwrap()
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    assert!(
        chunks < geometry().region_count / 2,
        "{chunks} regions written"
    );
    drop(m);
    check(&cut, "without a crash");
    for k in 0..n {
        for keep in [
            Keep::Nothing,
            Keep::Everything,
            Keep::Half(1),
            Keep::Half(2),
        ] {
            let world = World::new();
            let p = fresh(&world);
            let base = world.sync_points();
            world.crash_at(base + k);
            run_writes(&world, &p);
            let cut = p.survive(&World::new(), keep);
            check(&cut, &format!("cut at sync point {k}/{n} keeping {keep:?}"));
        }
    }
}
