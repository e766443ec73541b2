//! `[[rules]]` and `[[alerts]]`: the entries as written, and their validation.
//!
//! [`RuleConfig`] picks readings by adapter, device and point globs and says what happens to
//! them (drop, rename, scale, unit, deadband, aggregate); [`AlertConfig`] watches readings
//! against thresholds. [`validate_rules`] and [`validate_alerts`] return every mistake with the
//! entry's index and a key path relative to the entry, for `fieldgate check`.

use std::collections::HashMap;
use std::time::Duration;

use fieldgate_adapter::ConfigProblem;
use serde::Deserialize;

use crate::queue::Severity;

/// One `[[rules]]` entry: which readings it applies to and what it does with them.
///
/// Rules are tried in order; the first whose `adapter`, `device` and `point` globs all match a
/// reading applies to it, and the others are not consulted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Adapter id glob (`*` any run of characters, `?` one character). Default: any adapter.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Device id glob. Default: any device.
    #[serde(default)]
    pub device: Option<String>,
    /// Point name glob, matched against the point's name as the adapter reports it (before
    /// `rename`). Default: any point.
    #[serde(default)]
    pub point: Option<String>,
    /// Discard matching readings (alerts still see them). Cannot be combined with another
    /// action. Default false.
    #[serde(default)]
    pub drop: bool,
    /// A new name for the point. Deadband, aggregates and alerts use the new name.
    #[serde(default)]
    pub rename: Option<String>,
    /// Multiply numeric values (integers and floats; the result is a float):
    /// `value * scale + offset`. Booleans, text and bytes are left alone. Default 1.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Add to numeric values after `scale`. Default 0.
    #[serde(default)]
    pub offset: Option<f64>,
    /// Set (or replace) the unit, like `"°C"` or `"m3/h"`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Report a numeric value only when it moved by more than this much (absolute, in the
    /// units after `scale`/`offset`) since the last value reported. Text, bytes and booleans
    /// are reported when they change. A change of quality is always reported.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// With `deadband`: report at least this often even when the value does not move.
    /// Default `"15m"` when `deadband` is set.
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub heartbeat: Option<Duration>,
    /// Replace the readings by statistics over fixed time windows.
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
}

/// `aggregate = { window = "1m", functions = ["mean", "max"] }` in a `[[rules]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The window length, like `"1m"` or `"1h"`. Windows are aligned to the Unix epoch (a
    /// `"1h"` window starts on the hour, UTC) and a reading belongs to the window of its
    /// timestamp. At most `"24h"`.
    #[serde(with = "fieldgate_adapter::duration")]
    pub window: Duration,
    /// What to report per window, each as a reading named `<point>_<function>`: `min`, `max`,
    /// `mean`, `last`, `count`, `sum`. Default `["min", "max", "mean", "last", "count"]`.
    #[serde(default = "default_functions")]
    pub functions: Vec<AggFn>,
}

/// A statistic reported per aggregation window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggFn {
    /// The smallest value.
    Min,
    /// The largest value.
    Max,
    /// The arithmetic mean.
    Mean,
    /// The value of the last reading folded in (in arrival order).
    Last,
    /// How many readings were folded in (an integer, without unit).
    Count,
    /// The sum of the values.
    Sum,
}

impl AggFn {
    /// The name used in config and as the suffix of the reported point.
    pub fn as_str(self) -> &'static str {
        match self {
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Mean => "mean",
            AggFn::Last => "last",
            AggFn::Count => "count",
            AggFn::Sum => "sum",
        }
    }
}

fn default_functions() -> Vec<AggFn> {
    vec![
        AggFn::Min,
        AggFn::Max,
        AggFn::Mean,
        AggFn::Last,
        AggFn::Count,
    ]
}

/// One `[[alerts]]` entry: a threshold watched on matching readings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// The alert's name, carried by every event it raises (letters, digits, `-`, `_`, `.`;
    /// unique among the alerts).
    pub name: String,
    /// Adapter id glob. Default: any adapter.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Device id glob. Default: any device.
    #[serde(default)]
    pub device: Option<String>,
    /// Point name glob, matched against the point's name after any `[[rules]]` `rename`.
    /// Default: any point.
    #[serde(default)]
    pub point: Option<String>,
    /// Raise when the value goes above this (in the units after any rule's scale/offset).
    #[serde(default)]
    pub high: Option<f64>,
    /// Raise when the value goes below this.
    #[serde(default)]
    pub low: Option<f64>,
    /// How far back past the threshold the value must come to clear a raised alert (below
    /// `high - hysteresis`, above `low + hysteresis`). Default 0.
    #[serde(default)]
    pub hysteresis: f64,
    /// How long the value must stay past the threshold before the alert is raised, like
    /// `"30s"`; a value back within the threshold meanwhile cancels it. Default `"0s"`
    /// (raise at once).
    #[serde(rename = "for", default, with = "fieldgate_adapter::duration")]
    pub hold: Duration,
    /// `info`, `warning` or `critical`. Default `warning`.
    #[serde(default)]
    pub severity: Severity,
}

