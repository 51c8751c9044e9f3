//! The mirror serving hosts: request-level writes, zeroes, trims, flushes and reads, with the
//! activity log (hot extents) in the write-intent log, safe for many requests at once, and
//! the live administration (`admin.rs`, `verify.rs`) that runs among them.
//! `nbd_server/` speaks NBD and calls these; this file decides what is durable when.
//!
//! The live rules, one set for host requests and admin operations (W1..W6 of `write.rs`,
//! S1..S4 of `resync.rs` and V1 of `verify/mod.rs` hold here too; each is tagged at the lines that
//! keep it):
//! - H1 A request's extents are hot (their write-intent bits durable, W1) before any leg is
//!   written; otherwise a crash could leave legs differing where no log says so.
//! - H2 An extent's intents are cleared only when no request uses it (it left the hot set,
//!   retired, with no I/O) and only after a sync of the primary and every leg receiving
//!   writes that started after its last write completed (W2) and once no sync that began
//!   before that one is in progress (its error may be about those writes, H5, W6), and
//!   after every fracture bit H6 set is durable (H13); otherwise its clear could forget
//!   data not yet durable on some leg or on the primary, or a write a fractured leg
//!   missed. A retired extent not cleared yet is taken back by a request with no I/O: its
//!   bits are still durable.
//! - H3 A write is replied to only once it is written on the primary and on every leg
//!   receiving writes; a FLUSH, or a FUA request, only after the primary and every such leg
//!   synced (every write completed before the flush started is durable everywhere); otherwise
//!   an acknowledged write could be missing from a leg the mirror calls in sync.
//! - H4 Overlapping mutations, resync copies and verify reads run in arrival order: each
//!   waits for every earlier overlapping mutation, and every later one waits for it;
//!   otherwise legs could end with different orders of the same two writes, a copy of old
//!   data could land over a newer host write (DRBD makes resync extents exclusive with
//!   activity-log extents for this), or verify could report a write racing its reads as a
//!   difference and mark an identical leg out of sync.
//! - H5 A leg that stops receiving writes (it failed, W4, or an admin fractured it) gets in
//!   its fracture log, durably and in the lock hold that takes it off the writers' list,
//!   exactly what it may miss: the regions written since the last flush that finished on
//!   every leg (since an earlier one while a request or flush that began before it is still
//!   in progress: the error it gets may be about a write that flush counted durable, as
//!   Linux reports a writeback error to one fsync only), and every host write in flight.
//!   Device sync errors stick for the same reason (`FileDevice`, `NbdDevice`). Otherwise what it missed is forgotten; the
//!   whole hot set instead would cost a resync of gigabytes for a failure after a flush. A
//!   failing leg's request still succeeds; a primary that fails a write pins the request's
//!   extents (never cleared, W6) and the host gets an error for that request only.
//! - H6 A host write admitted while a slot's leg does not receive writes sets that leg's
//!   fracture bits in the lock hold that takes the list of legs to write: in memory, made
//!   durable before the region's intent is cleared (H2); a crash before that is covered by
//!   R1, which merges the intents (durable, H1) into every leg's log. Otherwise a resync would
//!   miss the write.
//! - H7 A leg joins the writers in one lock hold with what makes its log cover the writes in
//!   flight: an attach puts every host write in flight in its log, a resync marks it syncing
//!   (S3) while its log holds every write it missed (H5, H6); its copy of a region then waits
//!   for them (H4). Otherwise a write admitted just before could reach neither the leg nor
//!   its log.
//! - H8 Live operations name a leg by its identity ([`LegId`]: slot, image UUID and the
//!   epoch at which it last joined the writers), never by slot alone. A resync clears log
//!   bits (S1) and marks a leg in sync (S2) only in a lock hold in which that same leg still
//!   receives writes; a verify compares a leg only while it does. Otherwise a fracture, or a
//!   detach and an attach into the freed slot, landing during the operation makes it clear
//!   bits of writes the leg missed or of another image's initial log (data loss, a leg called
//!   in sync that differs), or report differences that are not there.
//! - H9 With `--min-in-sync N` (Q1 of `quorum.rs`) a write or flush is replied to with
//!   success only while N legs are in sync and receive writes: checked before it is admitted
//!   (a refused write then changes nothing) and again before its reply (a leg lost during it
//!   leaves the write in that leg's log, H5, and the host an error). It waits at most the
//!   quorum wait for a leg to come back, out of arrival order (a resync copy it overlaps,
//!   which may be what brings the quorum back, must not wait for it: H4 is kept by taking a
//!   new place when it goes on). Otherwise a write could be acknowledged on fewer copies than
//!   the admin asked for (an isolated primary acknowledging writes its peer never got).
//! - H10 With `--fence-peer COMMAND` (E1 of `fence.rs`) a leg that stops receiving writes
//!   (an error, an admin fracture) has its hook queued in the lock hold that made its
//!   fracture durable; until the hook exits 0 no write or flush is replied to with success
//!   (they wait as for H9, with no limit but the hook's own), and if it fails they are
//!   refused until the leg is back in sync or detached. The hook runs outside the lock, on
//!   the first thread that waits for it (or the admin command's). Otherwise a write could
//!   be acknowledged before the peer that missed it is kept from promotion. While H9 refuses
//!   writes anyway (too few in-sync secondaries), a write neither runs nor waits for the
//!   hook: it acknowledges nothing the peer lacks, so it is refused within the quorum wait;
//!   the hook runs at the first write that could be acknowledged (the minimum lowered).
//!   Otherwise an isolated primary, whose hook cannot reach the cluster and hangs until its
//!   time limit, held its hosts' writes for that long instead of failing them.
//! - H11 A flush (or FUA) is answered without a sync only when every write completed before
//!   it arrived completed at a flush epoch below the activity log's `durable`: before a
//!   flush that has since finished on the primary and every leg receiving writes *started*
//!   (its `flush_started`). "Nothing written since the last flush finished" is not enough:
//!   a write that completes while a flush runs may have reached its leg after that leg's
//!   fdatasync returned, so that flush does not cover it; a host flushing after it would
//!   then be told a write is durable that a crash loses (on a leg the mirror calls in
//!   sync, or on the primary). A failed flush makes nothing durable (W6), so the next one
//!   syncs again.
//! - H12 Activity-log transactions are group commits (`commit.rs`): requests needing cold
//!   extents queue, and one thread at a time (the leader) collects the extents of the
//!   queued requests (up to 64, within the hot set's capacity), sets their bits and clears
//!   those of clean retired extents (H2) in memory under the lock, then syncs the primary
//!   once with the lock let go (the legs beside it, in parallel, when a retired extent
//!   waits for them); requests arriving meanwhile wait for the next one. A request is given
//!   its extents (acquired for it) only after the sync that marked them returned (H1). Every
//!   bit goes into memory only once its own rule holds (a mark at any time, a clear per
//!   H2), so a sync that makes a later change durable early, or a torn one, loses nothing.
//!   Otherwise a request could write a leg before its intent is durable, or one metadata
//!   sync per request would cap random writes beyond the hot set.
//! - H13 Every sync that counts as a flush of every leg (a FLUSH, a transaction that syncs
//!   the legs) writes the bitmaps' changes first and makes them durable with the primary's
//!   sync (`Bitmaps::prepare_sync`): a retired extent clean by such a flush has the
//!   fracture bits H6 set for its writes durable. Otherwise its clear, torn beside them,
//!   could leave a write a fractured leg missed in no log.

