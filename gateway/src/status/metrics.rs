//! A [`Snapshot`] in the Prometheus text exposition format (version 0.0.4), as `GET /metrics`
//! serves it. Every family has its `# HELP` and `# TYPE`; label values are escaped.

use std::fmt::Write as _;

use super::{AdapterState, Snapshot};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `s`.
pub fn render(s: &Snapshot) -> String {
    let mut m = Metrics::default();
    m.family(
        "fieldgate_build_info",
        "gauge",
        "The running fieldgate: always 1, with its version and gateway id.",
    );
    m.sample(
        "fieldgate_build_info",
        &[("version", &s.gateway.version), ("gateway", &s.gateway.id)],
        1.0,
    );
    m.single(
        "fieldgate_start_time_seconds",
        "gauge",
        "When the gateway started, Unix seconds.",
        s.gateway.started,
    );
    m.single(
        "fieldgate_alive",
        "gauge",
        "1 when the pipeline works (the queue writer beats and the queue answers).",
        f64::from(u8::from(s.alive)),
    );
    m.single(
        "fieldgate_ready",
        "gauge",
        "1 when alive, the queue readable and no uplink known to be down.",
        f64::from(u8::from(s.ready)),
    );

    let adapters: Vec<(&str, &super::AdapterStatus)> =
        s.adapters.iter().map(|a| (a.id.as_str(), a)).collect();
    let per_adapter = |m: &mut Metrics,
                       name: &str,
                       kind: &str,
                       help: &str,
                       f: &dyn Fn(&super::AdapterStatus) -> Option<f64>| {
        m.family(name, kind, help);
        for (id, a) in &adapters {
            if let Some(v) = f(a) {
                m.sample(name, &[("adapter", id)], v);
            }
        }
    };
    per_adapter(
        &mut m,
        "fieldgate_adapter_up",
        "gauge",
        "1 while the adapter runs, 0 while it restarts or is stopped.",
        &|a| Some(f64::from(u8::from(a.state == AdapterState::Running))),
    );
    per_adapter(
        &mut m,
        "fieldgate_adapter_readings_total",
        "counter",
        "Readings the adapter produced.",
        &|a| Some(a.readings as f64),
    );
    per_adapter(
        &mut m,
        "fieldgate_adapter_errors_total",
        "counter",
        "Bad or stale readings plus adapter failures.",
        &|a| Some(a.errors as f64),
    );
    per_adapter(
        &mut m,
        "fieldgate_adapter_restarts_total",
        "counter",
        "Times the adapter failed and was restarted.",
        &|a| Some(a.restarts as f64),
    );
    per_adapter(
        &mut m,
        "fieldgate_adapter_last_success_timestamp_seconds",
        "gauge",
        "When the adapter last produced a good reading, Unix seconds.",
        &|a| a.last_success,
    );
    m.single(
        "fieldgate_untracked_points_readings_total",
        "counter",
        "Readings of points beyond the ones the status page lists (10,000).",
        s.untracked_points as f64,
    );

    if let Some(q) = &s.queue {
        m.single(
            "fieldgate_queue_depth",
            "gauge",
            "Readings waiting for at least one uplink.",
            q.depth as f64,
        );
        m.single(
            "fieldgate_queue_oldest_age_seconds",
            "gauge",
            "Age of the oldest queued reading (0 when the queue is empty).",
            q.oldest_age_secs.unwrap_or(0.0),
        );
        m.single(
            "fieldgate_queue_used_bytes",
            "gauge",
            "Bytes of the queue's live pages (what [queue] max_bytes caps).",
            q.used_bytes as f64,
        );
        if let Some(max) = q.max_bytes {
            m.single(
                "fieldgate_queue_max_bytes",
                "gauge",
                "[queue] max_bytes.",
                max as f64,
            );
        }
        m.single(
            "fieldgate_queue_file_bytes",
            "gauge",
            "Bytes of the queue file and its WAL on disk.",
            q.file_bytes as f64,
        );
        m.single(
            "fieldgate_queue_appended_total",
            "counter",
            "Readings ever appended to the queue.",
            q.appended as f64,
        );
        m.single(
            "fieldgate_queue_delivered_total",
            "counter",
            "Readings removed because every uplink acknowledged them.",
            q.delivered as f64,
        );
        m.family(
            "fieldgate_queue_dropped_total",
            "counter",
            "Readings dropped, by reason: max_age, drop_oldest, drop_newest (when_full), rejected (dead letters).",
        );
        for (reason, n) in &q.dropped {
            m.sample(
                "fieldgate_queue_dropped_total",
                &[("reason", reason)],
                *n as f64,
            );
        }
    }
    m.single(
        "fieldgate_queue_readable",
        "gauge",
        "1 when the queue's stats could be read.",
        f64::from(u8::from(s.queue.is_some())),
    );

    let uplink = |m: &mut Metrics,
                  name: &str,
                  kind: &str,
                  help: &str,
                  f: &dyn Fn(&super::UplinkStatus) -> Option<f64>| {
        m.family(name, kind, help);
        for u in &s.uplinks {
            if let Some(v) = f(u) {
                m.sample(name, &[("uplink", &u.id)], v);
            }
        }
    };
    uplink(
        &mut m,
        "fieldgate_uplink_connected",
        "gauge",
        "1 when connected (MQTT) or the last send worked; absent before the first send.",
        &|u| u.connected.map(|c| f64::from(u8::from(c))),
    );
    uplink(
        &mut m,
        "fieldgate_uplink_delivered_total",
        "counter",
        "Readings delivered since the gateway started.",
        &|u| Some(u.delivered as f64),
    );
    uplink(
        &mut m,
        "fieldgate_uplink_retries_total",
        "counter",
        "Failed sends since the gateway started (each is retried).",
        &|u| Some(u.retries as f64),
    );
    uplink(
        &mut m,
        "fieldgate_uplink_rejected_total",
        "counter",
        "Readings the far side refused for good since the gateway started.",
        &|u| Some(u.rejected as f64),
    );
    uplink(
        &mut m,
        "fieldgate_uplink_pending",
        "gauge",
        "Queued readings the uplink has not acknowledged.",
        &|u| u.pending.map(|p| p as f64),
    );
    uplink(
        &mut m,
        "fieldgate_uplink_lag_seconds",
        "gauge",
        "Age of the oldest reading the uplink has not acknowledged (0 when none).",
        &|u| u.lag_secs,
    );
    uplink(
        &mut m,
        "fieldgate_uplink_last_delivery_timestamp_seconds",
        "gauge",
        "When a send last worked, Unix seconds.",
        &|u| u.last_delivery,
    );
    m.single(
        "fieldgate_queue_disk_full",
        "gauge",
        "1 while the queue's disk is full (its when_full policy applies).",
        f64::from(u8::from(s.disk_full_since.is_some())),
    );
    m.single(
        "fieldgate_queue_disk_refused_total",
        "counter",
        "Readings refused because the queue's disk was full (when_full = \"drop_newest\"), since the gateway started.",
        s.disk_refused as f64,
    );
    if let Some(r) = &s.reload {
        m.single(
            "fieldgate_last_reload_success",
            "gauge",
            "1 if the last reload applied the new config, 0 if it was refused.",
            f64::from(u8::from(r.ok)),
        );
        m.single(
            "fieldgate_last_reload_timestamp_seconds",
            "gauge",
            "When the config was last reloaded (or a reload refused), Unix seconds.",
            r.at,
        );
    }
    m.out
}

#[derive(Default)]
struct Metrics {
    out: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                for c in val.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        if v.is_finite() {
            let _ = writeln!(self.out, " {v}");
        } else {
            let _ = writeln!(self.out, " NaN");
        }
    }
}
