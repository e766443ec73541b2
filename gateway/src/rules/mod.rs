//! Edge rules: what happens to readings between the adapters and the queue.
//!
//! [`Rules`] is built from the `[[rules]]` ([`RuleConfig`]) and `[[alerts]]` ([`AlertConfig`])
//! entries of the config. It is a pure state machine: no I/O, no clock of its own. The caller
//! hands it each reading with [`Rules::apply`] and the current wall-clock time, calls
//! [`Rules::tick`] when [`Rules::next_deadline`] comes, and [`Rules::flush`] once at shutdown;
//! everything the engine produces lands in an [`Output`]: readings to queue, and alert events
//! (the reading that raised or cleared the alert, plus an [`Alert`]). Counters are in
//! [`RulesStats`].
//!
//! # Semantics
//!
//! 1. **Matching.** The *first* rule whose `adapter`, `device` and `point` globs all match a
//!    reading applies to it, the others are not consulted; a reading no rule matches passes
//!    unchanged. Rules match the names the adapter gave (before any `rename`).
//! 2. **Transform.** The rule renames the point, then applies `value * scale + offset` to
//!    numeric values (integers and floats become floats; booleans, text and bytes are left
//!    alone), then sets the unit.
//! 3. **Alerts** see *every* transformed reading, including those the rule then drops,
//!    suppresses by deadband or folds into an aggregate. Their globs match the transformed
//!    names. Only good-quality, finite numeric readings change an alert's state (a boolean
//!    counts as 0 or 1). Each alert keeps its state per series (adapter, device, point):
//!    - *normal* → a value above `high` (or below `low`) makes it *pending*, since the
//!      caller's `now` (not the reading's timestamp);
//!    - *pending* → *raised* once the value has stayed past the threshold for `for`: at a
//!      later reading still past it, or at [`Rules::tick`] when `now >= since + for`
//!      (`for = "0s"` raises at once). A value back within the threshold meanwhile cancels
//!      it silently;
//!    - *raised* → *cleared* as soon as a value is below `high - hysteresis` (above
//!      `low + hysteresis` for a low alert); a raised high alert whose value falls straight
//!      below `low` is cleared and the low alert starts (pending, or raised if `for` is 0).
//!
//!    Raising and clearing each emit one event. Its reading is the one that triggered it
//!    (device, point, unit, value); raised by [`Rules::tick`] it is the last reading seen
//!    while pending, stamped with the tick's `now`.
//! 4. **Drop**: the reading disappears (counted in `dropped`).
//! 5. **Deadband**, per series (adapter, device, transformed point): the first reading
//!    passes; then a reading passes only if its value moved by more than `deadband` from the
//!    last value that passed, or its quality changed, or its value's type changed, or (text,
//!    bytes, booleans, NaN and infinities) its value is different, or `heartbeat` (default
//!    15 minutes) has gone by on the caller's clock since the last one passed (a clock stepped
//!    back lets the next reading through). The others are counted in `suppressed`. Points
//!    renamed to the same name are one series and share the deadband.
//! 6. **Aggregate**: windows of `window` length aligned to the Unix epoch (a 1h window starts
//!    on the hour, UTC; a 7m window is aligned to the epoch, not to midnight); a reading
//!    belongs to the window of its timestamp. Good-quality,
//!    finite numeric readings are folded in (booleans as 0/1, counted in `aggregated`); the
//!    others (bad, stale, text, bytes, NaN) pass through unchanged. A series' window closes
//!    when `now` reaches its end (at [`Rules::tick`], or at the series' next reading) or when
//!    a reading of the series with a timestamp in a later window arrives. A late reading,
//!    whose window already closed, is folded into the series' first window not yet closed
//!    (the open one, or else the one right after the last closed), so no window is ever
//!    reported twice.
//!    On close, one reading per function: point `<point>_<function>` (`level_mean`), the
//!    series' adapter and device, the unit of the last reading folded in (none for `count`),
//!    timestamp the window's *start*, quality good; `count` is an integer, the others floats.
//!    Aggregate readings do not go through the rules or alerts again. [`Rules::flush`]
//!    closes every open window at shutdown.
//!
//! [`Rules::next_deadline`] is the earliest end of an open window or due time of a pending
//! alert. Calling `tick` late changes nothing but when the results come out (and the time
//! stamped on an alert raised by `tick`) — except that a reading arriving before the late
//! tick can still cancel a due alert.
//!
//! # Bounds and cost
//!
//! The engine remembers, per series it has seen, which rule and alerts apply (so the globs
//! run once per series, not once per reading, and a reading nothing applies to costs one
//! hash lookup), plus the deadband, window and alert state of the series that need them.
//! Both are bounded by [`MAX_SERIES`] series each. Beyond the first bound, the globs run
//! again for every reading of a new series; beyond the second, new series still get their
//! rule's stateless actions (drop, rename, scale, offset, unit) but no deadband, aggregation
//! or alerts: such readings pass and are counted in `untracked`. Nothing is forgotten while
//! the engine runs (a series' state lives until the engine is dropped, at a restart).
//!
//! No input panics: invalid numbers (NaN, infinities) are treated as non-numeric by alerts,
//! deadband and aggregation, and pass through.

