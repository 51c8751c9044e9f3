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
//!   that takes nothing for the write timeout is dropped (the socket's send timeout).

use super::backend::Backend;
use super::handshake::{transmission_flags, Negotiated, BASE_ALLOCATION_ID};
use super::request::{self, Command, Header, Invalid, Limits, HEADER_LEN};
use crate::device::nbd::proto::*;
use crate::device::{read_full, AlignedBuf, DIRECT_ALIGN};
use crate::engine::serve::{Failure, Mutation};
use std::collections::VecDeque;
use std::io::BufReader;
use std::io::{Read, Write};
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
/// queued for that one, which sends everything queued in one write: no worker sleeps on
/// the socket, and replies that finish together cost one system call.
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
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// A worker is writing to the socket now.
    sending: bool,
    /// Bytes queued: those in `buf` and the batch being written.
    queued: usize,
    /// Workers waiting for room.
    waiting: usize,
    /// Why writing to the client failed (then nothing more is written).
    failed: Option<(std::io::ErrorKind, String)>,
}

/// Replies at least this large go to the socket from the caller's buffer rather than being
/// copied into the queue of pending replies.
const DIRECT_REPLY: usize = 64 << 10;

impl Replies {
    fn new(out: Box<dyn Write + Send>, structured: bool) -> Replies {
        Replies {
            out: Mutex::new(out),
            pending: Mutex::new(Pending::default()),
            room: Condvar::new(),
            structured,
            errors_logged: Mutex::new(0),
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
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // A client that takes no replies holds no more than the queue's bound of them.
        while p.sending && p.failed.is_none() && p.queued > 0 && p.queued + total > REPLY_QUEUE {
            p.waiting += 1;
            p = self.room.wait(p).unwrap_or_else(|p| p.into_inner());
            p.waiting -= 1;
        }
        if p.failed.is_some() {
            return;
        }
        // While another worker sends, or when the reply is small, it joins the queue.
        let (queued, direct): (&[&[u8]], &[u8]) = match parts.split_last() {
            Some((last, head)) if !p.sending && total >= DIRECT_REPLY => (head, last),
            _ => (parts, &[]),
        };
        for q in queued {
            p.buf.extend_from_slice(q);
            p.queued += q.len();
        }
        if p.sending {
            return; // the sender picks it up
        }
        p.sending = true;
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut direct = direct;
        loop {
            let batch = std::mem::take(&mut p.buf);
            drop(p);
            // A write that fails (the client gone, or its replies untaken for the write
            // timeout: the writer then shuts the socket down) ends the replies; the
            // reader notices the socket's end.
            let r = out
                .write_all(&batch)
                .and_then(|_| out.write_all(direct))
                .and_then(|_| out.flush());
            direct = &[];
            p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            p.queued -= batch.len();
            if let Err(e) = r {
                p.failed = Some((e.kind(), e.to_string()));
                p.queued -= p.buf.len();
                p.buf = Vec::new();
                p.sending = false;
                drop(p);
                self.room.notify_all();
                return;
            }
            if p.waiting > 0 {
                self.room.notify_all();
            }
            if p.buf.is_empty() {
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

    /// An error reply: structured (with the message) where structured replies are on.
    fn error(&self, handle: u64, f: &Failure, log: &dyn Fn(&str)) {
        if f.errno != EINVAL {
            let mut n = self.errors_logged.lock().unwrap();
            *n += 1;
            if *n <= LOGGED_ERRORS {
                log(&format!("request failed: {}", f.msg));
            } else if *n == LOGGED_ERRORS + 1 {
                log("more request errors; not logging them for this connection");
            }
        }
        if self.structured {
            let msg = crate::format::cut(&f.msg, 4096);
            let msg = msg.as_bytes();
            let mut p = f.errno.to_be_bytes().to_vec();
            p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            p.extend_from_slice(msg);
            self.chunk(handle, REPLY_TYPE_ERROR, &[&p]);
        } else {
            self.simple(handle, f.errno, &[]);
        }
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
        ..
    } = job;
    let fua = flags & CMD_FLAG_FUA != 0;
    let res: Result<(), Failure> = match typ {
        CMD_READ => {
            let mut buf = pool.get(len as usize);
            // Only a read that filled the whole buffer is sent (a reused buffer holds an
            // earlier request's bytes).
            match srv.read(client, off, &mut buf) {
                Ok(()) if rep.structured => {
                    rep.chunk(handle, REPLY_TYPE_OFFSET_DATA, &[&off.to_be_bytes(), &buf])
                }
                Ok(()) => rep.simple(handle, 0, &buf),
                Err(f) => rep.error(handle, &f, log),
            }
            pool.put(buf);
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
                    rep.error(handle, &f, log);
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
        Err(f) => rep.error(handle, &f, log),
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
    let pool = Pool {
        free: Mutex::new(Vec::new()),
    };
    // Buffered: with many requests queued on the socket, one read takes several headers
    // (and small payloads); a large payload is read straight into its own buffer.
    let mut input = BufReader::with_capacity(64 << 10, input);
    let end = std::thread::scope(|sc| {
        let work = || worker(client, &q, &**srv, &rep, &pool, &budget, &neg, log);
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
        let end = read_loop(&mut input, &**srv, &rep, &pool, &budget, &neg, log, |j| {
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
                rep.error(handle, &Failure { errno, msg }, log);
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
        let job = Job {
            handle,
            typ,
            flags,
            off,
            len,
            data,
            ticket,
            charged,
        };
        dispatch(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

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
