//! nbd: a small client for the Network Block Device protocol, so a secondary can be an
//! export of any standard NBD server (qemu-nbd, nbdkit, nbd-server) on another machine.
//!
//! What it speaks, against the protocol document (NetworkBlockDevice/nbd, doc/proto.md):
//! - the fixed-newstyle handshake (`NBDMAGIC`, `IHAVEOPT`, `NBD_FLAG_C_FIXED_NEWSTYLE`,
//!   `NBD_FLAG_C_NO_ZEROES` when offered), then `NBD_OPT_GO` asking for `NBD_INFO_EXPORT`
//!   and `NBD_INFO_BLOCK_SIZE`; a server answering `NBD_REP_ERR_UNSUP` gets
//!   `NBD_OPT_EXPORT_NAME` instead. Oldstyle servers are refused.
//! - simple replies only (structured replies are never asked for), so every reply is
//!   `{magic, error, cookie}` followed, for a successful read, by the data.
//! - `NBD_CMD_READ`, `NBD_CMD_WRITE`, `NBD_CMD_FLUSH`, `NBD_CMD_WRITE_ZEROES` and
//!   `NBD_CMD_DISC`. Durability: [`Device::sync`] sends `NBD_CMD_FLUSH` and waits for its
//!   reply when the export advertises `NBD_FLAG_SEND_FLUSH`; an export without it but with
//!   `NBD_FLAG_SEND_FUA` gets every write with `NBD_CMD_FLAG_FUA` instead; an export with
//!   neither has no volatile cache to flush (the protocol's meaning of not advertising it).
//! - several requests in flight: a large read or write is split into requests of at most
//!   [`REQUEST_MAX`] (or the server's maximum block size), up to [`IN_FLIGHT`] are sent before
//!   the first reply is read, and replies are matched by cookie, in any order. Writes
//!   (without FUA) are posted: `write_at` returns once they are sent, their replies are
//!   collected while later requests go out and in full before anything else (a flush
//!   above all), and an error reply fails the next call, naming the write's offset. A
//!   write over one still unanswered waits for it first (servers may reorder requests).
//!
//! Every socket operation has the `--timeout` deadline. After any transport error or
//! timeout the connection is dead (its request stream is out of step) and every later call
//! fails at once, so the engine fractures the leg instead of hanging.

pub mod proto;
pub mod uri;

use proto::*;
pub use uri::{display, identity, is_uri, ClientTls, Endpoint, NbdUri};

use crate::device::Device;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Largest single request sent (servers must accept 32 MiB; smaller keeps several in
/// flight for one 4 MiB chunk).
pub const REQUEST_MAX: usize = 1 << 20;
/// Requests sent before the first reply is awaited.
pub const IN_FLIGHT: usize = 16;
/// Default for `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

static TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Sets the deadline for every NBD socket operation (the global `--timeout`); once.
pub fn set_timeout(d: Duration) {
    let _ = TIMEOUT.set(d);
}

pub fn timeout() -> Duration {
    *TIMEOUT.get().unwrap_or(&DEFAULT_TIMEOUT)
}

/// [`ctx`], but a TLS refusal stays one (it is told apart from a server that went away).
fn keep_refusal(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    if crate::tls::is_refused(&e) {
        crate::tls::refused(format!("{what}: {e}"))
    } else {
        ctx(e, what)
    }
}

struct Conn {
    sock: Box<dyn Stream>,
    next_cookie: u64,
    /// Set after a transport error: the request stream is out of step for good.
    broken: Option<String>,
    /// Writes sent without waiting for their replies (cookie, offset, length), oldest first.
    posted: std::collections::VecDeque<(u64, u64, u64)>,
    /// The first error reply to a posted write (kind, text): reported by every later call.
    /// Sticky: a second caller (a concurrent flush) must never see a sync succeed on an
    /// export that lost a write, or it would count that write durable.
    late_err: Option<(io::ErrorKind, String)>,
}

/// An NBD export used as a [`Device`].
pub struct NbdDevice {
    name: String,
    size: u64,
    flags: u16,
    max_request: usize,
    conn: Mutex<Conn>,
}

/// Bytes the kernel may hold for the server: a whole engine chunk, so a posted write
/// returns while the server is still reading it and the next chunk is prepared meanwhile.
const SEND_BUFFER: usize = 8 << 20;

/// Asks for a [`SEND_BUFFER`]-deep socket send buffer: past `net.core.wmem_max` when
/// allowed (root), else as deep as that limit allows. Only a speed matter: errors ignored.
fn deep_send_buffer(fd: impl std::os::fd::AsFd) {
    if rustix::net::sockopt::set_socket_send_buffer_size_force(&fd, SEND_BUFFER).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, SEND_BUFFER);
    }
}

