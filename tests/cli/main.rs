//! The real binary on real files, loop devices, tmpfs mounts, killed processes and real
//! third-party programs (qemu-nbd, nbdkit, mkfs, strace ...): one test binary, one support
//! module (running the binary, fixtures, data, guards that clean up and never skip).

mod support;

mod completion;
mod create_status;
mod events;
mod events_follow;
mod export;
mod failover;
mod generated_docs;
mod ha_cluster;
mod kill_points;
mod layers;
mod live;
mod live_races;
mod metadata_fuzz;
mod mirror_e2e;
mod mirror_faults;
mod monitoring;
mod names;
mod nbd;
mod ocf;
mod output;
mod perf;
mod quorum;
mod rule_index;
mod safety;
mod serve;
mod serve_limits;
mod serve_proto;
mod serve_truth;
mod systemd;
mod tls;
mod verify;
