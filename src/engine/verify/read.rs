//! verify's reader threads: one per device, reading a batch's chunks in order a few ahead
//! of the comparison, holes and never-written chunks not read, buffers recycled.

use crate::device::Device;
use crate::engine::verify::select::Chunk;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// Chunks read ahead by each reader.
const READ_AHEAD: usize = 2;

/// A chunk as read: `None` is a hole (reads as zeros; not read at all).
pub(super) type Piece = Option<Vec<u8>>;

/// The receiving end of one reader thread.
pub(super) struct Feed {
    rx: mpsc::Receiver<std::io::Result<Piece>>,
    back: mpsc::Sender<Vec<u8>>,
}

impl Feed {
    /// The next chunk; a closed channel is reported as an error.
    pub(super) fn next(&self) -> std::io::Result<Piece> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader stopped")))
    }

    /// Returns a buffer to the reader for reuse.
    pub(super) fn give_back(&self, piece: Piece) {
        if let Some(buf) = piece {
            let _ = self.back.send(buf);
        }
    }
}

/// Starts a thread reading `chunks` from `dev` in order, `READ_AHEAD` chunks ahead of the
/// comparison, recycling buffers given back. It stops after an error, when `stop` is set,
/// or when its feed is dropped.
pub(super) fn spawn_reader<'s, 'e>(
    sc: &'s std::thread::Scope<'s, 'e>,
    dev: Arc<dyn Device>,
    chunks: &'e [Chunk],
    stop: &'e AtomicBool,
) -> Feed {
    let (tx, rx) = mpsc::sync_channel(READ_AHEAD);
    let (back, back_rx) = mpsc::channel::<Vec<u8>>();
    // No thread (a thread limit): the comparison gets the error instead of a chunk.
    let failed = tx.clone();
    let started = std::thread::Builder::new().spawn_scoped(sc, move || {
        // Sequential reads: ask for the larger readahead window (cold caches).
        if let (Some(first), Some(last)) = (chunks.first(), chunks.last()) {
            dev.advise_sequential(first.at, last.at + last.len as u64 - first.at);
        }
        let mut fresh = READ_AHEAD + 2;
        for c in chunks {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let hole = c.unwritten
                || matches!(dev.data_extents(c.at..c.at + c.len as u64), Ok(Some(v)) if v.is_empty());
            let piece = if hole {
                Ok(None)
            } else {
                let mut buf = match back_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if fresh > 0 => {
                        fresh -= 1;
                        Vec::new()
                    }
                    Err(_) => match back_rx.recv() {
                        Ok(b) => b,
                        Err(_) => break,
                    },
                };
                buf.resize(c.len, 0);
                dev.read_at(&mut buf, c.at).map(|()| Some(buf))
            };
            let failed = piece.is_err();
            if tx.send(piece).is_err() || failed {
                break;
            }
        }
    });
    if let Err(e) = started {
        let _ = failed.send(Err(std::io::Error::other(format!(
            "starting a reader thread: {e}"
        ))));
    }
    Feed { rx, back }
}
