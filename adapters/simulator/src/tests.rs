use super::*;
use fieldgate_adapter::{reading_channel, Command, ShutdownTrigger};

fn point(name: &str, waveform: WaveformKind, interval_ms: u64) -> PointConfig {
    PointConfig {
        name: name.into(),
        interval: Duration::from_millis(interval_ms),
        unit: None,
        count: None,
        waveform,
        min: 0.0,
        max: 100.0,
        period: Duration::from_secs(4),
        step: 1.0,
        start: 0,
        increment: 1,
        file: None,
    }
}

fn config(points: Vec<PointConfig>) -> SimulatorConfig {
    SimulatorConfig {
        devices: vec![DeviceConfig {
            id: "dev".into(),
            points,
        }],
    }
}

/// Runs the simulator for `secs` of paused time and returns (point, value) in emission order.
async fn run_for(cfg: SimulatorConfig, secs: u64) -> Vec<(String, Value)> {
    let sim = Box::new(Simulator::new(&cfg, Path::new(".")).expect("valid config"));
    let (tx, mut rx) = reading_channel(1024);
    let (trigger, shutdown) = ShutdownTrigger::new();
    let (_cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(1);
    let ctx = AdapterContext {
        id: "sim".into(),
        readings: tx,
        shutdown,
        commands: cmd_rx,
        state: fieldgate_adapter::MemoryState::shared(),
    };
    let task = tokio::spawn(sim.run(ctx));
    // Just short of the next tick at `secs`, so the boundary sample is not racy.
    tokio::time::sleep(Duration::from_secs(secs) - Duration::from_millis(1)).await;
    trigger.fire();
    task.await.expect("no panic").expect("clean stop");
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        assert_eq!(r.source, "sim");
        assert_eq!(r.device, "dev");
        out.push((r.point.to_string(), r.value));
    }
    out
}

fn floats(v: &[(String, Value)]) -> Vec<f64> {
    v.iter()
        .map(|(_, v)| match v {
            Value::F64(f) => (f * 1e6).round() / 1e6,
            other => panic!("expected a float, got {other:?}"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn sine_ramp_and_step_follow_their_period() {
    // Period 4 s, sampled every second: phases 0, 1/4, 1/2, 3/4.
    let sine = run_for(config(vec![point("s", WaveformKind::Sine, 1000)]), 4).await;
    assert_eq!(floats(&sine), vec![50.0, 100.0, 50.0, 0.0]);
    let ramp = run_for(config(vec![point("r", WaveformKind::Ramp, 1000)]), 4).await;
    assert_eq!(floats(&ramp), vec![0.0, 25.0, 50.0, 75.0]);
    let step = run_for(config(vec![point("t", WaveformKind::Step, 1000)]), 4).await;
    assert_eq!(floats(&step), vec![0.0, 0.0, 100.0, 100.0]);
}

#[tokio::test(start_paused = true)]
async fn counters_honour_rate_count_and_increment() {
    let mut fast = point("fast", WaveformKind::Counter, 100);
    fast.start = 10;
    fast.increment = 5;
    let mut limited = point("limited", WaveformKind::Counter, 100);
    limited.count = Some(3);
    let out = run_for(config(vec![fast, limited]), 1).await;
    let fast: Vec<_> = out
        .iter()
        .filter(|(p, _)| p == "fast")
        .map(|(_, v)| v.clone())
        .collect();
    let limited: Vec<_> = out
        .iter()
        .filter(|(p, _)| p == "limited")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(fast.len(), 10, "10 samples in one second at 100 ms");
    assert_eq!(fast[0], Value::I64(10));
    assert_eq!(fast[9], Value::I64(55));
    assert_eq!(limited, vec![Value::I64(0), Value::I64(1), Value::I64(2)]);
}

#[tokio::test(start_paused = true)]
async fn random_walk_stays_in_bounds() {
    let mut walk = point("w", WaveformKind::RandomWalk, 10);
    walk.min = -1.0;
    walk.max = 1.0;
    walk.step = 0.5;
    let out = floats(&run_for(config(vec![walk]), 10).await);
    assert_eq!(out.len(), 1000);
    assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(out.windows(2).all(|w| (w[1] - w[0]).abs() <= 0.5 + 1e-9));
    assert!(out.iter().any(|v| *v != 0.0), "it must move");
}

#[tokio::test(start_paused = true)]
async fn replay_loops_over_the_file() {
    let dir = std::env::temp_dir().join(format!("fieldgate-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("trace.txt"), "# level\n1.5\n\n2.5\n3\n").expect("write trace");
    let mut replay = point("x", WaveformKind::Replay, 1000);
    replay.file = Some("trace.txt".into());
    let cfg = config(vec![replay]);
    assert!(cfg.validate(&dir).is_empty());
    let sim = Simulator::new(&cfg, &dir).expect("loads");
    assert!(
        matches!(&sim.points[0].gen, Generator::Replay { values, .. } if values == &[1.5, 2.5, 3.0])
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn validation_names_every_bad_key() {
    let mut bad = point("p", WaveformKind::Sine, 0);
    bad.min = 5.0;
    bad.max = 1.0;
    let replay = point("p", WaveformKind::Replay, 1000);
    let mut missing = point("q", WaveformKind::Replay, 1000);
    missing.file = Some("no-such-file.txt".into());
    let problems = config(vec![bad, replay, missing]).validate(Path::new("/nonexistent"));
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "devices[0].points[0].interval",
            "devices[0].points[0].min",
            "devices[0].points[1].name",
            "devices[0].points[1].file",
            "devices[0].points[2].file",
        ]
    );
    assert!(
        problems[4].message.contains("no-such-file.txt"),
        "{:?}",
        problems[4]
    );
}

/// Regression: NaN bounds passed `min > max` and then panicked in `clamp` in a restart loop;
/// `count = 0` overflowed.
#[test]
fn values_that_break_at_runtime_are_refused() {
    let mut nan = point("", WaveformKind::RandomWalk, 1000);
    nan.min = f64::NAN;
    nan.count = Some(0);
    let problems = config(vec![nan]).validate(Path::new("."));
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "devices[0].points[0].name",
            "devices[0].points[0].count",
            "devices[0].points[0].min"
        ]
    );
}

#[tokio::test]
async fn commands_are_refused_with_a_reason() {
    let cfg = config(vec![point("p", WaveformKind::Counter, 3_600_000)]);
    let sim = Box::new(Simulator::new(&cfg, Path::new(".")).expect("valid"));
    let (tx, mut rx) = reading_channel(8);
    let (trigger, shutdown) = ShutdownTrigger::new();
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(sim.run(AdapterContext {
        id: "sim".into(),
        readings: tx,
        shutdown,
        commands: cmd_rx,
        state: fieldgate_adapter::MemoryState::shared(),
    }));
    rx.recv().await.expect("first sample at once");
    let (cmd, reply) = Command::new(
        "c1",
        "dev",
        CommandAction::Write {
            point: "p".into(),
            value: Value::I64(1),
        },
        None,
    );
    cmd_tx.send(cmd).await.expect("adapter listens");
    let outcome = reply.await.expect("answered");
    assert!(matches!(outcome, Err(CommandError::Unsupported(ref m)) if m.contains("read-only")));
    trigger.fire();
    task.await.expect("no panic").expect("clean stop");
}
