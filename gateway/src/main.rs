//! The `fieldgate` command line. Only this file reads the command line and the process
//! environment; everything else gets them passed in.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fieldgate::config::{Config, LogFormat, TEMPLATE};
use fieldgate::queue::{request_requeue, Durability, Inspector, RequeueSelection};
use fieldgate::status::server::ReloadRequest;
use fieldgate::{bench, demo, payload, pipeline, status};
use fieldgate_adapter::{Shutdown, ShutdownTrigger};

/// fieldgate: an edge gateway from field devices to the cloud, through a durable
/// store-and-forward queue.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log format: "text" for people, "json" for log collectors (overrides [log] format).
    #[arg(long, global = true, value_enum, env = "FIELDGATE_LOG_FORMAT")]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway with a site config until SIGTERM or Ctrl-C.
    Run(ConfigArg),
    /// Validate a site config and report every problem (exit status 2 if there is any).
    Check(ConfigArg),
    /// Show what the running gateway is doing: adapters and devices with their last values,
    /// queue, uplinks, throughput (asks its [http] endpoint; exit status 1 unless it is ready).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the JSON the status page reads instead.
        #[arg(long)]
        json: bool,
    },
    /// Make the running gateway re-read its config (through its [http] endpoint; without one,
    /// send it SIGHUP). The config is checked first: one with problems is not applied.
    Reload(ConfigArg),
    /// Config file helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect the queue (safe while the gateway runs).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Run the whole pipeline on simulated devices, no setup needed.
    Demo {
        /// Stop after this long, like "30s" (default: run until Ctrl-C).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Publish to this broker instead of the embedded one, like mqtt://localhost:1883.
        #[arg(long)]
        broker: Option<String>,
        /// The site: "pump-station" (config/demo.toml, simulated devices), "water-tank"
        /// (config/water-tank.toml: three Modbus RTU tanks simulated on a pseudo-terminal),
        /// "weather-station" (config/weather-station.toml: an NMEA weather station simulated
        /// on a pseudo-terminal) or "smart-pole" (config/smart-pole.toml: three LoRaWAN smart
        /// poles behind a simulated packet forwarder).
        #[arg(long, value_enum, default_value = "pump-station")]
        site: DemoSite,
        /// Port of the status page on 127.0.0.1 (0: any free port; when 8686 is taken, the
        /// demo takes a free one).
        #[arg(long, default_value_t = 8686)]
        status_port: u16,
    },
    /// Measure the queue and the pipeline at full rate beside a bare rusqlite loop.
    Bench {
        /// Readings per phase.
        #[arg(long, default_value_t = 2_000_000)]
        readings: u64,
        /// "crash", "power-loss" or "both".
        #[arg(long, default_value = "both")]
        durability: String,
        /// Directory for the bench databases (put it on the disk you care about).
        #[arg(long, default_value = "target/fieldgate-bench")]
        dir: PathBuf,
        /// Readings per transaction.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Measure only the bare loop and the queue.
        #[arg(long)]
        skip_pipeline: bool,
        /// Measure the MQTT uplink against this broker instead (e.g. a local Mosquitto at
        /// mqtt://127.0.0.1:1883), beside a bare rumqttc publisher.
        #[arg(long, conflicts_with_all = ["modbus", "https", "serial", "lorawan"])]
        mqtt: Option<String>,
        /// Measure the HTTPS uplink instead, against an HTTPS ingest server started in this
        /// process, beside a bare reqwest client posting the same bodies.
        #[arg(long, conflicts_with_all = ["modbus", "serial", "lorawan"])]
        https: bool,
        /// Measure the Modbus adapter instead: scans of --points holding registers on a
        /// loopback Modbus TCP server (requests per scan, coalesced and not), then points/s
        /// into the queue.
        #[arg(long, conflicts_with_all = ["serial", "lorawan"])]
        modbus: bool,
        /// Measure the serial adapter instead: a weather station's NMEA sentences decoded in
        /// memory, then through a pseudo-terminal into the queue, paced at 115200 baud and
        /// unthrottled (lines/s).
        #[arg(long, conflicts_with = "lorawan")]
        serial: bool,
        /// Measure the LoRaWAN adapter instead: smart-pole uplinks verified, decrypted and
        /// decoded in memory, then into the queue (uplinks/s; --readings / 10 uplinks).
        #[arg(long)]
        lorawan: bool,
        /// Holding registers for --modbus.
        #[arg(long, default_value_t = 10_000)]
        points: u16,
    },
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The site config file.
    #[arg(
        short,
        long,
        env = "FIELDGATE_CONFIG",
        default_value = "/etc/fieldgate/fieldgate.toml"
    )]
    config: PathBuf,
}

