//! `serve` against clients that break the protocol (issue 25): the protocol points of item
//! 8 one by one, then a seeded fuzzer of the transmission phase. Random and mutated
//! requests (bad magic, stray flags, ranges past the end or overflowing, huge and zero
//! lengths, unknown commands, truncated headers and payloads) go to the real binary over
//! its Unix socket, one at a time. Every reply must be well formed and say what the spec
//! says (success for a valid request, an error for an invalid one, the connection closed
//! where nothing else is possible), reads must return what the accepted writes left, and
//! at the end the legs are identical, the metadata holds no fuzz payload and status and
//! verify are clean.
//!
//! `MIRRORCTL_PROTO_FUZZ_CASES=N` runs N cases (300 by default) and
//! `MIRRORCTL_PROTO_FUZZ_SEED=S` another seed; a failure names both.

use crate::serve::{legs_identical, Raw, Serving, MAGIC};
use crate::support::*;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const SIMPLE_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
const MAX_PAYLOAD: u32 = 32 << 20;

const READ: u16 = 0;
const WRITE: u16 = 1;
const DISC: u16 = 2;
const FLUSH: u16 = 3;
const TRIM: u16 = 4;
const CACHE: u16 = 5;
const WRITE_ZEROES: u16 = 6;
const BLOCK_STATUS: u16 = 7;

const FUA: u16 = 1;
const NO_HOLE: u16 = 2;
const DF: u16 = 4;
const REQ_ONE: u16 = 8;
const FAST_ZERO: u16 = 16;

const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_DF: u16 = 1 << 7;
const TF_SEND_FAST_ZERO: u16 = 1 << 11;

/// The error values proto.md defines.
const ERRNOS: [u32; 8] = [1, 5, 12, 22, 28, 75, 95, 108];
const EINVAL: u32 = 22;
const ENOTSUP: u32 = 95;

/// What the fuzzer writes: every 16 bytes start with this, so a payload that lands in the
/// metadata is found there.
const MARK: &[u8; 4] = b"FUZZ";

fn meta_context_data(query: &str) -> Vec<u8> {
    let mut d = 0u32.to_be_bytes().to_vec();
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&(query.len() as u32).to_be_bytes());
    d.extend_from_slice(query.as_bytes());
    d
}

/// One connection in the transmission phase and what it negotiated.
struct Conn {
    raw: Raw,
    structured: bool,
    base_allocation: bool,
    /// Transmission flags the server sent.
    flags: u16,
}

impl Conn {
    /// A handshake chosen by `rng`: structured replies or not, base:allocation or not,
    /// `NBD_OPT_GO` (asking for block sizes or not) or `NBD_OPT_EXPORT_NAME`.
    fn open(sock: &std::path::Path, rng: &mut Rng) -> Conn {
        let mut raw = Raw::greet(sock);
        raw.stream()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let structured = rng.chance(60);
        if structured {
            raw.option(8, &[]);
            assert_eq!(raw.opt_reply().0, 1);
        }
        let base_allocation = structured && rng.chance(60);
        if base_allocation {
            raw.option(10, &meta_context_data("base:allocation"));
            assert_eq!(raw.opt_reply().0, 4);
            assert_eq!(raw.opt_reply().0, 1);
        }
        let flags;
        if rng.chance(10) {
            raw.option(1, b"");
            let mut b = [0u8; 10];
            raw.stream().read_exact(&mut b).unwrap();
            flags = u16::from_be_bytes([b[8], b[9]]);
        } else {
            let mut go = 0u32.to_be_bytes().to_vec();
            if rng.chance(50) {
                go.extend_from_slice(&1u16.to_be_bytes());
                go.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
            } else {
                go.extend_from_slice(&0u16.to_be_bytes());
            }
            raw.option(7, &go);
            let (t, d) = raw.opt_reply();
            assert_eq!(
                (t, u16::from_be_bytes([d[0], d[1]])),
                (3, 0),
                "NBD_INFO_EXPORT"
            );
            flags = u16::from_be_bytes([d[10], d[11]]);
            while raw.opt_reply().0 != 1 {}
        }
        assert_eq!(
            flags & TF_SEND_DF != 0,
            structured,
            "DF is advertised exactly when structured replies are on"
        );
        Conn {
            raw,
            structured,
            base_allocation,
            flags,
        }
    }
}

