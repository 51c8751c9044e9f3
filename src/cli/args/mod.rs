//! The clap definitions of each command's arguments, one file per group of commands.

pub mod data;
pub mod legs;
pub mod mirror;
pub mod serving;
