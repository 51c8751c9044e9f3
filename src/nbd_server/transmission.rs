//! The server side of the NBD transmission phase: requests read in order, run by a pool of
//! workers (queue depth [`QUEUE_DEPTH`]), replies (simple or structured) sent as they finish.
//!
//! What one connection may hold, whatever its client does (README, "Serving hosts"):
//! - threads: its own (the reader) and 1 to [`QUEUE_DEPTH`] workers, started as requests
//!   wait and ended after [`IDLE_WORKER`] without work; the pool is per connection, so a
//!   client that stalls holds only its own threads;
//! - payload buffers: [`BUFFER_BUDGET`] in use (plus one request over it) and
//!   [`POOL_BYTES`] kept for reuse;
//! - replies not yet taken by the client: [`REPLY_QUEUE`] (plus one reply); over it, the
//!   workers wait, the queue of requests fills and its requests are no longer read. A client
//!   that takes nothing for the write timeout is dropped (the socket's send timeout);
//! - read ahead for it in the page cache: [`READ_STREAMS`] sequential streams, each at most
//!   [`READ_AHEAD`] past its latest request ([`Streams`]).
//!
//! Reads: a random or large one goes past the page cache where it is aligned (O_DIRECT,
//! straight into its payload buffer, as qemu-nbd `--cache=none` reads); a sequential stream
//! of smaller ones goes through the cache, which is read ahead of it. A reply goes out from the buffer it was read
//! into, its header with it, in one system call.

use super::backend::Backend;
use super::handshake::{transmission_flags, Negotiated, BASE_ALLOCATION_ID};
use super::request::{self, Command, Header, Invalid, Limits, HEADER_LEN};
use crate::device::nbd::proto::*;
use crate::device::{read_full, AlignedBuf, DIRECT_ALIGN};
use crate::engine::serve::{Failure, FailureKind, Mutation};
use std::collections::VecDeque;
use std::io::BufReader;
use std::io::{IoSlice, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Requests one connection runs at once (and its most worker threads).
pub const QUEUE_DEPTH: usize = 32;

/// A worker with nothing to do for this long ends (one always stays).
pub const IDLE_WORKER: Duration = Duration::from_secs(10);

/// Payload bytes (read buffers and write data) one connection holds at most at once; a
/// single request of up to [`MAX_BLOCK`] always fits.
pub const BUFFER_BUDGET: u64 = 128 << 20;

/// Reply bytes queued for a client that has not taken them yet, at most (one reply of any
/// size is queued when nothing is).
pub const REPLY_QUEUE: usize = 16 << 20;

/// Sequential read streams one connection is tracked (and read ahead) for at once.
pub const READ_STREAMS: usize = 4;

/// Requests of a sequential stream at least this large go past the cache all the same: each
/// is a large disk read already, and the client's queue keeps the disk busy (1 MiB reads
/// at iodepth 8 ran at 1.6 x the throughput direct as through the cache read ahead, where
/// 128 KiB reads at iodepth 1 gained from the read-ahead).
pub const LARGE_READ: u64 = 512 << 10;

/// How far ahead of a sequential stream's latest request its data is read into the page
/// cache (asked for in halves of it, as the stream moves on).
pub const READ_AHEAD: u64 = 8 << 20;

/// Error lines logged per connection before the rest are only counted.
const LOGGED_ERRORS: u32 = 20;

/// How a connection's transmission ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `NBD_CMD_DISC`.
    Disconnected,
    /// The client closed the connection between requests.
    Closed,
    /// The client broke the protocol or closed mid-request; the text says how.
    Broken(String),
}

/// Bytes of payload in flight on one connection (bounds memory by buffers, not requests).
struct Budget {
    /// (bytes in use, the reader waits for some to be freed).
    used: Mutex<(u64, bool)>,
    freed: Condvar,
}

impl Budget {
    fn take(&self, n: u64) {
        let mut u = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while u.0 > 0 && u.0 + n > BUFFER_BUDGET {
            u.1 = true;
            u = self.freed.wait(u).unwrap_or_else(|p| p.into_inner());
        }
        u.1 = false;
        u.0 += n;
    }
    fn give(&self, n: u64) {
        let mut u = self.used.lock().unwrap_or_else(|p| p.into_inner());
        u.0 -= n;
        if u.1 {
            // Only the reader waits, so one wake-up is enough (and none is sent otherwise).
            drop(u);
            self.freed.notify_one();
        }
    }
}

struct Job<T> {
    handle: u64,
    typ: u16,
    flags: u16,
    off: u64,
    len: u32,
    data: AlignedBuf,
    ticket: Option<T>,
    /// Payload bytes charged to the budget.
    charged: u64,
    /// A read: how it is done and what to read ahead after it ([`Streams::read`]).
    plan: ReadPlan,
}

/// How one read is done, as the connection's [`Streams`] decide in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct ReadPlan {
    /// Past the page cache (a read no stream continues).
    direct: bool,
    /// `(offset, length)` to read ahead into the cache after this read's reply.
    ahead: Option<(u64, u64)>,
}

