//! Interning of (adapter, device, point, unit) into small integer series ids.
//!
//! Rows in the queue carry a series id instead of four strings, which keeps each row to about
//! 30 bytes (SD cards wear out; every byte is written at least twice, to the WAL and the
//! database). The mapping lives in the `series` table and is cached in both directions.

use std::collections::HashMap;

use fieldgate_adapter::{Name, Reading};
use rusqlite::{params, Connection, OptionalExtension};

/// The four names a series id stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub source: Name,
    pub device: Name,
    pub point: Name,
    pub unit: Option<Name>,
}

/// Identity of the four `Arc`s of a reading's names: a lookup without hashing strings. The
/// cache holds clones of those `Arc`s, so the addresses cannot be reused while cached.
type PtrKey = [usize; 4];

/// Above this many pointer entries the fast map is cleared: an adapter that allocates new
/// names for every reading must not grow memory without bound.
const MAX_PTR_ENTRIES: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    by_key: HashMap<SeriesKey, i64>,
    by_ptr: HashMap<PtrKey, (i64, SeriesKey)>,
    by_id: HashMap<i64, SeriesKey>,
}

fn ptr_key(r: &Reading) -> PtrKey {
    [
        r.source.as_str().as_ptr() as usize,
        r.device.as_str().as_ptr() as usize,
        r.point.as_str().as_ptr() as usize,
        r.unit.as_ref().map_or(0, |u| u.as_str().as_ptr() as usize),
    ]
}

impl SeriesCache {
    /// The id for a reading's series, creating it in `conn` (inside the caller's transaction)
    /// when it is new.
    pub fn id_for(&mut self, conn: &Connection, r: &Reading) -> rusqlite::Result<i64> {
        let pk = ptr_key(r);
        if let Some((id, _)) = self.by_ptr.get(&pk) {
            return Ok(*id);
        }
        let key = SeriesKey {
            source: r.source.clone(),
            device: r.device.clone(),
            point: r.point.clone(),
            unit: r.unit.clone(),
        };
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                let id = Self::find_or_insert(conn, &key)?;
                self.by_key.insert(key.clone(), id);
                self.by_id.insert(id, key.clone());
                id
            }
        };
        if self.by_ptr.len() >= MAX_PTR_ENTRIES {
            self.by_ptr.clear();
        }
        self.by_ptr.insert(pk, (id, key));
        Ok(id)
    }

    fn find_or_insert(conn: &Connection, key: &SeriesKey) -> rusqlite::Result<i64> {
        let unit = key.unit.as_deref().unwrap_or("");
        let found = conn
            .prepare_cached(
                "SELECT id FROM series WHERE source = ?1 AND device = ?2 AND point = ?3 AND unit = ?4",
            )?
            .query_row(
                params![&*key.source, &*key.device, &*key.point, unit],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = found {
            return Ok(id);
        }
        conn.prepare_cached(
            "INSERT INTO series (source, device, point, unit) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![&*key.source, &*key.device, &*key.point, unit])?;
        Ok(conn.last_insert_rowid())
    }

    /// The names behind a series id, loading them from `conn` on a miss.
    pub fn key_for(&mut self, conn: &Connection, id: i64) -> rusqlite::Result<SeriesKey> {
        if let Some(k) = self.by_id.get(&id) {
            return Ok(k.clone());
        }
        let key = conn
            .prepare_cached("SELECT source, device, point, unit FROM series WHERE id = ?1")?
            .query_row([id], |row| {
                let unit: String = row.get(3)?;
                Ok(SeriesKey {
                    source: Name::from(row.get::<_, String>(0)?),
                    device: Name::from(row.get::<_, String>(1)?),
                    point: Name::from(row.get::<_, String>(2)?),
                    unit: (!unit.is_empty()).then(|| Name::from(unit)),
                })
            })?;
        self.by_id.insert(id, key.clone());
        self.by_key.insert(key.clone(), id);
        Ok(key)
    }

    /// Forgets everything (after a rolled-back transaction that may have created series).
    pub fn clear(&mut self) {
        self.by_key.clear();
        self.by_ptr.clear();
        self.by_id.clear();
    }
}
