//! The deterministic interleaving harness of the live rules (H1..H8 in `serve/mod.rs`):
//! every live admin operation runs on a served mirror of the storage model whose devices
//! hold each of the operation's I/Os at a step; at every step boundary, host writes,
//! flushes, leg failures or a competing admin operation (fracture, detach and attach) are
//! let in. After each schedule the invariant is checked by comparing bytes: every region
//! where a leg differs from the primary is in its fracture log or marked in the write-intent
//! log; after a clean stop, in its fracture log; after a resync of everything, nowhere. A
//! power cut at every sync point of a sample of the schedules is checked the same way after
//! recovery, with every flushed host write on the primary.

use super::serve::{Mutation, ServeConfig, Server};
use crate::device::sim::{Keep, SimDevice, SimDevs};
use crate::device::Device;
use crate::engine::verify::{VerifyOpts, VerifyReport};
use crate::engine::FlushPolicy;
use crate::engine::InitialSync;
use crate::engine::Mirror;
use crate::engine::NoProgress;
use crate::engine::ResyncOptions;
use crate::engine::MIN_HOT_EXTENTS;
use crate::error::Error;
use crate::format::layout::BitmapId;
use crate::format::layout::Geometry;
use crate::format::layout::SlotIdx;
use crate::format::LegState;
use crate::format::Superblock;
use crate::meta::image::Image;
use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::time::Duration;

const REGION: u64 = 4096;
const REGIONS: u64 = 64;

thread_local! {
    /// Set on the thread whose device I/O takes steps (the admin operation's).
    static GATED: Cell<bool> = const { Cell::new(false) };
}

#[derive(Default)]
struct StepState {
    taken: u64,
    pause_at: Option<u64>,
    paused: bool,
    done: bool,
}

/// The gated thread's steps: it stops before step `pause_at` until released.
#[derive(Default)]
struct Steps {
    st: Mutex<StepState>,
    cv: Condvar,
}

impl Steps {
    fn step(&self) {
        if !GATED.with(|g| g.get()) {
            return;
        }
        let mut s = self.st.lock().unwrap();
        if s.pause_at == Some(s.taken) {
            s.paused = true;
            self.cv.notify_all();
            while s.pause_at == Some(s.taken) {
                s = self.cv.wait(s).unwrap();
            }
            s.paused = false;
        }
        s.taken += 1;
    }
    /// Waits until the gated thread stands at its pause or has finished; true if paused.
    fn paused_or_done(&self) -> bool {
        let mut s = self.st.lock().unwrap();
        while !s.paused && !s.done {
            s = self.cv.wait(s).unwrap();
        }
        s.paused
    }
    fn release(&self) {
        self.st.lock().unwrap().pause_at = None;
        self.cv.notify_all();
    }
    fn finished(&self) {
        self.st.lock().unwrap().done = true;
        self.cv.notify_all();
    }
}

/// A device of the storage model whose I/O from the gated thread takes steps.
#[derive(Clone)]
struct Stepped {
    dev: SimDevice,
    steps: Arc<Steps>,
}

