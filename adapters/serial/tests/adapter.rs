//! The serial adapter against instruments on pseudo-terminals: real ports, real bytes.

use std::sync::Arc;
use std::time::Duration;

use fieldgate_adapter::{
    reading_channel, Adapter, AdapterContext, Command, CommandAction, CommandError, CommandSender,
    Quality, Reading, ReadingReceiver, ShutdownTrigger, Value,
};
use fieldgate_serial::sim::{
    nmea_sentence, weather_sentences, VirtualPort, WEATHER_READINGS_PER_CYCLE,
};
use fieldgate_serial::{Serial, SerialConfig, SerialStats};
use tokio::task::JoinHandle;

struct Running {
    rx: ReadingReceiver,
    stats: Arc<SerialStats>,
    commands: CommandSender,
    stop: ShutdownTrigger,
    task: JoinHandle<Result<(), fieldgate_adapter::AdapterError>>,
}

fn config(port: &std::path::Path, rest: &str) -> SerialConfig {
    use figment::providers::{Format as _, Toml};
    let text = format!(
        "port = {:?}\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n{rest}",
        port.display().to_string()
    );
    let c: SerialConfig = figment::Figment::from(Toml::string(&text))
        .extract()
        .expect("valid toml");
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    c
}

fn start(config: &SerialConfig) -> Running {
    let adapter = Serial::new(config).expect("adapter");
    let stats = adapter.stats();
    let (tx, rx) = reading_channel(10_000);
    let (stop, shutdown) = ShutdownTrigger::new();
    let (commands, command_rx) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(Box::new(adapter).run(AdapterContext {
        id: "ws".into(),
        readings: tx,
        shutdown,
        commands: command_rx,
        state: fieldgate_adapter::MemoryState::shared(),
    }));
    Running {
        rx,
        stats,
        commands,
        stop,
        task,
    }
}

impl Running {
    /// The next `n` readings, failing after 10 s.
    async fn take(&mut self, n: usize) -> Vec<Reading> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await {
                Ok(Some(r)) => out.push(r),
                Ok(None) => panic!("the adapter stopped after {} readings", out.len()),
                Err(_) => panic!("only {} of {n} readings arrived: {out:?}", out.len()),
            }
        }
        out
    }

    /// Waits until the port has been opened `n` times.
    async fn opened(&self, n: u64) {
        for _ in 0..500 {
            if SerialStats::get(&self.stats.opens) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the port was not opened {n} times");
    }

    async fn stop(self) {
        self.stop.fire();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the adapter stops when told")
            .expect("no panic")
            .expect("no error");
    }
}

