//! Whether the secrets a config holds can be read by other users of the machine.
//!
//! A config file with a password written inline, readable by everyone (mode 0644, what an
//! editor or `cp` leaves), hands that password to every account and service on the gateway.
//! So does a `{ file = "…" }` secret whose file is readable by everyone. Group-readable is
//! fine: `root:fieldgate 0640` lets the service (group fieldgate) read it and nobody else.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::Value;
use figment::Figment;

/// Keys whose values are secrets, wherever they appear. `headers` holds a table of them.
const SECRET_KEYS: &[&str] = &[
    "password",
    "sas_key",
    "bearer_token",
    "token",
    "nwk_skey",
    "app_skey",
    "app_key",
];

/// Warnings about secrets in `file` (already read as `text`) that other users can read:
/// inline secrets in a file readable by all, and secret files readable by all. Empty when
/// the file cannot be parsed (the loader reports that) or on non-Unix systems.
pub fn exposed_secrets(file: &Path, text: &str) -> Vec<String> {
    let Ok(root) = Figment::from(Toml::string(text)).extract::<Value>() else {
        return Vec::new();
    };
    let mut inline = Vec::new();
    let mut files = Vec::new();
    walk(&root, "", false, &mut inline, &mut files);
    let mut warnings = Vec::new();
    if !inline.is_empty() {
        if let Some(mode) = readable_by_all(file) {
            warnings.push(format!(
                "{} is readable by every user (mode {mode:04o}) and holds secrets inline ({}): `chmod o-r {}` (owner root, group fieldgate, mode 0640 lets the service read it), or move them to {{ env = \"…\" }} or {{ file = \"…\" }}",
                file.display(),
                inline.join(", "),
                file.display()
            ));
        }
    }
    let base = file.parent().unwrap_or(Path::new("."));
    for (key, path) in files {
        let path = base.join(path);
        if let Some(mode) = readable_by_all(&path) {
            warnings.push(format!(
                "the secret file {} ({key} in {}) is readable by every user (mode {mode:04o}): `chmod o-r {}`",
                path.display(),
                file.display(),
                path.display()
            ));
        }
    }
    warnings
}

/// Collects the key paths of inline secrets and the files of `{ file = … }` secrets.
fn walk(
    v: &Value,
    at: &str,
    secret: bool,
    inline: &mut Vec<String>,
    files: &mut Vec<(String, PathBuf)>,
) {
    match v {
        Value::String(_, s) if secret && !s.is_empty() => inline.push(at.to_string()),
        Value::Dict(_, d) if secret => {
            if let Some(Value::String(_, f)) = d.get("file") {
                files.push((at.to_string(), PathBuf::from(f)));
            }
        }
        Value::Dict(_, d) => {
            for (k, child) in d {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if k == "headers" {
                    if let Value::Dict(_, h) = child {
                        for (name, hv) in h {
                            walk(hv, &format!("{path}.{name}"), true, inline, files);
                        }
                    }
                    continue;
                }
                walk(
                    child,
                    &path,
                    SECRET_KEYS.contains(&k.as_str()),
                    inline,
                    files,
                );
            }
        }
        Value::Array(_, items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{at}[{i}]"), secret, inline, files);
            }
        }
        _ => {}
    }
}

/// The file's permission bits when others may read it.
#[cfg(unix)]
fn readable_by_all(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o004 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn readable_by_all(_path: &Path) -> Option<u32> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn inline_secrets_in_a_world_readable_file_are_named_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = r#"
[http]
token = "tok-123456789012345"
[[uplinks]]
id = "cloud"
password = "hunter2-hunter2"
headers = { "X-Api-Key" = "k-abc", "X-Env" = { env = "K" } }
[[uplinks]]
id = "other"
password = { file = "mqtt.pass" }
[[adapters]]
id = "lora"
[[adapters.devices]]
app_key = "8f3a1c5e7b9d2f4a6c8e0b1d3f5a7c9e"
"#;
        let file = dir.path().join("site.toml");
        std::fs::write(&file, text).expect("write");
        let pass = dir.path().join("mqtt.pass");
        std::fs::write(&pass, "pw").expect("write");
        chmod(&file, 0o644);
        chmod(&pass, 0o604);
        let w = exposed_secrets(&file, text);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].contains("mode 0644")
                && w[0].contains(
                    "adapters[0].devices[0].app_key, http.token, uplinks[0].headers.X-Api-Key, uplinks[0].password"
                ),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("mqtt.pass (uplinks[1].password in"),
            "{}",
            w[1]
        );
        for secret in ["tok-1234", "hunter2", "k-abc", "8f3a1c5e"] {
            assert!(!w.concat().contains(secret), "a warning shows {secret}");
        }
        chmod(&file, 0o640);
        chmod(&pass, 0o600);
        assert_eq!(exposed_secrets(&file, text), Vec::<String>::new());
    }

    #[test]
    fn a_file_without_inline_secrets_may_be_world_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[[uplinks]]\nid = \"c\"\npassword = { env = \"MQTT_PASSWORD\" }\n";
        let file = dir.path().join("site.toml");
        std::fs::write(&file, text).expect("write");
        chmod(&file, 0o644);
        assert!(exposed_secrets(&file, text).is_empty());
    }
}
