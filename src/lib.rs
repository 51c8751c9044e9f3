//! mirrorctl: synchronous mirroring of disk images with fracture and write-intent logs.
//!
//! The map, one folder per concern (dependencies point down this list, never up; a test,
//! `tests/cli/layers.rs`, fails on a cycle between the top-level modules):
//! - `cli`: the commands: clap definitions (`cli/args/` per group of commands), argument
//!   handling (`cli/commands/`), output, the status report worded, generated docs.
//! - `nbd_server`: the NBD server front end of `serve` and `export` (handshake, transmission,
//!   listening, and the control socket other commands reach a running serve through), over
//!   a `Backend` each of them implements (`engine/serve/`, the mirror while it is served).
//! - `engine`: the mirror: one file per operation, each with its durability rules on top;
//!   `engine/export.rs` is what `export` serves of one image.
//! - `meta`: one image's header and logs (superblock pair, bitmaps), through a `Device`.
//! - `device`: the devices: the `Device` trait, files and block devices, NBD exports, the
//!   storage model, locations turned into devices, what an image already holds.
//! - `format`: the bytes on disk, pure: layout, superblock encoding, histories, ranges.
//!
//! Beside them: `ocf` (the Pacemaker resource agent: its decisions pure in `ocf/mod.rs`,
//! its processes in `ocf/run.rs`), `config` (mirrors by name: the NAME.toml files, pure),
//! `live` (what a running command publishes for `status`), `lock`, `error`, `units`,
//! `thread` (helper threads and the persistent I/O workers, falling back to the caller
//! when none can be started), `tls` (TLS for the server and the NBD client; `tls/x509.rs`
//! reads certificate names), `systemd` (readiness notification and the priority prefixes
//! of log lines under journald).

pub mod cli;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod format;
pub mod live;
pub mod lock;
pub mod meta;
pub mod nbd_server;
pub mod ocf;
pub mod systemd;
pub mod thread;
pub mod tls;
pub mod units;
