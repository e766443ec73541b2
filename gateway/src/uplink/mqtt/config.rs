//! `[[uplinks]] type = "mqtt"`: the section, its cloud presets, and its validation into
//! concrete [`MqttSettings`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldgate_adapter::ConfigProblem;
use serde::Deserialize;

use crate::config::{ByteSize, Secret, SecretSource};
use crate::uplink::tls::TlsFiles;

/// The `type = "mqtt"` section as written. Its `Debug` hides the secrets: `password` and
/// `sas_key` are [`SecretSource`]s, and `username` is redacted with the ThingsBoard preset
/// (where it is the access token).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUplinkConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: String,
    /// `"generic"` (default), `"aws_iot"`, `"azure_iot_hub"` or `"thingsboard"`.
    #[serde(default)]
    pub preset: Preset,
    /// MQTT client id; default `fieldgate-<gateway id>` (the device id for Azure).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username, if the broker wants one (the access token for ThingsBoard, so it is
    /// handled like a secret: never shown by `Debug` with that preset, nor echoed in errors).
    #[serde(default, deserialize_with = "Secret::deserialize_text")]
    pub username: Option<String>,
    /// Password: inline, `{ file = "..." }` or `{ env = "VAR" }`.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// PEM file with the CA certificates to trust; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. Dangerous: logs a warning at every connect.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// MQTT keep-alive. Default `"30s"`.
    #[serde(default = "default_keep_alive", with = "fieldgate_adapter::duration")]
    pub keep_alive: Duration,
    /// Start a clean session at every connect (default true). fieldgate resends from its own
    /// queue after every reconnect either way.
    #[serde(default = "yes")]
    pub clean_session: bool,
    /// 1 (default): a reading is acknowledged only after the broker's PUBACK. 0: acknowledged
    /// once written to the socket — lossy, readings in flight when the link drops are lost.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Topic template with `{gateway}`, `{adapter}`, `{device}` and, with
    /// `mode = "per_value"`, `{point}`.
    #[serde(default)]
    pub topic: Option<String>,
    /// `"batch"` (default): one JSON message per device batch. `"per_value"`: one message per
    /// reading on its own topic, for dashboards (Home Assistant, Node-RED).
    #[serde(default)]
    pub mode: MessageMode,
    /// With `mode = "per_value"`: `"plain"` (default, just the value) or `"json"`.
    #[serde(default)]
    pub value_format: ValueFormat,
    /// Most readings in one message. Default 500.
    #[serde(default = "default_max_readings")]
    pub max_readings_per_message: usize,
    /// Messages are kept under this size. Default `"120KB"` (AWS IoT Core allows 128 KB).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: ByteSize,
    /// The broker's packet limit: a reading that cannot fit is refused (dead-lettered), never
    /// sent. Default `"256KiB"`.
    #[serde(default = "default_max_packet")]
    pub max_packet_size: ByteSize,
    /// Most PUBLISH packets per second (AWS IoT Core: 100 per connection). Default: no limit.
    #[serde(default)]
    pub max_publish_rate: Option<f64>,
    /// Most unacknowledged QoS 1 messages at once. Default 100.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Retained `online` at connect and last-will `offline` here; `""` disables. Default
    /// `"fieldgate/{gateway}/status"`.
    #[serde(default)]
    pub status_topic: Option<String>,
    /// Alert events are published here, one JSON message each, instead of inside the
    /// device's batch; `{gateway}`, `{adapter}` and `{device}` allowed. Default: in the batch.
    #[serde(default)]
    pub alert_topic: Option<String>,
    /// Subscribe here for commands from the cloud (see docs/commands.md); `{gateway}` allowed.
    /// Default: no commands.
    #[serde(default)]
    pub command_topic: Option<String>,
    /// Where command responses are published. Default: `command_topic` + `/response`.
    #[serde(default)]
    pub response_topic: Option<String>,
    /// How long a connection attempt may take. Default `"10s"`.
    #[serde(
        default = "default_connect_timeout",
        with = "fieldgate_adapter::duration"
    )]
    pub connect_timeout: Duration,
    /// How long to wait for PUBACKs before the batch is sent again. Default `"30s"`.
    #[serde(default = "default_ack_timeout", with = "fieldgate_adapter::duration")]
    pub ack_timeout: Duration,
    /// Azure IoT Hub: the device id in the hub (default: `client_id`).
    #[serde(default)]
    pub device_id: Option<String>,
    /// Azure IoT Hub: the device's symmetric key (base64), from which fieldgate makes a fresh
    /// SAS token at every connect. Alternatively give a ready token as `password`.
    #[serde(default)]
    pub sas_key: Option<SecretSource>,
    /// Azure IoT Hub: lifetime of each SAS token. Default `"1h"`.
    #[serde(default = "default_sas_ttl", with = "fieldgate_adapter::duration")]
    pub sas_ttl: Duration,
}

