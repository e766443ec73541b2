//! [`AuditLog`]: every command from the cloud, what it asked and how it ended, in an `audit`
//! table of the queue's SQLite file.
//!
//! Like [`super::SqliteState`] it has its own connection (a command never waits behind a
//! queue batch) and always writes with `synchronous=FULL`: the record of a pump switched on
//! must survive the power cut that may follow. The newest [`AUDIT_CAP`] entries are kept.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{millis, QueueError};

/// Most audit entries kept; older ones are deleted.
pub const AUDIT_CAP: i64 = 100_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    command_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    adapter TEXT NOT NULL,
    device TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    result TEXT,
    finished_ms INTEGER
);
CREATE INDEX IF NOT EXISTS audit_command ON audit (command_id);
";

/// One audited command, as `fieldgate commands` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Row id (the audit's own order).
    pub id: i64,
    /// The caller's command id.
    pub command_id: String,
    /// Where it came from: the uplink id.
    pub origin: String,
    /// When it arrived (milliseconds since the Unix epoch).
    pub received_ms: i64,
    /// Target adapter (empty if the command could not be parsed).
    pub adapter: String,
    /// Target device.
    pub device: String,
    /// `write`, `send`, or `invalid`.
    pub action: String,
    /// What it asked, as text (point and value, or the payload in hex).
    pub detail: String,
    /// `accepted` (still running), `done` or `failed`.
    pub status: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// The value read back after a write.
    pub result: Option<String>,
    /// When it ended.
    pub finished_ms: Option<i64>,
}

/// What a new audit entry records.
#[derive(Debug, Clone, Default)]
pub struct NewEntry<'a> {
    /// The caller's command id.
    pub command_id: &'a str,
    /// The uplink it came through.
    pub origin: &'a str,
    /// Target adapter.
    pub adapter: &'a str,
    /// Target device.
    pub device: &'a str,
    /// `write`, `send` or `invalid`.
    pub action: &'a str,
    /// What it asked.
    pub detail: &'a str,
}

/// The audit table.
#[derive(Debug)]
pub struct AuditLog {
    conn: Mutex<Connection>,
}

impl AuditLog {
    /// Opens (and creates) the audit table in the queue database at `path`.
    pub fn open(path: &Path) -> Result<AuditLog, QueueError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -256)?;
        conn.execute_batch(SCHEMA)?;
        Ok(AuditLog {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic in an earlier call rolled its statement back; the connection is usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a command as it arrives (status `accepted`). Returns the entry's id.
    pub fn record(&self, e: &NewEntry<'_>, at: SystemTime) -> Result<i64, QueueError> {
        insert(&self.conn(), e, at)
    }

    /// Records a command as it arrives, unless one with the same command id is already
    /// recorded: then that one is returned instead. The lookup and the insert hold the
    /// connection's lock together, so two copies of one command cannot both be new.
    pub fn claim(
        &self,
        e: &NewEntry<'_>,
        at: SystemTime,
    ) -> Result<Result<i64, AuditEntry>, QueueError> {
        let conn = self.conn();
        match first(&conn, e.command_id)? {
            Some(seen) => Ok(Err(seen)),
            None => insert(&conn, e, at).map(Ok),
        }
    }

    /// Records how entry `id` ended: `done` (with the value read back) or `failed` (with why).
    pub fn finish(
        &self,
        id: i64,
        result: Result<Option<String>, String>,
        at: SystemTime,
    ) -> Result<(), QueueError> {
        let (status, reason, value) = match result {
            Ok(v) => ("done", None, v),
            Err(why) => ("failed", Some(why), None),
        };
        self.conn()
            .prepare_cached(
                "UPDATE audit SET status = ?2, reason = ?3, result = ?4, finished_ms = ?5 WHERE id = ?1",
            )?
            .execute(params![id, status, reason, value, millis(at)])?;
        Ok(())
    }

    /// The first entry with this command id, if any (to refuse a command delivered twice).
    pub fn find(&self, command_id: &str) -> Result<Option<AuditEntry>, QueueError> {
        first(&self.conn(), command_id)
    }

    /// The newest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
        recent(&self.conn(), limit)
    }
}

/// The newest `limit` entries of the audit table in the queue database at `path`, opened
/// read-only (safe beside a running gateway). Empty if the table does not exist yet.
pub fn read_audit(path: &Path, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    recent(&conn, limit)
}

/// Inserts a new entry (status `accepted`), trimming the table to [`AUDIT_CAP`].
fn insert(conn: &Connection, e: &NewEntry<'_>, at: SystemTime) -> Result<i64, QueueError> {
    conn.prepare_cached(
        "INSERT INTO audit (command_id, origin, received_ms, adapter, device, action, detail, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'accepted')",
        )?
        .execute(params![
            e.command_id,
            e.origin,
            millis(at),
            e.adapter,
            e.device,
            e.action,
            e.detail
        ])?;
    let id = conn.last_insert_rowid();
    if id % 1000 == 0 {
        conn.execute("DELETE FROM audit WHERE id <= ?1", [id - AUDIT_CAP])?;
    }
    Ok(id)
}

/// The first entry with `command_id`, if any.
fn first(conn: &Connection, command_id: &str) -> Result<Option<AuditEntry>, QueueError> {
    Ok(conn
        .prepare_cached(&format!(
            "{SELECT} WHERE command_id = ?1 ORDER BY id LIMIT 1"
        ))?
        .query_row([command_id], entry)
        .optional()?)
}

const SELECT: &str = "SELECT id, command_id, origin, received_ms, adapter, device, action, detail, status, reason, result, finished_ms FROM audit";

fn recent(conn: &Connection, limit: usize) -> Result<Vec<AuditEntry>, QueueError> {
    Ok(conn
        .prepare_cached(&format!("{SELECT} ORDER BY id DESC LIMIT ?1"))?
        .query_map([limit as i64], entry)?
        .collect::<Result<_, _>>()?)
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        command_id: r.get(1)?,
        origin: r.get(2)?,
        received_ms: r.get(3)?,
        adapter: r.get(4)?,
        device: r.get(5)?,
        action: r.get(6)?,
        detail: r.get(7)?,
        status: r.get(8)?,
        reason: r.get(9)?,
        result: r.get(10)?,
        finished_ms: r.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_finishes_and_finds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.db");
        let log = AuditLog::open(&path).expect("open");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = log
            .record(
                &NewEntry {
                    command_id: "c-1",
                    origin: "cloud",
                    adapter: "tanks",
                    device: "tank-1",
                    action: "write",
                    detail: "pump_running = true",
                },
                t,
            )
            .expect("record");
        log.finish(id, Ok(Some("true".into())), t + Duration::from_millis(40))
            .expect("finish");
        let found = log.find("c-1").expect("find").expect("present");
        assert_eq!(found.status, "done");
        assert_eq!(found.result.as_deref(), Some("true"));
        assert_eq!(found.finished_ms, Some(1_800_000_000_040));
        assert!(log.find("c-2").expect("find").is_none());
        let id2 = log
            .record(
                &NewEntry {
                    command_id: "c-2",
                    action: "send",
                    ..NewEntry::default()
                },
                t,
            )
            .expect("record");
        log.finish(id2, Err("expired before it could be executed".into()), t)
            .expect("finish");
        let all = read_audit(&path, 10).expect("read");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].command_id, "c-2");
        assert_eq!(all[0].status, "failed");
        assert_eq!(
            all[0].reason.as_deref(),
            Some("expired before it could be executed")
        );
    }
}
