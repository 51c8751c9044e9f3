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

use crate::device::Device;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const CLISERV_MAGIC_OLDSTYLE: u64 = 0x0000_4202_8186_1253;
const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1 << 0;

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

fn timeout() -> Duration {
    *TIMEOUT.get().unwrap_or(&DEFAULT_TIMEOUT)
}

/// Whether a secondary location is an NBD URI rather than a path.
pub fn is_uri(s: &str) -> bool {
    s.starts_with("nbd://") || s.starts_with("nbd+unix://")
}

/// Where an export is: `nbd://HOST[:PORT][/EXPORT]` or `nbd+unix:///EXPORT?socket=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    pub export: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { socket: String },
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in '{s}'"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 after decoding"))
}

impl NbdUri {
    pub fn parse(s: &str) -> Result<NbdUri, String> {
        let bad = |why: &str| {
            format!(
                "'{s}': {why} (use nbd://HOST[:PORT][/EXPORT] or nbd+unix:///EXPORT?socket=PATH)"
            )
        };
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(|| bad("no ?socket=PATH"))?;
            if !path.is_empty() && !path.starts_with('/') {
                return Err(bad("a host is not allowed with nbd+unix"));
            }
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("no socket= in the query"))?;
            if socket.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(NbdUri {
                endpoint: Endpoint::Unix {
                    socket: percent_decode(socket)?,
                },
                export: percent_decode(path.strip_prefix('/').unwrap_or(path))?,
            });
        }
        let rest = s
            .strip_prefix("nbd://")
            .ok_or_else(|| bad("not an NBD URI"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if path.contains('?') {
            return Err(bad("query parameters are not supported with nbd://"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 10809,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Ok(NbdUri {
            endpoint: Endpoint::Tcp { host, port },
            export: percent_decode(path)?,
        })
    }

    /// One spelling per export, used to tell whether two locations name the same export.
    pub fn canonical(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                format!("nbd://[{host}]:{port}/{}", self.export)
            }
            Endpoint::Tcp { host, port } => format!("nbd://{host}:{port}/{}", self.export),
            Endpoint::Unix { socket } => {
                let socket = std::fs::canonicalize(socket)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| socket.clone());
                format!("nbd+unix:///{}?socket={socket}", self.export)
            }
        }
    }
}

/// The canonical form of `s` if it is an NBD URI.
pub fn canonical(s: &str) -> Option<String> {
    if is_uri(s) {
        NbdUri::parse(s).ok().map(|u| u.canonical())
    } else {
        None
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

struct Conn {
    sock: Box<dyn Stream>,
    next_cookie: u64,
    /// Set after a transport error: the request stream is out of step for good.
    broken: Option<String>,
    /// Writes sent without waiting for their replies (cookie, offset, length), oldest first.
    posted: std::collections::VecDeque<(u64, u64, u64)>,
    /// The first error reply to a posted write, not yet reported.
    late_err: Option<io::Error>,
}

/// An NBD export used as a [`Device`].
pub struct NbdDevice {
    name: String,
    size: u64,
    flags: u16,
    max_request: usize,
    conn: Mutex<Conn>,
}

fn ctx(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    let kind = if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut
    } else {
        e.kind()
    };
    let msg = if kind == io::ErrorKind::TimedOut {
        format!("{what}: no answer within {:?} (--timeout)", timeout())
    } else {
        format!("{what}: {e}")
    };
    io::Error::new(kind, msg)
}

fn rd<const N: usize>(s: &mut dyn Stream) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn rd_u16(s: &mut dyn Stream) -> io::Result<u16> {
    Ok(u16::from_be_bytes(rd::<2>(s)?))
}
fn rd_u32(s: &mut dyn Stream) -> io::Result<u32> {
    Ok(u32::from_be_bytes(rd::<4>(s)?))
}
fn rd_u64(s: &mut dyn Stream) -> io::Result<u64> {
    Ok(u64::from_be_bytes(rd::<8>(s)?))
}

fn proto(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Text for an option error reply.
fn rep_err_text(t: u32) -> &'static str {
    match t & !(1 << 31) {
        1 => "option not supported",
        2 => "forbidden by the server's policy",
        3 => "invalid option",
        4 => "not supported on this platform",
        5 => "the server requires TLS",
        6 => "no such export",
        7 => "the server is shutting down",
        8 => "the server requires block size negotiation",
        9 => "request too big",
        _ => "error",
    }
}

/// Export size, transmission flags and maximum block size as negotiated.
struct Export {
    size: u64,
    flags: u16,
    max_block: Option<u32>,
}

fn send_option(s: &mut dyn Stream, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)?;
    s.flush()
}

