//! Gradients all-reduced between GPUs through NCCL (`--features nccl`, which brings `cuda`
//! and `mpi`): MPI launches the ranks and carries NCCL's unique id from rank 0 to the others;
//! NCCL then sums the gradient buckets device to device, with no copy through the host.
//!
//! Untested here (this project's machines have no multi-GPU host): it compiles in the CUDA
//! build (`FEATURES=cuda,nccl,mpi scripts/build-cuda.sh`), and every rank on a CPU device
//! keeps using MPI's sums. See README, "GPU (CUDA)".

use std::rc::Rc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::World;

/// An NCCL communicator over the job's ranks, on one CUDA device per rank.
pub struct NcclComm {
    comm: Rc<Comm>,
}

impl NcclComm {
    /// Sets NCCL up on `device` (every rank calls this at the same point): rank 0 makes the
    /// unique id, MPI gives it to every rank.
    pub fn new(world: &World, device: &Device) -> Result<Self, String> {
        let Device::Cuda(cuda) = device else {
            return Err("NCCL needs a CUDA device (`--device cuda:N`)".into());
        };
        let id = if world.is_main() {
            Some(Id::new().map_err(|e| format!("ncclGetUniqueId: {e:?}"))?)
        } else {
            None
        };
        let mine: Vec<u8> = match &id {
            Some(id) => id.internal().iter().map(|&c| c as u8).collect(),
            None => vec![0; 128],
        };
        let all = world.gather_all(&mine);
        let mut internal = [0 as std::ffi::c_char; 128];
        for (slot, &byte) in internal.iter_mut().zip(&all[0]) {
            *slot = byte as std::ffi::c_char;
        }
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            world.rank(),
            world.size(),
            Id::uninit(internal),
        )
        .map_err(|e| format!("ncclCommInitRank: {e:?}"))?;
        Ok(Self {
            comm: Rc::new(comm),
        })
    }

    /// `bucket` (a 1-D f32 tensor on this rank's GPU) summed across ranks.
    pub fn sum(&self, bucket: &Tensor) -> candle_core::Result<Tensor> {
        bucket.apply_op1_no_bwd(&AllReduceSum {
            comm: self.comm.clone(),
        })
    }
}

/// The all-reduce as a candle op, so that it runs on the tensor's own stream.
struct AllReduceSum {
    comm: Rc<Comm>,
}

// SAFETY: the op is created, applied and dropped on the one thread that drives the training
// loop (the thread MPI is initialised on, MPI_THREAD_FUNNELED); candle requires the bounds
// but never moves the op to another thread.
unsafe impl Send for AllReduceSum {}
// SAFETY: as for `Send`: it is never shared between threads.
unsafe impl Sync for AllReduceSum {}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // The trainer sums CPU gradients through MPI; this op is only applied on a GPU.
        Err(candle_core::Error::Msg(
            "the NCCL all-reduce runs on CUDA devices only".into(),
        ))
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::Msg(
                "the NCCL all-reduce needs a contiguous bucket".into(),
            ));
        };
        let device = storage.device().clone();
        let source = storage.as_cuda_slice::<f32>()?.slice(start..end);
        // SAFETY: every element of the new buffer is written by the all-reduce before the
        // tensor is read.
        let mut summed = unsafe { device.alloc::<f32>(end - start) }?;
        self.comm
            .all_reduce(&source, &mut summed, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(summed, device),
            layout.shape().clone(),
        ))
    }
}
