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
/// earlier `1 << 30` here was refused silently), freed memory is never trimmed, and each
/// growth of a heap takes 64 MiB at once, so that the threads' arenas (`predict` scores a batch
/// per thread) stop mapping and unmapping: `bench predict` on `bench-xlmr-ce` took 611,000
/// page faults before and 140,000 after, and about a tenth less CPU time.
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
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> std::process::ExitCode {
    tune_allocator();
    cli::run()
}
