//! The server side of the NBD transmission phase: requests read in order, run by a pool of
//! workers (queue depth [`QUEUE_DEPTH`]), replies (simple or structured) sent as they finish.

use super::handshake::{Negotiated, BASE_ALLOCATION_ID, MAX_BLOCK};
use crate::device::nbd::proto::*;
use crate::device::{read_full, AlignedBuf};
use crate::engine::serve::{Failure, Mutation, Server, Ticket};
use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};

/// Requests one connection runs at once.
pub const QUEUE_DEPTH: usize = 32;

/// Payload bytes (read buffers and write data) one connection holds at most at once; a
/// single request of up to [`MAX_BLOCK`] always fits.
const BUFFER_BUDGET: u64 = 128 << 20;

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
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    fn take(&self, n: u64) {
        let mut u = self.used.lock().unwrap();
        while *u > 0 && *u + n > BUFFER_BUDGET {
            u = self.freed.wait(u).unwrap();
        }
        *u += n;
    }
    fn give(&self, n: u64) {
        *self.used.lock().unwrap() -= n;
        self.freed.notify_all();
    }
}

struct Job {
    handle: u64,
    typ: u16,
    flags: u16,
    off: u64,
    len: u32,
    data: AlignedBuf,
    ticket: Option<Ticket>,
    /// Payload bytes charged to the budget.
    charged: u64,
}

/// Sends replies; one at a time, each in a single write.
struct Replies {
    out: Mutex<Box<dyn Write + Send>>,
    structured: bool,
    errors_logged: Mutex<u32>,
}

impl Replies {
    fn send(&self, m: &[u8]) {
        // A client that went away is noticed by the reader; nothing to do here.
        let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = o.write_all(m).and_then(|_| o.flush());
    }

    fn simple(&self, handle: u64, err: u32, data: &[u8]) {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&err.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(data);
        self.send(&m);
    }