pub mod config;

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldgate_adapter::{Name, Quality, Reading, Value};

pub use config::{
    validate_alerts, validate_rules, AggFn, AggregateConfig, AlertConfig, RuleConfig,
};

use crate::queue::{Alert, AlertLevel, AlertState, Severity};
use crate::uplink::glob;

/// The most series (adapter, device, point) the engine keeps state for, and the most names
/// whose routing it caches.
pub const MAX_SERIES: usize = 100_000;

/// The heartbeat of a deadband rule that sets none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15 * 60);

/// What [`Rules::apply`], [`Rules::tick`] and [`Rules::flush`] produce. They append; the
/// caller drains it.
#[derive(Debug, Default)]
pub struct Output {
    /// Readings to queue, in the order they were produced.
    pub readings: Vec<Reading>,
    /// Alert events: the reading that raised or cleared the alert, and the event.
    pub alerts: Vec<(Reading, Alert)>,
}

/// The engine's counters since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RulesStats {
    /// Readings `apply` let through (transformed or not; aggregates are not counted here).
    pub passed: u64,
    /// Readings a `drop` rule discarded.
    pub dropped: u64,
    /// Readings the deadband held back.
    pub suppressed: u64,
    /// Raw readings folded into an aggregation window.
    pub aggregated: u64,
    /// Aggregate readings emitted (one per function per closed window).
    pub aggregates_emitted: u64,
    /// Alerts raised.
    pub alerts_raised: u64,
    /// Alerts cleared.
    pub alerts_cleared: u64,
    /// Readings that needed deadband, aggregation or alert state but went on without it,
    /// because [`MAX_SERIES`] series were already tracked.
    pub untracked: u64,
}

/// The rules engine. See the [module documentation](self) for what it does.
pub struct Rules {
    rules: Box<[Rule]>,
    alerts: Box<[AlertRule]>,
    /// Per series as the adapter named it: which rule applies and where its state is. At most
    /// `max_series` entries.
    routes: HashMap<SeriesKey, Route>,
    /// Per transformed series: its index in `state.series` (at most `max_series`).
    series_index: HashMap<SeriesKey, usize>,
    state: State,
    max_series: usize,
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rules")
            .field("rules", &self.rules.len())
            .field("alerts", &self.alerts.len())
            .field("routes", &self.routes.len())
            .field("series", &self.state.series.len())
            .field("stats", &self.state.stats)
            .finish_non_exhaustive()
    }
}

impl Rules {
    /// Builds the engine. The entries should have passed [`validate_rules`] and
    /// [`validate_alerts`]; invalid values are made harmless (an aggregate without window or
    /// functions does nothing) rather than refused.
    pub fn new(rules: &[RuleConfig], alerts: &[AlertConfig]) -> Rules {
        Rules {
            rules: rules.iter().map(Rule::new).collect(),
            alerts: alerts.iter().map(AlertRule::new).collect(),
            routes: HashMap::new(),
            series_index: HashMap::new(),
            state: State::default(),
            max_series: MAX_SERIES,
        }
    }

