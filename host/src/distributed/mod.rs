//! Data-parallel training across processes: who this process is among the job's ranks, and
//! the few collectives the trainer needs (sums and maxima across ranks, a gather for the
//! start-up digests, an abort that ends every rank).
//!
//! The engine is an existing one, never a home-made protocol: MPI (`--features mpi`, through
//! rsmpi; Open MPI or MPICH, launched by `mpirun`/`srun`). A process not started by an MPI
//! launcher (or built without the feature) is a world of one, where every collective is the
//! identity and the trainer is exactly the single-process one.

use std::rc::Rc;

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
mod nccl;

/// Gradients are all-reduced in buckets of this many `f32`s (25 MiB, DDP's default
/// `bucket_cap_mb`): few enough calls for the latency not to matter, small enough that the
/// staging copy stays a fraction of the model.
pub const BUCKET_FLOATS: usize = 25 * (1 << 20) / 4;

/// The collectives a world of ranks offers. Every rank must make the same calls in the same
/// order, as with any MPI program.
pub trait Collective {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum across ranks, in place.
    fn sum_f32(&self, values: &mut [f32]);
    /// Element-wise sum across ranks, in place.
    fn sum_f64(&self, values: &mut [f64]);
    /// Element-wise maximum across ranks, in place.
    fn max_f64(&self, values: &mut [f64]);
    /// Every rank's `bytes` (the same length on every rank), in rank order.
    fn gather_all(&self, bytes: &[u8]) -> Vec<Vec<u8>>;
    /// Ends every rank of the job with `code` (after this rank has printed why).
    fn abort(&self, code: i32) -> !;
    /// What the ranks run on, for logs and the card (`Open MPI v4.1.4`, ...).
    fn engine(&self) -> String;
}

/// A world of one process.
struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn max_f64(&self, _: &mut [f64]) {}
    fn gather_all(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn engine(&self) -> String {
        "one process".into()
    }
}

/// The ranks of this job, shared by everything that takes part in it (on the one thread
/// that calls MPI: `MPI_THREAD_FUNNELED`).
#[derive(Clone)]
pub struct World(Rc<dyn Collective>);

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World(rank {} of {})", self.rank(), self.size())
    }
}

impl Default for World {
    fn default() -> Self {
        Self::alone()
    }
}

impl World {
    /// A world of one process.
    pub fn alone() -> Self {
        Self(Rc::new(Alone))
    }

    /// A world over any [`Collective`] (tests use an in-process one).
    pub fn over(collective: Rc<dyn Collective>) -> Self {
        Self(collective)
    }

    /// The world this process was launched into: MPI's when an MPI launcher started it and
    /// the binary has the `mpi` feature, else a world of one. A launcher without the feature
    /// is an error, rather than N copies of the same single-process run.
    pub fn from_launcher() -> Result<Self, String> {
        let launched = launcher_size();
        #[cfg(feature = "mpi")]
        if launched.is_some() {
            return mpi_world::MpiWorld::initialize().map(|world| Self(Rc::new(world)));
        }
        match launched {
            Some(size) if size > 1 => Err(format!(
                "started by an MPI launcher as one of {size} processes, but this crosstrain \
                 was built without MPI; build it with `cargo build --release --features mpi`"
            )),
            _ => Ok(Self::alone()),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.0.rank()
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// Whether this is rank 0, the one that writes the output.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Whether there is more than one rank.
    pub fn is_distributed(&self) -> bool {
        self.size() > 1
    }

    /// The engine, for logs and the card.
    pub fn engine(&self) -> String {
        self.0.engine()
    }

    /// This rank's share of a global batch: consecutive rows, as even as the batch allows,
    /// the lower ranks taking the odd ones (a last batch shorter than the number of ranks
    /// leaves the highest ranks none, never rank 0).
    pub fn share<'r>(&self, rows: &'r [usize]) -> &'r [usize] {
        let (rank, size) = (self.rank(), self.size());
        let start = (rank * rows.len()).div_ceil(size);
        let end = ((rank + 1) * rows.len()).div_ceil(size);
        &rows[start..end]
    }

