//! `export`: one image served raw over NBD (header included), the secondary side of a
//! two-machine mirror. Owns which images may be exported, the header watch after writes to
//! the superblock area, and the refusal once the image becomes a primary.
//!
//! Rules (tagged where they are kept):
//! - P8 An image is exported only while its header is a secondary, a detached image or none
//!   (blank: the primary's `attach` decides, with its own checks), or with `--rejoin` a
//!   primary (a former primary the mirror's current primary takes back with `attach`, P3);
//!   a primary without `--rejoin` or a damaged header is refused before any client
//!   connects. Otherwise a running mirror's primary could be handed to another machine as
//!   a leg by mistake.
//! - P9 After every write, zero or trim that touches the superblock area the header is read
//!   back before the request is answered, no other request running meanwhile (such a write
//!   waits for the requests in progress and the next ones wait for it); once it says primary (with `--rejoin`: after it
//!   was a secondary again), every request of every other connection, and of every later
//!   one, fails with ESHUTDOWN, and the export stops when the connection that promoted it
//!   ends. Otherwise a former primary still connected to it as a leg would go on writing
//!   into the new primary (split brain).

use crate::device::Device;
use crate::engine::serve::{Failure, FailureKind, Mutation, Served};
use crate::error::{Error, Result};
use crate::format::layout::SB_COPY_SIZE;
use crate::format::Role;
use crate::meta::image::{Image, ReadError};
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// The bytes that hold the header (both superblock copies): a write there is followed by
/// a look at the header (P9).
pub const HEADER_AREA: Range<u64> = 0..2 * SB_COPY_SIZE;

/// Stops the export's server, saying why (given by the front end).
pub type StopFn = Box<dyn Fn(&str) + Send + Sync>;

/// What an image's header says, as the export sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// No mirrorctl header.
    Blank,
    Secondary,
    Primary {
        mirror: String,
    },
    Detached,
    /// Neither copy can be used (the text says why).
    Damaged(String),
}

impl Header {
    /// The header of a read; an I/O error stays one.
    pub fn of(r: std::result::Result<Image, ReadError>) -> io::Result<Header> {
        Ok(match r {
            Ok(img) => match img.sb.role {
                Role::Secondary => Header::Secondary,
                Role::Detached => Header::Detached,
                Role::Primary => Header::Primary {
                    mirror: crate::engine::uuid_str(&img.sb.mirror_uuid),
                },
            },
            Err(ReadError::NotMirrorctl) => Header::Blank,
            Err(ReadError::Io(e)) => return Err(e),
            Err(e) => Header::Damaged(e.to_string()),
        })
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Header::Blank => "no mirrorctl header (blank)",
            Header::Secondary => "a secondary",
            Header::Primary { .. } => "a primary",
            Header::Detached => "a detached secondary",
            Header::Damaged(_) => "a damaged header",
        }
    }
}

/// Where an export stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A secondary, blank or detached image: watched for becoming a primary.
    Watching,
    /// A former primary exported with `--rejoin`, not yet a secondary again.
    Rejoining,
    /// A write on connection `by` made the image a primary (P9).
    Promoted { by: u64 },
}

/// P8: whether an image with header `h` may be exported, and how it is watched then; the
/// refusal's reason otherwise (`name` is the image as the admin gave it).
pub fn admit(h: &Header, rejoin: bool, name: &str) -> std::result::Result<Phase, String> {
    match h {
        Header::Blank | Header::Secondary | Header::Detached => Ok(Phase::Watching),
        Header::Primary { .. } if rejoin => Ok(Phase::Rejoining),
        Header::Primary { mirror } => Err(format!(
            "{name} is a primary (of mirror {mirror}): an export is a secondary's side of a mirror; serve it with `mirrorctl serve {name}`, or, if it is a former primary the mirror's current primary is to take back as a secondary (`mirrorctl attach PRIMARY nbds://HOST:PORT/NAME` there), export it with --rejoin"
        )),
        Header::Damaged(why) => Err(format!(
            "{name} holds a damaged mirrorctl header ({why}); nothing was exported (`mirrorctl status {name}` tells more; the primary's `attach --force` can overwrite it once exported by another means)"
        )),
    }
}

