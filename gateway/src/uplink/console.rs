//! `type = "console"`: delivered readings on standard output.

use std::io::Write;

use fieldgate_adapter::BoxFuture;

use super::{SendError, Uplink};
use crate::config::LogFormat;
use crate::payload;
use crate::queue::Queued;

/// Prints each reading, one line each. Acknowledges once the lines are written.
#[derive(Debug)]
pub struct ConsoleUplink {
    format: LogFormat,
    gateway: String,
}

impl ConsoleUplink {
    /// A console uplink printing `format`.
    pub fn new(format: LogFormat, gateway: String) -> Self {
        ConsoleUplink { format, gateway }
    }

    /// The text for a batch.
    pub fn render(&self, batch: &[Queued]) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch.len() * 96);
        for q in batch {
            match self.format {
                LogFormat::Json => payload::write_json(&mut out, &self.gateway, q),
                LogFormat::Text => {
                    let r = &q.reading;
                    let unit = r.unit.as_ref().map(|u| format!(" {u}")).unwrap_or_default();
                    let quality = match r.quality.reason() {
                        Some(why) => format!(" [{}: {why}]", r.quality.as_str()),
                        None => String::new(),
                    };
                    let _ = write!(
                        out,
                        "#{:<8} {}  {}/{}/{} = {}{}{}",
                        q.seq,
                        payload::rfc3339(r.ts),
                        r.source,
                        r.device,
                        r.point,
                        r.value,
                        unit,
                        quality
                    );
                }
            }
            out.push(b'\n');
        }
        out
    }
}

impl Uplink for ConsoleUplink {
    fn send<'a>(&'a mut self, batch: &'a [Queued]) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let text = self.render(batch);
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&text)
                .and_then(|()| stdout.flush())
                .map_err(|e| SendError::Retry(format!("cannot write to standard output: {e}")))
        })
    }
}
