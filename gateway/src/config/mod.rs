//! Site configuration: one TOML file, overridable by `FIELDGATE_*` environment variables.
//!
//! [`Config::load`] reads the file with figment, applies the overrides, deserializes every
//! section with `deny_unknown_fields`, then validates ranges and references between
//! sections. It reports **every** problem at once as [`ConfigErrors`], one line each, naming
//! the file, the line when known, and the key path:
//!
//! ```text
//! site.toml:14: queue.flush_interval: must be greater than zero, like "200ms"
//! ```
//!
//! Overrides: `FIELDGATE_QUEUE__MAX_BYTES=2GB` sets `queue.max_bytes`; `__` separates keys,
//! and a number addresses an array entry (`FIELDGATE_UPLINKS__0__PATH=...`). Values are read
//! like TOML values (numbers, booleans, strings). Relative paths in the file are relative to
//! the file's directory.
//!
//! Sections map to runtime objects: [`QueueSection`] to [`crate::queue::QueueOptions`],
//! [`AdapterConfig`] to an adapter, [`UplinkConfig`] to an uplink. Adapter and uplink kinds
//! are closed enums selected by `type`; the dispatch on `type` is written out by hand (not
//! `#[serde(tag)]`) so that each entry's errors keep their exact key paths.

mod load;
mod perms;
mod units;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldgate_lorawan::LorawanConfig;
use fieldgate_modbus::ModbusConfig;
use fieldgate_serial::SerialConfig;
use fieldgate_simulator::SimulatorConfig;
use figment::value::Value;
use serde::Deserialize;

pub use load::{ConfigError, ConfigErrors, KeyPath, Seg, ENV_PREFIX};
pub use perms::exposed_secrets;
pub use units::{ByteSize, Secret, SecretSource};

use crate::queue::{Durability, QueueOptions, WhenFull};
use crate::rules::{AlertConfig, RuleConfig};
use crate::uplink::https::{HttpsSettings, HttpsUplinkConfig};
use crate::uplink::mqtt::{MqttSettings, MqttUplinkConfig};
use crate::uplink::{Drain, Filter};
use load::{Collector, Extract};

/// The commented template printed by `fieldgate config template`.
pub const TEMPLATE: &str = include_str!("template.toml");

/// A validated site configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// Relative paths are resolved against this directory (the file's).
    pub base_dir: PathBuf,
    /// `[gateway]`.
    pub gateway: GatewaySection,
    /// `[log]`.
    pub log: LogSection,
    /// `[queue]`.
    pub queue: QueueSection,
    /// `[[adapters]]`, in file order.
    pub adapters: Vec<AdapterSection>,
    /// `[[uplinks]]`, in file order.
    pub uplinks: Vec<UplinkSection>,
    /// `[[rules]]`, in file order (the first match applies).
    pub rules: Vec<RuleConfig>,
    /// `[[alerts]]`.
    pub alerts: Vec<AlertConfig>,
    /// `[commands]`.
    pub commands: CommandsSection,
    /// `[http]`: the local status endpoint, when configured.
    pub http: Option<HttpSection>,
}

/// `[http]`: the local status endpoint (status page, JSON status, Prometheus metrics, health
/// probes, reload). Absent: no endpoint.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address and port to listen on, like `"127.0.0.1:8686"`. Keep it on loopback unless
    /// the site LAN must see the page; then set `token` too.
    pub listen: std::net::SocketAddr,
    /// A bearer token every path but `/healthz` and `/readyz` requires (letters, digits and
    /// `-._~`, at least 16 of them). A value of the wrong type is refused without being shown.
    #[serde(default, deserialize_with = "Secret::deserialize_text")]
    pub token: Option<String>,
}

impl std::fmt::Debug for HttpSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSection")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `[commands]`: commands from the cloud (taken by uplinks with `command_topic` or
/// `commands_url`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsSection {
    /// How long a command that gives neither `deadline` nor `ttl` may wait to be executed.
    /// Default `"60s"`.
    #[serde(default = "default_command_ttl", with = "fieldgate_adapter::duration")]
    pub default_ttl: Duration,
}

const fn default_command_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Default for CommandsSection {
    fn default() -> Self {
        CommandsSection {
            default_ttl: default_command_ttl(),
        }
    }
}

