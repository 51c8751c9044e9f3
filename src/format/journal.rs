//! The event journal (format 1.1; details up to 256 bytes since 1.2): the newest events of a mirror, kept in the primary's
//! superblock payload after the 1.0 fields, so an event is committed in the same superblock
//! write as the state change it reports (both or neither after a crash). Pure code: the
//! kinds and their stable names, the bounds, and the trimming to what fits.

use serde::{Deserialize, Serialize};

/// The journal keeps at most this many events (the newest).
pub const MAX_EVENTS: usize = 1024;
/// Client events (a host connected) keep at most this many of the journal's places, and
/// are the first to go when it is full: a flood of connections pushes out only older client
/// events, never the state events (created, attached, fractured, resynced ...).
pub const MAX_CLIENT_EVENTS: usize = 64;

fn is_client(e: &Event) -> bool {
    e.kind == Kind::ClientConnected.code()
}

/// Longest detail text of an event (longer text is cut). 96 before format 1.2, which grew
/// it so that the cause of a failure (after the leg's name and what was being done) is kept.
pub const MAX_DETAIL: usize = 256;
/// Encoded size of an event besides its detail text: seq, at, kind, slot (tag and value),
/// the detail's length.
pub const EVENT_OVERHEAD: usize = 8 + 8 + 4 + 1 + 4 + 8;

/// What happened. Stored as a u32 code, so a reader shows a code it does not know (a newer
/// mirrorctl's) as `unknown-N` instead of failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Created,
    Fractured,
    ResyncStarted,
    ResyncFinished,
    ResyncFailed,
    VerifyFinished,
    Recovered,
    Attached,
    Detached,
    Promoted,
    ReplacedPrimary,
    SplitBrainRefused,
    ServeStarted,
    ServeStopped,
    ClientConnected,
    WritesRefused,
    WritesResumed,
}

/// Every kind, with its code (its place in this list, never reused) and stable name.
pub const KINDS: &[(Kind, &str, &str)] = &[
    (Kind::Created, "created", "the mirror was created"),
    (
        Kind::Fractured,
        "fractured",
        "a leg stopped receiving writes: by admin (the reason) or by error (what failed)",
    ),
    (
        Kind::ResyncStarted,
        "resync-started",
        "a resync of the slot began",
    ),
    (
        Kind::ResyncFinished,
        "resync-finished",
        "the slot is in sync again (bytes copied)",
    ),
    (
        Kind::ResyncFailed,
        "resync-failed",
        "a resync of the slot stopped with an error (its log keeps the rest)",
    ),
    (
        Kind::VerifyFinished,
        "verify-finished",
        "a verify run ended (result, mismatched regions, range)",
    ),
    (
        Kind::Recovered,
        "recovered",
        "recovery after an unclean stop (regions moved to the legs' logs)",
    ),
    (
        Kind::Attached,
        "attached",
        "a secondary was attached to the slot",
    ),
    (Kind::Detached, "detached", "the slot was freed"),
    (
        Kind::Promoted,
        "promoted",
        "this image became the primary (planned or not)",
    ),
    (
        Kind::ReplacedPrimary,
        "replaced-primary",
        "this primary was found replaced by a promotion elsewhere; nothing was written",
    ),
    (
        Kind::SplitBrainRefused,
        "split-brain-refused",
        "an image with writes of its own (split brain) was refused",
    ),
    (
        Kind::ServeStarted,
        "serve-started",
        "serve began serving hosts",
    ),
    (
        Kind::ServeStopped,
        "serve-stopped",
        "serve stopped (the signal, requests served)",
    ),
    (
        Kind::ClientConnected,
        "client-connected",
        "a host connected to serve",
    ),
    (
        Kind::WritesRefused,
        "writes-refused",
        "serve began refusing writes: fewer in-sync secondaries than --min-in-sync (which)",
    ),
    (
        Kind::WritesResumed,
        "writes-resumed",
        "serve acknowledges writes again: enough secondaries in sync (how many)",
    ),
];