/// How much of a request is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Whole,
    /// This many bytes of the header, then the write side is shut.
    Header(usize),
    /// The header and this many bytes of a write's payload, then the write side is shut.
    Payload(usize),
}

#[derive(Debug, Clone)]
struct Req {
    magic: u32,
    flags: u16,
    typ: u16,
    cookie: u64,
    off: u64,
    len: u32,
    cut: Cut,
    /// What was changed from a valid request.
    mutation: &'static str,
}

/// What the spec makes of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Success.
    Ok,
    /// An error reply; the connection goes on.
    Error,
    /// Success or `NBD_ENOTSUP` (a fast zero the server cannot do fast).
    OkOrNotSup,
    /// The connection is closed without a reply.
    Closed,
}

fn expect(r: &Req, c: &Conn, size: u64) -> Expect {
    if r.cut != Cut::Whole
        || r.magic != MAGIC
        || r.typ == DISC
        || (r.typ == WRITE && r.len > MAX_PAYLOAD)
    {
        return Expect::Closed;
    }
    let mut allowed = if c.flags & TF_SEND_FUA != 0 { FUA } else { 0 };
    match r.typ {
        READ if c.flags & TF_SEND_DF != 0 => allowed |= DF,
        WRITE_ZEROES => {
            allowed |= NO_HOLE;
            if c.flags & TF_SEND_FAST_ZERO != 0 {
                allowed |= FAST_ZERO
            }
        }
        BLOCK_STATUS => allowed |= REQ_ONE,
        READ | WRITE | FLUSH | TRIM | CACHE => {}
        _ => return Expect::Error, // unknown command
    }
    if r.flags & !allowed != 0 {
        return Expect::Error;
    }
    match r.typ {
        FLUSH if r.off != 0 || r.len != 0 => return Expect::Error,
        FLUSH => return Expect::Ok,
        BLOCK_STATUS if !c.base_allocation || r.len == 0 => return Expect::Error,
        READ if r.len > MAX_PAYLOAD => return Expect::Error,
        _ => {}
    }
    match r.off.checked_add(u64::from(r.len)) {
        Some(end) if end <= size => {}
        _ => return Expect::Error,
    }
    if r.typ == WRITE_ZEROES && r.flags & FAST_ZERO != 0 {
        return Expect::OkOrNotSup;
    }
    Expect::Ok
}