/// `[gateway]`: who this gateway is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// This gateway's id, carried by every message it sends (letters, digits, `-`, `_`, `.`).
    #[serde(default = "default_gateway_id")]
    pub id: String,
    /// Directory for the queue database and other state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_gateway_id() -> String {
    "fieldgate".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/fieldgate")
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            id: default_gateway_id(),
            data_dir: default_data_dir(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Filter in `RUST_LOG` syntax, like `"info"` or `"info,fieldgate::queue=debug"`.
    /// `RUST_LOG` in the environment takes precedence.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `"text"` for people, `"json"` for log collectors. `--log-format` takes precedence.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// `[queue]`: the store-and-forward queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    /// Database file; default `<data_dir>/queue.db`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `"crash"` (survives kill -9) or `"power-loss"` (also survives a power cut; one fsync per
    /// batch).
    #[serde(default)]
    pub durability: Durability,
    /// Cap on the queue's size on disk, like `"512MB"`. Default 512MB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Option<ByteSize>,
    /// Readings queued longer than this are dropped, like `"30d"`. Default: no age limit.
    #[serde(default, with = "fieldgate_adapter::duration::option")]
    pub max_age: Option<Duration>,
    /// `"drop_oldest"`, `"drop_newest"` or `"block"` when `max_bytes` is reached.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Most readings committed in one transaction. Default 5000.
    #[serde(default = "default_commit_batch")]
    pub batch_size: usize,
    /// Longest a reading waits in memory before it is committed. Default `"200ms"`.
    #[serde(
        default = "default_flush_interval",
        with = "fieldgate_adapter::duration"
    )]
    pub flush_interval: Duration,
    /// Readings that may wait between adapters and the queue writer. Default 10000.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
}

#[allow(clippy::unnecessary_wraps)] // serde default for an Option field
const fn default_max_bytes() -> Option<ByteSize> {
    Some(ByteSize(512_000_000))
}

const fn default_commit_batch() -> usize {
    5000
}

const fn default_flush_interval() -> Duration {
    Duration::from_millis(200)
}

const fn default_channel_capacity() -> usize {
    10_000
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            path: None,
            durability: Durability::Crash,
            max_bytes: default_max_bytes(),
            max_age: None,
            when_full: WhenFull::DropOldest,
            batch_size: default_commit_batch(),
            flush_interval: default_flush_interval(),
            channel_capacity: default_channel_capacity(),
        }
    }
}

/// One `[[adapters]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSection {
    /// Unique id; readings carry it as their source.
    pub id: String,
    /// The adapter kind and its settings.
    pub kind: AdapterConfig,
}

/// The adapter kinds, selected by `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterConfig {
    /// `type = "simulator"`.
    Simulator(SimulatorConfig),
    /// `type = "modbus"`.
    Modbus(ModbusConfig),
    /// `type = "serial"` (boxed: its section is several times larger than the others).
    Serial(Box<SerialConfig>),
    /// `type = "lorawan"` (boxed, like serial).
    Lorawan(Box<LorawanConfig>),
}

impl AdapterConfig {
    /// Every value of `type`.
    pub const TYPES: &'static [&'static str] = &["simulator", "modbus", "serial", "lorawan"];

    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            AdapterConfig::Simulator(_) => "simulator",
            AdapterConfig::Modbus(_) => "modbus",
            AdapterConfig::Serial(_) => "serial",
            AdapterConfig::Lorawan(_) => "lorawan",
        }
    }
}

/// One `[[uplinks]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkSection {
    /// Unique id; the queue keeps one watermark per id.
    pub id: String,
    /// Which readings it carries (`adapters`, `devices`, `points`); default: all.
    pub filter: Filter,
    /// Most readings per delivery.
    pub batch_size: usize,
    /// First retry delay after a failure.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// The order a backlog is sent in.
    pub drain: Drain,
    /// The uplink kind and its settings.
    pub kind: UplinkConfig,
}

/// `drain = ...` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DrainMode {
    #[default]
    Fifo,
    LiveFirst,
}

/// Keys every `[[uplinks]]` entry takes besides its kind's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkCommon {
    #[serde(default)]
    adapters: Option<Vec<String>>,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    points: Option<Vec<String>>,
    #[serde(default = "default_uplink_batch")]
    batch_size: usize,
    #[serde(default = "default_retry_min", with = "fieldgate_adapter::duration")]
    retry_min: Duration,
    #[serde(default = "default_retry_max", with = "fieldgate_adapter::duration")]
    retry_max: Duration,
    #[serde(default)]
    drain: DrainMode,
    #[serde(default)]
    backlog_rate: Option<ByteSize>,
    #[serde(default)]
    carries: Carries,
}

