//! Threads that may not be granted: a thread limit (`ulimit -u`, a cgroup's pids.max) makes
//! starting one fail, and nothing in mirrorctl panics on that. Helper threads that only
//! run work in parallel fall back to running it on the caller's thread. Also the persistent
//! I/O workers ([`workers`]) that write and sync the legs in parallel without starting a
//! thread per request or per flush.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
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

/// Most worker threads a [`Workers`] keeps; past it, work runs on the caller's thread.
const MAX_WORKERS: usize = 64;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of persistent threads for leg I/O (writes of large requests, syncs): a thread is
/// started only when every one is busy, and stays for the next job, so a flush or a large
/// request costs no thread creation once the pool has grown to the I/O depth hosts use.
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    st: Mutex<PoolState>,
    work: Condvar,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    idle: usize,
    /// Workers whose task has finished (its result about to be seen, or seen) that have not
    /// come back for more yet: counted before the result is visible, so that the caller's
    /// next task waits for one of them instead of starting a thread.
    returning: usize,
    threads: usize,
    closing: bool,
}

thread_local! {
    /// Whether this thread is one of the pool's workers.
    static IS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Inner {
    /// A task finished on this thread: if it is a worker, it is counted as returning until
    /// it is back in its loop (see `PoolState::returning`).
    fn task_done(&self) {
        if IS_WORKER.with(|w| w.get()) {
            self.st.lock().unwrap_or_else(|p| p.into_inner()).returning += 1;
        }
    }
}

/// The process's I/O workers.
pub fn workers() -> &'static Workers {
    static W: OnceLock<Workers> = OnceLock::new();
    W.get_or_init(Workers::new)
}

/// Where the results of one [`Workers::run_all`] land; the caller waits for all of them.
struct Latch<T> {
    slots: Mutex<(Vec<Option<std::thread::Result<T>>>, usize)>,
    done: Condvar,
}

impl<T> Latch<T> {
    fn put(&self, i: usize, r: std::thread::Result<T>) {
        let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        g.0[i] = Some(r);
        g.1 -= 1;
        if g.1 == 0 {
            self.done.notify_all();
        }
    }

    /// Waits until every task has put its result.
    fn wait(&self) -> Vec<Option<std::thread::Result<T>>> {
        let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        while g.1 > 0 {
            g = self.done.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::take(&mut g.0)
    }
}

/// Waits for every task of a [`Workers::run_all`] when dropped, also while unwinding: the
/// tasks borrow from the caller's frame, which must outlive them.
struct WaitAll<'a, T>(&'a Latch<T>, bool);

impl<T> Drop for WaitAll<'_, T> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.wait();
        }
    }
}

impl Default for Workers {
    fn default() -> Self {
        Self::new()
    }
}

impl Workers {
    pub fn new() -> Workers {
        Workers {
            inner: Arc::new(Inner {
                st: Mutex::new(PoolState::default()),
                work: Condvar::new(),
            }),
        }
    }

    /// Threads started so far (tests).
    pub fn threads(&self) -> usize {
        self.inner
            .st
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .threads
    }

    /// Runs `job` on this thread; on a worker (a task that itself runs tasks), the count of
    /// returning workers its end added is taken back at once.
    fn run_here(&self, job: Job) {
        job();
        if IS_WORKER.with(|w| w.get()) {
            back(&self.inner);
        }
    }

    /// Runs `job` on an idle worker, on a new one when none is idle, or on this thread when
    /// none can be started (the limit, or the system refuses).
    fn submit(&self, job: Job) {
        let mut st = self.inner.st.lock().unwrap_or_else(|p| p.into_inner());
        if st.idle + st.returning > st.queue.len() {
            st.queue.push_back(job);
            drop(st);
            self.inner.work.notify_one();
            return;
        }
        if st.threads >= MAX_WORKERS {
            drop(st);
            return self.run_here(job);
        }
        st.threads += 1;
        drop(st);
        let inner = self.inner.clone();
        let cell = Arc::new(Mutex::new(Some(job)));
        let theirs = cell.clone();
        let started = Builder::new().name("io-worker".into()).spawn(move || {
            IS_WORKER.with(|w| w.set(true));
            let first = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(f) = first {
                f();
                back(&inner);
            }
            worker_loop(&inner);
        });
        if started.is_err() {
            self.inner
                .st
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .threads -= 1;
            let job = cell.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(f) = job {
                self.run_here(f);
            }
        }
    }

