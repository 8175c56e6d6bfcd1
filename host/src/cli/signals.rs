//! SIGINT and SIGTERM during `train`: the first asks the trainer to stop after the current
//! step with a checkpoint (the library only reads the flag this sets); a second one quits at
//! once, as an impatient user expects. Other commands keep the default (die at once), since
//! they write nothing that a stop could leave half done.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked for a stop, 0 while none has.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Runs inside the signal handler, so it does only async-signal-safe work: an atomic swap,
/// `write(2)` and `_exit(2)`.
#[cfg(unix)]
extern "C" fn on_stop_signal(signal: libc::c_int) {
    if STOP_SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe and ends the process without running any
        // non-reentrant cleanup; 128 + signal is the shell's code for death by that signal.
        unsafe { libc::_exit(128 + signal) };
    }
    let message: &[u8] = b"\ncrosstrain: stopping after this step with a checkpoint \
                          (press Ctrl-C again to quit at once, losing the step)\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is a static byte string of that
    // length. A failed write is of no consequence here.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

/// Installs the handlers and returns the flag they set.
pub fn install() -> &'static AtomicI32 {
    #[cfg(unix)]
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid value of the C struct; the handler has the
        // signature sa_sigaction expects without SA_SIGINFO and does only async-signal-safe
        // work; sigemptyset and sigaction get valid pointers to it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            // Interrupted reads and writes resume instead of failing with EINTR.
            action.sa_flags = libc::SA_RESTART;
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                tracing::warn!("could not install the handler for signal {signal}");
            }
        }
    }
    &STOP_SIGNAL
}

/// The signal's usual name.
pub fn name(signal: i32) -> String {
    match signal {
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}
