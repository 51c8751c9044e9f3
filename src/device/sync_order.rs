//! Which syncs of one file may count as successful: Linux reports a lost writeback to one
//! fsync only, so a sync that succeeded beside a failing one proves nothing.
//!
//! Rules (tagged at the lines that keep them):
//! - Y1 A sync of a device returns success only once every sync of it that began before it
//!   returned has returned too, none failing; after the first failure every sync fails.
//!   Otherwise two threads syncing the primary at once (a serve transaction marking write
//!   intents, a host's flush) could see the lost writeback of the bitmap page reported to
//!   the other one: the transaction would let its requests write with their intents lost
//!   (W1), or the flush would tell the host that writes are durable that are not.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Condvar, Mutex};

/// The syncs of one device in progress, and its first sync error.
#[derive(Default)]
pub struct SyncOrder {
    st: Mutex<State>,
    returned: Condvar,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Syncs whose call has not returned yet, by start order.
    running: BTreeSet<u64>,
    /// The first sync error (kind, text).
    failed: Option<(io::ErrorKind, String)>,
}

impl SyncOrder {
    /// Runs `sync` under Y1: its own error, the first error of any sync before it, or of
    /// one that ran beside it, or success.
    pub fn run(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let lock = || self.st.lock().unwrap_or_else(|p| p.into_inner());
        let id = {
            let mut st = lock();
            if let Some(e) = &st.failed {
                return Err(earlier(e));
            }
            st.next += 1;
            let id = st.next;
            st.running.insert(id);
            id
        };
        let r = sync();
        let mut st = lock();
        st.running.remove(&id);
        // Syncs that began before this one returned may yet report an error that is about
        // what this one covered.
        let horizon = st.next;
        if let Err(e) = &r {
            if st.failed.is_none() {
                st.failed = Some((e.kind(), e.to_string()));
            }
        }
        self.returned.notify_all();
        r?;
        // Y1: success counts once every sync that ran beside this one has returned.
        while st.running.first().is_some_and(|&y| y <= horizon) {
            st = self.returned.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match &st.failed {
            Some(e) => Err(beside(e)),
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

fn beside((k, m): &(io::ErrorKind, String)) -> io::Error {
    io::Error::new(
        *k,
        format!(
            "a sync beside this one failed ({m}); Linux reports a lost writeback to one sync only, so what this one covered is not known to be durable"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// A sync held until told, then returning `r`.
    fn held(
        order: &Arc<SyncOrder>,
        r: io::Result<()>,
    ) -> (
        mpsc::Sender<()>,
        mpsc::Receiver<io::Result<()>>,
        mpsc::Receiver<()>,
    ) {
        let (go, wait) = mpsc::channel::<()>();
        let (began_tx, began) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let o = order.clone();
        std::thread::spawn(move || {
            let res = o.run(|| {
                began_tx.send(()).unwrap();
                wait.recv().unwrap();
                r
            });
            done_tx.send(res).unwrap();
        });
        began.recv().unwrap();
        (go, done, began)
    }

    #[test]
    fn a_sync_that_succeeds_beside_one_that_later_fails_waits_for_it_and_fails_too() {
        let order = Arc::new(SyncOrder::default());
        let (go_a, done_a, _) = held(&order, Err(io::Error::from_raw_os_error(libc::EIO)));
        let (go_b, done_b, _) = held(&order, Ok(()));
        // B's call returns first, with success: it is not reported while A runs.
        go_b.send(()).unwrap();
        assert!(done_b.recv_timeout(Duration::from_millis(100)).is_err());
        go_a.send(()).unwrap();
        assert!(done_a.recv().unwrap().is_err());
        let e = done_b.recv().unwrap().unwrap_err();
        assert!(
            e.to_string().contains("a sync beside this one failed"),
            "{e}"
        );
        // Every later sync fails at once.
        let e = order.run(|| Ok(())).unwrap_err();
        assert!(e.to_string().contains("an earlier sync failed"), "{e}");
    }

    #[test]
    fn a_sync_waits_only_for_syncs_that_began_before_it_returned() {
        let order = Arc::new(SyncOrder::default());
        let (go_a, done_a, _) = held(&order, Ok(()));
        // A returns; B starts after it: A does not wait for B.
        go_a.send(()).unwrap();
        assert!(done_a.recv().unwrap().is_ok());
        let (go_b, done_b, _) = held(&order, Err(io::Error::from_raw_os_error(libc::EIO)));
        go_b.send(()).unwrap();
        assert!(done_b.recv().unwrap().is_err());
        assert!(order.failed());
    }

    #[test]
    fn syncs_that_all_succeed_side_by_side_all_succeed() {
        let order = Arc::new(SyncOrder::default());
        let (go_a, done_a, _) = held(&order, Ok(()));
        let (go_b, done_b, _) = held(&order, Ok(()));
        go_b.send(()).unwrap();
        go_a.send(()).unwrap();
        assert!(done_a.recv().unwrap().is_ok());
        assert!(done_b.recv().unwrap().is_ok());
        assert!(!order.failed());
    }
}
