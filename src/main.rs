//! The `sagaflow` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    sagaflow::cli::main()
}
