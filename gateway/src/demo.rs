//! `fieldgate demo`: the whole pipeline on built-in simulated devices, with zero setup.
//!
//! Runs `config/demo.toml` (compiled in) with its state in a temporary directory: a simulated
//! pump station → queue → the MQTT uplink → an embedded MQTT broker (or the one given with
//! `--broker`) → a subscriber that prints every reading it receives; plus a JSON Lines
//! archive. Queue stats are printed every few seconds.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fieldgate_adapter::Shutdown;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::broker::{Broker, BrokerOptions};
use crate::config::{Config, ConfigErrors};
use crate::pipeline::{self, AbortOnDrop, PipelineError};
use crate::uplink::mqtt::parse_url;
use fieldgate_lorawan::sim::run_smart_poles;
use fieldgate_modbus::sim::{water_tank, PtyBus, SimServer};
use fieldgate_serial::sim::{spawn_weather_station, VirtualPort};

/// The demo site, as shipped in `config/demo.toml`.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
/// The water-tank example, as shipped in `config/water-tank.toml`.
pub const WATER_TANK_CONFIG: &str = include_str!("../../config/water-tank.toml");
/// The weather-station example, as shipped in `config/weather-station.toml`.
pub const WEATHER_STATION_CONFIG: &str = include_str!("../../config/weather-station.toml");
/// The smart-pole example, as shipped in `config/smart-pole.toml`.
pub const SMART_POLE_CONFIG: &str = include_str!("../../config/smart-pole.toml");

/// Which site the demo runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Site {
    /// `config/demo.toml`: a simulated pump station (the simulator adapter), to MQTT and a
    /// JSON Lines archive.
    #[default]
    PumpStation,
    /// `config/water-tank.toml` unchanged but for its serial port and broker: three simulated
    /// Modbus RTU tanks on a pseudo-terminal.
    WaterTank,
    /// `config/weather-station.toml` unchanged but for its serial port and broker: a
    /// simulated NMEA weather station on a pseudo-terminal.
    WeatherStation,
    /// `config/smart-pole.toml` unchanged but for its UDP port and broker: a simulated
    /// packet forwarder with three smart poles sending Cayenne LPP uplinks.
    SmartPole,
}

impl Site {
    fn text(self) -> (&'static str, &'static str) {
        match self {
            Site::PumpStation => ("demo.toml", DEMO_CONFIG),
            Site::WaterTank => ("water-tank.toml", WATER_TANK_CONFIG),
            Site::WeatherStation => ("weather-station.toml", WEATHER_STATION_CONFIG),
            Site::SmartPole => ("smart-pole.toml", SMART_POLE_CONFIG),
        }
    }

