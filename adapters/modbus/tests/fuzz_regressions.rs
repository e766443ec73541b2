//! Inputs found by the `modbus_response` fuzz target (fuzz/), replayed against the adapter
//! over a real TCP connection to a device that answers with the bytes the fuzzer found.
//!
//! tokio-modbus 0.16.1's `Reader` and `Writer` methods (`src/client/mod.rs`) check a
//! response against its request with `debug_assert!`s only: as many coils as asked (line
//! 135), exactly as many registers (194), a write's echo of address and value (238, 269 and
//! around). A device that answers otherwise panicked the adapter's task in any build with
//! debug assertions (`cargo test`, dev builds, the fuzz build); a release build went on.
//! Reads and writes go through `Client::call` since 26a2b6b and 2f12d5d; `link.rs` checks the
//! count of values and the echo of a write itself.
//!
//! The last two tests are the target's check that every point gets a reading in every poll:
//! ignored until `poll_device` in lib.rs reports the points of unanswered blocks when the
//! link fails later in the same poll (see there). The raw fuzz inputs are in
//! fuzz/regressions/modbus_response/.

use std::time::Duration;

use fieldgate_adapter::{
    reading_channel, Adapter, AdapterContext, Command, CommandAction, MemoryState, Outcome,
    Quality, Reading, ShutdownTrigger, Value,
};
use fieldgate_modbus::{Modbus, ModbusConfig};
use figment::providers::Format;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A Modbus TCP device that answers each request PDU with `answer(pdu)`, behind an MBAP
/// header carrying the request's transaction id and unit: well-framed answers whose bodies
/// are the test's.
async fn device(answer: fn(&[u8]) -> Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 260];
                while let Ok(n) = s.read(&mut req).await {
                    if n < 8 {
                        return;
                    }
                    let pdu = answer(&req[7..n]);
                    let len = u16::try_from(pdu.len() + 1).expect("short pdu");
                    let mut frame = vec![req[0], req[1], 0, 0];
                    frame.extend_from_slice(&len.to_be_bytes());
                    frame.push(req[6]);
                    frame.extend_from_slice(&pdu);
                    if s.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The adapter on device `d` (unit 1, `points` in TOML) against `answer`: sends `command`
/// (a write to `d`) if given, collects the `count` readings of the first poll (and the one
/// of a value read back after a write), stops the adapter (which must end with `Ok`, not a
/// panic), and returns the readings and the command's outcome.
async fn run(
    points: &str,
    answer: fn(&[u8]) -> Vec<u8>,
    count: usize,
    command: Option<(&str, Value)>,
) -> (Vec<Reading>, Option<Outcome>) {
    let addr = device(answer).await;
    let toml = format!(
        "transport = \"tcp\"\naddress = \"{addr}\"\ntimeout = \"1s\"\nretries = 0\n\
         interval = \"1h\"\n[[devices]]\nid = \"d\"\nunit = 1\n{points}"
    );
    let cfg: ModbusConfig = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .expect("valid test config");
    let adapter = Modbus::new(&cfg).expect("adapter builds");
    let (tx, mut rx) = reading_channel(1000);
    let (stop, shutdown) = ShutdownTrigger::new();
    let (commands, commands_rx) = tokio::sync::mpsc::channel(1);
    let mut reply = None;
    if let Some((point, value)) = command {
        let action = CommandAction::Write {
            point: point.into(),
            value,
        };
        let (cmd, r) = Command::new("c1", "d", action, None);
        commands.send(cmd).await.expect("queued");
        reply = Some(r);
    }
    let ctx = AdapterContext {
        id: "mb".into(),
        readings: tx,
        shutdown,
        commands: commands_rx,
        state: MemoryState::shared(),
    };
    let task = tokio::spawn(Box::new(adapter).run(ctx));
    let outcome = match reply {
        Some(r) => Some(
            tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .expect("the command is answered within 10 s")
                .expect("the adapter answered the command (it did not die)"),
        ),
        None => None,
    };
    let count = count + usize::from(matches!(outcome, Some(Ok(Some(_)))));
    let mut got = Vec::new();
    while got.len() < count {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(r)) => got.push(r),
            Ok(None) => break,
            Err(_) => panic!("no reading within 10 s; so far {got:?}"),
        }
    }
    stop.fire();
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the adapter stops");
    match ended {
        Ok(result) => assert!(result.is_ok(), "the adapter ended with {result:?}"),
        Err(e) => panic!("the adapter's task panicked on the device's answer: {e}"),
    }
    assert_eq!(got.len(), count, "readings: {got:?}");
    (got, outcome)
}

fn assert_all_stale(readings: &[Reading], why: &str) {
    for r in readings {
        match &r.quality {
            Quality::Stale(reason) => assert!(
                reason.contains(why),
                "{}: expected a stale reading saying `{why}`, got `{reason}`",
                r.point
            ),
            other => panic!("{}: expected stale, got {other:?} ({r:?})", r.point),
        }
    }
}

