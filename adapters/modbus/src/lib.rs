//! The Modbus adapter: Modbus TCP, RTU on an RS-485 serial port, and RTU over TCP.
//!
//! [`ModbusConfig`] is the `type = "modbus"` section: one link and the devices (slaves) on it,
//! each with a register map of typed points ([`codec`] decodes them in any byte order and
//! applies scale and offset). [`Modbus`] is the [`Adapter`] it builds. One task owns the link
//! and sends one request at a time, with the configured silence between frames, so devices
//! on a shared RS-485 bus never collide.
//!
//! Every poll takes the points that are due, merges them into as few reads as the limits
//! allow ([`plan`]), and turns each answer into readings, reported by exception when a point
//! has a deadband. Failures are classified ([`link::Failure`]): a device exception gives
//! readings with bad quality and keeps the link (an *illegal data address* in a merged read
//! is narrowed down to the point at fault, which is then read alone); a timeout is retried,
//! then the device is marked stale and left alone for a growing backoff, so one dead device
//! costs the others at most its timeouts; a transport error drops the link and reconnects
//! with backoff. Commands write coils and holding registers by point name and read back.
//!
//! [`sim`] is a Modbus server with a register bank, request counting and fault injection:
//! the demo's water tank, the tests' device and the bench's target.

#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod link;
pub mod plan;
pub mod sim;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fieldgate_adapter::backoff::Backoff;
use fieldgate_adapter::{
    Adapter, AdapterContext, AdapterError, BoxFuture, Command, CommandAction, CommandError, Name,
    Quality, Reading, Value,
};
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;

pub use codec::{ByteOrder, Codec, DataType};
pub use config::{DeviceConfig, ModbusConfig, PointConfig, Table, Transport};
pub use link::LinkStats;

use config::Resolved;
use link::{Data, Failure, Link};
use plan::{Block, Limits, Span};

/// The Modbus adapter built from a [`ModbusConfig`].
#[derive(Debug)]
pub struct Modbus {
    config: ModbusConfig,
    devices: Vec<Device>,
    stats: Arc<LinkStats>,
}

#[derive(Debug)]
struct Device {
    id: Name,
    unit: u8,
    limits: Limits,
    /// Sorted by table, then address: the order the planner needs.
    points: Vec<Point>,
    by_name: HashMap<String, usize>,
    backoff: Backoff,
    /// While set and in the future, the device is not polled; its due points go stale.
    resting_until: Option<Instant>,
    /// Why the device last failed, for stale readings.
    down_reason: Option<String>,
}

#[derive(Debug)]
struct Point {
    name: Name,
    unit: Option<Name>,
    at: Resolved,
    codec: Codec,
    interval: Duration,
    next_due: Instant,
    deadband: Option<f64>,
    heartbeat: Duration,
    writable: bool,
    /// Write limits (engineering units).
    min: Option<f64>,
    max: Option<f64>,
    /// Since when it is read alone and never spanned: it failed alone with an
    /// illegal-address exception while the rest of the device answered.
    alone: Option<Instant>,
    /// Since when it is never merged with the point before it: a hole in the device's map
    /// lies between them.
    break_before: Option<Instant>,
    /// Unanswered while the rest of its device answered: not polled until then.
    rest_until: Option<Instant>,
    /// Unanswered polls in a row, for the rest's backoff.
    rest_failures: u32,
    last_good: Option<Value>,
    last_sent: Option<Sent>,
}

#[derive(Debug)]
struct Sent {
    value: Value,
    quality: Quality,
    at: Instant,
}

impl Point {
    fn span(&self, idx: usize) -> Span {
        Span {
            point: idx,
            table: self.at.table,
            start: self.at.offset,
            count: if self.at.table.is_bits() {
                1
            } else {
                self.at.count
            },
            alone: self.alone.is_some(),
            break_before: self.break_before.is_some(),
        }
    }

