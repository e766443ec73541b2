//! `type = "console"`: delivered readings on standard output.

use std::io::Write;

use fieldgate_adapter::BoxFuture;

use super::{settled, Delivery, Pending, SendError, Uplink};
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
}

impl Uplink for ConsoleUplink {
    fn send<'a>(&'a mut self, batch: &'a [Queued]) -> BoxFuture<'a, Result<Pending, SendError>> {
        Box::pin(async move {
            let text = payload::render_lines(self.format, &self.gateway, batch);
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&text)
                .and_then(|()| stdout.flush())
                .map(|()| settled(Ok(Delivery::all())))
                .map_err(|e| SendError::Retry(format!("cannot write to standard output: {e}")))
        })
    }
}
