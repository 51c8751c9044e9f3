//! mirrorctl: synchronous mirroring of disk images with fracture and write-intent logs.

pub mod bitmap;
pub mod cli;
pub mod commands;
pub mod device;
pub mod error;
pub mod failover;
pub mod format;
pub mod gen;
pub mod history;
pub mod image;
pub mod layout;
pub mod lock;
pub mod mirror;
pub mod nbd;
pub mod probe;
pub mod sim;
pub mod status;
pub mod units;
pub mod verify;