/// P9: the phase after a write on connection `client` left the header `h`.
pub fn after_header_write(p: Phase, h: &Header, client: u64) -> Phase {
    match (p, h) {
        (Phase::Promoted { .. }, _) => p,
        (Phase::Watching, Header::Primary { .. }) => Phase::Promoted { by: client },
        (Phase::Watching, _) => Phase::Watching,
        // The mirror's primary took it back (attach rewrote it as its secondary).
        (Phase::Rejoining, Header::Secondary) => Phase::Watching,
        (Phase::Rejoining, _) => Phase::Rejoining,
    }
}

/// P9: whether a request of connection `client` is refused in phase `p`.
pub fn refused(p: Phase, client: u64) -> bool {
    matches!(p, Phase::Promoted { by } if by != client)
}

/// Whether `r` touches the header area.
pub fn touches_header(r: &Range<u64>) -> bool {
    r.start < HEADER_AREA.end && r.end > HEADER_AREA.start && !r.is_empty()
}

/// `(length, hole)` runs covering `off..off+len`, from the data extents a device reported
/// (`None`: it cannot tell, all data).
pub fn runs(off: u64, len: u64, data: Option<Vec<Range<u64>>>) -> Vec<(u64, bool)> {
    let Some(data) = data else {
        return vec![(len, false)];
    };
    let end = off + len;
    let mut out = Vec::new();
    let mut pos = off;
    for r in data {
        let (s, e) = (r.start.max(pos), r.end.min(end));
        if e <= s {
            continue;
        }
        if s > pos {
            out.push((s - pos, true));
        }
        out.push((e - s, false));
        pos = e;
    }
    if pos < end {
        out.push((end - pos, true));
    }
    out
}

/// Counts for the log line at the stop.
#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub connections: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub reads: u64,
    pub bytes_read: u64,
    pub flushes: u64,
}

/// An exported image: what the NBD front end serves for `mirrorctl export`.
pub struct Export {
    dev: Arc<dyn Device>,
    name: String,
    fast_zero: bool,
    phase: Mutex<Phase>,
    /// Requests hold it shared; a write into the header area holds it alone, through its
    /// read-back (P9).
    order: RwLock<()>,
    stop: Mutex<Option<StopFn>>,
    log: Box<dyn Fn(&str) + Send + Sync>,
    connections: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    flushes: AtomicU64,
}

impl Export {
    /// Reads the header of `dev` (opened for writing and locked by the caller) and admits
    /// it (P8): invalid (exit 2) if refused, a primary I/O error (exit 4) if unreadable.
    pub fn open(
        dev: Arc<dyn Device>,
        name: &str,
        rejoin: bool,
        log: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Result<(Export, Header)> {
        let h = Header::of(Image::read(dev.clone()))
            .map_err(|e| Error::primary_io(format!("reading the header of {name}"), &e))?;
        // P8: refused before any client connects.
        let phase = admit(&h, rejoin, name).map_err(Error::invalid)?;
        Ok((
            Export {
                fast_zero: dev.zero_is_fast(),
                dev,
                name: name.to_string(),
                phase: Mutex::new(phase),
                order: RwLock::new(()),
                stop: Mutex::new(None),
                log,
                connections: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
            },
            h,
        ))
    }

    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counts(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            connections: l(&self.connections),
            writes: l(&self.writes),
            bytes_written: l(&self.bytes_written),
            reads: l(&self.reads),
            bytes_read: l(&self.bytes_read),
            flushes: l(&self.flushes),
        }
    }

    /// Syncs the image (the clean stop).
    pub fn sync(&self) -> io::Result<()> {
        self.dev.sync()
    }

    /// P9: a request's turn (shared with every other request but a header write), or its
    /// refusal if another connection promoted the image.
    fn gate(&self, client: u64) -> Served<RwLockReadGuard<'_, ()>> {
        let turn = self.order.read().unwrap_or_else(|p| p.into_inner());
        self.refuse(client)?;
        Ok(turn)
    }

    /// P9: refuses every request of a connection other than the one that promoted it.
    fn refuse(&self, client: u64) -> Served<()> {
        if refused(self.phase(), client) {
            return Err(Failure::new(
                FailureKind::ShutDown,
                format!(
                    "{} became a primary through another connection: this export serves nothing more (serve it with `mirrorctl serve {}`)",
                    self.name, self.name
                ),
            ));
        }
        Ok(())
    }

    /// P9: the header read back after a write on `client` touched it.
    fn watch(&self, client: u64) {
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let h = match Header::of(Image::read(self.dev.clone())) {
            Ok(h) => h,
            Err(e) => {
                (self.log)(&format!(
                    "warning: reading the header back after client {client} wrote it: {e}"
                ));
                return;
            }
        };
        let next = after_header_write(*p, &h, client);
        if next != *p {
            (self.log)(&match next {
                Phase::Promoted { by } => format!(
                    "warning: {} became a primary (promoted through client {by}): every request of any other connection now fails with ESHUTDOWN, and the export stops once client {by} disconnects; then `mirrorctl serve {}` serves it",
                    self.name, self.name
                ),
                _ => format!(
                    "{} is a secondary again (taken back by the mirror's primary): it is refused once it becomes a primary",
                    self.name
                ),
            });
        }
        *p = next;
    }
}

