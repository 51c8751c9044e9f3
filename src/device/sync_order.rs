//! Which syncs of one file may count as successful: Linux reports a lost writeback once per
//! open file description, so syncs sharing one description could see it reported to one
//! of them only, and a sync that succeeded beside a failing one would prove nothing.
//!
//! Rules (tagged at the lines that keep them):
//! - Y1 Every sync of a file or block device runs on an open file description of its own:
//!   one of 8 descriptions (`SLOTS`) opened together at the device's first sync (a sync waits
//!   while all are in use), each of which is told of every writeback error since its last
//!   sync; after the first failure every sync fails. Otherwise two threads syncing the
//!   primary at once (a serve transaction marking write intents, a host's flush) could see
//!   the lost writeback of the bitmap page reported to the other one only: the transaction
//!   would let its requests write with their intents lost (W1), or the flush would tell the
//!   host that writes are durable that are not. A description opened later would not be
//!   told of an error another one was told of already.

use std::io;
use std::sync::{Condvar, Mutex};

/// Open file descriptions kept per device for syncs (syncs in progress at once, at most).
pub const SLOTS: usize = 8;

/// Something that can be synced on its own (an open file description).
pub trait Descriptor: Send {
    fn sync_data(&self) -> io::Result<()>;
}

impl Descriptor for std::fs::File {
    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

/// The descriptions of one device not in use by a sync, and its first sync error.
pub struct SyncSlots<D> {
    st: Mutex<Slots<D>>,
    freed: Condvar,
}

struct Slots<D> {
    opened: bool,
    idle: Vec<D>,
    /// The first sync error (kind, text).
    failed: Option<(io::ErrorKind, String)>,
}

impl<D> Default for SyncSlots<D> {
    fn default() -> Self {
        SyncSlots {
            st: Mutex::new(Slots {
                opened: false,
                idle: Vec::new(),
                failed: None,
            }),
            freed: Condvar::new(),
        }
    }
}

impl<D: Descriptor> SyncSlots<D> {
    /// Syncs on a description no other sync in progress uses (Y1); `open` makes the
    /// descriptions, once, before the first sync. Its own error, or the first error of an
    /// earlier sync or of one beside it, or success.
    pub fn sync(&self, open: impl FnOnce() -> io::Result<Vec<D>>) -> io::Result<()> {
        let lock = || self.st.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        let mut open = Some(open);
        let d = loop {
            if let Some(e) = &st.failed {
                return Err(earlier(e));
            }
            if !st.opened {
                if let Some(open) = open.take() {
                    // Y1: all at once, before any sync has been told of an error.
                    st.idle = open()?;
                    st.opened = true;
                }
            }
            if let Some(d) = st.idle.pop() {
                break d;
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        };
        drop(st);
        let r = d.sync_data();
        let mut st = lock();
        st.idle.push(d);
        self.freed.notify_one();
        if let Err(e) = &r {
            if st.failed.is_none() {
                st.failed = Some((e.kind(), crate::error::describe_io(e)));
            }
        }
        r?;
        // Told meanwhile to a sync beside this one: nothing written since is trusted.
        match &st.failed {
            Some(e) => Err(earlier(e)),
            None => Ok(()),
        }
    }

    /// Whether a sync failed (every later one fails).
    pub fn failed(&self) -> bool {
        self.st
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .is_some()
    }
}

fn earlier((k, m): &(io::ErrorKind, String)) -> io::Error {
    io::Error::new(
        *k,
        format!("an earlier sync failed ({m}); nothing written since is trusted"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    /// A description whose syncs report to `log` (its number), each held until `go` says.
    struct Held {
        n: usize,
        log: mpsc::Sender<usize>,
        go: Arc<Mutex<mpsc::Receiver<io::Result<()>>>>,
    }

    impl Descriptor for Held {
        fn sync_data(&self) -> io::Result<()> {
            self.log.send(self.n).unwrap();
            self.go.lock().unwrap().recv().unwrap()
        }
    }

    type Rig = (
        Arc<SyncSlots<Held>>,
        mpsc::Receiver<usize>,
        mpsc::Sender<io::Result<()>>,
        Arc<Mutex<mpsc::Receiver<io::Result<()>>>>,
        mpsc::Sender<usize>,
    );

    fn rig() -> Rig {
        let (log_tx, log) = mpsc::channel();
        let (go_tx, go) = mpsc::channel();
        (
            Arc::new(SyncSlots::default()),
            log,
            go_tx,
            Arc::new(Mutex::new(go)),
            log_tx,
        )
    }

    fn slots(
        n: usize,
        log: &mpsc::Sender<usize>,
        go: &Arc<Mutex<mpsc::Receiver<io::Result<()>>>>,
    ) -> Vec<Held> {
        (0..n)
            .map(|n| Held {
                n,
                log: log.clone(),
                go: go.clone(),
            })
            .collect()
    }

    fn spawn(s: &Arc<SyncSlots<Held>>, made: Vec<Held>) -> std::thread::JoinHandle<io::Result<()>> {
        let s = s.clone();
        std::thread::spawn(move || s.sync(move || Ok(made)))
    }

    #[test]
    fn syncs_in_progress_at_once_run_on_distinct_descriptions_opened_once() {
        let (s, log, go, gorx, log_tx) = rig();
        let a = spawn(&s, slots(2, &log_tx, &gorx));
        let first = log.recv().unwrap();
        // The second sync's `open` is never called: the two made at the first are used.
        let b = {
            let s = s.clone();
            std::thread::spawn(move || s.sync(|| panic!("descriptions opened twice")))
        };
        let second = log.recv().unwrap();
        assert_ne!(first, second, "two syncs in progress on one description");
        go.send(Ok(())).unwrap();
        go.send(Ok(())).unwrap();
        assert!(a.join().unwrap().is_ok());
        assert!(b.join().unwrap().is_ok());
    }

    #[test]
    fn a_sync_waits_while_every_description_is_in_use() {
        let (s, log, go, gorx, log_tx) = rig();
        let a = spawn(&s, slots(1, &log_tx, &gorx));
        log.recv().unwrap();
        let b = spawn(&s, Vec::new());
        assert!(log.recv_timeout(Duration::from_millis(100)).is_err());
        go.send(Ok(())).unwrap();
        assert!(a.join().unwrap().is_ok());
        log.recv().unwrap();
        go.send(Ok(())).unwrap();
        assert!(b.join().unwrap().is_ok());
    }

    #[test]
    fn after_a_failed_sync_every_sync_fails_and_one_that_returns_beside_it_afterwards_too() {
        let (s, log, go, gorx, log_tx) = rig();
        let a = spawn(&s, slots(2, &log_tx, &gorx));
        log.recv().unwrap();
        let b = spawn(&s, Vec::new());
        log.recv().unwrap();
        // One of them fails first; the other returns success from the kernel afterwards.
        go.send(Err(io::Error::from_raw_os_error(libc::EIO)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        go.send(Ok(())).unwrap();
        let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
        assert!(ra.is_err() && rb.is_err(), "{ra:?} {rb:?}");
        let e = s.sync(|| Ok(Vec::new())).unwrap_err();
        assert!(e.to_string().contains("an earlier sync failed"), "{e}");
        assert!(s.failed());
    }
}