/// `carries = ...`: what an uplink sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Carries {
    /// Readings and alerts (alerts first).
    #[default]
    All,
    /// Alert events only (an SMS gateway, a pager, a second link kept for emergencies).
    Alerts,
}

const UPLINK_COMMON_KEYS: &[&str] = &[
    "adapters",
    "devices",
    "points",
    "batch_size",
    "retry_min",
    "retry_max",
    "drain",
    "backlog_rate",
    "carries",
];
/// Every key an `[[uplinks]]` entry takes besides its kind's own.
const UPLINK_ENTRY_KEYS: &[&str] = &[
    "id",
    "type",
    "adapters",
    "devices",
    "points",
    "batch_size",
    "retry_min",
    "retry_max",
    "drain",
    "backlog_rate",
    "carries",
];
const LENIENT: Extract = Extract {
    lenient: true,
    also_expected: &[],
};
const ADAPTER_KEYS: Extract = Extract {
    lenient: false,
    also_expected: &["id", "type"],
};

const fn default_uplink_batch() -> usize {
    1000
}

const fn default_retry_min() -> Duration {
    Duration::from_secs(1)
}

const fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

/// The uplink kinds, selected by `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum UplinkConfig {
    /// `type = "file"`: JSON Lines on local disk.
    File(FileUplinkConfig),
    /// `type = "console"`: one line per reading on standard output.
    Console(ConsoleUplinkConfig),
    /// `type = "mqtt"`: any MQTT broker, validated and resolved.
    Mqtt(Box<MqttSettings>),
    /// `type = "https"`: JSON batches POSTed to an HTTPS endpoint, validated and resolved.
    Https(Box<HttpsSettings>),
}

impl UplinkConfig {
    /// Every value of `type`.
    pub const TYPES: &'static [&'static str] = &["mqtt", "https", "file", "console"];

    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            UplinkConfig::File(_) => "file",
            UplinkConfig::Console(_) => "console",
            UplinkConfig::Mqtt(_) => "mqtt",
            UplinkConfig::Https(_) => "https",
        }
    }
}

/// `type = "file"`: readings as JSON Lines, rotated by size, acknowledged after fsync.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUplinkConfig {
    /// The file to append to; rotated files get `.1`, `.2`, ... (relative to the config file).
    pub path: PathBuf,
    /// Rotate when the file reaches this size. Default `"64MB"`.
    #[serde(default = "default_file_size")]
    pub max_file_size: ByteSize,
    /// Rotated files to keep besides the current one. Default 5.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

const fn default_file_size() -> ByteSize {
    ByteSize(64_000_000)
}

const fn default_max_files() -> usize {
    5
}

/// `type = "console"`: prints each delivered reading; for trying things out. It acknowledges
/// as soon as the line is written, so it never holds the queue back.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUplinkConfig {
    /// `"text"` (default) or `"json"` (the same objects as the file uplink).
    #[serde(default)]
    pub format: LogFormat,
}

/// The raw top level, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: Option<Value>,
    #[serde(default)]
    log: Option<Value>,
    #[serde(default)]
    queue: Option<Value>,
    #[serde(default)]
    adapters: Vec<Value>,
    #[serde(default)]
    uplinks: Vec<Value>,
    #[serde(default)]
    rules: Vec<Value>,
    #[serde(default)]
    alerts: Vec<Value>,
    #[serde(default)]
    commands: Option<Value>,
    #[serde(default)]
    http: Option<Value>,
}

impl Config {
    /// Loads and validates `file`, with overrides from `env` (the process environment, passed
    /// in by `main`).
    pub fn load(file: &Path, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
        Self::build(file, None, env)
    }

    /// Only the `[http]` section of `file` (with `FIELDGATE_HTTP__*` overrides from `env`):
    /// what `fieldgate status` and `fieldgate reload` need to reach a running gateway,
    /// without resolving the secrets and files the rest of the config names (the gateway's
    /// environment and user may see what a shell does not).
    pub fn http_section(
        file: &Path,
        env: &[(String, String)],
    ) -> Result<Option<HttpSection>, ConfigErrors> {
        let loaded = load::load(file, None, env)?;
        let mut c = loaded.collector;
        let raw = loaded.value.as_dict().and_then(|d| d.get("http")).cloned();
        let http = raw.and_then(|v| c.extract::<HttpSection>(&v, &KeyPath::default().key("http")));
        if c.errors.is_empty() {
            Ok(http)
        } else {
            Err(ConfigErrors(c.errors))
        }
    }