    /// True when there are no rules and no alerts: the caller can skip the stage.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.alerts.is_empty()
    }

    /// Runs one reading through the rules; `now` is the caller's wall clock.
    pub fn apply(&mut self, mut reading: Reading, now: SystemTime, out: &mut Output) {
        let route = self.route(&reading);
        let rule = route.rule.and_then(|i| self.rules.get(i));
        if let Some(rule) = rule {
            rule.transform(&mut reading);
        }
        let state = &mut self.state;
        if route.untracked {
            state.stats.untracked += 1;
        }
        if let Some(s) = route.series {
            state.alerts(&self.alerts, s, &reading, now, out);
        }
        if rule.is_some_and(|r| r.drop) {
            state.stats.dropped += 1;
            return;
        }
        if let (Some(rule), Some(s)) = (rule, route.series) {
            if let Some(agg) = &rule.aggregate {
                if state.aggregate(agg, s, &reading, now, out) {
                    state.stats.aggregated += 1;
                    return;
                }
            } else if let Some(db) = &rule.deadband {
                if !state.deadband(db, s, &reading, now) {
                    state.stats.suppressed += 1;
                    return;
                }
            }
        }
        state.stats.passed += 1;
        out.readings.push(reading);
    }

    /// Closes the windows that ended by `now` and raises the pending alerts due by `now`.
    pub fn tick(&mut self, now: SystemTime, out: &mut Output) {
        self.state.tick(&self.alerts, now, out);
    }

    /// When [`Rules::tick`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.state.deadlines.first().map(|&(t, _)| t)
    }

    /// At shutdown: does what [`Rules::tick`] would, then closes every open window, so no
    /// folded reading is lost. Pending alerts stay pending.
    pub fn flush(&mut self, now: SystemTime, out: &mut Output) {
        self.tick(now, out);
        let open: Vec<(SystemTime, Due)> = self
            .state
            .deadlines
            .iter()
            .filter(|(_, d)| matches!(d, Due::Window(_)))
            .copied()
            .collect();
        for (_, due) in open {
            if let Due::Window(s) = due {
                self.state.close_window(s, out);
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> RulesStats {
        self.state.stats
    }

    /// The route of the reading's series, from the cache or worked out (and cached).
    fn route(&mut self, r: &Reading) -> Route {
        let probe = (r.source.as_str(), r.device.as_str(), r.point.as_str());
        if let Some(route) = self.routes.get(&probe as &dyn Triple) {
            return *route;
        }
        let rule = self
            .rules
            .iter()
            .position(|x| x.matches(&r.source, &r.device, &r.point));
        let rule_ref = rule.and_then(|i| self.rules.get(i));
        let point = rule_ref
            .and_then(|x| x.rename.clone())
            .unwrap_or_else(|| r.point.clone());
        let alerts: Vec<usize> = self
            .alerts
            .iter()
            .enumerate()
            .filter(|(_, a)| a.matches(&r.source, &r.device, &point))
            .map(|(i, _)| i)
            .collect();
        let stateful = !alerts.is_empty()
            || rule_ref.is_some_and(|x| x.deadband.is_some() || x.aggregate.is_some());
        let series = if stateful {
            let key = (r.source.as_str(), r.device.as_str(), point.as_str());
            match self.series_index.get(&key as &dyn Triple) {
                Some(&i) => Some(i),
                None if self.state.series.len() < self.max_series => Some(self.new_series(
                    SeriesKey {
                        source: r.source.clone(),
                        device: r.device.clone(),
                        point,
                    },
                    &alerts,
                )),
                None => None,
            }
        } else {
            None
        };
        let route = Route {
            rule,
            series,
            untracked: stateful && series.is_none(),
        };
        // Beyond the bound the route is not cached: the globs run again at the series' next
        // reading.
        if self.routes.len() < self.max_series {
            self.routes.insert(
                SeriesKey {
                    source: r.source.clone(),
                    device: r.device.clone(),
                    point: r.point.clone(),
                },
                route,
            );
        }
        route
    }

    /// Starts tracking the transformed series `key`, watched by `alerts`.
    fn new_series(&mut self, key: SeriesKey, alerts: &[usize]) -> usize {
        let i = self.state.series.len();
        self.state.series.push(Series {
            key: key.clone(),
            alerts: alerts.iter().map(|&a| (a, Phase::Normal)).collect(),
            deadband: None,
            agg: None,
        });
        self.series_index.insert(key, i);
        i
    }
}

/// The names of a series.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeriesKey {
    source: Name,
    device: Name,
    point: Name,
}

/// A view of three names, so the maps keyed by [`SeriesKey`] can be searched with borrowed
/// `&str`s (no `Arc` clones on the hot path).
trait Triple {
    fn parts(&self) -> (&str, &str, &str);
}

impl Triple for SeriesKey {
    fn parts(&self) -> (&str, &str, &str) {
        (&self.source, &self.device, &self.point)
    }
}

impl Triple for (&str, &str, &str) {
    fn parts(&self) -> (&str, &str, &str) {
        *self
    }
}

impl Hash for dyn Triple + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h);
    }
}

