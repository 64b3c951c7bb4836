//! [`NcclCommunicator`]: NCCL for tensors on this rank's GPU, MPI for everything else
//! (feature `nccl`).

use crate::{all_reduce_sum_through_host, Communicator, MpiCommunicator};
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor,
};
use std::ffi::c_char;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// The length of NCCL's unique id (`ncclUniqueId`, `NCCL_UNIQUE_ID_BYTES`).
const UNIQUE_ID_BYTES: usize = 128;

/// The NCCL communicator, behind the lock of [`NcclCommunicator`].
struct NcclComm(Comm);

// SAFETY: `Comm` holds an `ncclComm_t` (a raw pointer), hence is not `Send`. NCCL lets a
// communicator be used from any thread but not from two at once; every use goes through the
// `Mutex` of `NcclCommunicator`, which serialises them.
unsafe impl Send for NcclComm {}

/// One process and one GPU per rank, as Horovod and PyTorch's DDP run: the all-reduce of a
/// tensor on this rank's GPU ([`Communicator::all_reduce_sum`], what the trainer's gradient
/// bucket and SyncBatchNorm use) is an NCCL all-reduce on the device, with no copy through host
/// memory; host buffers, broadcasts and barriers go through MPI, which also launches the
/// processes (`mpirun -np N`, `srun`) and hands NCCL's unique id from rank 0 to the others.
///
/// * **Device.** Each rank opens its own GPU, usually `cuda:LOCAL_RANK`
///   ([`local_rank`](crate::local_rank) reads it from the launcher), and passes it to
///   [`NcclCommunicator::new`]. The NCCL communicator is bound to that device's candle stream,
///   so each all-reduce is ordered after the kernels candle queued before it and before those
///   queued after it, without a host synchronisation. Tensors must live on that very
///   [`Device`] (the one returned by [`Communicator::device`]): candle tells devices apart by
///   the handle, not by the ordinal.
/// * **Dtypes.** `f32` and `f64` are summed as they are; `f16` and `bf16` are summed in `f32`
///   on the device (as the host path does). Other dtypes, and tensors on another device, take
///   the host path (MPI).
/// * **Identical bits.** NCCL's ring and tree all-reduces reduce each chunk along one fixed
///   path and broadcast the result, so every rank receives the same bits, as with MPI.
/// * **Lifetime.** As [`MpiCommunicator`]: call [`finish`](NcclCommunicator::finish) at the
///   normal end; a job of several ranks whose MPI communicator is dropped without it aborts.
///
/// The `recallseg-nccl-selftest` binary checks every operation on the GPUs `mpirun` gives it
/// (`tests/nccl.rs`; one rank per GPU).
pub struct NcclCommunicator {
    /// Declared first: the NCCL communicator is released before the MPI one.
    nccl: Mutex<NcclComm>,
    cuda: CudaDevice,
    device: Device,
    mpi: Arc<MpiCommunicator>,
}

impl fmt::Debug for NcclCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NcclCommunicator")
            .field("rank", &self.mpi.rank())
            .field("size", &self.mpi.size())
            .field("device", &self.device)
            .finish()
    }
}

fn nccl_err(what: &str, e: impl fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("nccl: {what}: {e:?}"))
}

impl NcclCommunicator {
    /// Initialises MPI ([`MpiCommunicator::init`]) and an NCCL communicator over the same
    /// ranks on `device`, this rank's CUDA device.
    pub fn init(device: &Device) -> Result<Self> {
        Self::new(Arc::new(MpiCommunicator::init()?), device)
    }