fn value(readings: &[Reading], point: &str) -> f64 {
    readings
        .iter()
        .find(|r| r.point == point)
        .and_then(|r| r.value.as_f64())
        .unwrap_or_else(|| panic!("no {point} in {readings:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weather_station_nmea_through_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut port = VirtualPort::new(dir.path().join("ttyWS")).expect("pty");
    let mut gw = start(&config(port.path(), "format = \"nmea\"\nmax_frame = 200"));
    gw.opened(1).await;

    // One full cycle: every reading of it arrives, in order, good.
    for line in weather_sentences(0) {
        port.write(line.as_bytes()).await.expect("write");
    }
    let first = gw.take(WEATHER_READINGS_PER_CYCLE).await;
    assert!(first
        .iter()
        .all(|r| r.quality == Quality::Good && r.device == "ws" && r.source == "ws"));
    let points: Vec<&str> = first.iter().map(|r| r.point.as_str()).collect();
    assert_eq!(&points[..3], ["pressure", "air_temperature", "humidity"]);
    assert!(
        points.contains(&"AirTemp") && points.contains(&"Battery") && points.contains(&"heading")
    );

    // Then everything a noisy line does, between two good sentences.
    let good = |body: &str| nmea_sentence(body);
    let mut noise: Vec<u8> = Vec::new();
    noise.extend_from_slice(b"\x00\xff\xfe garbage bytes\r\n");
    noise.extend_from_slice(
        b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48\r\n",
    ); // bad checksum
    noise.extend_from_slice(b"$GPHDT,274.07,T\r\n"); // no checksum
    noise.extend_from_slice(b"$HCHDT,\xe9\xe9,T*00\r\n"); // not UTF-8
    noise.extend_from_slice(good("GPGSV,3,1,11,03,03,111,00").as_bytes()); // not read
    noise.extend_from_slice(good("GPGGA,1,48x7.0,N,01131.000,E,1,08").as_bytes()); // malformed
    noise.extend_from_slice(&[b'A'; 500]); // over-long, no terminator yet
    noise.extend_from_slice(b"\r\n");
    noise.extend_from_slice(good("HCHDT,10.5,T").as_bytes());
    // A sentence split across two writes.
    let split = good("HCHDT,11.5,T");
    noise.extend_from_slice(&split.as_bytes()[..7]);
    port.write(&noise).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    port.write(&split.as_bytes()[7..]).await.expect("write");

    let next = gw.take(2).await;
    assert_eq!(value(&next[..1], "heading"), 10.5);
    assert_eq!(value(&next[1..], "heading"), 11.5);
    let s = &gw.stats;
    // One wrong, one missing, and the é line (its checksum was computed over other bytes).
    assert_eq!(SerialStats::get(&s.bad_checksum), 3);
    assert_eq!(
        SerialStats::get(&s.non_utf8),
        2,
        "the garbage line and the é line"
    );
    assert_eq!(SerialStats::get(&s.unsupported), 1);
    assert_eq!(SerialStats::get(&s.malformed), 1);
    assert_eq!(SerialStats::get(&s.oversized), 1);
    assert_eq!(
        SerialStats::get(&s.unmatched),
        1,
        "the garbage line is not a sentence"
    );
    assert_eq!(
        SerialStats::get(&s.readings),
        WEATHER_READINGS_PER_CYCLE as u64 + 2
    );
    assert!(
        gw.rx.try_recv().is_err(),
        "nothing else came out of the noise"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_goes_stale_and_replug_resumes_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut port = VirtualPort::new(dir.path().join("usb-serial")).expect("pty");
    let mut gw = start(&config(port.path(), "format = \"kv\""));
    gw.opened(1).await;
    port.write(b"T=21.5 H=40\r\n").await.expect("write");
    let before = gw.take(2).await;
    assert_eq!(value(&before, "T"), 21.5);

    port.unplug();
    let stale = gw.take(2).await;
    for r in &stale {
        assert!(
            matches!(&r.quality, Quality::Stale(why) if !why.is_empty()),
            "{r:?}"
        );
    }
    assert_eq!(
        value(&stale, "T"),
        21.5,
        "stale readings carry the last value"
    );
    assert_eq!(value(&stale, "H"), 40.0);
    // While unplugged, opening fails and is retried; no second round of stale readings.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(SerialStats::get(&gw.stats.open_failures) >= 1);
    assert!(
        gw.rx.try_recv().is_err(),
        "stale is reported once per outage"
    );

    port.plug().expect("replug");
    gw.opened(2).await;
    port.write(b"T=22.0 H=41\r\n").await.expect("write");
    let after = gw.take(2).await;
    assert_eq!(value(&after, "T"), 22.0);
    assert!(after.iter().all(|r| r.quality == Quality::Good));
    assert_eq!(SerialStats::get(&gw.stats.losses), 1);
    assert!(!gw.task.is_finished(), "the same adapter run carried on");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_missing_at_start_is_waited_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut port = VirtualPort::new(dir.path().join("later")).expect("pty");
    port.unplug();
    let mut gw = start(&config(
        port.path(),
        "format = \"regex\"\npattern = '^CO2 (?P<co2>\\d+) ppm$'\n[[fields]]\nfield = \"co2\"\ntype = \"int\"\nunit = \"ppm\"",
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        SerialStats::get(&gw.stats.open_failures) >= 2,
        "retried with backoff"
    );
    port.plug().expect("plug");
    gw.opened(1).await;
    port.write(b"CO2 415 ppm\nCO2 junk\n").await.expect("write");
    let r = gw.take(1).await;
    assert_eq!(r[0].value, Value::I64(415));
    assert_eq!(r[0].unit.as_deref(), Some("ppm"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(SerialStats::get(&gw.stats.unmatched), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_instrument_silence_and_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut port = VirtualPort::new(dir.path().join("analyzer")).expect("pty");
    let cfg = config(
        port.path(),
        r#"
        device = "gas-1"
        format = "csv"
        header = true
        stale_after = "1s"
        [poll]
        request = "R\r\n"
        interval = "200ms"
        [[fields]]
        field = "O2"
        unit = "%"
        [[fields]]
        field = "CO"
        unit = "ppm"
        "#,
    );
    let mut gw = start(&cfg);
    gw.opened(1).await;
    // The instrument answers each request; it prints its header first.
    let mut buf = [0u8; 64];
    let n = port.read(&mut buf).await.expect("a request");
    assert_eq!(&buf[..n], b"R\r\n");
    port.write(b"CO,O2\r\n12,20.9\r\n").await.expect("write");
    let r = gw.take(2).await;
    assert_eq!((r[0].point.as_str(), value(&r, "CO")), ("CO", 12.0));
    assert_eq!(value(&r, "O2"), 20.9);
    assert_eq!(r[0].device, "gas-1");
    assert_eq!(SerialStats::get(&gw.stats.headers), 1);

    // A command writes a line, with the line ending added.
    let (cmd, reply) = Command::new(
        "c1",
        "gas-1",
        CommandAction::Send {
            port: None,
            payload: b"ZERO".to_vec(),
        },
        None,
    );
    gw.commands.send(cmd).await.expect("send");
    assert_eq!(reply.await.expect("a reply"), Ok(None));
    let mut seen = Vec::new();
    while !seen.windows(6).any(|w| w == b"ZERO\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), port.read(&mut buf))
            .await
            .expect("the line arrives")
            .expect("read");
        seen.extend_from_slice(&buf[..n]);
    }
    for (device, action, want) in [
        (
            "gas-2",
            CommandAction::Send {
                port: None,
                payload: b"X".to_vec(),
            },
            "unknown target",
        ),
        (
            "gas-1",
            CommandAction::Write {
                point: "O2".into(),
                value: Value::F64(1.0),
            },
            "not supported",
        ),
    ] {
        let (cmd, reply) = Command::new("c2", device, action, None);
        gw.commands.send(cmd).await.expect("send");
        let got = reply.await.expect("a reply").expect_err("refused");
        assert!(got.to_string().starts_with(want), "{got}");
    }
    let (cmd, reply) = Command::new(
        "c3",
        "gas-1",
        CommandAction::Send {
            port: None,
            payload: b"X".to_vec(),
        },
        Some(std::time::Instant::now()),
    );
    gw.commands.send(cmd).await.expect("send");
    assert_eq!(reply.await.expect("a reply"), Err(CommandError::Expired));

    // The instrument stops answering: after `stale_after` the last values go stale and the
    // port is reopened. It comes back without restarting (no header): the columns learned
    // before still apply. Then it restarts and prints its header, in another order.
    let stale = gw.take(2).await;
    assert!(
        stale
            .iter()
            .all(|r| matches!(&r.quality, Quality::Stale(w) if w.contains("no reading for 1s"))),
        "{stale:?}"
    );
    gw.opened(2).await;
    port.write(b"13,20.5\r\n").await.expect("write");
    let r = gw.take(2).await;
    assert_eq!((value(&r, "CO"), value(&r, "O2")), (13.0, 20.5));
    port.write(b"O2,CO\r\n20.4,14\r\n").await.expect("write");
    let r = gw.take(2).await;
    assert_eq!((value(&r, "CO"), value(&r, "O2")), (14.0, 20.4));
    assert_eq!(SerialStats::get(&gw.stats.headers), 2);
    assert!(SerialStats::get(&gw.stats.polls) >= 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delimited_frames_with_stx_etx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut port = VirtualPort::new(dir.path().join("scale")).expect("pty");
    let mut gw = start(&config(
        port.path(),
        "framing = \"delimited\"\nstart = \"\\u0002\"\nend = \"\\u0003\"\nformat = \"kv\"\nmax_frame = 32",
    ));
    gw.opened(1).await;
    let mut bytes = b"line noise\x02W=12.5\x03\r\n\x02W=".to_vec();
    bytes.extend_from_slice(&[b'9'; 100]);
    bytes.extend_from_slice(b"\x03\x02W=13.0 U=kg\x03");
    port.write(&bytes).await.expect("write");
    let r = gw.take(3).await;
    assert_eq!(value(&r[..1], "W"), 12.5);
    assert_eq!(value(&r[1..2], "W"), 13.0);
    assert_eq!(r[2].value, Value::Text("kg".into()));
    assert_eq!(SerialStats::get(&gw.stats.oversized), 1);
    assert!(SerialStats::get(&gw.stats.stray_bytes) >= 10);
    gw.stop().await;
}