    /// The topic filter that catches the site's messages.
    fn filter(self, gateway: &str) -> String {
        match self {
            Site::PumpStation => format!("fieldgate/{gateway}/#"),
            Site::WaterTank => format!("water/{gateway}/#"),
            Site::WeatherStation => format!("weather/{gateway}/#"),
            Site::SmartPole => format!("poles/{gateway}/#"),
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The built-in config is broken (a bug), or `--broker` is not a valid url.
    #[error("demo config: {0}")]
    Config(#[from] ConfigErrors),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// No temporary directory, or the embedded broker could not listen.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// `--broker` is not a broker url.
    #[error("--broker: {0}")]
    Broker(String),
}

/// The demo config with its state under `dir`, publishing to `broker_url`.
pub fn config(dir: &Path, broker_url: &str) -> Result<Config, ConfigErrors> {
    site_config(Site::PumpStation, dir, broker_url, None)
}

/// The config of `site` with its state under `dir`, publishing to `broker_url`; `serial` is
/// the port of the site's simulated serial devices (for the smart-pole site, the UDP address
/// its LoRaWAN adapter listens on).
pub fn site_config(
    site: Site,
    dir: &Path,
    broker_url: &str,
    serial: Option<&str>,
) -> Result<Config, ConfigErrors> {
    let mut env = vec![
        (
            "FIELDGATE_GATEWAY__DATA_DIR".to_string(),
            dir.display().to_string(),
        ),
        (
            "FIELDGATE_UPLINKS__0__URL".to_string(),
            format!("\"{broker_url}\""),
        ),
    ];
    match site {
        Site::PumpStation => env.push((
            "FIELDGATE_UPLINKS__1__PATH".to_string(),
            dir.join("readings.jsonl").display().to_string(),
        )),
        Site::WaterTank | Site::WeatherStation => {
            env.push((
                "FIELDGATE_ADAPTERS__0__PORT".to_string(),
                serial.unwrap_or("/dev/null").to_string(),
            ));
            // The embedded broker takes any password; the example reads it from here.
            env.push(("MQTT_PASSWORD".to_string(), "demo".to_string()));
        }
        Site::SmartPole => {
            env.push((
                "FIELDGATE_ADAPTERS__0__BIND".to_string(),
                format!("\"{}\"", serial.unwrap_or("127.0.0.1:1700")),
            ));
            env.push(("MQTT_PASSWORD".to_string(), "demo".to_string()));
        }
    }
    let (name, text) = site.text();
    Config::from_toml(&dir.join(name), text, &env)
}

/// The simulated devices a site's demo runs; held until the pipeline stopped, they stop
/// when dropped.
#[derive(Default)]
struct SimDevices {
    _tanks: Option<TankBus>,
    _station: Option<AbortOnDrop<()>>,
    _stop: Option<fieldgate_adapter::ShutdownTrigger>,
}

/// A loopback UDP address that was free a moment ago, for the demo's LoRaWAN adapter (the
/// config names its address; the simulated forwarder needs to know it up front).
fn free_udp_port() -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.local_addr()
}

/// Three simulated tanks (units 1-3) on a pseudo-terminal; stops when dropped.
struct TankBus {
    bus: PtyBus,
    animations: Vec<tokio::task::JoinHandle<()>>,
}

impl TankBus {
    fn start() -> std::io::Result<TankBus> {
        let server = SimServer::new(&[1, 2, 3]);
        let animations = (1..=3).map(|u| water_tank(&server, u)).collect();
        Ok(TankBus {
            bus: server.serve_pty()?,
            animations,
        })
    }
}

impl Drop for TankBus {
    fn drop(&mut self) {
        for t in &self.animations {
            t.abort();
        }
    }
}

/// Runs the demo until `duration` passes or `shutdown` fires. `broker` is a broker url to use
/// instead of the embedded one.
pub async fn run(
    site: Site,
    duration: Option<Duration>,
    broker: Option<String>,
    status_port: u16,
    mut shutdown: Shutdown,
) -> Result<(), DemoError> {
    let dir = tempfile::Builder::new()
        .prefix("fieldgate-demo-")
        .tempdir()?;
    let (embedded, url) = match broker {
        Some(url) => (None, url),
        None => {
            let b = Broker::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                BrokerOptions::default(),
            )
            .await?;
            let url = b.url();
            (Some(b), url)
        }
    };
    let (devices, serial) = match site {
        Site::WaterTank => {
            let tanks = TankBus::start()?;
            let path = tanks.bus.path().to_string();
            let devices = SimDevices {
                _tanks: Some(tanks),
                ..SimDevices::default()
            };
            (devices, Some(path))
        }
        Site::WeatherStation => {
            let port = VirtualPort::new(dir.path().join("ttyWX"))?;
            let path = port.path().display().to_string();
            let station = spawn_weather_station(port, Duration::from_secs(2));
            let devices = SimDevices {
                _station: Some(AbortOnDrop(station)),
                ..SimDevices::default()
            };
            (devices, Some(path))
        }
        Site::SmartPole => {
            let addr = free_udp_port()?;
            let (stop, poles_shutdown) = fieldgate_adapter::ShutdownTrigger::new();
            let poles = tokio::spawn(run_smart_poles(
                addr,
                3,
                Duration::from_secs(2),
                poles_shutdown,
            ));
            let devices = SimDevices {
                _station: Some(AbortOnDrop(poles)),
                _stop: Some(stop),
                ..SimDevices::default()
            };
            (devices, Some(addr.to_string()))
        }
        Site::PumpStation => (SimDevices::default(), None),
    };
    let config = site_config(site, dir.path(), &url, serial.as_deref())?;
    let what = match (site, &serial) {
        (Site::WaterTank, Some(path)) => {
            format!("three Modbus RTU tanks on {path} (config/water-tank.toml)")
        }
        (Site::WeatherStation, Some(path)) => {
            format!("an NMEA weather station on {path} (config/weather-station.toml)")
        }
        (Site::SmartPole, Some(addr)) => format!(
            "a LoRa packet forwarder with three smart poles sending to UDP {addr} (config/smart-pole.toml)"
        ),
        _ => "simulated pump station (config/demo.toml)".to_string(),
    };
    println!(
        "fieldgate demo: {what} -> queue -> MQTT {} ({}) -> subscriber below",
        url,
        if embedded.is_some() {
            "embedded broker"
        } else {
            "your broker"
        }
    );
    if site == Site::PumpStation {
        println!("archive: {}", dir.path().join("readings.jsonl").display());
    }
    println!("(Ctrl-C to stop)\n");
    let subscriber = match parse_url(&url) {
        Ok((false, host, port)) => Some(tokio::spawn(subscribe(
            host,
            port,
            site.filter(&config.gateway.id),
        ))),
        Ok((true, _, _)) => {
            println!(
                "(the demo subscriber speaks plain MQTT only; watch {url} with your own client)"
            );
            None
        }
        Err(e) => return Err(DemoError::Broker(e)),
    };
    let running = pipeline::start(&config).await?;
    // The status page, on the asked port if it is free.
    let mut page = None;
    for port in [status_port, 0] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if let Ok((addr, task)) = running.serve_status(&config, addr, None, None).await {
            println!("status page: http://{addr}/  (metrics: http://{addr}/metrics)\n");
            page = Some(AbortOnDrop(task));
            break;
        }
    }
    // The water-tank site takes commands: show a round trip and three refusals, and the
    // pump started by the first one fills tank-3 past its high-level alert.
    let script = match (site, parse_url(&url)) {
        (Site::WaterTank, Ok((false, host, port))) => Some(AbortOnDrop(tokio::spawn(
            command_script(host, port, format!("water/{}/commands", config.gateway.id)),
        ))),
        _ => None,
    };
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.fired() => break,
            () = &mut deadline => break,
            _ = tick.tick() => {
                if let Ok(s) = running.queue().stats().await {
                    let positions: Vec<String> = s.uplinks.iter().map(|u| format!("{}: {} delivered", u.uplink, u.delivered)).collect();
                    println!(
                        "-- queue: {} waiting, {} appended, {} delivered everywhere, {} KB on disk; {}",
                        s.depth, s.appended, s.delivered, s.file_bytes / 1000, positions.join(", ")
                    );
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }
    drop(script);
    drop(page);
    let report = running.stop().await?;
    drop(devices);
    // Let the last messages reach the subscriber before it goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Some(s) = subscriber {
        s.abort();
    }
    if let Some(b) = embedded {
        b.stop().await;
    }
    println!(
        "\ndemo stopped: {} readings committed, {} lost.",
        report.committed, report.lost
    );
    Ok(())
}