/// One sequential stream: where its next request would start, how far its data has been
/// asked for ahead, and how many requests have continued it.
#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    next: u64,
    ahead: u64,
    run: u32,
    /// When it was last continued (for replacing the oldest).
    used: u64,
}

/// The sequential read streams of one connection (pure: no I/O). A read that starts where
/// an earlier one ended continues that stream; from its second continuation on, a request
/// under [`LARGE_READ`] is read through the cache and the stream is read ahead. Any other
/// read starts a new stream in place of the least recently used of [`READ_STREAMS`], and
/// goes past the cache.
#[derive(Default)]
struct Streams {
    s: [Stream; READ_STREAMS],
    tick: u64,
}

impl Streams {
    fn read(&mut self, off: u64, len: u64, size: u64) -> ReadPlan {
        self.tick += 1;
        let end = off + len;
        let Some(st) = self.s.iter_mut().find(|s| s.run > 0 && s.next == off) else {
            let old = self
                .s
                .iter_mut()
                .min_by_key(|s| s.used)
                .expect("READ_STREAMS > 0");
            *old = Stream {
                next: end,
                ahead: end,
                run: 1,
                used: self.tick,
            };
            return ReadPlan {
                direct: true,
                ahead: None,
            };
        };
        st.run = st.run.saturating_add(1);
        st.used = self.tick;
        st.next = end;
        st.ahead = st.ahead.max(end);
        if st.run < 3 || len >= LARGE_READ {
            return ReadPlan {
                direct: true,
                ahead: None,
            };
        }
        // Asked for again once less than half the window is left ahead of it.
        let want = (end + READ_AHEAD).min(size);
        let ahead = (st.ahead < end + READ_AHEAD / 2 && st.ahead < want).then(|| {
            let from = st.ahead;
            st.ahead = want;
            (from, want - from)
        });
        ReadPlan {
            direct: false,
            ahead,
        }
    }
}

/// Payload buffers kept for reuse (at most this many bytes of them per connection): a
/// fresh buffer costs a page fault and a page clear per 4 KiB, more than the write itself.
pub const POOL_BYTES: usize = (BUFFER_BUDGET / 2) as usize;

/// Free payload buffers of one connection.
struct Pool {
    free: Mutex<Vec<AlignedBuf>>,
}

impl Pool {
    /// A buffer of `len` bytes (their contents are whatever the last use left).
    fn get(&self, len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf::empty();
        }
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        // Reused only if not much larger, so memory stays close to what the budget counts.
        let fits = |b: &AlignedBuf| b.capacity() >= len && b.capacity() <= len + len / 4 + 4096;
        if let Some(i) = f.iter().position(fits) {
            let mut b = f.swap_remove(i);
            drop(f);
            b.set_len(len);
            return b;
        }
        drop(f);
        let mut b = AlignedBuf::zeroed(len.next_multiple_of(DIRECT_ALIGN));
        b.set_len(len);
        b
    }

    fn put(&self, b: AlignedBuf) {
        if b.capacity() == 0 {
            return;
        }
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let kept: usize = f.iter().map(|b| b.capacity()).sum();
        if kept + b.capacity() <= POOL_BYTES {
            f.push(b);
        }
    }
}

/// Requests waiting for a worker. A send wakes one idle worker and only when one is idle (a
/// mutex around a channel's receiver would wake a second thread per request). It also
/// says when a worker should be added: more jobs wait than workers are free.
struct Queue<T> {
    st: Mutex<QueueState<T>>,
    ready: Condvar,
    room: Condvar,
}

struct QueueState<T> {
    jobs: VecDeque<Job<T>>,
    idle: usize,
    closed: bool,
    /// Workers started (or being started).
    workers: usize,
    /// Workers running a job.
    busy: usize,
    /// A worker could not be started: no more are tried.
    no_more: bool,
}

