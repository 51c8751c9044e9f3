//! The event journal on the storage model (issue 15): state changes (a fracture, a write it
//! misses, a resync, a detach, an attach and its initial sync, an event of its own) with the
//! power cut at every sync point. After each cut the journal's events are a prefix of the
//! clean run's, and the leg's state is the one the last event about it says (fractured,
//! resync started, in sync, detached, attached): an event and its state change are there
//! both or neither.

use crate::crash_model::{Inst, Template, SECS};
use mirrorctl::device::sim::pattern;
use mirrorctl::device::sim::Keep;
use mirrorctl::engine::{EventKind, FlushPolicy, InitialSync, Mirror, NoProgress, WINDOW};
use mirrorctl::format::layout::Geometry;
use mirrorctl::format::LegState;
use mirrorctl::meta::image::Image;
use std::sync::Arc;

/// (events committed, their kinds) of a superblock.
fn journal(sb: &mirrorctl::format::Superblock) -> (u64, Vec<u32>) {
    let j = sb.journal.as_ref().expect("a primary has a journal");
    (
        j.next_seq - 1,
        j.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
    )
}

/// Runs the scenario until it ends or the power is cut; `seen` gets the state after each
/// step (for the clean run).
fn scenario(inst: &Inst, g: &Geometry, seen: &mut Vec<mirrorctl::format::Superblock>) {
    let mut m: Mirror = inst.open(WINDOW);
    seen.push(m.sb().clone());
    let crashed = |what: &str, e: &dyn std::fmt::Display| {
        assert!(inst.world.crashed(), "{what} failed without a cut: {e}");
    };
    macro_rules! step {
        ($what:expr, $e:expr) => {
            match $e {
                Ok(_) => seen.push(m.sb().clone()),
                Err(e) => return crashed($what, &e),
            }
        };
    }
    step!("fracture", m.fracture(1, Some("model")));
    let data = pattern(7, 3 * g.region_size as usize);
    step!(
        "write",
        m.write_stream(
            g.region_size * 5,
            &mut &data[..],
            None,
            Some(data.len() as u64),
            &FlushPolicy::End
        )
    );
    step!("resync", m.resync(&[1], None, &NoProgress));
    step!("detach", m.detach(1));
    let dev = Arc::new(inst.opener.dev(SECS[1]).clone());
    step!(
        "attach",
        m.attach(dev, SECS[1], SECS[1], InitialSync::Copy, true, false)
    );
    step!("initial sync", m.resync(&[1], None, &NoProgress));
    step!(
        "an event of its own",
        m.record(EventKind::ClientConnected, None, "model")
    );
}

#[test]
fn an_event_and_its_state_change_survive_a_power_cut_both_or_neither() {
    let g = Geometry::for_data_size(64 * 4096, 4096, 2).unwrap();
    let t = Template::build(g, 2, 91);
    let inst = t.instance();
    let mut seen = Vec::new();
    scenario(&inst, &g, &mut seen);
    assert!(!inst.world.crashed());
    assert_eq!(seen.len(), 8, "every step ran");
    let base = journal(&seen[0]).0;
    let all = seen.last().unwrap().journal.clone().unwrap().events;
    let all_kinds: Vec<u32> = all.iter().map(|e| e.kind).collect();
    // Every step but the write added events.
    assert!(all.iter().filter(|e| e.seq > base).count() >= 8, "{all:#?}");
    let total = inst.world.sync_points();
    assert!(total > 10, "only {total} sync points");
    for k in 0..total {
        for keep in [Keep::Nothing, Keep::Everything, Keep::Half(k)] {
            let run = t.instance();
            run.world.crash_at(k);
            scenario(&run, &g, &mut Vec::new());
            assert!(run.world.crashed(), "cut {k} not reached");
            let after = run.cut(keep);
            let img = Image::read(Arc::new(after.primary.clone()))
                .unwrap_or_else(|e| panic!("cut {k} {keep:?}: the superblock: {e}"));
            let (n, kinds) = journal(&img.sb);
            let ctx = format!("cut at sync point {k} of {total}, {keep:?}: {n} events");
            assert_eq!(kinds[..], all_kinds[..kinds.len()], "{ctx}: not a prefix");
            let events = &img.sb.journal.as_ref().unwrap().events;
            let last = events
                .iter()
                .rfind(|e| e.seq > base && e.slot == Some(1))
                .map(|e| mirrorctl::format::journal::kind_name(e.kind));
            let state = img.sb.legs[1].state();
            let fits = match last.as_deref() {
                None => state == LegState::InSync,
                Some("fractured") => state == LegState::FracturedByAdmin,
                Some("resync-started") => state == LegState::Syncing,
                Some("resync-finished") => state == LegState::InSync,
                Some("detached") => state == LegState::Empty,
                Some("attached") => state == LegState::Syncing,
                Some(other) => panic!("{ctx}: unexpected event {other}"),
            };
            assert!(fits, "{ctx}: slot 1 is {state:?} after {last:?}");
            assert_eq!(img.sb.legs[0].state(), LegState::InSync, "{ctx}");
        }
    }
}
