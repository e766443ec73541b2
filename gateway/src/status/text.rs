//! A [`Snapshot`] as plain text for a terminal: what `fieldgate status` prints, the same
//! parts as the status page (the throughput chart becomes the last minutes' rates).

use std::fmt::Write as _;

use super::Snapshot;

/// Renders `s`.
pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let now = s.gateway.now;
    let health = match (s.alive, s.ready) {
        (true, true) => "ok",
        (true, false) => "degraded",
        (false, _) => "STALLED",
    };
    let _ = writeln!(
        o,
        "fieldgate {} — gateway {} — {health}, up {}",
        s.gateway.version,
        s.gateway.id,
        span(now - s.gateway.started)
    );
    for p in &s.problems {
        let _ = writeln!(o, "  ! {p}");
    }
    if let Some(r) = &s.reload {
        let _ = writeln!(
            o,
            "  last reload {} ago: {}{}",
            span(now - r.at),
            if r.ok { "applied" } else { "REFUSED" },
            if r.message.is_empty() {
                String::new()
            } else {
                format!(" — {}", r.message)
            }
        );
    }

    let _ = writeln!(o, "\nAdapters");
    for a in &s.adapters {
        let _ = writeln!(
            o,
            "  {:<20} {:<10} readings {:>9}  errors {:>6}  restarts {:>3}  last good {}",
            a.id,
            a.state.as_str(),
            a.readings,
            a.errors,
            a.restarts,
            a.last_success
                .map_or("never".to_string(), |t| format!("{} ago", span(now - t)))
        );
        if let Some(e) = &a.last_error {
            let _ = writeln!(o, "  {:<20} last error: {e}", "");
        }
        for d in &a.devices {
            let _ = writeln!(o, "    {}", d.id);
            for p in &d.points {
                let value = match &p.value {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                let _ = writeln!(
                    o,
                    "      {:<24} {:>14} {:<6} {:<5} {} ago{}",
                    p.point,
                    value,
                    p.unit.as_deref().unwrap_or(""),
                    p.quality,
                    span(now - p.ts),
                    p.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
            }
        }
    }
    if s.untracked_points > 0 {
        let _ = writeln!(
            o,
            "  ({} readings of points beyond the {} listed)",
            s.untracked_points,
            super::MAX_POINTS
        );
    }

    let _ = writeln!(o, "\nQueue");
    match (&s.queue, &s.queue_error) {
        (Some(q), _) => {
            let _ = writeln!(
                o,
                "  depth {}  oldest {}  used {}{}  file {}",
                q.depth,
                q.oldest_age_secs.map_or("-".to_string(), span),
                bytes(q.used_bytes),
                q.max_bytes
                    .map(|m| format!(" of {}", bytes(m)))
                    .unwrap_or_default(),
                bytes(q.file_bytes)
            );
            let dropped: Vec<String> = q
                .dropped
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = writeln!(
                o,
                "  appended {}  delivered {}  dropped {}",
                q.appended,
                q.delivered,
                if dropped.is_empty() {
                    "none".to_string()
                } else {
                    dropped.join(", ")
                }
            );
        }
        (None, e) => {
            let _ = writeln!(o, "  unreadable: {}", e.as_deref().unwrap_or("unknown"));
        }
    }

    let _ = writeln!(o, "\nUplinks");
    for u in &s.uplinks {
        let _ = writeln!(
            o,
            "  {:<20} {:<12} delivered {:>9}  pending {:>8}  lag {:>6}  retries {:>5}  last sent {}",
            u.id,
            match u.connected {
                Some(true) => "connected",
                Some(false) => "DOWN",
                None => "not yet used",
            },
            u.delivered,
            u.pending.map_or("-".to_string(), |p| p.to_string()),
            u.lag_secs.map_or("-".to_string(), span),
            u.retries,
            u.last_delivery
                .map_or("never".to_string(), |t| format!("{} ago", span(now - t)))
        );
        if let (Some(false), Some(e)) = (u.connected, &u.last_error) {
            let _ = writeln!(o, "  {:<20} last error: {e}", "");
        }
    }

    let _ = writeln!(
        o,
        "\nThroughput (readings/s in → deliveries/s, all uplinks together)"
    );
    let h = &s.history;
    if h.len() < 2 {
        let _ = writeln!(o, "  (not enough samples yet; one every 5 s)");
    } else {
        for (label, back) in [("last 30 s", 30.0), ("last 5 min", 300.0)] {
            let last = &h[h.len() - 1];
            let first = h
                .iter()
                .find(|x| last.t - x.t <= back + 1.0)
                .unwrap_or(&h[0]);
            let dt = (last.t - first.t).max(1e-9);
            let _ = writeln!(
                o,
                "  {label:<11} {:>9.1} → {:.1}",
                last.readings.saturating_sub(first.readings) as f64 / dt,
                last.delivered.saturating_sub(first.delivered) as f64 / dt
            );
        }
    }
    // Text values, reasons and errors come from devices and far sides: no control characters
    // reach the terminal.
    o.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// `secs` as a short span: `42s`, `3m12s`, `5h03m`, `2d04h`.
pub fn span(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