impl PartialEq for dyn Triple + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn Triple + '_ {}

// Must hash exactly like `dyn Triple`, for the borrowed lookups.
impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h);
    }
}

impl<'a> Borrow<dyn Triple + 'a> for SeriesKey {
    fn borrow(&self) -> &(dyn Triple + 'a) {
        self
    }
}

/// What applies to a series as the adapter named it.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// The index of the first matching rule.
    rule: Option<usize>,
    /// The index of the transformed series' state, when it needs some.
    series: Option<usize>,
    /// It needs state but the engine is full.
    untracked: bool,
}

/// A `[[rules]]` entry, ready to run.
#[derive(Debug)]
struct Rule {
    adapter: Option<String>,
    device: Option<String>,
    point: Option<String>,
    drop: bool,
    rename: Option<Name>,
    /// (scale, offset)
    linear: Option<(f64, f64)>,
    unit: Option<Name>,
    deadband: Option<Deadband>,
    aggregate: Option<Aggregate>,
}

#[derive(Debug)]
struct Deadband {
    band: f64,
    heartbeat: Duration,
}

#[derive(Debug)]
struct Aggregate {
    window: Duration,
    /// `window` in nanoseconds, > 0.
    nanos: i128,
    functions: Box<[AggFn]>,
}

fn matches(pattern: Option<&str>, text: &str) -> bool {
    pattern.is_none_or(|p| glob(p, text))
}

impl Rule {
    fn new(c: &RuleConfig) -> Rule {
        let linear = (c.scale.is_some() || c.offset.is_some())
            .then(|| (c.scale.unwrap_or(1.0), c.offset.unwrap_or(0.0)));
        let aggregate = c.aggregate.as_ref().and_then(|a| {
            let nanos = i128::try_from(a.window.as_nanos()).ok()?;
            (nanos > 0 && !a.functions.is_empty()).then(|| Aggregate {
                window: a.window,
                nanos,
                functions: a.functions.iter().copied().collect(),
            })
        });
        Rule {
            adapter: c.adapter.clone(),
            device: c.device.clone(),
            point: c.point.clone(),
            drop: c.drop,
            rename: c.rename.as_deref().map(Name::from),
            linear,
            unit: c.unit.as_deref().map(Name::from),
            deadband: c.deadband.map(|band| Deadband {
                band,
                heartbeat: c.heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
            }),
            aggregate,
        }
    }

    fn matches(&self, source: &str, device: &str, point: &str) -> bool {
        matches(self.adapter.as_deref(), source)
            && matches(self.device.as_deref(), device)
            && matches(self.point.as_deref(), point)
    }

    fn transform(&self, r: &mut Reading) {
        if let Some(name) = &self.rename {
            r.point = name.clone();
        }
        if let Some((scale, offset)) = self.linear {
            let x = match r.value {
                // Precision loss above 2^53 is accepted: the result is a float anyway.
                #[allow(clippy::cast_precision_loss)]
                Value::I64(i) => Some(i as f64),
                Value::F64(f) => Some(f),
                Value::Bool(_) | Value::Text(_) | Value::Bytes(_) => None,
            };
            if let Some(x) = x {
                r.value = Value::F64(x * scale + offset);
            }
        }
        if let Some(unit) = &self.unit {
            r.unit = Some(unit.clone());
        }
    }
}

/// An `[[alerts]]` entry, ready to run.
#[derive(Debug)]
struct AlertRule {
    name: Name,
    adapter: Option<String>,
    device: Option<String>,
    point: Option<String>,
    high: Option<f64>,
    low: Option<f64>,
    hysteresis: f64,
    hold: Duration,
    severity: Severity,
}

impl AlertRule {
    fn new(c: &AlertConfig) -> AlertRule {
        AlertRule {
            name: Name::from(c.name.as_str()),
            adapter: c.adapter.clone(),
            device: c.device.clone(),
            point: c.point.clone(),
            high: c.high,
            low: c.low,
            hysteresis: c.hysteresis,
            hold: c.hold,
            severity: c.severity,
        }
    }