mod admin;
mod commit;
mod verify;

pub use admin::Say;

use super::activity::ActivityLog;
use super::fence::FenceCall;
pub use super::fence::FenceHooks;
use crate::device::Device;
use crate::engine::uuid_str;
use crate::engine::EventKind;
use crate::engine::LegFailure;
use crate::engine::Mirror;
use crate::error::Error;
use crate::error::Result;
use crate::format::layout::Geometry;
use crate::format::ranges::union;
use crate::format::LegState;
use crate::format::Uuid;
use std::io;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::{Condvar, MutexGuard, Weak};
use std::time::Duration;
use std::time::Instant;

/// Requests up to this size write their legs on the calling thread, larger ones in parallel
/// (on the persistent I/O workers, [`crate::thread::workers`]).
const SMALL: u64 = 256 << 10;

/// Extents marked ahead of a sequential writer, with the one it needs: 64 MiB in all, as
/// a pipe-mode stream's window (each activation is a metadata sync, which also flushes the
/// disk's cache).
const READ_AHEAD: u64 = 15;

/// Writes of whole 4 KiB blocks bypass the page cache where they can (every leg, every
/// size): a flush then has nothing left to write back, dirty pages never pile up and
/// throttle the writers, and it is what a VM host gets from `qemu-nbd --cache=none`.
/// Measured with fio through `serve` (tests/bench.sh case 11): random 4 KiB writes with a
/// flush every 64 ran at 1.3 x the IOPS of buffered writes.
const DIRECT_WRITES: u64 = 4096;

/// Why a served request failed, in the engine's terms: `nbd_server` maps each kind to the
/// error number the host gets (`nbd_server::errno_of`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The request names bytes outside the data area.
    OutOfRange,
    /// Reading or writing failed, or writes are refused for now (a leg, the quorum, the
    /// metadata): the host may retry later.
    Io,
    /// A device had no space left (ENOSPC, EDQUOT).
    NoSpace,
    /// Writing is not allowed: a read-only export, or a device that refused it (EPERM,
    /// EROFS).
    NotPermitted,
    /// What was asked cannot be done on these devices (fast zeroing).
    Unsupported,
    /// The export serves nothing more (it became a primary through another connection).
    ShutDown,
}

/// A failed request: what kind of failure, and the line to log (and send, where the host
/// takes messages).
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub msg: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, msg: String) -> Failure {
        Failure { kind, msg }
    }
    pub(crate) fn io(msg: String, e: &io::Error) -> Failure {
        // By kind too: a sync that fails for an earlier or a concurrent one's error (Y1)
        // carries that error's kind, not its number.
        let kind = match (e.raw_os_error(), e.kind()) {
            (Some(libc::ENOSPC) | Some(libc::EDQUOT), _)
            | (_, io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => {
                FailureKind::NoSpace
            }
            (Some(libc::EPERM) | Some(libc::EROFS), _) | (_, io::ErrorKind::ReadOnlyFilesystem) => {
                FailureKind::NotPermitted
            }
            _ => FailureKind::Io,
        };
        Failure::new(kind, format!("{msg}: {e}"))
    }
}

pub type Served<T> = std::result::Result<T, Failure>;

/// A mutation's place in arrival order (H4), taken by the connection as the request comes.
pub struct Ticket {
    seq: u64,
    range: Range<u64>,
    /// Its entry in `inflight` holds the other end: a ticket dropped without being given
    /// back (a panic between ticket and release) no longer holds anyone up.
    _alive: Arc<()>,
}

/// What a mutation does on one device (at absolute device offsets).
pub enum Mutation<'a> {
    Write(&'a [u8]),
    /// Zeroes; `punch` lets the device make a hole (TRIM, WRITE_ZEROES without NO_HOLE).
    Zero {
        len: u64,
        punch: bool,
    },
}

impl Mutation<'_> {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Mutation::Write(d) => d.len() as u64,
            Mutation::Zero { len, .. } => *len,
        }
    }
    pub(crate) fn apply(&self, d: &dyn Device, at: u64) -> io::Result<()> {
        match self {
            // To the disk at once (O_DIRECT where aligned; the page cache otherwise).
            Mutation::Write(data) if data.len() as u64 >= DIRECT_WRITES => d.write_direct(data, at),
            Mutation::Write(data) => d.write_at(data, at),
            Mutation::Zero { len, punch: true } => d.zero_range(at, *len),
            Mutation::Zero { len, punch: false } => crate::device::write_zeros(d, at, *len),
        }
    }
}

/// Counters for the log and (later) status.
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub writes: u64,
    pub bytes_written: u64,
    pub reads: u64,
    pub bytes_read: u64,
    pub flushes: u64,
    pub activations: u64,
    pub evictions: u64,
    /// The most extents hot at once.
    pub peak_hot: usize,
    /// Writes and flushes refused for too few in-sync secondaries (H9).
    pub refused: u64,
    /// Flushes answered without a sync: nothing written since the last (H11).
    pub flushes_skipped: u64,
}

/// A leg as live operations name it (H8): the slot, the image there, and the epoch at which
/// it last joined the writers. Any fracture, detach or attach makes an old one stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegId {
    pub slot: u32,
    image: Uuid,
    epoch: u64,
}

/// What an entry of `inflight` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// A host write, zero or trim (what a leg that stops receiving may miss, H5).
    HostWrite,
    /// A resync copy or a verify read (H4 orders them; they change no leg's data a host
    /// wrote).
    Admin,
}