    /// Runs each of `tasks` on a worker and `here` on this thread, all at once; returns
    /// `here`'s result and the tasks' in their order, once every one has finished. A task
    /// that panicked panics here (after the others finished).
    pub fn run_all<'a, T, U>(
        &self,
        tasks: Vec<Box<dyn FnOnce() -> T + Send + 'a>>,
        here: impl FnOnce() -> U,
    ) -> (U, Vec<T>)
    where
        T: Send + 'static,
    {
        let n = tasks.len();
        if n == 0 {
            return (here(), Vec::new());
        }
        let latch = Arc::new(Latch {
            slots: Mutex::new(((0..n).map(|_| None).collect(), n)),
            done: Condvar::new(),
        });
        let mut guard = WaitAll(&latch, false);
        for (i, t) in tasks.into_iter().enumerate() {
            // SAFETY: the task borrows for 'a from the caller's frame; it is run exactly
            // once (by a worker, which never drops a job unrun, or here), and this function
            // neither returns nor unwinds before the latch says it finished (`WaitAll` waits
            // in its drop too), so nothing it borrows is gone while it runs. The lifetime
            // is only widened for the queue's type.
            let t: Box<dyn FnOnce() -> T + Send + 'static> = unsafe { std::mem::transmute(t) };
            let l = latch.clone();
            let pool = self.inner.clone();
            self.submit(Box::new(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(t));
                pool.task_done();
                l.put(i, r);
            }));
        }
        let u = here();
        let out = latch.wait();
        guard.1 = true;
        let mut res = Vec::with_capacity(n);
        for r in out {
            match r {
                Some(Ok(t)) => res.push(t),
                Some(Err(p)) => std::panic::resume_unwind(p),
                None => std::panic::resume_unwind(Box::new("an I/O worker's task was lost")),
            }
        }
        (u, res)
    }
}

/// A worker is back in its loop after a task (see `PoolState::returning`).
fn back(inner: &Inner) {
    let mut st = inner.st.lock().unwrap_or_else(|p| p.into_inner());
    st.returning = st.returning.saturating_sub(1);
}

fn worker_loop(inner: &Inner) {
    let mut st = inner.st.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            job();
            st = inner.st.lock().unwrap_or_else(|p| p.into_inner());
            st.returning = st.returning.saturating_sub(1);
            continue;
        }
        if st.closing {
            st.threads -= 1;
            return;
        }
        st.idle += 1;
        st = inner.work.wait(st).unwrap_or_else(|p| p.into_inner());
        st.idle -= 1;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Threads finish what is queued, then end.
        self.inner
            .st
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closing = true;
        self.inner.work.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_every_task_with_borrowed_data_and_start_no_thread_once_grown() {
        let w = Workers::new();
        let data = vec![3u64; 1000];
        for round in 0..50u64 {
            let tasks: Vec<Box<dyn FnOnce() -> u64 + Send + '_>> = (0..3u64)
                .map(|k| {
                    let d = &data;
                    Box::new(move || d.iter().sum::<u64>() + k + round) as Box<_>
                })
                .collect();
            let (h, r) = w.run_all(tasks, || round);
            assert_eq!(h, round);
            assert_eq!(r, vec![3000 + round, 3001 + round, 3002 + round]);
        }
        assert!(
            w.threads() <= 3,
            "3 tasks at a time need at most 3 workers, {} were started",
            w.threads()
        );
        let (_, none) = w.run_all(Vec::<Box<dyn FnOnce() -> u8 + Send>>::new(), || ());
        assert!(none.is_empty());
    }

    #[test]
    fn a_panicking_worker_task_panics_the_caller_after_the_others_finished() {
        let w = Workers::new();
        let done = std::sync::atomic::AtomicU32::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tasks: Vec<Box<dyn FnOnce() + Send + '_>> = vec![
                Box::new(|| panic!("boom")),
                Box::new(|| {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }),
            ];
            w.run_all(tasks, || ())
        }));
        assert!(r.is_err());
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The pool still works.
        let (_, v) = w.run_all(
            vec![Box::new(|| 5u8) as Box<dyn FnOnce() -> u8 + Send>],
            || (),
        );
        assert_eq!(v, vec![5]);
    }

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
