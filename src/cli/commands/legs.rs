//! `fracture` and `detach`: one leg, by slot or location.

use super::*;

pub(super) fn fracture(ctx: &Ctx, a: cli::FractureArgs) -> Result<Exit> {
    let mut m = open_for_change(ctx, &a.primary)?;
    let slot = m.find_slot(&a.secondary, &same_file(&a.secondary))?;
    let leg = m.sb().legs[slot as usize].clone();
    if m.fracture(slot, a.reason.as_deref())? {
        println!(
            "fractured slot {slot} ({}): its changes are tracked; `mirrorctl resync {} {slot}` brings it back",
            leg.location,
            display(&a.primary)
        );
    } else {
        println!(
            "slot {slot} ({}) is already {}",
            leg.location,
            leg.state.as_str()
        );
    }
    print_warnings(&mut m);
    Ok(Exit::Success)
}

pub(super) fn detach(ctx: &Ctx, a: cli::DetachArgs) -> Result<Exit> {
    let mut m = open_for_change(ctx, &a.primary)?;
    let slot = m.find_slot(&a.secondary, &same_file(&a.secondary))?;
    let leg = m.detach(slot)?;
    println!(
        "detached slot {slot} ({}, was {})",
        leg.location,
        leg.state.as_str()
    );
    print_warnings(&mut m);
    Ok(Exit::Success)
}
