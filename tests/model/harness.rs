//! What both storage-model suites share: how much of a device survives a power cut, and
//! reading a data area. (The PRNG and data pattern are the model's own, `sim::Rng` and
//! `sim::pattern`; primaries are made by `create`'s engine call.)

use mirrorctl::device::sim::{Rng, SimDevice, World};
use mirrorctl::format::layout::Geometry;
use std::sync::Arc;

/// Which unsynced sectors survive a power cut.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    Nothing,
    Everything,
    /// Each unsynced sector survives with probability 1/2 (the PRNG seeded with this).
    Half(u64),
}

/// `d` as found after a power cut now, in the new `world`.
pub fn survive(d: &SimDevice, world: &Arc<World>, keep: Keep) -> SimDevice {
    match keep {
        Keep::Nothing => d.after_power_cut(world, || false),
        Keep::Everything => d.after_power_cut(world, || true),
        Keep::Half(seed) => {
            let mut rng = Rng::new(seed);
            d.after_power_cut(world, move || rng.chance(50))
        }
    }
}

/// The data area of `d`.
pub fn data_area(d: &SimDevice, g: &Geometry) -> Vec<u8> {
    d.contents()[g.data_offset as usize..(g.data_offset + g.data_size) as usize].to_vec()
}