impl Kind {
    pub fn code(self) -> u32 {
        KINDS.iter().position(|(k, _, _)| *k == self).unwrap() as u32
    }

    pub fn name(self) -> &'static str {
        KINDS[self.code() as usize].1
    }
}

/// The name of a stored kind code.
pub fn kind_name(code: u32) -> String {
    KINDS
        .get(code as usize)
        .map(|(_, n, _)| n.to_string())
        .unwrap_or_else(|| format!("unknown-{code}"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, 3 ... over the life of this image's journal, never reused.
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// A [`Kind`] code.
    pub kind: u32,
    pub slot: Option<u32>,
    /// At most [`MAX_DETAIL`] bytes.
    pub detail: String,
}

impl Event {
    pub fn encoded_len(&self) -> usize {
        EVENT_OVERHEAD + self.detail.len()
    }
}

/// What a `serve-stopped` event's detail says when the server stopped cleanly but kept
/// extents marked after primary write errors (they stay for the next command's recovery):
/// `"SIGTERM: 3 extents pinned by primary write errors; ..."` (first, so that cutting a long
/// detail to [`MAX_DETAIL`] never cuts it). `status` reads it back to say why
/// those intents are pending (not an unclean stop).
pub const PINNED_AT_STOP: &str = "pinned by primary write errors";

/// The detail part for `pinned` extents kept marked at a clean stop.
pub fn pinned_at_stop_detail(pinned: u64) -> String {
    format!(
        "{pinned} {} {PINNED_AT_STOP}",
        if pinned == 1 { "extent" } else { "extents" }
    )
}

/// The extents a `serve-stopped` detail says were kept marked after primary write errors
/// (None when it says none).
pub fn pinned_at_stop(detail: &str) -> Option<u64> {
    let before = &detail[..detail.find(PINNED_AT_STOP)?];
    let mut words = before.split_whitespace().rev();
    match words.next()? {
        "extent" | "extents" => words.next()?.parse().ok().filter(|n| *n > 0),
        _ => None,
    }
}

/// The journal as stored after the 1.0 payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Sequence number of the next event.
    pub next_seq: u64,
    /// The newest events, oldest first.
    pub events: Vec<Event>,
}

/// Encoded size of a journal besides its events: next_seq, the events' count.
pub const JOURNAL_OVERHEAD: usize = 8 + 8;

impl Default for Journal {
    fn default() -> Journal {
        Journal::new()
    }
}

impl Journal {
    pub fn new() -> Journal {
        Journal {
            next_seq: 1,
            events: Vec::new(),
        }
    }

    /// Appends an event (its detail cut to [`MAX_DETAIL`]); returns its sequence number.
    pub fn push(&mut self, kind: Kind, slot: Option<u32>, detail: &str, at: u64) -> u64 {
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        self.events.push(Event {
            seq,
            at,
            kind: kind.code(),
            slot,
            detail: crate::format::cut(&crate::error::plain(detail), MAX_DETAIL),
        });
        if kind == Kind::ClientConnected
            && self.events.iter().filter(|e| is_client(e)).count() > MAX_CLIENT_EVENTS
        {
            if let Some(i) = self.events.iter().position(is_client) {
                self.events.remove(i);
            }
        }
        self.trim(usize::MAX);
        seq
    }

    pub fn encoded_len(&self) -> usize {
        JOURNAL_OVERHEAD + self.events.iter().map(Event::encoded_len).sum::<usize>()
    }

    /// Drops events until at most [`MAX_EVENTS`] are kept and the journal's encoding takes
    /// at most `room` bytes: the oldest client events first, then the oldest of any kind.
    pub fn trim(&mut self, room: usize) {
        let mut len = self.encoded_len();
        while !self.events.is_empty() && (self.events.len() > MAX_EVENTS || len > room) {
            let i = self.events.iter().position(is_client).unwrap_or(0);
            len -= self.events[i].encoded_len();
            self.events.remove(i);
        }
    }

    /// The extents the last `serve` kept marked after primary write errors when it stopped
    /// cleanly, if its stop is the newest event: then they are the intents pending (any
    /// later command that changed the mirror recovered them first, and recorded that).
    pub fn pinned_at_last_stop(&self) -> Option<u64> {
        let last = self.events.last()?;
        (last.kind == Kind::ServeStopped.code())
            .then(|| pinned_at_stop(&last.detail))
            .flatten()
    }

    /// Events after `since`, oldest first.
    pub fn since(&self, since: u64) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.seq > since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_client_events_never_pushes_out_a_state_event() {
        let mut j = Journal::new();
        j.push(Kind::Created, None, "created", 1);
        j.push(Kind::Attached, Some(0), "b.img", 2);
        for i in 0..5000 {
            j.push(Kind::ClientConnected, None, "unix", 3 + i);
        }
        j.push(Kind::Fractured, Some(0), "by admin", 9000);
        let kinds: Vec<u32> = j.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[..2], [Kind::Created.code(), Kind::Attached.code()]);
        assert_eq!(*kinds.last().unwrap(), Kind::Fractured.code());
        let clients = kinds
            .iter()
            .filter(|k| **k == Kind::ClientConnected.code())
            .count();
        assert_eq!(
            clients, MAX_CLIENT_EVENTS,
            "the newest client events are kept"
        );
        // A full journal of state events makes room by dropping client events first.
        for i in 0..MAX_EVENTS {
            j.push(Kind::Attached, Some(1), "x", 10_000 + i as u64);
        }
        assert_eq!(j.events.len(), MAX_EVENTS);
        assert!(j.events.iter().all(|e| !is_client(e)));
        // Sequence numbers stay increasing (followers read by `since`).
        assert!(j.events.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn the_extents_pinned_at_a_stop_are_read_back_from_the_detail() {
        for n in [1, 3, 1237] {
            let d = format!(
                "SIGTERM: {}; 2 connections served, 80.0 MiB written",
                pinned_at_stop_detail(n)
            );
            assert_eq!(pinned_at_stop(&d), Some(n), "{d}");
        }
        assert_eq!(
            pinned_at_stop("SIGTERM: 2 connections served, 80.0 MiB written"),
            None
        );
    }

    #[test]
    fn every_kind_has_its_own_code_and_name() {
        for (i, (k, name, _)) in KINDS.iter().enumerate() {
            assert_eq!(k.code() as usize, i);
            assert_eq!(k.name(), *name);
            assert_eq!(kind_name(i as u32), *name);
        }
        assert_eq!(kind_name(999), "unknown-999");
    }

    #[test]
    fn the_journal_wraps_keeping_the_newest_events_in_order() {
        let mut j = Journal::new();
        for i in 0..(MAX_EVENTS as u64 + 500) {
            j.push(Kind::Fractured, Some(1), &format!("event {i}"), i);
        }
        assert_eq!(j.events.len(), MAX_EVENTS);
        assert_eq!(j.events.last().unwrap().seq, MAX_EVENTS as u64 + 500);
        assert_eq!(j.events[0].seq, 501);
        assert!(j.events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(j.since(MAX_EVENTS as u64 + 498).count(), 2);
    }

    #[test]
    fn trimming_to_the_room_left_drops_the_oldest_first_and_the_detail_is_cut() {
        let mut j = Journal::new();
        for i in 0..10 {
            j.push(Kind::Attached, None, &"x".repeat(MAX_DETAIL + 100), i);
        }
        assert!(j.events.iter().all(|e| e.detail.len() == MAX_DETAIL));
        let one = EVENT_OVERHEAD + MAX_DETAIL;
        j.trim(JOURNAL_OVERHEAD + 3 * one);
        assert_eq!(
            j.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(j.encoded_len(), JOURNAL_OVERHEAD + 3 * one);
        assert_eq!(j.next_seq, 11);
    }
}