    /// Forgets what was learned about the map long ago: devices get firmware updates and
    /// registers come and go; a merged read is tried again once an hour.
    fn relearn(&mut self, now: Instant) {
        let stale = |t: &mut Option<Instant>| {
            if t.is_some_and(|at| now.duration_since(at) >= RELEARN) {
                *t = None;
            }
        };
        stale(&mut self.alone);
        stale(&mut self.break_before);
    }

    /// The reading to produce for this observation, if report-by-exception lets it through.
    fn report(&mut self, value: Value, quality: Quality, now: Instant) -> Option<(Value, Quality)> {
        if quality == Quality::Good {
            self.last_good = Some(value.clone());
        }
        if let (Some(deadband), Some(last)) = (self.deadband, &self.last_sent) {
            let moved = match (value.as_f64(), last.value.as_f64()) {
                (Some(a), Some(b)) if a.is_nan() || b.is_nan() => a.is_nan() != b.is_nan(),
                (Some(a), Some(b)) => (a - b).abs() > deadband,
                _ => value != last.value,
            };
            let due = now.duration_since(last.at) >= self.heartbeat;
            if !moved && !due && quality == last.quality {
                return None;
            }
        }
        self.last_sent = Some(Sent {
            value: value.clone(),
            quality: quality.clone(),
            at: now,
        });
        Some((value, quality))
    }

    /// What a bad or stale reading carries: the last good value, or NaN if there was none.
    fn last_value(&self) -> Value {
        self.last_good.clone().unwrap_or(Value::F64(f64::NAN))
    }
}