/// A device with a correct answer to every read (each value 42) and to every write.
fn good(pdu: &[u8]) -> Vec<u8> {
    let count = usize::from(u16::from_be_bytes([pdu[3], pdu[4]]));
    match pdu[0] {
        1 | 2 => {
            let n = count.div_ceil(8);
            let mut out = vec![pdu[0], u8::try_from(n).expect("small")];
            out.resize(2 + n, 0xFF);
            out
        }
        3 | 4 => {
            let mut out = vec![pdu[0], u8::try_from(count * 2).expect("small")];
            for _ in 0..count {
                out.extend_from_slice(&42u16.to_be_bytes());
            }
            out
        }
        _ => pdu[..5].to_vec(),
    }
}

/// fuzz/regressions/modbus_response/tokio_modbus_coils_short (`cargo fuzz tmin` of the
/// first crash), the 3 bytes `00 02 01`: over TCP, the first request (coils 0-3 of `meter`) answered with function 1
/// and a byte count of 0, no coils. Was `assertion failed: coils.len() >= cnt.into()` at
/// tokio-modbus src/client/mod.rs:135, a panic of the adapter's task.
#[tokio::test]
async fn a_coil_read_answered_with_no_coils_is_a_desync_not_a_panic() {
    let points = "[[devices.points]]\nname = \"run\"\naddress = \"00001\"\n\
                  [[devices.points]]\nname = \"trip\"\naddress = \"00004\"\n";
    let (readings, _) = run(points, |_| vec![0x01, 0x00], 2, None).await;
    assert_all_stale(&readings, "unexpected response: asked for 4 values, got 0");
}

/// fuzz/regressions/modbus_response/tokio_modbus_short_registers (the seed `tcp_faults` as
/// first written, which crashed the target): a read
/// of 4 holding registers answered with function 3, byte count 2, one register. Was
/// `assertion left == right failed, left: 1, right: 4` at tokio-modbus
/// src/client/mod.rs:194.
#[tokio::test]
async fn a_register_read_answered_with_fewer_registers_is_a_desync_not_a_panic() {
    let points = "[[devices.points]]\nname = \"speed\"\naddress = \"40101\"\ntype = \"f32\"\n\
                  [[devices.points]]\nname = \"volts\"\naddress = \"40103\"\ntype = \"i32\"\n";
    let (readings, _) = run(points, |_| vec![0x03, 0x02, 0x00, 0x01], 2, None).await;
    assert_all_stale(&readings, "unexpected response: asked for 4 values, got 1");
}

/// fuzz/regressions/modbus_response/tokio_modbus_register_write_echo,
/// `02 07 00 00 00 00 00 00 00 2a 02 04 00 05 00 2a`: a write
/// of 42 to holding register 0 (`setpoint`) answered with function 6 echoing register 5.
/// tokio-modbus: `assertion left == right failed, left: 0, right: 5` at
/// src/client/mod.rs:269, a panic of the adapter's task in a debug build.
#[tokio::test]
async fn a_register_write_answered_with_another_echo_does_not_panic() {
    let points = "[[devices.points]]\nname = \"setpoint\"\naddress = \"40001\"\n\
                  writable = true\n";
    let answer = |pdu: &[u8]| match pdu[0] {
        6 => vec![0x06, 0x00, 0x05, 0x00, 0x2A],
        _ => good(pdu),
    };
    let (readings, outcome) = run(points, answer, 1, Some(("setpoint", Value::I64(42)))).await;
    match outcome.expect("a command was sent") {
        Ok(o) => panic!("a write the device did not echo is not a success: {o:?}"),
        Err(e) => assert!(!e.to_string().trim().is_empty(), "an error says why"),
    }
    assert!(readings.iter().all(|r| r.point.as_str() == "setpoint"));
}

/// fuzz/regressions/modbus_response/tokio_modbus_coil_write_echo,
/// `02 00 00 00 00 00 00 00 00 01 02 04 00 00 00 00`: coil 3
/// (`trip`) written on, answered with function 5 echoing coil 0, off. tokio-modbus:
/// `assertion left == right failed, left: 3, right: 0` at src/client/mod.rs:238.
#[tokio::test]
async fn a_coil_write_answered_with_another_echo_does_not_panic() {
    let points = "[[devices.points]]\nname = \"trip\"\naddress = \"00004\"\nwritable = true\n";
    let answer = |pdu: &[u8]| match pdu[0] {
        5 => vec![0x05, 0x00, 0x00, 0x00, 0x00],
        _ => good(pdu),
    };
    let (readings, outcome) = run(points, answer, 1, Some(("trip", Value::Bool(true)))).await;
    match outcome.expect("a command was sent") {
        Ok(o) => panic!("a write the device did not echo is not a success: {o:?}"),
        Err(e) => assert!(!e.to_string().trim().is_empty(), "an error says why"),
    }
    assert!(readings.iter().all(|r| r.point.as_str() == "trip"));
}