impl NbdDevice {
    /// Connects and negotiates; the deadline of `--timeout` covers connect and handshake.
    pub fn connect(uri: &NbdUri, name: &str) -> io::Result<NbdDevice> {
        let t = timeout();
        let (fd, tcp): (OwnedFd, bool) = match &uri.endpoint {
            Endpoint::Tcp { host, port } => {
                let addrs: Vec<_> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| ctx(e, format_args!("resolving {host}")))?
                    .collect();
                let mut last = io::Error::other(format!("{host} has no address"));
                let mut conn = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, t) {
                        Ok(c) => {
                            conn = Some(c);
                            break;
                        }
                        Err(e) => last = ctx(e, format_args!("connecting to {a}")),
                    }
                }
                let c = conn.ok_or(last)?;
                c.set_nodelay(true)?;
                deep_send_buffer(&c);
                c.set_read_timeout(Some(t))?;
                c.set_write_timeout(Some(t))?;
                (c.into(), true)
            }
            Endpoint::Unix { socket } => {
                let c = UnixStream::connect(socket)
                    .map_err(|e| ctx(e, format_args!("connecting to {socket}")))?;
                deep_send_buffer(&c);
                c.set_read_timeout(Some(t))?;
                c.set_write_timeout(Some(t))?;
                (c.into(), false)
            }
        };
        let plain = |fd: OwnedFd| -> Box<dyn Stream> {
            if tcp {
                Box::new(TcpStream::from(fd))
            } else {
                Box::new(UnixStream::from(fd))
            }
        };
        let (mut sock, ex) = match &uri.tls {
            None => {
                let mut s = plain(fd);
                let ex = handshake(&mut *s, &uri.export).map_err(|e| ctx(e, "NBD handshake"))?;
                (s, ex)
            }
            Some(tls) => {
                // The files are read (and checked) before anything is sent.
                let cfg = crate::tls::client_config(&tls.files)?;
                let host = uri.tls_hostname();
                let mut s = plain(fd.try_clone()?);
                let no_zeroes = greet(&mut *s).map_err(|e| ctx(e, "NBD handshake"))?;
                starttls(&mut *s).map_err(|e| keep_refusal(e, "NBD handshake"))?;
                drop(s);
                let mut s: Box<dyn Stream> = Box::new(
                    crate::tls::TlsStream::connect(fd, &cfg, &host)
                        .map_err(|e| keep_refusal(e, format_args!("TLS handshake with {host}")))?,
                );
                let ex = go(&mut *s, &uri.export, no_zeroes).map_err(|e| {
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    ) {
                        // TLS 1.3: the server checks the client's certificate after the
                        // handshake is done on this side, and may just hang up.
                        crate::tls::refused(format!(
                            "the server {host} closed the connection after the TLS handshake: does it require a client certificate (--tls-cert/--tls-key), or not trust this one?"
                        ))
                    } else {
                        keep_refusal(e, "NBD handshake (in TLS)")
                    }
                })?;
                (s, ex)
            }
        };
        sock.flush()?;
        let max_request = ex
            .max_block
            .map(|m| (m as usize).clamp(4096, REQUEST_MAX))
            .unwrap_or(REQUEST_MAX);
        Ok(NbdDevice {
            name: name.to_string(),
            size: ex.size,
            flags: ex.flags,
            max_request,
            conn: Mutex::new(Conn {
                sock,
                next_cookie: 1,
                broken: None,
                posted: Default::default(),
                late_err: None,
            }),
        })
    }

    pub fn read_only(&self) -> bool {
        self.flags & TF_READ_ONLY != 0
    }

    /// Sends `reqs` (type, flags, offset, length, payload) with up to [`IN_FLIGHT`] in
    /// flight; reads go to `out` at the given buffer positions. Fails on the first error
    /// reply (after reading every outstanding reply, so the stream stays in step).
    fn transact(&self, reqs: &[Req], mut out: Option<&mut [u8]>) -> io::Result<()> {
        let mut c = self.conn.lock().unwrap();
        self.check_connected(&c)?;
        // Every posted write is answered before anything else is sent, so the replies below
        // belong to these requests only; an error a posted write got is reported first.
        let r = Self::drain_posted(&mut c, 0).and_then(|()| match &c.late_err {
            Some((k, m)) => Ok(Some(io::Error::new(*k, m.clone()))),
            None => Self::transact_locked(&mut c, reqs, &mut out),
        });
        match r {
            Ok(first_err) => first_err.map_or(Ok(()), Err),
            Err(e) => {
                c.broken = Some(e.to_string());
                Err(ctx(e, format_args!("NBD connection to {}", self.name)))
            }
        }
    }

    /// Fails at once on a connection a transport error left out of step.
    fn check_connected(&self, c: &Conn) -> io::Result<()> {
        match &c.broken {
            Some(why) => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("connection to {} lost earlier ({why})", self.name),
            )),
            None => Ok(()),
        }
    }

    /// Reads a simple reply's header: (error, cookie).
    fn read_reply(c: &mut Conn) -> io::Result<(u32, u64)> {
        let magic = rd_u32(&mut *c.sock)?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(proto(format!("bad reply magic {magic:#x}")));
        }
        Ok((rd_u32(&mut *c.sock)?, rd_u64(&mut *c.sock)?))
    }

    /// Sends writes without waiting for their replies (at most [`IN_FLIGHT`] unanswered), so
    /// the server stores one chunk while the engine prepares the next. Durability is
    /// unchanged: [`Device::sync`] first collects every reply, and the engine syncs a leg
    /// before it counts anything written to it as done (engine rules W2, S1). An error reply
    /// is reported by the next call on this device, naming the write's offset.
    fn post(&self, reqs: &[Req]) -> io::Result<()> {
        let mut c = self.conn.lock().unwrap();
        self.check_connected(&c)?;
        let r = (|| {
            for r in reqs {
                // A server may carry out requests in flight in any order: a write over
                // one still unanswered waits for it, so the later data wins.
                let (start, end) = (r.off, r.off + r.len as u64);
                let overlaps = c.posted.iter().any(|&(_, o, l)| o < end && start < o + l);
                Self::drain_posted(&mut c, if overlaps { 0 } else { IN_FLIGHT - 1 })?;
                let cookie = c.next_cookie;
                c.next_cookie += 1;
                Self::send(&mut c, r, cookie)?;
                c.posted.push_back((cookie, r.off, r.len as u64));
            }
            c.sock.flush()
        })();
        if let Err(e) = r {
            c.broken = Some(e.to_string());
            return Err(ctx(e, format_args!("NBD connection to {}", self.name)));
        }
        match &c.late_err {
            Some((k, m)) => Err(io::Error::new(*k, m.clone())),
            None => Ok(()),
        }
    }

    fn send(c: &mut Conn, r: &Req, cookie: u64) -> io::Result<()> {
        let mut hdr = Vec::with_capacity(28);
        hdr.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        hdr.extend_from_slice(&r.flags.to_be_bytes());
        hdr.extend_from_slice(&r.typ.to_be_bytes());
        hdr.extend_from_slice(&cookie.to_be_bytes());
        hdr.extend_from_slice(&r.off.to_be_bytes());
        hdr.extend_from_slice(&r.len.to_be_bytes());
        c.sock.write_all(&hdr)?;
        if let Some(p) = r.payload {
            c.sock.write_all(p)?;
        }
        Ok(())
    }

    /// Reads replies to posted writes until at most `keep` are unanswered. Outer error:
    /// transport; error replies go to `late_err`.
    fn drain_posted(c: &mut Conn, keep: usize) -> io::Result<()> {
        while c.posted.len() > keep {
            let (err, cookie) = Self::read_reply(c)?;
            let i = c
                .posted
                .iter()
                .position(|(k, _, _)| *k == cookie)
                .ok_or_else(|| proto(format!("reply for unknown cookie {cookie}")))?;
            let (_, off, _) = c.posted.remove(i).expect("position is in range");
            if err != 0 && c.late_err.is_none() {
                let e = nbd_error(err);
                c.late_err = Some((e.kind(), format!("NBD write at offset {off}: {e}")));
            }
        }
        Ok(())
    }

    /// Outer error: transport (connection now useless). Inner: the first error reply.
    fn transact_locked(
        c: &mut Conn,
        reqs: &[Req],
        out: &mut Option<&mut [u8]>,
    ) -> io::Result<Option<io::Error>> {
        let mut first_err = None;
        for group in reqs.chunks(IN_FLIGHT) {
            let base = c.next_cookie;
            c.next_cookie += group.len() as u64;
            for (i, r) in group.iter().enumerate() {
                Self::send(c, r, base + i as u64)?;
            }
            c.sock.flush()?;
            // Each cookie is answered once: a second reply to one (and none to another)
            // would leave a read's buffer unfilled and call it done.
            let mut answered = vec![false; group.len()];
            for _ in 0..group.len() {
                let (err, cookie) = Self::read_reply(c)?;
                let i = cookie
                    .checked_sub(base)
                    .filter(|i| (*i as usize) < group.len())
                    .ok_or_else(|| proto(format!("reply for unknown cookie {cookie}")))?
                    as usize;
                if std::mem::replace(&mut answered[i], true) {
                    return Err(proto(format!("a second reply for cookie {cookie}")));
                }
                let r = &group[i];
                if err != 0 {
                    first_err.get_or_insert_with(|| {
                        let e = nbd_error(err);
                        io::Error::new(e.kind(), format!("{} at offset {}: {e}", r.what(), r.off))
                    });
                    continue;
                }
                if r.typ == CMD_READ {
                    let buf = out.as_deref_mut().expect("read without a buffer");
                    let at = r.buf_at;
                    c.sock.read_exact(&mut buf[at..at + r.len as usize])?;
                }
            }
        }
        Ok(first_err)
    }

    fn split<'a>(
        &self,
        typ: u16,
        flags: u16,
        off: u64,
        len: usize,
        data: Option<&'a [u8]>,
    ) -> Vec<Req<'a>> {
        let mut v = Vec::new();
        let mut p = 0usize;
        while p < len {
            let n = (len - p).min(self.max_request);
            v.push(Req {
                typ,
                flags,
                off: off + p as u64,
                len: n as u32,
                payload: data.map(|d| &d[p..p + n]),
                buf_at: p,
            });
            p += n;
        }
        v
    }

    fn check_range(&self, off: u64, len: usize) -> io::Result<()> {
        if off.checked_add(len as u64).is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: {len} bytes at offset {off} are past the end of the export ({} bytes)",
                    self.name, self.size
                ),
            ));
        }
        Ok(())
    }
}