/// The longest aggregation window.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Every mistake in `rules`, as (index of the entry, problem with a key relative to it).
pub fn validate_rules(rules: &[RuleConfig]) -> Vec<(usize, ConfigProblem)> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut p = |key: &str, message: String| out.push((i, ConfigProblem::new(key, message)));
        let actions: Vec<&str> = [
            ("rename", rule.rename.is_some()),
            ("scale", rule.scale.is_some()),
            ("offset", rule.offset.is_some()),
            ("unit", rule.unit.is_some()),
            ("deadband", rule.deadband.is_some()),
            ("heartbeat", rule.heartbeat.is_some()),
            ("aggregate", rule.aggregate.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if rule.drop && !actions.is_empty() {
            p(
                "drop",
                format!(
                    "drop = true discards the readings, so {} would have no effect; remove {} or drop",
                    actions.join(", "),
                    if actions.len() == 1 { "it" } else { "them" }
                ),
            );
        }
        if !rule.drop && actions.is_empty() {
            p(
                "",
                "this rule does nothing; add drop, rename, scale, offset, unit, deadband or \
                 aggregate, or remove the rule"
                    .into(),
            );
        }
        if rule.rename.as_deref() == Some("") {
            p(
                "rename",
                "must not be empty; give the point's new name".into(),
            );
        }
        if let Some(scale) = rule.scale {
            if !scale.is_finite() {
                p(
                    "scale",
                    format!("{scale} is not a finite number; write a factor like 0.1"),
                );
            } else if scale == 0.0 {
                p(
                    "scale",
                    "must not be 0 (every value would become the offset); write a factor like 0.1"
                        .into(),
                );
            }
        }
        if let Some(offset) = rule.offset.filter(|o| !o.is_finite()) {
            p(
                "offset",
                format!("{offset} is not a finite number; write an amount like -273.15"),
            );
        }
        if let Some(deadband) = rule.deadband {
            if !deadband.is_finite() || deadband < 0.0 {
                p(
                    "deadband",
                    format!(
                        "{deadband} is not a valid deadband; write a finite amount ≥ 0 in the \
                         point's units, like 0.5"
                    ),
                );
            }
            if rule.aggregate.is_some() {
                p(
                    "deadband",
                    "cannot be combined with aggregate (which already reports once per window); \
                     remove one of them"
                        .into(),
                );
            }
        }
        if let Some(heartbeat) = rule.heartbeat {
            if rule.deadband.is_none() {
                p(
                    "heartbeat",
                    "only applies with deadband; add a deadband or remove heartbeat".into(),
                );
            } else if heartbeat.is_zero() {
                p(
                    "heartbeat",
                    "must be greater than zero, like \"15m\"".into(),
                );
            }
        }
        if let Some(agg) = &rule.aggregate {
            if agg.window.is_zero() {
                p(
                    "aggregate.window",
                    "must be greater than zero, like \"1m\" or \"1h\"".into(),
                );
            } else if agg.window > MAX_WINDOW {
                p(
                    "aggregate.window",
                    "must be at most 24h; use a shorter window".into(),
                );
            }
            if agg.functions.is_empty() {
                p(
                    "aggregate.functions",
                    "is empty; list at least one of min, max, mean, last, count, sum (or leave \
                     it out for min, max, mean, last, count)"
                        .into(),
                );
            }
            for (j, f) in agg.functions.iter().enumerate() {
                if agg.functions[..j].contains(f) {
                    p(
                        &format!("aggregate.functions[{j}]"),
                        format!("`{}` is listed twice; remove the duplicate", f.as_str()),
                    );
                }
            }
        }
    }
    out
}

/// Every mistake in `alerts`, as (index of the entry, problem with a key relative to it).
pub fn validate_alerts(alerts: &[AlertConfig]) -> Vec<(usize, ConfigProblem)> {
    let mut out = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, alert) in alerts.iter().enumerate() {
        let mut p = |key: &str, message: String| out.push((i, ConfigProblem::new(key, message)));
        let name = alert.name.as_str();
        if name.is_empty() {
            p(
                "name",
                "must not be empty; name the alert, like \"tank-high\"".into(),
            );
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            p(
                "name",
                format!("`{name}` may hold only letters, digits, `-`, `_` and `.`; rename it"),
            );
        }
        if let Some(&first) = names.get(name) {
            p(
                "name",
                format!(
                    "`{name}` is already the name of alerts[{first}]; alert names must be unique"
                ),
            );
        } else {
            names.insert(name, i);
        }
        for (key, value) in [("high", alert.high), ("low", alert.low)] {
            if let Some(v) = value.filter(|v| !v.is_finite()) {
                p(
                    key,
                    format!("{v} is not a finite number; write a threshold like 80"),
                );
            }
        }
        match (alert.high, alert.low) {
            (None, None) => p(
                "",
                "has neither high nor low; give at least one threshold, like high = 80".into(),
            ),
            (Some(high), Some(low)) if high <= low => p(
                "high",
                format!("{high} must be greater than low ({low}); swap them or fix one"),
            ),
            _ => {}
        }
        let h = alert.hysteresis;
        if !h.is_finite() || h < 0.0 {
            p(
                "hysteresis",
                format!("{h} is not valid; write a finite amount ≥ 0, like 2"),
            );
        } else if let (Some(high), Some(low)) = (alert.high, alert.low) {
            if high > low && h >= high - low {
                p(
                    "hysteresis",
                    format!(
                        "{h} must be smaller than high - low ({}), or clearing one threshold \
                         would cross the other; make it smaller",
                        high - low
                    ),
                );
            }
        }
    }
    out
}
