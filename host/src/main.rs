//! The `crosstrain` command line.
#![deny(unsafe_op_in_unsafe_fn)]

mod cli;

/// Keeps freed tensor buffers in the process instead of handing them back to the kernel.
///
/// glibc serves every allocation above its mmap threshold (128 KiB, growing to at most
/// 32 MiB) with a fresh `mmap`, and a fresh mapping is zero-filled page by page on first
/// touch. A training step allocates and frees hundreds of activation and gradient buffers of
/// a few MiB each, so without this about a sixth of the step went to page faults. Peak memory
/// is unchanged: the buffers are reused, not accumulated.
///
/// The threshold is set to glibc's largest (32 MiB on 64-bit: `mallopt` refuses more, and an
/// earlier `1 << 30` here was refused silently), and each growth of a heap takes 64 MiB at
/// once: `bench predict` on `bench-xlmr-ce` took 611,000 page faults before and 140,000 after,
/// and about a tenth less CPU time.
///
/// That was not enough for the decoders, whose attention and MLP tensors are 50 to 70 MiB at
/// 16 × 256 tokens: above any mmap threshold, so each was still a fresh mapping, and the
/// backward pass runs on its own thread, whose arena heaps glibc unmaps whenever they empty.
/// So mmap is off for allocations (`M_MMAP_MAX = 0`: everything comes from the heap), one
/// arena serves every thread (`M_ARENA_MAX = 1`; on two to sixteen cores the lock is not
/// what a step waits on), and the heap is never trimmed (`M_TRIM_THRESHOLD = -1`; the largest
/// positive value, 2 GiB, still let a 9 GB training step give back and re-fault gigabytes).
/// Resident memory then stays at the run's peak instead of following it. On
/// `bench-qwen3-reranker` at max length 256 a full training step went from 20.1 s to 12.9 s,
/// a LoRA step from 20.7 s to 10.3 s, and `bench predict` from 2.07 to 4.72 pairs/s;
/// `bench-xlmr-ce` stayed as it was (18.4 pairs/s training, 65.5 predicting).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // The user's own settings win.
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    // SAFETY: mallopt only changes glibc's allocator parameters; it is called once, before
    // any other thread exists, with parameters and ranges glibc documents for this call.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> std::process::ExitCode {
    tune_allocator();
    cli::run()
}
