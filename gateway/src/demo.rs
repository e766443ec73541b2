//! `fieldgate demo`: the whole pipeline on built-in simulated devices, with zero setup.
//!
//! Runs `config/demo.toml` (compiled in) with its state in a temporary directory: a simulated
//! pump station → queue → the console uplink (each reading printed as it is delivered) and a
//! JSON Lines archive. Queue stats are printed every few seconds.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use fieldgate_adapter::Shutdown;

use crate::config::{Config, ConfigErrors};
use crate::pipeline::{self, PipelineError};

/// The demo site, as shipped in `config/demo.toml`.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The built-in config is broken (a bug).
    #[error("demo config: {0}")]
    Config(#[from] ConfigErrors),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// No temporary directory.
    #[error("cannot create a temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The demo config with its state under `dir`.
pub fn config(dir: &Path) -> Result<Config, ConfigErrors> {
    let env = vec![
        (
            "FIELDGATE_GATEWAY__DATA_DIR".to_string(),
            dir.display().to_string(),
        ),
        (
            "FIELDGATE_UPLINKS__1__PATH".to_string(),
            dir.join("readings.jsonl").display().to_string(),
        ),
    ];
    Config::from_toml(&dir.join("demo.toml"), DEMO_CONFIG, &env)
}

/// Runs the demo until `duration` passes or `shutdown` fires.
pub async fn run(duration: Option<Duration>, mut shutdown: Shutdown) -> Result<(), DemoError> {
    let dir = tempfile::Builder::new()
        .prefix("fieldgate-demo-")
        .tempdir()?;
    let config = config(dir.path())?;
    println!(
        "fieldgate demo: simulated pump station -> queue -> console + {}",
        dir.path().join("readings.jsonl").display()
    );
    println!("(Ctrl-C to stop)\n");
    let running = pipeline::start(&config).await?;
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
    let report = running.stop().await?;
    println!(
        "\ndemo stopped: {} readings committed, {} lost.",
        report.committed, report.lost
    );
    Ok(())
}
