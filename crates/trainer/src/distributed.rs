//! How `recallseg train` joins a data-parallel group: the `--distributed` choice, the MPI
//! communicator when launched by `mpirun`/`srun` (feature `mpi`), and the GPU of each rank.

use recallseg_distributed::SharedCommunicator;
#[cfg(feature = "mpi")]
use std::sync::Arc;

/// The `--distributed` choice of `recallseg train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DistributedBackend {
    /// MPI when the process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`),
    /// otherwise one process.
    #[default]
    Auto,
    /// One process, whatever launched it.
    Off,
    /// MPI (needs the `mpi` feature); one rank when run without a launcher.
    Mpi,
}

/// The group this process trains in, from [`join`].
#[derive(Debug, Default)]
pub struct Group {
    /// The communicator handed to the trainer (`None`: one process).
    pub communicator: Option<SharedCommunicator>,
    #[cfg(feature = "mpi")]
    mpi: Option<Arc<recallseg_distributed::MpiCommunicator>>,
}

impl Group {
    /// This process's rank (0 for one process).
    pub fn rank(&self) -> usize {
        self.communicator.as_ref().map_or(0, |c| c.rank())
    }

    /// Marks the normal end of this rank's work (MPI: every rank waits for the others, then
    /// MPI is finalised instead of the job being aborted). Without it, a rank that ends with an
    /// error takes the whole job down at once rather than leaving the others waiting.
    pub fn finish(&self) -> anyhow::Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.finish()?;
        }
        Ok(())
    }
}

/// Joins the data-parallel group `choice` asks for. `Auto` uses MPI when an MPI launcher
/// started this process; a launcher-started process of a build without the `mpi` feature is an
/// error (every rank would otherwise train the same run on its own).
pub fn join(choice: DistributedBackend) -> anyhow::Result<Group> {
    let launched = recallseg_distributed::launched_by_mpi();
    let use_mpi = match choice {
        DistributedBackend::Off => false,
        DistributedBackend::Mpi => true,
        DistributedBackend::Auto => launched,
    };
    if !use_mpi {
        return Ok(Group::default());
    }
    join_mpi()
}

#[cfg(feature = "mpi")]
fn join_mpi() -> anyhow::Result<Group> {
    let m = Arc::new(recallseg_distributed::MpiCommunicator::init()?);
    if recallseg_distributed::Communicator::size(m.as_ref()) == 1 {
        // One rank: train as a single process (the communicator stays alive to finalise MPI).
        return Ok(Group {
            communicator: None,
            mpi: Some(m),
        });
    }
    let communicator: SharedCommunicator = m.clone();
    Ok(Group {
        communicator: Some(communicator),
        mpi: Some(m),
    })
}

#[cfg(not(feature = "mpi"))]
fn join_mpi() -> anyhow::Result<Group> {
    anyhow::bail!(
        "this recallseg was built without MPI, but it was started by an MPI launcher (or with \
         --distributed mpi): rebuild it with `cargo build --release -p recallseg-trainer \
         --features mpi` (needs an MPI library, e.g. Debian's libopenmpi-dev), or run one \
         process with --distributed off"
    )
}
