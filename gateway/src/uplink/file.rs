//! `type = "file"`: JSON Lines on local disk, rotated by size, acknowledged after fsync.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fieldgate_adapter::BoxFuture;

use super::{settled, Delivery, Pending, SendError, Uplink};
use crate::payload::{self, Origin};
use crate::queue::Queued;

/// Appends readings to `path` as JSON Lines (see `docs/payload.md`). When the file would
/// exceed `max_file_size` it is renamed to `path.1` (older ones shift to `.2`, ...; beyond
/// `max_files` they are deleted) and a new file is started. A batch is acknowledged only after
/// `fsync`, so what the queue forgets is on disk.
#[derive(Debug)]
pub struct FileUplink {
    state: Option<State>,
}

#[derive(Debug)]
struct State {
    path: PathBuf,
    max_file_size: u64,
    max_files: usize,
    gateway: String,
    queue_id: String,
    file: Option<File>,
    size: u64,
}

impl FileUplink {
    /// A file uplink; the file is opened (and its directory created) on first use.
    pub fn new(path: PathBuf, max_file_size: u64, max_files: usize, gateway: String) -> Self {
        FileUplink {
            state: Some(State {
                path,
                max_file_size,
                max_files,
                gateway,
                queue_id: String::new(),
                file: None,
                size: 0,
            }),
        }
    }
}

impl State {
    fn render(&self, batch: &[Queued]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(batch.len() * 200);
        for q in batch {
            payload::write_json(
                &mut buf,
                Origin {
                    gateway: &self.gateway,
                    queue_id: &self.queue_id,
                },
                q,
            );
            buf.push(b'\n');
        }
        buf
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size + buf.len() as u64 > self.max_file_size {
            self.rotate()?;
        }
        let file = match self.file.as_mut() {
            Some(f) => f,
            None => return Err(std::io::Error::other("file uplink lost its file")),
        };
        if let Err(e) = file.write_all(buf).and_then(|()| file.sync_data()) {
            // A partial write (a full disk) would leave half a line that the retry appends
            // after: cut the file back to where this batch began. Reopen either way, so `size`
            // is re-read from disk.
            let _ = file.set_len(self.size);
            self.file = None;
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let existed = self.path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        if !existed {
            // A new file's directory entry must survive a power cut too: its data is acked.
            sync_dir(&self.path)?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: usize| -> PathBuf {
            let mut p = self.path.as_os_str().to_owned();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.max_files == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&numbered(self.max_files))?;
            for n in (1..self.max_files).rev() {
                rename_if_exists(&numbered(n), &numbered(n + 1))?;
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.open()
    }
}

/// fsyncs the directory holding `path`, so created, renamed and deleted entries are durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

fn remove_if_exists(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Uplink for FileUplink {
    fn set_queue_id(&mut self, queue_id: &str) {
        if let Some(state) = self.state.as_mut() {
            state.queue_id = queue_id.to_string();
        }
    }

    fn send<'a>(
        &'a mut self,
        batch: &'a [Queued],
        _historical: bool,
    ) -> BoxFuture<'a, Result<Pending, SendError>> {
        Box::pin(async move {
            let Some(mut state) = self.state.take() else {
                // Only after a panic in the writer task, which lost the state.
                return Err(SendError::Retry(
                    "file uplink is busy after an earlier failure".into(),
                ));
            };
            let buf = state.render(batch);
            let bytes = buf.len() as u64;
            let (state, result) = tokio::task::spawn_blocking(move || {
                let result = state.write(&buf);
                (state, result)
            })
            .await
            .map_err(|e| SendError::Retry(format!("file writer task failed: {e}")))?;
            let path = state.path.display().to_string();
            self.state = Some(state);
            result
                .map(|()| {
                    settled(Ok(Delivery {
                        rejected: Vec::new(),
                        bytes,
                    }))
                })
                .map_err(|e| SendError::Retry(format!("cannot write {path}: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate_adapter::{Reading, Value};
    use std::time::UNIX_EPOCH;

    fn batch(from: u64, n: u64) -> Vec<Queued> {
        (from..from + n)
            .map(|seq| Queued {
                unsynced: false,
                only_for: None,
                alert: None,
                seq,
                reading: Reading::new("sim", "d", "p", UNIX_EPOCH, Value::I64(seq as i64)),
            })
            .collect()
    }

    fn seqs_in(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json line")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect()
    }

    #[tokio::test]
    async fn appends_then_rotates_keeping_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/out.jsonl");
        // One reading is ~150 bytes: 10 per batch is ~1.5 KB; rotate at 4 KB.
        let mut up = FileUplink::new(path.clone(), 4096, 2, "gw".into());
        for b in 0..10 {
            let settled = up
                .send(&batch(b * 10 + 1, 10), false)
                .await
                .map_err(|e| e.to_string())
                .expect("written");
            let d = settled.await.expect("settled");
            assert!(d.rejected.is_empty() && d.bytes > 1000, "{d:?}");
        }
        let current = seqs_in(&path);
        let one = seqs_in(&dir.path().join("sub/out.jsonl.1"));
        let two = seqs_in(&dir.path().join("sub/out.jsonl.2"));
        assert!(
            !dir.path().join("sub/out.jsonl.3").exists(),
            "max_files = 2"
        );
        // The newest readings are in the current file, older ones in .1, then .2, contiguous.
        let mut all = two.clone();
        all.extend(&one);
        all.extend(&current);
        assert_eq!(*all.last().expect("some"), 100);
        assert!(
            all.windows(2).all(|w| w[1] == w[0] + 1),
            "contiguous: {all:?}"
        );
        assert!(std::fs::metadata(&path).expect("current").len() <= 4096);
        assert!(!two.is_empty() && !one.is_empty());
    }

    #[tokio::test]
    async fn an_unwritable_path_is_a_retry_not_a_reject() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("blocker"), b"").expect("file");
        let mut up = FileUplink::new(
            dir.path().join("blocker/out.jsonl"),
            1 << 20,
            1,
            "gw".into(),
        );
        let Err(err) = up.send(&batch(1, 1), false).await else {
            panic!("cannot create a dir under a file");
        };
        assert!(
            matches!(err, SendError::Retry(ref m) if m.contains("blocker")),
            "{err:?}"
        );
        // And it keeps working once the path is fixed.
        std::fs::remove_file(dir.path().join("blocker")).expect("rm");
        let settled = up
            .send(&batch(1, 1), false)
            .await
            .map_err(|e| e.to_string())
            .expect("recovers");
        let d = settled.await.expect("settled");
        assert!(d.rejected.is_empty() && d.bytes > 0, "{d:?}");
    }
}
