//! `type = "console"`: delivered readings on standard output.

use std::io::Write;

use fieldgate_adapter::BoxFuture;

use super::{settled, Delivery, Pending, SendError, Uplink};
use crate::config::LogFormat;
use crate::payload::{self, Origin};
use crate::queue::Queued;

/// Prints each reading, one line each. Best effort: it acknowledges even when standard
/// output is gone, so it never holds the queue back.
#[derive(Debug)]
pub struct ConsoleUplink {
    format: LogFormat,
    gateway: String,
    queue_id: String,
    failed: bool,
}

impl ConsoleUplink {
    /// A console uplink printing `format`.
    pub fn new(format: LogFormat, gateway: String) -> Self {
        ConsoleUplink {
            format,
            gateway,
            queue_id: String::new(),
            failed: false,
        }
    }
}

impl Uplink for ConsoleUplink {
    fn set_queue_id(&mut self, queue_id: &str) {
        self.queue_id = queue_id.to_string();
    }

    fn send<'a>(
        &'a mut self,
        batch: &'a [Queued],
        _historical: bool,
    ) -> BoxFuture<'a, Result<Pending, SendError>> {
        Box::pin(async move {
            let origin = Origin {
                gateway: &self.gateway,
                queue_id: &self.queue_id,
            };
            let text = payload::render_lines(self.format, origin, batch);
            let mut stdout = std::io::stdout().lock();
            // Best effort: a closed or broken standard output (`| head`) must not hold the
            // queue back for the other uplinks, so the readings count as shown either way.
            if let Err(e) = stdout.write_all(&text).and_then(|()| stdout.flush()) {
                if !self.failed {
                    tracing::warn!(error = %e, "cannot write to standard output; the console uplink drops what it cannot show");
                    self.failed = true;
                }
            }
            Ok(settled(Ok(Delivery::all())))
        })
    }
}
