//! Helpers shared by the end-to-end tests: the real `fieldgate` binary and site configs in
//! temporary directories.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `fieldgate` binary cargo built for these tests.
pub fn fieldgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    // The tests control the environment the gateway sees.
    cmd.env_remove("RUST_LOG").env_remove("FIELDGATE_CONFIG");
    cmd
}

/// [`fieldgate`] without any `FIELDGATE_*` variable of the test's own environment: the
/// gateway takes every one as a config override (and refuses unknown keys), so settings of a
/// test itself, like the soak's `FIELDGATE_SOAK_SECS`, must not reach it.
pub fn fieldgate_isolated() -> Command {
    let mut cmd = fieldgate();
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FIELDGATE_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `fieldgate ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    fieldgate().args(args).output().expect("fieldgate runs")
}

/// The repository's root folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A site whose state lives in `dir`: one simulator adapter with `points` (TOML of
/// `[[adapters.devices.points]]` entries) and one file uplink `out.jsonl`.
pub fn site(dir: &Path, queue: &str, points: &str) -> PathBuf {
    let text = format!(
        r#"
[gateway]
id = "e2e"
data_dir = "{dir}"

[queue]
{queue}

[[adapters]]
id = "sim"
type = "simulator"
[[adapters.devices]]
id = "dev"
{points}

[[uplinks]]
id = "file"
type = "file"
path = "out.jsonl"
"#,
        dir = dir.display()
    );
    write(dir, "site.toml", &text)
}

/// Waits until `f` is true, or panics after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON objects in a JSON Lines file (empty if it does not exist).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// A gateway started by a test; SIGKILLed when dropped (a test that fails before [`stop`]
/// leaves no process behind).
pub struct Gateway(Option<std::process::Child>);

impl Gateway {
    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `fieldgate run -c cfg` with extra environment, its log on a pipe for [`stop`].
pub fn start_with_env(cfg: &Path, env: &[(&str, &str)]) -> Gateway {
    Gateway(Some(
        fieldgate()
            .args(["run", "-c", cfg.to_str().expect("utf-8")])
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("gateway starts"),
    ))
}

/// Starts `fieldgate run -c cfg`, its log on a pipe for [`stop`].
pub fn start(cfg: &Path) -> Gateway {
    start_with_env(cfg, &[])
}

/// Starts `fieldgate run -c cfg` with its log appended to the file `log` instead of a pipe
/// (for long runs, where nobody reads a pipe until the end and a full one would block the
/// gateway), and without the test's `FIELDGATE_*` variables ([`fieldgate_isolated`]). Stop
/// it with [`Gateway::terminate`] (or drop it: SIGKILL).
pub fn start_logged(cfg: &Path, log: &Path) -> Gateway {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the gateway's log file");
    Gateway(Some(
        fieldgate_isolated()
            .args(["run", "-c", cfg.to_str().expect("utf-8")])
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("gateway starts"),
    ))
}

impl Gateway {
    /// The exit status if the process has already exited (does not wait).
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops it with SIGTERM and waits up to `secs` seconds for it to exit. Returns its exit
    /// status, or `None` if it was still running then (it is SIGKILLed when dropped).
    pub fn terminate(mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let pid = self.pid();
        if let Some(status) = self.try_exit() {
            return Some(status);
        }
        signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                self.0 = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Stops a gateway from [`start`] with SIGTERM, checks it exited cleanly, and returns its log.
pub fn stop(mut gw: Gateway) -> String {
    let mut child = gw.0.take().expect("running");
    signal(child.id(), "TERM");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().expect("exits");
    assert!(status.success(), "gateway exit {status}; logs:\n{err}");
    err
}

/// Sends `signal` (like "TERM" or "KILL") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

pub mod mqtt;

/// A Modbus TCP device in the test, on a free port: unit 1 with a level of 2.5 m in input
/// register 0 (centimetres).
pub fn modbus_device(
    rt: &tokio::runtime::Runtime,
) -> (
    fieldgate_modbus::sim::SimServer,
    fieldgate_modbus::sim::TcpHandle,
    std::net::SocketAddr,
) {
    let server = fieldgate_modbus::sim::SimServer::new(&[1]);
    server.set_input(1, 0, &[250]);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let handle = {
        let _rt = rt.enter();
        server.serve_tcp(listener)
    };
    (server, handle, addr)
}

/// A site with a simulator (`points` TOML) and one MQTT uplink (`uplink` TOML body, without
/// `id`/`type`), its state in `dir`.
pub fn mqtt_site(dir: &Path, points: &str, uplink: &str) -> PathBuf {
    let sim = format!("[[adapters]]\nid = \"sim\"\ntype = \"simulator\"\n[[adapters.devices]]\nid = \"dev\"\n{points}");
    mqtt_site_with(dir, &sim, uplink)
}

/// A site with `adapters` (TOML `[[adapters]]` sections) and one MQTT uplink `cloud`
/// (`uplink` TOML body, without `id`/`type`), its state in `dir`.
pub fn mqtt_site_with(dir: &Path, adapters: &str, uplink: &str) -> PathBuf {
    let text = format!(
        r#"
[gateway]
id = "e2e"
data_dir = "{dir}"

[queue]
flush_interval = "20ms"

{adapters}

[[uplinks]]
id = "cloud"
type = "mqtt"
retry_min = "100ms"
retry_max = "2s"
{uplink}
"#,
        dir = dir.display()
    );
    write(dir, "site.toml", &text)
}

/// `fieldgate queue stats --json` for a config, or null if there is no queue yet.
pub fn try_queue_stats(cfg: &Path) -> serde_json::Value {
    serde_json::from_slice(&stats_output(cfg).stdout).unwrap_or(serde_json::Value::Null)
}

fn stats_output(cfg: &Path) -> Output {
    run(&[
        "queue",
        "stats",
        "-c",
        cfg.to_str().expect("utf-8"),
        "--json",
    ])
}

/// `fieldgate queue stats --json` for a config.
pub fn queue_stats(cfg: &Path) -> serde_json::Value {
    let out = stats_output(cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

/// A free UDP port on 127.0.0.1 (bound, read, released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// `fieldgate queue audit -c cfg --json`: the audit table, newest first.
pub fn audit(cfg: &Path) -> Vec<serde_json::Value> {
    let out = run(&[
        "queue",
        "audit",
        "-c",
        cfg.to_str().expect("utf-8"),
        "--json",
        "-n",
        "1000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
        .collect()
}

/// One HTTP/1.1 request to the status endpoint (a tiny client of the tests' own, so they do
/// not trust the code they test); the status code and body.
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the status endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (code, body.to_string())
}
