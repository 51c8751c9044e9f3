//! A served workload on the storage model (issue 13): writes, FUA writes, flushes, trims,
//! zeroes, overlapping writes and evictions from a small hot set, with the power cut at
//! every sync point. After each cut: every write a FLUSH or FUA reply acknowledged is on the
//! primary and on every leg still in sync; every region where a leg differs from the
//! primary is in the write-intent log or that leg's fracture log; recovery and resync
//! converge. Without a cut, a clean stop leaves no intent and a fractured leg's log holds
//! exactly the regions written while it was fractured.
//!
//! Two more workloads (issue 14) administer the mirror while serving: one fractures a leg
//! (H5) and resyncs it while the host's writes go on between the resync's runs, into
//! regions copied and not yet copied (H4, H7, S1); the other detaches a leg, attaches it
//! again as a new one with its initial sync between host writes (H7), and verifies with a
//! host write after the comparison (H4), which must find nothing. Every step boundary of
//! these operations is `src/engine/interleave.rs`.

use crate::crash_model::{Inst, Template, SECS};
use mirrorctl::device::sim::Keep;
use mirrorctl::engine::serve::{Mutation, ServeConfig, Server};
use mirrorctl::engine::{Mirror, NoProgress, Progress, WINDOW};
use mirrorctl::format::layout::{BitmapId, Geometry, SlotIdx};
use mirrorctl::format::LegState;
use std::collections::BTreeSet;
use std::sync::Mutex;

const SECTOR: usize = 512;
const WI: BitmapId = BitmapId::WriteIntent;

#[derive(Clone, Copy, Debug)]
enum Op {
    Write { off: u64, len: u64, fua: bool },
    Zero { off: u64, len: u64, punch: bool },
    Flush,
}

use Op::*;

/// A workload over 16 extents of 16 KiB with three hot: overlapping writes, FUA, flushes,
/// zeroes with and without holes, and enough distinct extents to evict dirty and clean ones.
fn workload() -> Vec<Op> {
    let k = 1024;
    vec![
        Write {
            off: 0,
            len: 8 * k,
            fua: false,
        },
        Write {
            off: 20 * k,
            len: 4 * k,
            fua: true,
        },
        Zero {
            off: 40 * k,
            len: 8 * k,
            punch: true,
        },
        Flush,
        Write {
            off: 4 * k,
            len: 8 * k,
            fua: false,
        },
        Zero {
            off: 100 * k,
            len: 16 * k,
            punch: false,
        },
        Write {
            off: 200 * k,
            len: 12 * k,
            fua: true,
        },
        Write {
            off: 130 * k + 512,
            len: 3 * k,
            fua: false,
        },
        Flush,
        Write {
            off: 60 * k,
            len: 4 * k,
            fua: false,
        },
        Write {
            off: 0,
            len: 4 * k,
            fua: false,
        },
        Write {
            off: 250 * k,
            len: 6 * k,
            fua: true,
        },
    ]
}

fn op_data(i: usize, op: &Op) -> Vec<u8> {
    match op {
        Write { len, .. } => {
            mirrorctl::device::sim::pattern(0x5E7E ^ (i as u64) << 20, *len as usize)
        }
        Zero { len, .. } => vec![0; *len as usize],
        Flush => Vec::new(),
    }
}

/// Per sector: the contents it may hold, oldest first, and the index of the newest one a
/// FLUSH or FUA reply made durable (contents before it can no longer appear).
struct Model {
    cands: Vec<Vec<Vec<u8>>>,
    floor: Vec<usize>,
    /// Regions written (or zeroed) while a leg was fractured.
    written_regions: BTreeSet<u64>,
}

