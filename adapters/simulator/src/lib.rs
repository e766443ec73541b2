//! A simulated field device: named points with waveforms and rates.
//!
//! [`SimulatorConfig`] is the `type = "simulator"` adapter section; [`Simulator`] is the
//! [`Adapter`] it builds. Each point has a [`WaveformKind`] (sine, ramp, random walk, step,
//! counter, or a replayed recording) and an interval; the adapter emits every point when it is
//! due, on `tokio::time`, so tests with paused time are exact. `fieldgate demo` and
//! `fieldgate bench` use it; it is also the easiest way to try a site config without hardware.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fieldgate_adapter::{
    Adapter, AdapterContext, AdapterError, BoxFuture, CommandAction, CommandError, ConfigProblem,
    Name, Quality, Reading, Value,
};
use serde::Deserialize;
use tokio::time::Instant;

/// `[[adapters]] type = "simulator"`: simulated devices and their points.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// The simulated devices.
    pub devices: Vec<DeviceConfig>,
}

/// One simulated device.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device id readings carry.
    pub id: String,
    /// Its points.
    pub points: Vec<PointConfig>,
}

/// One simulated point.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// The point id readings carry.
    pub name: String,
    /// How often a value is produced, like `"1s"`.
    #[serde(with = "fieldgate_adapter::duration")]
    pub interval: Duration,
    /// Unit attached to every reading, like `"°C"`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Stop after this many readings (the point then stays silent). Default: never stop.
    #[serde(default)]
    pub count: Option<u64>,
    /// The shape of the values: `sine`, `ramp`, `step`, `random_walk`, `counter` or `replay`.
    pub waveform: WaveformKind,
    /// Lowest value (`sine`, `ramp`, `step`, `random_walk`). Default 0.
    #[serde(default)]
    pub min: f64,
    /// Highest value (`sine`, `ramp`, `step`, `random_walk`). Default 100.
    #[serde(default = "hundred")]
    pub max: f64,
    /// One full cycle (`sine`, `ramp`, `step`). Default `"60s"`.
    #[serde(default = "minute", with = "fieldgate_adapter::duration")]
    pub period: Duration,
    /// Largest change between two samples (`random_walk`). Default 1.
    #[serde(default = "one_f")]
    pub step: f64,
    /// First value (`counter`). Default 0.
    #[serde(default)]
    pub start: i64,
    /// Added at every sample (`counter`). Default 1.
    #[serde(default = "one")]
    pub increment: i64,
    /// A text file with one number per line, replayed in a loop (`replay`); blank lines and
    /// `#` comments are skipped. A relative path is relative to the config file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// The shape of a simulated point's values.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WaveformKind {
    /// `min + (max-min) * (1 + sin(2πt/period)) / 2`.
    Sine,
    /// A sawtooth from `min` to `max` over `period`, then back to `min`.
    Ramp,
    /// A square wave: `min` for the first half of `period`, `max` for the second.
    Step,
    /// A random walk within `[min, max]`, moving at most `step` per sample.
    RandomWalk,
    /// An integer counter: `start`, `start + increment`, ...
    Counter,
    /// Numbers replayed from `file`.
    Replay,
}

const fn hundred() -> f64 {
    100.0
}

const fn one_f() -> f64 {
    1.0
}

const fn minute() -> Duration {
    Duration::from_secs(60)
}

const fn one() -> i64 {
    1
}