/// The fixed-newstyle handshake, up to the start of the transmission phase.
fn handshake(s: &mut dyn Stream, export: &str) -> io::Result<Export> {
    if rd_u64(s)? != NBDMAGIC {
        return Err(proto("not an NBD server (no NBDMAGIC)".into()));
    }
    let m = rd_u64(s)?;
    if m == CLISERV_MAGIC_OLDSTYLE {
        return Err(proto(
            "the server speaks the oldstyle protocol; run it in newstyle mode".into(),
        ));
    }
    if m != IHAVEOPT {
        return Err(proto(format!("unexpected handshake magic {m:#x}")));
    }
    let hflags = rd_u16(s)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto("the server does not speak fixed newstyle".into()));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = u32::from(FLAG_FIXED_NEWSTYLE) | if no_zeroes { 2 } else { 0 };
    s.write_all(&cflags.to_be_bytes())?;

    // NBD_OPT_GO: name, then the information requests.
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&2u16.to_be_bytes());
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &d)?;
    let mut size_flags = None;
    let mut max_block = None;
    loop {
        if rd_u64(s)? != REPLY_MAGIC_OPT {
            return Err(proto("bad option reply magic".into()));
        }
        let opt = rd_u32(s)?;
        let typ = rd_u32(s)?;
        let len = rd_u32(s)? as usize;
        if opt != OPT_GO {
            return Err(proto(format!("reply to option {opt}, expected {OPT_GO}")));
        }
        if len > 64 * 1024 {
            return Err(proto(format!("option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len];
        s.read_exact(&mut data)?;
        match typ {
            REP_ACK => break,
            REP_INFO if data.len() >= 2 => {
                let info = u16::from_be_bytes([data[0], data[1]]);
                if info == INFO_EXPORT && data.len() >= 12 {
                    let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    let flags = u16::from_be_bytes([data[10], data[11]]);
                    size_flags = Some((size, flags));
                } else if info == INFO_BLOCK_SIZE && data.len() >= 14 {
                    max_block = Some(u32::from_be_bytes(data[10..14].try_into().unwrap()));
                }
            }
            REP_INFO => {}
            REP_ERR_UNSUP => {
                // An older server: NBD_OPT_EXPORT_NAME has no error reply (it just closes).
                send_option(s, OPT_EXPORT_NAME, export.as_bytes())?;
                let size = rd_u64(s)
                    .map_err(|e| ctx(e, format_args!("export '{export}' refused by the server")))?;
                let flags = rd_u16(s)?;
                if !no_zeroes {
                    rd::<124>(s)?;
                }
                return Ok(Export {
                    size,
                    flags,
                    max_block: None,
                });
            }
            t if t & (1 << 31) != 0 => {
                let msg = String::from_utf8_lossy(&data).into_owned();
                return Err(io::Error::other(format!(
                    "export '{export}': {}{}",
                    rep_err_text(t),
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(" ({msg})")
                    }
                )));
            }
            _ => {} // unknown reply types are ignored, as the protocol asks
        }
    }
    let (size, flags) =
        size_flags.ok_or_else(|| proto("the server sent no NBD_INFO_EXPORT".into()))?;
    Ok(Export {
        size,
        flags,
        max_block,
    })
}

/// NBD error numbers are Linux errno values on the wire.
fn nbd_error(code: u32) -> io::Error {
    io::Error::from_raw_os_error(code as i32)
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
        let mut sock: Box<dyn Stream> = match &uri.endpoint {
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
                Box::new(c)
            }
            Endpoint::Unix { socket } => {
                let c = UnixStream::connect(socket)
                    .map_err(|e| ctx(e, format_args!("connecting to {socket}")))?;
                deep_send_buffer(&c);
                c.set_read_timeout(Some(t))?;
                c.set_write_timeout(Some(t))?;
                Box::new(c)
            }
        };
        let ex = handshake(&mut *sock, &uri.export).map_err(|e| ctx(e, "NBD handshake"))?;
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
        let r = Self::drain_posted(&mut c, 0).and_then(|()| match c.late_err.take() {
            Some(e) => Ok(Some(e)),
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
    /// before it counts anything written to it as done (mirror.rs W2, S1). An error reply
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
        c.late_err.take().map_or(Ok(()), Err)
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
                c.late_err = Some(io::Error::new(
                    e.kind(),
                    format!("NBD write at offset {off}: {e}"),
                ));
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
            for _ in 0..group.len() {
                let (err, cookie) = Self::read_reply(c)?;
                let i = cookie
                    .checked_sub(base)
                    .filter(|i| (*i as usize) < group.len())
                    .ok_or_else(|| proto(format!("reply for unknown cookie {cookie}")))?
                    as usize;
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
    use super::*;

    #[test]
    fn tcp_uris_parse_with_default_port_and_export() {
        let u = NbdUri::parse("nbd://host.example").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "host.example".into(),
                port: 10809
            }
        );
        assert_eq!(u.export, "");
        let u = NbdUri::parse("nbd://127.0.0.1:10900/disk%201").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 10900
            }
        );
        assert_eq!(u.export, "disk 1");
        assert_eq!(u.canonical(), "nbd://127.0.0.1:10900/disk 1");
        let u = NbdUri::parse("nbd://[::1]:11000/x").unwrap();
        assert_eq!(u.canonical(), "nbd://[::1]:11000/x");
    }

    #[test]
    fn unix_uris_parse_the_socket_from_the_query() {
        let u = NbdUri::parse("nbd+unix:///exp?socket=/run/nbd.sock").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Unix {
                socket: "/run/nbd.sock".into()
            }
        );
        assert_eq!(u.export, "exp");
        let u = NbdUri::parse("nbd+unix://?socket=/s").unwrap();
        assert_eq!(u.export, "");
    }

    #[test]
    fn malformed_uris_are_refused_with_the_accepted_forms() {
        for bad in [
            "nbd://",
            "nbd://host:port/x",
            "nbd+unix:///exp",
            "nbd+unix://host/exp?socket=/s",
            "nbd+unix:///exp?socket=",
            "nbd://h/x?tls=1",
        ] {
            let e = NbdUri::parse(bad).unwrap_err();
            assert!(e.contains("nbd://HOST"), "{bad}: {e}");
        }
        assert!(!is_uri("/dev/sdb"));
        assert!(is_uri("nbd://h"));
    }

    /// A scripted server on one end of a socket pair.
    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn opt_reply(s: &mut UnixStream, opt: u32, typ: u32, data: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&typ.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        s.write_all(&m).unwrap();
    }

    fn read_option(s: &mut UnixStream) -> (u32, Vec<u8>) {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), IHAVEOPT);
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        (opt, d)
    }

    fn greet(s: &mut UnixStream, flags: u16) -> u32 {
        s.write_all(&NBDMAGIC.to_be_bytes()).unwrap();
        s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
        s.write_all(&flags.to_be_bytes()).unwrap();
        let mut c = [0u8; 4];
        s.read_exact(&mut c).unwrap();
        u32::from_be_bytes(c)
    }

    #[test]
    fn the_handshake_sends_opt_go_with_the_export_name_and_reads_size_and_flags() {
        let (mut client, mut server) = pair();
        let srv = std::thread::spawn(move || {
            let cflags = greet(&mut server, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            assert_eq!(cflags, 3);
            let (opt, d) = read_option(&mut server);
            assert_eq!(opt, OPT_GO);
            assert_eq!(&d[..4], &3u32.to_be_bytes());
            assert_eq!(&d[4..7], b"exp");
            assert_eq!(&d[7..9], &2u16.to_be_bytes());
            let mut info = INFO_EXPORT.to_be_bytes().to_vec();
            info.extend_from_slice(&(1u64 << 30).to_be_bytes());
            info.extend_from_slice(&(1 | TF_SEND_FLUSH | TF_READ_ONLY).to_be_bytes());
            opt_reply(&mut server, OPT_GO, REP_INFO, &info);
            let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            for v in [1u32, 4096, 65536] {
                bs.extend_from_slice(&v.to_be_bytes());
            }
            opt_reply(&mut server, OPT_GO, REP_INFO, &bs);
            opt_reply(&mut server, OPT_GO, REP_ACK, &[]);
        });
        let ex = handshake(&mut client, "exp").unwrap();
        srv.join().unwrap();
        assert_eq!(ex.size, 1 << 30);
        assert_eq!(ex.flags & TF_READ_ONLY, TF_READ_ONLY);
        assert_eq!(ex.max_block, Some(65536));
    }

    #[test]
    fn a_server_without_opt_go_gets_export_name_instead() {
        let (mut client, mut server) = pair();
        let srv = std::thread::spawn(move || {
            greet(&mut server, FLAG_FIXED_NEWSTYLE);
            let (opt, _) = read_option(&mut server);
            assert_eq!(opt, OPT_GO);
            opt_reply(&mut server, OPT_GO, REP_ERR_UNSUP, &[]);
            let (opt, d) = read_option(&mut server);
            assert_eq!(opt, OPT_EXPORT_NAME);
            assert_eq!(d, b"old");
            server.write_all(&(8u64 << 20).to_be_bytes()).unwrap();
            server
                .write_all(&(1 | TF_SEND_FLUSH).to_be_bytes())
                .unwrap();
            server.write_all(&[0u8; 124]).unwrap();
        });
        let ex = handshake(&mut client, "old").unwrap();
        srv.join().unwrap();
        assert_eq!(ex.size, 8 << 20);
        assert_eq!(ex.flags, 1 | TF_SEND_FLUSH);
    }

    #[test]
    fn an_unknown_export_is_an_error_naming_it() {
        let (mut client, mut server) = pair();
        let srv = std::thread::spawn(move || {
            greet(&mut server, FLAG_FIXED_NEWSTYLE);
            read_option(&mut server);
            opt_reply(&mut server, OPT_GO, (1 << 31) | 6, b"nope");
        });
        let e = handshake(&mut client, "missing").err().unwrap();
        srv.join().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("missing") && msg.contains("no such export"),
            "{msg}"
        );
    }

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
            let (typ, cookie, _, _) = read_request(&mut server);
            assert_eq!(typ, CMD_FLUSH, "expected the second sync's flush");
            reply(&mut server, cookie, 0);
            server
        });
        let data: Vec<u8> = (0..4u8).flat_map(|i| vec![i; 4096]).collect();
        dev.write_at(&data, 0).unwrap();
        let e = dev.sync().unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().contains("offset 8192"), "{e}");
        assert_eq!(e.kind(), io::Error::from_raw_os_error(28).kind());
        // The stream stayed in step: the connection is still usable, the error reported once.
        dev.sync().unwrap();
        let _server = srv.join().unwrap();
        assert!(dev.conn.lock().unwrap().broken.is_none());
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