/// A valid request, then (most of the time) one thing changed.
fn pick(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

fn generate(rng: &mut Rng, c: &Conn, size: u64) -> Req {
    let types = [READ, WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS];
    let typ = types[pick(rng, types.len() as u64) as usize];
    let len = if typ == FLUSH {
        0
    } else if pick(rng, 2) == 0 {
        (1 + pick(rng, 128) as u32) * 512
    } else {
        1 + pick(rng, 65536) as u32
    };
    let off = if typ == FLUSH {
        0
    } else {
        pick(rng, size - u64::from(len) + 1)
    };
    let mut flags = 0;
    if pick(rng, 4) == 0 && c.flags & TF_SEND_FUA != 0 {
        flags |= FUA;
    }
    match typ {
        READ if c.structured && pick(rng, 3) == 0 => flags |= DF,
        WRITE_ZEROES if pick(rng, 2) == 0 => flags |= NO_HOLE,
        BLOCK_STATUS if pick(rng, 2) == 0 => flags |= REQ_ONE,
        _ => {}
    }
    let mut r = Req {
        magic: MAGIC,
        flags,
        typ,
        cookie: rng.next_u64(),
        off,
        len,
        cut: Cut::Whole,
        mutation: "none",
    };
    if !rng.chance(65) {
        return r;
    }
    match pick(rng, 12) {
        0 => {
            r.magic = (pick(rng, u64::from(u32::MAX)) as u32) | 1;
            if r.magic == MAGIC {
                r.magic ^= 2;
            }
            r.mutation = "bad magic";
        }
        1 => {
            r.flags = pick(rng, 1 << 16) as u16;
            r.mutation = "random flags";
        }
        2 => {
            r.flags ^= 1 << pick(rng, 16);
            r.mutation = "one flag flipped";
        }
        3 => {
            let len = u64::from(r.len);
            r.off = match pick(rng, 5) {
                0 => size,
                1 => size + 1 - len,
                2 => u64::MAX,
                3 => u64::MAX - len.saturating_sub(1),
                _ => size + pick(rng, 1 << 40),
            };
            r.mutation = "offset out of range";
        }
        4 => {
            r.len = match pick(rng, 5) {
                0 => u32::MAX,
                1 => MAX_PAYLOAD + 1,
                2 => MAX_PAYLOAD,
                3 => size.min(u64::from(u32::MAX)) as u32,
                _ => pick(rng, 1 << 32) as u32,
            };
            // A valid write this large is sent whole: keep that rare.
            if r.typ == WRITE && r.len <= MAX_PAYLOAD && pick(rng, 4) != 0 {
                r.len = MAX_PAYLOAD + 1 + pick(rng, 1 << 20) as u32;
            }
            r.off = if u64::from(r.len) <= size && pick(rng, 2) == 0 {
                0
            } else {
                r.off
            };
            r.mutation = "huge length";
        }
        5 => {
            r.len = 0;
            r.mutation = "zero length";
        }
        6 => {
            r.typ = 8 + pick(rng, 0xfff8) as u16;
            r.mutation = "unknown command";
        }
        7 => {
            r.typ = DISC;
            r.mutation = "disconnect";
        }
        8 => {
            r.cut = Cut::Header(pick(rng, 28) as usize);
            r.mutation = "truncated header";
        }
        9 => {
            if r.typ == WRITE && r.len > 1 {
                r.cut = Cut::Payload(pick(rng, u64::from(r.len)) as usize);
            } else {
                r.cut = Cut::Header(1 + pick(rng, 27) as usize);
            }
            r.mutation = "truncated request";
        }
        10 => {
            r.flags = pick(rng, 1 << 16) as u16;
            r.typ = pick(rng, 10) as u16;
            let shift = pick(rng, 64);
            r.off = rng.next_u64() >> shift;
            let shift = pick(rng, 64);
            r.len = (rng.next_u64() >> shift) as u32;
            if r.typ == WRITE && r.len > 1 << 20 && r.len <= MAX_PAYLOAD {
                r.len >>= 8;
            }
            r.mutation = "random fields";
        }
        _ => {
            r.flags = 0;
            r.typ = READ;
            r.len = 0;
            r.mutation = "zero-length read";
        }
    }
    r
}

fn payload(r: &Req, rng: &mut Rng) -> Vec<u8> {
    let n = match r.cut {
        Cut::Whole => r.len as usize,
        Cut::Payload(n) => n,
        Cut::Header(_) => 0,
    };
    let mut d = vec![0u8; n];
    rng.fill(&mut d);
    for (i, c) in d.chunks_mut(16).enumerate() {
        let k = c.len().min(4);
        c[..k].copy_from_slice(&MARK[..k]);
        if c.len() >= 12 {
            c[4..12].copy_from_slice(&(r.cookie ^ i as u64).to_be_bytes());
        }
    }
    d
}

/// Reads until the server closes the connection; an error unless it sent nothing more.
fn closed_without_reply(s: &mut std::os::unix::net::UnixStream) -> Result<(), String> {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) if got.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "{} bytes sent before closing: {got:02x?}",
            got.len()
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset && got.is_empty() => Ok(()),
        Err(e) => Err(format!("the connection was not closed: {e}")),
    }
}

