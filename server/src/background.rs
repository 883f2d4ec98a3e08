//! Work that must not slow the answers: compiling and storing uploaded
//! modules runs on threads at a lower scheduling priority
//! ([`sandmill_runtime::background`]), so on a machine with few cores a
//! storm of uploads leaves the threads that answer requests (`/healthz`, a
//! user's `/v1/run`) the CPU they need within milliseconds.

pub use sandmill_runtime::background::{NICE, run};

/// Lowers the calling thread's priority to the background's ([`NICE`]
/// steps below its own).
pub fn lower_priority() {
    sandmill_runtime::background::lower_priority(NICE);
}

/// Has the global rayon pool, on which wasmtime compiles a module's
/// functions in parallel, run at the background priority. Call it before
/// the first compile; later calls (or a pool already built) change
/// nothing.
pub fn compile_in_the_background() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("compile-{i}"))
        .start_handler(|_| lower_priority())
        .build_global();
}
