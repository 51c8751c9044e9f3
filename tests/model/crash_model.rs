//! Crash-safety tests on the storage model of `mirrorctl::device::sim`.
//!
//! A mirror lives on simulated devices that keep a durable and a live image. Each scenario
//! is first run without a crash to count its sync points N; then, for every k in 0..N and
//! for several choices of which unsynced sectors survive (none, all, a random half), it is
//! run again with the power failing at sync point k. The devices as found after the cut are
//! reopened and checked before recovery (a readable superblock; every region where a leg
//! differs from the primary is in the write-intent log or that leg's fracture log; every
//! acknowledged write is on the primary), after `recover()` (empty write-intent log; the
//! fracture logs alone cover every difference) and after a resync (every leg equal to the
//! primary, in sync, with an empty fracture log).

use mirrorctl::device::sim::{pattern, Keep, SimDevice, SimDevs, SimOpener, World};
use mirrorctl::device::Device;
use mirrorctl::engine::create;
use mirrorctl::engine::{FlushPolicy, InitialSync, Mirror, NoProgress, ResyncOptions, WINDOW};
use mirrorctl::error::Kind;
use mirrorctl::format::layout::{BitmapId, Geometry, SlotIdx, KIB, MIB};
use mirrorctl::format::{LegState, Role};
use mirrorctl::meta::image::{Image, ReadError};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::BTreeSet;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// Location of the primary (its name in messages).
const PRIMARY: &str = "primary";
/// Locations of the secondaries, as recorded in the leg table.
pub(crate) const SECS: [&str; 2] = ["sec0", "sec1"];
const WI: BitmapId = BitmapId::WriteIntent;

fn fracture_id(slot: u32) -> BitmapId {
    BitmapId::Fracture(SlotIdx(slot))
}

// ---------------------------------------------------------------------------------------
// The opener and the devices of one world.
// ---------------------------------------------------------------------------------------

/// The primary ("primary") and every secondary ([`SECS`]) of one world, by role.
pub(crate) struct Inst {
    devs: SimDevs,
    pub(crate) world: Arc<World>,
    pub(crate) primary: SimDevice,
    pub(crate) secs: Vec<SimDevice>,
    pub(crate) opener: Arc<SimOpener>,
}

impl Inst {
    pub(crate) fn of(devs: SimDevs) -> Inst {
        Inst {
            world: devs.world.clone(),
            primary: devs.dev(PRIMARY).clone(),
            secs: SECS.iter().map(|l| devs.dev(l).clone()).collect(),
            opener: Arc::new(devs.opener()),
            devs,
        }
    }

    /// The devices as found after a power cut now, in a new world (failures healed,
    /// nothing missing).
    pub(crate) fn cut(&self, keep: Keep) -> Inst {
        Inst::of(self.devs.cut(|i| match keep {
            Keep::Half(seed) => Keep::Half(seed.wrapping_mul(31).wrapping_add(i as u64)),
            k => k,
        }))
    }

    pub(crate) fn open(&self, window: u64) -> Mirror {
        let mut m = Mirror::open(
            Arc::new(self.primary.clone()),
            PRIMARY,
            self.opener.clone(),
            false,
        )
        .unwrap_or_else(|e| panic!("reopening the primary: {e}"));
        m.window = window;
        m
    }
}

/// A reader that hands out at most `step` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Templates: a created mirror with attached, resynced secondaries and data, all durable.
// ---------------------------------------------------------------------------------------

pub(crate) struct Template {
    pub(crate) geom: Geometry,
    devs: SimDevs,
    /// The primary's data area before any scenario.
    pub(crate) pre: Vec<u8>,
}

impl Template {
    /// Creates the primary with `create`'s engine call, fills it with data, and attaches and
    /// resyncs the first `attached` secondaries. The other secondaries hold random junk.
    pub(crate) fn build(geom: Geometry, attached: usize, seed: u64) -> Template {
        let len = geom.total_len();
        let devs = SimDevs::new(&[PRIMARY, SECS[0], SECS[1]], len);
        let inst = Inst::of(devs.clone());
        let (primary, secs) = (&inst.primary, &inst.secs);
        // Data already on the primary (create keeps the data area), junk on the secondaries.
        primary
            .write_at(&pattern(seed, geom.data_size as usize), geom.data_offset)
            .unwrap();
        primary.sync().unwrap();
        for (i, s) in secs.iter().enumerate() {
            s.write_at(&pattern(seed + 100 + i as u64, len as usize), 0)
                .unwrap();
            s.sync().unwrap();
        }
        create::format_primary(Arc::new(primary.clone()), PRIMARY, geom, false).unwrap();
        let mut m = inst.open(WINDOW);
        for (i, s) in secs.iter().enumerate().take(attached) {
            let out = m
                .attach(
                    Arc::new(s.clone()),
                    SECS[i],
                    SECS[i],
                    InitialSync::Copy,
                    // The junk is to be overwritten: the admin says --force (rule D0).
                    true,
                    false,
                )
                .unwrap();
            assert_eq!(out.slot, i as u32);
            assert_eq!(out.regions, geom.region_count);
        }
        let cands = m.resync_candidates().unwrap();
        let rep = m.resync(&cands, None, &NoProgress).unwrap();
        assert!(rep.legs.iter().all(|l| l.error.is_none()));
        let pre = primary.data_area(&geom);
        for s in secs.iter().take(attached) {
            assert!(s.data_area(&geom) == pre, "template secondary not in sync");
        }
        Template { geom, devs, pre }
    }