    fn matches(&self, source: &str, device: &str, point: &str) -> bool {
        matches(self.adapter.as_deref(), source)
            && matches(self.device.as_deref(), device)
            && matches(self.point.as_deref(), point)
    }

    /// The threshold of `level` (NaN if the alert has none, which cannot happen: a level
    /// only starts when its threshold is set).
    fn threshold(&self, level: AlertLevel) -> f64 {
        match level {
            AlertLevel::High => self.high,
            AlertLevel::Low => self.low,
        }
        .unwrap_or(f64::NAN)
    }

    /// The value is past the threshold of `level`.
    fn over(&self, level: AlertLevel, v: f64) -> bool {
        match level {
            AlertLevel::High => v > self.threshold(level),
            AlertLevel::Low => v < self.threshold(level),
        }
    }

    /// The value is back past the threshold of `level` by the hysteresis.
    fn back(&self, level: AlertLevel, v: f64) -> bool {
        match level {
            AlertLevel::High => v < self.threshold(level) - self.hysteresis,
            AlertLevel::Low => v > self.threshold(level) + self.hysteresis,
        }
    }

    /// The level a value in the normal state starts, if any.
    fn starts(&self, v: f64) -> Option<AlertLevel> {
        if self.over(AlertLevel::High, v) {
            Some(AlertLevel::High)
        } else if self.over(AlertLevel::Low, v) {
            Some(AlertLevel::Low)
        } else {
            None
        }
    }

    fn event(&self, state: AlertState, level: AlertLevel) -> Alert {
        Alert {
            rule: self.name.clone(),
            state,
            level,
            threshold: self.threshold(level),
            severity: self.severity,
        }
    }
}

/// Something [`Rules::tick`] must do at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// Close the open window of a series.
    Window(usize),
    /// Raise a pending alert: series, index in the series' alerts.
    Alert(usize, usize),
}

/// The mutable state: per series, the deadlines, the counters.
#[derive(Debug, Default)]
struct State {
    series: Vec<Series>,
    deadlines: BTreeSet<(SystemTime, Due)>,
    stats: RulesStats,
}

/// The state of one transformed series.
#[derive(Debug)]
struct Series {
    key: SeriesKey,
    /// The alerts watching it (index in `Rules::alerts`) and their state.
    alerts: Box<[(usize, Phase)]>,
    deadband: Option<Last>,
    agg: Option<AggState>,
}

/// The last reading a deadband let through.
#[derive(Debug)]
struct Last {
    value: Value,
    quality: Quality,
    at: SystemTime,
}

#[derive(Debug)]
enum Phase {
    Normal,
    Pending {
        level: AlertLevel,
        /// `since + for`; `None` if that overflows (never due).
        due: Option<SystemTime>,
        /// The last reading past the threshold, for an alert raised by `tick`.
        latest: Box<Reading>,
    },
    Raised(AlertLevel),
}

/// The aggregation of one series.
#[derive(Debug)]
struct AggState {
    window: Duration,
    nanos: i128,
    /// The functions and the names of their readings.
    outputs: Box<[(AggFn, Name)]>,
    open: Option<Window>,
    /// The end of the last window closed: readings before it are late.
    closed_until: Option<SystemTime>,
}

#[derive(Debug)]
struct Window {
    start: SystemTime,
    end: SystemTime,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    unit: Option<Name>,
}

impl Window {
    fn new(start: SystemTime, end: SystemTime) -> Window {
        Window {
            start,
            end,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: 0.0,
            unit: None,
        }
    }

    fn fold(&mut self, v: f64, r: &Reading) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
        self.unit.clone_from(&r.unit);
    }
}

/// A good-quality, finite numeric value.
fn good_number(r: &Reading) -> Option<f64> {
    if !matches!(r.quality, Quality::Good) {
        return None;
    }
    r.value.as_f64().filter(|v| v.is_finite())
}

/// The start of the `nanos`-long epoch-aligned window holding `ts`.
fn align(ts: SystemTime, nanos: i128) -> Option<SystemTime> {
    let n = match ts.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).ok()?,
        Err(e) => -i128::try_from(e.duration().as_nanos()).ok()?,
    };
    let start = n.checked_sub(n.checked_rem_euclid(nanos)?)?;
    let abs = start.unsigned_abs();
    let d = Duration::new(
        u64::try_from(abs / 1_000_000_000).ok()?,
        u32::try_from(abs % 1_000_000_000).ok()?,
    );
    if start >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// True if a deadband lets `new` through after `last`, on value alone.
