//! The serial adapter: ASCII telemetry from instruments on RS-232, RS-485 or USB-serial
//! lines — GPS receivers, weather stations, gas analyzers — turned into readings from config
//! alone.
//!
//! [`SerialConfig`] is the `type = "serial"` section: the port and its line settings, the
//! [`frame`] rules (lines with a terminator, or frames between start and end markers, never
//! longer than `max_frame`), the format ([`nmea`] with checksums, CSV by column or header,
//! `key=value`, or a regular expression with named captures; see [`fields`]) and which
//! fields become which points, with type, scale and unit.
//!
//! [`Serial`] is the [`Adapter`] it builds. It owns the port: when the port cannot be opened
//! or disappears (a USB adapter unplugged), the last values go out once with stale quality,
//! and the port is reopened with backoff until it comes back — no restart needed. A port
//! that stays silent past `stale_after` is treated the same way. Instruments that answer
//! only when asked are polled. Garbage never stops it: bad checksums, over-long frames,
//! non-UTF-8 bytes, frames of the wrong form and fields that do not convert are counted in
//! [`SerialStats`] and logged at most once a minute per kind. A `send` command writes a
//! line to the instrument.
//!
//! [`sim`] has what the demo, the tests and the bench use instead of hardware: a
//! pseudo-terminal behind a stable path that can be unplugged and plugged back, and a
//! weather station that speaks NMEA.

#![forbid(unsafe_code)]