impl Modbus {
    /// Builds the adapter. The config is validated here as in `fieldgate check`.
    pub fn new(config: &ModbusConfig) -> Result<Self, AdapterError> {
        let problems = config.validate();
        if let Some(p) = problems.first() {
            return Err(AdapterError::Config(format!("{}: {}", p.key, p.message)));
        }
        let now = Instant::now();
        let mut devices = Vec::new();
        for dev in &config.devices {
            let mut points = Vec::new();
            for p in &dev.points {
                let at = p
                    .resolve(dev)
                    .map_err(|(k, m)| AdapterError::Config(format!("{}.{k}: {m}", p.name)))?;
                points.push(Point {
                    name: Name::from(p.name.as_str()),
                    unit: p.unit.as_deref().map(Name::from),
                    at,
                    codec: Codec {
                        data_type: at.data_type,
                        order: at.order,
                        bit: at.bit,
                        scale: p.scale,
                        offset: p.offset,
                    },
                    interval: p.interval.or(dev.interval).unwrap_or(config.interval),
                    next_due: now,
                    deadband: p.deadband,
                    heartbeat: p.heartbeat.unwrap_or(config::DEFAULT_HEARTBEAT),
                    writable: p.writable,
                    min: p.min,
                    max: p.max,
                    alone: None,
                    break_before: None,
                    rest_until: None,
                    rest_failures: 0,
                    last_good: None,
                    last_sent: None,
                });
            }
            points.sort_by_key(|p| (p.at.table, p.at.offset));
            let by_name = points
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.to_string(), i))
                .collect();
            devices.push(Device {
                id: Name::from(dev.id.as_str()),
                unit: dev.unit,
                limits: Limits {
                    max_gap: dev.max_gap,
                    max_registers: dev.max_registers,
                    max_bits: dev.max_bits,
                },
                points,
                by_name,
                backoff: Backoff::new(config.backoff_min, config.backoff_max),
                resting_until: None,
                down_reason: None,
            });
        }
        Ok(Modbus {
            config: config.clone(),
            devices,
            stats: Arc::new(LinkStats::default()),
        })
    }

    /// The link's counters (requests, timeouts, discarded responses), shared with the caller.
    pub fn stats(&self) -> Arc<LinkStats> {
        self.stats.clone()
    }

    async fn run_inner(mut self, mut ctx: AdapterContext) -> Result<(), AdapterError> {
        let mut conn = Conn {
            link: None,
            retry_at: None,
            backoff: Backoff::new(self.config.backoff_min, self.config.backoff_max),
            down_reason: None,
            gap: self.config.effective_frame_gap(),
            last_io: None,
            // Not for RTU over TCP: the serial server's connection is fine when one slave
            // behind it is silent, and reconnecting would cost the others.
            drop_on_timeout: self.config.transport == Transport::Tcp,
        };
        let start = Instant::now();
        for dev in &mut self.devices {
            for p in &mut dev.points {
                p.next_due = start;
            }
        }
        let mut shutdown = ctx.shutdown.clone();
        let mut commands_open = true;
        loop {
            let wake = self
                .devices
                .iter()
                .flat_map(|d| d.points.iter().map(|p| p.next_due))
                .min()
                .unwrap_or(start + self.config.interval);
            if wake > Instant::now() {
                tokio::select! {
                    () = shutdown.fired() => return Ok(()),
                    () = tokio::time::sleep_until(wake) => {}
                    cmd = ctx.commands.recv(), if commands_open => {
                        match cmd {
                            Some(cmd) => self.command(cmd, &mut conn, &ctx).await?,
                            None => commands_open = false,
                        }
                        continue;
                    }
                }
            }
            if shutdown.is_fired() {
                return Ok(());
            }
            // Commands waiting behind a busy bus go first.
            while let Ok(cmd) = ctx.commands.try_recv() {
                self.command(cmd, &mut conn, &ctx).await?;
            }
            for d in 0..self.devices.len() {
                let now = Instant::now();
                if self.devices[d].points.iter().any(|p| p.next_due <= now) {
                    self.poll_device(d, &mut conn, &ctx).await?;
                }
                if shutdown.is_fired() {
                    return Ok(());
                }
            }
        }
    }

    /// Polls the due points of device `d`.
    async fn poll_device(
        &mut self,
        d: usize,
        conn: &mut Conn,
        ctx: &AdapterContext,
    ) -> Result<(), AdapterError> {
        // Now, not when the loop woke: an earlier device may have taken a while.
        let now = Instant::now();
        let (backoff_min, backoff_max) = (self.config.backoff_min, self.config.backoff_max);
        let dev = &mut self.devices[d];
        let mut due = Vec::new();
        let mut resting = Vec::new();
        for (i, p) in dev.points.iter_mut().enumerate() {
            if p.next_due > now {
                continue;
            }
            // From the previous due time, so rates do not drift; skip ahead rather than
            // burst after falling behind.
            p.next_due = later(p.next_due, p.interval);
            if p.next_due <= now {
                p.next_due = later(now, p.interval);
            }
            p.relearn(now);
            if p.rest_until.is_some_and(|u| u > now) {
                resting.push(i);
            } else {
                due.push(i);
            }
        }
        send_stale(dev, &resting, "not answering (resting)", ctx).await?;
        if dev.resting_until.is_some_and(|u| u > now) {
            let why = dev
                .down_reason
                .clone()
                .unwrap_or_else(|| "not answering".into());
            return send_stale(dev, &due, &why, ctx).await;
        }
        if due.is_empty() {
            return Ok(());
        }
        let spans: Vec<Span> = due.iter().map(|&i| dev.points[i].span(i)).collect();
        let mut work: VecDeque<Block> = plan::coalesce(&spans, dev.limits).into();
        let retries = self.config.retries;
        let mut shutdown = ctx.shutdown.clone();
        // What this poll learned; kept only if the device answered something, since a device
        // that refuses everything (still booting, say) teaches nothing about its map.
        let mut answered = false;
        let mut lonely: Vec<usize> = Vec::new();
        let mut new_breaks: Vec<usize> = Vec::new();
        let mut unanswered: Vec<(Block, Failure)> = Vec::new();
        // After a block goes unanswered before any did, one more block is tried to tell a
        // dead device from one that ignores part of its map.
        let mut probes = 1;
        while let Some(block) = work.pop_front() {
            if shutdown.is_fired() {
                return Ok(());
            }
            if let Err(why) = conn.ensure(&self.config, &self.stats, now).await {
                let rest = points_of(
                    unanswered
                        .iter()
                        .map(|(b, _)| b)
                        .chain(std::iter::once(&block))
                        .chain(&work),
                );
                return send_stale(dev, &rest, &why, ctx).await;
            }
            let result = tokio::select! {
                r = conn.read(dev.unit, &block, retries, &self.stats) => r,
                () = shutdown.fired() => return Ok(()),
            };
            let ts = SystemTime::now();
            let at = Instant::now();
            let mut out = Vec::new();
            match result {
                Ok(data) => {
                    answered = true;
                    for &i in &block.points {
                        let p = &mut dev.points[i];
                        p.rest_until = None;
                        p.rest_failures = 0;
                        let value = decode_point(p, &block, &data);
                        if let Some(r) = p.report(value, Quality::Good, at) {
                            out.push(reading(ctx, &dev.id, p, r, ts));
                        }
                    }
                }
                Err(Failure::Exception(
                    code @ (ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue),
                )) if block.points.len() > 1 => {
                    if code == ExceptionCode::IllegalDataValue {
                        shrink_limit(dev, &block, &ctx.id);
                    }
                    let parts = split(dev, &block, &mut new_breaks, at);
                    tracing::debug!(adapter = %ctx.id, device = %dev.id, start = block.start,
                        count = block.count, parts = parts.len(), exception = %code,
                        "merged modbus read refused; narrowing it down");
                    for part in parts.into_iter().rev() {
                        work.push_front(part);
                    }
                }
                Err(Failure::Exception(code)) if !is_gateway_silence(code) => {
                    let why = Failure::Exception(code).reason();
                    if block.points.len() == 1
                        && matches!(
                            code,
                            ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
                        )
                    {
                        lonely.push(block.points[0]);
                    } else {
                        tracing::warn!(adapter = %ctx.id, device = %dev.id, start = block.start,
                            count = block.count, reason = %why, "modbus device exception");
                    }
                    for &i in &block.points {
                        let p = &mut dev.points[i];
                        let last = p.last_value();
                        if let Some(r) = p.report(last, Quality::Bad(why.clone()), at) {
                            out.push(reading(ctx, &dev.id, p, r, ts));
                        }
                    }
                }
                // No answer: a timeout, a frame that was not ours, or a TCP gateway saying
                // the serial device behind it is silent.
                Err(f @ (Failure::Timeout | Failure::Desync(_) | Failure::Exception(_))) => {
                    if conn.drop_on_timeout && f == Failure::Timeout {
                        // On plain TCP a timeout may be a half-open connection: start afresh.
                        conn.drop_link(&f, &ctx.id);
                    }
                    if answered {
                        rest_points(dev, &block, &f, backoff_min, backoff_max, &ctx.id);
                        send_stale(dev, &block.points, &f.reason(), ctx).await?;
                    } else {
                        unanswered.push((block, f));
                        if probes == 0 || work.is_empty() {
                            let rest: Vec<Block> = work.drain(..).collect();
                            return self.device_down(d, unanswered, rest, ctx).await;
                        }
                        probes -= 1;
                    }
                }
                Err(f @ Failure::Transport(_)) => {
                    conn.drop_link(&f, &ctx.id);
                    let rest = points_of(
                        unanswered
                            .iter()
                            .map(|(b, _)| b)
                            .chain(std::iter::once(&block))
                            .chain(&work),
                    );
                    ctx.readings.send_all(out).await?;
                    return send_stale(dev, &rest, &f.reason(), ctx).await;
                }
            }
            ctx.readings.send_all(out).await?;
        }
        if answered {
            if dev.resting_until.take().is_some() || dev.down_reason.take().is_some() {
                tracing::info!(adapter = %ctx.id, device = %dev.id, "modbus device answering again");
            }
            dev.backoff.reset();
            for i in lonely {
                let p = &mut dev.points[i];
                if p.alone.is_none() {
                    tracing::warn!(adapter = %ctx.id, device = %dev.id, point = %p.name,
                        table = p.at.table.as_str(), address = p.at.offset,
                        "modbus point refused by the device (illegal address); reading it alone");
                }
                p.alone = Some(now);
            }
            // Blocks that went unanswered before the device showed it is alive: those points
            // rest on their own.
            for (block, f) in unanswered {
                rest_points(dev, &block, &f, backoff_min, backoff_max, &ctx.id);
                send_stale(dev, &block.points, &f.reason(), ctx).await?;
            }
        } else {
            for i in new_breaks {
                dev.points[i].break_before = None;
            }
        }
        Ok(())
    }

    /// Device `d` answered nothing: the points of the `unanswered` blocks and of `rest` go
    /// stale and the device rests for a backoff.
    async fn device_down(
        &mut self,
        d: usize,
        unanswered: Vec<(Block, Failure)>,
        rest: Vec<Block>,
        ctx: &AdapterContext,
    ) -> Result<(), AdapterError> {
        let dev = &mut self.devices[d];
        let why = unanswered
            .last()
            .map_or_else(|| "not answering".to_string(), |(_, f)| f.reason());
        let delay = dev.backoff.next_delay();
        if dev.down_reason.is_none() {
            tracing::warn!(adapter = %ctx.id, device = %dev.id, unit = dev.unit, reason = %why,
                retry_in = ?delay, "modbus device not answering; its readings are stale");
        }
        dev.resting_until = Some(later(Instant::now(), delay));
        dev.down_reason = Some(why.clone());
        let points = points_of(unanswered.iter().map(|(b, _)| b).chain(&rest));
        send_stale(dev, &points, &why, ctx).await
    }

    /// Executes one command and answers it.
    async fn command(
        &mut self,
        cmd: Command,
        conn: &mut Conn,
        ctx: &AdapterContext,
    ) -> Result<(), AdapterError> {
        let now = Instant::now();
        let outcome = self.execute(&cmd, conn, ctx, now).await;
        match &outcome {
            Ok(v) => tracing::info!(adapter = %ctx.id, device = %cmd.device, command = %cmd.id,
                read_back = ?v, "modbus write done"),
            Err(e) => tracing::warn!(adapter = %ctx.id, device = %cmd.device, command = %cmd.id,
                error = %e, "modbus command failed"),
        }
        // The value read back is reported like a polled one.
        if let (Ok(Some(value)), CommandAction::Write { point, .. }) = (&outcome, &cmd.action) {
            if let Some(dev) = self.devices.iter_mut().find(|d| d.id == cmd.device) {
                if let Some(&i) = dev.by_name.get(point.as_str()) {
                    let p = &mut dev.points[i];
                    if let Some(r) = p.report(value.clone(), Quality::Good, now) {
                        let reading = reading(ctx, &dev.id, p, r, SystemTime::now());
                        ctx.readings.send(reading).await?;
                    }
                }
            }
        }
        cmd.reply(outcome);
        Ok(())
    }

    async fn execute(
        &mut self,
        cmd: &Command,
        conn: &mut Conn,
        ctx: &AdapterContext,
        now: Instant,
    ) -> Result<Option<Value>, CommandError> {
        if cmd.is_expired(std::time::Instant::now()) {
            return Err(CommandError::Expired);
        }
        let Some(dev) = self.devices.iter().find(|d| d.id == cmd.device) else {
            return Err(CommandError::UnknownTarget(format!(
                "adapter `{}` has no device `{}`",
                ctx.id, cmd.device
            )));
        };
        let (point, value) = match &cmd.action {
            CommandAction::Write { point, value } => (point, value),
            CommandAction::Send { .. } => {
                return Err(CommandError::Unsupported(
                    "Modbus devices take point writes, not raw payloads".into(),
                ))
            }
        };
        let Some(&i) = dev.by_name.get(point.as_str()) else {
            return Err(CommandError::UnknownTarget(format!(
                "device `{}` has no point `{point}`",
                dev.id
            )));
        };
        let p = &dev.points[i];
        if !p.writable {
            return Err(CommandError::Unsupported(format!(
                "point `{point}` of device `{}` is not writable (set `writable = true` in its \
                 config to allow it)",
                dev.id
            )));
        }
        if let Some(v) = value.as_f64().filter(|v| v.is_finite()) {
            let (lo, hi) = (
                p.min.unwrap_or(f64::NEG_INFINITY),
                p.max.unwrap_or(f64::INFINITY),
            );
            if !(lo..=hi).contains(&v) {
                return Err(CommandError::InvalidValue(format!(
                    "{v} is out of range for point `{point}` of device `{}` (allowed {} to {})",
                    dev.id,
                    p.min.map_or("-inf".into(), |m| m.to_string()),
                    p.max.map_or("inf".into(), |m| m.to_string()),
                )));
            }
        }
        let unit = dev.unit;
        let at = p.at;
        let codec = p.codec;
        let write = match at.table {
            Table::Coil => Write::Coil(match value {
                Value::Bool(b) => *b,
                Value::I64(0) => false,
                Value::I64(1) => true,
                other => {
                    return Err(CommandError::InvalidValue(format!(
                        "a coil takes true/false (or 0/1), not {other}"
                    )))
                }
            }),
            _ => Write::Words(
                codec
                    .encode(value, at.count)
                    .map_err(CommandError::InvalidValue)?,
            ),
        };
        conn.ensure(&self.config, &self.stats, now)
            .await
            .map_err(CommandError::Device)?;
        // Connecting may have taken a while: never write after the deadline.
        if cmd.is_expired(std::time::Instant::now()) {
            return Err(CommandError::Expired);
        }
        conn.write(unit, at.offset, &write, &self.stats)
            .await
            .map_err(|f| conn.command_failed(f, &ctx.id))?;
        let block = Block {
            table: at.table,
            start: at.offset,
            count: if at.table.is_bits() { 1 } else { at.count },
            points: vec![i],
        };
        let data = conn
            .read(unit, &block, self.config.retries, &self.stats)
            .await
            .map_err(|f| conn.command_failed(f, &ctx.id))?;
        let confirmed = match (&write, &data) {
            (Write::Coil(on), Data::Bits(b)) => b.first() == Some(on),
            (Write::Words(w), Data::Words(r)) => r.get(..w.len()) == Some(w.as_slice()),
            _ => false,
        };
        let read_back = decode_at(&at, &codec, &block, &data);
        if !confirmed {
            return Err(CommandError::Device(format!(
                "wrote {value} but read back {read_back}"
            )));
        }
        Ok(Some(read_back))
    }
}

