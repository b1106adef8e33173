//! [`PoolBuilder`]: starting MPI, each worker rank's local pool, and the
//! check that every rank runs the same binary.

use super::comm::Comm;
use super::dispatch::Dispatcher;
use super::protocol::STOP;
use super::{rank, Pool, Shared};
use crate::error::Error;
use crate::StartMethod;
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Threading;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Configures an MPI [`Pool`]; made by [`Pool::builder`]. Every rank runs
/// the same program, so every rank builds with the same settings; each rank
/// applies them to its own local pool.
///
/// ```no_run
/// use std::time::Duration;
/// let pool = shmpool::mpi::Pool::builder()
///     .processes_per_rank(4)                    // local worker processes on each rank
///     .retries(1)                               // a task whose worker died runs once more
///     .task_timeout(Duration::from_secs(60))
///     .build()?;
/// # Ok::<(), shmpool::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    processes_per_rank: Option<usize>,
    processes_on_rank_0: Option<usize>,
    retries: u32,
    task_timeout: Option<Duration>,
    start_method: Option<StartMethod>,
}

impl PoolBuilder {
    /// The number of local worker processes on each rank. Default: the
    /// rank's share of its node's CPUs, that is the CPUs it is bound to if
    /// mpirun bound it, else the node's CPUs divided among the ranks on that
    /// node (at least 1).
    pub fn processes_per_rank(mut self, n: usize) -> Self {
        self.processes_per_rank = Some(n);
        self
    }

    /// The number of local worker processes on rank 0, which runs tasks
    /// between handing them out, so that a job with one rank per node leaves
    /// no node idle. Default: as on the other ranks
    /// ([`processes_per_rank`](Self::processes_per_rank)). Zero: rank 0 only
    /// hands out tasks (the job then needs at least 2 ranks).
    ///
    /// ```no_run
    /// // Rank 0's node also runs the program's own work: leave it alone.
    /// let pool = shmpool::mpi::Pool::builder().processes_on_rank_0(0).build()?;
    /// # Ok::<(), shmpool::Error>(())
    /// ```
    pub fn processes_on_rank_0(mut self, n: usize) -> Self {
        self.processes_on_rank_0 = Some(n);
        self
    }

