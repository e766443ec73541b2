//! The command line as a user meets it: `check`, `config template`, `queue`, exit codes.

mod common;

use common::{fieldgate, json_lines, repo, run, site, wait_for, write};

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_example_config_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("config")).expect("config/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // The examples read their secrets from the environment, as a site would.
        let out = fieldgate()
            .args(["check", "-c", path.to_str().expect("utf-8 path")])
            .env("MQTT_PASSWORD", "example")
            .env("HISTORIAN_TOKEN", "example")
            .env("FLEET_API_TOKEN", "example")
            .env(
                "AZURE_IOT_DEVICE_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            )
            .output()
            .expect("fieldgate runs");
        assert!(
            out.status.success(),
            "{} fails check:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
        checked += 1;
    }
    assert!(checked >= 6, "config/ holds the example sites");
}

#[test]
fn the_template_is_complete_and_valid() {
    let out = run(&["config", "template"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "fieldgate.toml",
        &String::from_utf8_lossy(&out.stdout),
    );
    let check = run(&["check", "-c", path.to_str().expect("utf-8")]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for section in [
        "[gateway]",
        "[log]",
        "[queue]",
        "[[adapters]]",
        "[[uplinks]]",
        "when_full",
        "durability",
    ] {
        assert!(text.contains(section), "template lacks {section}");
    }
}

/// One broken file per kind of mistake: `check` exits 2 with one line naming file, line and key.
#[test]
fn broken_configs_exit_2_with_one_line_per_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good =
        std::fs::read_to_string(repo().join("config/minimal.toml")).expect("minimal example");
    let cases = [
        ("unknown-key.toml", good.replace("[gateway]", "[gateway]\ncolour = \"red\""), "gateway.colour: unknown key `colour`"),
        ("wrong-type.toml", good.replace("increment = 7", "increment = \"seven\""), "adapters[0].devices[0].points[0].increment: expected an integer, found string \"seven\""),
        ("unknown-adapter.toml", good.replace("type = \"simulator\"", "type = \"simulater\""), "adapters[0].type: unknown adapter type `simulater`"),
        ("zero-duration.toml", good.replace("interval = \"15m\"", "interval = \"0s\""), "adapters[0].devices[0].points[0].interval: must be greater than zero"),
        ("negative-duration.toml", good.replace("interval = \"15m\"", "interval = \"-15m\""), "adapters[0].devices[0].points[0].interval: `-15m` is negative"),
        ("missing-file.toml", good.replace("waveform = \"counter\"", "waveform = \"replay\"\nfile = \"no-such-trace.txt\""), "adapters[0].devices[0].points[0].file: cannot read replay file"),
    ];
    for (name, text, expected) in &cases {
        assert_ne!(text, &good, "{name}: the replacement must apply");
        let path = write(dir.path(), name, text);
        let out = run(&["check", "-c", path.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let lines = stderr_lines(&out);
        let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{name}: {lines:?}");
        let prefix = format!("error: {}:", path.display());
        assert!(
            errors[0].starts_with(&prefix),
            "{name}: names the file and line: {}",
            errors[0]
        );
        assert!(
            errors[0].contains(expected),
            "{name}: {} should contain {expected}",
            errors[0]
        );
    }

    // LoRaWAN keys: a short key is named by its key path, and never echoed into the log.
    let poles = std::fs::read_to_string(repo().join("config/smart-pole.toml")).expect("smart-pole");
    let short = poles.replace(
        "nwk_skey = \"22222222222222222222222222222222\"",
        "nwk_skey = \"2222222222222222222222222222222\"",
    );
    assert_ne!(short, poles);
    let path = write(dir.path(), "short-key.toml", &short);
    let out = run(&["check", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    // (The example's MQTT password comes from the environment, unset here: a second error.)
    let errors: Vec<_> = lines.iter().filter(|l| l.contains("nwk_skey")).collect();
    assert_eq!(errors.len(), 1, "{lines:?}");
    assert!(
        errors[0].contains(
            "short-key.toml:54: adapters[0].devices[1].nwk_skey: has 31 hex digits; it needs 32"
        ),
        "{}",
        errors[0]
    );
    assert!(
        !errors[0].contains("2222222"),
        "the key leaked: {}",
        errors[0]
    );

    // All of them at once: every error is reported, one line each.
    let all = good
        .replace("[gateway]", "[gateway]\ncolour = \"red\"")
        .replace("increment = 7", "increment = \"seven\"")
        .replace("interval = \"15m\"", "interval = \"0s\"")
        + "\n[[adapters]]\nid = \"gps\"\ntype = \"simulater\"\n";
    let path = write(dir.path(), "all.toml", &all);
    let out = run(&["check", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 3, "{lines:?}");
    for key in [
        "gateway.colour",
        "adapters[0].devices[0].points[0].increment",
        "adapters[1].type",
    ] {
        assert!(
            errors.iter().any(|l| l.contains(key)),
            "{key} missing from {lines:?}"
        );
    }
    assert!(
        lines.last().is_some_and(|l| l.contains("3 problem(s)")),
        "{lines:?}"
    );
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = repo().join("config/minimal.toml");
    let out = fieldgate()
        .args(["check", "-c", path.to_str().expect("utf-8")])
        .env("FIELDGATE_QUEUE__PATH", dir.path().join("elsewhere.db"))
        .output()
        .expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("elsewhere.db"));
    let out = fieldgate()
        .args(["check", "-c", path.to_str().expect("utf-8")])
        .env("FIELDGATE_QUEUE__WHEN_FULL", "panic")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "environment variable FIELDGATE_QUEUE__WHEN_FULL: queue.when_full: unknown value `panic`"
    ));
}

#[test]
fn queue_commands_work_beside_a_running_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = site(
        dir.path(),
        "flush_interval = \"20ms\"",
        r#"
[[adapters.devices.points]]
name = "n"
waveform = "counter"
interval = "5ms"
"#,
    );
    let cfg = cfg.to_str().expect("utf-8").to_string();
    let mut child = fieldgate()
        .args(["run", "-c", &cfg])
        .spawn()
        .expect("gateway starts");
    let out = dir.path().join("out.jsonl");
    wait_for("readings in the file uplink", 30, || {
        json_lines(&out).len() >= 20
    });

    let stats = run(&["queue", "stats", "-c", &cfg, "--json"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    assert!(s["appended"].as_u64().expect("appended") >= 20);
    assert_eq!(s["uplinks"][0]["uplink"], "file");

    let text = run(&["queue", "stats", "-c", &cfg]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("uplink file"));
    let peek = run(&["queue", "peek", "-c", &cfg, "--uplink", "nope"]);
    assert!(!peek.status.success());
    assert!(String::from_utf8_lossy(&peek.stderr).contains("no uplink `nope`"));

    common::signal(child.id(), "TERM");
    let status = child.wait().expect("exits");
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}

#[test]
fn queue_stats_without_a_queue_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = site(
        dir.path(),
        "",
        "[[adapters.devices.points]]\nname = \"n\"\nwaveform = \"counter\"\ninterval = \"1s\"",
    );
    let out = run(&["queue", "stats", "-c", cfg.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no queue at"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_warns_when_others_can_read_inline_secrets() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "site.toml",
        &format!(
            r#"
[gateway]
id = "perm"
data_dir = "{}"
[[adapters]]
id = "sim"
type = "simulator"
[[adapters.devices]]
id = "d"
[[adapters.devices.points]]
name = "p"
waveform = "sine"
interval = "1s"
[[uplinks]]
id = "cloud"
type = "mqtt"
url = "mqtt://127.0.0.1:{port}"
username = "gw"
password = "Wr1tten-1nline-pw"
"#,
            dir.path().display(),
            // Only checked, never connected to; still no fixed port.
            port = common::mqtt::free_port()
        ),
    );
    let check = |mode: u32| {
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let out = run(&["check", "-c", cfg.to_str().expect("utf-8")]);
        assert!(out.status.success(), "a warning, not an error");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = check(0o644);
    assert!(
        err.contains("warning:")
            && err.contains("is readable by every user (mode 0644)")
            && err.contains("uplinks[0].password")
            && err.contains(cfg.to_str().expect("utf-8")),
        "{err}"
    );
    assert!(
        !err.contains("Wr1tten"),
        "the warning never shows the secret"
    );
    assert_eq!(check(0o640), "", "group-readable is fine");
}