struct Req<'a> {
    typ: u16,
    flags: u16,
    off: u64,
    len: u32,
    payload: Option<&'a [u8]>,
    /// Where a read's data goes in the caller's buffer.
    buf_at: usize,
}

impl Req<'_> {
    fn what(&self) -> &'static str {
        match self.typ {
            CMD_READ => "NBD read",
            CMD_WRITE => "NBD write",
            CMD_FLUSH => "NBD flush",
            CMD_WRITE_ZEROES => "NBD write-zeroes",
            _ => "NBD request",
        }
    }
}

impl Device for NbdDevice {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.check_range(off, buf.len())?;
        let reqs = self.split(CMD_READ, 0, off, buf.len(), None);
        self.transact(&reqs, Some(buf))
    }

    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.check_range(off, buf.len())?;
        // Without FLUSH, FUA is how a write is made durable.
        let flags = if self.flags & TF_SEND_FLUSH == 0 && self.flags & TF_SEND_FUA != 0 {
            CMD_FLAG_FUA
        } else {
            0
        };
        let reqs = self.split(CMD_WRITE, flags, off, buf.len(), Some(buf));
        if flags & CMD_FLAG_FUA != 0 {
            // Durable when the reply comes: wait for it.
            return self.transact(&reqs, None);
        }
        self.post(&reqs)
    }

    fn sync(&self) -> io::Result<()> {
        if self.flags & TF_SEND_FLUSH == 0 {
            return self.transact(&[], None);
        }
        let req = Req {
            typ: CMD_FLUSH,
            flags: 0,
            off: 0,
            len: 0,
            payload: None,
            buf_at: 0,
        };
        self.transact(&[req], None)
    }

    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        if self.flags & TF_SEND_WRITE_ZEROES == 0 {
            return crate::device::write_zeros(self, off, len);
        }
        self.check_range(off, len as usize)?;
        let mut reqs = Vec::new();
        let mut p = 0u64;
        while p < len {
            let n = (len - p).min(1 << 30);
            reqs.push(Req {
                typ: CMD_WRITE_ZEROES,
                flags: 0,
                off: off + p,
                len: n as u32,
                payload: None,
                buf_at: 0,
            });
            p += n;
        }
        self.transact(&reqs, None)
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        // Polite disconnect; the server may already be gone.
        if let Ok(c) = self.conn.get_mut() {
            if c.broken.is_none() {
                let mut hdr = Vec::with_capacity(28);
                hdr.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
                hdr.extend_from_slice(&0u16.to_be_bytes());
                hdr.extend_from_slice(&CMD_DISC.to_be_bytes());
                hdr.extend_from_slice(&0u64.to_be_bytes());
                hdr.extend_from_slice(&0u64.to_be_bytes());
                hdr.extend_from_slice(&0u32.to_be_bytes());
                let _ = c.sock.write_all(&hdr);
                let _ = c.sock.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::proto::tests::pair;
    use super::*;

    fn test_device(client: UnixStream) -> NbdDevice {
        NbdDevice {
            name: "test".into(),
            size: 1 << 30,
            flags: 1 | TF_SEND_FLUSH,
            max_request: 4096,
            conn: Mutex::new(Conn {
                sock: Box::new(client),
                next_cookie: 1,
                broken: None,
                posted: Default::default(),
                late_err: None,
            }),
        }
    }

    /// Reads one request: (type, cookie, offset, payload).
    fn read_request(server: &mut UnixStream) -> (u16, u64, u64, Vec<u8>) {
        let mut h = [0u8; 28];
        server.read_exact(&mut h).unwrap();
        let typ = u16::from_be_bytes([h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let off = u64::from_be_bytes(h[16..24].try_into().unwrap());
        let len = u32::from_be_bytes(h[24..28].try_into().unwrap());
        let mut d = Vec::new();
        if typ == CMD_WRITE {
            d = vec![0u8; len as usize];
            server.read_exact(&mut d).unwrap();
        }
        (typ, cookie, off, d)
    }

    fn reply(server: &mut UnixStream, cookie: u64, err: u32) {
        server.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes()).unwrap();
        server.write_all(&err.to_be_bytes()).unwrap();
        server.write_all(&cookie.to_be_bytes()).unwrap();
    }

    /// Fails with `why` if the client sends anything within 300 ms.
    fn nothing_more_arrives(server: &mut UnixStream, why: &str) {
        server
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        let more = server.read(&mut b);
        assert!(
            matches!(&more, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{why}: {more:?}"
        );
        server.set_read_timeout(None).unwrap();
    }

    #[test]
    fn posted_writes_are_answered_in_any_order_and_an_error_reply_fails_the_next_sync_naming_the_offset(
    ) {
        let (client, mut server) = pair();
        let dev = test_device(client);
        // Answers in reverse order, after all four writes arrived; fails the one at 8192;
        // then answers a flush.
        let srv = std::thread::spawn(move || {
            let mut reqs = Vec::new();
            for _ in 0..4 {
                let (typ, cookie, off, d) = read_request(&mut server);
                assert_eq!(typ, CMD_WRITE);
                assert!(d.iter().all(|&b| b == (off / 4096) as u8));
                reqs.push((cookie, off));
            }
            for (cookie, off) in reqs.into_iter().rev() {
                reply(&mut server, cookie, if off == 8192 { 28 } else { 0 });
            }
            server
        });
        let data: Vec<u8> = (0..4u8).flat_map(|i| vec![i; 4096]).collect();
        dev.write_at(&data, 0).unwrap();
        let e = dev.sync().unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().contains("offset 8192"), "{e}");
        assert_eq!(e.kind(), io::Error::from_raw_os_error(28).kind());
        // The stream stayed in step, and the error sticks: no later sync says the export
        // holds what it lost (a concurrent flush would count the write durable).
        let e = dev.sync().unwrap_err();
        assert!(e.to_string().contains("offset 8192"), "{e}");
        let _server = srv.join().unwrap();
        assert!(dev.conn.lock().unwrap().broken.is_none());
    }

    #[test]
    fn a_second_reply_to_one_cookie_is_a_protocol_error_not_a_read_left_unfilled() {
        let (client, mut server) = pair();
        let dev = test_device(client);
        let srv = std::thread::spawn(move || {
            // Two reads of 4096 (max_request); the first answered twice, the second never.
            let (_, first, _, _) = read_request(&mut server);
            let _ = read_request(&mut server);
            for _ in 0..2 {
                reply(&mut server, first, 0);
                server.write_all(&[0xaa; 4096]).unwrap();
            }
            server
        });
        let mut buf = vec![0u8; 8192];
        let e = dev.read_at(&mut buf, 0).unwrap_err();
        assert!(e.to_string().contains("second reply for cookie"), "{e}");
        let _server = srv.join().unwrap();
    }

    #[test]
    fn a_write_over_an_unanswered_one_waits_for_its_reply() {
        let (client, mut server) = pair();
        let dev = test_device(client);
        let srv = std::thread::spawn(move || {
            let (_, first, off, _) = read_request(&mut server);
            assert_eq!(off, 0);
            let (_, second, off, _) = read_request(&mut server);
            assert_eq!(off, 4096, "a write elsewhere is posted at once");
            nothing_more_arrives(
                &mut server,
                "the write over offset 0 was sent before the first was answered",
            );
            reply(&mut server, second, 0);
            reply(&mut server, first, 0);
            let (_, third, off, d) = read_request(&mut server);
            assert_eq!((off, d[0]), (0, 3));
            reply(&mut server, third, 0);
            server
        });
        dev.write_at(&[1u8; 4096], 0).unwrap();
        dev.write_at(&[2u8; 4096], 4096).unwrap();
        dev.write_at(&[3u8; 4096], 0).unwrap();
        let _server = srv.join().unwrap();
        assert_eq!(dev.conn.lock().unwrap().posted.len(), 1);
    }

    #[test]
    fn at_most_in_flight_writes_go_unanswered() {
        let (client, mut server) = pair();
        let dev = test_device(client);
        let n = IN_FLIGHT + 4;
        let srv = std::thread::spawn(move || {
            let mut cookies: Vec<u64> = (0..IN_FLIGHT)
                .map(|_| read_request(&mut server).1)
                .collect();
            // Nothing more comes until some are answered.
            nothing_more_arrives(
                &mut server,
                &format!("a request beyond {IN_FLIGHT} unanswered ones was sent"),
            );
            for c in cookies.drain(..) {
                reply(&mut server, c, 0);
            }
            for _ in IN_FLIGHT..n {
                let (_, c, _, _) = read_request(&mut server);
                reply(&mut server, c, 0);
            }
            let (typ, c, _, _) = read_request(&mut server);
            assert_eq!(typ, CMD_FLUSH);
            reply(&mut server, c, 0);
            server
        });
        dev.write_at(&vec![7u8; 4096 * n], 0).unwrap();
        dev.sync().unwrap();
        let _server = srv.join().unwrap();
        assert!(dev.conn.lock().unwrap().posted.is_empty());
    }
}
