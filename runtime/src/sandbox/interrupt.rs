//! [`Interrupt`]: a way to stop a running call from outside it (its job
//! was cancelled). A guest that computes is stopped at the next epoch tick;
//! one that waits in the host (a WASI sleep) at once.

use std::sync::Arc;

use tokio::sync::watch;

/// Stops the calls it is handed to once [`interrupt`](Interrupt::interrupt)
/// is called, from any thread. Clones share one switch; it never turns
/// back off.
#[derive(Clone, Debug)]
pub struct Interrupt(Arc<watch::Sender<bool>>);

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt(Arc::new(watch::channel(false).0))
    }
}

impl Interrupt {
    /// A switch not yet thrown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the calls holding this switch (and any started later).
    pub fn interrupt(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`interrupt`](Interrupt::interrupt) was called.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the switch is thrown.
    pub async fn wait(&self) {
        let mut thrown = self.0.subscribe();
        // The sender lives in `self`: the channel cannot close while
        // waited on.
        let _ = thrown.wait_for(|set| *set).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_thrown_switch_wakes_its_waiters_and_stays_thrown() {
        let switch = Interrupt::new();
        assert!(!switch.is_set());
        let waiter = tokio::spawn({
            let switch = switch.clone();
            async move { switch.wait().await }
        });
        tokio::task::yield_now().await;
        switch.interrupt();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .expect("the waiter ends");
        assert!(switch.is_set());
        // Waiting on a thrown switch returns at once.
        switch.wait().await;
    }
}