/// Reads the reply to `r` and checks it is well formed; the errno (0: success) and, for a
/// successful read, the data.
fn reply(c: &mut Conn, r: &Req) -> Result<(u32, Vec<u8>), String> {
    let s = c.raw.stream();
    let io = |e: io::Error| format!("reading the reply: {e}");
    let room = if r.typ == READ && r.len <= MAX_PAYLOAD {
        r.len as usize
    } else {
        0
    };
    let mut data = vec![0u8; room];
    let mut covered = 0u64;
    let mut errno = 0;
    loop {
        let mut m = [0u8; 4];
        s.read_exact(&mut m).map_err(io)?;
        match u32::from_be_bytes(m) {
            SIMPLE_MAGIC => {
                if c.structured && r.typ == READ {
                    return Err("a simple reply to a read with structured replies on".into());
                }
                let mut h = [0u8; 12];
                s.read_exact(&mut h).map_err(io)?;
                let err = u32::from_be_bytes(h[0..4].try_into().unwrap());
                let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
                if cookie != r.cookie {
                    return Err(format!("reply for cookie {cookie:#x}"));
                }
                if err == 0 && r.typ == READ && r.len > MAX_PAYLOAD {
                    return Err("success for a read over the maximum payload".into());
                } else if err == 0 && r.typ == READ {
                    s.read_exact(&mut data).map_err(io)?;
                } else if err == 0 {
                    data.clear();
                }
                return Ok((err, data));
            }
            STRUCTURED_MAGIC if c.structured => {
                let mut h = [0u8; 16];
                s.read_exact(&mut h).map_err(io)?;
                let flags = u16::from_be_bytes([h[0], h[1]]);
                let typ = u16::from_be_bytes([h[2], h[3]]);
                let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
                let n = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
                if cookie != r.cookie {
                    return Err(format!("chunk for cookie {cookie:#x}"));
                }
                if n > MAX_PAYLOAD as usize + 8 {
                    return Err(format!("a chunk of {n} bytes"));
                }
                let mut p = vec![0u8; n];
                s.read_exact(&mut p).map_err(io)?;
                match typ {
                    0 if n != 0 => return Err("a NONE chunk with a payload".into()),
                    0 if flags & 1 == 0 => return Err("a NONE chunk without DONE".into()),
                    0 => {}
                    1 => {
                        if r.typ != READ || n < 9 {
                            return Err(format!(
                                "an OFFSET_DATA chunk of {n} bytes (at least 1 byte of data)"
                            ));
                        }
                        let at = u64::from_be_bytes(p[..8].try_into().unwrap());
                        let end = at + (n as u64 - 8);
                        if at < r.off || end > r.off + u64::from(r.len) {
                            return Err(format!("data at {at}..{end} outside the request"));
                        }
                        let i = (at - r.off) as usize;
                        if i + n - 8 > data.len() {
                            return Err(format!("data for a read of {} bytes", r.len));
                        }
                        data[i..i + n - 8].copy_from_slice(&p[8..]);
                        covered += n as u64 - 8;
                    }
                    5 => {
                        let k = n.saturating_sub(4) / 8;
                        if r.typ != BLOCK_STATUS || n < 12 || (n - 4) % 8 != 0 {
                            return Err(format!("a BLOCK_STATUS chunk of {n} bytes"));
                        }
                        if u32::from_be_bytes(p[..4].try_into().unwrap()) != 1 {
                            return Err("a BLOCK_STATUS chunk for another context".into());
                        }
                        if r.flags & REQ_ONE != 0 && k != 1 {
                            return Err(format!("{k} extents for REQ_ONE"));
                        }
                        for e in p[4..].chunks(8) {
                            let l = u32::from_be_bytes(e[..4].try_into().unwrap());
                            if l == 0 || (r.flags & REQ_ONE != 0 && l > r.len) {
                                return Err(format!("an extent of {l} bytes"));
                            }
                        }
                    }
                    0x8001 => {
                        if n < 6 {
                            return Err(format!("an error chunk of {n} bytes"));
                        }
                        let e = u32::from_be_bytes(p[..4].try_into().unwrap());
                        let ml = u16::from_be_bytes([p[4], p[5]]) as usize;
                        if e == 0 || ml != n - 6 || ml > 4096 {
                            return Err(format!("an error chunk ({e}, {ml} of {n} bytes)"));
                        }
                        if std::str::from_utf8(&p[6..]).is_err() {
                            return Err("an error message that is not UTF-8".into());
                        }
                        errno = e;
                    }
                    t => return Err(format!("a chunk of type {t:#x}")),
                }
                if flags & 1 != 0 {
                    if errno == 0 && r.typ == READ && covered != u64::from(r.len) {
                        return Err(format!("{covered} of {} bytes read", r.len));
                    }
                    return Ok((errno, data));
                }
            }
            m => return Err(format!("reply magic {m:#x}")),
        }
    }
}

