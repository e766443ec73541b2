//! A config file, loaded and validated the way `fieldgate check -c FILE` does it
//! (`Config::load` reads the file and calls what `Config::from_toml` calls): TOML parsing,
//! `FIELDGATE_*` environment overrides, every section and adapter kind, rules and alerts,
//! secrets, TLS files, and the cross-checks (unique ids, uplinks naming adapters, two
//! writers on one file); then, as `check` does, `exposed_secrets` (the warnings about
//! secrets other users can read).
//!
//! The input is the file's text (invalid UTF-8 is what `check` refuses before parsing, so
//! it is skipped). Text after the first NUL (which TOML never contains) is environment
//! overrides, one `NAME=value` a line, added to the secrets the example configs read.
//! The file is taken to be `config/fuzz.toml` in the repository, so the examples' relative
//! paths (`example-certs/ca.pem`) resolve.
//!
//! Checks besides "no panic": a refused config has at least one error and every error
//! says something (a non-empty message and display); an accepted one builds every adapter
//! (what the gateway does at start, so `check` never passes a config the gateway then
//! refuses) and its rules, and gives a queue path and options.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use fieldgate::config::Config;
use fieldgate::pipeline::adapter_factory;
use fieldgate::rules::Rules;
use libfuzzer_sys::fuzz_target;

fn config_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("config")
            .join("fuzz.toml")
    })
}

/// The secrets the example configs read (as in tests/cli.rs).
const ENV: [(&str, &str); 4] = [
    ("MQTT_PASSWORD", "example"),
    ("HISTORIAN_TOKEN", "example"),
    ("FLEET_API_TOKEN", "example"),
    (
        "AZURE_IOT_DEVICE_KEY",
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    ),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, overrides) = text.split_once('\0').unwrap_or((text, ""));
    let mut env: Vec<(String, String)> = ENV
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    env.extend(overrides.lines().filter_map(|l| {
        let (k, v) = l.split_once('=')?;
        Some((k.to_string(), v.to_string()))
    }));

    let loaded = Config::from_toml(config_file(), toml, &env);
    for w in fieldgate::config::exposed_secrets(config_file(), toml) {
        assert!(!w.trim().is_empty(), "an empty warning");
    }
    if std::env::var_os("CONFIG_FUZZ_DEBUG").is_some() {
        match &loaded {
            Ok(c) => eprintln!(
                "ok: {} adapter(s), {} uplink(s)",
                c.adapters.len(),
                c.uplinks.len()
            ),
            Err(e) => eprintln!("refused:\n{e}"),
        }
    }
    match loaded {
        Ok(config) => {
            for a in &config.adapters {
                if let Err(e) = adapter_factory(&config, a)() {
                    panic!(
                        "`check` accepts adapter `{}` ({}) but it does not build: {e}\n{toml}",
                        a.id,
                        a.kind.type_name()
                    );
                }
            }
            let rules = Rules::new(&config.rules, &config.alerts);
            std::hint::black_box(rules.is_empty());
            std::hint::black_box((config.queue_path(), config.queue_options()));
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refused config with no error");
            for e in &errors.0 {
                assert!(
                    !e.message.trim().is_empty(),
                    "an error without a message: {e:?}"
                );
                assert!(!e.to_string().trim().is_empty(), "{e:?}");
            }
            std::hint::black_box(errors.to_string());
        }
    }
});