    /// A fresh copy of the template in a new world.
    pub(crate) fn instance(&self) -> Inst {
        Inst::of(self.devs.cut(|_| Keep::Everything))
    }
}

fn small_geometry() -> Geometry {
    Geometry::for_data_size(64 * 4096, 4096, 2).unwrap()
}

// ---------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Streams `len` bytes at data offset `off`; `known` passes the length as --length and
    /// as the known input length, otherwise neither is given.
    Write {
        off: u64,
        len: usize,
        policy: FlushPolicy,
        known: bool,
    },
    Fracture(u32),
    /// Resync of one slot, or of every candidate.
    Resync(Option<u32>),
    /// The same with `--compare`: only differing blocks are written.
    ResyncCompare(Option<u32>),
    /// The secondary at `SECS[i]` fails (EIO) after this many more writes.
    FailAfter(usize, u64),
    Heal(usize),
    /// The secondary at `SECS[i]` cannot be opened (true) or is back (false).
    Missing(usize, bool),
    Attach(usize),
    /// The same with `--compare` (the secondary's data is kept, every region logged).
    AttachCompare(usize),
    Detach(u32),
    Recover,
}

struct Scenario {
    name: &'static str,
    /// Write-intent window in bytes.
    window: u64,
    ops: Vec<Op>,
}

/// What the scenario run acknowledged before the cut.
#[derive(Default, Debug)]
struct Outcome {
    /// Acknowledged writes in order: (data offset, bytes).
    acked: Vec<(u64, Vec<u8>)>,
    /// The write in progress at the cut (may be partly present).
    unacked: Option<Range<u64>>,
    /// Slots whose fracture was acknowledged and not followed by any resync, attach or
    /// detach attempt: they must still be fractured after the cut.
    fractured: BTreeSet<u32>,
    /// One line per operation, for failure messages.
    trace: Vec<String>,
}

fn write_data(i: usize, off: u64, len: usize) -> Vec<u8> {
    pattern(0xD47A ^ (i as u64) << 32 ^ off, len)
}

