//! Work that must not slow the answers: compiling uploaded modules runs on
//! threads at a lower scheduling priority (nice 10), so on a machine with
//! few cores a storm of uploads leaves the threads that answer requests
//! (`/healthz`, a user's `/v1/run`) the CPU they need within milliseconds.

/// The nice value of background threads: the scheduler gives them about a
/// tenth of the CPU of a normal thread when both want it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (on Linux, where the nice value
/// is per thread); elsewhere, nothing.
pub fn lower_priority() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: gettid and setpriority only read and set the calling
        // thread's own scheduling attribute.
        #[allow(unsafe_code)]
        let done = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
        };
        if done != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
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

/// Runs `work` on a thread of its own at the background priority; its
/// result, or an error if it panicked.
pub async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.await
        .map_err(|_| format!("{name} stopped before it ended"))
}
