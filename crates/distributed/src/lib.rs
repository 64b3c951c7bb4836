//! Collectives for data-parallel training: the [`Communicator`] trait and its backends.
//!
//! A data-parallel run is `size` processes (ranks), each holding a full copy of the model and
//! reading its own shard of every batch. They meet in a few collective operations: summing
//! buffers over all ranks (gradients, loss statistics, BatchNorm moments), broadcasting from one
//! rank, waiting for each other. This crate says what those operations are ([`Communicator`])
//! and provides them on existing engines, never on home-made networking:
//!
//! * [`SingleProcess`]: one rank; every collective is the identity. What a plain run uses.
//! * [`LocalGroup`]: `n` ranks as threads of one process, summing in rank order (results never
//!   depend on thread scheduling). For tests and for checking multi-rank logic on one machine.
//! * `MpiCommunicator` (feature `mpi`): MPI through rsmpi, one process per rank, launched by
//!   `mpirun -np N …` or Slurm's `srun`; [`launched_by_mpi`] (any build) says from the
//!   environment whether this process is such a rank.
//! * `NcclCommunicator` (feature `nccl`, which includes `mpi` and candle's CUDA): one process
//!   per GPU; tensors on the rank's GPU are summed by NCCL on the device, the rest (and the
//!   launch) goes through MPI. [`Communicator::device`] names the GPU it is bound to.
//!
//! Every backend sums in a fixed order, so every rank receives bit-identical results: replicas
//! that start equal and apply the same update stay equal.
//!
//! ```
//! use recallseg_distributed::{Communicator, LocalGroup};
//!
//! let ranks = LocalGroup::new(2);
//! let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
//!     let handles: Vec<_> = ranks
//!         .iter()
//!         .map(|comm| {
//!             s.spawn(move || {
//!                 let mut v = vec![comm.rank() as f32 + 1.0, 10.0];
//!                 comm.all_reduce_sum_f32(&mut v).unwrap();
//!                 v
//!             })
//!         })
//!         .collect();
//!     handles.into_iter().map(|h| h.join().unwrap()).collect()
//! });
//! assert_eq!(sums, vec![vec![3.0, 20.0], vec![3.0, 20.0]]);
//! ```

mod autograd;
mod launch;
mod local;
#[cfg(feature = "mpi")]
mod mpi_backend;
#[cfg(feature = "nccl")]
mod nccl_backend;

pub use autograd::all_reduce_sum_autograd;
pub use launch::{launched_by_mpi, launched_by_mpi_with, local_rank, local_rank_with};
pub use local::{LocalComm, LocalGroup};
#[cfg(feature = "mpi")]
pub use mpi_backend::MpiCommunicator;
#[cfg(feature = "nccl")]
pub use nccl_backend::NcclCommunicator;

use candle_core::{DType, Device, Result, Tensor};
use std::fmt;
use std::sync::Arc;

/// The collective operations data-parallel training needs, over a fixed group of ranks.
///
/// Every rank must call the same collectives in the same order with buffers of the same length;
/// a length mismatch is an error where the backend can detect it. Sums run in a fixed order,
/// so every rank receives identical bits.
pub trait Communicator: Send + Sync + fmt::Debug {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// The backend's name (`"single"`, `"local"`, `"mpi"`, `"nccl"`), for logs.
    fn backend(&self) -> &'static str;

    /// Replaces `values` by their elementwise sum over all ranks.
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()>;

    /// Replaces `values` by their elementwise sum over all ranks.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;

    /// Replaces `values` by their elementwise sum over all ranks (exact integer counts).
    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()>;

    /// Replaces `bytes` on every rank by `root`'s (whose length may differ from the others').
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// The elementwise sum of `t` over all ranks, on `t`'s device and in its dtype (`f32` or
    /// `f64`; other dtypes are summed in `f32`). The default goes through host memory; a
    /// device-native backend (NCCL) overrides it.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        all_reduce_sum_through_host(self, t)
    }

    /// The device this communicator is bound to, for backends that reduce tensors on one
    /// device natively (NCCL: this rank's GPU). A trainer given such a communicator trains on
    /// that [`Device`] (candle tells devices apart by handle, so tensors must live on this very
    /// one to take the native path). `None` (the default): tensors of any device are summed
    /// through host memory.
    fn device(&self) -> Option<Device> {
        None
    }
}

/// [`Communicator::all_reduce_sum`]'s default: the tensor's values go to host memory, are
/// summed with the host-buffer all-reduce, and come back to the tensor's device and dtype.
pub(crate) fn all_reduce_sum_through_host<C: Communicator + ?Sized>(
    comm: &C,
    t: &Tensor,
) -> Result<Tensor> {
    if comm.size() == 1 {
        return Ok(t.clone());
    }
    let shape = t.shape().clone();
    let flat = t.flatten_all()?;
    let summed = if t.dtype() == DType::F64 {
        let mut v = flat.to_vec1::<f64>()?;
        comm.all_reduce_sum_f64(&mut v)?;
        Tensor::from_vec(v, shape, t.device())?
    } else {
        let mut v = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        comm.all_reduce_sum_f32(&mut v)?;
        Tensor::from_vec(v, shape, t.device())?.to_dtype(t.dtype())?
    };
    Ok(summed)
}

/// One process, one rank: every collective leaves its buffer as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn backend(&self) -> &'static str {
        "single"
    }

    fn all_reduce_sum_f32(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_sum_u64(&self, _values: &mut [u64]) -> Result<()> {
        Ok(())
    }

    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, 1)
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// A shared handle on a communicator, as the trainer and the models hold it.
pub type SharedCommunicator = Arc<dyn Communicator>;

/// The single-process communicator as a shared handle.
pub fn single_process() -> SharedCommunicator {
    Arc::new(SingleProcess)
}

/// An error unless `root < size`.
pub(crate) fn check_root(root: usize, size: usize) -> Result<()> {
    if root >= size {
        candle_core::bail!("broadcast root {root} is not a rank of a group of {size}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_leaves_buffers_alone() {
        let c = SingleProcess;
        let mut v = vec![1.5f32, -2.0];
        c.all_reduce_sum_f32(&mut v).unwrap();
        assert_eq!(v, vec![1.5, -2.0]);
        let mut b = b"abc".to_vec();
        c.broadcast_bytes(&mut b, 0).unwrap();
        assert_eq!(b, b"abc");
        assert!(c.broadcast_bytes(&mut b, 1).is_err());
        let t = Tensor::new(&[1.0f32, 2.0], &candle_core::Device::Cpu).unwrap();
        let s = c.all_reduce_sum(&t).unwrap();
        assert_eq!(s.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}