pub mod config;
pub mod fields;
pub mod frame;
pub mod nmea;
pub mod sim;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fieldgate_adapter::backoff::Backoff;
use fieldgate_adapter::complaints::Complaints;
use fieldgate_adapter::{
    Adapter, AdapterContext, AdapterError, BoxFuture, Command, CommandAction, CommandError, Name,
    Quality, Reading, Value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_serial::SerialStream;

pub use config::{FieldConfig, FieldType, Format, Framing, PollConfig, SerialConfig};

use fields::{Decoder, Frame};
use frame::{Event, Framer};
use nmea::NmeaError;

/// Counters of one serial adapter, shared with whoever holds [`Serial::stats`].
#[derive(Debug, Default)]
pub struct SerialStats {
    /// Times the port was opened.
    pub opens: AtomicU64,
    /// Attempts to open it that failed.
    pub open_failures: AtomicU64,
    /// Times an open port was lost (read error, end of file, silence past `stale_after`).
    pub losses: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Frames cut from the stream.
    pub frames: AtomicU64,
    /// Readings produced (stale ones included).
    pub readings: AtomicU64,
    /// Frames longer than `max_frame`, discarded.
    pub oversized: AtomicU64,
    /// Bytes outside any frame (delimited framing), discarded.
    pub stray_bytes: AtomicU64,
    /// Frames that were not valid UTF-8 (decoded with replacement characters).
    pub non_utf8: AtomicU64,
    /// NMEA sentences with a wrong or missing checksum, dropped.
    pub bad_checksum: AtomicU64,
    /// NMEA sentences of a type not read (GSV, proprietary), skipped.
    pub unsupported: AtomicU64,
    /// Frames not of the configured form (no prefix, no pattern match, no pairs, not NMEA).
    pub unmatched: AtomicU64,
    /// NMEA sentences with a malformed field, dropped.
    pub malformed: AtomicU64,
    /// Fields whose text did not convert to the point's type.
    pub field_errors: AtomicU64,
    /// CSV header lines taken.
    pub headers: AtomicU64,
    /// Poll requests sent.
    pub polls: AtomicU64,
    /// Commands executed.
    pub commands: AtomicU64,
}

impl SerialStats {
    /// One counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The serial adapter built from a [`SerialConfig`].
#[derive(Debug)]
pub struct Serial {
    config: SerialConfig,
    decoder: Decoder,
    stats: Arc<SerialStats>,
}

impl Serial {
    /// Builds the adapter; fails if the section has problems.
    pub fn new(config: &SerialConfig) -> Result<Serial, AdapterError> {
        let problems = config.validate();
        if let Some(p) = problems.first() {
            return Err(AdapterError::Config(format!("{}: {}", p.key, p.message)));
        }
        Ok(Serial {
            decoder: Decoder::new(config).map_err(AdapterError::Config)?,
            config: config.clone(),
            stats: Arc::default(),
        })
    }

    /// The adapter's counters.
    pub fn stats(&self) -> Arc<SerialStats> {
        self.stats.clone()
    }
}

impl Adapter for Serial {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin(run(*self, ctx))
    }
}

/// How an open port's session ended.
enum Ended {
    Shutdown,
    Lost(String),
}

/// Everything one adapter keeps across port sessions.
struct Station {
    config: SerialConfig,
    source: Name,
    device: Name,
    framer: Framer,
    decoder: Decoder,
    stats: Arc<SerialStats>,
    /// The last good value of every point, for stale readings.
    last: BTreeMap<Name, (Value, Option<Name>)>,
    /// An outage was reported (the last values sent stale, a warning logged) and no reading
    /// came since: further losses and failed opens are logged at debug only (a port missing
    /// for a day must not fill the log).
    outage: bool,
    complaints: Complaints,
    /// Why the port is not open, for commands that arrive meanwhile.
    down: String,
}

async fn run(adapter: Serial, mut ctx: AdapterContext) -> Result<(), AdapterError> {
    let Serial {
        config,
        decoder,
        stats,
    } = adapter;
    let framer = match config.framing {
        Framing::Line => Framer::lines(config.terminator.as_bytes(), config.max_frame),
        Framing::Delimited => Framer::delimited(
            config.start.as_deref().unwrap_or_default().as_bytes(),
            config.end.as_deref().unwrap_or_default().as_bytes(),
            config.max_frame,
        ),
    };
    let mut station = Station {
        device: Name::from(config.device.clone().unwrap_or_else(|| ctx.id.to_string())),
        source: ctx.id.clone(),
        framer,
        decoder,
        stats,
        last: BTreeMap::new(),
        outage: false,
        complaints: Complaints::default(),
        down: "not opened yet".into(),
        config,
    };
    let mut backoff = Backoff::new(station.config.backoff_min, station.config.backoff_max);
    let port_name = station.config.port.display().to_string();
    loop {
        if ctx.shutdown.is_fired() {
            return Ok(());
        }
        // Opening sets the line up (USB control transfers on a USB adapter, which can take
        // seconds on a flaky one): off the async workers.
        let cfg = station.config.clone();
        let opened = tokio::task::spawn_blocking(move || open(&cfg))
            .await
            .unwrap_or_else(|e| Err(format!("opening the port failed: {e}")));
        let (why, message) = match opened {
            Ok(port) => {
                bump(&station.stats.opens, 1);
                if station.outage {
                    tracing::debug!(adapter = %ctx.id, port = %port_name, "serial port open");
                } else {
                    tracing::info!(adapter = %ctx.id, port = %port_name, "serial port open");
                }
                station.framer.reset();
                let (ended, port) = station.session(port, &mut ctx, &mut backoff).await?;
                // Closing can wait for output the line will not take (flow control): off
                // the async workers too, and not waited for.
                drop(tokio::task::spawn_blocking(move || drop(port)));
                let Ended::Lost(why) = ended else {
                    return Ok(());
                };
                bump(&station.stats.losses, 1);
                let message = format!("serial port {port_name} lost: {why}; reopening");
                (why, message)
            }
            Err(e) => {
                bump(&station.stats.open_failures, 1);
                let message = format!("{e}; retrying with backoff");
                (e, message)
            }
        };
        station.report_outage(&ctx, &message, &why).await?;
        station.down = why;
        let delay = backoff.next_delay();
        if station.wait(delay, &mut ctx).await {
            return Ok(());
        }
    }
}

fn open(config: &SerialConfig) -> Result<SerialStream, String> {
    let path = config.port.to_string_lossy().into_owned();
    let builder = tokio_serial::new(&path, config.baud)
        .parity(match config.parity {
            config::Parity::None => tokio_serial::Parity::None,
            config::Parity::Even => tokio_serial::Parity::Even,
            config::Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(match config.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .stop_bits(if config.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match config.flow_control {
            config::FlowControl::None => tokio_serial::FlowControl::None,
            config::FlowControl::Software => tokio_serial::FlowControl::Software,
            config::FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        });
    SerialStream::open(&builder).map_err(|e| format!("cannot open serial port {path}: {e}"))
}

impl Station {
    /// Reads, polls and answers commands until the port is lost or the gateway stops;
    /// gives the port back to be closed.
    async fn session(
        &mut self,
        port: SerialStream,
        ctx: &mut AdapterContext,
        backoff: &mut Backoff,
    ) -> Result<(Ended, SerialStream), AdapterError> {
        let (mut reader, mut writer) = tokio::io::split(port);
        let ended = self.serve(&mut reader, &mut writer, ctx, backoff).await;
        Ok((ended?, reader.unsplit(writer)))
    }

    async fn serve(
        &mut self,
        reader: &mut ReadHalf<SerialStream>,
        writer: &mut WriteHalf<SerialStream>,
        ctx: &mut AdapterContext,
        backoff: &mut Backoff,
    ) -> Result<Ended, AdapterError> {
        let mut buf = vec![0u8; 4096];
        let mut poll = self.config.poll.as_ref().map(|p| {
            let mut t = tokio::time::interval(p.interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let stale_after = self.config.effective_stale_after();
        let mut last_reading = Instant::now();
        let mut readings = Vec::new();
        let mut commands_open = true;
        loop {
            let silence = async {
                match stale_after {
                    Some(d) => tokio::time::sleep_until(last_reading + d).await,
                    None => std::future::pending().await,
                }
            };
            let tick = async {
                match poll.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = ctx.shutdown.fired() => return Ok(Ended::Shutdown),
                read = reader.read(&mut buf) => match read {
                    Ok(0) => return Ok(Ended::Lost("the port reported end of file".into())),
                    Ok(n) => {
                        bump(&self.stats.bytes, n as u64);
                        self.on_bytes(&buf[..n], &mut readings);
                        if !readings.is_empty() {
                            last_reading = Instant::now();
                            self.outage = false;
                            backoff.reset();
                            bump(&self.stats.readings, readings.len() as u64);
                            ctx.readings.send_all(readings.drain(..)).await?;
                        }
                    }
                    Err(e) => return Ok(Ended::Lost(format!("read failed: {e}"))),
                },
                _ = tick => {
                    let request = self.config.poll.as_ref().map_or(&b""[..], |p| p.request.as_bytes());
                    if let Err(e) = write_all(writer, request).await {
                        return Ok(Ended::Lost(format!("poll request failed: {e}")));
                    }
                    bump(&self.stats.polls, 1);
                }
                cmd = ctx.commands.recv(), if commands_open => match cmd {
                    Some(cmd) => {
                        if let Err(e) = self.command(cmd, Some(writer)).await {
                            return Ok(Ended::Lost(format!("write failed: {e}")));
                        }
                    }
                    None => commands_open = false,
                },
                () = silence => {
                    let d = stale_after.unwrap_or_default();
                    return Ok(Ended::Lost(format!(
                        "no reading for {}",
                        fieldgate_adapter::duration::format(d)
                    )));
                }
            }
        }
    }

    /// Sleeps `delay` while answering commands (the port is down); true on shutdown.
    async fn wait(&mut self, delay: Duration, ctx: &mut AdapterContext) -> bool {
        let until = Instant::now() + delay;
        let mut commands_open = true;
        loop {
            tokio::select! {
                () = ctx.shutdown.fired() => return true,
                () = tokio::time::sleep_until(until) => return false,
                cmd = ctx.commands.recv(), if commands_open => match cmd {
                    Some(cmd) => {
                        let _ = self.command(cmd, None).await;
                    }
                    None => commands_open = false,
                },
            }
        }
    }

    /// Runs one command; an `Err` means the port failed while writing.
    async fn command(
        &mut self,
        cmd: Command,
        writer: Option<&mut WriteHalf<SerialStream>>,
    ) -> std::io::Result<()> {
        if cmd.device != self.device {
            let msg = format!(
                "device `{}`: this adapter serves `{}`",
                cmd.device, self.device
            );
            cmd.reply(Err(CommandError::UnknownTarget(msg)));
            return Ok(());
        }
        if cmd.is_expired(std::time::Instant::now()) {
            cmd.reply(Err(CommandError::Expired));
            return Ok(());
        }
        let line = match &cmd.action {
            CommandAction::Send { port: Some(p), .. } => {
                let msg = format!("a serial line has no port (got {p})");
                cmd.reply(Err(CommandError::Unsupported(msg)));
                return Ok(());
            }
            CommandAction::Send {
                port: None,
                payload,
            } => {
                let mut line = payload.clone();
                if !matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.extend_from_slice(self.config.line_ending.as_bytes());
                }
                line
            }
            CommandAction::Write { point, .. } => {
                let msg = format!(
                    "point `{point}`: the serial adapter does not write points; send the \
                     instrument's own command line instead"
                );
                cmd.reply(Err(CommandError::Unsupported(msg)));
                return Ok(());
            }
        };
        let Some(writer) = writer else {
            let msg = format!("the serial port is not open ({})", self.down);
            cmd.reply(Err(CommandError::Device(msg)));
            return Ok(());
        };
        match write_all(writer, &line).await {
            Ok(()) => {
                bump(&self.stats.commands, 1);
                tracing::info!(adapter = %self.source, command = %cmd.id, bytes = line.len(), "line sent");
                cmd.reply(Ok(None));
                Ok(())
            }
            Err(e) => {
                cmd.reply(Err(CommandError::Device(format!("write failed: {e}"))));
                Err(e)
            }
        }
    }

    /// Frames and decodes `bytes`, appending the readings to `out`.
    fn on_bytes(&mut self, bytes: &[u8], out: &mut Vec<Reading>) {
        let Station {
            framer,
            decoder,
            stats,
            complaints,
            last,
            source,
            device,
            ..
        } = self;
        let mut decoded = Vec::new();
        framer.push(bytes, |event| match event {
            Event::Oversized => {
                bump(&stats.oversized, 1);
                complaints.note(source, "oversized", || {
                    "a frame longer than max_frame was discarded".to_string()
                });
            }
            Event::Stray(n) => {
                bump(&stats.stray_bytes, n as u64);
                complaints.note(source, "stray", || {
                    format!("{n} bytes outside start/end markers were discarded")
                });
            }
            Event::Frame(frame) => {
                bump(&stats.frames, 1);
                let text = String::from_utf8_lossy(frame);
                if matches!(text, std::borrow::Cow::Owned(_)) {
                    bump(&stats.non_utf8, 1);
                    complaints.note(source, "encoding", || {
                        format!(
                            "a frame is not UTF-8 (decoded with replacement characters): {}",
                            excerpt(&text, 80)
                        )
                    });
                }
                match decoder.decode(&text, &mut decoded) {
                    Ok(Frame::Data) => {}
                    Ok(Frame::Header) => {
                        bump(&stats.headers, 1);
                        tracing::info!(adapter = %source, header = %excerpt(&text, 80), "csv header");
                    }
                    Err(e) => {
                        let (counter, kind) = match &e {
                            fields::FrameError::Nmea(
                                NmeaError::BadChecksum | NmeaError::MissingChecksum,
                            ) => (&stats.bad_checksum, "checksum"),
                            fields::FrameError::Nmea(NmeaError::Unsupported) => {
                                (&stats.unsupported, "")
                            }
                            fields::FrameError::Nmea(NmeaError::Malformed(_)) => {
                                (&stats.malformed, "malformed")
                            }
                            fields::FrameError::Nmea(NmeaError::NotASentence)
                            | fields::FrameError::Unmatched => (&stats.unmatched, "unmatched"),
                        };
                        bump(counter, 1);
                        if !kind.is_empty() {
                            complaints.note(source, kind, || {
                                format!("frame dropped, {e}: {}", excerpt(&text, 80))
                            });
                        }
                    }
                }
            }
        });
        if decoded.is_empty() {
            return;
        }
        let now = SystemTime::now();
        for d in decoded {
            match d.value {
                Ok(value) => {
                    let quality = match d.invalid {
                        Some(reason) => Quality::Bad(reason.to_string()),
                        None => {
                            last.insert(d.point.clone(), (value.clone(), d.unit.clone()));
                            Quality::Good
                        }
                    };
                    let mut r = Reading::new(source.clone(), device.clone(), d.point, now, value)
                        .with_quality(quality);
                    r.unit = d.unit;
                    out.push(r);
                }
                Err(e) => {
                    bump(&stats.field_errors, 1);
                    complaints.note(source, "field", || format!("point `{}`: {e}", d.point));
                }
            }
        }
    }

    /// Reports an outage once: the first time since the last reading, `message` is logged
    /// at warn and every last value goes out with stale quality and `why`; after that,
    /// `message` is logged at debug only.
    async fn report_outage(
        &mut self,
        ctx: &AdapterContext,
        message: &str,
        why: &str,
    ) -> Result<(), AdapterError> {
        if self.outage {
            tracing::debug!(adapter = %self.source, "{message}");
            return Ok(());
        }
        tracing::warn!(adapter = %self.source, "{message}");
        self.outage = true;
        if self.last.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let readings: Vec<Reading> = self
            .last
            .iter()
            .map(|(point, (value, unit))| {
                let mut r = Reading::new(
                    self.source.clone(),
                    self.device.clone(),
                    point.clone(),
                    now,
                    value.clone(),
                )
                .with_quality(Quality::Stale(why.to_string()));
                r.unit.clone_from(unit);
                r
            })
            .collect();
        bump(&self.stats.readings, readings.len() as u64);
        ctx.readings.send_all(readings).await
    }
}

/// How long a write may wait for the line to take its bytes (flow control holding it).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Hands `bytes` to the kernel. No flush: on a serial port that is tcdrain(2), which blocks
/// the thread until the bytes are on the wire (forever, if flow control holds the line).
async fn write_all(writer: &mut WriteHalf<SerialStream>, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the port took no data for 5s (is flow control holding the line?)",
        )),
    }
}

/// The first `n` characters of `text` (`…` if cut), escaped for a log line.
fn excerpt(text: &str, n: usize) -> String {
    let mut s: String = text.chars().take(n).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s.escape_debug().to_string()
}