struct State {
    mirror: Mirror,
    al: ActivityLog,
    /// The legs receiving writes.
    legs: Vec<(u32, Arc<dyn Device>)>,
    /// Per slot, the epoch at which its leg joined `legs` (0: not receiving), H8.
    joined: Vec<u64>,
    next_epoch: u64,
    /// Mutations and admin copies/reads admitted and not yet finished, in arrival order.
    inflight: Vec<(u64, Range<u64>, Use, Weak<()>)>,
    next_seq: u64,
    counters: Counters,
    read_fallback_logged: bool,
    /// Threads waiting on `changed` (no wake-up system call is made when there are none).
    waiters: usize,
    /// Secondaries a write needs in sync (H9, Q1); an admin may change it live.
    min_in_sync: u32,
    /// Set when a write was refused for too few in-sync secondaries (the reason): later ones
    /// are refused at once until enough are back (H9).
    refused: Option<String>,
    /// Per slot, the fence of a leg that stopped receiving writes (H10).
    fences: Vec<Fence>,
    /// Requests waiting for an activity-log transaction (H12).
    commits: commit::Commits,
}

/// Where a slot's fence hook is (H10).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fence {
    None,
    /// To be run by the next thread that waits for it.
    Queued(FenceCall),
    Running,
    /// The hook exited 0: the peer is fenced until the leg is back in sync.
    Done,
    /// The hook failed (why): writes are refused.
    Failed(String),
}

/// A mirror serving requests. Many threads may call it at once.
pub struct Server {
    state: Mutex<State>,
    changed: Condvar,
    primary: Arc<dyn Device>,
    geometry: Geometry,
    read_only: bool,
    fast_zero: bool,
    name: String,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    /// Client connections open now, and ever.
    clients: AtomicU64,
    connections: AtomicU64,
    extent_bytes: u64,
    verify_chunk: u64,
    /// Set when serve stops: live administration (a resync) ends at its next run.
    admin_stop: AtomicBool,
    /// How long a write or flush waits for enough in-sync secondaries (H9).
    quorum_wait: Duration,
    /// The fence hooks (H10).
    fence: FenceHooks,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

/// How a mirror is served.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Extents kept hot (marked in the write-intent log).
    pub hot_extents: usize,
    /// Bytes per extent ([`super::EXTENT_BYTES`]; tests use smaller ones on small images).
    pub extent_bytes: u64,
    /// Refuse writes; change nothing on disk.
    pub read_only: bool,
    /// Bytes a live verify reads at once, in one place among the host writes
    /// ([`crate::engine::verify::READ_CHUNK`]; tests use smaller ones on small images).
    pub verify_chunk: u64,
    /// Secondaries a write needs in sync to be acknowledged (H9; 0: none).
    pub min_in_sync: u32,
    /// How long a write or flush waits for them before it is refused.
    pub quorum_wait: Duration,
    /// Commands run when a leg stops receiving writes and when it is back in sync (H10).
    pub fence: FenceHooks,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            hot_extents: super::DEFAULT_HOT_EXTENTS,
            extent_bytes: super::EXTENT_BYTES,
            read_only: false,
            verify_chunk: crate::engine::verify::READ_CHUNK,
            min_in_sync: 0,
            quorum_wait: Duration::from_secs(5),
            fence: FenceHooks::default(),
        }
    }
}

impl State {
    fn receiving(&self, slot: u32) -> bool {
        self.joined[slot as usize] != 0
    }

    /// The identity of the leg in `slot` now, if it receives writes.
    fn id_of(&self, slot: u32) -> Option<LegId> {
        self.receiving(slot).then(|| LegId {
            slot,
            image: self.mirror.sb().legs[slot as usize].image_uuid,
            epoch: self.joined[slot as usize],
        })
    }

    /// H8: whether the leg `id` names is still the one in its slot, receiving writes.
    fn is_current(&self, id: &LegId) -> bool {
        self.id_of(id.slot).as_ref() == Some(id)
    }

    /// The leg in `slot` starts receiving writes (H7: the caller has made its log cover
    /// the writes in flight); already receiving, it keeps its identity.
    fn join(&mut self, slot: u32, dev: Arc<dyn Device>) -> LegId {
        if !self.receiving(slot) {
            self.next_epoch += 1;
            self.joined[slot as usize] = self.next_epoch;
            self.legs.push((slot, dev));
        }
        self.id_of(slot).expect("joined")
    }

    /// The leg in `slot` stops receiving writes; false if it did not receive them.
    fn leave(&mut self, slot: u32) -> bool {
        if !self.receiving(slot) {
            return false;
        }
        self.joined[slot as usize] = 0;
        self.legs.retain(|(s, _)| *s != slot);
        true
    }

    /// Why a write may not be acknowledged now (H9); `None` with no minimum.
    fn shortfall(&self) -> Option<String> {
        if self.min_in_sync == 0 {
            return None;
        }
        let views = self.mirror.leg_views(&|s| self.receiving(s));
        super::quorum::shortfall(&views, self.min_in_sync)
    }

    /// Why writes are refused now (H9, H10): a failed fence hook, or too few in-sync
    /// secondaries.
    fn refusal(&self) -> Option<String> {
        self.fence_failed().or_else(|| self.shortfall())
    }

    /// A fence hook that failed (H10).
    fn fence_failed(&self) -> Option<String> {
        self.fences.iter().enumerate().find_map(|(s, f)| match f {
            Fence::Failed(why) => Some(format!("--fence-peer for slot {s} failed ({why})")),
            _ => None,
        })
    }

    /// A fence hook still to finish: writes wait for it (H10).
    fn fence_pending(&self) -> Option<String> {
        self.fences.iter().enumerate().find_map(|(s, f)| match f {
            Fence::Queued(_) | Fence::Running => Some(format!("--fence-peer running for slot {s}")),
            _ => None,
        })
    }

    /// Whether a write or flush may not simply go on now (H9, H10).
    fn gated(&self) -> bool {
        self.refusal().is_some() || self.fence_pending().is_some() || self.refusing_generation()
    }

    /// Q2: the image's last generation is a fracture that left writes refused: it is ended
    /// (in [`Server::await_quorum`]) before anything is acknowledged.
    fn refusing_generation(&self) -> bool {
        self.mirror.refusing_generation()
    }