    /// Loads and validates TOML `text` as if it were the contents of `file`.
    pub fn from_toml(
        file: &Path,
        text: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        Self::build(file, Some(text.to_string()), env)
    }

    fn build(
        file: &Path,
        text: Option<String>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        let loaded = load::load(file, text, env)?;
        let mut c = loaded.collector;
        let base_dir = loaded.base_dir;
        let root = KeyPath::default();
        // Leniently: a typo at the top level must not hide the sections that are fine.
        let raw: RawConfig = c
            .extract_with(&loaded.value, &root, LENIENT)
            .unwrap_or(RawConfig {
                gateway: None,
                log: None,
                queue: None,
                adapters: Vec::new(),
                uplinks: Vec::new(),
                rules: Vec::new(),
                alerts: Vec::new(),
                commands: None,
                http: None,
            });
        let gateway = section::<GatewaySection>(&mut c, raw.gateway.as_ref(), "gateway");
        let log = section::<LogSection>(&mut c, raw.log.as_ref(), "log");
        let queue = section::<QueueSection>(&mut c, raw.queue.as_ref(), "queue");
        let commands = section::<CommandsSection>(&mut c, raw.commands.as_ref(), "commands");
        if commands.as_ref().is_some_and(|s| s.default_ttl.is_zero()) {
            c.push(
                root.key("commands").key("default_ttl"),
                "must be greater than zero, like \"60s\"",
            );
        }
        let http = match &raw.http {
            None => Some(None),
            Some(v) => c.extract::<HttpSection>(v, &root.key("http")).map(Some),
        };
        if let Some(Some(HttpSection {
            token: Some(token), ..
        })) = &http
        {
            if token.len() < 16
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            {
                c.push(
                    root.key("http").key("token"),
                    "must be at least 16 characters of letters, digits and -._~ (try `openssl rand -hex 24`)",
                );
            }
        }
        let rules: Vec<RuleConfig> = entries(&mut c, &raw.rules, "rules");
        for (i, p) in crate::rules::validate_rules(&rules) {
            c.push(root.key("rules").index(i).join_str(&p.key), p.message);
        }
        let alerts: Vec<AlertConfig> = entries(&mut c, &raw.alerts, "alerts");
        for (i, p) in crate::rules::validate_alerts(&alerts) {
            c.push(root.key("alerts").index(i).join_str(&p.key), p.message);
        }

        let mut adapters = Vec::new();
        for (i, entry) in raw.adapters.iter().enumerate() {
            if let Some(a) = adapter(&mut c, entry, &root.key("adapters").index(i), &base_dir) {
                adapters.push(a);
            }
        }
        let mut uplinks = Vec::new();
        let gateway_id = gateway
            .as_ref()
            .map_or("fieldgate", |g| g.id.as_str())
            .to_string();
        let ctx = UplinkContext {
            gateway: &gateway_id,
            base: &base_dir,
            env,
        };
        let mut files: Vec<(PathBuf, KeyPath)> = Vec::new();
        for (i, entry) in raw.uplinks.iter().enumerate() {
            if let Some(u) = uplink(&mut c, entry, &root.key("uplinks").index(i), &ctx) {
                if let UplinkConfig::File(f) = &u.kind {
                    files.push((
                        base_dir.join(&f.path),
                        root.key("uplinks").index(i).key("path"),
                    ));
                }
                uplinks.push(u);
            }
        }

        if let Some(g) = &gateway {
            validate_id(&mut c, &root.key("gateway").key("id"), &g.id);
        }
        if let Some(l) = &log {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(&l.level) {
                c.push(
                    root.key("log").key("level"),
                    format!("not a valid log filter ({e}); try \"info\" or \"debug\""),
                );
            }
        }
        if let Some(q) = &queue {
            validate_queue(&mut c, q);
        }
        if raw.adapters.is_empty() {
            c.push(root.key("adapters"), "no adapters configured; add an [[adapters]] section (see `fieldgate config template`)");
        }
        if raw.uplinks.is_empty() {
            c.push(root.key("uplinks"), "no uplinks configured; add an [[uplinks]] section (see `fieldgate config template`)");
        }
        check_unique(&mut c, "adapters", raw.adapters.iter().map(entry_id));
        check_unique(&mut c, "uplinks", raw.uplinks.iter().map(entry_id));
        let adapter_ids: HashSet<&str> = raw.adapters.iter().filter_map(|v| entry_id(v)).collect();
        for (i, entry) in raw.uplinks.iter().enumerate() {
            let Some(Value::Array(_, wanted)) = entry.as_dict().and_then(|d| d.get("adapters"))
            else {
                continue;
            };
            for (j, w) in wanted.iter().enumerate() {
                if let Some(name) = w.as_str() {
                    if !adapter_ids.contains(name) {
                        c.push(
                            root.key("uplinks").index(i).key("adapters").index(j),
                            format!(
                                "no adapter has id `{name}`; known: {}",
                                join_sorted(&adapter_ids)
                            ),
                        );
                    }
                }
            }
        }

        if let (Some(g), Some(q)) = (&gateway, &queue) {
            // Two writers on one file would interleave JSON into each other, or into SQLite.
            let queue_file = match &q.path {
                Some(p) => base_dir.join(p),
                None => base_dir.join(&g.data_dir).join("queue.db"),
            };
            let mut taken: Vec<(PathBuf, KeyPath)> =
                vec![(queue_file, root.key("queue").key("path"))];
            for (path, key) in files {
                if let Some((_, first)) = taken.iter().find(|(p, _)| *p == path) {
                    c.push(
                        key.clone(),
                        format!("{} is already written by {first}", path.display()),
                    );
                } else {
                    taken.push((path, key));
                }
            }
        }

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        match (gateway, log, queue, commands, http) {
            (Some(gateway), Some(log), Some(queue), Some(commands), Some(http)) => Ok(Config {
                file: file.to_path_buf(),
                base_dir,
                gateway,
                log,
                queue,
                adapters,
                uplinks,
                rules,
                alerts,
                commands,
                http,
            }),
            // Unreachable in practice: a section that failed recorded an error above.
            _ => Err(ConfigErrors(c.errors)),
        }
    }

