//! [`SqliteState`]: the adapters' durable key-value state (LoRaWAN frame counters and
//! sessions), a table in the queue's own SQLite file.
//!
//! It has its own connection so that an adapter saving state never waits behind the queue
//! writer's mutex, only (briefly) behind SQLite's write lock. The table lives beside the
//! queue's so that one file, on one disk, holds everything that must survive a restart.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use fieldgate_adapter::{StateError, StateStore};
use rusqlite::{params, Connection};

use super::QueueError;

/// Adapter state in the queue's database file.
#[derive(Debug)]
pub struct SqliteState {
    conn: Mutex<Connection>,
}

impl SqliteState {
    /// Opens the state table in the (already opened, WAL-mode) queue database at `path`.
    pub fn open(path: &Path) -> Result<SqliteState, QueueError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Always FULL, whatever the queue's durability: a counter rolled back by a power cut
        // would let a replay through, or reuse a downlink counter (and with it the keystream).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -256)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS adapter_state (
                 scope TEXT NOT NULL,
                 key   TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (scope, key)
             ) WITHOUT ROWID;",
        )?;
        Ok(SqliteState {
            conn: Mutex::new(conn),
        })
    }
}

fn err(e: impl std::fmt::Display) -> StateError {
    StateError(e.to_string())
}

impl StateStore for SqliteState {
    fn load(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let conn = self.conn.lock().map_err(|_| err("lock poisoned"))?;
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM adapter_state WHERE scope = ?1")
            .map_err(err)?;
        let rows = stmt
            .query_map([scope], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    fn save(&self, scope: &str, entries: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().map_err(|_| err("lock poisoned"))?;
        let tx = conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO adapter_state (scope, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
                )
                .map_err(err)?;
            for (k, v) in entries {
                stmt.execute(params![scope, k, v]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Queue, QueueOptions};

    #[test]
    fn state_survives_reopening_beside_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let q = Queue::open(&path, QueueOptions::default(), &["up"]).expect("queue");
        let s = SqliteState::open(&path).expect("state");
        s.save("lora", &[("dev:1".into(), b"one".to_vec())])
            .expect("save");
        s.save("lora", &[("dev:1".into(), b"two".to_vec())])
            .expect("save");
        s.save("other", &[("dev:1".into(), b"x".to_vec())])
            .expect("save");
        drop(s);
        drop(q);
        let s = SqliteState::open(&path).expect("reopen");
        assert_eq!(
            s.load("lora").expect("load"),
            vec![("dev:1".to_string(), b"two".to_vec())]
        );
        assert!(s.load("none").expect("load").is_empty());
    }
}
