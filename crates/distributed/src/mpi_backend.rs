//! [`MpiCommunicator`]: MPI through rsmpi, one process per rank (feature `mpi`).

use crate::{check_root, Communicator};
use candle_core::Result;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use mpi::Threading;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The most elements one MPI call moves: MPI counts are C `int`s, so longer buffers go in
/// chunks of this many (2³⁰, well below `i32::MAX`).
const MAX_CHUNK: usize = 1 << 30;

/// What the lock guards: the world communicator and the receive buffers of the all-reduces.
struct Inner {
    world: SimpleCommunicator,
    scratch_f32: Vec<f32>,
    scratch_f64: Vec<f64>,
    scratch_u64: Vec<u64>,
}

// SAFETY: `SimpleCommunicator` holds an `MPI_Comm` handle (a raw pointer in Open MPI), which is
// why it is neither `Send` nor `Sync`. MPI was initialised with at least
// `MPI_THREAD_SERIALIZED` (checked in `MpiCommunicator::init`), which allows MPI calls from any
// thread as long as no two run at once; every use of `Inner` goes through the `Mutex` of
// `MpiCommunicator`, so calls are serialised.
unsafe impl Send for Inner {}

/// MPI's world communicator as a [`Communicator`]: one process per rank, launched by
/// `mpirun -np N …` (Open MPI, MPICH) or Slurm's `srun`.
///
/// * **Lifetime.** [`MpiCommunicator::init`] initialises MPI (once per process: MPI cannot be
///   initialised twice) and the value keeps it alive. A rank that is done calls
///   [`finish`](MpiCommunicator::finish) (a barrier); dropping the value after that finalises
///   MPI (`MPI_Finalize`). Dropped without `finish` (an error returned with `?`, a panic) in a
///   job of several ranks, it ends the whole job instead (`MPI_Abort`, exit status 1):
///   `MPI_Finalize` is collective, so a rank that finalised while the others wait in a
///   collective would leave the job hanging (Open MPI 4.1 does hang there). A rank killed
///   by a signal, or one that exits without finalising, also ends the job: `mpirun` sees it.
/// * **Threads.** MPI is initialised with `MPI_THREAD_SERIALIZED` and every call holds one
///   lock, so the value is `Send + Sync` and may be used from any thread, one call at a time.
/// * **Errors.** MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) is kept: a failing MPI
///   call, or a rank that dies, ends the whole job through `mpirun` rather than leaving ranks
///   waiting. Mismatched buffer lengths, which MPI cannot detect, are checked first (one small
///   extra all-reduce per call) and returned as an error on every rank.
/// * **Identical bits.** All-reduces use `MPI_Allreduce` with `MPI_SUM`. The MPI standard does
///   not promise that every rank receives the same bits of a floating-point sum; Open MPI's
///   all-reduce algorithms (`coll/tuned`: recursive doubling, ring, segmented ring,
///   Rabenseifner; `coll/basic`: reduce + broadcast) deliver them nonetheless: each element's
///   total is either computed on one rank and copied to the others, or computed on two ranks
///   as `a + b` and `b + a`, which IEEE 754 addition makes equal. The order of the sum over
///   ranks is the algorithm's (fixed for a given number of ranks and buffer length), not rank
///   order, so with more than two ranks a float sum may differ in the last bits from
///   [`LocalGroup`](crate::LocalGroup)'s. The `recallseg-mpi-selftest` binary
///   (`src/bin/mpi_selftest.rs`) checks bit equality across ranks at lengths that select each
///   of the algorithms (`tests/mpi.rs` runs it on 2 and 3 ranks).
/// * **In place.** rsmpi has no `MPI_IN_PLACE`, so the sum lands in a receive buffer kept
///   between calls and is copied back (one `memcpy` of the buffer).
pub struct MpiCommunicator {
    inner: Mutex<Inner>,
    rank: usize,
    size: usize,
    /// Set by `finish`: every rank reached the end, so the drop may finalise.
    finished: AtomicBool,
    /// Keeps MPI initialised; its drop calls `MPI_Finalize`. Declared after `inner`, so the
    /// communicator is released first.
    _universe: Universe,
}

impl fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpiCommunicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