enum Write {
    Coil(bool),
    Words(Vec<u16>),
}

/// The link and its reconnect state.
#[derive(Debug)]
struct Conn {
    link: Option<Link>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    down_reason: Option<String>,
    gap: Duration,
    last_io: Option<Instant>,
    /// Plain TCP reconnects after a timeout (the connection may be half-open).
    drop_on_timeout: bool,
}

impl Conn {
    /// Connects unless connected already.
    async fn ensure(
        &mut self,
        config: &ModbusConfig,
        stats: &Arc<LinkStats>,
        now: Instant,
    ) -> Result<(), String> {
        if self.link.is_some() {
            return Ok(());
        }
        self.connect(config, stats, now).await
    }

    async fn connect(
        &mut self,
        config: &ModbusConfig,
        stats: &Arc<LinkStats>,
        now: Instant,
    ) -> Result<(), String> {
        if let Some(at) = self.retry_at.filter(|at| *at > now) {
            let _ = at;
            return Err(self
                .down_reason
                .clone()
                .unwrap_or_else(|| "link down".into()));
        }
        match link::connect(config, stats).await {
            Ok(link) => {
                if self.down_reason.take().is_some() {
                    tracing::info!(transport = ?config.transport, "modbus link up again");
                }
                self.link = Some(link);
                self.retry_at = None;
                self.backoff.reset();
                Ok(())
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                if self.down_reason.is_none() {
                    tracing::warn!(error = %e, retry_in = ?delay, "modbus link down; readings are stale until it is back");
                }
                let why = format!("link down: {e}");
                self.down_reason = Some(why.clone());
                self.retry_at = Some(later(Instant::now(), delay));
                Err(why)
            }
        }
    }

