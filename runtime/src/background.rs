//! Work that must not slow the answers: bulk work (compiling and storing
//! uploaded modules, guests in a process that also answers requests) runs
//! on threads at a lower CPU priority, so on a machine with few cores the
//! threads that answer requests get the CPU within milliseconds.

/// The nice steps of background threads: the kernel gives them about a
/// tenth of the CPU of a normal thread when both want it.
pub const NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by `nice` steps (on Linux,
/// where a priority is per thread; elsewhere nothing). Lowering needs no
/// privilege, and a thread cannot raise it back without one: lower only
/// threads of their own, never a pool's. A failure only leaves the
/// priority as it was.
pub fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let lowered =
            getpriority_process(me).and_then(|now| setpriority_process(me, (now + nice).min(19)));
        if let Err(error) = lowered {
            tracing::debug!(%error, "cannot lower a thread's CPU priority");
        }
    }
}

/// Runs `work` on a thread of its own at the background priority
/// ([`NICE`]); its result, or an error if it could not start or panicked.
pub async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority(NICE);
            let _ = tx.send(work());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.await
        .map_err(|_| format!("{name} stopped before it ended"))
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_below_the_callers_priority_and_leaves_it_as_it_was() {
        let me = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let before = me();
        let theirs = run("probe", me).await.unwrap();
        assert_eq!(theirs, (before + NICE).min(19));
        assert_eq!(me(), before);
        let panicked = run("panics", || panic!("on purpose")).await;
        assert!(panicked.unwrap_err().contains("panics stopped"));
    }
}