impl fmt::Debug for MqttUplinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let username = shown_username(self.username.as_deref(), self.preset == Preset::Thingsboard);
        f.debug_struct("MqttUplinkConfig")
            .field("url", &self.url)
            .field("preset", &self.preset)
            .field("client_id", &self.client_id)
            .field("username", &username)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("qos", &self.qos)
            .field("topic", &self.topic)
            .field("mode", &self.mode)
            .field("value_format", &self.value_format)
            .field("max_readings_per_message", &self.max_readings_per_message)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_packet_size", &self.max_packet_size)
            .field("max_publish_rate", &self.max_publish_rate)
            .field("inflight", &self.inflight)
            .field("status_topic", &self.status_topic)
            .field("alert_topic", &self.alert_topic)
            .field("command_topic", &self.command_topic)
            .field("response_topic", &self.response_topic)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("device_id", &self.device_id)
            .field("sas_key", &self.sas_key)
            .field("sas_ttl", &self.sas_ttl)
            .finish()
    }
}

/// The username as `Debug` shows it: `<redacted>` when it is an access token.
fn shown_username(username: Option<&str>, is_token: bool) -> Option<ShownUsername<'_>> {
    username.map(|u| {
        if is_token {
            ShownUsername::Token
        } else {
            ShownUsername::Name(u)
        }
    })
}

enum ShownUsername<'a> {
    Name(&'a str),
    Token,
}

impl fmt::Debug for ShownUsername<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShownUsername::Name(u) => fmt::Debug::fmt(u, f),
            ShownUsername::Token => f.write_str("<redacted>"),
        }
    }
}

/// Cloud presets: defaults and checks for a known broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Any MQTT broker.
    #[default]
    Generic,
    /// AWS IoT Core: mutual TLS on port 8883, 128 KB messages, 100 publishes/s.
    AwsIot,
    /// Azure IoT Hub: SAS-token auth, the device-to-cloud topic, 256 KB messages.
    AzureIotHub,
    /// ThingsBoard gateway API: `v1/gateway/telemetry` with ThingsBoard's payload.
    Thingsboard,
}

/// How readings become messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageMode {
    /// One JSON envelope per device batch.
    #[default]
    Batch,
    /// One message per reading, on a topic with `{point}`.
    PerValue,
}

/// The payload of a `per_value` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// The bare value: `21.5`.
    #[default]
    Plain,
    /// `{"seq":..,"point":..,"ts":..,"type":..,"value":..,"unit":..,"quality":..}`.
    Json,
}

/// The body format of `batch` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// fieldgate's versioned envelope (docs/payload.md).
    Fieldgate,
    /// ThingsBoard's gateway telemetry format.
    Thingsboard,
}

const fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
const fn yes() -> bool {
    true
}
const fn default_qos() -> u8 {
    1
}
const fn default_max_readings() -> usize {
    500
}
const fn default_max_message() -> ByteSize {
    ByteSize(120_000)
}
const fn default_max_packet() -> ByteSize {
    ByteSize(256 * 1024)
}
const fn default_inflight() -> u16 {
    100
}
const fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_sas_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// Azure IoT Hub SAS token material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSas {
    /// `{hub}.azure-devices.net/devices/{device_id}`.
    pub resource_uri: String,
    /// The device key, base64 as the portal shows it.
    pub key: Secret,
    /// Token lifetime.
    pub ttl: Duration,
}

/// Everything the MQTT uplink needs, validated and resolved. Its `Debug` hides the secrets
/// (`password`, the Azure key, and `username` when it is a ThingsBoard access token).
#[derive(Clone, PartialEq)]
pub struct MqttSettings {
    /// The url as configured, for messages.
    pub url: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// MQTT client id.
    pub client_id: String,
    /// Username.
    pub username: Option<String>,
    /// Password (resolved).
    pub password: Option<Secret>,
    /// CA file (resolved against the config directory).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (resolved).
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// Skip server certificate verification.
    pub insecure_skip_verify: bool,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Clean session.
    pub clean_session: bool,
    /// 0 or 1.
    pub qos: u8,
    /// Topic template (with `{gateway}` already filled in).
    pub topic: String,
    /// Batch or per value.
    pub mode: MessageMode,
    /// Per-value payload.
    pub value_format: ValueFormat,
    /// Batch body format.
    pub body: BodyFormat,
    /// Most readings per message.
    pub max_readings_per_message: usize,
    /// Soft message size limit.
    pub max_message_bytes: usize,
    /// Hard packet size limit.
    pub max_packet_size: usize,
    /// Publishes per second.
    pub max_publish_rate: Option<f64>,
    /// In-flight window.
    pub inflight: u16,
    /// Status topic (filled in), if any.
    pub status_topic: Option<String>,
    /// Topic template of alert events published on their own (`{gateway}` filled in).
    pub alert_topic: Option<String>,
    /// `(command topic, response topic)` when the uplink takes commands.
    pub commands: Option<(String, String)>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// PUBACK timeout.
    pub ack_timeout: Duration,
    /// Azure SAS material.
    pub azure: Option<AzureSas>,
}

