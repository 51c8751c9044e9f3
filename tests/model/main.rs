//! The storage model (`mirrorctl::device::sim`): power cut at every sync point of the engine's
//! operations and of failover, and random operation sequences. One test binary; the PRNG
//! and data pattern come from the model itself (`sim::Rng`, `sim::pattern`), and the
//! primary is created with `create`'s own engine call.

mod crash_failover;
mod crash_journal;
mod crash_model;
mod crash_serve;
mod crash_written;
mod harness;