/// The sites `fieldgate demo` can run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DemoSite {
    /// config/demo.toml: a simulated pump station.
    PumpStation,
    /// config/water-tank.toml: three Modbus RTU tanks simulated on a pseudo-terminal.
    WaterTank,
    /// config/weather-station.toml: an NMEA weather station simulated on a pseudo-terminal.
    WeatherStation,
    /// config/smart-pole.toml: LoRaWAN smart poles behind a simulated packet forwarder.
    SmartPole,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a complete, commented config to start from.
    Template,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Depth, age, size on disk, counters, and each uplink's position.
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the next readings waiting for an uplink (or the oldest queued).
    Peek {
        #[command(flatten)]
        config: ConfigArg,
        /// Show what waits for this uplink (default: the oldest readings in the queue).
        #[arg(long)]
        uplink: Option<String>,
        /// How many readings.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// List readings an uplink rejected for good (the dead-letter table), oldest first.
    DeadLetters {
        #[command(flatten)]
        config: ConfigArg,
        /// Only those this uplink rejected.
        #[arg(long)]
        uplink: Option<String>,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// List the commands received from the cloud (the audit table), newest first.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters again, to the uplink that rejected them only. The running gateway
    /// picks them up within a second (a stopped one when it next starts).
    Requeue {
        #[command(flatten)]
        config: ConfigArg,
        /// Every dead letter (with --uplink: every one of that uplink).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only those this uplink rejected (with --all).
        #[arg(long, requires = "all")]
        uplink: Option<String>,
        /// These dead letters, by the id `queue dead-letters` shows (comma-separated or
        /// repeated).
        #[arg(long = "id", value_delimiter = ',')]
        ids: Vec<u64>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    fieldgate_adapter::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // vars() would panic on a variable that is not UTF-8; such a variable cannot be one of
    // ours, so it is skipped.
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    match dispatch(cli, &env) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads a config or prints every error, one per line.
fn load(path: &std::path::Path, env: &[(String, String)]) -> Result<Config, ExitCode> {
    Config::load(path, env).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        eprintln!("{} problem(s) in {}", errors.0.len(), path.display());
        ExitCode::from(2)
    })
}

/// Warnings about secrets in the config file that other users can read (see
/// [`fieldgate::config::exposed_secrets`]).
fn secret_warnings(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| fieldgate::config::exposed_secrets(path, &text))
        .unwrap_or_default()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        // Blocking work is SQLite (serialized by the queue's lock) and file writes: a few
        // threads suffice, and each extra thread costs a malloc arena of resident memory.
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(cli: Cli, env: &[(String, String)]) -> anyhow::Result<ExitCode> {
    let rust_log = env
        .iter()
        .find(|(k, _)| k == "RUST_LOG")
        .map(|(_, v)| v.clone());
    match cli.command {
        Command::Check(arg) => {
            let config = match load(&arg.config, env) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            for w in secret_warnings(&arg.config) {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} adapter(s), {} uplink(s), {} rule(s), {} alert(s); queue at {})",
                arg.config.display(),
                config.adapters.len(),
                config.uplinks.len(),
                config.rules.len(),
                config.alerts.len(),
                config.queue_path().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => {
            let Some((http, addr)) = endpoint(&config.config, env) else {
                return Ok(ExitCode::from(2));
            };
            let Some((code, body)) =
                ask(&http, addr, "GET", "/api/status", Duration::from_secs(5))?
            else {
                return Ok(ExitCode::FAILURE);
            };
            if code != 200 {
                eprintln!("http://{addr}/api/status answered {code}: {}", body.trim());
                return Ok(ExitCode::FAILURE);
            }
            let snapshot: status::Snapshot = serde_json::from_str(&body)
                .context("the status endpoint answered with something that is not a status")?;
            if json {
                println!("{body}");
            } else {
                print!("{}", status::text::render(&snapshot));
            }
            Ok(if snapshot.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Reload(arg) => {
            // The gateway reads and checks its own file, with its own environment (where
            // the secrets may be), and answers with every problem it finds.
            let Some((http, addr)) = endpoint(&arg.config, env) else {
                eprintln!("without [http], send the gateway SIGHUP instead: `systemctl reload fieldgate` or `kill -HUP <pid>`");
                return Ok(ExitCode::from(2));
            };
            match ask(&http, addr, "POST", "/api/reload", Duration::from_secs(60))? {
                Some((200, body)) => {
                    println!("reloaded: {}", body.trim());
                    Ok(ExitCode::SUCCESS)
                }
                Some((422, body)) => {
                    eprintln!("not reloaded: {}", body.trim());
                    Ok(ExitCode::from(2))
                }
                Some((code, body)) => {
                    eprintln!("not reloaded ({code}): {}", body.trim());
                    Ok(ExitCode::FAILURE)
                }
                None => Ok(ExitCode::FAILURE),
            }
        }
        Command::Config(ConfigCommand::Template) => {
            print!("{TEMPLATE}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(arg) => {
            let config = match load(&arg.config, env) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(
                rust_log.as_deref().unwrap_or(&config.log.level),
                cli.log_format.unwrap_or(config.log.format),
            );
            for w in secret_warnings(&arg.config) {
                tracing::warn!("{w}");
            }
            let rt = runtime()?;
            rt.block_on(async {
                let (shutdown, hangups) = signals()?;
                let systemd = fieldgate::watchdog::SystemdNotify::from_env(env, std::process::id());
                let file = arg.config.clone();
                let env = env.to_vec();
                let reloads = pipeline::Reloads {
                    requests: hangups.1,
                    sender: hangups.0,
                    load: std::sync::Arc::new(move || {
                        Config::load(&file, &env).map_err(|e| e.to_string())
                    }),
                };
                let report = pipeline::run(&config, shutdown, systemd, Some(reloads)).await?;
                anyhow::Ok(if report.lost > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            })
        }
        Command::Demo {
            duration,
            broker,
            site,
            status_port,
        } => {
            init_logging(
                rust_log.as_deref().unwrap_or("warn"),
                cli.log_format.unwrap_or_default(),
            );
            let rt = runtime()?;
            rt.block_on(async {
                let site = match site {
                    DemoSite::PumpStation => demo::Site::PumpStation,
                    DemoSite::WaterTank => demo::Site::WaterTank,
                    DemoSite::WeatherStation => demo::Site::WeatherStation,
                    DemoSite::SmartPole => demo::Site::SmartPole,
                };
                demo::run(site, duration, broker, status_port, signals()?.0).await?;
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Queue(cmd) => queue_command(cmd, env),
        Command::Bench {
            readings,
            durability,
            dir,
            batch,
            skip_pipeline,
            mqtt,
            https,
            modbus,
            serial,
            lorawan,
            points,
        } => {
            init_logging(
                rust_log.as_deref().unwrap_or("warn"),
                cli.log_format.unwrap_or_default(),
            );
            let durabilities = match durability.as_str() {
                "crash" => vec![Durability::Crash],
                "power-loss" => vec![Durability::PowerLoss],
                "both" => vec![Durability::Crash, Durability::PowerLoss],
                other => {
                    anyhow::bail!("--durability must be crash, power-loss or both, not `{other}`")
                }
            };
            if readings == 0 || batch == 0 {
                anyhow::bail!("--readings and --batch must be at least 1");
            }
            let opts = bench::BenchOptions {
                readings,
                durabilities,
                dir,
                batch,
                skip_pipeline,
            };
            println!(
                "fieldgate bench: {} readings per phase, batches of {}, in {}",
                opts.readings,
                opts.batch,
                opts.dir.display()
            );
            let rt = runtime()?;
            let report = match mqtt {
                Some(url) => {
                    rt.block_on(bench::run_mqtt(&url, &opts.dir, opts.readings, opts.batch))?
                }
                None if https => {
                    rt.block_on(bench::run_https(&opts.dir, opts.readings, opts.batch))?
                }
                None if modbus => rt.block_on(bench::run_modbus(
                    &opts.dir,
                    points.max(1),
                    opts.readings,
                    opts.batch,
                ))?,
                None if lorawan => rt.block_on(bench::run_lorawan(
                    &opts.dir,
                    opts.readings / 10,
                    opts.batch,
                ))?,
                None if serial => {
                    rt.block_on(bench::run_serial(&opts.dir, opts.readings, opts.batch))?
                }
                None => rt.block_on(bench::run(&opts))?,
            };
            print!("{}", bench::render(&report));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn queue_command(cmd: QueueCommand, env: &[(String, String)]) -> anyhow::Result<ExitCode> {
    let (arg, json) = match &cmd {
        QueueCommand::Stats { config, json }
        | QueueCommand::Peek { config, json, .. }
        | QueueCommand::DeadLetters { config, json, .. }
        | QueueCommand::Audit { config, json, .. } => (config, *json),
        QueueCommand::Requeue { config, .. } => (config, false),
    };
    let config = match load(&arg.config, env) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let path = config.queue_path();
    if let QueueCommand::Requeue {
        all, uplink, ids, ..
    } = cmd
    {
        let which = match (all, ids.is_empty()) {
            (true, _) => RequeueSelection::All(uplink),
            (false, false) => RequeueSelection::Ids(ids),
            (false, true) => anyhow::bail!(
                "say which dead letters: --all (optionally with --uplink ID) or --id N[,N...] (see `fieldgate queue dead-letters`)"
            ),
        };
        let n = request_requeue(&path, &which)?;
        println!(
            "{n} dead letters marked for requeue; the gateway moves them back into the queue within a second while it runs (or when it next starts)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let QueueCommand::Audit { limit, .. } = cmd {
        for e in fieldgate::queue::read_audit(&path, limit)? {
            if json {
                println!("{}", serde_json::to_string(&e)?);
                continue;
            }
            let when = |ms: i64| {
                fieldgate::payload::rfc3339(
                    std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                )
            };
            let outcome = match (&e.reason, &e.result) {
                (Some(why), _) => format!(": {why}"),
                (None, Some(v)) => format!(" (read back {v})"),
                (None, None) => String::new(),
            };
            println!(
                "{}  {:<8} {:<20} {} {}/{} {}: {}{outcome}",
                when(e.received_ms),
                e.status,
                e.command_id,
                e.origin,
                e.adapter,
                e.device,
                e.action,
                e.detail,
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut ins = Inspector::open(&path)?;
    let stats = ins.stats()?;
    match cmd {
        QueueCommand::Stats { .. } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!("queue {} (queue_id {})", path.display(), stats.queue_id);
                println!(
                    "  depth          {} readings (seq {} .. {})",
                    stats.depth,
                    opt(stats.first_seq),
                    opt(stats.last_seq)
                );
                println!(
                    "  oldest         {}",
                    stats
                        .oldest_age
                        .map_or("-".into(), |d| humantime::format_duration(
                            Duration::from_secs(d.as_secs())
                        )
                        .to_string())
                );
                println!(
                    "  on disk        {} bytes ({} in live pages)",
                    stats.file_bytes, stats.used_bytes
                );
                println!("  appended       {}", stats.appended);
                println!("  delivered      {}", stats.delivered);
                println!(
                    "  dropped        {} too old, {} oldest (full), {} newest (full)",
                    stats.dropped_age, stats.dropped_oldest, stats.dropped_newest
                );
                println!("  dead letters   {}", stats.dead_letters);
                for u in &stats.uplinks {
                    println!(
                        "  uplink {:<12} acked through {}, {} pending, {} delivered",
                        u.uplink, u.acked, u.pending, u.delivered
                    );
                }
            }
        }
        QueueCommand::Peek { uplink, limit, .. } => {
            let after = match &uplink {
                None => 0,
                Some(name) => match stats.uplinks.iter().find(|u| &u.uplink == name) {
                    Some(u) => u.acked,
                    None => anyhow::bail!(
                        "no uplink `{name}` in the queue; known: {}",
                        stats
                            .uplinks
                            .iter()
                            .map(|u| u.uplink.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            };
            let format = if json {
                LogFormat::Json
            } else {
                LogFormat::Text
            };
            let origin = payload::Origin {
                gateway: &config.gateway.id,
                queue_id: &stats.queue_id,
            };
            let text = payload::render_lines(format, origin, &ins.peek(after, limit)?);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &text)?;
        }
        QueueCommand::DeadLetters { uplink, limit, .. } => {
            let origin = payload::Origin {
                gateway: &config.gateway.id,
                queue_id: &stats.queue_id,
            };
            let letters = ins.dead_letters(uplink.as_deref(), limit)?;
            let mut out = Vec::new();
            for d in &letters {
                if json {
                    let mut reading = Vec::new();
                    payload::write_json(&mut reading, origin, &d.queued);
                    let line = serde_json::json!({
                        "id": d.id,
                        "uplink": d.uplink,
                        "failed": payload::rfc3339(d.failed),
                        "error": d.error,
                        "requeue_asked": d.requeue_asked,
                        "reading": serde_json::from_slice::<serde_json::Value>(&reading)?,
                    });
                    serde_json::to_writer(&mut out, &line)?;
                } else {
                    use std::io::Write as _;
                    write!(
                        out,
                        "dead letter {} (uplink {}, {}): ",
                        d.id,
                        d.uplink,
                        payload::rfc3339(d.failed)
                    )?;
                    payload::write_text(&mut out, &d.queued);
                    write!(out, "\n    rejected: {}", d.error)?;
                    if d.requeue_asked {
                        write!(out, " [requeue asked]")?;
                    }
                }
                out.push(b'\n');
            }
            if !json && letters.is_empty() {
                out.extend_from_slice(b"no dead letters\n");
            }
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
        }
        QueueCommand::Requeue { .. } | QueueCommand::Audit { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

type ReloadChannel = (
    tokio::sync::mpsc::Sender<ReloadRequest>,
    tokio::sync::mpsc::Receiver<ReloadRequest>,
);

/// A shutdown signal fired by SIGTERM or SIGINT (Ctrl-C), and a reload request for every
/// SIGHUP (the channel's sender goes to the status endpoint too).
fn signals() -> anyhow::Result<(Shutdown, ReloadChannel)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let hup_tx = reload_tx.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // A full channel means reloads are already pending: they read the file anew.
            match hup_tx.try_send(ReloadRequest { reply: None }) {
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    tracing::info!(signal = "SIGHUP", "ignored: this command does not reload")
                }
                _ => tracing::info!(signal = "SIGHUP", "reloading the config"),
            }
        }
    });
    let (trigger, shutdown) = ShutdownTrigger::new();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        trigger.fire();
        // A second signal means "now": the process exits without waiting.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    });
    Ok((shutdown, (reload_tx, reload_rx)))
}

/// One request to the status endpoint at `addr`: its status code and body, or `None` (said
/// why) when no gateway answers.
fn ask(
    http: &fieldgate::config::HttpSection,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Option<(u16, String)>> {
    let answer = runtime()?.block_on(status::client::request(
        addr,
        method,
        path,
        http.token.as_deref(),
        timeout,
    ));
    Ok(answer
        .map_err(|e| {
            eprintln!("no gateway answers on http://{addr} ({e}): is it running with this config?")
        })
        .ok())
}

/// The `[http]` section of `file` and the address to reach it at; says why not without one.
fn endpoint(
    file: &std::path::Path,
    env: &[(String, String)],
) -> Option<(fieldgate::config::HttpSection, std::net::SocketAddr)> {
    match Config::http_section(file, env) {
        Ok(Some(h)) => {
            let addr = status::client::target(&h);
            Some((h, addr))
        }
        Ok(None) => {
            eprintln!(
                "{} has no [http] section, so the gateway serves no status endpoint; add one, like\n\n[http]\nlisten = \"127.0.0.1:8686\"\n",
                file.display()
            );
            None
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}