/// The export's bytes as the accepted writes left them.
struct Model {
    bytes: Vec<u8>,
    /// Requests sent, by what was expected of them ([`Expect`] as an index).
    seen: [u64; 4],
}

impl Model {
    fn apply(&mut self, r: &Req, data: &[u8]) {
        let (a, b) = (r.off as usize, r.off as usize + r.len as usize);
        match r.typ {
            WRITE => self.bytes[a..b].copy_from_slice(data),
            TRIM | WRITE_ZEROES => self.bytes[a..b].fill(0),
            _ => {}
        }
    }
}

/// Sends `r` and checks what comes back; whether the connection goes on.
fn exchange(
    c: &mut Conn,
    r: &Req,
    size: u64,
    model: &mut Model,
    rng: &mut Rng,
) -> Result<bool, String> {
    let want = expect(r, c, size);
    model.seen[want as usize] += 1;
    let mut h = r.magic.to_be_bytes().to_vec();
    h.extend_from_slice(&r.flags.to_be_bytes());
    h.extend_from_slice(&r.typ.to_be_bytes());
    h.extend_from_slice(&r.cookie.to_be_bytes());
    h.extend_from_slice(&r.off.to_be_bytes());
    h.extend_from_slice(&r.len.to_be_bytes());
    let data = if r.typ == WRITE && r.magic == MAGIC && r.len <= MAX_PAYLOAD {
        payload(r, rng)
    } else {
        Vec::new()
    };
    let s = c.raw.stream();
    // The server may close before taking everything (bad magic): write errors are not
    // failures, what is read back is checked.
    let sent = match r.cut {
        Cut::Header(n) => s.write_all(&h[..n]),
        _ => s.write_all(&h).and_then(|_| s.write_all(&data)),
    };
    if r.cut != Cut::Whole {
        let _ = s.shutdown(Shutdown::Write);
    }
    if want == Expect::Closed {
        closed_without_reply(s)?;
        return Ok(false);
    }
    sent.map_err(|e| format!("sending: {e}"))?;
    let (errno, got) = reply(c, r)?;
    if errno != 0 && !ERRNOS.contains(&errno) {
        return Err(format!("error {errno}, not one the spec defines"));
    }
    match (want, errno) {
        (Expect::Ok | Expect::OkOrNotSup, 0) => {
            model.apply(r, &data);
            if r.typ == READ {
                let (a, b) = (r.off as usize, r.off as usize + r.len as usize);
                if got != model.bytes[a..b] {
                    return Err("the data read differs from what was written".into());
                }
            }
        }
        (Expect::OkOrNotSup, ENOTSUP) | (Expect::Error, _) if errno != 0 => {}
        (w, e) => return Err(format!("expected {w:?}, got error {e}")),
    }
    Ok(true)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A write, a read of it back and a flush on a new connection: serve still serves.
fn probe(sock: &std::path::Path, model: &mut Model, round: u64) {
    let mut c = Raw::connect(sock, false);
    let off = (round * 4096) % (model.bytes.len() as u64 - 4096);
    let d = vec![round as u8; 4096];
    c.send(MAGIC, WRITE, 1, off, 4096, &d).unwrap();
    assert_eq!(c.reply().unwrap(), (0, 1), "serve no longer writes");
    model.bytes[off as usize..off as usize + 4096].copy_from_slice(&d);
    c.send(MAGIC, FLUSH, 2, 0, 0, &[]).unwrap();
    assert_eq!(c.reply().unwrap(), (0, 2), "serve no longer flushes");
}

#[test]
fn a_seeded_protocol_fuzzer_never_crashes_serve_nor_writes_outside_the_data_area() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let g = fx.geometry();
    let sizes = |fx: &Fx| ["a.img", "b.img"].map(|n| std::fs::metadata(fx.path(n)).unwrap().len());
    let before = sizes(&fx);
    let a = std::fs::File::open(fx.path("a.img")).unwrap();
    let mut model = Model {
        bytes: vec![0u8; g.data_size as usize],
        seen: [0; 4],
    };
    a.read_exact_at(&mut model.bytes, g.data_offset).unwrap();
    let s = Serving::start(&fx, &[]);
    let cases = env_u64("MIRRORCTL_PROTO_FUZZ_CASES", 300);
    let seed = env_u64("MIRRORCTL_PROTO_FUZZ_SEED", 25);
    let mut rng = Rng::new(seed);
    let t = Instant::now();
    let mut requests = 0;
    for case in 0..cases {
        let mut c = Conn::open(&s.sock, &mut rng);
        let mut sent = Vec::new();
        for _ in 0..1 + rng.next_u64() % 6 {
            let r = generate(&mut rng, &c, g.data_size);
            sent.push(r.clone());
            requests += 1;
            match exchange(&mut c, &r, g.data_size, &mut model, &mut rng) {
                Ok(true) => {}
                Ok(false) => break,
                Err(why) => panic!(
                    "seed {seed}, case {case} (structured {}, base:allocation {}, flags {:#x}): {why}\n\
                     requests: {sent:#?}\nlog:\n{}",
                    c.structured,
                    c.base_allocation,
                    c.flags,
                    s.log()
                ),
            }
        }
        if case % 25 == 24 {
            probe(&s.sock, &mut model, case);
        }
    }
    probe(&s.sock, &mut model, cases);
    let [ok, error, ok_or_notsup, closed] = model.seen;
    eprintln!(
        "protocol fuzzer: seed {seed}, {cases} cases, {requests} requests in {:.1?}: \
         {ok} valid, {error} refused, {ok_or_notsup} fast zeroes, {closed} closing the connection",
        t.elapsed()
    );
    if cases >= 100 {
        assert!(ok > 0 && error > 0 && closed > 0, "{:?}", model.seen);
    }
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Nothing landed outside the data area: the files kept their sizes, no fuzz payload
    // is in either leg's metadata, status reads it and is clean, the legs are identical
    // and the primary holds exactly what the accepted writes left.
    assert_eq!(sizes(&fx), before);
    for n in ["a.img", "b.img"] {
        let mut meta = vec![0u8; g.data_offset as usize];
        std::fs::File::open(fx.path(n))
            .unwrap()
            .read_exact_at(&mut meta, 0)
            .unwrap();
        assert!(
            !meta.windows(4).any(|w| w == MARK),
            "a fuzz payload is in the metadata of {n}"
        );
    }
    let st = fx.status();
    assert_eq!(st["write_intent_regions"], 0, "{st:#}");
    let (code, v) = fx.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    legs_identical(&fx, &[&fx.path("b.img")]);
    let mut now = vec![0u8; g.data_size as usize];
    a.read_exact_at(&mut now, g.data_offset).unwrap();
    assert!(
        now == model.bytes,
        "the primary's data area differs from the accepted writes"
    );
}

