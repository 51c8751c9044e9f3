//! The server side of the NBD fixed-newstyle handshake: option haggling up to the
//! transmission phase (proto.md "Option haggling"), over any byte stream.

use crate::device::nbd::proto::*;
use std::io::{self, Read};

/// Block sizes advertised: minimum, preferred, maximum (the largest request accepted).
pub const MIN_BLOCK: u32 = 512;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAX_BLOCK: u32 = 32 << 20;

/// Option data longer than this is discarded and refused; far longer ends the connection.
const MAX_OPTION: u32 = 64 << 10;
const MAX_DISCARD: u32 = 1 << 20;

/// Meta context id of `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// The longest string the protocol allows (export names, error messages): 4096 bytes.
pub const MAX_STRING: usize = 4096;

/// The description every client is shown (`NBD_OPT_LIST`, `NBD_INFO_DESCRIPTION`): any
/// client may ask before it is authenticated, so it names nothing on the server.
pub const EXPORT_DESCRIPTION: &str = "a mirror served by mirrorctl";

/// What the export is.
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub flags: u16,
}

/// What the client and the server agreed on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub structured: bool,
    pub base_allocation: bool,
    /// The client asked for `NBD_INFO_BLOCK_SIZE` in its `NBD_OPT_GO`, so it must keep to
    /// the sizes it was sent (proto.md "Size constraints").
    pub block_size: bool,
}

/// The transmission flags a client is sent: the export's, and `NBD_FLAG_SEND_DF` once
/// structured replies are on (a read is always answered in one chunk).
pub fn transmission_flags(export: u16, neg: &Negotiated) -> u16 {
    if neg.structured {
        export | TF_SEND_DF
    } else {
        export
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate_utf8(s: &[u8], max: usize) -> &[u8] {
    if s.len() <= max {
        return s;
    }
    let mut n = max;
    // Back over continuation bytes (10xxxxxx) to the start of a character.
    while n > 0 && s[n] & 0xc0 == 0x80 {
        n -= 1;
    }
    &s[..n]
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Transmission starts.
    Go(Negotiated),
    /// The client ended the handshake (`NBD_OPT_ABORT`).
    Aborted,
    /// `NBD_OPT_STARTTLS` was acknowledged: the TLS handshake comes next.
    StartTls,
}

fn reply(s: &mut dyn Stream, opt: u32, typ: u32, data: &[u8]) -> io::Result<()> {
    // An error reply's data is a message, a string the protocol caps at 4096 bytes.
    let data = if typ & (1 << 31) != 0 {
        truncate_utf8(data, MAX_STRING)
    } else {
        data
    };
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&typ.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)?;
    s.flush()
}

/// Reads big-endian fields from an option's data; `None` when it runs short.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string32(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

/// Parses `NBD_OPT_INFO`/`NBD_OPT_GO` data: export name and information requests.
fn parse_info(d: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut f = Fields(d);
    let name = f.string32()?;
    let n = f.u16()?;
    let reqs = (0..n).map(|_| f.u16()).collect::<Option<Vec<_>>>()?;
    f.0.is_empty().then_some((name, reqs))
}

/// Parses meta-context option data: export name and queries.
fn parse_meta(d: &[u8]) -> Option<(String, Vec<String>)> {
    let mut f = Fields(d);
    let name = f.string32()?;
    let n = f.u32()?;
    let qs = (0..n).map(|_| f.string32()).collect::<Option<Vec<_>>>()?;
    f.0.is_empty().then_some((name, qs))
}

fn meta_context_reply(id: u32, name: &str) -> Vec<u8> {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d
}

/// Whether the server offers TLS, and insists on it (proto.md "TLS support"); `serve --tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsPolicy {
    /// No TLS offered (NBD_OPT_STARTTLS is answered "unsupported")
    Off,
    /// TLS offered; clients may connect without it
    On,
    /// Every client must start TLS: other options get NBD_REP_ERR_TLS_REQD until it has
    Require,
}

