//! Transmission requests, parsed once and validated before dispatch (in the manner of
//! nbdkit's `validate_request` in `server/protocol.c`): command, flags, range and length are
//! checked against what the export advertised and the client negotiated (proto.md "Request
//! types", "Command flags", "Size constraints", "Error values"). A request that passes is a
//! [`Request`]; one that does not is refused with the spec's error, or, where the protocol
//! leaves no way to go on, ends the connection.

use super::handshake::{Negotiated, MAX_BLOCK};
use crate::device::nbd::proto::*;

/// Bytes of a request header (before a write's payload).
pub const HEADER_LEN: usize = 28;

/// Every command flag this server knows (`NBD_CMD_FLAG_PAYLOAD_LEN` belongs to extended
/// headers, which are not offered).
const KNOWN_FLAGS: u16 =
    CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;

/// A command of the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
}

impl Command {
    /// The command of a request's type field; `None` for one this server does not know.
    pub fn from_wire(typ: u16) -> Option<Command> {
        Some(match typ {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            _ => return None,
        })
    }

    pub fn wire(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Read => "NBD_CMD_READ",
            Command::Write => "NBD_CMD_WRITE",
            Command::Disc => "NBD_CMD_DISC",
            Command::Flush => "NBD_CMD_FLUSH",
            Command::Trim => "NBD_CMD_TRIM",
            Command::Cache => "NBD_CMD_CACHE",
            Command::WriteZeroes => "NBD_CMD_WRITE_ZEROES",
            Command::BlockStatus => "NBD_CMD_BLOCK_STATUS",
        }
    }

    /// Whether it changes the export (a write, trim or write-zeroes).
    pub fn mutates(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }

    /// The flags documented for this command (FUA is valid on every command once
    /// advertised: "the server MUST accept all commands with this bit set").
    fn documented_flags(self) -> u16 {
        CMD_FLAG_FUA
            | match self {
                Command::Read => CMD_FLAG_DF,
                Command::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                Command::BlockStatus => CMD_FLAG_REQ_ONE,
                _ => 0,
            }
    }

    /// The transmission flag that must have been advertised for a client to send it.
    fn advertised_by(self) -> Option<u16> {
        match self {
            Command::Flush => Some(TF_SEND_FLUSH),
            Command::Trim => Some(TF_SEND_TRIM),
            Command::Cache => Some(TF_SEND_CACHE),
            Command::WriteZeroes => Some(TF_SEND_WRITE_ZEROES),
            _ => None,
        }
    }
}

/// A request header as it arrived, nothing checked yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub flags: u16,
    pub typ: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
        Header {
            magic: be32(0),
            flags: be16(4),
            typ: be16(6),
            cookie: be64(8),
            offset: be64(16),
            length: be32(24),
        }
    }

    /// Whether `length` bytes of payload follow this header (a write's data).
    pub fn has_payload(&self) -> bool {
        self.typ == CMD_WRITE
    }
}

/// A request that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub cmd: Command,
    pub flags: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

/// What a connection's requests are checked against: the export as advertised and what
/// the client negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The export's size in bytes.
    pub size: u64,
    /// The transmission flags the client was sent.
    pub flags: u16,
    pub neg: Negotiated,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Answered with this error; the connection goes on (a write's payload is read and
    /// dropped first).
    Refuse { errno: u32, msg: String },
    /// The connection ends: there is no way to tell where the next request starts, or a
    /// payload is too large to take. The text says why.
    Fatal(String),
}

fn refuse(errno: u32, msg: String) -> Result<Request, Invalid> {
    Err(Invalid::Refuse { errno, msg })
}

/// What the client was told of the maximum payload, for messages.
fn maximum(neg: &Negotiated) -> String {
    if neg.block_size {
        format!("the {MAX_BLOCK}-byte maximum payload it agreed to (NBD_INFO_BLOCK_SIZE)")
    } else {
        format!(
            "the {MAX_BLOCK}-byte limit on payloads (the protocol's default maximum; \
             this client did not ask for NBD_INFO_BLOCK_SIZE)"
        )
    }
}