impl fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let username = shown_username(
            self.username.as_deref(),
            self.body == BodyFormat::Thingsboard,
        );
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("client_id", &self.client_id)
            .field("username", &username)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .field("client_auth", &self.client_auth)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("qos", &self.qos)
            .field("topic", &self.topic)
            .field("mode", &self.mode)
            .field("value_format", &self.value_format)
            .field("body", &self.body)
            .field("max_readings_per_message", &self.max_readings_per_message)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_packet_size", &self.max_packet_size)
            .field("max_publish_rate", &self.max_publish_rate)
            .field("inflight", &self.inflight)
            .field("status_topic", &self.status_topic)
            .field("alert_topic", &self.alert_topic)
            .field("commands", &self.commands)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("azure", &self.azure)
            .finish()
    }
}

const PLACEHOLDERS: &[&str] = &["{gateway}", "{adapter}", "{device}", "{point}"];

/// Checks a topic template: known placeholders only, no wildcards, and `{point}` only in
/// per-value mode.
fn check_topic(t: &str, mode: MessageMode) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t.contains('+') || t.contains('#') {
        return Err(format!(
            "`{t}` holds a wildcard (+ or #); topics to publish to cannot"
        ));
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or_else(|| format!("`{t}` has an unclosed `{{`"))?;
        let ph = &rest[open..=close];
        if !PLACEHOLDERS.contains(&ph) {
            return Err(format!(
                "unknown placeholder `{ph}`; use {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &rest[close + 1..];
    }
    match (mode, t.contains("{point}")) {
        (MessageMode::Batch, true) => {
            Err("`{point}` needs mode = \"per_value\" (a batch holds many points)".into())
        }
        (MessageMode::PerValue, false) => {
            Err("mode = \"per_value\" needs `{point}` in the topic".into())
        }
        _ => Ok(()),
    }
}

/// A topic that is not a template (status, commands, responses): `{gateway}` filled in, no
/// other placeholder, no wildcards.
fn fixed_topic(t: &str, gateway: &str) -> Result<String, String> {
    let t = t.replace("{gateway}", gateway);
    if t.is_empty() || t.contains('{') || t.contains('+') || t.contains('#') {
        return Err(format!("`{t}` may only use {{gateway}} and no wildcards"));
    }
    Ok(t)
}

/// Parses `mqtt://host:port` / `mqtts://host:port`.
///
/// A url with a user name or password in it (`mqtt://user:pass@host`) is refused, and that
/// error does not quote it: the other errors quote the url, and a connected uplink logs it.
pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    if crate::uplink::has_userinfo(url) {
        return Err(
            "must not hold a user name or password (`user:password@`); use the username and password keys"
                .into(),
        );
    }
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if url.starts_with("ws://") || url.starts_with("wss://") {
        return Err(format!(
            "`{url}`: MQTT over WebSockets is not supported; use mqtt:// or mqtts://"
        ));
    } else {
        return Err(format!("`{url}` must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("`{url}`: `{p}` is not a port number"))?;
            (h.to_string(), port)
        }
        _ => (rest.to_string(), if tls { 8883 } else { 1883 }),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() || host.contains('/') {
        return Err(format!("`{url}` has no valid host"));
    }
    Ok((tls, host, port))
}

impl MqttUplinkConfig {
    /// Parses the keys of a `type = "mqtt"` section (without `id` and `type`) from TOML text,
    /// for tools and tests that build an uplink without a site config.
    pub fn from_toml(text: &str) -> Result<MqttUplinkConfig, String> {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| e.to_string())
    }

    /// Validates the section and resolves it. `gateway` is the gateway id, `base` the config
    /// directory, `env` the process environment (for secrets).
    pub fn settings(
        &self,
        gateway: &str,
        base: &Path,
        env: &[(String, String)],
    ) -> Result<MqttSettings, Vec<ConfigProblem>> {
        let mut p = Vec::new();
        let mut bad = |key: &str, msg: String| p.push(ConfigProblem::new(key, msg));

        let (tls, host, port) = match parse_url(&self.url) {
            Ok(u) => u,
            Err(e) => {
                bad("url", e);
                (false, String::new(), 0)
            }
        };
        let mut secret = |key: &str, s: &Option<SecretSource>| -> Option<Secret> {
            s.as_ref().and_then(|s| match s.resolve(base, env) {
                Ok(v) => Some(v),
                Err(e) => {
                    p.push(ConfigProblem::new(key, e));
                    None
                }
            })
        };
        let password = secret("password", &self.password);
        let sas_key = secret("sas_key", &self.sas_key);
        let files = TlsFiles::resolve(
            base,
            self.ca_file.as_deref(),
            self.client_cert.as_deref(),
            self.client_key.as_deref(),
            &mut p,
        );
        let mut bad = |key: &str, msg: String| p.push(ConfigProblem::new(key, msg));
        if !tls && (files.any() || self.insecure_skip_verify) {
            bad(
                "url",
                "TLS settings (ca_file, client_cert, insecure_skip_verify) need an mqtts:// url"
                    .into(),
            );
        }
        if self.qos > 1 {
            bad(
                "qos",
                format!("must be 0 or 1, not {} (QoS 2 is not supported)", self.qos),
            );
        }
        if self.keep_alive < Duration::from_secs(1) {
            bad("keep_alive", "must be at least 1s".into());
        }
        if self.max_readings_per_message == 0 {
            bad("max_readings_per_message", "must be at least 1".into());
        }
        if self.max_message_bytes.0 < 1024 {
            bad("max_message_bytes", "must be at least 1KiB".into());
        }
        if self.max_packet_size < self.max_message_bytes {
            bad(
                "max_packet_size",
                format!(
                    "{} is below max_message_bytes ({})",
                    self.max_packet_size, self.max_message_bytes
                ),
            );
        }
        if self.max_packet_size.0 > 256 * 1024 * 1024 {
            bad(
                "max_packet_size",
                "MQTT packets cannot exceed 256MiB".into(),
            );
        }
        if let Some(rate) = self.max_publish_rate {
            if !(rate > 0.0 && rate.is_finite()) {
                bad(
                    "max_publish_rate",
                    "must be a positive number of publishes per second".into(),
                );
            }
        }
        if self.inflight == 0 {
            bad("inflight", "must be at least 1".into());
        }
        for (k, d) in [
            ("connect_timeout", self.connect_timeout),
            ("ack_timeout", self.ack_timeout),
            ("sas_ttl", self.sas_ttl),
        ] {
            if d.is_zero() {
                bad(k, "must be greater than zero".into());
            }
        }

        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("fieldgate-{gateway}"));
        let mut topic = self.topic.clone();
        let mut status_topic = self
            .status_topic
            .clone()
            .or_else(|| Some("fieldgate/{gateway}/status".into()));
        let mut body = BodyFormat::Fieldgate;
        let mut username = self.username.clone();
        let mut max_publish_rate = self.max_publish_rate;
        let mut azure = None;
        let mut mode = self.mode;
        match self.preset {
            Preset::Generic => {}
            Preset::AwsIot => {
                if !tls {
                    bad(
                        "url",
                        "AWS IoT Core needs mqtts:// (port 8883) and mutual TLS".into(),
                    );
                }
                if files.client_auth.is_none() {
                    bad("client_cert", "AWS IoT Core authenticates devices by certificate: set client_cert and client_key".into());
                }
                if self.max_message_bytes.0 > 128 * 1024 {
                    bad(
                        "max_message_bytes",
                        "AWS IoT Core refuses messages above 128 KB".into(),
                    );
                }
                max_publish_rate = max_publish_rate.or(Some(100.0));
            }
            Preset::AzureIotHub => {
                let device = self.device_id.clone().unwrap_or_else(|| client_id.clone());
                if !tls || !host.ends_with(".azure-devices.net") {
                    bad(
                        "url",
                        "Azure IoT Hub is mqtts://<hub>.azure-devices.net:8883".into(),
                    );
                }
                if self.topic.is_some() {
                    bad("topic", "Azure IoT Hub takes device-to-cloud messages on devices/<device_id>/messages/events/ only; leave topic out".into());
                }
                if self.status_topic.as_deref().is_some_and(|s| !s.is_empty()) {
                    bad(
                        "status_topic",
                        "Azure IoT Hub allows no custom topics; leave status_topic out".into(),
                    );
                }
                if mode == MessageMode::PerValue {
                    bad("mode", "Azure IoT Hub takes batch mode only".into());
                }
                if self.max_message_bytes.0 > 256 * 1024 {
                    bad(
                        "max_message_bytes",
                        "Azure IoT Hub refuses messages above 256 KB".into(),
                    );
                }
                match (&sas_key, &password, &self.sas_key, &self.password) {
                    (Some(k), _, _, _) => match super::azure::decode_base64(k.expose()) {
                        Some(_) => {
                            azure = Some(AzureSas {
                                resource_uri: format!("{host}/devices/{device}"),
                                key: k.clone(),
                                ttl: self.sas_ttl,
                            });
                        }
                        None => bad(
                            "sas_key",
                            "is not valid base64 (copy the device's primary key from the portal)"
                                .into(),
                        ),
                    },
                    (None, Some(_), _, _) => {} // a ready-made SAS token
                    (None, None, None, None) => bad(
                        "sas_key",
                        "Azure IoT Hub needs sas_key (the device key) or a SAS token as password"
                            .into(),
                    ),
                    _ => {} // the secret failed to resolve; already reported
                }
                username = Some(format!("{host}/{device}/?api-version=2021-04-12"));
                topic = Some(format!("devices/{device}/messages/events/"));
                status_topic = Some(String::new());
                mode = MessageMode::Batch;
            }
            Preset::Thingsboard => {
                if self.topic.is_some() {
                    bad("topic", "the ThingsBoard gateway API publishes to v1/gateway/telemetry; leave topic out".into());
                }
                if mode == MessageMode::PerValue {
                    bad(
                        "mode",
                        "the ThingsBoard gateway API takes batch mode only".into(),
                    );
                }
                if username.is_none() {
                    bad(
                        "username",
                        "ThingsBoard authenticates a gateway by its access token: set username"
                            .into(),
                    );
                }
                topic = Some("v1/gateway/telemetry".into());
                status_topic = Some(String::new());
                body = BodyFormat::Thingsboard;
            }
        }
        let topic = topic.unwrap_or_else(|| match mode {
            MessageMode::Batch => "fieldgate/{gateway}/{adapter}/{device}".into(),
            MessageMode::PerValue => "fieldgate/{gateway}/{adapter}/{device}/{point}".into(),
        });
        if let Err(e) = check_topic(&topic, mode) {
            bad("topic", e);
        }
        let alert_topic = self.alert_topic.as_ref().map(|t| {
            if let Err(e) = check_topic(t, MessageMode::Batch) {
                bad("alert_topic", e);
            }
            t.replace("{gateway}", gateway)
        });
        let mut fixed = |key: &str, t: &str| {
            fixed_topic(t, gateway).unwrap_or_else(|e| {
                bad(key, e);
                String::new()
            })
        };
        let status_topic = status_topic
            .filter(|s| !s.is_empty())
            .map(|s| fixed("status_topic", &s));
        let commands = match (&self.command_topic, &self.response_topic) {
            (Some(c), r) => {
                let c = fixed("command_topic", c);
                let r = match r {
                    Some(r) => fixed("response_topic", r),
                    None => format!("{c}/response"),
                };
                Some((c, r))
            }
            (None, Some(_)) => {
                bad(
                    "response_topic",
                    "needs command_topic (the topic commands arrive on)".into(),
                );
                None
            }
            (None, None) => None,
        };
        if commands.is_some() && matches!(self.preset, Preset::AzureIotHub | Preset::Thingsboard) {
            bad(
                "command_topic",
                "takes the generic fieldgate command format; this preset's cloud sends its own (not supported yet)".into(),
            );
        }
        if tls && p.is_empty() {
            files.check(self.insecure_skip_verify, &mut p);
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(MqttSettings {
            url: self.url.clone(),
            host,
            port,
            tls,
            client_id,
            username,
            password,
            ca_file: files.ca_file,
            client_auth: files.client_auth,
            insecure_skip_verify: self.insecure_skip_verify,
            keep_alive: self.keep_alive,
            clean_session: self.clean_session,
            qos: self.qos,
            topic: topic.replace("{gateway}", gateway),
            mode,
            value_format: self.value_format,
            body,
            max_readings_per_message: self.max_readings_per_message,
            max_message_bytes: usize::try_from(self.max_message_bytes.0).unwrap_or(usize::MAX),
            max_packet_size: usize::try_from(self.max_packet_size.0).unwrap_or(usize::MAX),
            max_publish_rate,
            inflight: self.inflight,
            status_topic,
            alert_topic,
            commands,
            connect_timeout: self.connect_timeout,
            ack_timeout: self.ack_timeout,
            azure,
        })
    }
}

#[cfg(test)]
mod tests;