/// The commands the water-tank demo sends, as a control room would.
const DEMO_COMMANDS: &[(&str, &str)] = &[
    (
        "start the pump of tank-3",
        r#"{"id":"demo-1","adapter":"tanks","device":"tank-3","action":"write","point":"pump_running","value":true,"ttl":"30s"}"#,
    ),
    (
        "write a read-only point",
        r#"{"id":"demo-2","adapter":"tanks","device":"tank-1","action":"write","point":"level","value":2.0}"#,
    ),
    (
        "a setpoint above its max of 4 m",
        r#"{"id":"demo-3","adapter":"tanks","device":"tank-1","action":"write","point":"high_level_setpoint","value":5.5}"#,
    ),
    (
        "a command that expired on its way",
        r#"{"id":"demo-4","adapter":"tanks","device":"tank-2","action":"write","point":"pump_running","value":true,"deadline":"2020-01-01T00:00:00Z"}"#,
    ),
];

/// Publishes [`DEMO_COMMANDS`] on `topic`, two seconds apart.
async fn command_script(host: String, port: u16, topic: String) {
    let mut opts = MqttOptions::new(
        format!("fieldgate-demo-control-room-{}", std::process::id()),
        host,
        port,
    );
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = AsyncClient::new(opts, 16);
    let poll = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    for (what, body) in DEMO_COMMANDS {
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("[command ->] {what}: {body}");
        let _ = client
            .publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                body.as_bytes().to_vec(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    poll.abort();
}

/// Prints every reading that arrives on `filter`.
async fn subscribe(host: String, port: u16, filter: String) {
    let mut opts = MqttOptions::new(
        format!("fieldgate-demo-subscriber-{}", std::process::id()),
        host,
        port,
    );
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 16);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.subscribe(filter.clone(), QoS::AtMostOnce).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => print_message(&p.topic, &p.payload),
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn print_message(topic: &str, body: &[u8]) {
    if topic.ends_with("/status") {
        println!("[mqtt] {topic} = {}", String::from_utf8_lossy(body));
        return;
    }
    if topic.ends_with("/commands") {
        return; // printed by the script that sends them
    }
    if topic.ends_with("/commands/response") {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let detail = match (&v["reason"], &v["value"]) {
            (serde_json::Value::String(why), _) => format!(": {why}"),
            (_, serde_json::Value::Null) => String::new(),
            (_, value) => format!(" (read back {value})"),
        };
        println!(
            "[command <-] {} {}{detail}",
            v["id"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?")
        );
        let _ = std::io::stdout().flush();
        return;
    }
    if topic.ends_with("/alerts") {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let a = &v["alert"];
        println!(
            "[ALERT] {} {} ({}): {}/{}/{} = {} {} (threshold {} {})   #{}",
            a["rule"].as_str().unwrap_or("?"),
            a["state"].as_str().unwrap_or("?").to_uppercase(),
            a["severity"].as_str().unwrap_or("?"),
            v["adapter"].as_str().unwrap_or(""),
            v["device"].as_str().unwrap_or(""),
            v["point"].as_str().unwrap_or(""),
            v["value"],
            v["unit"].as_str().unwrap_or(""),
            a["level"].as_str().unwrap_or("?"),
            a["threshold"],
            v["seq"],
        );
        let _ = std::io::stdout().flush();
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        println!("[mqtt] {topic}: {} bytes", body.len());
        return;
    };
    let mut out = Vec::new();
    for r in v["readings"].as_array().into_iter().flatten() {
        let value = match &r["value"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let unit = r["unit"]
            .as_str()
            .map(|u| format!(" {u}"))
            .unwrap_or_default();
        let quality = match r["quality"].as_str() {
            Some("good") | None => String::new(),
            Some(q) => format!(" ({q}: {})", r["reason"].as_str().unwrap_or("?")),
        };
        let _ = writeln!(
            out,
            "#{:<8} {}  {}/{}/{} = {value}{unit}{quality}   [mqtt {topic}]",
            r["seq"],
            r["ts"].as_str().unwrap_or(""),
            v["adapter"].as_str().unwrap_or(""),
            v["device"].as_str().unwrap_or(""),
            r["point"].as_str().unwrap_or(""),
        );
    }
    let _ = std::io::stdout().write_all(&out);
    let _ = std::io::stdout().flush();
}
