//! The backend trait the NBD front end serves: what a request does (read, write, zero,
//! trim, flush, block status) and what the front end's log says of it. `serve` serves the
//! mirror's engine ([`crate::engine::serve::Server`]); `export` serves one raw image
//! ([`crate::engine::export::Export`]). The front end (handshake, TLS, limits,
//! transmission) is the same code for both.

use crate::engine::serve::{Mutation, Served};
use std::sync::Arc;

/// Stops the front end from inside a backend (as a SIGTERM would, without the signal):
/// it takes no more clients, ends reading from every connection, answers the requests
/// already read and returns from [`super::run`] with `why` in its summary.
#[derive(Clone)]
pub struct StopHandle {
    pub(super) inner: Arc<super::StopState>,
}

impl StopHandle {
    pub fn stop(&self, why: &str) {
        self.inner.stop(why);
    }
}

/// What the NBD front end calls. Requests carry the number of the connection they came on
/// (`client`, from 1), as do the connection's open and close.
pub trait Backend: Send + Sync + 'static {
    /// A mutation's place in arrival order, taken by the connection's reader as the request
    /// comes (before any worker runs it).
    type Ticket: Send;

    /// Bytes exported.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Whether zeroing is fast (`NBD_CMD_FLAG_FAST_ZERO` offered).
    fn fast_zero(&self) -> bool;
    /// What the "serving" log line says of the export (in the parentheses after its name).
    fn serving(&self) -> String;
    /// What a stop does after the requests in flight ("syncing every leg").
    fn stop_work(&self) -> &'static str;
    /// What the log says of a second signal (after "second SIGTERM: ").
    fn hard_stop(&self) -> String;
    /// The front end's stop, for a backend that ends the service itself.
    fn stop_handle(&self, _stop: StopHandle) {}

    /// A client connected (before its handshake).
    fn client_opened(&self, client: u64);
    /// A client finished its handshake; `what` names it.
    fn client_connected(&self, client: u64, what: &str);
    /// A client's connection ended (every request of it answered).
    fn client_closed(&self, client: u64);

    /// Reads `buf.len()` bytes at `off`: `direct` past the page cache where the device can
    /// (a random reader), else through it (a sequential stream, read ahead).
    fn read(&self, client: u64, off: u64, buf: &mut [u8], direct: bool) -> Served<()>;
    /// Starts reading `len` bytes at `off` into the cache for a sequential reader (a hint).
    fn read_ahead(&self, client: u64, off: u64, len: u64);
    /// `(length, hole)` runs covering `off..off+len`.
    fn extents(&self, client: u64, off: u64, len: u64) -> Served<Vec<(u64, bool)>>;
    fn ticket(&self, off: u64, len: u64) -> Self::Ticket;
    /// A ticket whose mutation will not run.
    fn cancel(&self, t: Self::Ticket);
    fn mutate(&self, client: u64, t: Self::Ticket, m: Mutation<'_>, fua: bool) -> Served<()>;
    fn flush(&self, client: u64) -> Served<()>;
    /// `Ok` when a WRITE_ZEROES with FAST_ZERO can be done fast.
    fn check_fast_zero(&self) -> Served<()>;
}

/// The mirror's engine, as `serve` serves it.
impl Backend for crate::engine::serve::Server {
    type Ticket = crate::engine::serve::Ticket;