    /// H10: the fence hook of a leg that just stopped receiving writes (its fracture
    /// durable), to be run before any write is acknowledged.
    fn queue_fence(&mut self, slot: u32, reason: String) {
        let leg = &self.mirror.sb().legs[slot as usize];
        let call = FenceCall {
            slot,
            leg: leg.location.clone(),
            mirror: uuid_str(&self.mirror.sb().mirror_uuid),
            reason,
        };
        self.fences[slot as usize] = Fence::Queued(call);
    }

    /// A queued fence hook, now marked running (its caller runs it).
    fn take_queued_fence(&mut self) -> Option<FenceCall> {
        let i = self
            .fences
            .iter()
            .position(|f| matches!(f, Fence::Queued(_)))?;
        match std::mem::replace(&mut self.fences[i], Fence::Running) {
            Fence::Queued(c) => Some(c),
            _ => None,
        }
    }

    /// Regions of the host writes in flight (H5, H7).
    fn writes_in_flight(&self) -> Vec<Range<u64>> {
        let g = self.mirror.geometry();
        let runs: Vec<Range<u64>> = self
            .inflight
            .iter()
            .filter(|(_, r, u, w)| *u == Use::HostWrite && !r.is_empty() && w.strong_count() > 0)
            .map(|(_, r, _, _)| g.regions_for(r.start, r.end - r.start))
            .collect();
        union(&runs, &[])
    }

    /// H5: what a leg that stops receiving writes now may be missing (back to the oldest
    /// request or flush in progress: an error one of them gets may be about a write a
    /// flush beside it counted durable, see [`ActivityLog::floor`]).
    fn missed_by_a_leaving_leg(&self) -> Vec<Range<u64>> {
        union(&self.al.unsynced_regions(), &self.writes_in_flight())
    }

    /// H5: puts `regions` in `slot`'s fracture log durably.
    fn log_durably(&mut self, slot: u32, regions: &[Range<u64>]) -> Result<()> {
        for r in regions.iter().filter(|r| !r.is_empty()) {
            self.mirror.mark_logged(slot, r.clone())?;
        }
        self.mirror.flush_bitmaps()
    }

    /// H6: a write admitted now reaches no leg that does not receive writes: their logs
    /// get its regions (in memory; durable before the intent is cleared, H2).
    fn log_for_absent_legs(&mut self, regions: &Range<u64>) -> Result<()> {
        for s in 0..self.mirror.geometry().slots {
            if self.receiving(s) || self.mirror.sb().legs[s as usize].state() == LegState::Empty {
                continue;
            }
            self.mirror.mark_logged(s, regions.clone())?;
        }
        Ok(())
    }
}

impl Mirror {
    /// Turns this (locked, recovered) mirror into a server. `log` gets one line per
    /// fracture, recovery fallback and error.
    pub fn serve(
        mut self,
        cfg: &ServeConfig,
        log: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Server> {
        let g = self.geometry();
        let read_only = cfg.read_only;
        let legs = if read_only {
            Vec::new()
        } else {
            self.active_legs()?
        };
        for w in self.take_warnings() {
            log(&w);
        }
        let fast_zero = self.primary().zero_is_fast() && legs.iter().all(|(_, d)| d.zero_is_fast());
        // From here on the intents on disk are this server's hot set.
        self.set_intents_live(!read_only);
        let slots = g.slots as usize;
        let mut state = State {
            al: ActivityLog::new(
                cfg.hot_extents,
                cfg.extent_bytes,
                g.region_size,
                g.region_count,
            ),
            mirror: self,
            legs: Vec::new(),
            joined: vec![0; slots],
            next_epoch: 0,
            inflight: Vec::new(),
            next_seq: 0,
            counters: Counters::default(),
            read_fallback_logged: false,
            waiters: 0,
            // Read-only: nothing is acknowledged as written, and nothing recorded.
            min_in_sync: if read_only { 0 } else { cfg.min_in_sync },
            refused: None,
            fences: vec![Fence::None; slots],
            commits: Default::default(),
        };
        for (s, d) in legs {
            state.join(s, d);
        }
        Ok(Server {
            name: state.mirror.name.clone(),
            reads: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            clients: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            extent_bytes: cfg.extent_bytes,
            verify_chunk: cfg.verify_chunk,
            admin_stop: AtomicBool::new(false),
            quorum_wait: cfg.quorum_wait,
            fence: if read_only {
                FenceHooks::default()
            } else {
                cfg.fence.clone()
            },
            primary: state.mirror.primary().clone(),
            state: Mutex::new(state),
            changed: Condvar::new(),
            geometry: g,
            read_only,
            fast_zero,
            log,
        })
    }
}

impl Server {
    pub fn size(&self) -> u64 {
        self.geometry.data_size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether zeroing is fast on every leg (holes punched), for `NBD_CMD_FLAG_FAST_ZERO`.
    pub fn fast_zero(&self) -> bool {
        self.fast_zero
    }

    /// Legs receiving writes now (the primary not counted).
    pub fn legs(&self) -> usize {
        self.lock().legs.len()
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.lock().counters.clone();
        c.reads = self.reads.load(Ordering::Relaxed);
        c.bytes_read = self.bytes_read.load(Ordering::Relaxed);
        c
    }

    /// A client connected (counted for status).
    pub fn client_opened(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A host finished its handshake: recorded in the event journal (not by a read-only
    /// server, which writes nothing).
    pub fn client_connected(&self, what: &str) {
        if self.read_only {
            return;
        }
        let mut st = self.lock();
        if let Err(e) = st.mirror.record(EventKind::ClientConnected, None, what) {
            (self.log)(&format!(
                "warning: recording the connection in the event journal: {e}"
            ));
        }
    }

    pub fn client_closed(&self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// What `status` shows of this server (the rates are added by the publisher).
    pub fn live_record(&self) -> crate::live::ServeRecord {
        let c = self.counters();
        let (hot, cap) = self.hot();
        crate::live::ServeRecord {
            clients: self.clients.load(Ordering::Relaxed),
            connections_total: self.connections.load(Ordering::Relaxed),
            hot_extents: hot as u64,
            hot_extents_max: cap as u64,
            extent_bytes: self.extent_bytes,
            pinned_extents: self.pinned_extents() as u64,
            writes_total: c.writes,
            written_bytes_total: c.bytes_written,
            reads_total: c.reads,
            read_bytes_total: c.bytes_read,
            flushes_total: c.flushes,
            min_in_sync: u64::from(self.quorum().1),
            in_sync_secondaries: u64::from(self.quorum().0),
            writes_refused: self.writes_refused(),
            writes_held: self.writes_held(),
            refused_total: c.refused,
            ..Default::default()
        }
    }

    /// Hot extents kept marked after primary write errors (W6), for status and health.
    pub fn pinned_extents(&self) -> usize {
        self.lock().al.pinned()
    }

    /// (hot extents now, capacity).
    pub fn hot(&self) -> (usize, usize) {
        let st = self.lock();
        (st.al.len(), st.al.capacity())
    }

    /// Whether a thread waits for a change to the state (tests: a request stands behind an
    /// earlier one).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> bool {
        self.state
            .try_lock()
            .map(|st| st.waiters > 0 || st.commits.parked > 0)
            .unwrap_or(false)
    }

    /// Whether some thread holds the state lock now (tests).
    #[cfg(test)]
    pub(crate) fn state_held(&self) -> bool {
        self.state.try_lock().is_err()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a change to the state (a request finished, a leg came back in sync).
    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        // Woken by every change; at the latest after a while, so that a ticket dropped
        // without a wake-up (a panic) is seen.
        self.wait_at_most(st, Duration::from_millis(200))
    }

    /// [`Server::wait`], at most `d`.
    fn wait_at_most<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        d: Duration,
    ) -> MutexGuard<'a, State> {
        st.waiters += 1;
        let (mut st, _) = self
            .changed
            .wait_timeout(st, d.min(Duration::from_millis(200)))
            .unwrap_or_else(|p| p.into_inner());
        st.waiters -= 1;
        st
    }

    /// H4: waits until no mutation admitted before `t` overlaps it.
    fn wait_for_earlier<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        t: &Ticket,
    ) -> MutexGuard<'a, State> {
        loop {
            // A ticket dropped unreleased (its thread panicked) is finished.
            st.inflight.retain(|(_, _, _, w)| w.strong_count() > 0);
            let earlier = st
                .inflight
                .iter()
                .any(|(s, r, _, _)| *s < t.seq && r.start < t.range.end && r.end > t.range.start);
            if !earlier {
                return st;
            }
            st = self.wait(st);
        }
    }

