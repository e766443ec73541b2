//! From a batch of queued readings to MQTT messages.
//!
//! `batch` mode groups the readings by (adapter, device), in order, and cuts each group into
//! messages of at most `max_readings_per_message` readings and `max_message_bytes` bytes.
//! The fieldgate body (docs/payload.md) is:
//!
//! ```json
//! {"v":1,"gateway":"site-01","queue_id":"5b9e0d7c1a2f3e44","adapter":"plc","device":"pump-1","historical":false,
//!  "readings":[{"seq":41,"point":"pressure","ts":"...","type":"float","value":3.2,"unit":"bar","quality":"good"}],
//!  "first_seq":41,"last_seq":41,"count":1}
//! ```
//!
//! A reading that cannot fit in `max_packet_size` even alone is refused, never sent.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::ser::{SerializeMap, Serializer};

use super::config::{BodyFormat, MessageMode, MqttSettings, ValueFormat};
use crate::payload::{self, JsonValue, Origin};
use crate::queue::Queued;

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Body.
    pub payload: Vec<u8>,
    /// How many readings it carries.
    pub readings: usize,
}

/// Bytes an MQTT PUBLISH adds around topic and payload: fixed header (up to 5), topic length
/// (2), packet id (2).
const PUBLISH_OVERHEAD: usize = 9;
/// Room for `],"first_seq":N,"last_seq":N,"count":N}`.
const FOOTER_ROOM: usize = 80;

/// Fills a topic template for one reading. Names that would be MQTT wildcards are replaced.
pub fn topic_for(template: &str, q: &Queued) -> String {
    let clean = |s: &str| -> String {
        if s.is_empty() {
            "_".into()
        } else {
            s.replace(['+', '#'], "_")
        }
    };
    template
        .replace("{adapter}", &clean(&q.reading.source))
        .replace("{device}", &clean(&q.reading.device))
        .replace("{point}", &clean(&q.reading.point))
}

/// Builds the messages for `batch`; returns them and the readings refused (too large).
pub fn build(
    s: &MqttSettings,
    origin: Origin<'_>,
    batch: &[Queued],
    historical: bool,
) -> (Vec<Message>, Vec<(u64, String)>) {
    let mut messages = Vec::new();
    let mut rejected = Vec::new();
    if let Some(alert_topic) = &s.alert_topic {
        if batch.iter().any(|q| q.alert.is_some()) {
            // Alerts on their own topic, one self-contained message each; the rest as usual.
            for q in batch.iter().filter(|q| q.alert.is_some()) {
                let topic = topic_for(alert_topic, q);
                let mut payload = Vec::new();
                payload::write_json(&mut payload, origin, q);
                if payload.len() + topic.len() + PUBLISH_OVERHEAD > s.max_packet_size {
                    rejected.push((q.seq, too_big(payload.len(), s.max_packet_size)));
                    continue;
                }
                messages.push(Message {
                    topic,
                    payload,
                    readings: 1,
                });
            }
            let rest: Vec<Queued> = batch
                .iter()
                .filter(|q| q.alert.is_none())
                .cloned()
                .collect();
            let (more, refused) = build(s, origin, &rest, historical);
            messages.extend(more);
            rejected.extend(refused);
            return (messages, rejected);
        }
    }
    if s.mode == MessageMode::PerValue {
        for q in batch {
            let topic = topic_for(&s.topic, q);
            let payload = match s.value_format {
                // An alert needs its `alert` object: it goes as JSON whatever value_format says.
                ValueFormat::Plain if q.alert.is_none() => {
                    payload::plain_value(&q.reading.value).into_bytes()
                }
                ValueFormat::Plain | ValueFormat::Json => {
                    let mut out = Vec::new();
                    payload::write_batch_item(&mut out, q);
                    out
                }
            };
            if payload.len() + topic.len() + PUBLISH_OVERHEAD > s.max_packet_size {
                rejected.push((q.seq, too_big(payload.len(), s.max_packet_size)));
                continue;
            }
            messages.push(Message {
                topic,
                payload,
                readings: 1,
            });
        }
        return (messages, rejected);
    }

    // Group by (adapter, device), keeping first-appearance order.
    let mut order: Vec<Vec<&Queued>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for q in batch {
        let key = (q.reading.source.as_str(), q.reading.device.as_str());
        let i = *index.entry(key).or_insert_with(|| {
            order.push(Vec::new());
            order.len() - 1
        });
        order[i].push(q);
    }
    for group in order {
        let topic = topic_for(&s.topic, group[0]);
        let header = header(s.body, origin, group[0], historical);
        let hard_limit = s
            .max_packet_size
            .saturating_sub(topic.len() + PUBLISH_OVERHEAD);
        // Items are written straight into the message being built; only an item that turns
        // out not to fit is moved to the next message.
        let mut payload = header.clone();
        let mut seqs: Vec<u64> = Vec::new();
        for q in group {
            if seqs.len() >= s.max_readings_per_message {
                messages.push(finish(
                    s.body,
                    &topic,
                    std::mem::replace(&mut payload, header.clone()),
                    &seqs,
                ));
                seqs.clear();
            }
            let mark = payload.len();
            if !seqs.is_empty() {
                payload.push(b',');
            }
            let item_start = payload.len();
            write_item(s.body, &mut payload, q);
            let item_len = payload.len() - item_start;
            if header.len() + item_len + FOOTER_ROOM > hard_limit {
                payload.truncate(mark);
                rejected.push((
                    q.seq,
                    too_big(header.len() + item_len + FOOTER_ROOM, s.max_packet_size),
                ));
                continue;
            }
            if !seqs.is_empty() && payload.len() + FOOTER_ROOM > s.max_message_bytes {
                let item = payload[item_start..].to_vec();
                payload.truncate(mark);
                messages.push(finish(
                    s.body,
                    &topic,
                    std::mem::replace(&mut payload, header.clone()),
                    &seqs,
                ));
                seqs.clear();
                payload.extend_from_slice(&item);
            }
            seqs.push(q.seq);
        }
        if !seqs.is_empty() {
            messages.push(finish(s.body, &topic, payload, &seqs));
        }
    }
    (messages, rejected)
}