    fn size(&self) -> u64 {
        crate::engine::serve::Server::size(self)
    }
    fn read_only(&self) -> bool {
        crate::engine::serve::Server::read_only(self)
    }
    fn fast_zero(&self) -> bool {
        crate::engine::serve::Server::fast_zero(self)
    }
    fn serving(&self) -> String {
        let (hot, cap) = self.hot();
        format!(
            "{} bytes; {} receiving writes; {} hot extents of {} allowed",
            self.size(),
            match self.legs() {
                1 => "1 secondary".to_string(),
                n => format!("{n} secondaries"),
            },
            hot,
            cap
        )
    }
    fn stop_work(&self) -> &'static str {
        "syncing every leg"
    }
    fn hard_stop(&self) -> String {
        let (_, cap) = self.hot();
        format!(
            "stopping at once, without the clean stop: requests in flight get no reply, the legs are not synced and the write intents stay marked; the next command recovers the hot set (at most {cap} extents of 4 MiB, and those evicted whose writes no finished sync has covered yet) as after a crash"
        )
    }
    fn client_opened(&self, _client: u64) {
        crate::engine::serve::Server::client_opened(self)
    }
    fn client_connected(&self, _client: u64, what: &str) {
        crate::engine::serve::Server::client_connected(self, what)
    }
    fn client_closed(&self, _client: u64) {
        crate::engine::serve::Server::client_closed(self)
    }
    fn read(&self, _client: u64, off: u64, buf: &mut [u8], direct: bool) -> Served<()> {
        crate::engine::serve::Server::read(self, off, buf, direct)
    }
    fn read_ahead(&self, _client: u64, off: u64, len: u64) {
        crate::engine::serve::Server::read_ahead(self, off, len)
    }
    fn extents(&self, _client: u64, off: u64, len: u64) -> Served<Vec<(u64, bool)>> {
        crate::engine::serve::Server::extents(self, off, len)
    }
    fn ticket(&self, off: u64, len: u64) -> Self::Ticket {
        crate::engine::serve::Server::ticket(self, off, len)
    }
    fn cancel(&self, t: Self::Ticket) {
        crate::engine::serve::Server::cancel(self, t)
    }
    fn mutate(&self, _client: u64, t: Self::Ticket, m: Mutation<'_>, fua: bool) -> Served<()> {
        crate::engine::serve::Server::mutate(self, t, m, fua)
    }
    fn flush(&self, _client: u64) -> Served<()> {
        crate::engine::serve::Server::flush(self)
    }
    fn check_fast_zero(&self) -> Served<()> {
        crate::engine::serve::Server::check_fast_zero(self)
    }
}

/// A mirror's secondary image, as `export` serves it.
impl Backend for crate::engine::export::Export {
    type Ticket = std::ops::Range<u64>;

    fn size(&self) -> u64 {
        crate::engine::export::Export::size(self)
    }
    fn read_only(&self) -> bool {
        crate::engine::export::Export::read_only(self)
    }
    fn fast_zero(&self) -> bool {
        crate::engine::export::Export::fast_zero(self)
    }
    fn serving(&self) -> String {
        crate::engine::export::Export::serving(self)
    }
    fn stop_work(&self) -> &'static str {
        crate::engine::export::Export::stop_work(self)
    }
    fn hard_stop(&self) -> String {
        crate::engine::export::Export::hard_stop(self)
    }
    fn stop_handle(&self, stop: StopHandle) {
        self.on_stop(Box::new(move |why: &str| stop.stop(why)))
    }
    fn client_opened(&self, client: u64) {
        crate::engine::export::Export::client_opened(self, client)
    }
    fn client_connected(&self, client: u64, what: &str) {
        crate::engine::export::Export::client_connected(self, client, what)
    }
    fn client_closed(&self, client: u64) {
        crate::engine::export::Export::client_closed(self, client)
    }
    fn read(&self, client: u64, off: u64, buf: &mut [u8], direct: bool) -> Served<()> {
        crate::engine::export::Export::read(self, client, off, buf, direct)
    }
    fn read_ahead(&self, client: u64, off: u64, len: u64) {
        crate::engine::export::Export::read_ahead(self, client, off, len)
    }
    fn extents(&self, client: u64, off: u64, len: u64) -> Served<Vec<(u64, bool)>> {
        crate::engine::export::Export::extents(self, client, off, len)
    }
    fn ticket(&self, off: u64, len: u64) -> Self::Ticket {
        crate::engine::export::Export::ticket(self, off, len)
    }
    fn cancel(&self, t: Self::Ticket) {
        crate::engine::export::Export::cancel(self, t)
    }
    fn mutate(&self, client: u64, t: Self::Ticket, m: Mutation<'_>, fua: bool) -> Served<()> {
        crate::engine::export::Export::mutate(self, client, t, m, fua)
    }
    fn flush(&self, client: u64) -> Served<()> {
        crate::engine::export::Export::flush(self, client)
    }
    fn check_fast_zero(&self) -> Served<()> {
        crate::engine::export::Export::check_fast_zero(self)
    }
}