/// Checks one request. `NBD_CMD_DISC` passes whatever its other fields hold.
pub fn validate(h: &Header, l: &Limits) -> Result<Request, Invalid> {
    if h.magic != REQUEST_MAGIC {
        return Err(Invalid::Fatal(format!("bad request magic {:#x}", h.magic)));
    }
    let Some(cmd) = Command::from_wire(h.typ) else {
        return refuse(EINVAL, format!("unknown command {}", h.typ));
    };
    let req = Request {
        cmd,
        flags: h.flags,
        cookie: h.cookie,
        offset: h.offset,
        length: h.length,
    };
    if cmd == Command::Disc {
        return Ok(req);
    }
    let (off, len) = (h.offset, h.length);
    let name = cmd.name();
    // A payload this large is not taken in, even to be dropped: proto.md lets either side
    // hang up on a payload over 2^25 bytes ("deemed a denial of service attack").
    if cmd == Command::Write && len > MAX_BLOCK {
        return Err(Invalid::Fatal(format!(
            "{name} of {len} bytes at offset {off}, over {}",
            maximum(&l.neg)
        )));
    }
    if cmd.mutates() && l.flags & TF_READ_ONLY != 0 {
        return refuse(EPERM, "the export is read-only".into());
    }
    let unknown = h.flags & !KNOWN_FLAGS;
    if unknown != 0 {
        return refuse(EINVAL, format!("{name} with unknown flags {unknown:#x}"));
    }
    let stray = h.flags & !cmd.documented_flags();
    if stray != 0 {
        return refuse(
            EINVAL,
            format!("{name} with flags {stray:#x}, which it does not take"),
        );
    }
    for (flag, tf, what) in [
        (CMD_FLAG_FUA, TF_SEND_FUA, "NBD_CMD_FLAG_FUA"),
        (
            CMD_FLAG_FAST_ZERO,
            TF_SEND_FAST_ZERO,
            "NBD_CMD_FLAG_FAST_ZERO",
        ),
        (CMD_FLAG_DF, TF_SEND_DF, "NBD_CMD_FLAG_DF"),
    ] {
        if h.flags & flag != 0 && l.flags & tf == 0 {
            let why = if flag == CMD_FLAG_DF {
                " (it needs structured replies)"
            } else {
                ""
            };
            return refuse(
                EINVAL,
                format!("{name} with {what}, which this export did not advertise{why}"),
            );
        }
    }
    if let Some(tf) = cmd.advertised_by() {
        if l.flags & tf == 0 {
            return refuse(
                EINVAL,
                format!("{name}, which this export did not advertise"),
            );
        }
    }
    match cmd {
        Command::Flush if off != 0 || len != 0 => {
            return refuse(
                EINVAL,
                format!("{name} with offset {off} and length {len}; both must be 0"),
            );
        }
        Command::Flush => return Ok(req),
        Command::BlockStatus if !l.neg.base_allocation => {
            return refuse(EINVAL, format!("{name} without base:allocation negotiated"));
        }
        Command::BlockStatus if len == 0 => {
            return refuse(EINVAL, format!("{name} of length 0"));
        }
        // Larger reads are not split; with structured replies the spec allows refusing
        // them up front with EOVERFLOW.
        Command::Read if len > MAX_BLOCK => {
            let errno = if l.neg.structured { EOVERFLOW } else { EINVAL };
            return refuse(
                errno,
                format!(
                    "{name} of {len} bytes at offset {off}, over {}",
                    maximum(&l.neg)
                ),
            );
        }
        _ => {}
    }
    match off.checked_add(u64::from(len)) {
        Some(end) if end <= l.size => Ok(req),
        _ => refuse(
            // "SHOULD return NBD_ENOSPC if it receives a write request including one or
            // more sectors beyond the size of the device" (write-zeroes likewise).
            if matches!(cmd, Command::Write | Command::WriteZeroes) {
                ENOSPC
            } else {
                EINVAL
            },
            format!(
                "request at offset {off} length {len} runs past the end of the export ({} bytes)",
                l.size
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 40;
    const RW: u16 = TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_SEND_CACHE
        | TF_SEND_FAST_ZERO;

    fn header(typ: u16, flags: u16, offset: u64, length: u32) -> Header {
        Header {
            magic: REQUEST_MAGIC,
            flags,
            typ,
            cookie: 0xc0ffee,
            offset,
            length,
        }
    }

    fn limits(flags: u16, structured: bool, base_allocation: bool) -> Limits {
        Limits {
            size: SIZE,
            flags: if structured {
                flags | TF_SEND_DF
            } else {
                flags
            },
            neg: Negotiated {
                structured,
                base_allocation,
                block_size: false,
            },
        }
    }

    /// The errno a request gets (0: accepted), or `u32::MAX` when it ends the connection.
    fn outcome(h: &Header, l: &Limits) -> u32 {
        match validate(h, l) {
            Ok(r) => {
                assert_eq!(
                    (r.cmd.wire(), r.flags, r.cookie, r.offset, r.length),
                    (h.typ, h.flags, h.cookie, h.offset, h.length)
                );
                0
            }
            Err(Invalid::Refuse { errno, .. }) => errno,
            Err(Invalid::Fatal(_)) => u32::MAX,
        }
    }

    #[test]
    fn each_request_gets_the_errno_the_spec_names_for_it() {
        let plain = limits(RW, false, false);
        let st = limits(RW, true, true);
        let ro = limits(
            TF_HAS_FLAGS | TF_READ_ONLY | TF_SEND_FLUSH | TF_SEND_FUA,
            true,
            true,
        );
        let no_fast = limits(RW & !TF_SEND_FAST_ZERO, false, false);
        let fatal = u32::MAX;
        let max = MAX_BLOCK;
        #[rustfmt::skip]
        let table: &[(&str, Header, &Limits, u32)] = &[
            ("a plain read", header(CMD_READ, 0, 0, 4096), &plain, 0),
            ("a read up to the end", header(CMD_READ, 0, SIZE - 512, 512), &plain, 0),
            ("a read of the maximum", header(CMD_READ, 0, 0, max), &plain, 0),
            ("a zero-length read", header(CMD_READ, 0, 0, 0), &st, 0),
            ("a zero-length read at the end", header(CMD_READ, 0, SIZE, 0), &plain, 0),
            ("a zero-length read past the end", header(CMD_READ, 0, SIZE + 1, 0), &plain, EINVAL),
            ("a read past the end", header(CMD_READ, 0, SIZE - 512, 1024), &plain, EINVAL),
            ("a read whose end overflows", header(CMD_READ, 0, u64::MAX - 10, 512), &plain, EINVAL),
            ("a read over the maximum, simple", header(CMD_READ, 0, 0, max + 1), &plain, EINVAL),
            ("a read over the maximum, structured", header(CMD_READ, 0, 0, max + 1), &st, EOVERFLOW),
            ("a read with FUA (accepted on every command)", header(CMD_READ, CMD_FLAG_FUA, 0, 512), &plain, 0),
            ("a read with DF, structured", header(CMD_READ, CMD_FLAG_DF, 0, 512), &st, 0),
            ("a read with DF, simple", header(CMD_READ, CMD_FLAG_DF, 0, 512), &plain, EINVAL),
            ("a read with NO_HOLE", header(CMD_READ, CMD_FLAG_NO_HOLE, 0, 512), &plain, EINVAL),
            ("a read with REQ_ONE", header(CMD_READ, CMD_FLAG_REQ_ONE, 0, 512), &st, EINVAL),
            ("a read with PAYLOAD_LEN (extended headers)", header(CMD_READ, 1 << 5, 0, 512), &plain, EINVAL),
            ("a read with bit 15", header(CMD_READ, 1 << 15, 0, 512), &plain, EINVAL),
            ("a write with FUA", header(CMD_WRITE, CMD_FLAG_FUA, 4096, 4096), &plain, 0),
            ("a zero-length write", header(CMD_WRITE, 0, 0, 0), &plain, 0),
            ("a write past the end", header(CMD_WRITE, 0, SIZE, 512), &plain, ENOSPC),
            ("a write whose end overflows", header(CMD_WRITE, 0, u64::MAX, 1), &plain, ENOSPC),
            ("a write over the maximum", header(CMD_WRITE, 0, 0, max + 1), &plain, fatal),
            ("a write of 4 GiB", header(CMD_WRITE, 0, 0, u32::MAX), &st, fatal),
            ("a write on a read-only export", header(CMD_WRITE, 0, 0, 512), &ro, EPERM),
            ("a write with DF", header(CMD_WRITE, CMD_FLAG_DF, 0, 512), &st, EINVAL),
            ("a write with FAST_ZERO", header(CMD_WRITE, CMD_FLAG_FAST_ZERO, 0, 512), &plain, EINVAL),
            ("a trim", header(CMD_TRIM, CMD_FLAG_FUA, 0, 1 << 20), &plain, 0),
            ("a trim larger than the maximum payload", header(CMD_TRIM, 0, 0, u32::MAX), &plain, 0),
            ("a trim past the end", header(CMD_TRIM, 0, SIZE - 1, 2), &plain, EINVAL),
            ("a trim on a read-only export", header(CMD_TRIM, 0, 0, 512), &ro, EPERM),
            ("a trim with NO_HOLE", header(CMD_TRIM, CMD_FLAG_NO_HOLE, 0, 512), &plain, EINVAL),
            ("write-zeroes with NO_HOLE and FAST_ZERO", header(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO, 0, 512), &plain, 0),
            ("write-zeroes with FAST_ZERO not advertised", header(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 512), &no_fast, EINVAL),
            ("write-zeroes past the end", header(CMD_WRITE_ZEROES, 0, SIZE, 1), &plain, ENOSPC),
            ("write-zeroes on a read-only export", header(CMD_WRITE_ZEROES, 0, 0, 512), &ro, EPERM),
            ("write-zeroes of 4 GiB", header(CMD_WRITE_ZEROES, 0, 0, u32::MAX), &plain, 0),
            ("a flush", header(CMD_FLUSH, 0, 0, 0), &plain, 0),
            ("a flush with FUA", header(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), &plain, 0),
            ("a flush with an offset", header(CMD_FLUSH, 0, 4096, 0), &plain, EINVAL),
            ("a flush with a length", header(CMD_FLUSH, 0, 0, 4096), &plain, EINVAL),
            ("a flush on a read-only export", header(CMD_FLUSH, 0, 0, 0), &ro, 0),
            ("a flush with REQ_ONE", header(CMD_FLUSH, CMD_FLAG_REQ_ONE, 0, 0), &st, EINVAL),
            ("a cache", header(CMD_CACHE, 0, 0, 1 << 20), &plain, 0),
            ("a cache past the end", header(CMD_CACHE, 0, SIZE, 1), &plain, EINVAL),
            ("a cache with NO_HOLE", header(CMD_CACHE, CMD_FLAG_NO_HOLE, 0, 512), &plain, EINVAL),
            ("block status", header(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 4096), &st, 0),
            ("block status larger than the maximum payload", header(CMD_BLOCK_STATUS, 0, 0, u32::MAX), &st, 0),
            ("block status without base:allocation", header(CMD_BLOCK_STATUS, 0, 0, 4096), &plain, EINVAL),
            ("block status of length 0", header(CMD_BLOCK_STATUS, 0, 0, 0), &st, EINVAL),
            ("block status past the end", header(CMD_BLOCK_STATUS, 0, SIZE, 512), &st, EINVAL),
            ("block status with DF", header(CMD_BLOCK_STATUS, CMD_FLAG_DF, 0, 512), &st, EINVAL),
            ("block status on a read-only export", header(CMD_BLOCK_STATUS, 0, 0, 512), &ro, 0),
            ("a read on a read-only export", header(CMD_READ, 0, 0, 512), &ro, 0),
            ("an unknown command", header(8, 0, 0, 0), &plain, EINVAL),
            ("an unknown command with a length", header(0xffff, 0, 0, 512), &plain, EINVAL),
            ("a disconnect with junk in its fields", header(CMD_DISC, 0xffff, 9, 9), &plain, 0),
        ];
        for (what, h, l, want) in table {
            assert_eq!(outcome(h, l), *want, "{what}: {:?}", validate(h, l));
        }
        // Not advertised: trim and write-zeroes on an export without them.
        let bare = limits(TF_HAS_FLAGS | TF_SEND_FLUSH, false, false);
        for typ in [CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE] {
            assert_eq!(outcome(&header(typ, 0, 0, 512), &bare), EINVAL, "{typ}");
        }
        assert_eq!(
            outcome(&header(CMD_WRITE, CMD_FLAG_FUA, 0, 512), &bare),
            EINVAL
        );
        let no_flush = limits(TF_HAS_FLAGS, false, false);
        assert_eq!(outcome(&header(CMD_FLUSH, 0, 0, 0), &no_flush), EINVAL);
    }

    #[test]
    fn a_bad_magic_ends_the_connection_whatever_the_rest_holds() {
        for typ in [CMD_READ, CMD_DISC, 99] {
            let mut h = header(typ, 0, 0, 512);
            h.magic = 0xdead_beef;
            match validate(&h, &limits(RW, true, true)) {
                Err(Invalid::Fatal(m)) => assert_eq!(m, "bad request magic 0xdeadbeef"),
                r => panic!("{r:?}"),
            }
        }
    }

    #[test]
    fn the_oversize_message_says_the_maximum_was_agreed_only_when_the_client_asked_for_it() {
        let mut l = limits(RW, true, false);
        let h = header(CMD_WRITE, 0, 0, MAX_BLOCK + 1);
        let Err(Invalid::Fatal(m)) = validate(&h, &l) else {
            panic!()
        };
        assert!(m.contains("did not ask for NBD_INFO_BLOCK_SIZE"), "{m}");
        assert!(!m.contains("agreed"), "{m}");
        l.neg.block_size = true;
        let Err(Invalid::Fatal(m)) = validate(&h, &l) else {
            panic!()
        };
        assert!(m.contains("maximum payload it agreed to"), "{m}");
        let Err(Invalid::Refuse { errno, msg }) = validate(&header(CMD_READ, 0, 0, !0), &l) else {
            panic!()
        };
        assert_eq!(errno, EOVERFLOW);
        assert!(msg.contains("it agreed to"), "{msg}");
    }

    #[test]
    fn a_header_is_parsed_big_endian_field_by_field() {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&0x0102u16.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        b[16..24].copy_from_slice(&0x0000_0001_0000_0200u64.to_be_bytes());
        b[24..28].copy_from_slice(&0xdead_0001u32.to_be_bytes());
        let h = Header::parse(&b);
        assert_eq!(
            h,
            Header {
                magic: REQUEST_MAGIC,
                flags: 0x0102,
                typ: CMD_WRITE,
                cookie: 0x1122_3344_5566_7788,
                offset: 0x0000_0001_0000_0200,
                length: 0xdead_0001,
            }
        );
        assert!(h.has_payload());
        for t in 0..=8u16 {
            assert_eq!(
                Command::from_wire(t).map(Command::wire),
                (t < 8).then_some(t)
            );
        }
    }
}