    /// An NCCL communicator over the ranks of `mpi`, on `device` (a CUDA device): rank 0
    /// creates NCCL's unique id and broadcasts it with MPI, then every rank joins
    /// (`ncclCommInitRank`, collective). Every rank must call it, each with its own GPU.
    pub fn new(mpi: Arc<MpiCommunicator>, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            candle_core::bail!(
                "nccl: the NCCL backend needs this rank's CUDA device, got {device:?}"
            );
        };
        // Rank 0's id, or its error text (so that every rank fails with the same message
        // instead of the others waiting in ncclCommInitRank).
        let mut message = if mpi.rank() == 0 {
            match Id::new() {
                Ok(id) => [&[1u8][..], &id.internal().map(|c| c as u8)].concat(),
                Err(e) => [&[0u8][..], format!("{e:?}").as_bytes()].concat(),
            }
        } else {
            Vec::new()
        };
        mpi.broadcast_bytes(&mut message, 0)?;
        let id = match message.split_first() {
            Some((1, bytes)) if bytes.len() == UNIQUE_ID_BYTES => {
                Id::uninit(std::array::from_fn(|i| bytes[i] as c_char))
            }
            Some((0, text)) => candle_core::bail!(
                "nccl: ncclGetUniqueId failed on rank 0: {}",
                String::from_utf8_lossy(text)
            ),
            _ => candle_core::bail!(
                "nccl: rank 0 sent {} bytes, not an NCCL unique id",
                message.len()
            ),
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), mpi.rank(), mpi.size(), id)
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Self {
            nccl: Mutex::new(NcclComm(comm)),
            cuda: cuda.clone(),
            device: device.clone(),
            mpi,
        })
    }

    /// The MPI communicator underneath (host collectives, [`MpiCommunicator::abort`]).
    pub fn mpi(&self) -> &Arc<MpiCommunicator> {
        &self.mpi
    }

    /// The normal end of this rank's work: waits for the work queued on the device, then
    /// [`MpiCommunicator::finish`].
    pub fn finish(&self) -> Result<()> {
        self.device.synchronize()?;
        self.mpi.finish()
    }

    fn lock(&self) -> Result<MutexGuard<'_, NcclComm>> {
        self.nccl
            .lock()
            .map_err(|_| candle_core::Error::Msg("nccl: a thread panicked inside NCCL".into()))
    }

    fn holds(&self, t: &Tensor) -> bool {
        matches!(t.device(), Device::Cuda(d) if d.same_device(&self.cuda))
    }
}

/// The NCCL all-reduce sum as a candle op on CUDA storage (no backward: callers that need one
/// wrap it, as [`all_reduce_sum_autograd`](crate::all_reduce_sum_autograd) does).
struct NcclSum<'a>(&'a NcclCommunicator);

impl CustomOp1 for NcclSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("nccl: the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nccl: the all-reduce needs a contiguous tensor");
        };
        let dev = &storage.device;
        let comm = self.0.lock()?;
        macro_rules! sum {
            ($t:ty) => {{
                let src = storage.as_cuda_slice::<$t>()?.slice(start..end);
                // SAFETY: the all-reduce writes every element of `dst` before anything reads
                // it: it is queued on the stream that allocated `dst` and that later reads use.
                let mut dst = unsafe { dev.alloc::<$t>(end - start)? };
                comm.0
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(|e| nccl_err("ncclAllReduce", e))?;
                CudaStorage::wrap_cuda_slice(dst, dev.clone())
            }};
        }
        let out = match storage.dtype() {
            DType::F32 => sum!(f32),
            DType::F64 => sum!(f64),
            other => candle_core::bail!("nccl: all-reduce of {other:?} (f32 or f64 expected)"),
        };
        Ok((out, layout.shape().clone()))
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.mpi.all_reduce_sum_f32(values)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.mpi.all_reduce_sum_f64(values)
    }

    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()> {
        self.mpi.all_reduce_sum_u64(values)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        self.mpi.broadcast_bytes(bytes, root)
    }

    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }

    /// On this rank's GPU, an NCCL all-reduce (also with one rank, so that a single GPU
    /// exercises the same path); elsewhere, the host path.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        if !self.holds(t) {
            return all_reduce_sum_through_host(self, t);
        }
        match t.dtype() {
            DType::F32 | DType::F64 => t.contiguous()?.apply_op1_no_bwd(&NcclSum(self)),
            DType::F16 | DType::BF16 => t
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(&NcclSum(self))?
                .to_dtype(t.dtype()),
            _ => all_reduce_sum_through_host(self, t),
        }
    }

    fn device(&self) -> Option<Device> {
        Some(self.device.clone())
    }
}