impl Model {
    fn clone_state(&self) -> Model {
        Model {
            cands: self.cands.clone(),
            floor: self.floor.clone(),
            written_regions: self.written_regions.clone(),
        }
    }
    fn new(pre: &[u8]) -> Model {
        Model {
            cands: pre.chunks(SECTOR).map(|c| vec![c.to_vec()]).collect(),
            floor: vec![0; pre.len() / SECTOR],
            written_regions: BTreeSet::new(),
        }
    }
    fn start(&mut self, off: u64, data: &[u8], g: &Geometry) {
        for (j, c) in data.chunks(SECTOR).enumerate() {
            self.cands[off as usize / SECTOR + j].push(c.to_vec());
        }
        let r = g.regions_for(off, data.len() as u64);
        self.written_regions.extend(r);
    }
    fn durable(&mut self, off: u64, len: u64) {
        for x in off as usize / SECTOR..(off + len) as usize / SECTOR {
            self.floor[x] = self.cands[x].len() - 1;
        }
    }
    fn all_durable(&mut self) {
        for x in 0..self.floor.len() {
            self.floor[x] = self.cands[x].len() - 1;
        }
    }
    /// The first sector of `data` holding nothing a durable-acknowledged state allows.
    fn violation(&self, data: &[u8]) -> Option<usize> {
        (0..self.floor.len()).find(|&x| {
            let got = &data[x * SECTOR..(x + 1) * SECTOR];
            !self.cands[x][self.floor[x]..].iter().any(|c| c == got)
        })
    }
}

struct Run {
    model: Model,
    trace: Vec<String>,
}

fn config() -> ServeConfig {
    ServeConfig {
        hot_extents: 3,
        extent_bytes: 16 * 1024,
        read_only: false,
        ..Default::default()
    }
}

/// One request of the workload on the server; Err when it failed (only after a cut).
fn exec(srv: &Server, i: usize, op: &Op, model: &mut Model, g: &Geometry) -> Result<(), String> {
    let data = op_data(i, op);
    let r = match *op {
        Write { off, len, fua } => {
            model.start(off, &data, g);
            let t = srv.ticket(off, len);
            let r = srv.mutate(t, Mutation::Write(&data), fua);
            if r.is_ok() && fua {
                model.durable(off, len);
            }
            r
        }
        Zero { off, len, punch } => {
            model.start(off, &data, g);
            let t = srv.ticket(off, len);
            srv.mutate(t, Mutation::Zero { len, punch }, false)
        }
        Flush => {
            let r = srv.flush();
            if r.is_ok() {
                model.all_durable();
            }
            r
        }
    };
    r.map_err(|f| f.msg)
}

/// A resync's progress that sends the host's next request after every run copied.
struct HostBetweenRuns<'a> {
    next: &'a (dyn Fn() + Sync),
}

impl Progress for HostBetweenRuns<'_> {
    fn advance(&self, _bytes: u64) {
        (self.next)();
    }
}

/// What a live-administration workload does between the host's requests.
#[derive(Clone, Copy, Debug)]
enum Admin {
    /// Ops 0..3, an admin fracture of slot 1 while extents are hot, ops 3..6 (missed by
    /// it), then its resync with ops 6.. sent between the runs.
    FractureResync,
    /// Ops 0..3, a detach of slot 1, ops 3..5, its device attached again as a new leg with
    /// the initial sync's runs between ops 5.., then a verify with the host's next op after
    /// its comparison.
    DetachAttachVerify,
}

