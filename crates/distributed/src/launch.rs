//! Was this process started by an MPI launcher? (Environment only: needs no MPI library.)

/// Whether this process was started as one rank of a multi-process job by an MPI launcher
/// (`mpirun`/`mpiexec` of Open MPI or MPICH, Slurm's `srun`), so that the program should
/// initialise MPI (`MpiCommunicator::init`, feature `mpi`) rather
/// than run as a single process.
///
/// It reads only the environment, and is available without feature `mpi`, so that a build
/// without MPI can refuse to run as `N` independent copies of the same job. The variables, in
/// order:
///
/// * `OMPI_COMM_WORLD_SIZE`: set by Open MPI's `mpirun` for every rank (even `-np 1`);
/// * `PMI_SIZE`: set by MPICH's Hydra (`mpiexec`) and by Slurm's PMI-1/PMI-2 plugins;
/// * `PMIX_RANK`: set by every PMIx launcher (Open MPI ≥ 4's `prterun`, `srun --mpi=pmix`);
/// * `SLURM_STEP_NUM_TASKS` greater than 1: a task of a multi-task `srun` step whose MPI plugin
///   sets none of the above. (`SLURM_NTASKS` alone is not enough: it is also set in the batch
///   script of a multi-task allocation, which is one process until it calls `srun`.)
pub fn launched_by_mpi() -> bool {
    launched_by_mpi_with(|k| std::env::var(k).ok())
}

/// [`launched_by_mpi`] on an environment given as a lookup function (for tests and for
/// launchers that pass an environment of their own).
pub fn launched_by_mpi_with(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    if set("OMPI_COMM_WORLD_SIZE") || set("PMI_SIZE") || set("PMIX_RANK") {
        return true;
    }
    var("SLURM_STEP_NUM_TASKS")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 1)
}

/// This rank's index among the ranks on the same machine, from the launcher's environment
/// (`OMPI_COMM_WORLD_LOCAL_RANK` of Open MPI, `MPI_LOCALRANKID` of MPICH, `SLURM_LOCALID` of
/// `srun`, `PMIX_LOCAL_RANK` of PMIx launchers), or `None` outside a launcher: the usual choice of GPU, `cuda:{local_rank}`, when
/// every rank drives one GPU.
pub fn local_rank() -> Option<usize> {
    local_rank_with(|k| std::env::var(k).ok())
}

/// [`local_rank`] on an environment given as a lookup function.
pub fn local_rank_with(var: impl Fn(&str) -> Option<String>) -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|k| var(k).and_then(|v| v.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn launchers_are_recognised_by_their_variables() {
        assert!(!launched_by_mpi_with(env(&[])));
        assert!(launched_by_mpi_with(env(&[("OMPI_COMM_WORLD_SIZE", "1")])));
        assert!(launched_by_mpi_with(env(&[("PMI_SIZE", "4")])));
        assert!(launched_by_mpi_with(env(&[("PMIX_RANK", "0")])));
        assert!(launched_by_mpi_with(env(&[("SLURM_STEP_NUM_TASKS", "2")])));
        // A one-task step, a batch script of a multi-task job, empty values: not launched.
        assert!(!launched_by_mpi_with(env(&[("SLURM_STEP_NUM_TASKS", "1")])));
        assert!(!launched_by_mpi_with(env(&[("SLURM_NTASKS", "8")])));
        assert!(!launched_by_mpi_with(env(&[("OMPI_COMM_WORLD_SIZE", "")])));
        assert!(!launched_by_mpi_with(env(&[("SLURM_STEP_NUM_TASKS", "x")])));
    }

    #[test]
    fn local_rank_comes_from_the_launcher() {
        assert_eq!(local_rank_with(env(&[])), None);
        assert_eq!(
            local_rank_with(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "3")])),
            Some(3)
        );
        assert_eq!(local_rank_with(env(&[("SLURM_LOCALID", "1")])), Some(1));
        assert_eq!(local_rank_with(env(&[("MPI_LOCALRANKID", "x")])), None);
    }
}