impl SimulatorConfig {
    /// Every problem with this section; `base` is the config file's directory.
    pub fn validate(&self, base: &Path) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.devices.is_empty() {
            problems.push(ConfigProblem::new("devices", "needs at least one device"));
        }
        let mut ids = std::collections::HashSet::new();
        for (d, dev) in self.devices.iter().enumerate() {
            if dev.id.trim().is_empty() {
                problems.push(ConfigProblem::new(
                    format!("devices[{d}].id"),
                    "must not be empty",
                ));
            }
            if !ids.insert(dev.id.as_str()) {
                problems.push(ConfigProblem::new(
                    format!("devices[{d}].id"),
                    format!("device `{}` is defined twice", dev.id),
                ));
            }
            if dev.points.is_empty() {
                problems.push(ConfigProblem::new(
                    format!("devices[{d}].points"),
                    "needs at least one point",
                ));
            }
            let mut names = std::collections::HashSet::new();
            for (p, point) in dev.points.iter().enumerate() {
                let key = |k: &str| format!("devices[{d}].points[{p}].{k}");
                if point.name.trim().is_empty() {
                    problems.push(ConfigProblem::new(key("name"), "must not be empty"));
                }
                if point.count == Some(0) {
                    problems.push(ConfigProblem::new(
                        key("count"),
                        "must be at least 1 (leave it out for no limit)",
                    ));
                }
                for (k, v) in [("min", point.min), ("max", point.max), ("step", point.step)] {
                    if !v.is_finite() {
                        problems.push(ConfigProblem::new(
                            key(k),
                            format!("must be a finite number, not {v}"),
                        ));
                    }
                }
                if !names.insert(point.name.as_str()) {
                    problems.push(ConfigProblem::new(
                        key("name"),
                        format!(
                            "point `{}` is defined twice in device `{}`",
                            point.name, dev.id
                        ),
                    ));
                }
                if point.interval.is_zero() {
                    problems.push(ConfigProblem::new(
                        key("interval"),
                        "must be greater than zero, like \"1s\"",
                    ));
                }
                match point.waveform {
                    WaveformKind::Sine | WaveformKind::Ramp | WaveformKind::Step => {
                        if point.min > point.max {
                            problems.push(ConfigProblem::new(
                                key("min"),
                                format!("min ({}) is above max ({})", point.min, point.max),
                            ));
                        }
                        if point.period.is_zero() {
                            problems.push(ConfigProblem::new(key("period"), "must be greater than zero"));
                        }
                    }
                    WaveformKind::RandomWalk => {
                        if point.min > point.max {
                            problems.push(ConfigProblem::new(
                                key("min"),
                                format!("min ({}) is above max ({})", point.min, point.max),
                            ));
                        }
                        if point.step.is_nan() || point.step < 0.0 {
                            problems.push(ConfigProblem::new(key("step"), "must be zero or positive"));
                        }
                    }
                    WaveformKind::Counter => {}
                    WaveformKind::Replay => match &point.file {
                        None => problems.push(ConfigProblem::new(
                            key("file"),
                            "waveform \"replay\" needs `file`, a text file with one number per line",
                        )),
                        Some(file) => {
                            if let Err(e) = load_replay(&base.join(file)) {
                                problems.push(ConfigProblem::new(key("file"), e));
                            }
                        }
                    },
                }
            }
        }
        problems
    }
}

/// Reads a replay file: one number per line.
fn load_replay(path: &Path) -> Result<Vec<f64>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read replay file {}: {e}", path.display()))?;
    let mut values = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v = line
            .parse::<f64>()
            .map_err(|_| format!("{}:{}: `{line}` is not a number", path.display(), n + 1))?;
        values.push(v);
    }
    if values.is_empty() {
        return Err(format!("replay file {} holds no numbers", path.display()));
    }
    Ok(values)
}

/// The runtime state of one point.
#[derive(Debug)]
struct Point {
    device: Name,
    name: Name,
    unit: Option<Name>,
    interval: Duration,
    remaining: Option<u64>,
    gen: Generator,
}

#[derive(Debug)]
enum Generator {
    Periodic {
        shape: Shape,
        min: f64,
        max: f64,
        period: f64,
    },
    Walk {
        min: f64,
        max: f64,
        step: f64,
        current: f64,
    },
    Counter {
        next: i64,
        increment: i64,
    },
    Replay {
        values: Vec<f64>,
        next: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Sine,
    Ramp,
    Step,
}

impl Generator {
    fn sample(&mut self, elapsed: Duration, rng: &mut fastrand::Rng) -> Value {
        match self {
            Generator::Periodic {
                shape,
                min,
                max,
                period,
            } => {
                let phase = (elapsed.as_secs_f64() / *period).fract();
                let unit = match shape {
                    Shape::Sine => (1.0 + (phase * std::f64::consts::TAU).sin()) / 2.0,
                    Shape::Ramp => phase,
                    Shape::Step => {
                        if phase < 0.5 {
                            0.0
                        } else {
                            1.0
                        }
                    }
                };
                Value::F64(*min + (*max - *min) * unit)
            }
            Generator::Walk {
                min,
                max,
                step,
                current,
            } => {
                let delta = (rng.f64() * 2.0 - 1.0) * *step;
                *current = (*current + delta).clamp(*min, *max);
                Value::F64(*current)
            }
            Generator::Counter { next, increment } => {
                let v = *next;
                *next = next.wrapping_add(*increment);
                Value::I64(v)
            }
            Generator::Replay { values, next } => {
                let v = values[*next % values.len()];
                *next = (*next + 1) % values.len();
                Value::F64(v)
            }
        }
    }
}

/// The simulator adapter built from a [`SimulatorConfig`].
#[derive(Debug)]
pub struct Simulator {
    points: Vec<Point>,
    seed: u64,
}

impl Simulator {
    /// Builds the adapter; `base` is the config file's directory (for replay files).
    pub fn new(config: &SimulatorConfig, base: &Path) -> Result<Self, AdapterError> {
        let mut points = Vec::new();
        for dev in &config.devices {
            let device = Name::from(dev.id.as_str());
            for p in &dev.points {
                let period = p.period.as_secs_f64().max(1e-9);
                let periodic = |shape| Generator::Periodic {
                    shape,
                    min: p.min,
                    max: p.max,
                    period,
                };
                let gen = match p.waveform {
                    WaveformKind::Sine => periodic(Shape::Sine),
                    WaveformKind::Ramp => periodic(Shape::Ramp),
                    WaveformKind::Step => periodic(Shape::Step),
                    WaveformKind::RandomWalk => Generator::Walk {
                        min: p.min,
                        max: p.max,
                        step: p.step,
                        current: (p.min + p.max) / 2.0,
                    },
                    WaveformKind::Counter => Generator::Counter {
                        next: p.start,
                        increment: p.increment,
                    },
                    WaveformKind::Replay => {
                        let file = p.file.as_ref().ok_or_else(|| {
                            AdapterError::Config(format!(
                                "point `{}` has waveform \"replay\" but no file",
                                p.name
                            ))
                        })?;
                        Generator::Replay {
                            values: load_replay(&base.join(file)).map_err(AdapterError::Config)?,
                            next: 0,
                        }
                    }
                };
                points.push(Point {
                    device: device.clone(),
                    name: Name::from(p.name.as_str()),
                    unit: p.unit.as_deref().map(Name::from),
                    interval: p.interval,
                    remaining: p.count,
                    gen,
                });
            }
        }
        Ok(Simulator {
            points,
            seed: 0x5eed,
        })
    }