    fn chunk(&self, handle: u64, typ: u16, payload: &[&[u8]]) {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let mut m = Vec::with_capacity(20 + len);
        m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        m.extend_from_slice(&typ.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&(len as u32).to_be_bytes());
        for p in payload {
            m.extend_from_slice(p);
        }
        self.send(&m);
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
            let msg = &f.msg.as_bytes()[..f.msg.len().min(4096)];
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
fn run(job: Job, srv: &Server, rep: &Replies, neg: &Negotiated, log: &dyn Fn(&str)) {
    let Job {
        handle,
        typ,
        flags,
        off,
        len,
        data,
        ticket,
        ..
    } = job;
    let fua = flags & CMD_FLAG_FUA != 0;
    let res: Result<(), Failure> = match typ {
        CMD_READ => {
            let mut buf = vec![0u8; len as usize];
            match srv.read(off, &mut buf) {
                Ok(()) if rep.structured => {
                    rep.chunk(handle, REPLY_TYPE_OFFSET_DATA, &[&off.to_be_bytes(), &buf]);
                    return;
                }
                Ok(()) => {
                    rep.simple(handle, 0, &buf);
                    return;
                }
                Err(f) => Err(f),
            }
        }
        CMD_WRITE => srv.mutate(ticket.expect("write ticket"), Mutation::Write(&data), fua),
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
                t,
                Mutation::Zero {
                    len: u64::from(len),
                    punch,
                },
                fua,
            )
        }
        CMD_TRIM => srv.mutate(
            ticket.expect("trim ticket"),
            Mutation::Zero {
                len: u64::from(len),
                punch: true,
            },
            fua,
        ),
        CMD_FLUSH => srv.flush(),
        CMD_CACHE => Ok(()),
        CMD_BLOCK_STATUS => match srv.extents(off, u64::from(len)) {
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

fn worker(
    rx: &Mutex<Receiver<Job>>,
    srv: &Server,
    rep: &Replies,
    budget: &Budget,
    neg: &Negotiated,
    log: &dyn Fn(&str),
) {
    loop {
        let job = match rx.lock().unwrap().recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let charged = job.charged;
        run(job, srv, rep, neg, log);
        budget.give(charged);
    }
}

/// Reads requests until the client disconnects; every request read is answered before this
/// returns (workers are joined).
pub fn transmit(
    input: &mut dyn Read,
    output: Box<dyn Write + Send>,
    srv: &Arc<Server>,
    neg: Negotiated,
    log: &(dyn Fn(&str) + Sync),
) -> End {
    let rep = Replies {
        out: Mutex::new(output),
        structured: neg.structured,
        errors_logged: Mutex::new(0),
    };
    let budget = Budget {
        used: Mutex::new(0),
        freed: Condvar::new(),
    };
    let (tx, rx) = sync_channel::<Job>(QUEUE_DEPTH);
    let rx = Mutex::new(rx);
    std::thread::scope(|sc| {
        for _ in 0..QUEUE_DEPTH {
            sc.spawn(|| worker(&rx, srv, &rep, &budget, &neg, log));
        }
        let end = read_loop(input, srv, &rep, &budget, &neg, log, |j| tx.send(j).is_ok());
        drop(tx);
        end
    })
}

#[allow(clippy::too_many_arguments)]
fn read_loop(
    input: &mut dyn Read,
    srv: &Server,
    rep: &Replies,
    budget: &Budget,
    neg: &Negotiated,
    log: &dyn Fn(&str),
    mut dispatch: impl FnMut(Job) -> bool,
) -> End {
    loop {
        let mut h = [0u8; 28];
        match read_full(input, &mut h) {
            Ok(0) => return End::Closed,
            Ok(28) => {}
            Ok(n) => {
                return End::Broken(format!(
                    "closed the connection {n} bytes into a request header"
                ))
            }
            Err(e) => return End::Broken(format!("reading a request: {e}")),
        }
        let magic = u32::from_be_bytes(h[0..4].try_into().unwrap());
        let flags = u16::from_be_bytes(h[4..6].try_into().unwrap());
        let typ = u16::from_be_bytes(h[6..8].try_into().unwrap());
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let off = u64::from_be_bytes(h[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(h[24..28].try_into().unwrap());
        if magic != REQUEST_MAGIC {
            return End::Broken(format!("bad request magic {magic:#x}"));
        }
        let fail = |errno: u32, msg: String| rep.error(handle, &Failure { errno, msg }, log);
        match typ {
            CMD_DISC => return End::Disconnected,
            CMD_READ | CMD_WRITE if len > MAX_BLOCK => {
                return End::Broken(format!(
                    "request of {len} bytes at offset {off}, over the {MAX_BLOCK}-byte maximum it was told"
                ));
            }
            CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM | CMD_FLUSH | CMD_CACHE
            | CMD_BLOCK_STATUS => {}
            _ => {
                fail(EINVAL, format!("unknown command {typ}"));
                continue;
            }
        }
        let mut data = AlignedBuf::zeroed(0);
        let mut charged = 0;
        if typ == CMD_WRITE || typ == CMD_READ {
            charged = u64::from(len);
            budget.take(charged);
        }
        if typ == CMD_WRITE {
            // An aligned buffer, so that a large write can go to the disk directly.
            data = AlignedBuf::zeroed(len as usize);
            if let Err(e) = input.read_exact(&mut data) {
                budget.give(charged);
                return End::Broken(format!(
                    "closed the connection in the middle of a {len}-byte write at offset {off} ({e}); that write was not done"
                ));
            }
        }
        let refuse = |f: Failure| {
            rep.error(handle, &f, log);
            budget.give(charged);
        };
        if typ != CMD_FLUSH {
            if let Err(f) = srv.check(off, u64::from(len)) {
                refuse(f);
                continue;
            }
        }
        let mutation = matches!(typ, CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM);
        if mutation && srv.read_only() {
            refuse(Failure {
                errno: EPERM,
                msg: "the export is read-only".into(),
            });
            continue;
        }
        if typ == CMD_BLOCK_STATUS && len == 0 {
            refuse(Failure {
                errno: EINVAL,
                msg: "NBD_CMD_BLOCK_STATUS of length 0".into(),
            });
            continue;
        }
        if typ == CMD_BLOCK_STATUS && !neg.base_allocation {
            refuse(Failure {
                errno: EINVAL,
                msg: "NBD_CMD_BLOCK_STATUS without base:allocation negotiated".into(),
            });
            continue;
        }
        if mutation && len == 0 {
            rep.ok(handle);
            continue;
        }
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
        if !dispatch(job) {
            return End::Broken("the workers stopped".into());
        }
    }
}
