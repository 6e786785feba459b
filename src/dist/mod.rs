//! Data-parallel training over MPI: one process per rank, started by `mpirun`. A dedicated
//! thread owns MPI and runs the collectives in the order they are asked for, so an all-reduce
//! proceeds while the trainer carries on with the backward pass; every wait has a time limit.

mod grads;
#[cfg(all(feature = "distributed", unix))]
mod mpi;
#[cfg(not(all(feature = "distributed", unix)))]
#[path = "no_mpi.rs"]
mod mpi;

pub use grads::{GradRound, GradSync};

use crate::settings::{CrashTest, DistSettings};
use crate::{Error, Result};
use mpi::Mpi;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

type Job = Box<dyn FnOnce(&Mpi) + Send>;

/// This process's place in an MPI job, and the collectives the trainer uses.
pub struct Dist {
    rank: usize,
    size: usize,
    /// The MPI library in use, e.g. "libmpi.so.40: Open MPI v4.1.4, ...".
    pub library: String,
    timeout: Duration,
    crash: Option<CrashTest>,
    bucket_bytes: usize,
    jobs: Sender<Job>,
}

/// A collective under way on the MPI thread.
pub struct Pending<T> {
    reply: Receiver<std::result::Result<T, String>>,
    what: String,
    rank: usize,
    timeout: Duration,
}

impl<T> Pending<T> {
    /// Its result, or an error once the time limit passes (a rank died, hung or fell far behind).
    pub fn wait(self) -> Result<T> {
        match self.reply.recv_timeout(self.timeout) {
            Ok(r) => r.map_err(Error::Device),
            Err(RecvTimeoutError::Timeout) => Err(Error::Device(format!(
                "rank {}: {} did not complete within {} s: another rank has died, hung or fallen far behind \
                 (IRONTENSOR_DIST_TIMEOUT sets this limit in seconds)",
                self.rank,
                self.what,
                self.timeout.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(Error::Device(format!("rank {}: {}: the MPI thread has stopped", self.rank, self.what)))
            }
        }
    }
}

impl Dist {
    /// Joins the MPI job when `settings` say so (started by mpirun, or `IRONTENSOR_DIST=on`);
    /// `None` otherwise. An error if MPI cannot start (no library, a build without the feature).
    pub fn start(settings: &DistSettings) -> Result<Option<std::sync::Arc<Dist>>> {
        if !settings.enabled() {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(Dist::init(settings)?)))
    }

    fn init(settings: &DistSettings) -> Result<Dist> {
        let timeout = settings.timeout;
        let launcher = settings.launcher.clone().unwrap_or_default();
        let (mpi_lib, launcher_rank) = (settings.mpi_lib.clone(), launcher.rank);
        let (jobs, queue) = channel::<Job>();
        let (started, start) = channel();
        std::thread::Builder::new()
            .name("irontensor-mpi".into())
            .spawn(move || match Mpi::init(mpi_lib.as_deref(), &launcher) {
                Err(e) => drop(started.send(Err(e))),
                Ok(mpi) => {
                    let _ = started.send(Ok((mpi.rank, mpi.size, mpi.name.clone())));
                    for job in queue {
                        job(&mpi);
                    }
                }
            })
            .map_err(|e| Error::Device(format!("cannot start the MPI thread: {e}")))?;
        let (rank, size, library) = match start.recv_timeout(timeout) {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let who = launcher_rank.map_or(String::new(), |r| format!(" on rank {r}"));
                return Err(Error::Device(format!("MPI could not start{who}: {e}")));
            }
            Err(_) => {
                return Err(Error::Device(format!(
                    "MPI did not start within {} s: a rank could not start",
                    timeout.as_secs()
                )))
            }
        };
        Ok(Dist { rank, size, library, timeout, crash: settings.crash, bucket_bytes: settings.bucket_bytes, jobs })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes of gradients per all-reduce bucket (`IRONTENSOR_DIST_BUCKET_MB`).
    pub fn bucket_bytes(&self) -> usize {
        self.bucket_bytes
    }

    /// Rank 0 logs, evaluates and writes checkpoints.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Queues `job` on the MPI thread.
    fn submit<T: Send + 'static>(
        &self,
        what: impl Into<String>,
        job: impl FnOnce(&Mpi) -> std::result::Result<T, String> + Send + 'static,
    ) -> Pending<T> {
        let (reply, result) = channel();
        // A send fails only if the MPI thread is gone; `wait` then reports it.
        let _ = self.jobs.send(Box::new(move |mpi: &Mpi| drop(reply.send(job(mpi)))));
        Pending { reply: result, what: what.into(), rank: self.rank, timeout: self.timeout }
    }

    /// Starts summing `data` over all ranks; every rank must start the same reductions in the same order.
    pub fn allreduce_start(&self, what: impl Into<String>, mut data: Vec<f32>) -> Pending<Vec<f32>> {
        self.submit(what, move |mpi| mpi.allreduce_sum(&mut data).map(|_| data))
    }