impl<T> Queue<T> {
    fn new() -> Queue<T> {
        Queue {
            st: Mutex::new(QueueState {
                jobs: VecDeque::with_capacity(QUEUE_DEPTH),
                idle: 0,
                closed: false,
                workers: 0,
                busy: 0,
                no_more: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }

    /// Queues a job, waiting while [`QUEUE_DEPTH`] are queued and not yet taken. True when
    /// the caller should start one more worker (counted as started already; see
    /// [`Queue::not_started`]).
    fn send(&self, j: Job<T>) -> bool {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        while st.jobs.len() >= QUEUE_DEPTH {
            st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.jobs.push_back(j);
        let wake = st.idle > 0;
        let grow = !st.no_more
            && st.workers < QUEUE_DEPTH
            && st.jobs.len() > st.workers.saturating_sub(st.busy);
        if grow {
            st.workers += 1;
        }
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        grow
    }

    /// A worker [`Queue::send`] asked for could not be started; none are asked for again.
    fn not_started(&self) {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        st.workers -= 1;
        st.no_more = true;
    }

    /// A worker's first call to [`Queue::recv`] when started outside [`Queue::send`].
    fn started(&self) {
        self.st.lock().unwrap_or_else(|p| p.into_inner()).workers += 1;
    }

    /// The next job, or `None` once closed and drained, or when this worker has been idle
    /// for [`IDLE_WORKER`] and is not the last one. `done` says the caller finished a job.
    fn recv(&self, done: bool) -> Option<Job<T>> {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        if done {
            st.busy -= 1;
        }
        loop {
            if let Some(j) = st.jobs.pop_front() {
                st.busy += 1;
                let full = st.jobs.len() + 1 == QUEUE_DEPTH;
                drop(st);
                if full {
                    self.room.notify_one();
                }
                return Some(j);
            }
            if st.closed {
                return None;
            }
            st.idle += 1;
            let (s, t) = self
                .ready
                .wait_timeout(st, IDLE_WORKER)
                .unwrap_or_else(|p| p.into_inner());
            st = s;
            st.idle -= 1;
            if t.timed_out() && st.jobs.is_empty() && st.workers > 1 {
                st.workers -= 1;
                return None;
            }
        }
    }

    fn close(&self) {
        self.st.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

/// Sends replies, each whole. A worker whose reply finds another one sending leaves it
/// queued for that one, which sends everything queued in one vectored write: no worker
/// sleeps on the socket, and replies that finish together cost one system call. A large
/// read's payload is queued as the buffer it was read into, not copied, and goes back to
/// the connection's [`Pool`] once sent.
///
/// The replies queued are bounded ([`REPLY_QUEUE`]): over it, a worker waits until the
/// client has taken some. Once a write fails (the client gone, or its replies untaken for
/// the write timeout), every later reply is dropped.
struct Replies {
    out: Mutex<Box<dyn Write + Send>>,
    pending: Mutex<Pending>,
    /// Signalled when queued bytes have been written (or dropped).
    room: Condvar,
    structured: bool,
    errors_logged: Mutex<u32>,
    /// The connection's payload buffers.
    pool: Pool,
}

#[derive(Default)]
struct Pending {
    /// Small replies and the headers of large ones, copied.
    buf: Vec<u8>,
    /// Large payloads, each sent after `buf[..at]` (at, buffer).
    owned: Vec<(usize, AlignedBuf)>,
    /// A worker is writing to the socket now.
    sending: bool,
    /// Bytes queued: those in `buf` and `owned` and the batch being written.
    queued: usize,
    /// Workers waiting for room.
    waiting: usize,
    /// Why writing to the client failed (then nothing more is written).
    failed: Option<(std::io::ErrorKind, String)>,
}

/// Payloads at least this large are queued as their buffer rather than copied.
const DIRECT_REPLY: usize = 64 << 10;

/// Writes all of `parts` in order, in one vectored write where the writer takes it whole.
fn write_parts(out: &mut dyn Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The parts of a batch in order: `buf` cut where each owned payload goes.
fn batch_parts<'a>(buf: &'a [u8], owned: &'a [(usize, AlignedBuf)]) -> Vec<&'a [u8]> {
    let mut parts = Vec::with_capacity(owned.len() * 2 + 1);
    let mut at = 0;
    for (to, b) in owned {
        parts.push(&buf[at..*to]);
        parts.push(&b[..]);
        at = *to;
    }
    parts.push(&buf[at..]);
    parts
}

impl Replies {
    fn new(out: Box<dyn Write + Send>, structured: bool) -> Replies {
        Replies {
            out: Mutex::new(out),
            pending: Mutex::new(Pending::default()),
            room: Condvar::new(),
            structured,
            errors_logged: Mutex::new(0),
            pool: Pool {
                free: Mutex::new(Vec::new()),
            },
        }
    }

    /// Why writing to the client failed, if it did.
    fn failed(&self) -> Option<(std::io::ErrorKind, String)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .clone()
    }

    /// Sends one reply made of `parts` (a header and its payload).
    fn send(&self, parts: &[&[u8]]) {
        self.send_owned(parts, AlignedBuf::empty());
    }

    /// Sends one reply made of `parts` then `data` (a read's payload, queued without a copy
    /// when large; back in the pool once sent).
    fn send_owned(&self, parts: &[&[u8]], data: AlignedBuf) {
        let total: usize = parts.iter().map(|p| p.len()).sum::<usize>() + data.len();
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // A client that takes no replies holds no more than the queue's bound of them.
        while p.sending && p.failed.is_none() && p.queued > 0 && p.queued + total > REPLY_QUEUE {
            p.waiting += 1;
            p = self.room.wait(p).unwrap_or_else(|p| p.into_inner());
            p.waiting -= 1;
        }
        if p.failed.is_some() {
            drop(p);
            self.pool.put(data);
            return;
        }
        for q in parts {
            p.buf.extend_from_slice(q);
        }
        if data.len() >= DIRECT_REPLY {
            let at = p.buf.len();
            p.owned.push((at, data));
        } else {
            p.buf.extend_from_slice(&data);
            self.pool.put(data);
        }
        p.queued += total;
        if p.sending {
            return; // the sender picks it up
        }
        p.sending = true;
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let batch = std::mem::take(&mut p.buf);
            let owned = std::mem::take(&mut p.owned);
            drop(p);
            // A write that fails (the client gone, or its replies untaken for the write
            // timeout: the writer then shuts the socket down) ends the replies; the
            // reader notices the socket's end.
            let r = write_parts(&mut **out, &batch_parts(&batch, &owned)).and_then(|_| out.flush());
            let sent = batch.len() + owned.iter().map(|(_, b)| b.len()).sum::<usize>();
            for (_, b) in owned {
                self.pool.put(b);
            }
            p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.queued -= sent;
            if let Err(e) = r {
                p.failed = Some((e.kind(), e.to_string()));
                let left: usize = p.owned.iter().map(|(_, b)| b.len()).sum();
                p.queued -= p.buf.len() + left;
                p.buf = Vec::new();
                let owned = std::mem::take(&mut p.owned);
                p.sending = false;
                drop(p);
                for (_, b) in owned {
                    self.pool.put(b);
                }
                self.room.notify_all();
                return;
            }
            if p.waiting > 0 {
                self.room.notify_all();
            }
            if p.buf.is_empty() && p.owned.is_empty() {
                p.sending = false;
                // Keep the larger allocation for the next batch.
                if p.buf.capacity() < batch.capacity() && batch.capacity() <= 1 << 20 {
                    let mut b = batch;
                    b.clear();
                    p.buf = b;
                }
                return;
            }
        }
    }

    /// A read's reply: `data`, read at `off` (simple or structured).
    fn data(&self, handle: u64, off: u64, data: AlignedBuf) {
        if self.structured {
            let mut h = [0u8; 28];
            h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            h[4..6].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
            h[6..8].copy_from_slice(&REPLY_TYPE_OFFSET_DATA.to_be_bytes());
            h[8..16].copy_from_slice(&handle.to_be_bytes());
            h[16..20].copy_from_slice(&((data.len() + 8) as u32).to_be_bytes());
            h[20..28].copy_from_slice(&off.to_be_bytes());
            self.send_owned(&[&h], data);
        } else {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            h[8..16].copy_from_slice(&handle.to_be_bytes());
            self.send_owned(&[&h], data);
        }
    }

    fn simple(&self, handle: u64, err: u32, data: &[u8]) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&err.to_be_bytes());
        h[8..16].copy_from_slice(&handle.to_be_bytes());
        self.send(&[&h, data]);
    }

    fn chunk(&self, handle: u64, typ: u16, payload: &[&[u8]]) {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let mut h = [0u8; 20];
        h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        h[6..8].copy_from_slice(&typ.to_be_bytes());
        h[8..16].copy_from_slice(&handle.to_be_bytes());
        h[16..20].copy_from_slice(&(len as u32).to_be_bytes());
        let mut parts = Vec::with_capacity(1 + payload.len());
        parts.push(&h[..]);
        parts.extend_from_slice(payload);
        self.send(&parts);
    }

    fn ok(&self, handle: u64) {
        self.simple(handle, 0, &[]);
    }

    /// The reply to a request the engine failed: the error number its kind gets.
    fn failure(&self, handle: u64, f: &Failure, log: &dyn Fn(&str)) {
        self.error(handle, errno_of(f.kind), &f.msg, log);
    }

    /// An error reply: structured (with the message) where structured replies are on.
    /// Failures other than EINVAL (the client's own mistake) are logged, a few per
    /// connection.
    fn error(&self, handle: u64, errno: u32, msg: &str, log: &dyn Fn(&str)) {
        if errno != EINVAL {
            let mut n = self.errors_logged.lock().unwrap();
            *n += 1;
            if *n <= LOGGED_ERRORS {
                log(&format!("request failed: {msg}"));
            } else if *n == LOGGED_ERRORS + 1 {
                log("more request errors; not logging them for this connection");
            }
        }
        if self.structured {
            let msg = crate::format::cut(msg, 4096);
            let msg = msg.as_bytes();
            let mut p = errno.to_be_bytes().to_vec();
            p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            p.extend_from_slice(msg);
            self.chunk(handle, REPLY_TYPE_ERROR, &[&p]);
        } else {
            self.simple(handle, errno, &[]);
        }
    }
}

/// The NBD error a host gets for each kind of failure (the protocol's errno values: a
/// client maps them to its own, e.g. qemu and the kernel's nbd driver pass ENOSPC up so a
/// VM can pause on a full disk rather than see an I/O error).
pub fn errno_of(kind: FailureKind) -> u32 {
    match kind {
        FailureKind::OutOfRange => EINVAL,
        FailureKind::Io => EIO,
        FailureKind::NoSpace => ENOSPC,
        FailureKind::NotPermitted => EPERM,
        FailureKind::Unsupported => ENOTSUP,
        FailureKind::ShutDown => ESHUTDOWN,
    }
}

/// Runs one request and sends its reply.
#[allow(clippy::too_many_arguments)]
fn run<B: Backend>(
    client: u64,
    job: Job<B::Ticket>,
    data: &[u8],
    srv: &B,
    rep: &Replies,
    pool: &Pool,
    neg: &Negotiated,
    log: &dyn Fn(&str),
) {
    let Job {
        handle,
        typ,
        flags,
        off,
        len,
        ticket,
        plan,
        ..
    } = job;
    let fua = flags & CMD_FLAG_FUA != 0;
    let res: Result<(), Failure> = match typ {
        CMD_READ => {
            let mut buf = pool.get(len as usize);
            // Only a read that filled the whole buffer is sent (a reused buffer holds an
            // earlier request's bytes).
            match srv.read(client, off, &mut buf, plan.direct) {
                // Sent from the buffer it was read into (which goes back to the pool then).
                Ok(()) => rep.data(handle, off, buf),
                Err(f) => {
                    pool.put(buf);
                    rep.failure(handle, &f, log)
                }
            }
            // After the reply: the client's next requests need not wait for the hint.
            if let Some((at, n)) = plan.ahead {
                srv.read_ahead(client, at, n);
            }
            return;
        }
        CMD_WRITE => srv.mutate(
            client,
            ticket.expect("write ticket"),
            Mutation::Write(data),
            fua,
        ),
        CMD_WRITE_ZEROES => {
            let t = ticket.expect("zero ticket");
            if flags & CMD_FLAG_FAST_ZERO != 0 {
                if let Err(f) = srv.check_fast_zero() {
                    srv.cancel(t);
                    rep.failure(handle, &f, log);
                    return;
                }
            }
            let punch = flags & CMD_FLAG_NO_HOLE == 0;
            srv.mutate(
                client,
                t,
                Mutation::Zero {
                    len: u64::from(len),
                    punch,
                },
                fua,
            )
        }
        CMD_TRIM => srv.mutate(
            client,
            ticket.expect("trim ticket"),
            Mutation::Zero {
                len: u64::from(len),
                punch: true,
            },
            fua,
        ),
        CMD_FLUSH => srv.flush(client),
        CMD_CACHE => Ok(()),
        CMD_BLOCK_STATUS => match srv.extents(client, off, u64::from(len)) {
            Ok(ext) => {
                let mut p = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                let one = flags & CMD_FLAG_REQ_ONE != 0;
                for (n, hole) in ext.iter().take(if one { 1 } else { 1 << 16 }) {
                    p.extend_from_slice(&(*n as u32).to_be_bytes());
                    let st = if *hole { STATE_HOLE | STATE_ZERO } else { 0 };
                    p.extend_from_slice(&st.to_be_bytes());
                }
                debug_assert!(neg.base_allocation);
                rep.chunk(handle, REPLY_TYPE_BLOCK_STATUS, &[&p]);
                return;
            }
            Err(f) => Err(f),
        },
        _ => unreachable!("checked by the reader"),
    };
    match res {
        Ok(()) => rep.ok(handle),
        Err(f) => rep.failure(handle, &f, log),
    }
}

#[allow(clippy::too_many_arguments)]
fn worker<B: Backend>(
    client: u64,
    q: &Queue<B::Ticket>,
    srv: &B,
    rep: &Replies,
    pool: &Pool,
    budget: &Budget,
    neg: &Negotiated,
    log: &dyn Fn(&str),
) {
    let mut done = false;
    while let Some(mut job) = q.recv(done) {
        done = true;
        let charged = job.charged;
        let data = std::mem::replace(&mut job.data, AlignedBuf::empty());
        run(client, job, &data, srv, rep, pool, neg, log);
        pool.put(data);
        budget.give(charged);
    }
}

/// Reads requests until the client disconnects; every request read is answered before this
/// returns (workers are joined).
pub fn transmit<B: Backend>(
    client: u64,
    input: &mut dyn Read,
    output: Box<dyn Write + Send>,
    srv: &Arc<B>,
    neg: Negotiated,
    log: &(dyn Fn(&str) + Sync),
) -> End {
    let rep = Replies::new(output, neg.structured);
    let budget = Budget {
        used: Mutex::new((0, false)),
        freed: Condvar::new(),
    };
    let q = Queue::new();
    let pool = &rep.pool;
    // Buffered: with many requests queued on the socket, one read takes several headers
    // (and small payloads); a large payload is read straight into its own buffer.
    let mut input = BufReader::with_capacity(64 << 10, input);
    let end = std::thread::scope(|sc| {
        let work = || worker(client, &q, &**srv, &rep, pool, &budget, &neg, log);
        let start = || {
            std::thread::Builder::new()
                .name("nbd-worker".into())
                .spawn_scoped(sc, work)
        };
        // One worker from the start; more as requests wait for one (see `Queue::send`).
        q.started();
        if let Err(e) = start() {
            return End::Broken(format!(
                "refused: no thread could be started for its requests ({e})"
            ));
        }
        let end = read_loop(&mut input, &**srv, &rep, pool, &budget, &neg, log, |j| {
            if rep.failed().is_some() {
                // Its replies can no longer be sent: nothing more of it is run.
                if let Some(t) = j.ticket {
                    srv.cancel(t);
                }
                budget.give(j.charged);
                pool.put(j.data);
                return;
            }
            if q.send(j) {
                if let Err(e) = start() {
                    q.not_started();
                    log(&format!(
                        "no more worker threads for this connection ({e}); its requests go on with those it has"
                    ));
                }
            }
        });
        q.close();
        end
    });
    // Dropped for not taking its replies: that is what the log says, not the socket's end.
    match rep.failed() {
        Some((std::io::ErrorKind::TimedOut, why)) => End::Broken(why),
        _ => end,
    }
}

#[allow(clippy::too_many_arguments)]
fn read_loop<B: Backend>(
    input: &mut dyn Read,
    srv: &B,
    rep: &Replies,
    pool: &Pool,
    budget: &Budget,
    neg: &Negotiated,
    log: &dyn Fn(&str),
    mut dispatch: impl FnMut(Job<B::Ticket>),
) -> End {
    let mut streams = Streams::default();
    let limits = Limits {
        size: srv.size(),
        flags: transmission_flags(super::export_flags(srv.read_only(), srv.fast_zero()), neg),
        neg: *neg,
    };
    loop {
        let mut h = [0u8; HEADER_LEN];
        match read_full(input, &mut h) {
            Ok(0) => return End::Closed,
            Ok(HEADER_LEN) => {}
            Ok(n) => {
                return End::Broken(format!(
                    "closed the connection {n} bytes into a request header"
                ))
            }
            Err(e) => return End::Broken(format!("reading a request: {e}")),
        }
        let header = Header::parse(&h);
        let handle = header.cookie;
        let req = match request::validate(&header, &limits) {
            Ok(r) => r,
            Err(Invalid::Fatal(why)) => return End::Broken(why),
            Err(Invalid::Refuse { errno, msg }) => {
                // A refused write's payload is still on its way: read past it, so that the
                // next request is where the client put it.
                if header.has_payload() {
                    let n = u64::from(header.length);
                    match std::io::copy(&mut Read::take(&mut *input, n), &mut std::io::sink()) {
                        Ok(got) if got == n => {}
                        Ok(got) => {
                            return End::Broken(format!(
                                "closed the connection {got} bytes into the {n}-byte payload of a refused write"
                            ))
                        }
                        Err(e) => return End::Broken(format!("reading a request: {e}")),
                    }
                }
                rep.error(handle, errno, &msg, log);
                continue;
            }
        };
        let (typ, flags, off, len) = (req.cmd.wire(), req.flags, req.offset, req.length);
        match req.cmd {
            Command::Disc => return End::Disconnected,
            // Nothing to read: a structured reply has no zero-length data chunk (each
            // "MUST describe at least one byte"), so it is NONE with DONE.
            Command::Read if len == 0 => {
                if rep.structured {
                    rep.chunk(handle, REPLY_TYPE_NONE, &[]);
                } else {
                    rep.ok(handle);
                }
                continue;
            }
            // Nothing to change (and no payload to read).
            Command::Write | Command::Trim | Command::WriteZeroes if len == 0 => {
                rep.ok(handle);
                continue;
            }
            _ => {}
        }
        let mut data = AlignedBuf::empty();
        let mut charged = 0;
        if matches!(req.cmd, Command::Write | Command::Read) {
            charged = u64::from(len);
            budget.take(charged);
        }
        if req.cmd == Command::Write {
            // An aligned buffer, so that a large write can go to the disk directly.
            data = pool.get(len as usize);
            if let Err(e) = input.read_exact(&mut data) {
                pool.put(data);
                budget.give(charged);
                return End::Broken(format!(
                    "closed the connection in the middle of a {len}-byte write at offset {off} ({e}); that write was not done"
                ));
            }
        }
        let mutation = req.cmd.mutates();
        // H4: the place in arrival order is taken here, before any worker runs it.
        let ticket = mutation.then(|| srv.ticket(off, u64::from(len)));
        let plan = match req.cmd {
            Command::Read => streams.read(off, u64::from(len), limits.size),
            _ => ReadPlan::default(),
        };
        let job = Job {
            handle,
            typ,
            flags,
            off,
            len,
            data,
            ticket,
            charged,
            plan,
        };
        dispatch(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_device_error_reaches_the_host_as_the_nbd_error_the_protocol_names_for_it() {
        let wire = |raw: i32| {
            let e = std::io::Error::from_raw_os_error(raw);
            errno_of(Failure::io("writing".into(), &e).kind)
        };
        // A full disk stays a full disk for the host (qemu can pause the VM on ENOSPC),
        // a quota too; a refused write is EPERM; anything else an I/O error.
        assert_eq!(wire(libc::ENOSPC), ENOSPC);
        assert_eq!(wire(libc::EDQUOT), ENOSPC);
        assert_eq!(wire(libc::EROFS), EPERM);
        assert_eq!(wire(libc::EPERM), EPERM);
        assert_eq!(wire(libc::EIO), EIO);
        assert_eq!(wire(libc::ETIMEDOUT), EIO);
        // Every kind has its own error number.
        let kinds = [
            FailureKind::OutOfRange,
            FailureKind::Io,
            FailureKind::NoSpace,
            FailureKind::NotPermitted,
            FailureKind::Unsupported,
            FailureKind::ShutDown,
        ];
        let errnos: HashSet<u32> = kinds.iter().map(|k| errno_of(*k)).collect();
        assert_eq!(errnos.len(), kinds.len());
        assert_eq!(errno_of(FailureKind::ShutDown), ESHUTDOWN);
        assert_eq!(errno_of(FailureKind::Unsupported), ENOTSUP);
        assert_eq!(errno_of(FailureKind::OutOfRange), EINVAL);
    }

    fn job(handle: u64) -> Job<()> {
        Job {
            handle,
            typ: CMD_FLUSH,
            flags: 0,
            off: 0,
            len: 0,
            data: AlignedBuf::empty(),
            ticket: None,
            charged: 0,
            plan: ReadPlan::default(),
        }
    }

    #[test]
    fn the_queue_hands_every_job_to_exactly_one_worker_and_ends_when_closed() {
        let q = Queue::new();
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    let mut done = false;
                    while let Some(j) = q.recv(done) {
                        done = true;
                        seen.lock().unwrap().push(j.handle);
                    }
                });
            }
            // More jobs than the queue holds: the sender waits for room.
            for h in 0..(QUEUE_DEPTH as u64 * 20) {
                q.send(job(h));
            }
            q.close();
        });
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        let want: Vec<u64> = (0..QUEUE_DEPTH as u64 * 20).collect();
        assert_eq!(seen, want);
    }

