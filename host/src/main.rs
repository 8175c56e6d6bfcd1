//! The `crosstrain` command line.
#![deny(unsafe_op_in_unsafe_fn)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
