//! The NBD wire protocol (NetworkBlockDevice/nbd, doc/proto.md): constants, the byte
//! encoding, and the client's fixed-newstyle handshake. Shared by whatever speaks NBD.

use super::timeout;
use crate::error::opt::TIMEOUT;
use std::io::{self, Read, Write};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const CLISERV_MAGIC_OLDSTYLE: u64 = 0x0000_4202_8186_1253;
pub const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) | 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) | 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

/// Information requests (`NBD_OPT_INFO`, `NBD_OPT_GO`).
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TF_HAS_FLAGS: u16 = 1 << 0;
pub const TF_READ_ONLY: u16 = 1 << 1;
pub const TF_SEND_FLUSH: u16 = 1 << 2;
pub const TF_SEND_FUA: u16 = 1 << 3;
pub const TF_SEND_TRIM: u16 = 1 << 5;
pub const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TF_SEND_DF: u16 = 1 << 7;
pub const TF_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TF_SEND_CACHE: u16 = 1 << 10;
pub const TF_SEND_FAST_ZERO: u16 = 1 << 11;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// The `base:allocation` metadata context and its descriptor flags.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// Error values on the wire (Linux errno numbers, the ones the protocol names).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// An I/O error with what was being done, a timeout named as such (`--timeout`).
pub fn ctx(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    let kind = if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut
    } else {
        e.kind()
    };
    let msg = if kind == io::ErrorKind::TimedOut {
        format!("{what}: no answer within {:?} ({TIMEOUT})", timeout())
    } else {
        format!("{what}: {e}")
    };
    io::Error::new(kind, msg)
}

/// A byte stream a handshake or transmission runs over (TCP, Unix socket, a test pair).
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub fn rd<const N: usize>(s: &mut dyn Stream) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

pub fn rd_u16(s: &mut dyn Stream) -> io::Result<u16> {
    Ok(u16::from_be_bytes(rd::<2>(s)?))
}
pub fn rd_u32(s: &mut dyn Stream) -> io::Result<u32> {
    Ok(u32::from_be_bytes(rd::<4>(s)?))
}
pub fn rd_u64(s: &mut dyn Stream) -> io::Result<u64> {
    Ok(u64::from_be_bytes(rd::<8>(s)?))
}

pub fn proto(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Text for an option error reply.
pub fn rep_err_text(t: u32) -> &'static str {
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
pub struct Export {
    pub size: u64,
    pub flags: u16,
    pub max_block: Option<u32>,
}

pub fn send_option(s: &mut dyn Stream, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)?;
    s.flush()
}

/// The fixed-newstyle handshake, up to the start of the transmission phase.
pub fn handshake(s: &mut dyn Stream, export: &str) -> io::Result<Export> {
    let no_zeroes = greet(s)?;
    go(s, export, no_zeroes)
}

/// `NBD_OPT_STARTTLS`: `Ok` once the server acknowledged it (the TLS handshake is next). A
/// server that refuses it gets no clear-text session: the caller asked for TLS.
pub fn starttls(s: &mut dyn Stream) -> io::Result<()> {
    send_option(s, OPT_STARTTLS, &[])?;
    if rd_u64(s)? != REPLY_MAGIC_OPT {
        return Err(proto("bad option reply magic".into()));
    }
    let opt = rd_u32(s)?;
    let typ = rd_u32(s)?;
    let len = rd_u32(s)? as usize;
    if opt != OPT_STARTTLS || len > 64 * 1024 {
        return Err(proto(format!(
            "unexpected reply to NBD_OPT_STARTTLS (option {opt}, {len} bytes)"
        )));
    }
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    if typ == REP_ACK {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&data);
    Err(crate::tls::refused(format!(
        "the server does not offer TLS ({}{}); serve the export with TLS, or attach it as nbd:// to go without",
        rep_err_text(typ),
        if msg.is_empty() { String::new() } else { format!(": {msg}") }
    )))
}

/// The server's greeting, and the client's flags: whether the server omits the zeroes.
pub fn greet(s: &mut dyn Stream) -> io::Result<bool> {
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
    Ok(no_zeroes)
}

/// `NBD_OPT_GO` for `export` (or `NBD_OPT_EXPORT_NAME` with an older server).
pub fn go(s: &mut dyn Stream, export: &str, no_zeroes: bool) -> io::Result<Export> {
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
                    "export '{export}': {}{}{}",
                    rep_err_text(t),
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(" ({msg})")
                    },
                    if t == REP_ERR_TLS_REQD {
                        "; attach it as nbds:// (with --tls-ca FILE, and --tls-cert/--tls-key if it asks for a client certificate)"
                    } else {
                        ""
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
pub fn nbd_error(code: u32) -> io::Error {
    io::Error::from_raw_os_error(code as i32)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A scripted server on one end of a socket pair.
    pub(in crate::device::nbd) fn pair() -> (UnixStream, UnixStream) {
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
}