    /// Element-wise sum across ranks, in place.
    pub fn sum_f64(&self, values: &mut [f64]) {
        if self.is_distributed() {
            self.0.sum_f64(values);
        }
    }

    /// Element-wise maximum across ranks, in place.
    pub fn max_f64(&self, values: &mut [f64]) {
        if self.is_distributed() {
            self.0.max_f64(values);
        }
    }

    /// Sums `values` across ranks in place, [`BUCKET_FLOATS`] at a time.
    pub fn sum_f32_bucketed(&self, values: &mut [f32]) {
        if self.is_distributed() {
            for bucket in values.chunks_mut(BUCKET_FLOATS) {
                self.0.sum_f32(bucket);
            }
        }
    }

    /// Every rank's `bytes`, in rank order.
    pub fn gather_all(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        if self.is_distributed() {
            self.0.gather_all(bytes)
        } else {
            vec![bytes.to_vec()]
        }
    }

    /// Ends every rank with `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.0.abort(code)
    }
}

/// Sums of tensors across ranks on the GPU (NCCL), for ranks that train on CUDA devices in a
/// build with the `nccl` feature; elsewhere there is none and gradients go through MPI.
pub struct DeviceSum {
    #[cfg(feature = "nccl")]
    comm: nccl::NcclComm,
    #[cfg(not(feature = "nccl"))]
    never: std::convert::Infallible,
}

impl DeviceSum {
    /// The device sum for ranks on `device`, set up by every rank at the same point; `None`
    /// for a world of one, a CPU device, or a build without NCCL.
    pub fn for_device(world: &World, device: &candle_core::Device) -> Result<Option<Self>, String> {
        #[cfg(feature = "nccl")]
        if world.is_distributed() && device.is_cuda() {
            return nccl::NcclComm::new(world, device).map(|comm| Some(Self { comm }));
        }
        let _ = (world, device);
        Ok(None)
    }

    /// `bucket` (1-D, f32, on this rank's GPU) summed across ranks.
    pub fn sum(&self, bucket: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        #[cfg(feature = "nccl")]
        return self.comm.sum(bucket);
        #[cfg(not(feature = "nccl"))]
        {
            let _ = bucket;
            match self.never {}
        }
    }
}

/// This process's rank among the ranks on its machine, as the launcher says (Open MPI,
/// MPICH/Intel MPI, Slurm): which GPU a bare `--device cuda` means on a multi-GPU machine.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// The number of processes an MPI launcher (Open MPI's `mpirun`, MPICH's or Intel's
/// `mpiexec` through PMI, Slurm's `srun`) says this job has, if one started this process.
pub fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A world of `size` ranks seen from `rank`, whose collectives are never called.
    struct Seen {
        rank: usize,
        size: usize,
    }

    impl Collective for Seen {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn sum_f32(&self, _: &mut [f32]) {}
        fn sum_f64(&self, _: &mut [f64]) {}
        fn max_f64(&self, _: &mut [f64]) {}
        fn gather_all(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
            vec![bytes.to_vec(); self.size]
        }
        fn abort(&self, code: i32) -> ! {
            panic!("abort {code}")
        }
        fn engine(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn every_row_of_a_global_batch_goes_to_exactly_one_rank() {
        for (len, size) in [(16, 2), (7, 2), (1, 2), (10, 3), (2, 4)] {
            let rows: Vec<usize> = (100..100 + len).collect();
            let shares: Vec<Vec<usize>> = (0..size)
                .map(|rank| {
                    World::over(Rc::new(Seen { rank, size }))
                        .share(&rows)
                        .to_vec()
                })
                .collect();
            assert_eq!(shares.concat(), rows, "{len} rows on {size} ranks");
            let longest = shares.iter().map(Vec::len).max().unwrap();
            let shortest = shares.iter().map(Vec::len).min().unwrap();
            assert!(longest - shortest <= 1);
            assert!(!shares[0].is_empty());
        }
        let alone = World::alone();
        assert_eq!(alone.share(&[1, 2, 3]), &[1, 2, 3]);
        assert!(alone.is_main() && !alone.is_distributed());
    }
}
