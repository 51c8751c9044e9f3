//! The format: every byte mirrorctl puts on disk, as pure code (no I/O). The superblock's
//! types and encoding are re-exported here.

pub mod history;
pub mod journal;
pub mod layout;
pub mod ranges;
pub mod schema;
pub mod superblock;

pub use superblock::*;