fn too_big(bytes: usize, max: usize) -> String {
    format!("reading needs a {bytes}-byte MQTT message, above max_packet_size ({max} bytes)")
}

fn header(body: BodyFormat, origin: Origin<'_>, first: &Queued, historical: bool) -> Vec<u8> {
    match body {
        BodyFormat::Fieldgate => {
            // {"v":1,"gateway":..,"adapter":..,"device":..,"historical":..,"readings":[
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::new(&mut out);
            let _ = (|| -> Result<(), serde_json::Error> {
                let mut m = ser.serialize_map(None)?;
                m.serialize_entry("v", &payload::VERSION)?;
                m.serialize_entry("gateway", origin.gateway)?;
                m.serialize_entry("queue_id", origin.queue_id)?;
                m.serialize_entry("adapter", first.reading.source.as_str())?;
                m.serialize_entry("device", first.reading.device.as_str())?;
                m.serialize_entry("historical", &historical)?;
                m.end()
            })();
            out.pop(); // the closing brace; readings follow
            out.extend_from_slice(b",\"readings\":[");
            out
        }
        BodyFormat::Thingsboard => {
            let mut out = b"{".to_vec();
            let _ = serde_json::to_writer(&mut out, first.reading.device.as_str());
            out.extend_from_slice(b":[");
            out
        }
    }
}

fn write_item(body: BodyFormat, out: &mut Vec<u8>, q: &Queued) {
    match body {
        BodyFormat::Fieldgate => payload::write_batch_item(out, q),
        BodyFormat::Thingsboard => {
            // {"ts":<ms>,"values":{"<point>":<value>}}
            let ms = q
                .reading
                .ts
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis();
            let mut ser = serde_json::Serializer::new(&mut *out);
            let _ = (|| -> Result<(), serde_json::Error> {
                let mut m = ser.serialize_map(None)?;
                m.serialize_entry("ts", &ms)?;
                let mut values = HashMap::with_capacity(1);
                values.insert(q.reading.point.as_str(), JsonValue(&q.reading.value));
                m.serialize_entry("values", &values)?;
                m.end()
            })();
        }
    }
}

fn finish(body: BodyFormat, topic: &str, mut payload: Vec<u8>, seqs: &[u64]) -> Message {
    match body {
        BodyFormat::Fieldgate => {
            let first = seqs.first().copied().unwrap_or(0);
            let last = seqs.last().copied().unwrap_or(0);
            payload.extend_from_slice(
                format!(
                    "],\"first_seq\":{first},\"last_seq\":{last},\"count\":{}}}",
                    seqs.len()
                )
                .as_bytes(),
            );
        }
        BodyFormat::Thingsboard => payload.extend_from_slice(b"]}"),
    }
    Message {
        topic: topic.to_string(),
        payload,
        readings: seqs.len(),
    }
}

/// Spaces publishes out to at most `rate` per second (token bucket with a burst of one
/// second's worth).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimiter {
    /// A limiter of `rate` publishes per second.
    pub fn new(rate: f64) -> Self {
        RateLimiter {
            rate,
            tokens: rate.max(1.0),
            last: tokio::time::Instant::now(),
        }
    }

    /// Waits until one more publish is allowed.
    pub async fn acquire(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + (now - self.last).as_secs_f64() * self.rate).min(self.rate.max(1.0));
        self.last = now;
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests;