    /// Unlocks after a change, waking the threads that wait for one.
    fn wake(&self, mut st: MutexGuard<'_, State>) {
        let any = st.waiters > 0;
        let threads = st.commits.take_wakes();
        drop(st);
        if any {
            self.changed.notify_all();
        }
        threads.iter().for_each(std::thread::Thread::unpark);
    }

    /// Unlocks, then wakes the requests a transaction told and, when none is syncing, the
    /// first queued request (H12).
    fn unlock(&self, mut st: MutexGuard<'_, State>) {
        let threads = st.commits.take_wakes();
        drop(st);
        threads.iter().for_each(std::thread::Thread::unpark);
    }

    fn flush_log(&self, st: &mut State) {
        for w in st.mirror.take_warnings() {
            (self.log)(&w);
        }
    }

    /// Checks a request's range against the data area.
    pub fn check(&self, off: u64, len: u64) -> Served<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.geometry.data_size => Ok(()),
            _ => Err(Failure::new(
                FailureKind::OutOfRange,
                format!(
                    "request at offset {off} length {len} runs past the end of the export ({} bytes)",
                    self.geometry.data_size
                ),
            )),
        }
    }

    /// H4: takes a host mutation's place in arrival order. Call in the order requests
    /// arrive.
    pub fn ticket(&self, off: u64, len: u64) -> Ticket {
        self.ticket_for(off, len, Use::HostWrite)
    }

    fn ticket_for(&self, off: u64, len: u64, what: Use) -> Ticket {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let range = off..off + len;
        let alive = Arc::new(());
        st.inflight
            .push((seq, range.clone(), what, Arc::downgrade(&alive)));
        Ticket {
            seq,
            range,
            _alive: alive,
        }
    }

    /// Gives a ticket back (a request refused before it ran, or an admin copy or read done).
    pub fn cancel(&self, t: Ticket) {
        let mut st = self.lock();
        st.inflight.retain(|(s, _, _, _)| *s != t.seq);
        self.wake(st);
    }

    /// Reads from the data area; a primary read error is served from an in-sync leg whose
    /// logs show the region current. `direct`: past the page cache where the read is aligned
    /// ([`Device::read_direct`]; a random reader's), else through it (a sequential stream,
    /// read ahead with [`Server::read_ahead`]). Reads take no place in arrival order (H4 is
    /// for mutations): either way a read sees every write replied to before it arrived, and
    /// one racing a write may see either, as NBD allows.
    pub fn read(&self, off: u64, buf: &mut [u8], direct: bool) -> Served<()> {
        let at = self.geometry.data_offset + off;
        let r = if direct {
            self.primary.read_direct(buf, at)
        } else {
            self.primary.read_at(buf, at)
        };
        // Reads take no lock on their way: counted apart.
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if r.is_ok() {
            return Ok(());
        }
        let perr = r.err().map(|e| e.to_string()).unwrap_or_default();
        // From a leg receiving writes whose logs show the range current, with its device
        // already open: nothing is opened (or connected) with the state locked, so a
        // failing primary never makes host writes wait on a secondary's server.
        let regions = self.geometry.regions_for(off, buf.len() as u64);
        let candidates: Vec<(u32, Arc<dyn Device>)> = {
            let mut st = self.lock();
            let legs = st.legs.clone();
            legs.into_iter()
                .filter(|(s, _)| st.mirror.current_on(*s, &regions))
                .collect()
        };
        for (slot, d) in candidates {
            if d.read_at(buf, at).is_ok() {
                let mut st = self.lock();
                if !st.read_fallback_logged {
                    st.read_fallback_logged = true;
                    (self.log)(&format!(
                        "warning: primary {} failed at data offset {off}: {perr}; reads are served from secondary slot {slot} where it is current (logged once)",
                        self.name
                    ));
                }
                return Ok(());
            }
        }
        Err(Failure::new(
            FailureKind::Io,
            format!(
                "reading primary {} at data offset {off}: {perr}; no in-sync secondary could serve it",
                self.name
            ),
        ))
    }

    /// Starts reading `len` bytes of the data area at `off` into the primary's cache, for a
    /// sequential reader (a hint; nothing waits for it).
    pub fn read_ahead(&self, off: u64, len: u64) {
        let end = (off + len).min(self.size());
        if off < end {
            self.primary
                .read_ahead(self.geometry.data_offset + off, end - off);
        }
    }

    /// Data and hole extents of `off..off+len` from the primary: (length, is a hole).
    pub fn extents(&self, off: u64, len: u64) -> Served<Vec<(u64, bool)>> {
        let base = self.geometry.data_offset;
        let whole = vec![(len, false)];
        let ext = match self.primary.data_extents(base + off..base + off + len) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(whole),
            Err(e) => {
                return Err(Failure::io(
                    format!("mapping primary at data offset {off}"),
                    &e,
                ))
            }
        };
        let mut out = Vec::new();
        let mut pos = base + off;
        for r in ext {
            if r.start > pos {
                out.push((r.start - pos, true));
            }
            out.push((r.end - r.start.max(pos), false));
            pos = r.end;
        }
        if pos < base + off + len {
            out.push((base + off + len - pos, true));
        }
        Ok(out)
    }

    /// Writes, zeroes or trims one admitted range, mirrored; syncs everything first if `fua`.
    pub fn mutate(&self, t: Ticket, m: Mutation<'_>, fua: bool) -> Served<()> {
        // H9: the whole request waits at most this long for enough in-sync secondaries.
        let deadline = Instant::now() + self.quorum_wait;
        // The ticket leaves `inflight` in the same lock as the extents are released.
        self.mutate_inner(t, &m, deadline)?;
        if fua {
            self.flush_by(deadline)?;
        }
        Ok(())
    }

    fn mutate_inner(&self, mut t: Ticket, m: &Mutation<'_>, deadline: Instant) -> Served<()> {
        if self.read_only {
            self.cancel(t);
            return Err(Failure::new(
                FailureKind::NotPermitted,
                "the export is read-only".into(),
            ));
        }
        debug_assert_eq!(t.range.end - t.range.start, m.len());
        let g = self.geometry;
        let regions = g.regions_for(t.range.start, m.len());
        let mut st = self.lock();
        if st.gated() {
            // H9, H10: out of arrival order while it waits (nothing of it is written yet), so
            // that a resync copy it overlaps is not held up by it.
            st.inflight.retain(|(s, _, _, _)| *s != t.seq);
            self.changed.notify_all();
            let (g, r) = self.await_quorum(st, deadline);
            st = g;
            if let Err(f) = r {
                self.wake(st);
                return Err(f);
            }
            // H4: back in as the newest arrival.
            t.seq = st.next_seq;
            st.next_seq += 1;
            st.inflight.push((
                t.seq,
                t.range.clone(),
                Use::HostWrite,
                Arc::downgrade(&t._alive),
            ));
        }
        let st = self.wait_for_earlier(st, &t);
        let exts = st.al.extents_of(&regions);
        // H1 + H12: the extents hot (a transaction's sync) and acquired for this request.
        let (mut st, r) = self.make_hot(st, &exts, &regions);
        if let Err(f) = r {
            st.inflight.retain(|(s, _, _, _)| *s != t.seq);
            self.wake(st);
            return Err(f);
        }
        // H6: in the lock hold that takes the legs to write.
        if let Err(e) = st.log_for_absent_legs(&regions) {
            st.al.release(&exts, None);
            st.inflight.retain(|(s, _, _, _)| *s != t.seq);
            self.wake(st);
            return Err(Failure::new(FailureKind::Io, e.to_string()));
        }
        // H5: until it ends, what a leg failing in it may miss reaches back to here.
        let since = st.al.begin();
        let legs = st.legs.clone();
        // The requests a transaction led from here granted go once the lock is let go.
        self.unlock(st);

        let at = g.data_offset + t.range.start;
        let primary = self.primary.clone();
        let (pres, lres) = if legs.is_empty() || m.len() <= SMALL {
            // Small requests: the legs one after the other on this thread (many requests
            // run at once anyway; a thread per leg would cost more than the write).
            let p = m.apply(&*primary, at);
            let l = if p.is_ok() {
                legs.iter().map(|(s, d)| (*s, m.apply(&**d, at))).collect()
            } else {
                Vec::new()
            };
            (p, l)
        } else {
            // Large ones: the legs on the persistent I/O workers, the primary here.
            type Task<'a> = Box<dyn FnOnce() -> (u32, io::Result<()>) + Send + 'a>;
            let tasks: Vec<Task> = legs
                .iter()
                .map(|(s, d)| Box::new(move || (*s, m.apply(&**d, at))) as Task)
                .collect();
            crate::thread::workers().run_all(tasks, || m.apply(&*primary, at))
        };

        let mut st = self.lock();
        if let Err(e) = pres {
            // H5/W6: the intents of these extents stay until the next command recovers.
            st.al.pin(&exts);
            st.al.release(&exts, None);
            st.al.end(since);
            st.inflight.retain(|(s, _, _, _)| *s != t.seq);
            self.wake(st);
            let f = Failure::io(
                format!(
                    "writing primary {} at data offset {}",
                    self.name, t.range.start
                ),
                &e,
            );
            (self.log)(&format!("error: {}; the host gets an error for this request, the region stays marked for recovery", f.msg));
            return Err(f);
        }
        let mut res = Ok(());
        // This write is still in flight here: a leg fractured now gets its regions (H5).
        for (s, r) in lres {
            if let Err(err) = r {
                let what = format!("write at data offset {}", t.range.start);
                if let Err(e) = self.fracture(&mut st, s, what, err) {
                    res = Err(e);
                }
            }
        }
        st.inflight.retain(|(s, _, _, _)| *s != t.seq);
        st.al.release(&exts, Some(&regions));
        st.al.end(since);
        self.flush_log(&mut st);
        let mut counted = true;
        if res.is_ok() && st.gated() {
            // H9: a leg lost meanwhile (its log has this write, H5): no success unless
            // enough are back in sync within the wait.
            self.changed.notify_all();
            let (g, r) = self.await_quorum(st, deadline);
            st = g;
            if let Err(f) = r {
                // Not reported as written (the stop's summary, status).
                counted = false;
                res = Err(Failure::new(
                    f.kind,
                    format!(
                        "{}; this write reached the primary and the legs receiving writes (the others have it in their fracture logs) but is not acknowledged",
                        f.msg
                    ),
                ));
            }
        }
        if counted {
            st.counters.writes += 1;
            st.counters.bytes_written += m.len();
        }
        self.wake(st);
        res
    }

    /// H9 + H10: runs a queued fence hook, waits for one running, then waits until at most
    /// `deadline` for enough in-sync secondaries; refused at once after a failed fence hook
    /// or while writes are being refused already (the first refusal is logged and recorded,
    /// once, as is the resumption).
    fn await_quorum<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> (MutexGuard<'a, State>, Served<()>) {
        loop {
            // H10: with too few in-sync secondaries (H9) this write is refused whatever the
            // hook does, so it neither runs nor waits for it.
            let short = st.shortfall();
            if short.is_none() {
                if let Some(call) = st.take_queued_fence() {
                    drop(st);
                    self.run_fence(call);
                    st = self.lock();
                    continue;
                }
                if st.fence_pending().is_some() {
                    st = self.wait(st);
                    continue;
                }
            }
            let failed = st.fence_failed();
            let Some(why) = failed.clone().or(short) else {
                // Q2: a refusing generation ends, durably, before this is acknowledged.
                if let Err(e) = st.mirror.end_refusing_generation() {
                    return (
                        st,
                        Err(Failure::new(
                            FailureKind::Io,
                            format!("recording that writes are acknowledged again: {e}"),
                        )),
                    );
                }
                self.resume(&mut st);
                return (st, Ok(()));
            };
            let now = Instant::now();
            if failed.is_some() || st.refused.is_some() || now >= deadline {
                self.refuse(&mut st, &why);
                st.counters.refused += 1;
                let f = Failure::new(
                    FailureKind::Io,
                    if failed.is_some() {
                        format!("writes refused: {why}; the leg stays fractured")
                    } else {
                        format!(
                            "writes refused: {why}, fewer than --min-in-sync {}",
                            st.min_in_sync
                        )
                    },
                );
                return (st, Err(f));
            }
            st = self.wait_at_most(st, deadline - now);
        }
    }

    /// H10: runs a fence hook (no lock held) and records how it ended.
    fn run_fence(&self, call: FenceCall) {
        let Some(cmd) = self.fence.fence_peer.clone() else {
            return;
        };
        let started = Instant::now();
        (self.log)(&format!(
            "secondary slot {} ({}) stopped receiving writes: running --fence-peer; writes wait for it",
            call.slot, call.leg
        ));
        let r = super::fence::run(&cmd, &self.fence, &call);
        let mut st = self.lock();
        let slot = call.slot as usize;
        if st.fences[slot] == Fence::Running {
            match r {
                Ok(()) => {
                    (self.log)(&format!(
                        "--fence-peer for slot {} succeeded in {:.1}s; writes go on without it",
                        call.slot,
                        started.elapsed().as_secs_f64()
                    ));
                    st.fences[slot] = Fence::Done;
                }
                Err(e) => {
                    (self.log)(&format!(
                        "error: --fence-peer for slot {} failed ({e}): writes are refused until the leg is back in sync (`mirrorctl resync {}`) or detached",
                        call.slot, self.name
                    ));
                    st.fences[slot] = Fence::Failed(e);
                }
            }
        }
        self.wake(st);
    }

    /// H10: runs every queued fence hook (an admin fracture's, a live resync's).
    pub fn run_fences(&self) {
        loop {
            let call = self.lock().take_queued_fence();
            match call {
                Some(c) => self.run_fence(c),
                None => return,
            }
        }
    }

    /// H10: a leg back in sync (or gone) needs no fence: its state cleared; the calls of
    /// the unfence hook to run (for fences that succeeded), once the lock is let go.
    fn unfence(&self, st: &mut State, slots: &[u32]) -> Vec<FenceCall> {
        let mut out = Vec::new();
        for &s in slots {
            let was = std::mem::replace(&mut st.fences[s as usize], Fence::None);
            if was == Fence::Done && self.fence.unfence.is_some() {
                let leg = &st.mirror.sb().legs[s as usize];
                out.push(FenceCall {
                    slot: s,
                    leg: leg.location.clone(),
                    mirror: uuid_str(&st.mirror.sb().mirror_uuid),
                    reason: "in sync again".into(),
                });
            }
        }
        out
    }

    /// Runs the unfence hook for `calls` (no lock held); its failure is logged.
    fn run_unfence(&self, calls: Vec<FenceCall>) {
        let Some(cmd) = self.fence.unfence.clone() else {
            return;
        };
        for c in calls {
            match super::fence::run(&cmd, &self.fence, &c) {
                Ok(()) => (self.log)(&format!(
                    "--unfence for slot {} ({}) succeeded",
                    c.slot, c.leg
                )),
                Err(e) => (self.log)(&format!(
                    "warning: --unfence for slot {} ({}) failed ({e}); the peer may still be kept from promotion: remove the constraint by hand",
                    c.slot, c.leg
                )),
            }
        }
    }

    /// H9: writes start being refused: logged and recorded once.
    fn refuse(&self, st: &mut State, why: &str) {
        if st.refused.is_some() {
            return;
        }
        st.refused = Some(why.to_string());
        (self.log)(&format!(
            "error: writes refused: {why}, fewer than --min-in-sync {}; hosts get I/O errors for writes and flushes until a leg is back in sync (`mirrorctl resync {}`) or `mirrorctl set {} --min-in-sync N` lowers the minimum",
            st.min_in_sync, self.name, self.name
        ));
        if let Err(e) = st.mirror.record(EventKind::WritesRefused, None, why) {
            (self.log)(&format!(
                "warning: recording the refusal in the event journal: {e}"
            ));
        }
    }

    /// H9: writes are acknowledged again (if they were refused): logged and recorded once.
    fn resume(&self, st: &mut State) {
        if st.refused.is_none() || st.refusal().is_some() {
            return;
        }
        st.refused = None;
        let n = super::quorum::in_sync(&st.mirror.leg_views(&|s| st.receiving(s)));
        let what = format!("{n} of min {} in-sync secondaries", st.min_in_sync);
        (self.log)(&format!("writes resumed: {what}"));
        if let Err(e) = st.mirror.record(EventKind::WritesResumed, None, &what) {
            (self.log)(&format!(
                "warning: recording the resumption in the event journal: {e}"
            ));
        }
    }

    /// Why writes are refused now, if they are (H9): a write arriving now would wait for
    /// enough in-sync secondaries, then be refused. For status and the admin.
    pub fn writes_refused(&self) -> Option<String> {
        self.lock().refusal()
    }

    /// Why writes wait now (a fence hook running, H10), if they do.
    pub fn writes_held(&self) -> Option<String> {
        self.lock().fence_pending()
    }

    /// (secondaries in sync and receiving writes, the minimum asked for) (H9).
    pub fn quorum(&self) -> (u32, u32) {
        let st = self.lock();
        let n = super::quorum::in_sync(&st.mirror.leg_views(&|s| st.receiving(s)));
        (n, st.min_in_sync)
    }

    /// Changes the minimum of in-sync secondaries live (H9); returns the old one. Writes
    /// waiting or refused go on at once when the new one is met.
    pub fn set_min_in_sync(&self, n: u32) -> Result<u32> {
        let slots = self.geometry.slots;
        if n > slots {
            return Err(Error::invalid(format!(
                "--min-in-sync {n}: the mirror has {slots} secondary slots, so at most {slots} can be in sync; nothing was changed"
            )));
        }
        let mut st = self.lock();
        let old = std::mem::replace(&mut st.min_in_sync, n);
        (self.log)(&format!(
            "min-in-sync changed from {old} to {n} by the admin"
        ));
        self.resume(&mut st);
        self.wake(st);
        Ok(old)
    }

    /// H5 + W4: a leg failed; its log gets what it may have missed, then it is fractured.
    fn fracture(&self, st: &mut State, slot: u32, what: String, err: io::Error) -> Served<()> {
        if !st.receiving(slot) {
            return Ok(()); // already fractured by a request that failed first
        }
        let missed = st.missed_by_a_leaving_leg();
        st.leave(slot);
        let reason = format!("by error: {what}: {err}");
        // Q2: with too few left in sync, nothing is acknowledged from this generation on.
        let refusing = st.shortfall().is_some();
        st.mirror
            .fracture_on_error_as(LegFailure { slot, what, err }, &missed, refusing)
            .map_err(|e| Failure::new(FailureKind::Io, e.to_string()))?;
        // H10: after its fracture is durable.
        if self.fence.fence_peer.is_some() {
            st.queue_fence(slot, reason);
        }
        Ok(())
    }

    /// H3: makes every write completed so far durable on the primary and every leg
    /// receiving writes (legs that fail are fractured, the flush still succeeds).
    pub fn flush(&self) -> Served<()> {
        self.flush_by(Instant::now() + self.quorum_wait)
    }

    /// [`Server::flush`], waiting for enough in-sync secondaries (H9) until `deadline`.
    fn flush_by(&self, deadline: Instant) -> Served<()> {
        let (covered, legs, pages) = {
            let mut st = self.lock();
            if st.gated() {
                // H9, H10: a flush would claim durability on fewer copies than asked for.
                let (g, r) = self.await_quorum(st, deadline);
                st = g;
                r?;
            }
            st.counters.flushes += 1;
            if st.al.all_durable() {
                // H11: every write completed before this flush is durable on every leg
                // receiving writes already; nothing to sync.
                st.counters.flushes_skipped += 1;
                return Ok(());
            }
            // H13: the bitmaps' changes go with the primary's sync (paged store).
            let pages = match st.mirror.bitmaps.prepare_sync() {
                Ok(p) => p,
                Err(e) => {
                    let f = Failure::io(format!("writing bitmaps of primary {}", self.name), &e);
                    (self.log)(&format!("error: {}", f.msg));
                    return Err(f);
                }
            };
            (st.al.flush_started(), st.legs.clone(), pages)
        };
        let (p, errs) = super::write::sync_parallel(&self.primary, &legs);
        let mut st = self.lock();
        if let Err(e) = p {
            st.mirror.bitmaps.sync_failed(pages);
            // W6: nothing written since the last good flush is ever cleared.
            st.al.pin_unflushed();
            st.al.flush_failed(covered);
            let f = Failure::io(format!("syncing primary {}", st.mirror.name), &e);
            (self.log)(&format!("error: {}", f.msg));
            return Err(f);
        }
        st.mirror.bitmaps.synced(pages);
        let mut res = Ok(());
        for (s, e) in errs {
            if let Err(f) = self.fracture(&mut st, s, "sync".into(), e) {
                res = Err(f);
            }
        }
        st.al.flush_done(covered);
        self.flush_log(&mut st);
        if res.is_ok() && st.gated() {
            // H9, H10: a leg lost in this flush: not durable on enough copies.
            let (g, r) = self.await_quorum(st, deadline);
            st = g;
            res = r;
        }
        self.wake(st);
        res
    }

    /// Whether a zero request with FAST_ZERO can be honoured.
    pub fn check_fast_zero(&self) -> Served<()> {
        if self.fast_zero {
            Ok(())
        } else {
            Err(Failure::new(
                FailureKind::Unsupported,
                "fast zeroing is not possible on every leg".into(),
            ))
        }
    }

    /// A clean stop: every request has finished. Syncs every leg, clears the intents of the
    /// hot set (W2, W5) but pinned extents (W6), and gives the mirror back.
    pub fn stop(self) -> Result<(Mirror, Counters)> {
        let log = self.log;
        let (reads, bytes_read) = (self.reads.into_inner(), self.bytes_read.into_inner());
        let st = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let State {
            mut mirror,
            mut al,
            legs,
            mut counters,
            ..
        } = st;
        counters.reads = reads;
        counters.bytes_read = bytes_read;
        mirror.set_intents_live(false);
        if self.read_only {
            return Ok((mirror, counters));
        }
        let covered = al.flush_started();
        let (p, errs) = super::write::sync_parallel(&self.primary, &legs);
        if let Err(e) = p {
            return Err(Error::primary_io(
                format!("syncing primary {} at stop", mirror.name),
                &e,
            ));
        }
        for (slot, err) in errs {
            // H5: nothing is in flight at a stop.
            let missed = al.unsynced_regions();
            mirror.fracture_on_error(
                LegFailure {
                    slot,
                    what: "sync at stop".into(),
                    err,
                },
                &missed,
            )?;
        }
        al.flush_done(covered);
        // H2 + H6: fracture bits durable before the intents go.
        mirror.flush_bitmaps()?;
        for ev in al.drain_clean() {
            mirror.clear_evicted(ev)?;
        }
        mirror.flush_bitmaps()?;
        let pinned = al.pinned();
        if pinned > 0 {
            mirror.warnings.push(format!(
                "warning: {} stay marked in the write-intent log after primary write errors; the next command recovers them",
                crate::units::plural(pinned as u64, "extent")
            ));
        }
        for w in mirror.take_warnings() {
            log(&w);
        }
        Ok((mirror, counters))
    }
}
