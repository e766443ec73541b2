//! A cloneable "stop now" signal.

use tokio::sync::watch;

/// Fires [`Shutdown`] for everyone holding one. Dropping the trigger also fires it, so a
/// crashed owner never leaves tasks waiting forever.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Tells a task when to stop. Cheap to clone; every clone sees the same signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl ShutdownTrigger {
    /// A new, unfired signal and its first receiver.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// Fires the signal. Idempotent.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Another receiver of this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// True once the signal has fired.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until the signal fires (returns at once if it already has).
    pub async fn fired(&mut self) {
        // An error means the trigger was dropped, which counts as firing.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_for_every_clone_and_on_drop() {
        let (trigger, mut a) = ShutdownTrigger::new();
        let mut b = a.clone();
        assert!(!a.is_fired());
        trigger.fire();
        a.fired().await;
        b.fired().await;
        assert!(a.is_fired() && b.is_fired());

        let (trigger, mut c) = ShutdownTrigger::new();
        drop(trigger);
        c.fired().await;
    }
}