    /// A single counter point emitting as fast as the queue accepts, `count` readings in all
    /// (or forever). This is what `fieldgate bench` drives; it is not reachable from config,
    /// where intervals must be positive.
    pub fn full_rate(device: &str, point: &str, count: Option<u64>) -> Self {
        Simulator {
            points: vec![Point {
                device: Name::from(device),
                name: Name::from(point),
                unit: None,
                interval: Duration::ZERO,
                remaining: count,
                gen: Generator::Counter {
                    next: 0,
                    increment: 1,
                },
            }],
            seed: 0x5eed,
        }
    }

    async fn run_inner(mut self, mut ctx: AdapterContext) -> Result<(), AdapterError> {
        let start = Instant::now();
        let mut rng = fastrand::Rng::with_seed(self.seed);
        // Min-heap of (next due time, point index).
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..self.points.len())
            .map(|i| Reverse((start, i)))
            .collect();
        let mut shutdown = ctx.shutdown.clone();
        let mut commands_open = true;
        loop {
            let Some(Reverse((at, idx))) = due.pop() else {
                // Every point has run out of samples: idle until shutdown.
                shutdown.fired().await;
                return Ok(());
            };
            if at > Instant::now() {
                tokio::select! {
                    () = shutdown.fired() => return Ok(()),
                    () = tokio::time::sleep_until(at) => {}
                    cmd = ctx.commands.recv(), if commands_open => {
                        match cmd {
                            Some(cmd) => answer(cmd),
                            None => commands_open = false,
                        }
                        due.push(Reverse((at, idx)));
                        continue;
                    }
                }
            } else if shutdown.is_fired() {
                return Ok(());
            }
            let point = &mut self.points[idx];
            let value = point.gen.sample(at - start, &mut rng);
            let mut reading = Reading::new(
                ctx.id.clone(),
                point.device.clone(),
                point.name.clone(),
                SystemTime::now(),
                value,
            );
            reading.unit = point.unit.clone();
            reading.quality = Quality::Good;
            ctx.readings.send(reading).await?;
            if let Some(left) = point.remaining.as_mut() {
                *left -= 1;
                if *left == 0 {
                    continue;
                }
            }
            // Schedule from the previous due time, not from now, so rates do not drift; if we
            // fell behind by more than one interval, skip ahead rather than burst.
            let mut next = at + point.interval;
            if point.interval > Duration::ZERO && next + point.interval < Instant::now() {
                next = Instant::now();
            }
            due.push(Reverse((next, idx)));
        }
    }
}

/// The simulator has no writable points; every command is refused with a reason.
fn answer(cmd: fieldgate_adapter::Command) {
    let why = match &cmd.action {
        CommandAction::Write { point, .. } => {
            CommandError::Unsupported(format!("simulated point `{point}` is read-only"))
        }
        CommandAction::Send { .. } => {
            CommandError::Unsupported("the simulator takes no raw payloads".into())
        }
    };
    cmd.reply(Err(why));
}

impl Adapter for Simulator {
    fn run(self: Box<Self>, ctx: AdapterContext) -> BoxFuture<'static, Result<(), AdapterError>> {
        Box::pin((*self).run_inner(ctx))
    }
}

#[cfg(test)]
mod tests;
