//! SIGINT and SIGTERM during `train`: the first asks the trainer to stop after the current
//! step with a checkpoint (the library only reads the flag this sets); a second one quits at
//! once, as an impatient user expects. Other commands keep the default (die at once), since
//! they write nothing that a stop could leave half done.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked for a stop, 0 while none has.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// What a second signal prints before it quits, while `--overwrite`'s previous output sits
/// beside the output: where it is. Made before any signal can need it (the handler may not
/// allocate); [`PREVIOUS_OUTPUT_ASIDE`] says whether it is still true.
static PREVIOUS_OUTPUT_NOTE: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();

/// Whether [`PREVIOUS_OUTPUT_NOTE`] still holds (the previous output is neither discarded nor
/// put back yet).
static PREVIOUS_OUTPUT_ASIDE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The trainer's [`crosstrain::train::RunOptions::previous_output_note`]: remembers where the
/// previous output was moved, or that it is gone from there.
pub fn note_previous_output(aside: Option<&std::path::Path>) {
    match aside {
        Some(aside) => {
            let note = format!(
                "crosstrain: the previous output is kept at {} (move it back to use it)\n",
                aside.display()
            );
            // One run moves one output aside, so the note is made once.
            let _ = PREVIOUS_OUTPUT_NOTE.set(note.into_bytes().into_boxed_slice());
            PREVIOUS_OUTPUT_ASIDE.store(true, Ordering::SeqCst);
        }
        None => PREVIOUS_OUTPUT_ASIDE.store(false, Ordering::SeqCst),
    }
}

/// Runs inside the signal handler, so it does only async-signal-safe work: an atomic swap,
/// `write(2)` and `_exit(2)`.
#[cfg(unix)]
extern "C" fn on_stop_signal(signal: libc::c_int) {
    if STOP_SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
        if PREVIOUS_OUTPUT_ASIDE.load(Ordering::SeqCst) {
            if let Some(note) = PREVIOUS_OUTPUT_NOTE.get() {
                // SAFETY: write(2) is async-signal-safe; the note is a boxed byte slice made
                // before the flag above was set and never freed or changed after.
                unsafe { libc::write(2, note.as_ptr().cast(), note.len()) };
            }
        }
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