/// The adapter on two coils of unit 1 that are read in two requests (coil 0, then coil 100)
/// against the TCP device `serve`; returns the readings of the first poll (waiting `settle`
/// after the second point's reading for any late one) and stops the adapter.
async fn two_blocks(
    serve: impl FnOnce(TcpListener) -> tokio::task::JoinHandle<()>,
    timeout: &str,
) -> Vec<Reading> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = serve(listener);
    let toml = format!(
        "transport = \"tcp\"\naddress = \"{addr}\"\ntimeout = \"{timeout}\"\nretries = 0\n\
         interval = \"1h\"\n[[devices]]\nid = \"d\"\nunit = 1\n\
         [[devices.points]]\nname = \"first\"\naddress = \"00001\"\n\
         [[devices.points]]\nname = \"second\"\naddress = \"00101\"\n"
    );
    let cfg: ModbusConfig = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .expect("valid test config");
    let adapter = Modbus::new(&cfg).expect("adapter builds");
    let (tx, mut rx) = reading_channel(1000);
    let (stop, shutdown) = ShutdownTrigger::new();
    let (_commands, commands) = tokio::sync::mpsc::channel(1);
    let ctx = AdapterContext {
        id: "mb".into(),
        readings: tx,
        shutdown,
        commands,
        state: MemoryState::shared(),
    };
    let task = tokio::spawn(Box::new(adapter).run(ctx));
    let mut got: Vec<Reading> = Vec::new();
    while !got.iter().any(|r| r.point.as_str() == "second") {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(r)) => got.push(r),
            Ok(None) => panic!("the adapter stopped; readings {got:?}"),
            Err(_) => panic!("no reading of `second` within 10 s; readings {got:?}"),
        }
    }
    // Anything else of this poll arrives right after.
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        got.push(r);
    }
    stop.fire();
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the adapter stops")
        .expect("no panic");
    assert!(ended.is_ok(), "the adapter ended with {ended:?}");
    server.abort();
    got
}

/// fuzz/regressions/modbus_response/point_never_reported (47 bytes, `cargo fuzz tmin` of
/// the crash of the target's check "every point is reported", found after 388 s): a device's
/// first request went unanswered (here a frame of another transaction, a desync), the device
/// was probed with its next request, and that one ended the connection. `poll_device`
/// (lib.rs) then sends stale readings for the failed block and the ones after it, but not
/// for the blocks already unanswered: their points get no reading at all in that poll (in
/// the fuzz input, in none of its three polls). Open: the fix is to take the points of
/// `unanswered` into `rest` in the `Failure::Transport` arm and after a failed
/// `conn.ensure`; these two tests pass with it.
#[tokio::test]
async fn an_unanswered_block_then_a_dropped_link_still_reports_every_point() {
    let got = two_blocks(
        |listener| {
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut req = [0u8; 260];
                        while let Ok(n) = s.read(&mut req).await {
                            if n < 12 {
                                return;
                            }
                            // Coil 0: answered under another transaction id (not ours);
                            // coil 100: the connection is closed.
                            if req[8..10] != [0, 0] {
                                return;
                            }
                            let tid = u16::from_be_bytes([req[0], req[1]]).wrapping_add(1);
                            let [t0, t1] = tid.to_be_bytes();
                            let frame = [t0, t1, 0, 0, 0, 4, req[6], 1, 1, 1];
                            if s.write_all(&frame).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            })
        },
        "1s",
    )
    .await;
    let first: Vec<&Reading> = got.iter().filter(|r| r.point.as_str() == "first").collect();
    assert_eq!(
        first.len(),
        1,
        "one reading of `first` in the poll; all: {got:?}"
    );
    assert!(
        matches!(first[0].quality, Quality::Stale(_)),
        "{:?}",
        first[0]
    );
}

/// The same through the other early return of `poll_device`: the first request times out
/// (plain TCP then drops the link, as a timeout may mean a half-open connection), and the
/// reconnect for the next request is refused. The points of the timed-out block get no
/// reading.
#[tokio::test]
async fn an_unanswered_block_then_a_refused_reconnect_still_reports_every_point() {
    let got = two_blocks(
        |listener| {
            tokio::spawn(async move {
                // One connection, never answered; then nothing listens: reconnects are refused.
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                drop(listener);
                let mut req = [0u8; 260];
                while let Ok(n) = s.read(&mut req).await {
                    if n == 0 {
                        return;
                    }
                }
            })
        },
        "200ms",
    )
    .await;
    let first: Vec<&Reading> = got.iter().filter(|r| r.point.as_str() == "first").collect();
    assert_eq!(
        first.len(),
        1,
        "one reading of `first` in the poll; all: {got:?}"
    );
    assert!(
        matches!(first[0].quality, Quality::Stale(_)),
        "{:?}",
        first[0]
    );
}