    /// How many times a task whose local worker died is run again on the same
    /// rank ([`crate::PoolBuilder::retries`]). Default 0: the call fails with
    /// [`Error::WorkerDied`].
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// How long a task may run on a rank before its local worker is killed
    /// (the call then fails with [`Error::Timeout`];
    /// [`crate::PoolBuilder::task_timeout`]). Default: no limit.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// How each worker rank starts its local worker processes
    /// ([`crate::PoolBuilder::start_method`]). Default: the program's
    /// ([`set_start_method`](crate::set_start_method); fork unless set).
    /// `StartMethod::ForkServer` forks them from a server that never
    /// initialized MPI: the choice for networks whose MPI transport does not
    /// survive a `fork()` of an initialized process (some InfiniBand stacks).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Starts the pool: every rank starts its local pool; on rank 0, returns
    /// the pool; on every other rank, serves tasks until rank 0's pool is
    /// dropped, then returns `None`. Every rank of the job must call it (it
    /// is collective).
    ///
    /// If MPI is not initialized yet, this initializes it, and MPI is
    /// finalized when the pool is done (on rank 0 when it is dropped, on the
    /// others before `build` returns). If the program initialized MPI itself
    /// (`mpi::initialize_with_threading` with at least `Threading::Serialized`
    /// in rsmpi), the pool works on a duplicate of its world communicator and
    /// leaves MPI to the program, which may go on using it afterwards.
    ///
    /// Fails with [`Error::InvalidArgument`] if the job has a single rank and
    /// rank 0 runs no tasks ([`processes_on_rank_0`](Self::processes_on_rank_0)),
    /// or if MPI cannot be called from several threads one at a time
    /// (`MPI_THREAD_SERIALIZED`); with
    /// [`Error::StartFailed`] if a rank runs another binary than rank 0; with
    /// [`Error::RankFailed`] on rank 0 if a rank could not start its local
    /// pool (that rank returns the reason).
    pub fn build(self) -> Result<Option<Pool>, Error> {
        // MPI initialized here is finalized when the pool is done; MPI the
        // program initialized itself stays the program's.
        let (universe, threading) = match mpi::initialize_with_threading(Threading::Serialized) {
            Some((universe, threading)) => (Some(universe), threading),
            None => (None, mpi::environment::threading_support()),
        };
        if threading < Threading::Serialized {
            return Err(Error::invalid(
                "MPI must offer MPI_THREAD_SERIALIZED (initialize it with \
                 mpi::initialize_with_threading(Threading::Serialized), or let the pool do it)",
            ));
        }
        // A communicator of its own: the pool's tags never meet the program's
        // messages.
        let comm = Comm::new(SimpleCommunicator::world().duplicate());
        let (rank, size) = (comm.rank(), comm.size());
        let per_rank = self.processes_per_rank;
        let on_rank_0 = self.processes_on_rank_0.or(per_rank);
        if size < 2 && on_rank_0 == Some(0) {
            return Err(Error::invalid(
                "an MPI pool whose rank 0 runs no tasks needs at least 2 ranks: \
                 start the program with mpirun -n 3 or srun",
            ));
        }
        // Collective: every rank takes part, whatever its settings.
        let share = default_processes(&comm, on_rank_0 != Some(0));
        let processes = if rank == 0 { on_rank_0 } else { per_rank }.unwrap_or(share);
        let local = (processes > 0).then(|| {
            let mut local = crate::Pool::builder()
                .processes(processes)
                .retries(self.retries);
            if let Some(limit) = self.task_timeout {
                local = local.task_timeout(limit);
            }
            if let Some(method) = self.start_method {
                local = local.start_method(method);
            }
            local.build()
        });
        // Every rank reports its binary (the offset of one function from
        // the anchor: equal only in the same executable) and its processes.
        let hello = [
            crate::start::probe_offset(),
            match &local {
                Some(Ok(pool)) => pool.processes() as u64,
                _ => 0,
            },
        ];
        let root = comm.world().process_at_rank(0);
        if rank != 0 {
            root.gather_into(&hello[..]);
            let pool = local.expect("a worker rank has processes")?;
            let served = rank::serve(&comm, &pool);
            drop(pool);
            drop(comm);
            drop(universe); // MPI_Finalize, if the pool initialized MPI
            return served.map(|()| None);
        }
        let mut all = vec![0u64; 2 * size as usize];
        root.gather_into_root(&hello[..], &mut all[..]);
        let local = local.transpose();
        let check = (1..size as usize).try_for_each(|r| {
            if all[2 * r] != hello[0] {
                Err(Error::StartFailed(format!(
                    "rank {r} runs another binary than rank 0 (every rank must run \
                     the same executable: functions travel as code offsets)"
                )))
            } else if all[2 * r + 1] == 0 {
                Err(Error::RankFailed {
                    rank: r as i32,
                    why: "its local pool did not start (that rank's build returned why)".into(),
                })
            } else {
                Ok(())
            }
        });
        let local = match (check, local) {
            (Ok(()), Ok(local)) => local,
            (Err(e), _) | (_, Err(e)) => {
                for r in 1..size {
                    comm.send(r, STOP, &[]);
                }
                return Err(e);
            }
        };
        let processes = all.chunks(2).map(|h| h[1] as usize).sum();
        let computing = usize::from(local.is_some()) + size as usize - 1;
        Ok(Some(Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(Dispatcher::new(comm, local)),
            }),
            ranks: computing,
            processes,
            universe,
        }))
    }
}

/// The default local pool size of this rank: its share of its node's CPUs,
/// among the ranks there that compute (rank 0 too if `root_computes`).
/// Collective over the world communicator: every rank calls it once.
fn default_processes(comm: &Comm, root_computes: bool) -> usize {
    let node = comm.world().split_shared(comm.rank());
    let idle_root = i32::from(comm.rank() == 0 && !root_computes);
    let mut idle_here = 0i32;
    node.all_reduce_into(&idle_root, &mut idle_here, SystemOperation::sum());
    let workers_here = (node.size() - idle_here).max(1) as usize;
    let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
    let online = online_cpus().unwrap_or(allowed).max(1);
    if allowed < online {
        allowed // bound by mpirun to its own CPUs
    } else {
        (online / workers_here).max(1)
    }
}

/// The CPUs online (`_SC_NPROCESSORS_ONLN`): what the C library's `sysconf`
/// reads, `/sys/devices/system/cpu/online`, a list of ranges such as
/// `0-3,6,8-9`.
fn online_cpus() -> Option<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    count_cpu_list(list.trim())
}

/// The number of CPUs a kernel CPU list (`0-3,6`) names.
fn count_cpu_list(list: &str) -> Option<usize> {
    list.split(',').try_fold(0usize, |n, range| {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
        n.checked_add(last.checked_sub(first)? + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count_every_cpu_of_every_range() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3"), Some(4));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None, "a backwards range");
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("x"), None);
        assert!(online_cpus().is_some_and(|n| n >= 1));
    }
}