fn moved(last: &Value, new: &Value, band: f64) -> bool {
    match (last, new) {
        (Value::I64(a), Value::I64(b)) => {
            // Exact in i128; the float conversion only loses precision far beyond any band.
            #[allow(clippy::cast_precision_loss)]
            let diff = (i128::from(*b) - i128::from(*a)).unsigned_abs() as f64;
            diff > band
        }
        (Value::F64(a), Value::F64(b)) => !a.is_finite() || !b.is_finite() || (b - a).abs() > band,
        (Value::Bool(a), Value::Bool(b)) => a != b,
        (Value::Text(a), Value::Text(b)) => a != b,
        (Value::Bytes(a), Value::Bytes(b)) => a != b,
        // The type changed.
        _ => true,
    }
}

impl State {
    /// Runs the alerts of series `s` on a transformed reading.
    fn alerts(
        &mut self,
        cfg: &[AlertRule],
        s: usize,
        r: &Reading,
        now: SystemTime,
        out: &mut Output,
    ) {
        let Some(v) = good_number(r) else {
            return;
        };
        let Some(series) = self.series.get_mut(s) else {
            return;
        };
        for (k, (a, phase)) in series.alerts.iter_mut().enumerate() {
            let Some(a) = cfg.get(*a) else {
                continue;
            };
            let key = Due::Alert(s, k);
            match phase {
                Phase::Normal => {}
                Phase::Raised(level) => {
                    let level = *level;
                    if !a.back(level, v) {
                        continue;
                    }
                    self.stats.alerts_cleared += 1;
                    out.alerts
                        .push((r.clone(), a.event(AlertState::Cleared, level)));
                    *phase = Phase::Normal;
                }
                Phase::Pending { level, due, latest } => {
                    let (level, due) = (*level, *due);
                    if a.over(level, v) {
                        match due {
                            Some(d) if now >= d => {
                                self.deadlines.remove(&(d, key));
                                self.stats.alerts_raised += 1;
                                out.alerts
                                    .push((r.clone(), a.event(AlertState::Raised, level)));
                                *phase = Phase::Raised(level);
                            }
                            _ => latest.as_mut().clone_from(r),
                        }
                        continue;
                    }
                    if let Some(d) = due {
                        self.deadlines.remove(&(d, key));
                    }
                    *phase = Phase::Normal;
                }
            }
            // Normal (perhaps just cleared or cancelled): does this value start a level?
            let Some(level) = a.starts(v) else {
                continue;
            };
            if a.hold.is_zero() {
                self.stats.alerts_raised += 1;
                out.alerts
                    .push((r.clone(), a.event(AlertState::Raised, level)));
                *phase = Phase::Raised(level);
            } else {
                let due = now.checked_add(a.hold);
                if let Some(d) = due {
                    self.deadlines.insert((d, key));
                }
                *phase = Phase::Pending {
                    level,
                    due,
                    latest: Box::new(r.clone()),
                };
            }
        }
    }

    /// True if the deadband of series `s` lets the reading through (and then remembers it).
    fn deadband(&mut self, db: &Deadband, s: usize, r: &Reading, now: SystemTime) -> bool {
        let Some(series) = self.series.get_mut(s) else {
            return true;
        };
        match &mut series.deadband {
            None => {
                series.deadband = Some(Last {
                    value: r.value.clone(),
                    quality: r.quality.clone(),
                    at: now,
                });
                true
            }
            Some(last) => {
                let pass = last.quality != r.quality
                    || moved(&last.value, &r.value, db.band)
                    // A clock stepped back counts as a heartbeat due.
                    || now
                        .duration_since(last.at)
                        .map_or(true, |d| d >= db.heartbeat);
                if pass {
                    last.value.clone_from(&r.value);
                    last.quality.clone_from(&r.quality);
                    last.at = now;
                }
                pass
            }
        }
    }

