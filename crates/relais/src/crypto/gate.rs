//! The argon2 gate: every argon2 run of the process (client secrets at the
//! token endpoint, aidant passwords, enrolment, delegated sign-in, unknown
//! e-mails) goes through one [`Argon2Gate`], a field of the application
//! state. At most `parallel` runs at once (each takes ~19 MiB and a core for
//! ~25 ms), at most `max_waiting` callers queued behind them; a caller past
//! that is refused at once ([`GateError::Busy`], answered 503 with `Retry-After`)
//! instead of piling up blocking threads and memory.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Make freed argon2 memory go back to the system at once.
///
/// Each argon2 run allocates one block of ~19 MiB. glibc's malloc raises its
/// mmap threshold to the size of the largest block freed (up to 32 MiB), so
/// after the first run those blocks come from the heap and freed ones stay
/// resident: a burst of runs left the process at 700 MB although at most
/// `parallel` ran at once (measured by `security::argon2_burst_is_bounded`).
/// A fixed threshold keeps large blocks in their own mappings, unmapped when
/// freed (peak 71 MB for the same burst). Called once at start by the binary.
pub fn return_freed_memory_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes a malloc tunable; it is called before
        // any argon2 run, and a refusal (0) leaves the default in place.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        if ok == 0 {
            tracing::warn!(
                "mallopt(M_MMAP_THRESHOLD) refused: freed argon2 memory may stay resident"
            );
        }
    }
}

#[derive(Debug)]
pub struct Argon2Gate {
    permits: Arc<Semaphore>,
    /// Callers admitted (running or waiting for a permit).
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    runs: AtomicU64,
    refused: AtomicU64,
}

impl Argon2Gate {
    /// `parallel` runs at once, `max_waiting` more queued.
    pub fn new(parallel: usize, max_waiting: usize) -> Argon2Gate {
        let parallel = parallel.max(1);
        Argon2Gate {
            permits: Arc::new(Semaphore::new(parallel)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: parallel + max_waiting,
            runs: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// One run per core, 32 callers per core queued.
    pub fn for_this_machine() -> Argon2Gate {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Argon2Gate::new(cores, 32 * cores)
    }

    /// Run `f` (an argon2 computation) on a blocking thread once a permit is
    /// free, or refuse at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, GateError> {
        self.enter().await?.run(f).await
    }

    /// Wait for a permit (or refuse at once when the queue is full); the
    /// caller may check a cache again before [`Pass::run`].
    pub async fn enter(&self) -> Result<Pass<'_>, GateError> {
        let admission = self.admit()?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GateError::Busy)?;
        Ok(Pass {
            gate: self,
            permit,
            admission,
        })
    }

    fn admit(&self) -> Result<Admission, GateError> {
        let mut n = self.admitted.load(Ordering::Relaxed);
        loop {
            if n >= self.capacity {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(GateError::Busy);
            }
            match self
                .admitted
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(Admission(self.admitted.clone())),
                Err(actual) => n = actual,
            }
        }
    }

    /// argon2 runs started since the process began.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Callers refused because the queue was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Callers running or waiting now.
    pub fn in_use(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }
}

/// Why a gated run did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateError {
    /// The queue is full.
    Busy,
    /// The blocking thread failed (a panic inside argon2).
    Worker(String),
}

impl std::fmt::Display for GateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateError::Busy => f.write_str("too many password verifications in progress"),
            GateError::Worker(e) => write!(f, "argon2 worker failed: {e}"),
        }
    }
}

impl std::error::Error for GateError {}

/// A permit to run argon2 once.
pub struct Pass<'a> {
    gate: &'a Argon2Gate,
    permit: tokio::sync::OwnedSemaphorePermit,
    admission: Admission,
}

impl Pass<'_> {
    /// Run `f` on a blocking thread. The permit and the admission move into
    /// the blocking job and are given back when *it* ends: a request whose
    /// future is dropped (the client went away) cannot free its place while
    /// its argon2 run goes on.
    pub async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, GateError> {
        self.gate.runs.fetch_add(1, Ordering::Relaxed);
        let (permit, admission) = (self.permit, self.admission);
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop((permit, admission));
            out
        })
        .await
        .map_err(|e| GateError::Worker(e.to_string()))
    }
}

/// Gives the admission back when the run ends (or the caller gives up
/// before its run started).
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_past_the_queue_and_counts_runs() {
        let gate = Arc::new(Argon2Gate::new(1, 2));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut running = Vec::new();
        for _ in 0..3 {
            let (g, rx) = (gate.clone(), rx.clone());
            running.push(tokio::spawn(async move {
                g.run(move || {
                    let _ = rx.lock().map(|r| r.recv());
                })
                .await
            }));
        }
        // Wait until the three are admitted (one running, two queued).
        for _ in 0..200 {
            if gate.in_use() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(gate.in_use(), 3);
        assert_eq!(gate.run(|| ()).await, Err(GateError::Busy));
        assert_eq!(gate.refused(), 1);
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        for r in running {
            assert_eq!(r.await.unwrap(), Ok(()));
        }
        assert_eq!(gate.runs(), 3);
        assert_eq!(gate.in_use(), 0);
        assert_eq!(gate.run(|| 7).await, Ok(7));
    }

    /// A caller that gives up (its future dropped: the client went away)
    /// does not free the place of a run still in progress.
    #[tokio::test]
    async fn a_dropped_caller_keeps_its_place_until_the_run_ends() {
        let gate = Arc::new(Argon2Gate::new(1, 0));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let caller = tokio::spawn(async move {
            g.run(move || {
                let _ = started_tx.send(());
                let _ = finish_rx.recv();
            })
            .await
        });
        tokio::task::spawn_blocking(move || started_rx.recv())
            .await
            .unwrap()
            .unwrap();
        caller.abort();
        let _ = caller.await;
        assert_eq!(gate.in_use(), 1, "the run still holds its place");
        assert_eq!(gate.run(|| ()).await, Err(GateError::Busy));
        finish_tx.send(()).unwrap();
        for _ in 0..200 {
            if gate.in_use() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(gate.in_use(), 0);
        assert_eq!(gate.run(|| 1).await, Ok(1));
    }
}