impl MpiCommunicator {
    /// Initialises MPI and returns the world communicator.
    ///
    /// An error if MPI is already initialised in this process (by an earlier `init`, whose
    /// value may still be alive, or by other code) or cannot give `MPI_THREAD_SERIALIZED`.
    /// Run without a launcher, the process is a world of one rank (an MPI "singleton").
    pub fn init() -> Result<Self> {
        if mpi::environment::is_finalized() {
            candle_core::bail!("mpi: MPI was already finalised in this process");
        }
        let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Serialized)
        else {
            candle_core::bail!(
                "mpi: MPI is already initialised in this process (MpiCommunicator::init may be \
                 called once)"
            );
        };
        if threading < Threading::Serialized {
            candle_core::bail!(
                "mpi: the MPI library provides thread level {threading:?}, \
                 MPI_THREAD_SERIALIZED is needed"
            );
        }
        let world = universe.world();
        let rank = usize::try_from(world.rank())
            .map_err(|_| candle_core::Error::Msg("mpi: negative rank".into()))?;
        let size = usize::try_from(world.size())
            .map_err(|_| candle_core::Error::Msg("mpi: negative size".into()))?;
        Ok(Self {
            inner: Mutex::new(Inner {
                world,
                scratch_f32: Vec::new(),
                scratch_f64: Vec::new(),
                scratch_u64: Vec::new(),
            }),
            rank,
            size,
            finished: AtomicBool::new(false),
            _universe: universe,
        })
    }

    /// The MPI library's own description (`MPI_Get_library_version`), for logs.
    pub fn library_version() -> String {
        mpi::environment::library_version()
            .unwrap_or_else(|_| "unknown".into())
            .trim()
            .to_string()
    }

    /// Marks the normal end of this rank's work: waits until every rank has called `finish`
    /// (a barrier), after which dropping the communicator finalises MPI instead of aborting
    /// the job. Collectives still work after it.
    pub fn finish(&self) -> Result<()> {
        self.barrier()?;
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Ends every rank of the job at once (`MPI_Abort` on the world communicator with exit
    /// status `code`): what a rank that cannot go on calls so that the others do not wait for
    /// it forever. Does not return.
    pub fn abort(&self, code: i32) -> ! {
        // A poisoned lock still holds a usable communicator: abort regardless.
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.world.abort(code)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| candle_core::Error::Msg("mpi: a thread panicked inside MPI".into()))
    }
}

/// Fails on every rank unless every rank passed the same `len` (one all-reduce of two `u64`s:
/// the maximum of `len` and of `!len`, i.e. the maximum and the complement of the minimum).
fn check_same_len(inner: &Inner, what: &str, len: usize, rank: usize) -> Result<()> {
    let mine = [len as u64, !(len as u64)];
    let mut max = [0u64; 2];
    inner
        .world
        .all_reduce_into(&mine[..], &mut max[..], SystemOperation::max());
    let (longest, shortest) = (max[0], !max[1]);
    if longest != shortest {
        candle_core::bail!(
            "mpi: {what} of {len} values on rank {rank}, but the ranks' lengths range from \
             {shortest} to {longest}"
        );
    }
    Ok(())
}

/// `MPI_Allreduce(MPI_SUM)` of `values` in chunks through `scratch`, copied back.
fn all_reduce_sum<T>(world: &SimpleCommunicator, values: &mut [T], scratch: &mut Vec<T>)
where
    T: mpi::datatype::Equivalence + Copy + Default,
{
    let chunk = values.len().min(MAX_CHUNK);
    if scratch.len() < chunk {
        scratch.resize(chunk, T::default());
    }
    for part in values.chunks_mut(MAX_CHUNK) {
        let recv = &mut scratch[..part.len()];
        world.all_reduce_into(&part[..], recv, SystemOperation::sum());
        part.copy_from_slice(recv);
    }
}

macro_rules! sum_impl {
    ($self:ident, $values:ident, $scratch:ident) => {{
        if $self.size == 1 {
            return Ok(());
        }
        let mut inner = $self.lock()?;
        check_same_len(&inner, "all-reduce", $values.len(), $self.rank)?;
        let Inner {
            world, $scratch, ..
        } = &mut *inner;
        all_reduce_sum(world, $values, $scratch);
        Ok(())
    }};
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        sum_impl!(self, values, scratch_f32)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        sum_impl!(self, values, scratch_f64)
    }

    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()> {
        sum_impl!(self, values, scratch_u64)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, self.size)?;
        if self.size == 1 {
            return Ok(());
        }
        let inner = self.lock()?;
        let root_process = inner.world.process_at_rank(root as mpi::topology::Rank);
        // The length first, so that every rank can size its buffer.
        let mut len = bytes.len() as u64;
        root_process.broadcast_into(&mut len);
        let len = usize::try_from(len).map_err(|_| {
            candle_core::Error::Msg(format!("mpi: a broadcast of {len} bytes does not fit here"))
        })?;
        if self.rank != root {
            bytes.clear();
            bytes.resize(len, 0);
        }
        for part in bytes.chunks_mut(MAX_CHUNK) {
            root_process.broadcast_into(part);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        self.lock()?.world.barrier();
        Ok(())
    }
}

impl Drop for MpiCommunicator {
    fn drop(&mut self) {
        if self.size > 1 && !*self.finished.get_mut() {
            // MPI_Finalize is collective: a rank that finalises while the others wait in a
            // collective would leave them (and itself) waiting. End the job instead.
            let why = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped without MpiCommunicator::finish"
            };
            eprintln!("mpi: rank {} {why}; aborting the job", self.rank);
            let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
            inner.world.abort(1);
        }
        // Otherwise `_universe` finalises MPI when it drops, after this.
    }
}