    /// A socket stand-in that takes its time, so replies pile up behind a sender.
    struct Slow(Arc<Mutex<Vec<u8>>>);
    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_micros(200));
            // Short writes too, as a socket may do.
            let n = b.len().min(7000);
            self.0.lock().unwrap().extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn replies_sent_at_once_from_many_workers_arrive_whole_and_each_once() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let rep = Replies::new(Box::new(Slow(sink.clone())), false);
        // Small replies (queued) and large ones (sent from the caller's buffer).
        let size = |h: u64| if h % 5 == 0 { DIRECT_REPLY + 4096 } else { 512 };
        std::thread::scope(|sc| {
            for t in 0..8u64 {
                let rep = &rep;
                sc.spawn(move || {
                    for i in 0..25u64 {
                        let h = t * 100 + i;
                        let data = vec![h as u8; size(h)];
                        rep.simple(h, 0, &data);
                    }
                });
            }
        });
        let out = sink.lock().unwrap().clone();
        let mut pos = 0;
        let mut handles = HashSet::new();
        while pos < out.len() {
            let magic = u32::from_be_bytes(out[pos..pos + 4].try_into().unwrap());
            assert_eq!(
                magic, SIMPLE_REPLY_MAGIC,
                "reply at byte {pos} is not whole"
            );
            let h = u64::from_be_bytes(out[pos + 8..pos + 16].try_into().unwrap());
            let n = size(h);
            assert!(
                out[pos + 16..pos + 16 + n].iter().all(|&b| b == h as u8),
                "payload of reply {h} mixed with another"
            );
            assert!(handles.insert(h), "reply {h} sent twice");
            pos += 16 + n;
        }
        assert_eq!(handles.len(), 200);
    }

    #[test]
    fn a_read_continuing_a_stream_twice_goes_through_the_cache_and_is_read_ahead_once_per_half_window(
    ) {
        let mut st = Streams::default();
        let size = 1 << 40;
        let mb = 256u64 << 10; // a request's length
                               // The first two of a stream go direct, nothing ahead.
        assert_eq!(
            st.read(0, mb, size),
            ReadPlan {
                direct: true,
                ahead: None
            }
        );
        assert_eq!(
            st.read(mb, mb, size),
            ReadPlan {
                direct: true,
                ahead: None
            }
        );
        // The third: cached, and the window past it asked for.
        assert_eq!(
            st.read(2 * mb, mb, size),
            ReadPlan {
                direct: false,
                ahead: Some((3 * mb, READ_AHEAD))
            }
        );
        // Nothing more asked for until less than half the window is left.
        let mut asked = vec![];
        for i in 3..64 {
            let p = st.read(i * mb, mb, size);
            assert!(!p.direct);
            asked.extend(p.ahead);
        }
        // Asked ranges follow on from each other, never more than the window past the reader.
        let mut at = 3 * mb + READ_AHEAD;
        for (off, len) in &asked {
            assert_eq!(*off, at);
            at += len;
        }
        assert!(at <= 64 * mb + READ_AHEAD, "{at} is past the window");
        assert!(asked.len() >= 64 * mb as usize / READ_AHEAD as usize - 1);
        // Not past the end of the export.
        let mut e = Streams::default();
        let small = 3 * mb + 4096;
        e.read(0, mb, small);
        e.read(mb, mb, small);
        assert_eq!(e.read(2 * mb, mb, small).ahead, Some((3 * mb, 4096)));
        assert_eq!(e.read(3 * mb, 4096, small).ahead, None);
        // A stream of large requests goes direct throughout, nothing read ahead.
        let mut l = Streams::default();
        for i in 0..16 {
            let p = l.read(i * LARGE_READ, LARGE_READ, size);
            assert_eq!(
                p,
                ReadPlan {
                    direct: true,
                    ahead: None
                },
                "request {i}"
            );
        }
    }

    #[test]
    fn random_reads_go_direct_and_interleaved_streams_are_each_followed_up_to_the_limit() {
        let mut st = Streams::default();
        let size = 1 << 40;
        for i in 0..100u64 {
            let off = (i * 7919 % 1000) * 1_048_576 + 4096;
            assert!(
                st.read(off, 4096, size).direct,
                "random read {i} went through the cache"
            );
        }
        // READ_STREAMS streams read in turns: each is followed.
        let mut st = Streams::default();
        let base = |k: u64| k << 32;
        for step in 0..4u64 {
            for k in 0..READ_STREAMS as u64 {
                let p = st.read(base(k) + step * 65536, 65536, size);
                assert_eq!(p.direct, step < 2, "stream {k} step {step}");
            }
        }
        // One stream more than tracked: the least recently used one is forgotten.
        st.read(base(99), 65536, size);
        assert!(!st.read(base(1) + 4 * 65536, 65536, size).direct);
        assert!(st.read(base(0) + 4 * 65536, 65536, size).direct);
    }

    #[test]
    fn read_replies_sent_from_their_buffers_arrive_whole_and_the_buffers_return_to_the_pool() {
        let sink = Arc::new(Mutex::new(Vec::new()));
        for structured in [false, true] {
            sink.lock().unwrap().clear();
            let rep = Replies::new(Box::new(Slow(sink.clone())), structured);
            let size = |h: u64| {
                if h % 3 == 0 {
                    4096
                } else {
                    DIRECT_REPLY + 8192
                }
            };
            std::thread::scope(|sc| {
                for t in 0..6u64 {
                    let rep = &rep;
                    sc.spawn(move || {
                        for i in 0..10u64 {
                            let h = t * 100 + i;
                            let mut b = rep.pool.get(size(h));
                            b.fill(h as u8);
                            rep.data(h, h << 20, b);
                        }
                    });
                }
            });
            let out = sink.lock().unwrap().clone();
            let (mut pos, mut n) = (0, 0);
            while pos < out.len() {
                let h = u64::from_be_bytes(out[pos + 8..pos + 16].try_into().unwrap());
                let skip = if structured {
                    let magic = u32::from_be_bytes(out[pos..pos + 4].try_into().unwrap());
                    assert_eq!(
                        magic, STRUCTURED_REPLY_MAGIC,
                        "reply at byte {pos} is not whole"
                    );
                    let len = u32::from_be_bytes(out[pos + 16..pos + 20].try_into().unwrap());
                    assert_eq!(len as usize, size(h) + 8);
                    let off = u64::from_be_bytes(out[pos + 20..pos + 28].try_into().unwrap());
                    assert_eq!(off, h << 20);
                    28
                } else {
                    let magic = u32::from_be_bytes(out[pos..pos + 4].try_into().unwrap());
                    assert_eq!(
                        magic, SIMPLE_REPLY_MAGIC,
                        "reply at byte {pos} is not whole"
                    );
                    16
                };
                let data = &out[pos + skip..pos + skip + size(h)];
                assert!(data.iter().all(|&b| b == h as u8), "payload of {h} mixed");
                pos += skip + size(h);
                n += 1;
            }
            assert_eq!(n, 60);
            assert!(rep.pending.lock().unwrap().owned.is_empty());
            let kept = rep.pool.free.lock().unwrap().len();
            assert!(kept > 0, "no buffer came back to the pool");
        }
    }

    #[test]
    fn payload_buffers_are_reused_only_when_close_in_size_and_the_pool_is_bounded() {
        let pool = Pool {
            free: Mutex::new(Vec::new()),
        };
        let a = pool.get(1 << 20);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a.as_ptr() as usize % DIRECT_ALIGN, 0);
        let addr = a.as_ptr();
        pool.put(a);
        // The same size comes back as the same memory, a slightly smaller one too.
        let b = pool.get((1 << 20) - 512);
        assert_eq!(b.as_ptr(), addr);
        assert_eq!(b.len(), (1 << 20) - 512);
        pool.put(b);
        // A 4 KiB request does not take the 1 MiB buffer.
        let c = pool.get(4096);
        assert_ne!(c.as_ptr(), addr);
        assert_eq!(c.capacity(), 4096);
        // No more than POOL_BYTES are kept.
        let many: Vec<AlignedBuf> = (0..POOL_BYTES / (1 << 20) + 8)
            .map(|_| pool.get(1 << 20))
            .collect();
        for m in many {
            pool.put(m);
        }
        let kept: usize = pool.free.lock().unwrap().iter().map(|b| b.capacity()).sum();
        assert!(kept <= POOL_BYTES, "{kept} bytes kept");
        assert!(kept >= POOL_BYTES - (1 << 20));
        assert_eq!(pool.get(0).len(), 0);
    }
}
