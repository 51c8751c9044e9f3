//! Threads that may not be granted: a thread limit (`ulimit -u`, a cgroup's pids.max) makes
//! starting one fail, and nothing in mirrorctl panics on that. Helper threads that only
//! run work in parallel fall back to running it on the caller's thread.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::thread::{Builder, Scope, ScopedJoinHandle};

/// Work started by [`spawn_or_run`]: on its own thread, or already done on the caller's.
pub enum Task<'scope, T> {
    Thread(ScopedJoinHandle<'scope, Option<T>>),
    Done(T),
    /// Neither (not reached: a thread that was not started took nothing).
    Lost,
}

impl<T> Task<'_, T> {
    /// Its result, as [`ScopedJoinHandle::join`] gives it (`Err` if the work panicked).
    pub fn join(self) -> Result<T, Box<dyn Any + Send + 'static>> {
        match self {
            Task::Done(t) => Ok(t),
            Task::Lost => Err(Box::new("the work was not run")),
            Task::Thread(h) => h
                .join()
                .and_then(|r| r.ok_or_else(|| Box::new("the work was not run") as _)),
        }
    }
}

/// Runs `f` on a new thread of `sc`, or, when no thread can be started, on this one before
/// returning (in parallel then becomes one after the other; the results are the same).
pub fn spawn_or_run<'scope, 'env, T, F>(sc: &'scope Scope<'scope, 'env>, f: F) -> Task<'scope, T>
where
    T: Send + 'scope,
    F: FnOnce() -> T + Send + 'scope,
{
    let cell = Arc::new(Mutex::new(Some(f)));
    let theirs = cell.clone();
    let started = Builder::new().spawn_scoped(sc, move || {
        let f = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
        f.map(|f| f())
    });
    match started {
        Ok(h) => Task::Thread(h),
        Err(_) => {
            let f = cell.lock().unwrap_or_else(|p| p.into_inner()).take();
            f.map_or(Task::Lost, |f| Task::Done(f()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_once_on_a_thread_and_its_result_and_panics_come_back() {
        let n = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|sc| {
            let t = spawn_or_run(sc, || {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                7
            });
            assert_eq!(t.join().unwrap(), 7);
            let p = spawn_or_run(sc, || -> u32 { panic!("boom") });
            assert!(p.join().is_err());
        });
        assert_eq!(n.into_inner(), 1);
        assert_eq!(Task::<u32>::Done(3).join().unwrap(), 3);
    }
}