    /// `data` summed over all ranks.
    pub fn allreduce(&self, what: impl Into<String>, data: Vec<f32>) -> Result<Vec<f32>> {
        self.allreduce_start(what, data).wait()
    }

    /// Rank 0's bytes on every rank (the others' `data` is ignored; lengths may differ).
    pub fn broadcast(&self, what: impl Into<String>, data: Vec<u8>) -> Result<Vec<u8>> {
        let root = self.is_root();
        self.submit(what, move |mpi| {
            let mut len = (data.len() as u64).to_le_bytes();
            mpi.broadcast(&mut len, 0)?;
            let mut buf = if root { data } else { vec![0u8; u64::from_le_bytes(len) as usize] };
            mpi.broadcast(&mut buf, 0)?;
            Ok(buf)
        })
        .wait()
    }

    pub fn barrier(&self, what: impl Into<String>) -> Result<()> {
        self.submit(what, |mpi| mpi.barrier()).wait()
    }

    /// Whether `flag` is true on any rank.
    pub fn any(&self, what: impl Into<String>, flag: bool) -> Result<bool> {
        Ok(self.allreduce(what, vec![flag as u8 as f32])?[0] > 0.0)
    }

    /// Every rank's `result`, made collective: if it failed on any rank, it fails on all (the
    /// failed ranks keep their own error; the others say which ranks failed).
    pub fn agree<T>(&self, what: &str, result: Result<T>) -> Result<T> {
        let mut failed = vec![0.0; self.size];
        failed[self.rank] = result.is_err() as u8 as f32;
        let failed = self.allreduce(format!("agreeing on {what}"), failed)?;
        let bad: Vec<String> = (0..self.size).filter(|&r| failed[r] > 0.0).map(|r| r.to_string()).collect();
        match result {
            Ok(_) if !bad.is_empty() => {
                Err(Error::Invalid(format!("{what} failed on rank {} (see its message)", bad.join(", "))))
            }
            r => r,
        }
    }

    /// Runs `f` on rank 0 first, then on the others (for work that writes shared files, such as
    /// a tokenizer: the other ranks then find it made). An error on any rank stops all of them.
    pub fn root_first<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut mine = None;
        for turn in [true, false] {
            if self.is_root() == turn {
                mine = Some(f.take().expect("runs once")());
            }
            let status = match &mine {
                Some(Err(_)) => Err(Error::Invalid(String::new())),
                _ => Ok(()),
            };
            if let Err(e) = self.agree(what, status) {
                return match mine {
                    Some(Err(own)) => Err(own),
                    _ => Err(e),
                };
            }
        }
        mine.expect("every rank took its turn")
    }

    /// An error unless `bytes` hash the same on every rank as on rank 0.
    pub fn check_same(&self, what: &str, bytes: &[u8]) -> Result<()> {
        let mine = fingerprint(bytes).to_le_bytes().to_vec();
        let root = self.broadcast(format!("comparing {what}"), mine.clone())?;
        let same = root == mine;
        let result =
            if same { Ok(()) } else { Err(Error::Invalid(format!("rank {}: {what} differ from rank 0's", self.rank))) };
        self.agree(&format!("comparing {what} across ranks"), result)
    }

    /// The failure test of tests/distributed.rs, when `IRONTENSOR_DIST_CRASH=RANK:STEP[:hang]`
    /// names this rank: a per-step hook that exits (or hangs) at that step. None otherwise,
    /// so that training calls nothing per step unless the test asks for it.
    pub fn failure_test(&self) -> Option<Box<dyn Fn(usize)>> {
        let crash = self.crash.filter(|c| c.rank == self.rank)?;
        let rank = self.rank;
        Some(Box::new(move |step| {
            if step != crash.step {
                return;
            }
            if crash.hang {
                eprintln!("rank {rank}: IRONTENSOR_DIST_CRASH: hanging at step {step}");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            eprintln!("rank {rank}: IRONTENSOR_DIST_CRASH: exiting at step {step}");
            std::process::exit(3);
        }))
    }

    /// Ends the whole job: MPI_Abort, or a plain exit when the MPI thread is stuck in a
    /// collective (mpirun then ends the other ranks, as it does for any rank that exits early).
    pub fn abort(&self, code: i32) -> ! {
        let (done, wait) = channel::<()>();
        let _ = self.jobs.send(Box::new(move |mpi: &Mpi| {
            mpi.abort(code);
            let _ = done.send(());
        }));
        let _ = wait.recv_timeout(Duration::from_secs(5));
        std::process::exit(code);
    }

    /// Shuts MPI down after the last collective (every rank calls it).
    pub fn finalize(&self) -> Result<()> {
        self.submit("MPI_Finalize", |mpi| mpi.finalize()).wait()
    }
}

/// A 64-bit FNV-1a hash over 8-byte words: to compare large buffers across ranks cheaply.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
