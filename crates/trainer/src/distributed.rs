//! How `recallseg train` joins a data-parallel group: the `--distributed` choice, the MPI
//! communicator when launched by `mpirun`/`srun` (feature `mpi`), the NCCL communicator on each
//! rank's GPU (feature `nccl`), and which GPU each rank trains on.

use recallseg_distributed::SharedCommunicator;
#[cfg(feature = "mpi")]
use std::sync::Arc;

/// The `--distributed` choice of `recallseg train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DistributedBackend {
    /// MPI when the process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`),
    /// otherwise one process.
    #[default]
    Auto,
    /// One process, whatever launched it.
    Off,
    /// MPI (needs the `mpi` feature); one rank when run without a launcher.
    Mpi,
    /// NCCL on each rank's GPU for the gradient all-reduce, MPI to launch the processes and for
    /// the small host collectives (needs the `nccl` feature and `train.device = "cuda"`, one
    /// process per GPU). `auto` picks it in a build with `nccl` when `train.device` is CUDA.
    Nccl,
}

impl DistributedBackend {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [DistributedBackend; 4] = [
        DistributedBackend::Auto,
        DistributedBackend::Off,
        DistributedBackend::Mpi,
        DistributedBackend::Nccl,
    ];

    /// The name the command line uses: `auto`, `off`, `mpi`, `nccl`.
    pub fn name(self) -> &'static str {
        match self {
            DistributedBackend::Auto => "auto",
            DistributedBackend::Off => "off",
            DistributedBackend::Mpi => "mpi",
            DistributedBackend::Nccl => "nccl",
        }
    }
}

impl std::str::FromStr for DistributedBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DistributedBackend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("`{s}` is not one of auto, off, mpi, nccl"))
    }
}

/// The device a rank trains on: under data parallelism (`world > 1`) `cuda` means the rank's
/// own GPU, `cuda:<local rank>` (the launcher's node-local rank, else the global rank); any
/// other text, and every text in a world of one, is taken as written.
pub fn rank_device(device: &str, world: usize, rank: usize) -> String {
    rank_device_with(
        device,
        world,
        recallseg_distributed::local_rank().unwrap_or(rank),
    )
}

/// [`rank_device`] with the node-local rank given.
fn rank_device_with(device: &str, world: usize, local_rank: usize) -> String {
    match device {
        "cuda" if world > 1 => format!("cuda:{local_rank}"),
        d => d.to_string(),
    }
}

/// The group this process trains in, from [`join`].
#[derive(Debug, Default)]
pub struct Group {
    /// The communicator handed to the trainer (`None`: one process).
    pub communicator: Option<SharedCommunicator>,
    #[cfg(feature = "mpi")]
    mpi: Option<Arc<recallseg_distributed::MpiCommunicator>>,
    #[cfg(feature = "nccl")]
    nccl: Option<Arc<recallseg_distributed::NcclCommunicator>>,
}

impl Group {
    /// This process's rank (0 for one process).
    pub fn rank(&self) -> usize {
        self.communicator.as_ref().map_or(0, |c| c.rank())
    }

    /// Hands `error` back, first printing it with this rank's number when the group is a job of
    /// several ranks: dropping the group then ends the whole job at once (`MPI_Abort`), before
    /// the caller could print it.
    pub fn fail(&self, error: anyhow::Error) -> anyhow::Error {
        if self.communicator.as_ref().is_some_and(|c| c.size() > 1) {
            print_rank_error(self.rank(), &error);
        }
        error
    }

    /// Marks the normal end of this rank's work (MPI: every rank waits for the others, then
    /// MPI is finalised instead of the job being aborted). Without it, a rank that ends with an
    /// error takes the whole job down at once rather than leaving the others waiting.
    pub fn finish(&self) -> anyhow::Result<()> {
        #[cfg(feature = "nccl")]
        if let Some(n) = &self.nccl {
            // The GPU's queued work first, then MPI's barrier.
            n.finish()?;
            return Ok(());
        }
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.finish()?;
        }
        Ok(())
    }
}

/// Joins the data-parallel group `choice` asks for; `device` is `train.device`. `Auto` uses
/// MPI when an MPI launcher started this process, with NCCL on top in a build with the `nccl`
/// feature when `device` is CUDA. A launcher-started process of a build without the `mpi`
/// feature is an error (every rank would otherwise train the same run on its own).
pub fn join(choice: DistributedBackend, device: &str) -> anyhow::Result<Group> {
    let launched = recallseg_distributed::launched_by_mpi();
    let on_gpu = device == "cuda" || device.starts_with("cuda:");
    let backend = match choice {
        DistributedBackend::Auto if !launched => DistributedBackend::Off,
        DistributedBackend::Auto if cfg!(feature = "nccl") && on_gpu => DistributedBackend::Nccl,
        DistributedBackend::Auto => DistributedBackend::Mpi,
        other => other,
    };
    match backend {
        DistributedBackend::Off | DistributedBackend::Auto => Ok(Group::default()),
        DistributedBackend::Mpi => join_mpi(),
        DistributedBackend::Nccl => join_nccl(device),
    }
}

