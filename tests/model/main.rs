//! The storage model (`mirrorctl::device::sim`): power cut at every sync point of the engine's
//! operations and of failover, and random operation sequences. One test binary; the devices
//! of one world, what survives a power cut and the data area come from the model itself
//! (`sim::SimDevs`, `sim::Keep`, `SimDevice::data_area`), as do the PRNG and data pattern
//! (`sim::Rng`, `sim::pattern`), and the primary is created with `create`'s own engine call.

mod crash_failover;
mod crash_journal;
mod crash_model;
mod crash_serve;
mod crash_written;