    /// Folds the reading into series `s`' window; false if it is not for aggregation and
    /// must pass through.
    fn aggregate(
        &mut self,
        agg: &Aggregate,
        s: usize,
        r: &Reading,
        now: SystemTime,
        out: &mut Output,
    ) -> bool {
        let Some(v) = good_number(r) else {
            return false;
        };
        let Some(series) = self.series.get_mut(s) else {
            return false;
        };
        let Series { key, agg: st, .. } = series;
        let st = st.get_or_insert_with(|| AggState {
            window: agg.window,
            nanos: agg.nanos,
            outputs: agg
                .functions
                .iter()
                .map(|&f| (f, Name::from(format!("{}_{}", key.point, f.as_str()))))
                .collect(),
            open: None,
            closed_until: None,
        });
        let Some(mut start) = align(r.ts, st.nanos) else {
            return false;
        };
        if st.open.as_ref().is_some_and(|w| now >= w.end) {
            close(s, key, st, &mut self.deadlines, &mut self.stats, out);
        }
        if let Some(c) = st.closed_until {
            // Late: its window is gone; the first one not closed takes it.
            start = start.max(c);
        }
        match &mut st.open {
            Some(w) if start <= w.start => {
                w.fold(v, r);
                return true;
            }
            Some(_) => close(s, key, st, &mut self.deadlines, &mut self.stats, out),
            None => {}
        }
        let Some(end) = start.checked_add(st.window) else {
            return false;
        };
        let mut w = Window::new(start, end);
        w.fold(v, r);
        st.open = Some(w);
        self.deadlines.insert((end, Due::Window(s)));
        true
    }

    /// Closes the open window of series `s`, if any.
    fn close_window(&mut self, s: usize, out: &mut Output) {
        if let Some(Series {
            key, agg: Some(st), ..
        }) = self.series.get_mut(s)
        {
            close(s, key, st, &mut self.deadlines, &mut self.stats, out);
        }
    }

    /// Raises the pending alert `k` of series `s` with its latest reading, stamped `now`.
    fn raise_due(
        &mut self,
        cfg: &[AlertRule],
        s: usize,
        k: usize,
        now: SystemTime,
        out: &mut Output,
    ) {
        let Some((a, phase)) = self.series.get_mut(s).and_then(|x| x.alerts.get_mut(k)) else {
            return;
        };
        let Some(a) = cfg.get(*a) else {
            return;
        };
        match mem::replace(phase, Phase::Normal) {
            Phase::Pending { level, latest, .. } => {
                let mut r = *latest;
                r.ts = now;
                self.stats.alerts_raised += 1;
                out.alerts.push((r, a.event(AlertState::Raised, level)));
                *phase = Phase::Raised(level);
            }
            other => *phase = other,
        }
    }

    fn tick(&mut self, cfg: &[AlertRule], now: SystemTime, out: &mut Output) {
        while self.deadlines.first().is_some_and(|&(t, _)| t <= now) {
            let Some((_, due)) = self.deadlines.pop_first() else {
                break;
            };
            match due {
                Due::Window(s) => self.close_window(s, out),
                Due::Alert(s, k) => self.raise_due(cfg, s, k, now, out),
            }
        }
    }
}

/// Closes the open window of `st` (series `s`, named `key`): one reading per function.
fn close(
    s: usize,
    key: &SeriesKey,
    st: &mut AggState,
    deadlines: &mut BTreeSet<(SystemTime, Due)>,
    stats: &mut RulesStats,
    out: &mut Output,
) {
    let Some(w) = st.open.take() else {
        return;
    };
    deadlines.remove(&(w.end, Due::Window(s)));
    st.closed_until = Some(w.end);
    for (f, name) in &st.outputs {
        #[allow(clippy::cast_precision_loss)]
        let count = w.count as f64;
        let value = match f {
            AggFn::Min => Value::F64(w.min),
            AggFn::Max => Value::F64(w.max),
            AggFn::Mean => Value::F64(w.sum / count),
            AggFn::Last => Value::F64(w.last),
            AggFn::Sum => Value::F64(w.sum),
            AggFn::Count => Value::I64(i64::try_from(w.count).unwrap_or(i64::MAX)),
        };
        let unit = match f {
            AggFn::Count => None,
            _ => w.unit.clone(),
        };
        out.readings.push(Reading {
            source: key.source.clone(),
            device: key.device.clone(),
            point: name.clone(),
            ts: w.start,
            value,
            unit,
            quality: Quality::Good,
        });
        stats.aggregates_emitted += 1;
    }
}

#[cfg(test)]
mod tests;
