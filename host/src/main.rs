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
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes glibc's allocator parameters; it is called once, before
    // any other thread exists, with parameters glibc documents for this call.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> std::process::ExitCode {
    tune_allocator();
    cli::run()
}
