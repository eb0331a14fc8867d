//! The stock `goworker` binary: the program of [`goworker::app::main`] with
//! the built-in plugin types. A binary with plugins of its own does the
//! same after registering them (see `examples/custom_worker.rs`).

use goworker::Registry;
use std::process::ExitCode;

fn main() -> ExitCode {
    goworker::app::main(Registry::with_builtins())
}