impl Device for Stepped {
    fn len(&self) -> u64 {
        self.dev.len()
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.steps.step();
        self.dev.read_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.steps.step();
        self.dev.write_at(buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        self.steps.step();
        self.dev.sync()
    }
}

/// The admin operation under test, on slot 1 (or a new leg).
#[derive(Clone, Copy, Debug)]
enum Op {
    Fracture,
    Resync,
    ResyncCompare,
    ResyncRate,
    /// Attach of a new image with a full initial sync, as the control socket does it.
    Attach,
    Detach,
    Verify,
    VerifyRepair,
}

/// What the other side does at the boundary, in order (host writes and admin commands).
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Write `n` regions at region `r`.
    Write(u64, u64),
    Flush,
    /// Every later write (and sync) of the leg fails.
    Fail(&'static str),
    Fracture(u32),
    Detach(u32),
    /// Attach image "n" (an initial copy of everything), taking the first free slot.
    AttachNew,
    /// A second live resync of the slot beside the operation (serve's background resync
    /// and the admin's `resync`); with no host write or leg change in its script, it must
    /// end with no error, the leg in sync and equal to the primary.
    SecondResync(u32),
}

/// The scripts let in at each boundary.
fn scripts() -> Vec<(&'static str, Vec<Act>)> {
    use Act::*;
    vec![
        // Overlapping the log the resync copies (8..20), then elsewhere.
        (
            "writes",
            vec![Write(10, 2), Flush, Write(40, 3), Write(11, 1)],
        ),
        (
            "fracture",
            vec![Write(12, 1), Fracture(1), Write(13, 2), Flush, Write(44, 1)],
        ),
        (
            "leg fails",
            vec![Fail("s1"), Write(9, 2), Flush, Write(50, 1)],
        ),
        (
            "detach and attach",
            vec![Write(14, 1), Detach(1), AttachNew, Write(15, 2), Flush],
        ),
    ]
}

/// A write's bytes: a pattern unique to the script step and schedule.
fn bytes_of(tag: u64, n: u64) -> Vec<u8> {
    crate::device::sim::pattern(tag, (n * REGION) as usize)
}

struct Rig {
    steps: Arc<Steps>,
    devs: SimDevs,
    g: Geometry,
    /// What the primary's data area must hold (every write went there first).
    model: Vec<u8>,
    /// Regions whose last write was followed by a flush that succeeded.
    flushed: Vec<bool>,
    /// Regions made to differ on s0 behind the mirror's back (for verify --repair).
    corrupt: Vec<u64>,
}

impl Rig {
    /// Everything but the devices, on `devs`.
    fn on(&self, devs: SimDevs) -> Rig {
        Rig {
            steps: self.steps.clone(),
            devs,
            g: self.g,
            model: self.model.clone(),
            flushed: self.flushed.clone(),
            corrupt: self.corrupt.clone(),
        }
    }
    fn sim(&self, name: &str) -> &SimDevice {
        self.devs.dev(name)
    }
    fn data(&self, name: &str) -> Vec<u8> {
        self.sim(name).data_area(&self.g)
    }
}

/// The mirror on primary "p" of `devs`, every device stepped by `steps`.
fn open_stepped(devs: &SimDevs, steps: &Arc<Steps>) -> crate::error::Result<Mirror> {
    let opener = devs.opener_of(|d| Stepped {
        dev: d.clone(),
        steps: steps.clone(),
    });
    let p = opener.dev("p").clone();
    Mirror::open(Arc::new(p), "p", Arc::new(opener), false)
}

/// A primary with in-sync secondaries s0 and s1 holding the same data, a spare image "n",
/// set up for `op`, then served.
fn rig(op: Op) -> (Rig, Arc<Server>) {
    let steps = Arc::new(Steps::default());
    let g = Geometry::for_data_size(REGIONS * REGION, REGION, 4).unwrap();
    let devs = SimDevs::new(&["p", "s0", "s1", "n"], g.total_len());
    Image::format(
        Arc::new(devs.dev("p").clone()),
        Superblock::new_primary(g, 0),
    )
    .unwrap();
    let stepped = |n: &str| Stepped {
        dev: devs.dev(n).clone(),
        steps: steps.clone(),
    };
    let mut m = open_stepped(&devs, &steps).unwrap();
    for n in ["s0", "s1"] {
        m.attach(
            Arc::new(stepped(n)),
            n,
            n,
            InitialSync::AssumeClean,
            false,
            false,
        )
        .unwrap();
    }
    let init = crate::device::sim::pattern(1, (REGIONS * REGION) as usize);
    m.write_stream(0, &mut &init[..], None, None, &FlushPolicy::End)
        .unwrap();
    let mut model = init;
    let mut corrupt = Vec::new();
    match op {
        Op::Resync | Op::ResyncCompare | Op::ResyncRate | Op::Detach => {
            // Slot 1 misses regions 8..20: they are in its log.
            m.fracture(1, None).unwrap();
            let d = bytes_of(2, 12);
            m.write_stream(8 * REGION, &mut &d[..], None, None, &FlushPolicy::End)
                .unwrap();
            model[(8 * REGION) as usize..(20 * REGION) as usize].copy_from_slice(&d);
        }
        Op::VerifyRepair => {
            let at = g.data_offset + 30 * REGION;
            devs.dev("s0").write_at(&[0xee; 512], at).unwrap();
            devs.dev("s0").sync().unwrap();
            corrupt.push(30);
        }
        _ => {}
    }
    let cfg = ServeConfig {
        hot_extents: MIN_HOT_EXTENTS,
        extent_bytes: 4 * REGION,
        read_only: false,
        // Four regions a chunk: a verify reads the image in many places among the writes.
        verify_chunk: 4 * REGION,
        ..Default::default()
    };
    let srv = m.serve(&cfg, Box::new(|_| {})).unwrap();
    if let Op::Fracture | Op::Detach | Op::Verify = op {
        // Written and not flushed when the operation starts: on every leg, durable on none.
        let d = bytes_of(3, 2);
        let t = srv.ticket(24 * REGION, 2 * REGION);
        srv.mutate(t, Mutation::Write(&d), false).unwrap();
        model[(24 * REGION) as usize..(26 * REGION) as usize].copy_from_slice(&d);
    }
    let mut flushed = vec![true; REGIONS as usize];
    flushed[24..26].fill(false);
    let rig = Rig {
        steps,
        devs,
        g,
        model,
        flushed,
        corrupt,
    };
    (rig, Arc::new(srv))
}

/// Runs the admin operation (on the gated thread); a verify's report.
fn run_op(srv: &Server, op: Op) -> std::result::Result<Option<VerifyReport>, String> {
    let e = |e: Error| e.to_string();
    let resync = |opts: ResyncOptions| {
        srv.resync_legs(&[1], &opts, false, &NoProgress, &|_| {})
            .map(|_| None)
            .map_err(e)
    };
    let verify = |repair: bool| {
        let opts = VerifyOpts {
            repair,
            max_time: None,
            restart: true,
        };
        srv.verify(&[0, 1], &opts, &NoProgress, &|_| {})
            .map(|(r, _)| Some(r))
            .map_err(e)
    };
    match op {
        Op::Fracture => srv.fracture_leg(1, None, &|_| {}).map(|_| None).map_err(e),
        Op::Resync => resync(ResyncOptions::default()),
        Op::ResyncCompare => resync(ResyncOptions {
            rate: None,
            compare: true,
        }),
        // 8 regions a run, 4 ms of rate limit between runs.
        Op::ResyncRate => resync(ResyncOptions {
            rate: Some(8 << 20),
            compare: false,
        }),
        Op::Attach => attach_new(srv).map(|_| None),
        Op::Detach => srv.detach_leg(1, &|_| {}).map(|_| None).map_err(e),
        Op::Verify => verify(false),
        Op::VerifyRepair => verify(true),
    }
}

/// Attaches "n" with a full initial sync while hosts write (the control socket's attach).
fn attach_new(srv: &Server) -> std::result::Result<(), String> {
    let dev = srv
        .with_mirror(|m| m.opener.open("n"))
        .map_err(|e| e.to_string())?;
    let o = srv
        .attach_leg(dev, "n", "n", InitialSync::Copy, true, false, &|_| {})
        .map_err(|e| e.to_string())?;
    srv.resync_legs(
        &[o.slot],
        &ResyncOptions::default(),
        false,
        &NoProgress,
        &|_| {},
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Runs the script on this (ungated) thread, keeping the model of the primary.
fn run_script(
    srv: &Server,
    rig: &Mutex<(Vec<u8>, Vec<bool>)>,
    acts: &[Act],
    tag: u64,
    sims: &SimDevs,
) {
    let mut since_flush: Vec<u64> = Vec::new();
    for (i, act) in acts.iter().enumerate() {
        match *act {
            Act::Write(r, n) => {
                let d = bytes_of(tag * 100 + i as u64, n);
                let t = srv.ticket(r * REGION, n * REGION);
                let ok = srv.mutate(t, Mutation::Write(&d), false).is_ok();
                let mut st = rig.lock().unwrap();
                if ok {
                    st.0[(r * REGION) as usize..((r + n) * REGION) as usize].copy_from_slice(&d);
                }
                for x in r..r + n {
                    st.1[x as usize] = false;
                    since_flush.push(x);
                }
            }
            Act::Flush => {
                if srv.flush().is_ok() {
                    let mut st = rig.lock().unwrap();
                    for x in since_flush.drain(..) {
                        st.1[x as usize] = true;
                    }
                }
            }
            Act::Fail(name) => sims.dev(name).fail_writes(libc::EIO),
            Act::Fracture(s) => {
                let _ = srv.fracture_leg(s, Some("script"), &|_| {});
            }
            Act::Detach(s) => {
                let _ = srv.detach_leg(s, &|_| {});
            }
            Act::AttachNew => {
                let _ = attach_new(srv);
            }
            Act::SecondResync(s) => second_resync(srv, s, sims),
        }
    }
}

/// [`Act::SecondResync`]: the report, the leg's state and its bytes when it returns.
fn second_resync(srv: &Server, slot: u32, sims: &SimDevs) {
    let r = srv.resync_legs(
        &[slot],
        &ResyncOptions::default(),
        false,
        &NoProgress,
        &|_| {},
    );
    let legs = r.map(|r| r.legs).map_err(|e| e.to_string());
    assert!(
        legs.as_ref()
            .is_ok_and(|l| l.iter().all(|l| l.error.is_none())),
        "the second resync of slot {slot} failed: {legs:?}"
    );
    let (g, leg) = srv.with_mirror(|m| (m.geometry(), m.sb().legs[slot as usize].clone()));
    assert_eq!(
        leg.state(),
        LegState::InSync,
        "after the second resync: {legs:?}"
    );
    let data = |n: &str| sims.dev(n).data_area(&g);
    assert!(
        data(&leg.location) == data("p"),
        "slot {slot} differs from the primary when the second resync says it is in sync"
    );
}

/// What one schedule ended with.
struct Ran {
    rig: Rig,
    srv: Arc<Server>,
    /// Whether the operation stood at the boundary (false: it ended before it).
    reached: bool,
    /// What a verify reported.
    verified: Option<VerifyReport>,
}

/// One schedule: `op` pauses before its step `at`; the script runs to its end (or to where
/// it waits for the operation); then the operation goes on.
fn schedule(op: Op, acts: &[Act], at: u64, cut: Option<u64>) -> Ran {
    let (mut rig, srv) = rig(op);
    if let Some(n) = cut {
        rig.devs.world.crash_at(rig.devs.world.sync_points() + n);
    }
    rig.steps.st.lock().unwrap().pause_at = Some(at);
    let model = Mutex::new((rig.model.clone(), rig.flushed.clone()));
    let (reached, verified) = std::thread::scope(|sc| {
        let admin = {
            let (srv, steps) = (srv.clone(), rig.steps.clone());
            sc.spawn(move || {
                GATED.with(|g| g.set(true));
                let r = run_op(&srv, op);
                steps.finished();
                r
            })
        };
        let reached = rig.steps.paused_or_done();
        if reached {
            let script = {
                let (srv, model, sims) = (srv.clone(), &model, &rig.devs);
                sc.spawn(move || run_script(&srv, model, acts, at + 7, sims))
            };
            // Until the script is done, or it waits for the paused operation (H4 tickets,
            // or the state lock the operation holds while it stands at its step).
            let mut held = 0;
            while !script.is_finished() {
                if srv.waiting() {
                    break;
                }
                held = if srv.state_held() { held + 1 } else { 0 };
                if held > 5 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            rig.steps.release();
            script.join().unwrap();
        } else {
            rig.steps.release();
        }
        let verified = admin.join().unwrap().ok().flatten();
        (reached, verified)
    });
    let (m, f) = model.into_inner().unwrap();
    rig.model = m;
    rig.flushed = f;
    Ran {
        rig,
        srv,
        reached,
        verified,
    }
}

/// The invariant, by bytes: every region where a listed leg differs from the primary is in
/// its fracture log, or (when `intents` are allowed) marked in the write-intent log.
fn check_logs(m: &mut Mirror, rig: &Rig, intents: bool, ctx: &str) {
    let p = rig.data("p");
    for s in 0..m.geometry().slots {
        let leg = m.sb().legs[s as usize].clone();
        if leg.state() == LegState::Empty {
            continue;
        }
        let d = rig.data(&leg.location);
        for r in 0..REGIONS {
            let span = (r * REGION) as usize..((r + 1) * REGION) as usize;
            if p[span.clone()] == d[span] || (s == 0 && rig.corrupt.contains(&r)) {
                continue;
            }
            let logged = m.log_bit(BitmapId::Fracture(SlotIdx(s)), r).unwrap();
            let marked = intents && m.log_bit(BitmapId::WriteIntent, r).unwrap();
            assert!(
                logged || marked,
                "{ctx}: slot {s} ({}, {}) differs from the primary in region {r}, which no log names",
                leg.location,
                leg.state().as_str()
            );
        }
    }
}

/// After a schedule: the invariant while serving, after a clean stop, and every leg equal to
/// the primary after a resync of everything.
fn check_schedule(ran: Ran, ctx: &str) {
    let Ran {
        rig, srv, verified, ..
    } = ran;
    // Verify reports only what differs: the corruption made behind the mirror's back, never
    // a host write racing its reads, nor a leg that missed writes (it is not compared).
    for l in verified.iter().flat_map(|v| v.legs.iter()) {
        let real = if l.slot == 0 { rig.corrupt.len() } else { 0 };
        assert!(
            l.mismatched_regions as usize <= real,
            "{ctx}: verify reported {} differing region(s) on slot {}, {real} are real: {:?}",
            l.mismatched_regions,
            l.slot,
            l.mismatches
        );
    }
    assert!(
        rig.data("p") == rig.model,
        "{ctx}: the primary does not hold what the host wrote"
    );
    srv.with_mirror(|m| check_logs(m, &rig, true, &format!("{ctx}, while serving")));
    let srv = Arc::try_unwrap(srv).ok().expect("no other holder");
    let (mut m, _) = srv.stop().unwrap();
    check_logs(&mut m, &rig, false, &format!("{ctx}, after a clean stop"));
    // And as the disks would hold it if the power failed now: a fractured leg's writes
    // that were never synced are gone, and its log must say where (H5).
    let durable = rig.on(rig.devs.cut(|_| Keep::Nothing));
    check_logs(
        &mut m,
        &durable,
        false,
        &format!("{ctx}, after a clean stop and a power cut"),
    );
    for (_, d) in rig.devs.iter() {
        d.heal();
    }
    let slots = m.resync_candidates().unwrap();
    let rep = m.resync(&slots, None, &NoProgress).unwrap();
    assert!(rep.legs.iter().all(|l| l.error.is_none()), "{ctx}: {rep:?}");
    let p = rig.data("p");
    for s in 0..m.geometry().slots {
        let leg = m.sb().legs[s as usize].clone();
        if leg.state() == LegState::Empty {
            continue;
        }
        assert_eq!(leg.state(), LegState::InSync, "{ctx}: slot {s}");
        assert!(
            rig.data(&leg.location) == p,
            "{ctx}: slot {s} ({}) differs from the primary after its resync",
            leg.location
        );
    }
}

/// After a power cut: recovery, then the invariant with nothing in flight, and every write
/// a flush covered on the primary.
fn check_cut(ran: Ran, seed: u64, ctx: &str) -> bool {
    let Ran { rig, srv, .. } = ran;
    if !rig.devs.world.crashed() {
        return false;
    }
    drop(srv);
    let devs = rig.devs.cut(|i| Keep::Half(seed.wrapping_add(i as u64)));
    let steps = Arc::new(Steps::default());
    let mut m = open_stepped(&devs, &steps)
        .unwrap_or_else(|e| panic!("{ctx}: reopening after the cut: {e}"));
    m.prepare_for_change()
        .unwrap_or_else(|e| panic!("{ctx}: recovering after the cut: {e}"));
    let after = Rig {
        steps,
        ..rig.on(devs)
    };
    check_logs(&mut m, &after, false, &format!("{ctx}, recovered"));
    let p = after.data("p");
    for r in 0..REGIONS {
        let span = (r * REGION) as usize..((r + 1) * REGION) as usize;
        if rig.flushed[r as usize] {
            assert!(
                p[span.clone()] == rig.model[span],
                "{ctx}: a flushed write to region {r} is not on the primary after the cut"
            );
        }
    }
    true
}

const OPS: [Op; 8] = [
    Op::Fracture,
    Op::Resync,
    Op::ResyncCompare,
    Op::ResyncRate,
    Op::Attach,
    Op::Detach,
    Op::Verify,
    Op::VerifyRepair,
];

/// Every boundary of `op` against every script.
fn every_boundary(op: Op) {
    for (name, acts) in scripts() {
        let mut at = 0;
        loop {
            let ctx = format!("{op:?} paused before its step {at}, then '{name}'");
            let ran = schedule(op, &acts, at, None);
            let reached = ran.reached;
            check_schedule(ran, &ctx);
            if !reached {
                break;
            }
            at += 1;
            assert!(at < 10_000, "{ctx}: the operation never ends");
        }
        assert!(at > 0, "{op:?}: no step was ever gated");
    }
}

#[test]
fn a_live_fracture_at_every_step_boundary_keeps_every_difference_in_a_log() {
    every_boundary(Op::Fracture);
}

#[test]
fn a_live_resync_at_every_step_boundary_keeps_every_difference_in_a_log() {
    every_boundary(Op::Resync);
}

#[test]
fn a_live_comparing_resync_at_every_step_boundary_keeps_every_difference_in_a_log() {
    every_boundary(Op::ResyncCompare);
}

#[test]
fn a_live_rate_limited_resync_at_every_step_boundary_keeps_every_difference_in_a_log() {
    every_boundary(Op::ResyncRate);
}

#[test]
fn a_live_attach_and_initial_sync_at_every_step_boundary_keeps_every_difference_in_a_log() {
    every_boundary(Op::Attach);
}

#[test]
fn a_live_detach_at_every_step_boundary_keeps_every_difference_in_a_log() {
    every_boundary(Op::Detach);
}

#[test]
fn a_live_verify_at_every_step_boundary_records_no_false_difference() {
    every_boundary(Op::Verify);
}

#[test]
fn a_live_verify_repair_at_every_step_boundary_keeps_every_difference_in_a_log() {
    every_boundary(Op::VerifyRepair);
}

#[test]
fn a_second_live_resync_of_the_leg_at_every_step_boundary_ends_in_sync_with_the_primarys_bytes() {
    // A serve restarted after a kill resyncs the legs left syncing in the background while
    // the admin's `resync` of the same leg comes in through the control socket.
    let acts = [Act::SecondResync(1)];
    let mut at = 0;
    loop {
        let ctx = format!("a live resync paused before its step {at}, then a second one");
        let ran = schedule(Op::Resync, &acts, at, None);
        let reached = ran.reached;
        check_schedule(ran, &ctx);
        if !reached {
            break;
        }
        at += 1;
        assert!(at < 10_000, "{ctx}: the resync never ends");
    }
    assert!(at > 2, "the resync was gated at {at} steps only");
}

#[test]
fn every_live_operation_survives_a_power_cut_at_every_sync_point_of_its_schedules() {
    for op in OPS {
        for (name, acts) in scripts() {
            // Boundaries early, in the middle and late in the operation.
            let steps = {
                let ran = schedule(op, &acts, u64::MAX, None);
                let n = ran.rig.steps.st.lock().unwrap().taken;
                n
            };
            for at in [0, steps / 2, steps.saturating_sub(1)] {
                let mut n = 0;
                loop {
                    let ctx = format!("{op:?} paused before step {at}, '{name}', cut at sync {n}");
                    let ran = schedule(op, &acts, at, Some(n));
                    if !check_cut(ran, n * 31 + at, &ctx) {
                        break;
                    }
                    n += 1;
                }
            }
        }
    }
}