#[test]
fn a_zero_length_read_is_none_the_export_list_shows_no_path_and_a_long_export_name_gets_no_reply() {
    let fx = Fx::with_legs("32M", "64K", &["b.img"]);
    let s = Serving::start(&fx, &[]);
    // A zero-length read with structured replies: one NONE chunk with DONE, and the
    // connection goes on.
    let mut c = Raw::connect(&s.sock, true);
    c.send(MAGIC, READ, 7, 4096, 0, &[]).unwrap();
    let mut h = [0u8; 20];
    c.stream().read_exact(&mut h).unwrap();
    assert_eq!(&h[..4], &STRUCTURED_MAGIC.to_be_bytes());
    assert_eq!(u16::from_be_bytes([h[4], h[5]]), 1, "DONE");
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), 0, "NBD_REPLY_TYPE_NONE");
    assert_eq!(&h[8..16], &7u64.to_be_bytes());
    assert_eq!(&h[16..20], &[0; 4]);
    // DF is advertised with structured replies, and a read with it is one chunk.
    let mut r = Req {
        magic: MAGIC,
        flags: DF,
        typ: READ,
        cookie: 8,
        off: 0,
        len: 65536,
        cut: Cut::Whole,
        mutation: "none",
    };
    let mut conn = Conn {
        raw: c,
        structured: true,
        base_allocation: false,
        flags: TF_SEND_DF | TF_SEND_FUA,
    };
    let mut model = Model {
        bytes: vec![0u8; 1 << 20],
        seen: [0; 4],
    };
    let mut rng = Rng::new(1);
    assert_eq!(
        exchange(&mut conn, &r, 1 << 20, &mut model, &mut rng),
        Ok(true)
    );
    // Without structured replies, DF is refused with EINVAL and the connection goes on.
    let mut c = Raw::connect(&s.sock, false);
    r.cookie = 9;
    c.send(MAGIC, READ, 9, 0, 0, &[]).unwrap();
    assert_eq!(c.reply().unwrap(), (0, 9));
    let mut h = r.magic.to_be_bytes().to_vec();
    h.extend_from_slice(&DF.to_be_bytes());
    h.extend_from_slice(&READ.to_be_bytes());
    h.extend_from_slice(&10u64.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes());
    h.extend_from_slice(&512u32.to_be_bytes());
    c.stream().write_all(&h).unwrap();
    assert_eq!(c.reply().unwrap(), (EINVAL, 10));

    // NBD_OPT_LIST: the export name and a description without the primary's path.
    let mut l = Raw::greet(&s.sock);
    l.option(3, &[]);
    let (t, d) = l.opt_reply();
    assert_eq!(t, 2, "NBD_REP_SERVER");
    let text = String::from_utf8_lossy(&d[4..]).into_owned();
    let dir = fx.dir.path().to_string_lossy().into_owned();
    assert!(
        !text.contains("a.img") && !text.contains(&dir) && !text.contains('/'),
        "{text}"
    );
    assert_eq!(l.opt_reply().0, 1);
    // An error string is at most 4096 bytes, whatever the client sent.
    let name = "x".repeat(10_000);
    let mut info = (name.len() as u32).to_be_bytes().to_vec();
    info.extend_from_slice(name.as_bytes());
    info.extend_from_slice(&0u16.to_be_bytes());
    l.option(6, &info);
    let (t, d) = l.opt_reply();
    assert_eq!(t, (1 << 31) | 6, "NBD_REP_ERR_UNKNOWN");
    assert!(d.len() <= 4096, "{} bytes", d.len());

    // NBD_OPT_EXPORT_NAME over 4096 bytes: no option reply, the connection ends.
    let mut e = Raw::greet(&s.sock);
    e.option(1, &[b'y'; 5000]);
    assert_eq!(closed_without_reply(e.stream()), Ok(()));
    std::thread::sleep(Duration::from_millis(100));
    let (code, log) = s.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("5000-byte name"), "{log}");
}