/// What the NBD front end calls (`nbd_server::Backend` for an export delegates here).
impl Export {
    pub fn size(&self) -> u64 {
        self.dev.len()
    }
    pub fn read_only(&self) -> bool {
        false
    }
    pub fn fast_zero(&self) -> bool {
        self.fast_zero
    }
    pub fn serving(&self) -> String {
        format!(
            "{} bytes, the whole image raw, header included; {}",
            self.dev.len(),
            match self.phase() {
                Phase::Rejoining =>
                    "a former primary offered for the mirror's primary to take back (--rejoin)",
                _ => "refused once it becomes a primary",
            }
        )
    }
    pub fn stop_work(&self) -> &'static str {
        "syncing the image"
    }
    pub fn hard_stop(&self) -> String {
        "stopping at once, without the clean stop: requests in flight get no reply and the image is not synced (the primary treats its leg as failed and resyncs what it may lack)".into()
    }
    pub fn on_stop(&self, stop: StopFn) {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
    }
    pub fn client_opened(&self, _client: u64) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }
    pub fn client_connected(&self, _client: u64, _what: &str) {}
    pub fn client_closed(&self, client: u64) {
        if self.phase() == (Phase::Promoted { by: client }) {
            // P9: the promoting connection is done; the image is served by path from now.
            if let Some(s) = &*self.stop.lock().unwrap_or_else(|p| p.into_inner()) {
                s(&format!(
                    "{} became a primary and the client that promoted it disconnected",
                    self.name
                ));
            }
        }
    }
    pub fn read(&self, client: u64, off: u64, buf: &mut [u8], direct: bool) -> Served<()> {
        let _turn = self.gate(client)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let r = if direct {
            self.dev.read_direct(buf, off)
        } else {
            self.dev.read_at(buf, off)
        };
        r.map_err(|e| Failure::io(format!("reading {} at offset {off}", self.name), &e))
    }
    pub fn read_ahead(&self, _client: u64, off: u64, len: u64) {
        let end = (off + len).min(self.dev.len());
        if off < end {
            self.dev.read_ahead(off, end - off);
        }
    }
    pub fn extents(&self, client: u64, off: u64, len: u64) -> Served<Vec<(u64, bool)>> {
        let _turn = self.gate(client)?;
        let data = self
            .dev
            .data_extents(off..off + len)
            .map_err(|e| Failure::io(format!("mapping {} at offset {off}", self.name), &e))?;
        Ok(runs(off, len, data))
    }
    pub fn ticket(&self, off: u64, len: u64) -> Range<u64> {
        off..off + len
    }
    pub fn cancel(&self, _t: Range<u64>) {}
    pub fn mutate(&self, client: u64, t: Range<u64>, m: Mutation<'_>, fua: bool) -> Served<()> {
        let header = touches_header(&t);
        // P9: a header write runs alone, so that no request of another connection lands
        // after it unchecked.
        let (_shared, _alone) = if header {
            let alone = self.order.write().unwrap_or_else(|p| p.into_inner());
            self.refuse(client)?;
            (None, Some(alone))
        } else {
            (Some(self.gate(client)?), None)
        };
        let what = match m {
            Mutation::Write(_) => "writing",
            Mutation::Zero { .. } => "zeroing",
        };
        m.apply(&*self.dev, t.start)
            .map_err(|e| Failure::io(format!("{what} {} at offset {}", self.name, t.start), &e))?;
        if fua {
            self.dev
                .sync()
                .map_err(|e| Failure::io(format!("syncing {} (FUA)", self.name), &e))?;
        }
        if let Mutation::Write(_) = m {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes_written.fetch_add(m.len(), Ordering::Relaxed);
        }
        if header {
            // P9: read back before the reply.
            self.watch(client);
        }
        Ok(())
    }
    pub fn flush(&self, client: u64) -> Served<()> {
        let _turn = self.gate(client)?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.dev
            .sync()
            .map_err(|e| Failure::io(format!("syncing {}", self.name), &e))
    }
    pub fn check_fast_zero(&self) -> Served<()> {
        if self.fast_zero {
            Ok(())
        } else {
            Err(Failure::new(
                FailureKind::Unsupported,
                format!("fast zeroing is not possible on {}", self.name),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> Header {
        Header::Primary { mirror: "m".into() }
    }

    #[test]
    fn a_secondary_a_blank_and_a_detached_image_are_exported_and_a_primary_only_with_rejoin() {
        for h in [Header::Blank, Header::Secondary, Header::Detached] {
            assert_eq!(admit(&h, false, "x"), Ok(Phase::Watching));
            assert_eq!(admit(&h, true, "x"), Ok(Phase::Watching));
        }
        let e = admit(&primary(), false, "/i").unwrap_err();
        assert!(
            e.contains("--rejoin") && e.contains("mirrorctl serve /i"),
            "{e}"
        );
        assert_eq!(admit(&primary(), true, "x"), Ok(Phase::Rejoining));
        let e = admit(&Header::Damaged("both copies bad".into()), true, "x").unwrap_err();
        assert!(
            e.contains("damaged") && e.contains("both copies bad"),
            "{e}"
        );
    }

    #[test]
    fn a_watched_image_that_becomes_a_primary_refuses_every_other_connection_for_good() {
        let p = after_header_write(Phase::Watching, &Header::Secondary, 1);
        assert_eq!(p, Phase::Watching);
        let p = after_header_write(p, &Header::Blank, 1);
        assert_eq!(p, Phase::Watching);
        let p = after_header_write(p, &primary(), 3);
        assert_eq!(p, Phase::Promoted { by: 3 });
        assert!(!refused(p, 3));
        assert!(refused(p, 1) && refused(p, 4));
        // Nothing brings it back, not even a secondary header written afterwards.
        assert_eq!(after_header_write(p, &Header::Secondary, 3), p);
        assert!(!refused(Phase::Watching, 1) && !refused(Phase::Rejoining, 1));
    }

    #[test]
    fn a_rejoining_primary_is_watched_only_once_it_is_a_secondary_again() {
        let p = after_header_write(Phase::Rejoining, &primary(), 1);
        assert_eq!(p, Phase::Rejoining);
        // Attach --force formats it: blank for a moment, then a secondary.
        let p = after_header_write(p, &Header::Blank, 1);
        assert_eq!(p, Phase::Rejoining);
        let p = after_header_write(p, &Header::Secondary, 1);
        assert_eq!(p, Phase::Watching);
        assert_eq!(
            after_header_write(p, &primary(), 2),
            Phase::Promoted { by: 2 }
        );
    }

    #[test]
    fn only_requests_that_touch_the_two_superblock_copies_count_as_header_writes() {
        assert!(touches_header(&(0..4096)));
        assert!(touches_header(&(SB_COPY_SIZE..SB_COPY_SIZE + 512)));
        assert!(touches_header(
            &(2 * SB_COPY_SIZE - 1..2 * SB_COPY_SIZE + 4096)
        ));
        assert!(!touches_header(&(2 * SB_COPY_SIZE..3 * SB_COPY_SIZE)));
        assert!(!touches_header(&(100..100)));
    }

    #[test]
    fn extents_become_runs_of_data_and_holes_covering_the_request_exactly() {
        assert_eq!(runs(0, 100, None), vec![(100, false)]);
        assert_eq!(runs(0, 100, Some(vec![])), vec![(100, true)]);
        assert_eq!(
            runs(10, 100, Some(vec![0..20, 50..60, 100..200])),
            vec![
                (10, false),
                (30, true),
                (10, false),
                (40, true),
                (10, false)
            ]
        );
        let one = std::iter::once(8192..9000).collect();
        let r = runs(4096, 8192, Some(one));
        assert_eq!(r, vec![(4096, true), (808, false), (3288, true)]);
        assert_eq!(r.iter().map(|x| x.0).sum::<u64>(), 8192);
    }

    /// A device holding a mirror's primary header, and one holding its secondary's.
    fn images() -> (Arc<dyn Device>, Arc<dyn Device>) {
        use crate::device::sim::{SimDevice, World};
        use crate::format::layout::{Geometry, MIB};
        let w = World::new();
        let g = Geometry::for_data_size(4 * MIB, 64 << 10, 4).unwrap();
        let p: Arc<dyn Device> = Arc::new(SimDevice::new(&w, g.total_len()));
        let s: Arc<dyn Device> = Arc::new(SimDevice::new(&w, g.total_len()));
        let img = Image::create_primary(p.clone(), g, 1).unwrap();
        let mut sb = img.sb.clone();
        sb.role = Role::Secondary;
        sb.journal = None;
        Image::format(s.clone(), sb).unwrap();
        (p, s)
    }

    fn export(dev: Arc<dyn Device>, rejoin: bool) -> Result<(Export, Header)> {
        Export::open(dev, "img", rejoin, Box::new(|_| {}))
    }

    #[test]
    fn a_primary_header_written_through_the_export_shuts_out_every_other_connection() {
        let (p, s) = images();
        let (e, h) = export(s.clone(), false).unwrap();
        assert_eq!(h, Header::Secondary);
        let mut head = vec![0u8; HEADER_AREA.end as usize];
        p.read_at(&mut head, 0).unwrap();
        // Data writes past the header change nothing.
        let t = e.ticket(HEADER_AREA.end, 4096);
        e.mutate(1, t, Mutation::Write(&[7u8; 4096]), false)
            .unwrap();
        assert_eq!(e.phase(), Phase::Watching);
        // Client 2 writes a primary's header (as `promote` through the export does).
        let t = e.ticket(0, head.len() as u64);
        e.mutate(2, t, Mutation::Write(&head), true).unwrap();
        assert_eq!(e.phase(), Phase::Promoted { by: 2 });
        let mut b = [0u8; 512];
        let f = e.read(1, 0, &mut b, true).unwrap_err();
        assert_eq!(f.kind, FailureKind::ShutDown, "{}", f.msg);
        assert_eq!(e.flush(3).unwrap_err().kind, FailureKind::ShutDown);
        let t = e.ticket(HEADER_AREA.end, 4096);
        let f = e.mutate(1, t, Mutation::Write(&[1u8; 4096]), false);
        assert_eq!(f.unwrap_err().kind, FailureKind::ShutDown);
        // The refused write changed nothing; the promoting client goes on.
        let mut d = vec![0u8; 4096];
        e.read(2, HEADER_AREA.end, &mut d, true).unwrap();
        assert_eq!(d, vec![7u8; 4096]);
        e.flush(2).unwrap();
        // No stop handle here: a close is only noted.
        e.client_closed(2);
    }

    #[test]
    fn a_primary_image_is_refused_without_rejoin_and_watched_after_its_take_back_with_it() {
        let (p, s) = images();
        let Err(err) = export(p.clone(), false) else {
            panic!("a primary was exported without --rejoin")
        };
        assert_eq!(err.kind, crate::error::Kind::Invalid);
        let (e, h) = export(p.clone(), true).unwrap();
        assert!(matches!(h, Header::Primary { .. }));
        assert_eq!(e.phase(), Phase::Rejoining);
        // The primary's attach rewrites it as a secondary.
        let mut head = vec![0u8; HEADER_AREA.end as usize];
        s.read_at(&mut head, 0).unwrap();
        let t = e.ticket(0, head.len() as u64);
        e.mutate(1, t, Mutation::Write(&head), false).unwrap();
        assert_eq!(e.phase(), Phase::Watching);
        let mut b = [0u8; 512];
        e.read(1, 0, &mut b, false).unwrap();
    }

    #[test]
    fn an_image_read_is_classified_by_its_role_and_a_read_error_stays_one() {
        assert_eq!(
            Header::of(Err(ReadError::NotMirrorctl)).unwrap(),
            Header::Blank
        );
        assert!(matches!(
            Header::of(Err(ReadError::Truncated { have: 1, need: 2 })).unwrap(),
            Header::Damaged(_)
        ));
        assert!(Header::of(Err(ReadError::Io(io::Error::other("x")))).is_err());
    }
}
