//! The operations side, end to end with the real binary: the local status endpoint (metrics,
//! probes, JSON, page, token), `fieldgate status`, and hot reload (SIGHUP and
//! `fieldgate reload`) against a real Modbus TCP server.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::mqtt::free_port;
use common::{fieldgate, http, signal, start, stop, wait_for, write};

const TOKEN: &str = "s3cret-token-0123456789";

fn status_json(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = http(addr, "GET", "/api/status", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON status")
}

/// The value of the sample `line_start` (like `fieldgate_queue_depth`) in a metrics text.
fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

/// A site with a simulator sampling every `every` and a file uplink, the status endpoint on
/// `port` with [`TOKEN`].
fn sim_site(dir: &Path, port: u16, every: &str, extra: &str) -> std::path::PathBuf {
    write(
        dir,
        "site.toml",
        &format!(
            r#"
[gateway]
id = "ops-e2e"
data_dir = "{dir}"

[http]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[[adapters]]
id = "pumps"
type = "simulator"
[[adapters.devices]]
id = "pump-1"
[[adapters.devices.points]]
name = "pressure"
unit = "bar"
waveform = "sine"
interval = "{every}"
min = 1.0
max = 5.0
period = "60s"

{extra}

[[uplinks]]
id = "archive"
type = "file"
path = "out.jsonl"
"#,
            dir = dir.display()
        ),
    )
}

#[test]
fn the_status_endpoint_serves_probes_metrics_json_and_the_page_behind_its_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = sim_site(dir.path(), port, "100ms", "");
    let gw = start(&cfg);
    wait_for("the status endpoint", 30, || {
        std::net::TcpStream::connect(addr).is_ok()
    });

    // The probes answer without the token; everything else needs it.
    assert_eq!(http(addr, "GET", "/healthz", None), (200, "alive\n".into()));
    wait_for("readiness (the file uplink delivered)", 30, || {
        http(addr, "GET", "/readyz", None).0 == 200
    });
    for path in ["/", "/api/status", "/metrics"] {
        let (code, body) = http(addr, "GET", path, None);
        assert_eq!(code, 401, "{path} without the token: {body}");
        let (code, _) = http(addr, "GET", path, Some("wrong-token-0123456789"));
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    let (code, _) = http(addr, "GET", &format!("/api/status?token={TOKEN}"), None);
    assert_eq!(code, 200, "a browser passes the token in the query");
    assert_eq!(http(addr, "DELETE", "/metrics", Some(TOKEN)).0, 405);
    // A reload is not a simple request: a form on another web site cannot send it.
    let (code, body) = http(addr, "POST", "/api/reload", Some(TOKEN));
    assert_eq!(code, 403, "{body}");
    assert_eq!(http(addr, "GET", "/nope", Some(TOKEN)).0, 404);

    // The page is one self-contained document.
    let (code, page) = http(addr, "GET", "/", Some(TOKEN));
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>") && page.contains("api/status"));
    for external in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(
            !page.contains(external),
            "the page must not load {external}…"
        );
    }

    // Metrics move as readings flow and are delivered.
    let (code, first) = http(addr, "GET", "/metrics", Some(TOKEN));
    assert_eq!(code, 200);
    let readings = |t: &str| metric(t, "fieldgate_adapter_readings_total{adapter=\"pumps\"}");
    let delivered = |t: &str| metric(t, "fieldgate_uplink_delivered_total{uplink=\"archive\"}");
    let before = readings(&first).expect("adapter readings");
    wait_for("more readings and deliveries", 30, || {
        let (_, now) = http(addr, "GET", "/metrics", Some(TOKEN));
        readings(&now).is_some_and(|r| r >= before + 10.0)
            && delivered(&now).is_some_and(|d| d >= before + 5.0)
    });
    let (_, m) = http(addr, "GET", "/metrics", Some(TOKEN));
    for line in [
        "fieldgate_adapter_up{adapter=\"pumps\"} 1",
        "fieldgate_uplink_connected{uplink=\"archive\"} 1",
        "fieldgate_alive 1",
        "fieldgate_ready 1",
        "fieldgate_queue_dropped_total{reason=\"drop_oldest\"} 0",
    ] {
        assert!(m.lines().any(|l| l == line), "missing `{line}` in\n{m}");
    }
    assert!(metric(&m, "fieldgate_queue_file_bytes").is_some_and(|b| b > 0.0));
    assert!(metric(&m, "fieldgate_uplink_lag_seconds{uplink=\"archive\"}").is_some());

    // The JSON carries the device's last value and quality.
    let s = status_json(addr);
    assert_eq!(s["gateway"]["id"], "ops-e2e");
    let point = &s["adapters"][0]["devices"][0]["points"][0];
    assert_eq!(point["point"], "pressure");
    assert_eq!(point["unit"], "bar");
    assert_eq!(point["quality"], "good");
    let v = point["value"].as_f64().expect("a number");
    assert!((1.0..=5.0).contains(&v), "{v}");

    // `fieldgate status` prints the same for a terminal, and exits 0 when ready.
    let out = fieldgate()
        .args(["status", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "gateway ops-e2e — ok",
        "pumps",
        "pump-1",
        "pressure",
        "bar",
        "archive",
        "connected",
        "Queue",
        "Throughput",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    let out = fieldgate()
        .args(["status", "--json", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("status runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(json["uplinks"][0]["id"], "archive");

    let log = stop(gw);
    assert!(!log.contains(TOKEN), "the token must not be logged:\n{log}");

    // A stopped gateway: `status` says nobody answers, and fails.
    let out = fieldgate()
        .args(["status", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("status runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no gateway answers"));
}

fn tank(addr: SocketAddr) -> String {
    format!(
        r#"
[[adapters]]
id = "tanks"
type = "modbus"
transport = "tcp"
address = "{addr}"
interval = "200ms"
[[adapters.devices]]
id = "tank-1"
unit = 1
[[adapters.devices.points]]
name = "level"
address = "30001"
scale = 0.01
unit = "m"
"#
    )
}

const WELL: &str = r#"
[[adapters]]
id = "well"
type = "simulator"
[[adapters.devices]]
id = "well-1"
[[adapters.devices.points]]
name = "depth"
waveform = "counter"
interval = "100ms"
"#;

#[test]
fn reload_applies_a_valid_config_keeps_unchanged_adapters_connected_and_refuses_a_bad_one() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (_server, device, modbus) = common::modbus_device(&rt);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = sim_site(dir.path(), port, "100ms", &tank(modbus));
    let cfg_s = cfg.to_str().expect("utf-8").to_string();
    let gw = start(&cfg);
    wait_for("tank readings on the status page", 30, || {
        std::net::TcpStream::connect(addr).is_ok()
            && status_json(addr)["adapters"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|a| a["id"] == "tanks" && a["readings"].as_u64() > Some(2))
            })
    });
    assert_eq!(device.connections(), 1);

    // 1. SIGHUP with a new adapter, a changed simulator and a rule: the Modbus adapter,
    // unchanged, keeps its one connection.
    let pid = gw.pid();
    sim_site(
        dir.path(),
        port,
        "150ms",
        &format!(
            "{}\n{WELL}\n[[rules]]\nadapter = \"well\"\npoint = \"depth\"\nrename = \"depth_m\"\n",
            tank(modbus)
        ),
    );
    signal(pid, "HUP");
    wait_for("the reload to be applied", 30, || {
        status_json(addr)["reload"]["ok"] == true
    });
    let s = status_json(addr);
    let message = s["reload"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(message.contains("added adapter well"), "{message}");
    assert!(message.contains("restarted adapter pumps"), "{message}");
    assert!(message.contains("1 adapter(s) unchanged"), "{message}");
    assert!(message.contains("rules and alerts replaced"), "{message}");
    wait_for(
        "renamed readings of the new adapter in the archive",
        30,
        || {
            common::json_lines(&dir.path().join("out.jsonl"))
                .iter()
                .any(|r| r["adapter"] == "well" && r["point"] == "depth_m")
        },
    );
    let tank_reads = status_json(addr)["adapters"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == "tanks").cloned())
        .expect("tanks");
    assert_eq!(tank_reads["state"], "running");
    assert_eq!(
        device.connections(),
        1,
        "an unchanged adapter keeps its connection"
    );

    // 2. A config with a typo: the gateway refuses it, `fieldgate reload` prints why (the key
    // and the file) and exits 2, and the running config stays.
    let good = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        good.replace("interval = \"150ms\"", "intervall = \"150ms\""),
    )
    .expect("write");
    let out = fieldgate()
        .args(["reload", "-c", &cfg_s])
        .output()
        .expect("reload runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("intervall") && err.contains("site.toml"),
        "{err}"
    );
    assert!(err.contains("not reloaded"), "{err}");
    // SIGHUP with the same file: refused too, and reported on the page.
    signal(pid, "HUP");
    wait_for("the refusal on the status page", 30, || {
        status_json(addr)["reload"]["ok"] == false
    });
    let s = status_json(addr);
    let why = s["reload"]["message"].as_str().expect("message");
    assert!(
        why.contains("refused") && why.contains("intervall"),
        "{why}"
    );
    let before = s["adapters"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == "well").cloned())
        .expect("well")["readings"]
        .as_u64()
        .expect("n");
    wait_for("the old config to keep running", 30, || {
        status_json(addr)["adapters"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["id"] == "well").cloned())
            .is_some_and(|w| w["readings"].as_u64() > Some(before + 5))
    });

    // 3. `fieldgate reload` with a fixed file removes the well through the endpoint.
    std::fs::write(&cfg, good.replace(WELL, "")).expect("write");
    let out = fieldgate()
        .args(["reload", "-c", &cfg_s])
        .output()
        .expect("reload runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("removed adapter well"), "{said}");
    let s = status_json(addr);
    assert!(s["adapters"]
        .as_array()
        .is_some_and(|a| a.iter().all(|a| a["id"] != "well")));
    assert_eq!(device.connections(), 1);

    let log = stop(gw);
    assert!(
        log.contains("config reloaded") && log.contains("reload refused"),
        "{log}"
    );
}

/// Debian's Chromium (`apt-get install chromium`; `.ci/run` installs it), or
/// `FIELDGATE_CHROMIUM`.
fn chromium() -> String {
    let path = std::env::var("FIELDGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).exists(),
        "the status page test needs a real browser: install Debian's chromium (apt-get install chromium) or set FIELDGATE_CHROMIUM"
    );
    path
}

/// Runs headless Chromium on `url` with `args` (the flags this machine's closed network
/// needs, a fresh profile, and a virtual-time budget for the page's first fetches).
fn headless(url: &str, args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().expect("profile dir");
    std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs")
}

#[test]
fn the_status_page_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let cfg = sim_site(dir.path(), port, "100ms", "");
    let gw = start(&cfg);
    wait_for("two throughput samples (one every 5 s)", 60, || {
        std::net::TcpStream::connect(addr).is_ok()
            && status_json(addr)["history"]
                .as_array()
                .is_some_and(|h| h.len() >= 2)
    });
    let url = format!("http://{addr}/?token={TOKEN}");

    // The DOM after the page's script ran: the same data as the JSON, rendered.
    let out = headless(&url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        // Attributes in double quotes are what the script rendered (its source uses single).
        "<tr data-adapter=\"pumps\">",
        "<span class=\"badge ok\">running</span>",
        "<tr data-uplink=\"archive\">",
        "<span class=\"badge ok\">connected</span>",
        "<span id=\"health\" class=\"badge ok\">ok</span>",
        "pump-1",
        "pressure</td>",
        " bar<",
        "<td class=\"q-good\" title=\"\">good</td>",
        "ops-e2e",
        // The chart: both series drawn.
        "<polyline fill=\"none\" stroke=\"#2563eb\"",
        "<polyline fill=\"none\" stroke=\"#16a34a\"",
    ] {
        assert!(
            dom.contains(needle),
            "missing `{needle}` in the rendered page:\n{dom}"
        );
    }
    assert!(
        dom.contains("id=\"error\" style=\"display: none;\""),
        "no error banner:\n{dom}"
    );

    // A wrong token: the browser gets the refusal, not the page.
    let out = headless(&format!("http://{addr}/?token=nope"), &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("a bearer token is needed") && !dom.contains("pump-1"),
        "the page is refused with a wrong token:\n{dom}"
    );

    // A screenshot, for a person to look at (FIELDGATE_SCREENSHOT keeps it).
    let shot = std::env::var("FIELDGATE_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("status-page.png"));
    let out = headless(
        &url,
        &[
            "--window-size=1280,1000",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    stop(gw);
}