    /// `path` resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// The queue database file.
    pub fn queue_path(&self) -> PathBuf {
        match &self.queue.path {
            Some(p) => self.resolve(p),
            None => self.resolve(&self.gateway.data_dir).join("queue.db"),
        }
    }

    /// The queue's runtime options.
    pub fn queue_options(&self) -> QueueOptions {
        QueueOptions {
            durability: self.queue.durability,
            max_bytes: self.queue.max_bytes.map(|b| b.0),
            max_age: self.queue.max_age,
            when_full: self.queue.when_full,
        }
    }
}

fn join_sorted(ids: &HashSet<&str>) -> String {
    let mut v: Vec<_> = ids.iter().copied().collect();
    v.sort_unstable();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn section<T: serde::de::DeserializeOwned + Default>(
    c: &mut Collector,
    v: Option<&Value>,
    name: &str,
) -> Option<T> {
    match v {
        None => Some(T::default()),
        // Leniently, so that the keys that parsed are still range-checked.
        Some(v) => c.extract_with(v, &KeyPath::default().key(name), LENIENT),
    }
}

/// The entries of an array of tables (`[[rules]]`), each deserialized at its own key path;
/// the ones that fail are reported and left out.
fn entries<T: serde::de::DeserializeOwned>(c: &mut Collector, raw: &[Value], name: &str) -> Vec<T> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, v)| c.extract(v, &KeyPath::default().key(name).index(i)))
        .collect()
}

fn entry_id(v: &Value) -> Option<&str> {
    v.as_dict()
        .and_then(|d| d.get("id"))
        .and_then(Value::as_str)
}

fn check_unique<'a>(c: &mut Collector, list: &str, ids: impl Iterator<Item = Option<&'a str>>) {
    let mut seen = BTreeMap::new();
    for (i, id) in ids.enumerate() {
        let Some(id) = id else { continue };
        if let Some(first) = seen.insert(id, i) {
            c.push(
                KeyPath::default().key(list).index(i).key("id"),
                format!("id `{id}` is already used by {list}[{first}]"),
            );
            seen.insert(id, first);
        }
    }
}