/// A live-administration workload (the rest of the ops after it, then a clean stop).
fn run_live(t: &Template, inst: &Inst, admin: Admin) -> (Run, Option<Mirror>) {
    let g = t.geom;
    let m = inst.open(WINDOW);
    let model = Mutex::new(Model::new(&t.pre));
    let trace = Mutex::new(Vec::new());
    let srv = match m.serve(&config(), Box::new(|_| {})) {
        Ok(s) => s,
        Err(e) => {
            assert!(inst.world.crashed(), "serve failed without a cut: {e}");
            let model = model.into_inner().unwrap();
            return (
                Run {
                    model,
                    trace: vec![],
                },
                None,
            );
        }
    };
    let ops = workload();
    let next = Mutex::new(0usize);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let step = || {
        let mut n = next.lock().unwrap();
        if *n >= ops.len() || failed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let i = *n;
        *n += 1;
        drop(n);
        let r = exec(&srv, i, &ops[i], &mut model.lock().unwrap(), &g);
        trace
            .lock()
            .unwrap()
            .push(format!("op {i} {:?}: {r:?}", ops[i]));
        if let Err(e) = r {
            assert!(inst.world.crashed(), "request failed without a cut: {e}");
            failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let finish = |m: Option<Mirror>| {
        let model = model.lock().unwrap().clone_state();
        let trace = trace.lock().unwrap().clone();
        (Run { model, trace }, m)
    };
    let failed_now = || failed.load(std::sync::atomic::Ordering::SeqCst);
    // An admin step: traced, or the run ends (only a cut may make it fail).
    let admin_step = |what: &str, r: Result<String, String>| -> bool {
        match r {
            Ok(s) => {
                trace.lock().unwrap().push(format!("{what}: {s}"));
                true
            }
            Err(e) => {
                assert!(inst.world.crashed(), "{what} failed without a cut: {e}");
                false
            }
        }
    };
    let no_say = |_: &str| {};
    let between = HostBetweenRuns { next: &step };
    let resync = |slot: u32| -> Result<String, String> {
        let rep = srv
            .resync_legs(&[slot], &Default::default(), false, &between, &no_say)
            .map_err(|e| e.to_string())?;
        if rep.legs.iter().any(|l| l.error.is_some()) {
            return Err(format!("{rep:?}"));
        }
        Ok(format!("{rep:?}"))
    };
    for _ in 0..3 {
        step();
    }
    if failed_now() {
        return finish(None);
    }
    match admin {
        Admin::FractureResync => {
            let r = srv.fracture_leg(1, Some("model"), &no_say);
            if !admin_step(
                "fracture slot 1",
                r.map(|d| d.to_string()).map_err(|e| e.to_string()),
            ) {
                return finish(None);
            }
            for _ in 3..6 {
                step();
            }
            if failed_now() || !admin_step("resync", resync(1)) {
                return finish(None);
            }
        }
        Admin::DetachAttachVerify => {
            let r = srv.detach_leg(1, &no_say);
            if !admin_step(
                "detach slot 1",
                r.map(|l| l.location).map_err(|e| e.to_string()),
            ) {
                return finish(None);
            }
            for _ in 3..5 {
                step();
            }
            if failed_now() {
                return finish(None);
            }
            let dev = std::sync::Arc::new(inst.opener.dev(SECS[1]).clone());
            let r = srv.attach_leg(
                dev,
                SECS[1],
                SECS[1],
                mirrorctl::engine::InitialSync::Copy,
                false,
                false,
                &no_say,
            );
            let slot = match r {
                Ok(o) => {
                    trace
                        .lock()
                        .unwrap()
                        .push(format!("attach: slot {}", o.slot));
                    o.slot
                }
                Err(e) => {
                    assert!(inst.world.crashed(), "attach failed without a cut: {e}");
                    return finish(None);
                }
            };
            if failed_now() || !admin_step("initial sync", resync(slot)) {
                return finish(None);
            }
            let opts = mirrorctl::engine::verify::VerifyOpts {
                repair: false,
                max_time: None,
                restart: false,
            };
            let slots: Vec<u32> = (0..g.slots).collect();
            let r = srv
                .verify(&slots, &opts, &between, &no_say)
                .map_err(|e| e.to_string())
                .and_then(|(rep, _)| {
                    if inst.world.crashed() || rep.result == "clean" {
                        Ok(rep.result)
                    } else {
                        Err(format!("a difference without a cut: {rep:?}"))
                    }
                });
            if !admin_step("verify", r) {
                return finish(None);
            }
        }
    }
    while *next.lock().unwrap() < ops.len() && !failed_now() {
        step();
    }
    if failed_now() {
        return finish(None);
    }
    let stopped = srv.stop();
    match stopped {
        Ok((m, _)) => {
            model.lock().unwrap().all_durable();
            finish(Some(m))
        }
        Err(e) => {
            assert!(inst.world.crashed(), "stop failed without a cut: {e}");
            finish(None)
        }
    }
}

/// Serves `ops` on a fresh instance; stops cleanly when no cut came.
fn run(t: &Template, inst: &Inst, fractured: bool, fail_leg: Option<u64>) -> (Run, Option<Mirror>) {
    let g = t.geom;
    let mut m = inst.open(WINDOW);
    let mut model = Model::new(&t.pre);
    let mut trace = Vec::new();
    if fractured {
        if let Err(e) = m.fracture(1, Some("model")) {
            assert!(inst.world.crashed(), "fracture failed without a cut: {e}");
            return (Run { model, trace }, None);
        }
    }
    if let Some(n) = fail_leg {
        inst.secs[0].fail_after_writes(n);
    }
    let srv = match m.serve(&config(), Box::new(|_| {})) {
        Ok(s) => s,
        Err(e) => {
            assert!(inst.world.crashed(), "serve failed without a cut: {e}");
            return (Run { model, trace }, None);
        }
    };
    for (i, op) in workload().iter().enumerate() {
        let r = exec(&srv, i, op, &mut model, &g);
        trace.push(format!("op {i} {op:?}: {r:?}"));
        if let Err(f) = r {
            assert!(
                inst.world.crashed(),
                "request failed without a cut: {f}\n{}",
                trace.join("\n")
            );
            return (Run { model, trace }, None);
        }
    }
    match srv.stop() {
        Ok((m, _)) => {
            model.all_durable();
            (Run { model, trace }, Some(m))
        }
        Err(e) => {
            assert!(inst.world.crashed(), "stop failed without a cut: {e}");
            trace.push(format!("stop: {e}"));
            (Run { model, trace }, None)
        }
    }
}

fn check_after_cut(t: &Template, inst: &Inst, run: &Run, ctx: &str) {
    let g = t.geom;
    let mut m = inst.open(WINDOW);
    let primary = inst.primary.data_area(&g);
    if let Some(x) = run.model.violation(&primary) {
        panic!(
            "{ctx}: acknowledged-durable data missing on the primary at sector {x}\n{}",
            run.trace.join("\n")
        );
    }
    for s in 0..g.slots {
        let leg = m.sb().legs[s as usize].clone();
        if leg.state() == LegState::Empty {
            continue;
        }
        let data = inst.opener.dev(&leg.location).data_area(&g);
        if leg.state() == LegState::InSync {
            if let Some(x) = run.model.violation(&data) {
                panic!(
                    "{ctx}: in-sync slot {s} lacks acknowledged-durable data at sector {x}\n{}",
                    run.trace.join("\n")
                );
            }
        }
        for r in 0..g.region_count {
            let b = g.regions_bytes(r..r + 1);
            let (a, e) = (b.start as usize, b.end as usize);
            if data[a..e] != primary[a..e] {
                let covered = m.log_bit(WI, r).unwrap()
                    || m.log_bit(BitmapId::Fracture(SlotIdx(s)), r).unwrap();
                assert!(
                    covered,
                    "{ctx}: slot {s} differs in region {r}, in no log\n{}",
                    run.trace.join("\n")
                );
            }
        }
    }
    m.recover()
        .unwrap_or_else(|e| panic!("{ctx}: recover: {e}"));
    let cands = m.resync_candidates().unwrap();
    let rep = m.resync(&cands, None, &NoProgress).unwrap();
    for l in &rep.legs {
        match &l.error {
            None => {}
            // A detach cut after the image said so (D1): its rerun completes it.
            Some(e) if e.contains("is now a detached of this mirror") => {
                m.detach(l.slot)
                    .unwrap_or_else(|e| panic!("{ctx}: detach again: {e}"));
            }
            Some(e) => panic!("{ctx}: resync of slot {}: {e}\n{rep:?}", l.slot),
        }
    }
    let primary = inst.primary.data_area(&g);
    for (i, d) in inst.secs.iter().enumerate() {
        // A leg detached (and not attached again before the cut) is no copy any more.
        if !m.sb().legs.iter().any(|l| l.location == SECS[i]) {
            continue;
        }
        assert!(
            d.data_area(&g) == primary,
            "{ctx}: {} differs after resync",
            SECS[i]
        );
    }
    if let Some(x) = run.model.violation(&primary) {
        panic!("{ctx}: after resync the primary lacks durable data at sector {x}");
    }
}

fn geometry() -> Geometry {
    Geometry::for_data_size(64 * 4096, 4096, 2).unwrap()
}

/// Runs the workload again with the power cut at each sync point the clean run `done` had,
/// keeping none, all or half of the unsynced writes, and checks each outcome.
fn cut_everywhere(t: &Template, done: &Inst, name: &str, run: &dyn Fn(&Template, &Inst) -> Run) {
    let total = done.world.sync_points();
    assert!(total > 10, "{name}: only {total} sync points");
    for k in 0..total {
        for keep in [Keep::Nothing, Keep::Everything, Keep::Half(k)] {
            let inst = t.instance();
            inst.world.crash_at(k);
            let r = run(t, &inst);
            assert!(inst.world.crashed(), "{name}: cut {k} not reached");
            let after = inst.cut(keep);
            check_after_cut(
                t,
                &after,
                &r,
                &format!("{name}, cut at sync point {k} of {total}, {keep:?}"),
            );
        }
    }
}

fn every_cut(fractured: bool, fail_leg: Option<u64>, name: &str) {
    let t = Template::build(geometry(), 2, 77);
    // The run without a cut: a clean stop.
    let inst = t.instance();
    let (r, m) = run(&t, &inst, fractured, fail_leg);
    let mut m = m.unwrap_or_else(|| panic!("{name}: no clean stop\n{}", r.trace.join("\n")));
    assert_eq!(
        m.pending_intents().unwrap(),
        0,
        "{name}: intents after a clean stop"
    );
    if fractured {
        // W3 with the ahead bits trimmed: exactly the regions written.
        let runs = m.log_runs(BitmapId::Fracture(SlotIdx(1))).unwrap();
        let got: BTreeSet<u64> = runs.into_iter().flatten().collect();
        assert_eq!(
            got, r.model.written_regions,
            "{name}: fracture log of the fractured leg"
        );
    }
    let g = t.geom;
    let primary = inst.primary.data_area(&g);
    assert!(r.model.violation(&primary).is_none());
    for s in 0..g.slots {
        let leg = m.sb().legs[s as usize].clone();
        if leg.state() == LegState::InSync {
            assert!(
                inst.opener.dev(&leg.location).data_area(&g) == primary,
                "{name}: slot {s}"
            );
        }
    }
    if let Some(_n) = fail_leg {
        assert_eq!(
            m.sb().legs[0].state(),
            LegState::FracturedByError,
            "{name}: the failing leg"
        );
        // H5: only what it may have missed (written since the last finished flush, in
        // flight, or later), never whole hot extents of regions no one wrote.
        let runs = m.log_runs(BitmapId::Fracture(SlotIdx(0))).unwrap();
        let got: BTreeSet<u64> = runs.into_iter().flatten().collect();
        assert!(
            got.is_subset(&r.model.written_regions) && !got.is_empty(),
            "{name}: the failed leg's log {got:?} holds regions never written ({:?})",
            r.model.written_regions
        );
    }
    drop(m);
    cut_everywhere(&t, &inst, name, &|t, i| run(t, i, fractured, fail_leg).0);
}

#[test]
fn a_served_workload_survives_a_power_cut_at_every_sync_point() {
    every_cut(false, None, "served");
}

#[test]
fn a_served_workload_with_a_fractured_leg_logs_exactly_what_it_missed_at_every_cut() {
    every_cut(true, None, "fractured leg");
}

#[test]
fn a_leg_failing_mid_workload_logs_only_what_it_missed_at_every_cut() {
    every_cut(false, Some(4), "failing leg");
}

#[test]
fn a_live_fracture_and_a_resync_between_host_writes_survive_a_power_cut_at_every_sync_point() {
    let t = Template::build(geometry(), 2, 78);
    let name = "live admin";
    let inst = t.instance();
    let (r, m) = run_live(&t, &inst, Admin::FractureResync);
    let mut m = m.unwrap_or_else(|| panic!("{name}: no clean stop\n{}", r.trace.join("\n")));
    assert_eq!(
        m.pending_intents().unwrap(),
        0,
        "{name}: intents after a clean stop"
    );
    let g = t.geom;
    assert_eq!(
        m.sb().legs[1].state(),
        LegState::InSync,
        "{name}: the resynced leg"
    );
    let primary = inst.primary.data_area(&g);
    assert!(r.model.violation(&primary).is_none());
    for (i, d) in inst.secs.iter().enumerate() {
        assert!(
            d.data_area(&g) == primary,
            "{name}: {} differs after a clean stop\n{}",
            SECS[i],
            r.trace.join("\n")
        );
    }
    // Host writes came between the resync's runs (op 6 after its first run, op 7 after its
    // second), not only after it.
    let at = |p: &str| r.trace.iter().position(|l| l.starts_with(p));
    let resync = at("resync").expect("resync traced");
    assert!(
        at("op 7").is_some_and(|i| i < resync),
        "{name}: fewer than two host writes during the resync\n{}",
        r.trace.join("\n")
    );
    drop(m);
    cut_everywhere(&t, &inst, name, &|t, i| {
        run_live(t, i, Admin::FractureResync).0
    });
}

#[test]
fn a_live_detach_attach_and_verify_between_host_writes_survive_a_power_cut_at_every_sync_point() {
    let t = Template::build(geometry(), 2, 79);
    let name = "live attach";
    let inst = t.instance();
    let (r, m) = run_live(&t, &inst, Admin::DetachAttachVerify);
    let mut m = m.unwrap_or_else(|| panic!("{name}: no clean stop\n{}", r.trace.join("\n")));
    assert_eq!(
        m.pending_intents().unwrap(),
        0,
        "{name}: intents after a clean stop"
    );
    let g = t.geom;
    assert_eq!(
        m.sb().legs[1].state(),
        LegState::InSync,
        "{name}: the attached leg"
    );
    assert_eq!(m.sb().legs[1].location, SECS[1]);
    let primary = inst.primary.data_area(&g);
    assert!(r.model.violation(&primary).is_none());
    for (i, d) in inst.secs.iter().enumerate() {
        assert!(
            d.data_area(&g) == primary,
            "{name}: {} differs after a clean stop\n{}",
            SECS[i],
            r.trace.join("\n")
        );
    }
    // Host writes came during the initial sync, and after the verify's comparison.
    let at = |p: &str| r.trace.iter().position(|l| l.starts_with(p));
    let (sync, verify) = (at("initial sync").unwrap(), at("verify").unwrap());
    assert!(
        at("op 5").is_some_and(|i| i < sync) && at("op 6").is_some_and(|i| i > sync && i < verify),
        "{name}: host writes not interleaved\n{}",
        r.trace.join("\n")
    );
    drop(m);
    cut_everywhere(&t, &inst, name, &|t, i| {
        run_live(t, i, Admin::DetachAttachVerify).0
    });
}