/// What a rank prints of its error before the job is aborted.
fn print_rank_error(rank: usize, error: &anyhow::Error) {
    note!(
        "error: rank {rank}: {}",
        crate::error_text::error_chain_text(error)
    );
}

#[cfg(feature = "nccl")]
fn join_nccl(device: &str) -> anyhow::Result<Group> {
    use recallseg_distributed::Communicator;
    let m = Arc::new(recallseg_distributed::MpiCommunicator::init()?);
    // `m` outlives the error: its drop ends a job of several ranks before anyone could print.
    nccl_group(&m, device).inspect_err(|e| {
        if m.size() > 1 {
            print_rank_error(m.rank(), e);
        }
    })
}

#[cfg(feature = "nccl")]
fn nccl_group(
    m: &Arc<recallseg_distributed::MpiCommunicator>,
    device: &str,
) -> anyhow::Result<Group> {
    use recallseg_distributed::Communicator;
    let m = m.clone();
    let text = rank_device(device, m.size(), m.rank());
    let spec = crate::config::DeviceSpec::parse(&text)
        .map_err(|e| anyhow::anyhow!("train.device: {e}"))?;
    if !matches!(spec, crate::config::DeviceSpec::Cuda(_)) {
        anyhow::bail!(
            "train.device: `{device}`, but the NCCL backend needs a GPU per rank (train.device = \
             \"cuda\"); use --distributed mpi to train on CPUs"
        );
    }
    let gpu = spec
        .open()
        .map_err(|e| anyhow::anyhow!("rank {}: {text}: {e}", m.rank()))?;
    if m.size() == 1 {
        // One rank: train as a single process (the communicator stays alive to finalise MPI).
        return Ok(Group {
            communicator: None,
            mpi: Some(m),
            nccl: None,
        });
    }
    let n = Arc::new(recallseg_distributed::NcclCommunicator::new(
        m.clone(),
        &gpu,
    )?);
    let communicator: SharedCommunicator = n.clone();
    Ok(Group {
        communicator: Some(communicator),
        mpi: Some(m),
        nccl: Some(n),
    })
}

#[cfg(not(feature = "nccl"))]
fn join_nccl(_device: &str) -> anyhow::Result<Group> {
    anyhow::bail!(
        "this recallseg was built without NCCL (--distributed nccl): rebuild it with `cargo \
         build --release -p recallseg-cli --features nccl` (needs CUDA, an MPI library and \
         libnccl; scripts/cuda-env.sh brings CUDA and NCCL), or use --distributed mpi"
    )
}

#[cfg(feature = "mpi")]
fn join_mpi() -> anyhow::Result<Group> {
    let m = Arc::new(recallseg_distributed::MpiCommunicator::init()?);
    if recallseg_distributed::Communicator::size(m.as_ref()) == 1 {
        // One rank: train as a single process (the communicator stays alive to finalise MPI).
        return Ok(Group {
            communicator: None,
            mpi: Some(m),
            #[cfg(feature = "nccl")]
            nccl: None,
        });
    }
    let communicator: SharedCommunicator = m.clone();
    Ok(Group {
        communicator: Some(communicator),
        mpi: Some(m),
        #[cfg(feature = "nccl")]
        nccl: None,
    })
}

#[cfg(not(feature = "mpi"))]
fn join_mpi() -> anyhow::Result<Group> {
    anyhow::bail!(
        "this recallseg was built without MPI, but it was started by an MPI launcher (or with \
         --distributed mpi): rebuild it with `cargo build --release -p recallseg-cli \
         --features mpi` (needs an MPI library, e.g. Debian's libopenmpi-dev), or run one \
         process with --distributed off"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_means_each_ranks_own_gpu_under_data_parallelism() {
        assert_eq!(rank_device_with("cuda", 4, 3), "cuda:3");
        assert_eq!(rank_device_with("cuda", 1, 3), "cuda");
        assert_eq!(rank_device_with("cuda:1", 4, 3), "cuda:1");
        assert_eq!(rank_device_with("cpu", 4, 3), "cpu");
    }

    #[test]
    fn off_and_auto_without_a_launcher_train_alone() {
        if recallseg_distributed::launched_by_mpi() {
            return; // this test process was itself started by a launcher
        }
        for choice in [DistributedBackend::Off, DistributedBackend::Auto] {
            let g = join(choice, "cuda").unwrap();
            assert!(g.communicator.is_none());
            assert_eq!(g.rank(), 0);
            g.finish().unwrap();
        }
    }

    #[cfg(not(feature = "nccl"))]
    #[test]
    fn nccl_in_a_build_without_it_says_how_to_build_it() {
        let e = join(DistributedBackend::Nccl, "cuda")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without NCCL") && e.contains("--features nccl"),
            "{e}"
        );
    }
}