fn validate_id(c: &mut Collector, at: &KeyPath, id: &str) {
    if id.is_empty() {
        c.push(at.clone(), "must not be empty");
    } else if !id
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        c.push(at.clone(), format!("`{id}` may only hold letters, digits, `-`, `_` and `.` (it ends up in topics and file names)"));
    }
}

fn validate_queue(c: &mut Collector, q: &QueueSection) {
    let at = KeyPath::default().key("queue");
    if let Some(max) = q.max_bytes {
        if max.0 < 1_000_000 {
            c.push(
                at.key("max_bytes"),
                format!("{max} is too small; the queue needs at least 1MB"),
            );
        }
    }
    if q.max_age.is_some_and(|d| d.is_zero()) {
        c.push(
            at.key("max_age"),
            "must be greater than zero (leave it out for no age limit)",
        );
    }
    if q.batch_size == 0 || q.batch_size > 100_000 {
        c.push(
            at.key("batch_size"),
            format!("must be between 1 and 100000, not {}", q.batch_size),
        );
    }
    if q.flush_interval.is_zero() || q.flush_interval > Duration::from_secs(60) {
        c.push(
            at.key("flush_interval"),
            "must be greater than zero and at most 60s, like \"200ms\"",
        );
    }
    if q.channel_capacity == 0 || q.channel_capacity > 10_000_000 {
        c.push(
            at.key("channel_capacity"),
            format!("must be between 1 and 10000000, not {}", q.channel_capacity),
        );
    }
}