/// Runs the handshake as the server, without TLS. An `Err` ends the connection (the client
/// broke the protocol or went away); the message says why.
pub fn negotiate(s: &mut dyn Stream, ex: &ExportInfo) -> io::Result<Outcome> {
    let no_zeroes = greet(s)?;
    haggle(s, ex, TlsPolicy::Off, false, no_zeroes, &mut false)
}

/// The server's greeting and the client's flags: whether the client asked for no zeroes.
pub fn greet(s: &mut dyn Stream) -> io::Result<bool> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    s.flush()?;
    let cflags = rd_u32(s)?;
    if cflags & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
        return Err(proto(format!("unknown client flags {cflags:#x}")));
    }
    Ok(cflags & u32::from(FLAG_NO_ZEROES) != 0)
}

/// Option haggling, up to the transmission phase or a `NBD_OPT_STARTTLS` the server
/// accepted ([`Outcome::StartTls`]: the caller starts TLS, then haggles again with
/// `in_tls`; what was agreed before is forgotten, as it was agreed in clear text).
/// `told_tls` is set once the client was told it must start TLS.
pub fn haggle(
    s: &mut dyn Stream,
    ex: &ExportInfo,
    tls: TlsPolicy,
    in_tls: bool,
    no_zeroes: bool,
    told_tls: &mut bool,
) -> io::Result<Outcome> {
    let tls_required = tls == TlsPolicy::Require && !in_tls;
    let mut neg = Negotiated::default();
    loop {
        let magic = rd_u64(s)?;
        if magic != IHAVEOPT {
            return Err(proto(format!("bad option magic {magic:#x}")));
        }
        let opt = rd_u32(s)?;
        let len = rd_u32(s)?;
        if opt == OPT_EXPORT_NAME && len as usize > MAX_STRING {
            // That option has no reply but the export: the connection ends (proto.md:
            // "the server MUST terminate the session" where it cannot serve the name).
            return Err(proto(format!(
                "NBD_OPT_EXPORT_NAME with a {len}-byte name, over the protocol's \
                 {MAX_STRING}-byte limit on strings"
            )));
        }
        if len > MAX_OPTION {
            if len > MAX_DISCARD {
                return Err(proto(format!("option {opt} with {len} bytes of data")));
            }
            let mut rest = Read::take(&mut *s, u64::from(len));
            io::copy(&mut rest, &mut io::sink())?;
            reply(s, opt, REP_ERR_TOO_BIG, b"option data too long")?;
            continue;
        }
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d)?;
        if opt == OPT_STARTTLS {
            if tls == TlsPolicy::Off {
                reply(s, opt, REP_ERR_UNSUP, b"this server has no TLS certificate")?;
            } else if in_tls {
                reply(s, opt, REP_ERR_INVALID, b"TLS is on already")?;
            } else if !d.is_empty() {
                reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data")?;
            } else {
                reply(s, opt, REP_ACK, &[])?;
                return Ok(Outcome::StartTls);
            }
            continue;
        }
        if tls_required && opt != OPT_ABORT {
            if opt == OPT_EXPORT_NAME {
                // This option has no error reply: the connection ends.
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "asked for the export without starting TLS, which this server requires",
                ));
            }
            *told_tls = true;
            reply(
                s,
                opt,
                REP_ERR_TLS_REQD,
                b"this server requires TLS: connect with nbds:// or nbds+unix://",
            )?;
            continue;
        }
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&d);
                if name != ex.name {
                    // This option has no error reply: the connection ends.
                    return Err(proto(format!("asked for unknown export '{name}'")));
                }
                let mut m = ex.size.to_be_bytes().to_vec();
                m.extend_from_slice(&transmission_flags(ex.flags, &neg).to_be_bytes());
                if !no_zeroes {
                    m.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&m)?;
                s.flush()?;
                return Ok(Outcome::Go(neg));
            }
            OPT_ABORT => {
                // The client may have closed already; the ACK is a courtesy.
                let _ = reply(s, opt, REP_ACK, &[]);
                return Ok(Outcome::Aborted);
            }
            OPT_LIST => {
                if !d.is_empty() {
                    reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                    continue;
                }
                let mut m = (ex.name.len() as u32).to_be_bytes().to_vec();
                m.extend_from_slice(ex.name.as_bytes());
                m.extend_from_slice(ex.description.as_bytes());
                reply(s, opt, REP_SERVER, &m)?;
                reply(s, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, reqs)) = parse_info(&d) else {
                    reply(s, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO data")?;
                    continue;
                };
                if name != ex.name {
                    let msg = format!("no export '{name}' (this server has '{}')", ex.name);
                    reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&ex.size.to_be_bytes());
                info.extend_from_slice(&transmission_flags(ex.flags, &neg).to_be_bytes());
                reply(s, opt, REP_INFO, &info)?;
                if reqs.contains(&INFO_NAME) {
                    let mut m = INFO_NAME.to_be_bytes().to_vec();
                    m.extend_from_slice(ex.name.as_bytes());
                    reply(s, opt, REP_INFO, &m)?;
                }
                if reqs.contains(&INFO_DESCRIPTION) {
                    let mut m = INFO_DESCRIPTION.to_be_bytes().to_vec();
                    m.extend_from_slice(ex.description.as_bytes());
                    reply(s, opt, REP_INFO, &m)?;
                }
                // Sent whether asked or not: the maximum is a limit clients should know.
                let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_BLOCK] {
                    bs.extend_from_slice(&v.to_be_bytes());
                }
                reply(s, opt, REP_INFO, &bs)?;
                reply(s, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    neg.block_size = reqs.contains(&INFO_BLOCK_SIZE);
                    return Ok(Outcome::Go(neg));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !d.is_empty() {
                    reply(
                        s,
                        opt,
                        REP_ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                    continue;
                }
                neg.structured = true;
                reply(s, opt, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = opt == OPT_SET_META_CONTEXT;
                let Some((name, queries)) = parse_meta(&d) else {
                    reply(s, opt, REP_ERR_INVALID, b"malformed meta context data")?;
                    continue;
                };
                if set && !neg.structured {
                    reply(
                        s,
                        opt,
                        REP_ERR_INVALID,
                        b"negotiate NBD_OPT_STRUCTURED_REPLY first",
                    )?;
                    continue;
                }
                if name != ex.name {
                    let msg = format!("no export '{name}' (this server has '{}')", ex.name);
                    reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                let matches = |q: &str| {
                    if set {
                        q == BASE_ALLOCATION
                    } else {
                        q == "base:" || q == BASE_ALLOCATION
                    }
                };
                let found = if queries.is_empty() {
                    !set
                } else {
                    queries.iter().any(|q| matches(q))
                };
                if found {
                    let id = if set { BASE_ALLOCATION_ID } else { 0 };
                    reply(
                        s,
                        opt,
                        REP_META_CONTEXT,
                        &meta_context_reply(id, BASE_ALLOCATION),
                    )?;
                }
                if set {
                    neg.base_allocation = found;
                }
                reply(s, opt, REP_ACK, &[])?;
            }
            _ => {
                // Extended headers (qemu 10 asks first) and anything unknown:
                // not supported, and the next option is still read.
                reply(s, opt, REP_ERR_UNSUP, &[])?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn export() -> ExportInfo {
        ExportInfo {
            name: String::new(),
            description: "test".into(),
            size: 1 << 20,
            flags: TF_HAS_FLAGS | TF_SEND_FLUSH,
        }
    }

    /// A scripted client: runs the server on one end, returns the other end after the
    /// greeting and the client flags.
    fn start(flags: u32) -> (UnixStream, std::thread::JoinHandle<io::Result<Outcome>>) {
        let (mut c, mut srv) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || negotiate(&mut srv, &export()));
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], &NBDMAGIC.to_be_bytes());
        assert_eq!(&hello[8..16], &IHAVEOPT.to_be_bytes());
        c.write_all(&flags.to_be_bytes()).unwrap();
        (c, h)
    }

    fn send(c: &mut UnixStream, opt: u32, d: &[u8]) {
        send_option(c, opt, d).unwrap();
    }

    /// (option, reply type, data).
    fn read_reply(c: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        c.read_exact(&mut h).unwrap();
        assert_eq!(&h[..8], &REPLY_MAGIC_OPT.to_be_bytes());
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        c.read_exact(&mut d).unwrap();
        (opt, typ, d)
    }

    fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            d.extend_from_slice(&r.to_be_bytes());
        }
        d
    }

    fn meta_data(name: &str, qs: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(qs.len() as u32).to_be_bytes());
        for q in qs {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    #[test]
    fn unknown_options_get_unsup_and_the_next_option_is_still_read() {
        let (mut c, h) = start(3);
        send(&mut c, OPT_EXTENDED_HEADERS, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ERR_UNSUP);
        send(&mut c, 99, b"junk data");
        assert_eq!(read_reply(&mut c), (99, REP_ERR_UNSUP, vec![]));
        send(&mut c, OPT_GO, &info_data("", &[INFO_BLOCK_SIZE]));
        let (_, t, d) = read_reply(&mut c);
        assert_eq!(t, REP_INFO);
        assert_eq!(&d[..2], &INFO_EXPORT.to_be_bytes());
        assert_eq!(&d[2..10], &(1u64 << 20).to_be_bytes());
        let (_, t, d) = read_reply(&mut c);
        assert_eq!(t, REP_INFO);
        assert_eq!(&d[..2], &INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(&d[10..14], &MAX_BLOCK.to_be_bytes());
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        // It asked for the block sizes in its NBD_OPT_GO, so it keeps to them.
        assert_eq!(
            h.join().unwrap().unwrap(),
            Outcome::Go(Negotiated {
                block_size: true,
                ..Negotiated::default()
            })
        );
    }

    #[test]
    fn a_wrong_export_name_is_refused_by_go_and_ends_export_name() {
        let (mut c, h) = start(1);
        send(&mut c, OPT_INFO, &info_data("other", &[]));
        let (_, t, d) = read_reply(&mut c);
        assert_eq!(t, REP_ERR_UNKNOWN);
        assert!(String::from_utf8_lossy(&d).contains("other"));
        send(&mut c, OPT_EXPORT_NAME, b"other");
        let e = h.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("unknown export 'other'"), "{e}");
    }

    #[test]
    fn export_name_sends_size_flags_and_zero_padding_unless_no_zeroes() {
        for (flags, pad) in [(1u32, 124usize), (3, 0)] {
            let (mut c, h) = start(flags);
            send(&mut c, OPT_EXPORT_NAME, b"");
            let mut b = vec![0u8; 10 + pad];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b[..8], &(1u64 << 20).to_be_bytes());
            assert!(matches!(h.join().unwrap().unwrap(), Outcome::Go(_)));
            // Nothing more than that was sent (the server's end is closed by now).
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{} more bytes", rest.len());
        }
    }

    #[test]
    fn list_meta_context_and_set_need_structured_replies_and_select_base_allocation() {
        let (mut c, h) = start(3);
        send(&mut c, OPT_LIST, &[]);
        let (_, t, d) = read_reply(&mut c);
        assert_eq!(t, REP_SERVER);
        assert_eq!(&d[..4], &0u32.to_be_bytes());
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        send(&mut c, OPT_LIST_META_CONTEXT, &meta_data("", &[]));
        let (_, t, d) = read_reply(&mut c);
        assert_eq!((t, &d[4..]), (REP_META_CONTEXT, BASE_ALLOCATION.as_bytes()));
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        send(
            &mut c,
            OPT_SET_META_CONTEXT,
            &meta_data("", &[BASE_ALLOCATION]),
        );
        assert_eq!(read_reply(&mut c).1, REP_ERR_INVALID);
        send(&mut c, OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        send(
            &mut c,
            OPT_SET_META_CONTEXT,
            &meta_data("", &["qemu:dirty-bitmap:x", BASE_ALLOCATION]),
        );
        let (_, t, d) = read_reply(&mut c);
        assert_eq!(t, REP_META_CONTEXT);
        assert_eq!(&d[..4], &BASE_ALLOCATION_ID.to_be_bytes());
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        send(&mut c, OPT_GO, &info_data("", &[]));
        while read_reply(&mut c).1 != REP_ACK {}
        assert_eq!(
            h.join().unwrap().unwrap(),
            Outcome::Go(Negotiated {
                structured: true,
                base_allocation: true,
                block_size: false,
            })
        );
    }

    #[test]
    fn bad_magic_unknown_client_flags_and_a_huge_option_end_the_connection() {
        let (mut c, h) = start(1 << 7);
        drop(c.write_all(&[0; 8]));
        assert!(h
            .join()
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("client flags"));
        let (mut c, h) = start(1);
        c.write_all(&0x1234u64.to_be_bytes()).unwrap();
        c.write_all(&[0u8; 8]).unwrap();
        assert!(h
            .join()
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("bad option magic"));
        let (mut c, h) = start(1);
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&OPT_GO.to_be_bytes());
        m.extend_from_slice(&(1u32 << 30).to_be_bytes());
        c.write_all(&m).unwrap();
        assert!(h
            .join()
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("bytes of data"));
    }

    #[test]
    fn malformed_go_data_is_invalid_and_abort_is_acknowledged() {
        let (mut c, h) = start(1);
        send(&mut c, OPT_GO, &[0, 0, 0, 9, b'x']);
        assert_eq!(read_reply(&mut c).1, REP_ERR_INVALID);
        send(&mut c, OPT_ABORT, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        assert_eq!(h.join().unwrap().unwrap(), Outcome::Aborted);
    }

    /// The server haggling under `tls` (greeting done), and whether it told the client to
    /// start TLS.
    fn start_tls(
        tls: TlsPolicy,
        in_tls: bool,
    ) -> (
        UnixStream,
        std::thread::JoinHandle<(io::Result<Outcome>, bool)>,
    ) {
        let (c, mut srv) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut told = false;
            let r = haggle(&mut srv, &export(), tls, in_tls, true, &mut told);
            (r, told)
        });
        (c, h)
    }

    #[test]
    fn with_tls_required_every_option_but_starttls_and_abort_gets_tls_reqd_until_tls_is_on() {
        let (mut c, h) = start_tls(TlsPolicy::Require, false);
        for opt in [OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY, 99] {
            let d = if opt == OPT_INFO || opt == OPT_GO {
                info_data("", &[])
            } else {
                vec![]
            };
            send(&mut c, opt, &d);
            assert_eq!(read_reply(&mut c).1, REP_ERR_TLS_REQD, "option {opt}");
        }
        send(&mut c, OPT_STARTTLS, b"x");
        assert_eq!(read_reply(&mut c).1, REP_ERR_INVALID);
        send(&mut c, OPT_STARTTLS, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        let (r, told) = h.join().unwrap();
        assert_eq!(r.unwrap(), Outcome::StartTls);
        assert!(told);
        // Export-name without TLS has no error reply: the connection ends, refused.
        let (mut c, h) = start_tls(TlsPolicy::Require, false);
        send(&mut c, OPT_EXPORT_NAME, b"");
        let e = h.join().unwrap().0.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }

    #[test]
    fn inside_tls_options_are_served_and_a_second_starttls_is_invalid() {
        let (mut c, h) = start_tls(TlsPolicy::Require, true);
        send(&mut c, OPT_STARTTLS, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ERR_INVALID);
        send(&mut c, OPT_GO, &info_data("", &[]));
        while read_reply(&mut c).1 != REP_ACK {}
        let (r, told) = h.join().unwrap();
        assert!(matches!(r.unwrap(), Outcome::Go(_)));
        assert!(!told, "TLS_REQD is never sent once TLS is on");
    }

    #[test]
    fn tls_on_serves_clear_text_clients_and_no_certificate_means_starttls_is_unsupported() {
        let (mut c, h) = start_tls(TlsPolicy::On, false);
        send(&mut c, OPT_GO, &info_data("", &[]));
        while read_reply(&mut c).1 != REP_ACK {}
        assert!(matches!(h.join().unwrap().0.unwrap(), Outcome::Go(_)));
        let (mut c, h) = start_tls(TlsPolicy::Off, false);
        send(&mut c, OPT_STARTTLS, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ERR_UNSUP);
        send(&mut c, OPT_ABORT, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        assert_eq!(h.join().unwrap().0.unwrap(), Outcome::Aborted);
    }

    #[test]
    fn error_replies_carry_at_most_4096_bytes_of_message_cut_at_a_character() {
        let (mut c, h) = start(3);
        // A 10,000-byte name of 2-byte characters, echoed in the error message.
        let name = "é".repeat(5000);
        send(&mut c, OPT_INFO, &info_data(&name, &[]));
        let (_, t, d) = read_reply(&mut c);
        assert_eq!(t, REP_ERR_UNKNOWN);
        assert!(d.len() <= MAX_STRING && d.len() > 4000, "{} bytes", d.len());
        assert!(std::str::from_utf8(&d).is_ok(), "cut inside a character");
        send(&mut c, OPT_ABORT, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        assert_eq!(h.join().unwrap().unwrap(), Outcome::Aborted);
        assert_eq!(truncate_utf8("aé".as_bytes(), 2), b"a");
        assert_eq!(truncate_utf8(b"abc", 3), b"abc");
    }

    #[test]
    fn an_export_name_over_4096_bytes_ends_the_connection_without_any_reply() {
        let (mut c, h) = start(3);
        send(&mut c, OPT_EXPORT_NAME, &[b'x'; MAX_STRING + 1]);
        let e = h.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("4097-byte name"), "{e}");
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{} bytes sent back", rest.len());
    }

    #[test]
    fn df_is_advertised_only_once_structured_replies_are_on_and_the_description_is_fixed() {
        let (mut c, h) = start(3);
        send(&mut c, OPT_INFO, &info_data("", &[INFO_DESCRIPTION]));
        let (_, t, d) = read_reply(&mut c);
        assert_eq!(t, REP_INFO);
        let flags = u16::from_be_bytes([d[10], d[11]]);
        assert_eq!(flags & TF_SEND_DF, 0);
        let (_, _, d) = read_reply(&mut c);
        assert_eq!(&d[2..], b"test");
        assert_eq!(read_reply(&mut c).1, REP_INFO);
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        send(&mut c, OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(read_reply(&mut c).1, REP_ACK);
        send(&mut c, OPT_GO, &info_data("", &[]));
        let (_, _, d) = read_reply(&mut c);
        let flags = u16::from_be_bytes([d[10], d[11]]);
        assert_eq!(flags, TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_DF);
        while read_reply(&mut c).1 != REP_ACK {}
        let neg = match h.join().unwrap().unwrap() {
            Outcome::Go(n) => n,
            o => panic!("{o:?}"),
        };
        assert!(neg.structured && !neg.block_size);
        assert!(!EXPORT_DESCRIPTION.contains('/'));
    }

    #[test]
    fn a_client_that_hangs_up_mid_handshake_is_an_error_not_a_hang() {
        let (c, h) = start(1);
        drop(c);
        assert!(h.join().unwrap().is_err());
    }
}
