//! `fracture` and `detach`: one leg, by slot or location (carried out by the serving
//! process while `serve` runs).

use super::*;

pub(super) fn fracture(ctx: &Ctx, a: cli::FractureArgs) -> Result<Exit> {
    let mut m = match open_for_change(ctx, &a.primary) {
        Ok(m) => m,
        Err(e) => return via_server(ctx, &a.primary, e, "fracture"),
    };
    let slot = m.find_slot(
        &a.secondary,
        Path::new(&a.secondary).exists(),
        &same_file(&a.secondary),
    )?;
    let leg = m.sb().legs[slot as usize].clone();
    let done = m.fracture(slot, a.reason.as_deref())?;
    print!("{}", fractured_text(&a, slot, &leg, done));
    print_warnings(&mut m);
    Ok(Exit::Success)
}

/// What `fracture` prints, `done` or not (already fractured).
pub(super) fn fractured_text(
    a: &cli::FractureArgs,
    slot: u32,
    leg: &crate::format::Leg,
    done: bool,
) -> String {
    if done {
        format!(
            "fractured slot {slot} ({}): its changes are tracked; `mirrorctl resync {} {slot}` brings it back\n",
            crate::device::nbd::display(&leg.location),
            display(&a.primary)
        )
    } else {
        format!(
            "slot {slot} ({}) is already {}\n",
            crate::device::nbd::display(&leg.location),
            leg.state().as_str()
        )
    }
}

pub(super) fn detach(ctx: &Ctx, a: cli::DetachArgs) -> Result<Exit> {
    let mut m = match open_for_change(ctx, &a.primary) {
        Ok(m) => m,
        Err(e) => return via_server(ctx, &a.primary, e, "detach"),
    };
    let slot = m.find_slot(
        &a.secondary,
        Path::new(&a.secondary).exists(),
        &same_file(&a.secondary),
    )?;
    let leg = m.detach(slot)?;
    print!("{}", detached_text(slot, &leg));
    print_warnings(&mut m);
    Ok(Exit::Success)
}

pub(super) fn detached_text(slot: u32, leg: &crate::format::Leg) -> String {
    format!(
        "detached slot {slot} ({}, was {})\n",
        crate::device::nbd::display(&leg.location),
        leg.state().as_str()
    )
}
