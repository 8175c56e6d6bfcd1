//! The MPI world, through rsmpi. MPI is initialised once, by the first call, with
//! `MPI_THREAD_FUNNELED`: the compute threads never call MPI, only the thread that runs the
//! training loop does. It is finalised when the process's last `World` is dropped.

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::Collective;

pub(super) struct MpiWorld {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl MpiWorld {
    pub(super) fn initialize() -> Result<Self, String> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or("MPI was already initialised in this process")?;
        if threading < Threading::Funneled {
            return Err(format!(
                "this MPI offers {threading:?} threading; crosstrain needs at least Funneled"
            ));
        }
        let world = universe.world();
        let rank = usize::try_from(world.rank()).map_err(|e| e.to_string())?;
        let size = usize::try_from(world.size()).map_err(|e| e.to_string())?;
        Ok(Self {
            world,
            rank,
            size,
            _universe: universe,
        })
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, values: &mut [f32]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn max_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::max());
    }

    fn gather_all(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut all = vec![0u8; bytes.len() * self.size];
        self.world.all_gather_into(bytes, &mut all[..]);
        all.chunks(bytes.len().max(1)).map(<[u8]>::to_vec).collect()
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn engine(&self) -> String {
        let (major, minor) = mpi::environment::version();
        let library = mpi::environment::library_version().unwrap_or_default();
        let library = library
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        format!("MPI {major}.{minor} ({library})")
    }
}