    /// A command's request failed: drop the link where polling would, and say why.
    fn command_failed(&mut self, f: Failure, adapter: &Name) -> CommandError {
        if matches!(f, Failure::Transport(_)) || (self.drop_on_timeout && f == Failure::Timeout) {
            self.drop_link(&f, adapter);
        }
        CommandError::Device(f.reason())
    }

    fn drop_link(&mut self, failure: &Failure, adapter: &Name) {
        if self.link.take().is_some() {
            tracing::debug!(adapter = %adapter, reason = %failure.reason(), "modbus link dropped; reconnecting");
        }
    }

    /// Keeps the inter-frame silence.
    async fn gap(&mut self) {
        if let Some(last) = self.last_io {
            if !self.gap.is_zero() {
                tokio::time::sleep_until(last + self.gap).await;
            }
        }
    }

    async fn read(
        &mut self,
        unit: u8,
        block: &Block,
        retries: u32,
        stats: &LinkStats,
    ) -> Result<Data, Failure> {
        let mut attempt = 0;
        // A frame that was not ours (a late answer to an earlier request) says nothing
        // about this device: it does not use up an attempt, up to a few of them.
        let mut desyncs = 0;
        loop {
            self.gap().await;
            let Some(link) = self.link.as_mut() else {
                return Err(Failure::Transport("not connected".into()));
            };
            let r = link.read(unit, block.table, block.start, block.count).await;
            self.last_io = Some(Instant::now());
            match r {
                Err(f @ Failure::Desync(_)) if desyncs < MAX_DESYNCS => {
                    f.count(stats);
                    desyncs += 1;
                }
                Err(f @ (Failure::Timeout | Failure::Desync(_))) => {
                    f.count(stats);
                    if attempt >= retries {
                        return Err(f);
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn write(
        &mut self,
        unit: u8,
        address: u16,
        write: &Write,
        stats: &LinkStats,
    ) -> Result<(), Failure> {
        self.gap().await;
        let link = self
            .link
            .as_mut()
            .ok_or_else(|| Failure::Transport("not connected".into()))?;
        let r = match write {
            Write::Coil(on) => link.write_coil(unit, address, *on).await,
            Write::Words(words) => link.write_registers(unit, address, words).await,
        };
        self.last_io = Some(Instant::now());
        if let Err(f) = &r {
            f.count(stats);
        }
        r
    }
}

/// Splits a merged read the device refused: at the holes in the map if it spans any (they are
/// remembered), else in two halves.
fn split(dev: &mut Device, block: &Block, marks: &mut Vec<usize>, now: Instant) -> Vec<Block> {
    let mut marked = false;
    for pair in block.points.windows(2) {
        let (a, b) = (&dev.points[pair[0]], &dev.points[pair[1]]);
        let a_end = u32::from(a.at.offset) + u32::from(a.span(0).count);
        // A hole only between neighbours in the map: a mapped point that was merely not due
        // lies between the others otherwise.
        if pair[1] == pair[0] + 1 && u32::from(b.at.offset) > a_end && b.break_before.is_none() {
            dev.points[pair[1]].break_before = Some(now);
            marks.push(pair[1]);
            marked = true;
        }
    }
    let plan = |dev: &Device, idx: &[usize]| {
        let spans: Vec<Span> = idx.iter().map(|&i| dev.points[i].span(i)).collect();
        plan::coalesce(&spans, dev.limits)
    };
    if marked {
        let parts = plan(dev, &block.points);
        if parts.len() > 1 {
            return parts;
        }
    }
    let (left, right) = block.points.split_at(block.points.len() / 2);
    let mut parts = plan(dev, left);
    parts.extend(plan(dev, right));
    parts
}

/// Foreign frames tolerated per request before it counts as unanswered.
const MAX_DESYNCS: u32 = 3;

/// How long what was learned about a device's map (isolated points, holes) is kept.
const RELEARN: Duration = Duration::from_secs(3600);

/// `t + d`, saturating far in the future instead of overflowing.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(t)
}

/// A TCP gateway's way of saying the serial device behind it did not answer.
fn is_gateway_silence(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice
    )
}

/// The points of `block` went unanswered while their device answered other reads: they rest
/// for a backoff of their own.
fn rest_points(
    dev: &mut Device,
    block: &Block,
    failure: &Failure,
    min: Duration,
    max: Duration,
    adapter: &Name,
) {
    for &i in &block.points {
        let p = &mut dev.points[i];
        p.rest_failures = p.rest_failures.saturating_add(1);
        let delay = min
            .saturating_mul(1 << p.rest_failures.min(16).saturating_sub(1))
            .min(max);
        if p.rest_until.is_none() {
            tracing::warn!(adapter = %adapter, device = %dev.id, point = %p.name,
                reason = %failure.reason(), retry_in = ?delay,
                "modbus point not answered while its device answers others; resting it");
        }
        p.rest_until = Some(later(Instant::now(), delay));
    }
}

/// The device refused a merged read as an illegal quantity: it reads less than the protocol
/// allows. Halve its limit for that table (never below its largest point).
fn shrink_limit(dev: &mut Device, block: &Block, adapter: &Name) {
    let largest = block
        .points
        .iter()
        .map(|&i| dev.points[i].span(i).count)
        .max()
        .unwrap_or(1);
    let limit = if block.table.is_bits() {
        &mut dev.limits.max_bits
    } else {
        &mut dev.limits.max_registers
    };
    let new = (block.count / 2).max(largest);
    if new < *limit {
        tracing::warn!(adapter = %adapter, device = %dev.id, table = block.table.as_str(),
            refused = block.count, limit = new,
            "modbus device refused a read of this size; reading less from now on (set max_registers / max_bits to say so in config)");
        *limit = new;
    }
}

/// The indices of the points of `blocks`, in order.
fn points_of<'a>(blocks: impl IntoIterator<Item = &'a Block>) -> Vec<usize> {
    blocks
        .into_iter()
        .flat_map(|b| b.points.iter().copied())
        .collect()
}

/// The value of point `p` inside `block`'s data.
fn decode_point(p: &Point, block: &Block, data: &Data) -> Value {
    decode_at(&p.at, &p.codec, block, data)
}

/// The value at `at` inside `block`'s data.
fn decode_at(at: &Resolved, codec: &Codec, block: &Block, data: &Data) -> Value {
    let from = usize::from(at.offset.saturating_sub(block.start));
    match data {
        Data::Bits(bits) => Value::Bool(bits.get(from).copied().unwrap_or(false)),
        Data::Words(words) => {
            let to = from + usize::from(at.count);
            // The link checked the answer's length against the request, which covers every
            // point in it; `get` keeps a surprise from panicking anyway.
            words
                .get(from..to)
                .map_or(Value::F64(f64::NAN), |regs| codec.decode(regs))
        }
    }
}

fn reading(
    ctx: &AdapterContext,
    device: &Name,
    p: &Point,
    (value, quality): (Value, Quality),
    ts: SystemTime,
) -> Reading {
    Reading {
        source: ctx.id.clone(),
        device: device.clone(),
        point: p.name.clone(),
        ts,
        value,
        unit: p.unit.clone(),
        quality,
    }
}

async fn send_stale(
    dev: &mut Device,
    points: &[usize],
    why: &str,
    ctx: &AdapterContext,
) -> Result<(), AdapterError> {
    let ts = SystemTime::now();
    let now = Instant::now();
    let mut out = Vec::with_capacity(points.len());
    for &i in points {
        let p = &mut dev.points[i];
        let last = p.last_value();
        if let Some(r) = p.report(last, Quality::Stale(why.to_string()), now) {
            out.push(reading(ctx, &dev.id, p, r, ts));
        }
    }
    ctx.readings.send_all(out).await
}

impl Adapter for Modbus {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin((*self).run_inner(ctx))
    }
}
