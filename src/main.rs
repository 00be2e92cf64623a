//! The `sagaflow` binary: everything is in the library's `cli` module.

/// glibc's allocator spends a third of the daemon's CPU in `malloc`,
/// `free` and `malloc_consolidate` under load, and fragments with many
/// sagas in flight; mimalloc does neither. Built without the `mimalloc`
/// feature, the binary uses the system allocator (for heap profilers).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sagaflow::cli::main()
}
