//! Durable key-value state an adapter keeps across restarts (LoRaWAN frame counters and
//! OTAA sessions, for example), stored by the gateway next to its queue.
//!
//! Adapters never open a database themselves; they get a [`StateStore`] in their context and
//! call it from the blocking pool (`tokio::task::spawn_blocking`): writes are durable when
//! [`StateStore::save`] returns.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Why state could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "adapter state: {}", self.0)
    }
}

impl std::error::Error for StateError {}

/// A durable map from keys to bytes, one namespace (`scope`) per adapter.
///
/// Implementations are blocking; call them from `spawn_blocking`.
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Every entry stored under `scope`.
    fn load(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;
    /// Stores `entries` under `scope` (replacing the values of keys that exist), all of them
    /// or none, durably before it returns.
    fn save(&self, scope: &str, entries: &[(String, Vec<u8>)]) -> Result<(), StateError>;
}

/// A shared handle to a state store.
pub type SharedState = Arc<dyn StateStore>;

/// A [`StateStore`] in memory: for tests, and for adapters run without a queue.
#[derive(Debug, Default)]
pub struct MemoryState {
    map: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryState {
    /// An empty store, shared.
    pub fn shared() -> SharedState {
        Arc::new(MemoryState::default())
    }
}

impl StateStore for MemoryState {
    fn load(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let map = self.map.lock().map_err(|_| StateError("poisoned".into()))?;
        Ok(map
            .iter()
            .filter(|((s, _), _)| s == scope)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn save(&self, scope: &str, entries: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        let mut map = self.map.lock().map_err(|_| StateError("poisoned".into()))?;
        for (k, v) in entries {
            map.insert((scope.to_owned(), k.clone()), v.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_state_keeps_scopes_apart_and_replaces_values() {
        let s = MemoryState::default();
        s.save("a", &[("k".into(), vec![1]), ("j".into(), vec![2])])
            .expect("save");
        s.save("b", &[("k".into(), vec![9])]).expect("save");
        s.save("a", &[("k".into(), vec![3])]).expect("save");
        let mut a = s.load("a").expect("load");
        a.sort();
        assert_eq!(a, vec![("j".into(), vec![2]), ("k".into(), vec![3])]);
        assert_eq!(s.load("b").expect("load"), vec![("k".into(), vec![9])]);
        assert!(s.load("c").expect("load").is_empty());
    }
}
