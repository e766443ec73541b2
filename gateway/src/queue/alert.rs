//! Alert events: what the rules stage raises and clears, and how the queue keeps them.
//!
//! An alert travels as a reading (the device, point, unit and value that triggered it, stamped
//! with the moment it was raised or cleared) plus an [`Alert`] describing the event. The queue
//! stores the reading in `readings` like any other and the event in `alerts`, keyed by the
//! same sequence id, so alerts share the readings' ids, caps and acknowledgements; forwarders
//! send them ahead of everything else.

use serde::{Deserialize, Serialize};

use fieldgate_adapter::Name;

/// Whether an alert was raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition started (and held for the rule's `for`).
    Raised,
    /// The value came back past the threshold by the hysteresis.
    Cleared,
}

/// Which threshold an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    /// The value rose above `high`.
    High,
    /// The value fell below `low`.
    Low,
}

/// How urgent an alert is, for the people and systems that receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs attention soon (the default).
    #[default]
    Warning,
    /// Needs attention now.
    Critical,
}

impl AlertState {
    /// The name used in payloads and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Raised => "raised",
            AlertState::Cleared => "cleared",
        }
    }
}

impl AlertLevel {
    /// The name used in payloads and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertLevel::High => "high",
            AlertLevel::Low => "low",
        }
    }
}

impl Severity {
    /// The name used in config, payloads and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One alert event. The reading it travels with carries the device, point, value and time.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The alert rule's `name` from the config.
    pub rule: Name,
    /// Raised or cleared.
    pub state: AlertState,
    /// The threshold crossed.
    pub level: AlertLevel,
    /// The threshold's value (in the reading's unit).
    pub threshold: f64,
    /// From the rule.
    pub severity: Severity,
}