/// Splits an entry into its `id`, its `type`, the given common keys and the rest.
fn split_entry(
    c: &mut Collector,
    entry: &Value,
    at: &KeyPath,
    what: &str,
    types: &[&str],
    common_keys: &[&str],
) -> Option<(String, String, Value, Value)> {
    let Some(dict) = entry.as_dict() else {
        c.push(
            at.clone(),
            format!("each [[{what}s]] entry must be a table"),
        );
        return None;
    };
    let id = match dict.get("id") {
        Some(v) => match v.as_str() {
            Some(s) => {
                validate_id(c, &at.key("id"), s);
                Some(s.to_string())
            }
            None => {
                c.push(at.key("id"), "expected a string");
                None
            }
        },
        None => {
            c.push(
                at.key("id"),
                format!("missing required key `id` (a unique name for this {what})"),
            );
            None
        }
    };
    let ty = match dict.get("type").map(Value::as_str) {
        Some(Some(t)) if types.contains(&t) => Some(t.to_string()),
        Some(Some(t)) => {
            c.push(
                at.key("type"),
                format!(
                    "unknown {what} type `{t}`; expected one of: {}",
                    types
                        .iter()
                        .map(|t| format!("\"{t}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            None
        }
        Some(None) => {
            c.push(at.key("type"), "expected a string");
            None
        }
        None => {
            c.push(
                at.key("type"),
                format!("missing required key `type` (one of: {})", types.join(", ")),
            );
            None
        }
    };
    let mut common = BTreeMap::new();
    let mut rest = BTreeMap::new();
    for (k, v) in dict {
        if k == "id" || k == "type" {
            continue;
        }
        if common_keys.contains(&k.as_str()) {
            common.insert(k.clone(), v.clone());
        } else {
            rest.insert(k.clone(), v.clone());
        }
    }
    Some((id?, ty?, Value::from(common), Value::from(rest)))
}

fn adapter(c: &mut Collector, entry: &Value, at: &KeyPath, base: &Path) -> Option<AdapterSection> {
    let (id, ty, _, rest) = split_entry(c, entry, at, "adapter", AdapterConfig::TYPES, &[])?;
    let kind = match ty.as_str() {
        "simulator" => {
            let cfg: SimulatorConfig = c.extract_with(&rest, at, ADAPTER_KEYS)?;
            if !c.push_all(at, cfg.validate(base)) {
                return None;
            }
            AdapterConfig::Simulator(cfg)
        }
        "modbus" => {
            let cfg: ModbusConfig = c.extract_with(&rest, at, ADAPTER_KEYS)?;
            if !c.push_all(at, cfg.validate()) {
                return None;
            }
            AdapterConfig::Modbus(cfg)
        }
        "serial" => {
            let cfg: SerialConfig = c.extract_with(&rest, at, ADAPTER_KEYS)?;
            if !c.push_all(at, cfg.validate()) {
                return None;
            }
            AdapterConfig::Serial(Box::new(cfg))
        }
        "lorawan" => {
            let cfg: LorawanConfig = c.extract_with(&rest, at, ADAPTER_KEYS)?;
            if !c.push_all(at, cfg.validate()) {
                return None;
            }
            AdapterConfig::Lorawan(Box::new(cfg))
        }
        _ => return None,
    };
    Some(AdapterSection { id, kind })
}

/// What uplink validation needs from the rest of the config.
struct UplinkContext<'a> {
    gateway: &'a str,
    base: &'a Path,
    env: &'a [(String, String)],
}

fn uplink(
    c: &mut Collector,
    entry: &Value,
    at: &KeyPath,
    ctx: &UplinkContext<'_>,
) -> Option<UplinkSection> {
    let (id, ty, common, rest) = split_entry(
        c,
        entry,
        at,
        "uplink",
        UplinkConfig::TYPES,
        UPLINK_COMMON_KEYS,
    )?;
    let common: Option<UplinkCommon> = c.extract(&common, at);
    let kind_keys = Extract {
        lenient: false,
        also_expected: UPLINK_ENTRY_KEYS,
    };
    let kind = match ty.as_str() {
        "file" => c
            .extract_with::<FileUplinkConfig>(&rest, at, kind_keys)
            .and_then(|f| {
                let mut ok = true;
                if f.max_file_size.0 < 4096 {
                    c.push(at.key("max_file_size"), "must be at least 4KiB");
                    ok = false;
                }
                if f.max_files > 1000 {
                    c.push(at.key("max_files"), "must be at most 1000");
                    ok = false;
                }
                ok.then_some(UplinkConfig::File(f))
            }),
        "console" => c
            .extract_with::<ConsoleUplinkConfig>(&rest, at, kind_keys)
            .map(UplinkConfig::Console),
        "mqtt" => c
            .extract_with::<MqttUplinkConfig>(&rest, at, kind_keys)
            .and_then(|m| c.relay(at, m.settings(ctx.gateway, ctx.base, ctx.env)))
            .map(|s| UplinkConfig::Mqtt(Box::new(s))),
        "https" => c
            .extract_with::<HttpsUplinkConfig>(&rest, at, kind_keys)
            .and_then(|h| c.relay(at, h.settings(ctx.base, ctx.env)))
            .map(|s| UplinkConfig::Https(Box::new(s))),
        _ => None,
    };
    let common = common?;
    let mut ok = true;
    let drain = match (common.drain, common.backlog_rate) {
        (DrainMode::Fifo, None) => Drain::Fifo,
        (DrainMode::Fifo, Some(_)) => {
            c.push(
                at.key("backlog_rate"),
                "needs drain = \"live_first\" (in fifo order there is no separate backlog)",
            );
            ok = false;
            Drain::Fifo
        }
        (DrainMode::LiveFirst, rate) => {
            if rate.is_some_and(|r| r.0 == 0) {
                c.push(
                    at.key("backlog_rate"),
                    "must be more than 0 bytes per second (leave it out for no cap)",
                );
                ok = false;
            }
            Drain::LiveFirst {
                backlog_rate: rate.map(|r| r.0),
            }
        }
    };
    for (key, list) in [
        ("adapters", &common.adapters),
        ("devices", &common.devices),
        ("points", &common.points),
    ] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            c.push(
                at.key(key),
                format!(
                    "an empty list would carry nothing; leave `{key}` out to carry every reading"
                ),
            );
            ok = false;
        }
    }
    if common.batch_size == 0 || common.batch_size > 100_000 {
        c.push(
            at.key("batch_size"),
            format!("must be between 1 and 100000, not {}", common.batch_size),
        );
        ok = false;
    }
    if common.retry_min.is_zero() {
        c.push(
            at.key("retry_min"),
            "must be greater than zero, like \"1s\"",
        );
        ok = false;
    }
    if common.retry_max < common.retry_min {
        c.push(at.key("retry_max"), "must not be shorter than retry_min");
        ok = false;
    }
    let kind = kind?;
    ok.then_some(UplinkSection {
        id,
        filter: Filter {
            adapters: common.adapters.unwrap_or_default(),
            devices: common.devices.unwrap_or_default(),
            points: common.points.unwrap_or_default(),
            alerts_only: common.carries == Carries::Alerts,
        },
        batch_size: common.batch_size,
        retry_min: common.retry_min,
        retry_max: common.retry_max,
        drain,
        kind,
    })
}

#[cfg(test)]
mod tests;