/// Runs the operations until the end or until the power fails.
fn run_ops(m: &mut Mirror, inst: &Inst, ops: &[Op]) -> Outcome {
    let mut out = Outcome::default();
    for (i, op) in ops.iter().enumerate() {
        let crashed_before = inst.world.crashed();
        assert!(!crashed_before);
        let result: Result<String, mirrorctl::error::Error> = match op {
            Op::Write {
                off,
                len,
                policy,
                known,
            } => {
                let data = write_data(i, *off, *len);
                let mut input = Trickle {
                    data: &data,
                    step: 3001,
                };
                let l = *len as u64;
                let r = m.write_stream(
                    *off,
                    &mut input,
                    known.then_some(l),
                    known.then_some(l),
                    policy,
                );
                match r {
                    Ok(rep) => {
                        assert_eq!(rep.bytes, l, "short acknowledged write");
                        out.acked.push((*off, data));
                        Ok(format!("newly fractured {:?}", rep.newly_fractured))
                    }
                    Err(e) => {
                        out.unacked = Some(*off..*off + l);
                        Err(e)
                    }
                }
            }
            Op::Fracture(s) => {
                if m.sb().legs[*s as usize].state() == LegState::Empty {
                    Ok("skipped (empty slot)".into())
                } else {
                    m.fracture(*s, Some("test")).map(|changed| {
                        out.fractured.insert(*s);
                        format!("changed {changed}")
                    })
                }
            }
            Op::Resync(which) | Op::ResyncCompare(which) => {
                let opts = ResyncOptions {
                    rate: None,
                    compare: matches!(op, Op::ResyncCompare(_)),
                };
                let slots = match which {
                    None => m.resync_candidates(),
                    Some(s) if m.sb().legs[*s as usize].state() != LegState::Empty => Ok(vec![*s]),
                    Some(_) => Ok(vec![]),
                };
                match slots {
                    Ok(slots) if slots.is_empty() => Ok("nothing to resync".into()),
                    Ok(slots) => {
                        for s in &slots {
                            out.fractured.remove(s);
                        }
                        m.resync_with(&slots, &opts, &NoProgress).map(|rep| {
                            format!(
                                "{:?}",
                                rep.legs
                                    .iter()
                                    .map(|l| (l.slot, l.regions, l.error.clone()))
                                    .collect::<Vec<_>>()
                            )
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            Op::FailAfter(l, n) => {
                inst.secs[*l].fail_after_writes(*n);
                Ok(String::new())
            }
            Op::Heal(l) => {
                inst.secs[*l].heal();
                Ok(String::new())
            }
            Op::Missing(l, b) => {
                inst.opener.set_missing(SECS[*l], *b);
                Ok(String::new())
            }
            Op::Attach(l) | Op::AttachCompare(l) => {
                let initial = if matches!(op, Op::AttachCompare(_)) {
                    InitialSync::Compare
                } else {
                    InitialSync::Copy
                };
                let loc = SECS[*l];
                let listed = m
                    .sb()
                    .legs
                    .iter()
                    .find(|x| x.state() != LegState::Empty && x.location == loc);
                let free = m.sb().legs.iter().any(|x| x.state() == LegState::Empty);
                if inst.opener.is_missing(loc)
                    || listed.is_some_and(|x| x.state().receives_writes())
                    || (listed.is_none() && !free)
                {
                    Ok("skipped".into())
                } else {
                    out.fractured.clear();
                    // Junk (no header) is overwritten only with --force (rule D0).
                    let junk = matches!(
                        Image::read(Arc::new(inst.secs[*l].clone())),
                        Err(ReadError::NotMirrorctl)
                    );
                    let r = m.attach(
                        Arc::new(inst.secs[*l].clone()),
                        loc,
                        loc,
                        initial,
                        junk,
                        false,
                    );
                    match r {
                        Ok(a) => Ok(format!("slot {} regions {}", a.slot, a.regions)),
                        // A failing secondary may refuse to be attached; that is not a
                        // crash-safety matter.
                        Err(e) if !inst.world.crashed() => Ok(format!("refused: {e}")),
                        Err(e) => Err(e),
                    }
                }
            }
            Op::Detach(s) => {
                if m.sb().legs[*s as usize].state() == LegState::Empty {
                    Ok("skipped (empty slot)".into())
                } else {
                    out.fractured.remove(s);
                    m.detach(*s).map(|_| String::new())
                }
            }
            Op::Recover => m.recover().map(|n| format!("{n} regions")),
        };
        let line = match &result {
            Ok(s) => format!("op {i} {op:?}: ok {s}"),
            Err(e) => format!("op {i} {op:?}: error {e}"),
        };
        out.trace.push(line);
        if let Err(e) = result {
            assert!(
                inst.world.crashed(),
                "operation failed without a power cut: {e}\n{}",
                out.trace.join("\n")
            );
        }
        if inst.world.crashed() {
            break;
        }
    }
    out
}

/// The primary's expected data area (acknowledged writes applied in order on the
/// pre-scenario content) and the range of the unacknowledged write, whose bytes may be
/// old, new or torn.
struct Expect {
    data: Vec<u8>,
    unknown: Option<Range<u64>>,
    fractured: BTreeSet<u32>,
}

impl Expect {
    fn new(pre: &[u8], out: &Outcome) -> Expect {
        let mut data = pre.to_vec();
        for (off, d) in &out.acked {
            data[*off as usize..*off as usize + d.len()].copy_from_slice(d);
        }
        Expect {
            data,
            unknown: out.unacked.clone(),
            fractured: out.fractured.clone(),
        }
    }

    /// First byte in `range` where `actual` differs from the expectation (outside the
    /// unknown range).
    fn first_mismatch(&self, actual: &[u8], range: Range<u64>) -> Option<u64> {
        let (s, e) = (range.start as usize, range.end as usize);
        if actual[s..e] == self.data[s..e] {
            return None;
        }
        (s..e)
            .find(|&b| {
                actual[b] != self.data[b]
                    && !self
                        .unknown
                        .as_ref()
                        .is_some_and(|u| u.contains(&(b as u64)))
            })
            .map(|b| b as u64)
    }
}

/// Checks the mirror's on-device state: the primary holds every acknowledged write; every
/// listed leg has a readable header of this mirror; every region where a leg differs from
/// the primary is in the write-intent log (when `with_intents`) or the leg's fracture log;
/// in-sync legs hold every acknowledged write in their clean regions.
fn check_state(m: &mut Mirror, inst: &Inst, exp: &Expect, with_intents: bool, ctx: &str) {
    let g = m.geometry();
    let primary = inst.primary.data_area(&g);
    if let Some(b) = exp.first_mismatch(&primary, 0..g.data_size) {
        panic!(
            "{ctx}: acknowledged data missing on the primary at data offset {b} (region {})",
            b / g.region_size
        );
    }
    for &s in &exp.fractured {
        let st = m.sb().legs[s as usize].state();
        assert!(
            st.is_fractured(),
            "{ctx}: slot {s} was fractured (acknowledged) but reads back as {st:?}"
        );
    }
    for s in 0..g.slots {
        let leg = m.sb().legs[s as usize].clone();
        if leg.state() == LegState::Empty {
            continue;
        }
        let dev = inst.opener.dev(&leg.location).clone();
        let img = Image::read(Arc::new(dev.clone()))
            .unwrap_or_else(|e| panic!("{ctx}: header of listed slot {s} unreadable: {e}"));
        // Detached: a cut inside `detach` after D1 (the image says so first); the slot is
        // still listed and a rerun of detach frees it.
        assert!(
            matches!(img.sb.role, Role::Secondary | Role::Detached),
            "{ctx}: slot {s} role {:?}",
            img.sb.role
        );
        assert_eq!(img.sb.image_uuid, leg.image_uuid, "{ctx}: slot {s} uuid");
        assert_eq!(img.sb.mirror_uuid, m.sb().mirror_uuid, "{ctx}: slot {s}");
        let data = dev.data_area(&g);
        for r in 0..g.region_count {
            let br = g.regions_bytes(r..r + 1);
            let (a, b) = (br.start as usize, br.end as usize);
            let wi = with_intents && m.log_bit(WI, r).unwrap();
            let fr = m.log_bit(fracture_id(s), r).unwrap();
            if data[a..b] != primary[a..b] {
                assert!(
                    wi || fr,
                    "{ctx}: slot {s} ({:?}) differs from the primary in region {r} \
                     (data offset {a}), which is in neither the write-intent log nor its \
                     fracture log",
                    leg.state()
                );
            }
            if leg.state() == LegState::InSync && !wi && !fr {
                if let Some(x) = exp.first_mismatch(&data, br.clone()) {
                    panic!("{ctx}: in-sync slot {s} lacks acknowledged data at offset {x}");
                }
            }
        }
    }
}

/// Every leg equal to the primary, in sync, with empty logs; the primary as expected.
fn check_converged(m: &mut Mirror, inst: &Inst, exp: &Expect, ctx: &str) {
    let g = m.geometry();
    assert_eq!(m.pending_intents().unwrap(), 0, "{ctx}: write intents left");
    let primary = inst.primary.data_area(&g);
    if let Some(b) = exp.first_mismatch(&primary, 0..g.data_size) {
        panic!("{ctx}: acknowledged data missing on the primary at data offset {b}");
    }
    for s in 0..g.slots {
        let leg = m.sb().legs[s as usize].clone();
        if leg.state() == LegState::Empty {
            continue;
        }
        assert_eq!(
            leg.state(),
            LegState::InSync,
            "{ctx}: slot {s} after resync"
        );
        assert_eq!(
            m.log_count(fracture_id(s)).unwrap(),
            0,
            "{ctx}: slot {s} fracture log not empty after resync"
        );
        let data = inst.opener.dev(&leg.location).data_area(&g);
        if data != primary {
            let b = (0..data.len()).find(|&b| data[b] != primary[b]).unwrap();
            panic!("{ctx}: slot {s} differs from the primary at data offset {b} after resync");
        }
    }
}

/// Reopens after a cut, checks, recovers (optionally with the power failing again at
/// recovery sync point `k2`, after which the second cut is checked the same way), resyncs
/// and checks convergence. Returns the sync points the recovery phase used.
fn recover_and_check(
    inst: &Inst,
    exp: &Expect,
    window: u64,
    second: Option<(u64, Keep)>,
    ctx: &str,
) -> u64 {
    let mut m = inst.open(window);
    check_state(&mut m, inst, exp, true, &format!("{ctx}, before recovery"));
    let second_cut = |inst: &Inst, keep: Keep| {
        let again = inst.cut(keep);
        // The interrupted resync may have changed fractured legs' states.
        let exp = Expect {
            data: exp.data.clone(),
            unknown: exp.unknown.clone(),
            fractured: BTreeSet::new(),
        };
        recover_and_check(
            &again,
            &exp,
            window,
            None,
            &format!("{ctx}, after a second cut during recovery"),
        );
    };
    if let Some((k2, _)) = second {
        inst.world.crash_at(k2);
    }
    let r = m.recover();
    if inst.world.crashed() {
        second_cut(inst, second.unwrap().1);
        return inst.world.sync_points();
    }
    r.unwrap_or_else(|e| panic!("{ctx}: recover: {e}"));
    assert_eq!(
        m.pending_intents().unwrap(),
        0,
        "{ctx}: intents after recover"
    );
    check_state(&mut m, inst, exp, false, &format!("{ctx}, after recovery"));
    // A detach cut after D1: the admin runs it again, and it completes.
    for s in 0..m.geometry().slots {
        let leg = m.sb().legs[s as usize].clone();
        if leg.state() == LegState::Empty {
            continue;
        }
        let img = Image::read(Arc::new(inst.opener.dev(&leg.location).clone())).unwrap();
        if img.sb.role == Role::Detached {
            m.detach(s)
                .unwrap_or_else(|e| panic!("{ctx}: detach again: {e}"));
            assert_eq!(m.sb().legs[s as usize].state(), LegState::Empty, "{ctx}");
        }
    }
    let cands = m.resync_candidates().unwrap();
    let r = m.resync(&cands, None, &NoProgress);
    if inst.world.crashed() {
        second_cut(inst, second.unwrap().1);
        return inst.world.sync_points();
    }
    let rep = r.unwrap_or_else(|e| panic!("{ctx}: resync: {e}"));
    for l in &rep.legs {
        assert!(
            l.error.is_none(),
            "{ctx}: resync of slot {}: {:?}",
            l.slot,
            l.error
        );
    }
    check_converged(&mut m, inst, exp, &format!("{ctx}, after resync"));
    // And durably so.
    let mut again = inst.open(window);
    check_converged(
        &mut again,
        inst,
        exp,
        &format!("{ctx}, reopened after resync"),
    );
    inst.world.sync_points()
}

/// Runs a scenario with the power failing at sync point `crash` (never if `None`).
/// Returns the sync points the scenario used and the outcome, with the post-cut devices.
fn run_scenario(t: &Template, scn: &Scenario, crash: Option<u64>) -> (u64, Outcome, Inst) {
    let inst = t.instance();
    if let Some(k) = crash {
        inst.world.crash_at(k);
    }
    let mut m = inst.open(scn.window);
    let out = run_ops(&mut m, &inst, &scn.ops);
    if crash.is_none() {
        assert!(out.unacked.is_none(), "{}: {:?}", scn.name, out.trace);
    } else {
        assert!(
            inst.world.crashed(),
            "{}: crash point {crash:?} not reached",
            scn.name
        );
    }
    (inst.world.sync_points(), out, inst)
}

/// Cuts at every sync point of the scenario for each keep mode; returns crash points run.
fn exercise(t: &Template, scn: &Scenario, keeps: &[Keep]) -> u64 {
    let (n, out, inst) = run_scenario(t, scn, None);
    let exp = Expect::new(&t.pre, &out);
    recover_and_check(
        &inst.cut(Keep::Everything),
        &exp,
        scn.window,
        None,
        &format!("{} without a crash", scn.name),
    );
    let mut points = 0;
    for k in 0..n {
        for &keep in keeps {
            let (_, out, inst) = run_scenario(t, scn, Some(k));
            let exp = Expect::new(&t.pre, &out);
            let ctx = format!(
                "{}: cut at sync point {k}/{n}, keeping {keep:?}\n{}\n",
                scn.name,
                out.trace.join("\n")
            );
            recover_and_check(&inst.cut(keep), &exp, scn.window, None, &ctx);
            points += 1;
        }
    }
    println!(
        "{}: {n} sync points, {points} crash points exercised",
        scn.name
    );
    points
}

const KEEPS: [Keep; 4] = [
    Keep::Nothing,
    Keep::Everything,
    Keep::Half(1),
    Keep::Half(2),
];

fn w(off: u64, len: usize, policy: FlushPolicy, known: bool) -> Op {
    Op::Write {
        off,
        len,
        policy,
        known,
    }
}

fn small_template(attached: usize) -> &'static Template {
    static T: [OnceLock<Template>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    T[attached].get_or_init(|| Template::build(small_geometry(), attached, 7 + attached as u64))
}

// ---------------------------------------------------------------------------------------
// Crash tests.
// ---------------------------------------------------------------------------------------

#[test]
fn streaming_writes_survive_a_power_cut_at_every_sync_point() {
    let t = small_template(2);
    let scn = Scenario {
        name: "writes",
        window: WINDOW,
        ops: vec![
            w(1000, 10_000, FlushPolicy::End, true),
            w(5 * 4096 + 17, 3 * 4096 + 100, FlushPolicy::Always, false),
            w(0, 100, FlushPolicy::End, true),
            w(
                60 * 4096 - 333,
                4 * 4096 + 333,
                FlushPolicy::Every(4096),
                true,
            ),
            w(5000, 9000, FlushPolicy::Always, true),
        ],
    };
    assert!(exercise(t, &scn, &KEEPS) > 0);
}

#[test]
fn an_admin_fracture_then_writes_then_resync_survive_a_power_cut_at_every_sync_point() {
    let t = small_template(2);
    let scn = Scenario {
        name: "fracture",
        window: WINDOW,
        ops: vec![
            w(4096, 4096, FlushPolicy::End, true),
            Op::Fracture(0),
            w(2 * 4096 + 5, 20_000, FlushPolicy::End, true),
            w(40 * 4096, 100, FlushPolicy::Always, false),
            Op::Resync(Some(0)),
            w(3 * 4096, 4096 * 2, FlushPolicy::End, true),
        ],
    };
    assert!(exercise(t, &scn, &KEEPS) > 0);
}

#[test]
fn a_comparing_resync_after_writes_to_a_fractured_leg_survives_a_power_cut_at_every_sync_point() {
    let t = small_template(2);
    let scn = Scenario {
        name: "fracture, resync --compare",
        window: WINDOW,
        ops: vec![
            w(4096, 4096, FlushPolicy::End, true),
            Op::Fracture(1),
            w(2 * 4096 + 5, 20_000, FlushPolicy::End, true),
            w(40 * 4096, 100, FlushPolicy::Always, false),
            Op::ResyncCompare(None),
            w(3 * 4096, 4096 * 2, FlushPolicy::End, true),
            Op::Fracture(0),
            w(60 * 4096 - 3, 9, FlushPolicy::End, true),
            Op::ResyncCompare(Some(0)),
            // A detached image keeps its data; attached again with --compare, only what
            // changed meanwhile is written.
            Op::Detach(1),
            w(8 * 4096, 4096 * 3, FlushPolicy::End, true),
            Op::AttachCompare(1),
            Op::ResyncCompare(None),
        ],
    };
    assert!(exercise(t, &scn, &KEEPS) > 0);
}

#[test]
fn a_leg_failing_mid_write_then_healed_and_resynced_survives_a_power_cut_at_every_sync_point() {
    let t = small_template(2);
    let scn = Scenario {
        name: "failing leg",
        window: WINDOW,
        ops: vec![
            Op::FailAfter(0, 1),
            w(100, 5000, FlushPolicy::End, true),
            w(10 * 4096 + 1, 3 * 4096, FlushPolicy::End, true),
            w(30 * 4096, 4096, FlushPolicy::Always, false),
            Op::Heal(0),
            Op::Missing(1, true),
            w(50 * 4096 - 1, 2, FlushPolicy::End, true),
            Op::Missing(1, false),
            Op::Resync(None),
            w(20 * 4096, 4096 * 3, FlushPolicy::End, true),
        ],
    };
    assert!(exercise(t, &scn, &KEEPS) > 0);
}

#[test]
fn attaching_a_second_secondary_to_a_mirror_with_data_survives_a_power_cut_at_every_sync_point() {
    let t = small_template(1);
    let scn = Scenario {
        name: "attach",
        window: WINDOW,
        ops: vec![
            w(7, 7000, FlushPolicy::End, true),
            Op::Attach(1),
            w(33 * 4096 + 9, 9000, FlushPolicy::End, true),
            Op::Resync(None),
            w(8000, 100, FlushPolicy::Always, true),
        ],
    };
    assert!(exercise(t, &scn, &KEEPS) > 0);
}

#[test]
fn detaching_and_reattaching_a_fractured_leg_survives_a_power_cut_at_every_sync_point() {
    let t = small_template(2);
    let scn = Scenario {
        name: "detach",
        window: WINDOW,
        ops: vec![
            Op::Fracture(1),
            w(12 * 4096 + 100, 5000, FlushPolicy::End, true),
            Op::Detach(1),
            w(4096, 100, FlushPolicy::End, true),
            Op::Attach(1),
            Op::Resync(None),
            w(4096, 4096 * 2, FlushPolicy::End, true),
        ],
    };
    assert!(exercise(t, &scn, &KEEPS) > 0);
}

#[test]
fn a_power_cut_during_crash_recovery_is_recovered_at_every_sync_point_of_both() {
    let t = small_template(2);
    let scn = Scenario {
        name: "crash in recovery",
        window: WINDOW,
        ops: vec![
            w(1000, 10_000, FlushPolicy::End, true),
            Op::Fracture(1),
            w(20 * 4096 + 3, 3 * 4096, FlushPolicy::End, false),
            Op::FailAfter(0, 0),
            w(40 * 4096, 5000, FlushPolicy::End, true),
            Op::Heal(0),
            w(50 * 4096, 5000, FlushPolicy::Always, true),
        ],
    };
    let (n, _, _) = run_scenario(t, &scn, None);
    let mut points = 0;
    let mut max_n2 = 0;
    for k in 0..n {
        for keep in [Keep::Nothing, Keep::Half(k)] {
            let (_, out, inst) = run_scenario(t, &scn, Some(k));
            let exp = Expect::new(&t.pre, &out);
            let cut = inst.cut(keep);
            let ctx = format!("{}: cut at {k}/{n} keeping {keep:?}", scn.name);
            // Count the recovery's sync points on an identical copy.
            let n2 = recover_and_check(&cut.cut(Keep::Everything), &exp, WINDOW, None, &ctx);
            max_n2 = max_n2.max(n2);
            points += 1;
            for k2 in 0..n2 {
                let ctx2 = format!(
                    "{ctx}, second cut at recovery sync point {k2}/{n2}\n{}\n",
                    out.trace.join("\n")
                );
                recover_and_check(
                    &cut.cut(Keep::Everything),
                    &exp,
                    WINDOW,
                    Some((k2, Keep::Half(k2 ^ k))),
                    &ctx2,
                );
                points += 1;
            }
        }
    }
    println!(
        "{}: {n} scenario sync points, up to {max_n2} recovery sync points, {points} crash points exercised",
        scn.name
    );
    assert!(max_n2 > 0);
}

/// A geometry with enough data for several 4 MiB chunks: 10 MiB in 64 KiB regions.
fn window_template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        Template::build(
            Geometry::for_data_size(10 * MIB, 64 * KIB, 2).unwrap(),
            2,
            99,
        )
    })
}

#[test]
fn the_write_intent_window_moves_along_a_multi_chunk_write() {
    let t = window_template();
    for (window, min_flushes) in [(4 * 64 * KIB, 4), (5 * MIB, 3)] {
        let inst = t.instance();
        let mut m = inst.open(window);
        let len = 9 * MIB as usize + 12345;
        let data = write_data(0, 300_000, len);
        let before = m.metadata_syncs();
        m.write_stream(
            300_000,
            &mut Trickle {
                data: &data,
                step: 1 << 20,
            },
            Some(len as u64),
            Some(len as u64),
            &FlushPolicy::End,
        )
        .unwrap();
        let flushes = m.metadata_syncs() - before;
        assert!(
            flushes >= min_flushes,
            "window {window}: only {flushes} bitmap flushes for a 3-chunk write"
        );
        assert_eq!(m.pending_intents().unwrap(), 0);
        let g = t.geom;
        let p = inst.primary.data_area(&g);
        assert!(p[300_000..300_000 + len] == data[..]);
        for s in &inst.secs {
            assert!(s.data_area(&g) == p);
        }
    }
}

#[test]
fn multi_window_writes_survive_a_power_cut_at_every_sync_point() {
    let t = window_template();
    let g = t.geom;
    let len = 9 * MIB as usize + 12345;
    for (window, policy, known) in [
        (4 * g.region_size, FlushPolicy::End, true),
        (5 * MIB, FlushPolicy::Every(MIB), false),
    ] {
        let scn = Scenario {
            name: "multi-window write",
            window,
            ops: vec![
                Op::Fracture(1),
                w(300_000, len, policy.clone(), known),
                Op::FailAfter(0, 1),
                w(123_457, len - 200_000, policy, known),
            ],
        };
        assert!(exercise(t, &scn, &[Keep::Nothing, Keep::Half(3)]) > 0);
    }
}

// ---------------------------------------------------------------------------------------
// Failure injection without crashes.
// ---------------------------------------------------------------------------------------

#[test]
fn a_secondary_out_of_space_is_fractured_by_error_and_logs_the_written_regions() {
    let t = small_template(2);
    let g = t.geom;
    let inst = t.instance();
    let mut m = inst.open(WINDOW);
    inst.secs[1].fail_writes(libc::ENOSPC);
    let (off, len) = (5000u64, 20_000usize);
    let data = write_data(1, off, len);
    let rep = m
        .write_stream(
            off,
            &mut &data[..],
            None,
            Some(len as u64),
            &FlushPolicy::End,
        )
        .expect("a failing secondary must not fail the write");
    assert_eq!(rep.bytes, len as u64);
    assert_eq!(rep.newly_fractured, vec![1]);
    let leg = m.sb().legs[1].clone();
    assert_eq!(leg.state(), LegState::FracturedByError);
    assert!(
        leg.last_error.contains("data offset 5000") && leg.last_error.contains("space"),
        "last_error: {}",
        leg.last_error
    );
    for r in g.regions_for(off, len as u64) {
        assert!(m.log_bit(fracture_id(1), r).unwrap(), "region {r}");
    }
    assert_eq!(m.sb().legs[0].state(), LegState::InSync);
    assert_eq!(m.pending_intents().unwrap(), 0);
    // The state is durable, and the other leg got the write.
    let exp = Expect::new(
        &t.pre,
        &Outcome {
            acked: vec![(off, data)],
            ..Outcome::default()
        },
    );
    let mut again = inst.open(WINDOW);
    assert_eq!(again.sb().legs[1].state(), LegState::FracturedByError);
    check_state(&mut again, &inst, &exp, true, "after ENOSPC");
    inst.secs[1].heal();
    let cands = again.resync_candidates().unwrap();
    assert_eq!(cands, vec![1]);
    again.resync(&cands, None, &NoProgress).unwrap();
    check_converged(&mut again, &inst, &exp, "after healing the full secondary");
}

#[test]
fn a_failing_primary_fails_the_write_with_exit_4_and_keeps_the_write_intents() {
    let t = small_template(2);
    let g = t.geom;
    // Fails from the first write (the write-intent flush itself), or only the data write
    // (the write-intent page goes through first).
    for fail_after in [None, Some(1)] {
        let inst = t.instance();
        let mut m = inst.open(WINDOW);
        match fail_after {
            None => inst.primary.fail_writes(libc::EIO),
            Some(n) => inst.primary.fail_after_writes(n),
        }
        let (off, len) = (3 * 4096 + 11, 9000usize);
        let data = write_data(2, off, len);
        let err = m
            .write_stream(
                off,
                &mut &data[..],
                None,
                Some(len as u64),
                &FlushPolicy::End,
            )
            .expect_err("a failing primary must fail the write");
        assert_eq!(err.kind, Kind::Primary, "{err}");
        assert_eq!(mirrorctl::cli::exit::of(&err).code(), 4);
        let touched = g.regions_for(off, len as u64);
        for r in touched.clone() {
            assert!(m.log_bit(WI, r).unwrap(), "write intent of region {r}");
        }
        let exp = Expect {
            data: t.pre.clone(),
            unknown: Some(off..off + len as u64),
            fractured: BTreeSet::new(),
        };
        if fail_after.is_some() {
            // The intents were flushed before any leg was written: durable on the device.
            let mut fresh = inst.open(WINDOW);
            assert_eq!(
                fresh.pending_intents().unwrap(),
                touched.end - touched.start
            );
            check_state(&mut fresh, &inst, &exp, true, "after a primary failure");
        }
        drop(m);
        inst.primary.heal();
        let mut m = inst.open(WINDOW);
        m.recover().unwrap();
        let cands = m.resync_candidates().unwrap();
        m.resync(&cands, None, &NoProgress).unwrap();
        check_converged(&mut m, &inst, &exp, "after healing the primary");
    }
}

// ---------------------------------------------------------------------------------------
// Random operation sequences.
// ---------------------------------------------------------------------------------------

fn op_strategy() -> impl Strategy<Value = Op> {
    let ds = small_geometry().data_size;
    let policy = prop_oneof![
        Just(FlushPolicy::End),
        Just(FlushPolicy::Always),
        (1u64..20_000).prop_map(FlushPolicy::Every),
    ];
    prop_oneof![
        6 => (0..ds, 1usize..6 * 4096, policy, any::<bool>()).prop_map(
            move |(off, len, policy, known)| Op::Write {
                off,
                len: len.min((ds - off) as usize),
                policy,
                known,
            }
        ),
        1 => (0..2u32).prop_map(Op::Fracture),
        2 => prop::option::of(0..2u32).prop_map(Op::Resync),
        1 => prop::option::of(0..2u32).prop_map(Op::ResyncCompare),
        1 => (0..2usize, 0..3u64).prop_map(|(l, n)| Op::FailAfter(l, n)),
        1 => (0..2usize).prop_map(Op::Heal),
        1 => (0..2usize, any::<bool>()).prop_map(|(l, b)| Op::Missing(l, b)),
        1 => (0..2u32).prop_map(Op::Detach),
        1 => (0..2usize).prop_map(Op::Attach),
        1 => (0..2usize).prop_map(Op::AttachCompare),
        1 => Just(Op::Recover),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/crash_model.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operation_sequences_survive_a_power_cut_at_a_random_sync_point(
        ops in prop::collection::vec(op_strategy(), 1..12),
        crash in 0u64..10_000,
        keep in 0u8..3,
        seed in any::<u64>(),
    ) {
        let t = small_template(2);
        let scn = Scenario { name: "random", window: WINDOW, ops };
        let (n, out, inst) = run_scenario(t, &scn, None);
        let exp = Expect::new(&t.pre, &out);
        recover_and_check(&inst.cut(Keep::Everything), &exp, WINDOW, None, "random, no crash");
        if n > 0 {
            let k = crash % n;
            let keep = [Keep::Nothing, Keep::Everything, Keep::Half(seed)][keep as usize];
            let (_, out, inst) = run_scenario(t, &scn, Some(k));
            let exp = Expect::new(&t.pre, &out);
            let ctx = format!("random: cut at {k}/{n} keeping {keep:?}\n{}\n", out.trace.join("\n"));
            recover_and_check(&inst.cut(keep), &exp, WINDOW, None, &ctx);
        }
    }
}
