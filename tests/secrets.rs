//! Secrets never appear in logs or in what the CLI prints (issue #10).
//!
//! Every secret a config can hold gets a distinctive value here, and the tests grep for each
//! one, and for the re-encodings a careless `Debug` or log line would produce (hex in either
//! case and byte order, a Rust byte-array `Debug`, base64, the bytes of a string as numbers):
//!
//! - `fieldgate check` on a valid site holding every kind of secret (inline, `{ env }`,
//!   `{ file }`), and on sites with mistakes next to or inside secret fields;
//! - `format!("{config:?}")` of a loaded [`Config`] and `Debug` of the LoRaWAN network state;
//! - the log of the real gateway, at `RUST_LOG=trace` and at the default level, while it
//!   delivers to a real Mosquitto that requires the password, to a real TLS server that
//!   checks the bearer token and two secret headers, serves its status endpoint behind its
//!   token, terminates ABP and OTAA LoRaWAN devices fed by the simulated packet forwarder,
//!   and is reloaded (a refused config, then a good one);
//! - `fieldgate status --json`, `GET /api/status` and `/metrics` of that gateway.
//!
//! Each test first checks that the secrets were really used (the broker accepted the
//! password, the server the token and headers, the device's MIC its keys), so an empty or
//! idle log cannot pass.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::mqtt::{free_port, Mosquitto, Subscriber};
use common::{fieldgate, free_udp_port, http, signal, wait_for, write};
use fieldgate::config::Config;
use fieldgate_lorawan::sim::{join_request, smart_pole_payload, Forwarder, SimDevice};

// ---- The secrets ------------------------------------------------------------------------

/// `[http] token` (inline).
const HTTP_TOKEN: &str = "S3cr3t-http-tok-Qw7Er9Ty";
/// MQTT `password` (from a `{ file }`).
const MQTT_PASSWORD: &str = "S3cr3t-mqtt-pw-Lk4Jh2Gf";
/// HTTPS `bearer_token` (from `{ env }`).
const BEARER: &str = "S3cr3t-bearer-Zx5Cv8Bn";
/// HTTPS header `X-Api-Key` (inline).
const API_KEY: &str = "S3cr3t-apikey-hdr-Mn3Bv6";
/// HTTPS header `X-Other` (from a `{ file }`).
const HEADER_FILE: &str = "S3cr3t-hdrfile-Pq1Wo0Ie";
/// HTTPS basic-auth `password` (inline).
const BASIC_PASSWORD: &str = "S3cr3t-basic-pw-Rt6Yu1Op";
/// ThingsBoard: `username` is the device's access token.
const TB_TOKEN: &str = "S3cr3tTbAccessTok9Gh5Jk";
/// Azure IoT Hub `sas_key`: base64 of `SAS_KEY_BYTES`.
const SAS_KEY: &str = "UzNjcjN0LWF6dXJlLXNhcy1rZXktYnl0ZXMtMDAx";
const SAS_KEY_BYTES: &str = "S3cr3t-azure-sas-key-bytes-001";
/// A secret that only ever appears in broken configs (a secret file's wrong content, a
/// number where a string belongs...).
const WRONG: &str = "S3cr3t-wrong-Vb2Nm4Qz";
/// A secret written as a bare number (a token or key without quotes).
const NUMBER: &str = "7319462850123456789";
/// A password in a url's userinfo.
const URL_PASSWORD: &str = "S3cr3t-url-pw-Hy7Uj8";

/// LoRaWAN keys, 16 bytes each, unique per field.
const NWK_SKEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const APP_SKEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const APP_KEY: &str = "c3a5e7f9b1d3f5a7c9e1b3d5f7a9c1e3";

const ABP_ADDR: u32 = 0x2601_1F07;
const ABP_EUI: &str = "70b3d57ed0000707";
const OTAA_EUI: u64 = 0x70B3_D57E_D000_0808;
const JOIN_EUI: u64 = 0x70B3_D57E_D000_0000;
const GATEWAY_EUI: u64 = 0x00AA_BBFF_FE00_0707;

fn key(hex: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

// ---- Needles: a secret and how it could show up ------------------------------------------

fn hex(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// What a leak of `bytes` could look like: hex (with and without separators, both byte
/// orders), the `Debug` of a byte array or slice in decimal and in hex, base64 (standard and
/// url-safe, with and without padding), as a number.
fn byte_needles(name: &str, bytes: &[u8]) -> Vec<(String, String)> {
    let mut rev = bytes.to_vec();
    rev.reverse();
    let dec = |b: &[u8]| b.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
    let mut n = vec![
        ("hex", hex(bytes, "")),
        ("hex with colons", hex(bytes, ":")),
        ("hex with spaces", hex(bytes, " ")),
        ("hex with dashes", hex(bytes, "-")),
        ("reversed hex", hex(&rev, "")),
        ("byte-array Debug", format!("[{}]", dec(bytes))),
        ("byte Debug (first 8)", dec(&bytes[..8])),
        ("reversed byte Debug (first 8)", dec(&rev[..8])),
        ("hex Debug {:x?}", format!("{bytes:x?}")),
        ("hex Debug {:02x?}", format!("{bytes:02x?}")),
        ("hex Debug {:#04x?}", format!("{bytes:#04x?}")),
        ("base64", base64(bytes, STD, true)),
        ("base64 unpadded", base64(bytes, STD, false)),
        ("base64url", base64(bytes, URL, false)),
    ];
    if bytes.len() == 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(bytes);
        n.push(("u128 big-endian", u128::from_be_bytes(b).to_string()));
        n.push(("u128 little-endian", u128::from_le_bytes(b).to_string()));
    }
    n.into_iter()
        .map(|(how, s)| (format!("{name} as {how}"), s))
        .collect()
}

/// A string secret: itself, without its common `S3cr3t-` prefix (a truncated or partial
/// print), and its bytes re-encoded.
fn string_needles(name: &str, s: &str) -> Vec<(String, String)> {
    let mut n = vec![(name.to_string(), s.to_string())];
    if let Some(rest) = s.strip_prefix("S3cr3t-") {
        n.push((format!("{name} without its prefix"), rest.to_string()));
    }
    n.extend(byte_needles(name, s.as_bytes()));
    n
}

/// Every secret of these tests and its re-encodings.
fn needles() -> Vec<(String, String)> {
    let mut n = Vec::new();
    for (name, s) in [
        ("the http token", HTTP_TOKEN),
        ("the MQTT password", MQTT_PASSWORD),
        ("the bearer token", BEARER),
        ("the X-Api-Key header", API_KEY),
        ("the X-Other header (from a file)", HEADER_FILE),
        ("the basic-auth password", BASIC_PASSWORD),
        ("the ThingsBoard access token", TB_TOKEN),
        ("the Azure sas_key", SAS_KEY),
        ("the Azure key's bytes", SAS_KEY_BYTES),
        ("a broken secret", WRONG),
        ("a url's password", URL_PASSWORD),
    ] {
        n.extend(string_needles(name, s));
    }
    n.push(("a secret written as a number".into(), NUMBER.into()));
    n.push((
        "basic auth's Authorization value".into(),
        base64(format!("site:{BASIC_PASSWORD}").as_bytes(), STD, true),
    ));
    for (name, k) in [
        ("nwk_skey", NWK_SKEY),
        ("app_skey", APP_SKEY),
        ("app_key", APP_KEY),
    ] {
        n.extend(byte_needles(name, &key(k)));
    }
    n
}

/// Lower case, without whitespace: `{:#?}` spreads an array over lines, hex may be upper case.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The first secret found in `text` (`what` says where the text came from) and where it is.
fn leak(what: &str, text: &str, needles: &[(String, String)]) -> Option<String> {
    let hay = squash(text);
    needles.iter().find_map(|(name, needle)| {
        let needle = squash(needle);
        let at = hay.find(&needle)?;
        let start = hay[..at]
            .char_indices()
            .rev()
            .nth(150)
            .map_or(0, |(i, _)| i);
        let end = (at + needle.len() + 150..=hay.len())
            .find(|i| hay.is_char_boundary(*i))
            .unwrap_or(hay.len());
        Some(format!(
            "{what} shows {name} (`{needle}`), around (whitespace removed):\n…{}…",
            &hay[start..end]
        ))
    })
}

/// Panics naming the first secret found in `text`.
fn assert_clean(what: &str, text: &str, needles: &[(String, String)]) {
    if let Some(why) = leak(what, text, needles) {
        panic!("{why}");
    }
}

// ---- Sites -------------------------------------------------------------------------------

/// Files a site refers to, written into its directory.
fn secret_files(dir: &Path) {
    write(dir, "mqtt.pass", &format!("{MQTT_PASSWORD}\n"));
    write(dir, "hdr.secret", &format!("{HEADER_FILE}\n"));
    let p = common::mqtt::pki(dir, "tls");
    for (from, to) in [
        (&p.ca, "ca.pem"),
        (&p.client_cert, "client.pem"),
        (&p.client_key, "client.key"),
    ] {
        std::fs::copy(from, dir.join(to)).expect("copy a PEM file");
    }
}

/// The base64 lines of the client key `secret_files` wrote: its secret material.
fn client_key_needles(dir: &Path) -> Vec<(String, String)> {
    let pem = std::fs::read_to_string(dir.join("client.key")).expect("client key");
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect();
    assert!(!body.is_empty(), "a PEM key");
    let mut n: Vec<(String, String)> = body
        .iter()
        .filter(|l| l.len() >= 24)
        .map(|l| ("a line of the client key file".to_string(), l.to_string()))
        .collect();
    n.push(("the client key file".into(), body.concat()));
    n
}

/// The `[[adapters]]` section of a LoRaWAN server on 127.0.0.1:`udp` (`dedup` its
/// `dedup_window`) with an ABP device
/// (`abp` are its key lines) and an OTAA device (`otaa` its key lines).
fn lorawan(udp: u16, dedup: &str, abp: &str, otaa: &str) -> String {
    format!(
        r#"
[[adapters]]
id = "lora"
type = "lorawan"
bind = "127.0.0.1:{udp}"
dedup_window = "{dedup}"
join_accept_delay = "1s"

[[adapters.devices]]
name = "abp-1"
dev_eui = "{ABP_EUI}"
activation = "abp"
dev_addr = "{ABP_ADDR:08x}"
{abp}
codec = "cayenne"

[[adapters.devices]]
name = "otaa-1"
dev_eui = "{OTAA_EUI:016x}"
activation = "otaa"
join_eui = "{JOIN_EUI:016x}"
{otaa}
codec = "cayenne"
"#
    )
}

fn abp_keys() -> String {
    format!("nwk_skey = \"{NWK_SKEY}\"\napp_skey = \"{APP_SKEY}\"")
}

fn otaa_key() -> String {
    format!("app_key = \"{APP_KEY}\"")
}

/// The sections of a site by name (ordered by name in the file).
type Sections = BTreeMap<&'static str, String>;

/// Sections of a valid site holding every kind of secret, by name, so a case can replace
/// one. `{dir}` is the site's directory.
fn sections(dir: &Path) -> Sections {
    let mut s = BTreeMap::new();
    s.insert(
        "gateway",
        format!(
            "[gateway]\nid = \"sec\"\ndata_dir = \"{}\"\n",
            dir.display()
        ),
    );
    s.insert(
        "http",
        format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\ntoken = \"{HTTP_TOKEN}\"\n",
            free_port()
        ),
    );
    s.insert(
        "lora",
        lorawan(free_udp_port(), "50ms", &abp_keys(), &otaa_key()),
    );
    s.insert(
        "mqtt",
        format!(
            r#"
[[uplinks]]
id = "broker"
type = "mqtt"
url = "mqtt://127.0.0.1:{}"
username = "gateway"
password = {{ file = "mqtt.pass" }}
"#,
            free_port()
        ),
    );
    s.insert(
        "thingsboard",
        format!(
            r#"
[[uplinks]]
id = "tb"
type = "mqtt"
preset = "thingsboard"
url = "mqtt://127.0.0.1:{}"
username = "{TB_TOKEN}"
"#,
            free_port()
        ),
    );
    s.insert(
        "azure",
        format!(
            r#"
[[uplinks]]
id = "azure"
type = "mqtt"
preset = "azure_iot_hub"
url = "mqtts://sec-hub.azure-devices.net:8883"
device_id = "sec-1"
sas_key = "{SAS_KEY}"
ca_file = "ca.pem"
"#
        ),
    );
    s.insert(
        "https",
        format!(
            r#"
[[uplinks]]
id = "ingest"
type = "https"
url = "https://127.0.0.1:{}/ingest"
bearer_token = {{ env = "SEC_BEARER" }}
headers = {{ "X-Api-Key" = "{API_KEY}", "X-Other" = {{ file = "hdr.secret" }} }}
ca_file = "ca.pem"
client_cert = "client.pem"
client_key = "client.key"
"#,
            free_port()
        ),
    );
    s.insert(
        "basic",
        format!(
            r#"
[[uplinks]]
id = "basic"
type = "https"
url = "https://127.0.0.1:{}/basic"
username = "site"
password = "{BASIC_PASSWORD}"
ca_file = "ca.pem"
"#,
            free_port()
        ),
    );
    s
}

/// The environment of `fieldgate check` and of the gateway: the bearer token.
const ENV: &[(&str, &str)] = &[("SEC_BEARER", BEARER)];

fn site_text(s: &Sections) -> String {
    s.values().cloned().collect::<Vec<_>>().join("\n")
}

/// `fieldgate check -c FILE` with `env`: exit code and stdout + stderr.
fn check(cfg: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = fieldgate()
        .args(["check", "-c", cfg.to_str().expect("utf-8")])
        .envs(env.iter().copied())
        .output()
        .expect("fieldgate check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

// ---- 1. `fieldgate check` of a valid site ------------------------------------------------

#[test]
fn check_of_a_valid_site_shows_none_of_its_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    secret_files(dir.path());
    let cfg = write(dir.path(), "site.toml", &site_text(&sections(dir.path())));
    let mut needles = needles();
    needles.extend(client_key_needles(dir.path()));

    use std::os::unix::fs::PermissionsExt as _;
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    for f in ["site.toml", "mqtt.pass", "hdr.secret"] {
        chmod(&dir.path().join(f), 0o600);
    }
    let (code, out) = check(&cfg, ENV);
    assert_eq!(code, Some(0), "the site is valid:\n{out}");
    assert!(out.contains(": ok (1 adapter(s), 5 uplink(s)"), "{out}");
    assert_clean("`fieldgate check` of a valid site", &out, &needles);

    // Readable by everyone: the warnings name the keys and files, not the values.
    for f in ["site.toml", "mqtt.pass", "hdr.secret"] {
        chmod(&dir.path().join(f), 0o644);
    }
    let (code, out) = check(&cfg, ENV);
    assert_eq!(code, Some(0), "{out}");
    for named in ["http.token", "nwk_skey", "mqtt.pass", "hdr.secret"] {
        assert!(out.contains(named), "the warning names {named}:\n{out}");
    }
    assert_clean("`fieldgate check` of a world-readable site", &out, &needles);
}

// ---- 2. `fieldgate check` of sites with mistakes next to or in secrets -------------------

/// One broken site: `change` edits the valid sections; `env` and `files` are extra;
/// `names` must all appear in the output (the key at fault, never the value).
struct Case {
    what: &'static str,
    change: Box<dyn Fn(&mut Sections)>,
    env: Vec<(&'static str, String)>,
    files: Vec<(&'static str, String)>,
    names: Vec<&'static str>,
}

fn case(
    what: &'static str,
    names: &[&'static str],
    change: impl Fn(&mut Sections) + 'static,
) -> Case {
    Case {
        what,
        change: Box::new(change),
        env: Vec::new(),
        files: Vec::new(),
        names: names.to_vec(),
    }
}

/// Replaces `from` by `to` in section `name`, which must contain it.
fn edit(s: &mut Sections, name: &str, from: &str, to: &str) {
    let text = s.get_mut(name).expect("a section");
    assert!(text.contains(from), "`{from}` is not in section {name}");
    *text = text.replacen(from, to, 1);
}

/// Adds a line after the line starting with `after` in section `name`.
fn add_after(s: &mut Sections, name: &str, after: &str, line: &str) {
    let text = s.get_mut(name).expect("a section");
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        out.push_str(l);
        out.push('\n');
        if !done && l.starts_with(after) {
            out.push_str(line);
            out.push('\n');
            done = true;
        }
    }
    assert!(done, "no line `{after}` in section {name}");
    *text = out;
}

fn mistakes() -> Vec<Case> {
    let short_nwk = &NWK_SKEY[..31];
    let nonhex_app = format!("{}zz", &APP_SKEY[..30]);
    let long_key = format!("{APP_KEY}00");
    vec![
        // Unknown keys beside secrets, and typos of secret keys holding the secret.
        case(
            "a typo of `password` holding the password, beside the real one",
            &["uplinks[", "pasword"],
            |s| {
                add_after(
                    s,
                    "basic",
                    "password",
                    &format!("pasword = \"{BASIC_PASSWORD}\""),
                )
            },
        ),
        case(
            "an unknown key holding a secret in an MQTT uplink",
            &["uplinks[", "passwd"],
            |s| add_after(s, "mqtt", "password", &format!("passwd = \"{WRONG}\"")),
        ),
        case(
            "an unknown key beside the http token",
            &["http.tokn"],
            |s| add_after(s, "http", "token", &format!("tokn = \"{WRONG}\"")),
        ),
        case(
            "a typo of `bearer_token` holding a token",
            &["uplinks[", "bearer_tokn"],
            |s| {
                add_after(
                    s,
                    "https",
                    "bearer_token",
                    &format!("bearer_tokn = \"{WRONG}\""),
                )
            },
        ),
        case(
            "an unknown key beside the LoRaWAN keys",
            &["adapters[0].devices[0].appskey"],
            |s| add_after(s, "lora", "app_skey", &format!("appskey = \"{APP_SKEY}\"")),
        ),
        case(
            "an unknown key in a secret's table",
            &["uplinks[", "password"],
            |s| {
                edit(
                    s,
                    "mqtt",
                    "password = { file = \"mqtt.pass\" }",
                    &format!("password = {{ file = \"mqtt.pass\", value = \"{WRONG}\" }}"),
                )
            },
        ),
        // Secrets of the wrong type.
        case(
            "a password written as a number",
            &["uplinks[", "password"],
            |s| {
                edit(
                    s,
                    "basic",
                    &format!("password = \"{BASIC_PASSWORD}\""),
                    &format!("password = {NUMBER}"),
                )
            },
        ),
        case(
            "a password written as a table without file or env",
            &["uplinks[", "password"],
            |s| {
                edit(
                    s,
                    "basic",
                    &format!("password = \"{BASIC_PASSWORD}\""),
                    &format!("password = {{ value = \"{BASIC_PASSWORD}\" }}"),
                )
            },
        ),
        case(
            "a password written as a list",
            &["uplinks[", "password"],
            |s| {
                edit(
                    s,
                    "basic",
                    &format!("password = \"{BASIC_PASSWORD}\""),
                    &format!("password = [\"{BASIC_PASSWORD}\"]"),
                )
            },
        ),
        case(
            "a bearer token written as a number",
            &["uplinks[", "bearer_token"],
            |s| {
                edit(
                    s,
                    "https",
                    "bearer_token = { env = \"SEC_BEARER\" }",
                    &format!("bearer_token = {NUMBER}"),
                )
            },
        ),
        case(
            "a sas_key written as a number",
            &["uplinks[", "sas_key"],
            |s| {
                edit(
                    s,
                    "azure",
                    &format!("sas_key = \"{SAS_KEY}\""),
                    &format!("sas_key = {NUMBER}"),
                )
            },
        ),
        case(
            "a ThingsBoard access token written as a number",
            &["uplinks[", "username"],
            |s| {
                edit(
                    s,
                    "thingsboard",
                    &format!("username = \"{TB_TOKEN}\""),
                    &format!("username = {NUMBER}"),
                )
            },
        ),
        case(
            "a header value written as a number",
            &["uplinks[", "X-Api-Key"],
            |s| {
                edit(
                    s,
                    "https",
                    &format!("\"X-Api-Key\" = \"{API_KEY}\""),
                    &format!("\"X-Api-Key\" = {NUMBER}"),
                )
            },
        ),
        case(
            "headers written as one string",
            &["uplinks[", "headers"],
            |s| {
                edit(
                    s,
                    "https",
                    &format!(
                        "headers = {{ \"X-Api-Key\" = \"{API_KEY}\", \"X-Other\" = {{ file = \"hdr.secret\" }} }}"
                    ),
                    &format!("headers = \"X-Api-Key: {API_KEY}\""),
                )
            },
        ),
        case(
            "a LoRaWAN key written as a number",
            &["adapters[0].devices[1].app_key"],
            |s| edit(s, "lora", &otaa_key(), &format!("app_key = {NUMBER}")),
        ),
        case(
            "a LoRaWAN key written as a secret table",
            &["adapters[0].devices[0].nwk_skey"],
            |s| {
                edit(
                    s,
                    "lora",
                    &format!("nwk_skey = \"{NWK_SKEY}\""),
                    "nwk_skey = { file = \"nwk.key\" }",
                )
            },
        ),
        // Malformed LoRaWAN keys.
        case(
            "a LoRaWAN key one digit short",
            &["adapters[0].devices[0].nwk_skey"],
            move |s| {
                edit(
                    s,
                    "lora",
                    &format!("nwk_skey = \"{NWK_SKEY}\""),
                    &format!("nwk_skey = \"{short_nwk}\""),
                )
            },
        ),
        case(
            "a LoRaWAN key with non-hex digits",
            &["adapters[0].devices[0].app_skey"],
            move |s| {
                edit(
                    s,
                    "lora",
                    &format!("app_skey = \"{APP_SKEY}\""),
                    &format!("app_skey = \"{nonhex_app}\""),
                )
            },
        ),
        case(
            "a LoRaWAN key one byte long",
            &["adapters[0].devices[1].app_key"],
            move |s| edit(s, "lora", &otaa_key(), &format!("app_key = \"{long_key}\"")),
        ),
        case(
            "ABP keys on an OTAA device and the AppKey on an ABP one",
            &[
                "adapters[0].devices[0].app_key",
                "adapters[0].devices[1].nwk_skey",
            ],
            |s| {
                let text = lorawan(free_udp_port(), "50ms", &otaa_key(), &abp_keys());
                s.insert("lora", text);
            },
        ),
        // Tokens that break their own rules.
        case(
            "an http token with a character it may not hold",
            &["http.token"],
            |s| {
                edit(
                    s,
                    "http",
                    &format!("token = \"{HTTP_TOKEN}\""),
                    &format!("token = \"{WRONG}!\""),
                )
            },
        ),
        case("an http token too short", &["http.token"], |s| {
            edit(
                s,
                "http",
                &format!("token = \"{HTTP_TOKEN}\""),
                "token = \"S3cr3t-short\"",
            )
        }),
        case(
            "a bearer token with a control character",
            &["uplinks[", "bearer_token"],
            |s| {
                edit(
                    s,
                    "https",
                    "bearer_token = { env = \"SEC_BEARER\" }",
                    &format!("bearer_token = \"{WRONG}\\u0007\""),
                )
            },
        ),
        case(
            "a bearer token beside a username and password",
            &["uplinks[", "bearer_token"],
            |s| {
                add_after(
                    s,
                    "basic",
                    "password",
                    &format!("bearer_token = \"{BEARER}\""),
                )
            },
        ),
        case(
            "a sas_key that is not base64",
            &["uplinks[", "sas_key"],
            |s| {
                edit(
                    s,
                    "azure",
                    &format!("sas_key = \"{SAS_KEY}\""),
                    &format!("sas_key = \"{WRONG}!\""),
                )
            },
        ),
        // Secrets that cannot be resolved.
        Case {
            env: Vec::new(),
            ..case(
                "a secret from an environment variable that is not set",
                &["uplinks[", "bearer_token", "SEC_BEARER"],
                |_| {},
            )
        },
        case(
            "a secret from a file that does not exist",
            &["uplinks[", "password", "no-such.pass"],
            |s| edit(s, "mqtt", "mqtt.pass", "no-such.pass"),
        ),
        Case {
            files: vec![("bearer.secret", format!("{WRONG}\u{7}tail\n"))],
            ..case(
                "a bearer token file whose content no header can carry",
                &["uplinks[", "bearer_token"],
                |s| {
                    edit(
                        s,
                        "https",
                        "bearer_token = { env = \"SEC_BEARER\" }",
                        "bearer_token = { file = \"bearer.secret\" }",
                    )
                },
            )
        },
        Case {
            files: vec![("hdr.secret", format!("{HEADER_FILE}\n{WRONG}\n"))],
            ..case(
                "a header file of two lines",
                &["uplinks[", "X-Other"],
                |_| {},
            )
        },
        Case {
            files: vec![("sas.key", format!("{WRONG}\n"))],
            ..case(
                "a sas_key file that is not base64",
                &["uplinks[", "sas_key"],
                |s| {
                    edit(
                        s,
                        "azure",
                        &format!("sas_key = \"{SAS_KEY}\""),
                        "sas_key = { file = \"sas.key\" }",
                    )
                },
            )
        },
        Case {
            files: vec![("client.key", format!("{WRONG}\n"))],
            ..case(
                "a client_key file that is not a key",
                &["uplinks[", "client"],
                |_| {},
            )
        },
        Case {
            files: vec![(
                "client.key",
                format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    base64(WRONG.as_bytes(), STD, true)
                ),
            )],
            ..case(
                "a client_key file holding a PEM block that is not a key",
                &["uplinks[", "client"],
                |_| {},
            )
        },
        // Overrides from the environment.
        Case {
            env: vec![("FIELDGATE_HTTP__TOKEN", format!("{WRONG}!"))],
            ..case(
                "an http token override with a character it may not hold",
                &["FIELDGATE_HTTP__TOKEN"],
                |_| {},
            )
        },
        Case {
            env: vec![("FIELDGATE_UPLINKS__9__PASSWORD", WRONG.to_string())],
            ..case(
                "a password override for an uplink that does not exist",
                &["FIELDGATE_UPLINKS__9__PASSWORD"],
                |_| {},
            )
        },
        // Credentials in a url.
        case("an MQTT url with a password", &["uplinks[", "url"], |s| {
            edit(
                s,
                "mqtt",
                "mqtt://127.0.0.1:",
                &format!("mqtt://gateway:{URL_PASSWORD}@127.0.0.1:"),
            )
        }),
        case(
            "an MQTT url with a password and no port",
            &["uplinks[", "url"],
            |s| {
                let text = s.get("mqtt").expect("mqtt").clone();
                let url = text
                    .lines()
                    .find(|l| l.starts_with("url = "))
                    .expect("url")
                    .to_string();
                edit(
                    s,
                    "mqtt",
                    &url,
                    &format!("url = \"mqtt://gateway:{URL_PASSWORD}@broker.invalid\""),
                )
            },
        ),
        case("an https url with a password", &["uplinks[", "url"], |s| {
            edit(
                s,
                "basic",
                "https://127.0.0.1:",
                &format!("https://site:{URL_PASSWORD}@127.0.0.1:"),
            )
        }),
        case(
            "an https url with a password and no host",
            &["uplinks[", "url"],
            |s| {
                let text = s.get("basic").expect("basic").clone();
                let url = text
                    .lines()
                    .find(|l| l.starts_with("url = "))
                    .expect("url")
                    .to_string();
                edit(
                    s,
                    "basic",
                    &url,
                    &format!("url = \"https://site:{URL_PASSWORD}@/basic\""),
                )
            },
        ),
        case(
            "an https url with a password and a bad port",
            &["uplinks[", "url"],
            |s| {
                let text = s.get("basic").expect("basic").clone();
                let url = text
                    .lines()
                    .find(|l| l.starts_with("url = "))
                    .expect("url")
                    .to_string();
                edit(
                    s,
                    "basic",
                    &url,
                    &format!("url = \"https://site:{URL_PASSWORD}@127.0.0.1:99999/basic\""),
                )
            },
        ),
        // A TOML syntax error on the line of a secret.
        case(
            "an unterminated secret string",
            &["site.toml", "TOML"],
            |s| {
                edit(
                    s,
                    "basic",
                    &format!("password = \"{BASIC_PASSWORD}\""),
                    &format!("password = \"{BASIC_PASSWORD}"),
                )
            },
        ),
        case("a secret with a bad escape", &["site.toml", "TOML"], |s| {
            edit(
                s,
                "basic",
                &format!("password = \"{BASIC_PASSWORD}\""),
                &format!("password = \"{BASIC_PASSWORD}\\q\""),
            )
        }),
    ]
}

/// Runs `fieldgate check` on each case; every problem found, for one report.
fn run_cases(cases: Vec<Case>) -> Vec<String> {
    let needles = needles();
    let mut failures = Vec::new();
    for c in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        secret_files(dir.path());
        // Every case's own client key is secret too.
        let mut own = needles.clone();
        own.extend(client_key_needles(dir.path()));
        for (name, text) in &c.files {
            write(dir.path(), name, text);
        }
        let mut s = sections(dir.path());
        (c.change)(&mut s);
        let cfg = write(dir.path(), "site.toml", &site_text(&s));
        let mut env: Vec<(&str, &str)> = c.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if !c.names.contains(&"SEC_BEARER") {
            env.extend_from_slice(ENV);
        }
        let (code, out) = check(&cfg, &env);
        if code != Some(2) {
            failures.push(format!(
                "{}: exit {code:?} instead of 2 (a refused config):\n{out}",
                c.what
            ));
            continue;
        }
        for name in &c.names {
            if !out.contains(name) {
                failures.push(format!(
                    "{}: the output does not name `{name}`:\n{out}",
                    c.what
                ));
            }
        }
        if !c.names.iter().any(|n| n.starts_with("FIELDGATE_")) && !out.contains("site.toml") {
            failures.push(format!(
                "{}: the output does not name the file:\n{out}",
                c.what
            ));
        }
        if let Some(why) = leak(c.what, &out, &own) {
            failures.push(format!("{why}\nfull output:\n{out}"));
        }
    }
    failures
}

#[test]
fn check_names_the_key_never_the_secret_for_mistakes_next_to_or_in_secrets() {
    let failures = run_cases(mistakes());
    assert!(
        failures.is_empty(),
        "{} problem(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `[http] token` written without quotes (in the file or in FIELDGATE_HTTP__TOKEN): serde's
/// type error would quote the number; the field is read by `Secret::deserialize_text`, which
/// names only the type.
#[test]
fn check_does_not_echo_an_http_token_written_as_a_number() {
    let cases = vec![
        case("the http token written as a number", &["http.token"], |s| {
            edit(
                s,
                "http",
                &format!("token = \"{HTTP_TOKEN}\""),
                &format!("token = {NUMBER}"),
            )
        }),
        Case {
            env: vec![("FIELDGATE_HTTP__TOKEN", NUMBER.to_string())],
            ..case(
                "an http token override that reads as a number",
                &["FIELDGATE_HTTP__TOKEN"],
                |_| {},
            )
        },
    ];
    let failures = run_cases(cases);
    assert!(
        failures.is_empty(),
        "{} problem(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---- Debug of a loaded config and of the LoRaWAN network ---------------------------------

#[test]
fn debug_of_a_loaded_config_and_of_the_lorawan_network_shows_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    secret_files(dir.path());
    let text = site_text(&sections(dir.path()));
    let file = dir.path().join("site.toml");
    let env: Vec<(String, String)> = ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_toml(&file, &text, &env).expect("the site is valid");
    let mut needles = needles();
    needles.extend(client_key_needles(dir.path()));

    // The secrets were resolved (so a Debug that hides them hides something).
    let mut lora = None;
    for a in &config.adapters {
        if let fieldgate::config::AdapterConfig::Lorawan(l) = &a.kind {
            lora = Some(l.as_ref().clone());
        }
    }
    let lora = lora.expect("the LoRaWAN adapter");
    assert_eq!(lora.devices[0].nwk_skey.as_deref(), Some(NWK_SKEY));
    assert_eq!(lora.devices[1].app_key.as_deref(), Some(APP_KEY));
    let http = config.http.as_ref().expect("[http]");
    assert_eq!(http.token.as_deref(), Some(HTTP_TOKEN));

    assert_clean("the config's Debug", &format!("{config:?}"), &needles);
    assert_clean(
        "the config's pretty Debug",
        &format!("{config:#?}"),
        &needles,
    );
    for u in &config.uplinks {
        assert_clean(
            &format!("the Debug of uplink {}", u.id),
            &format!("{:?}", u.kind),
            &needles,
        );
    }
    assert_clean(
        "the LoRaWAN section's Debug",
        &format!("{lora:#?}"),
        &needles,
    );
    for d in &lora.devices {
        let shown = format!("{d:?}");
        assert_clean("a LoRaWAN device's Debug", &shown, &needles);
        // Everything but the keys is still there, and the keys are marked.
        assert!(
            shown.contains(d.dev_eui.as_str()) && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    // The network built from it holds the ABP session and the OTAA root key as bytes.
    let net = fieldgate_lorawan::Network::new("lora".into(), &lora, Arc::default());
    let shown = format!("{net:#?}");
    assert!(
        shown.contains("abp-1") && shown.contains("otaa-1"),
        "{shown}"
    );
    assert_clean("the LoRaWAN network's Debug", &shown, &needles);

    // The simulator's devices (the demo and tests) do not print their keys either.
    let sim = SimDevice {
        dev_addr: ABP_ADDR,
        nwk_skey: key(NWK_SKEY),
        app_skey: key(APP_SKEY),
        fcnt: 0,
    };
    assert_clean("a simulated device's Debug", &format!("{sim:?}"), &needles);
}

// ---- The running gateway ------------------------------------------------------------------

/// A gateway whose log goes to a file (a trace log would fill a pipe nobody reads); killed
/// when dropped.
struct Running {
    child: Option<Child>,
    log: PathBuf,
}

impl Running {
    fn start(cfg: &Path, log: &Path, env: &[(&str, &str)]) -> Running {
        let file = std::fs::File::create(log).expect("log file");
        let child = fieldgate()
            .args(["run", "-c", cfg.to_str().expect("utf-8")])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("gateway starts");
        Running {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, a clean exit, and the whole log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let status = child.wait().expect("exits");
        let log = self.log();
        assert!(status.success(), "gateway exit {status}; log:\n{log}");
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the TLS server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    api_key: Option<String>,
    other: Option<String>,
    status: u16,
}

/// A real HTTPS server (rustls, the test PKI, client certificates required) that answers 200
/// only to requests carrying the right credentials, 401 to others, and records what it saw:
/// on `/basic` the basic-auth password, elsewhere the bearer token and both secret headers.
struct TlsServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsServer {
    fn start(rt: &tokio::runtime::Runtime, pki: &fieldgate::httpd::pki::Pki) -> TlsServer {
        let config = pki.server_config(true).expect("server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, log).await;
                    }
                });
            }
        });
        TlsServer { addr, seen }
    }

    /// Requests to `path` answered 200.
    fn accepted(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.status == 200 && s.path == path)
            .count()
    }
}

/// HTTP/1.1 with keep-alive: each request's head, its body by Content-Length, an empty answer.
async fn serve(
    mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        let seen = Seen {
            path: head.split(' ').nth(1).unwrap_or_default().to_string(),
            authorization: header("authorization"),
            api_key: header("x-api-key"),
            other: header("x-other"),
            status: 0,
        };
        let ok = if seen.path == "/basic" {
            let basic = base64(format!("site:{BASIC_PASSWORD}").as_bytes(), STD, true);
            seen.authorization.as_deref() == Some(&format!("Basic {basic}"))
        } else {
            seen.authorization.as_deref() == Some(&format!("Bearer {BEARER}"))
                && seen.api_key.as_deref() == Some(API_KEY)
                && seen.other.as_deref() == Some(HEADER_FILE)
        };
        let status = if ok { 200 } else { 401 };
        log.lock().expect("lock").push(Seen { status, ..seen });
        let answer = format!(
            "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\n\r\n",
            if ok { "OK" } else { "Unauthorized" }
        );
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The site the gateway runs: a simulator, the LoRaWAN devices, the status endpoint, an
/// MQTT uplink with a password from a file, a ThingsBoard uplink (its access token as
/// username) to the broker's anonymous listener, an HTTPS uplink with a bearer token from
/// the environment and two secret headers, and one with basic auth (both with a client
/// certificate). `interval` and `dedup` change across reloads (the
/// simulator and the LoRaWAN adapter restart);
/// `extra_mqtt` adds lines to the MQTT uplink.
#[allow(clippy::too_many_arguments)]
fn running_site(
    dir: &Path,
    http_port: u16,
    udp: u16,
    broker: &Mosquitto,
    https: SocketAddr,
    interval: &str,
    dedup: &str,
    lora_keys: (&str, &str),
    extra_mqtt: &str,
) -> String {
    format!(
        r#"
[gateway]
id = "sec-e2e"
data_dir = "{dir}"

[queue]
flush_interval = "20ms"

[http]
listen = "127.0.0.1:{http_port}"
token = "{HTTP_TOKEN}"

[[adapters]]
id = "sim"
type = "simulator"
[[adapters.devices]]
id = "pump"
[[adapters.devices.points]]
name = "strokes"
waveform = "counter"
interval = "{interval}"

{lora}

[[uplinks]]
id = "broker"
type = "mqtt"
url = "{url}"
username = "gateway"
password = {{ file = "mqtt.pass" }}
retry_min = "100ms"
retry_max = "1s"
{extra_mqtt}

[[uplinks]]
id = "tb"
type = "mqtt"
preset = "thingsboard"
url = "mqtt://127.0.0.1:{plain_port}"
username = "{TB_TOKEN}"
client_id = "fieldgate-sec-tb"
retry_min = "100ms"
retry_max = "1s"

[[uplinks]]
id = "ingest"
type = "https"
url = "https://127.0.0.1:{https_port}/ingest"
ca_file = "ca.pem"
client_cert = "client.pem"
client_key = "client.key"
bearer_token = {{ env = "SEC_BEARER" }}
headers = {{ "X-Api-Key" = "{API_KEY}", "X-Other" = {{ file = "hdr.secret" }} }}
gzip = true
retry_min = "100ms"
retry_max = "1s"

[[uplinks]]
id = "basic"
type = "https"
url = "https://127.0.0.1:{https_port}/basic"
ca_file = "ca.pem"
client_cert = "client.pem"
client_key = "client.key"
username = "site"
password = "{BASIC_PASSWORD}"
retry_min = "100ms"
retry_max = "1s"
"#,
        dir = dir.display(),
        lora = lorawan(udp, dedup, lora_keys.0, lora_keys.1),
        url = broker.url(),
        plain_port = broker.plain_port,
        https_port = https.port(),
    )
}

/// The OTAA session the gateway stored for `otaa-1` after its join: (DevAddr, NwkSKey,
/// AppSKey), read from the queue database the way an operator could.
fn otaa_session(db: &Path) -> Option<(u32, [u8; 16], [u8; 16])> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    let mut stmt = conn
        .prepare("SELECT value FROM adapter_state WHERE scope = 'lora'")
        .ok()?;
    let values: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    values.iter().find_map(|v| {
        let j: serde_json::Value = serde_json::from_slice(v).ok()?;
        let addr = u32::from_str_radix(j["dev_addr"].as_str()?, 16).ok()?;
        let nwk = key(j["nwk_skey"].as_str()?);
        let app = key(j["app_skey"].as_str()?);
        Some((addr, nwk, app))
    })
}

/// Messages the subscriber got on `topic`.
fn on_topic(sub: &Subscriber, topic: &str) -> usize {
    sub.messages().iter().filter(|(t, _)| t == topic).count()
}

/// The whole run: see the module documentation. `rust_log` is the gateway's RUST_LOG;
/// `json_log` logs as JSON (`FIELDGATE_LOG_FORMAT=json`), where fields are rendered differently.
fn a_running_gateway_keeps_its_secrets(rust_log: Option<&str>, json_log: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    secret_files(d);
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // A broker that takes the gateway only with the password.
    let passwd = d.join("passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c", passwd.to_str().expect("utf-8"), "gateway"])
        .arg(MQTT_PASSWORD)
        .status()
        .expect("mosquitto_passwd runs");
    assert!(made.success());
    let mut broker = Mosquitto::start(
        d,
        Some(&format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        )),
    );
    let sub = Subscriber::start(broker.plain_port, "#");
    let pki = fieldgate::httpd::pki::Pki::generate("sec").expect("PKI");
    write(d, "ca.pem", &pki.ca);
    write(d, "client.pem", &pki.client_cert);
    write(d, "client.key", &pki.client_key);
    let server = TlsServer::start(&rt, &pki);

    let http_port = free_port();
    let status: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let udp = free_udp_port();
    let keys = (abp_keys(), otaa_key());
    let site = |interval: &str, dedup: &str, extra: &str| {
        running_site(
            d,
            http_port,
            udp,
            &broker,
            server.addr,
            interval,
            dedup,
            (&keys.0, &keys.1),
            extra,
        )
    };
    let cfg = write(d, "site.toml", &site("100ms", "50ms", ""));
    let mut env: Vec<(&str, &str)> = ENV.to_vec();
    if let Some(level) = rust_log {
        env.push(("RUST_LOG", level));
    }
    if json_log {
        env.push(("FIELDGATE_LOG_FORMAT", "json"));
    }
    let gw = Running::start(&cfg, &d.join("gateway.log"), &env);

    // The secrets at work: the broker took the password, the server the token and headers.
    wait_for("a batch through the password-protected broker", 30, || {
        on_topic(&sub, "fieldgate/sec-e2e/sim/pump") > 0
    });
    wait_for("a ThingsBoard batch sent with the access token", 30, || {
        on_topic(&sub, "v1/gateway/telemetry") > 0
    });
    wait_for("batches accepted by the HTTPS server", 30, || {
        server.accepted("/ingest") > 0 && server.accepted("/basic") > 0
    });
    let refused: Vec<Seen> = server
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| s.status != 200)
        .cloned()
        .collect();
    assert!(
        refused.is_empty(),
        "every request carried the token and headers: {refused:?}"
    );

    // LoRaWAN: an ABP uplink sealed with the configured keys, an OTAA join with the AppKey,
    // and an uplink in the session it made.
    let mut fwd = rt
        .block_on(Forwarder::new(GATEWAY_EUI, ([127, 0, 0, 1], udp).into()))
        .expect("a forwarder socket");
    wait_for("PULL_ACK from the LoRaWAN adapter", 30, || {
        rt.block_on(fwd.pull())
    });
    let mut abp = SimDevice {
        dev_addr: ABP_ADDR,
        nwk_skey: key(NWK_SKEY),
        app_skey: key(APP_SKEY),
        fcnt: 0,
    };
    let frame = abp.uplink(2, &smart_pole_payload(1, 0), false);
    assert!(
        rt.block_on(fwd.push(&[frame], 1_000_000, -60.0, 5.0)),
        "PUSH_ACK"
    );
    let join = join_request(key(APP_KEY), JOIN_EUI, OTAA_EUI, 0x0707);
    assert!(
        rt.block_on(fwd.push(&[join], 2_000_000, -61.0, 5.0)),
        "PUSH_ACK"
    );
    let accept = rt
        .block_on(fwd.downlink(Duration::from_secs(10)))
        .expect("a Join Accept for the OTAA device");
    rt.block_on(fwd.tx_ack(accept.token, None)).expect("TX_ACK");
    let mut session = None;
    wait_for("the OTAA session in the queue database", 30, || {
        session = otaa_session(&d.join("queue.db"));
        session.is_some()
    });
    let (addr, nwk, app) = session.expect("session");
    let mut needles = needles();
    needles.extend(client_key_needles(d));
    needles.extend(byte_needles("the OTAA NwkSKey", &nwk));
    needles.extend(byte_needles("the OTAA AppSKey", &app));
    let mut otaa = SimDevice {
        dev_addr: addr,
        nwk_skey: nwk,
        app_skey: app,
        fcnt: 0,
    };
    let frame = otaa.uplink(2, &smart_pole_payload(2, 0), false);
    assert!(
        rt.block_on(fwd.push(&[frame], 4_000_000, -62.0, 5.0)),
        "PUSH_ACK"
    );
    wait_for("readings of both LoRaWAN devices at the broker", 30, || {
        on_topic(&sub, "fieldgate/sec-e2e/lora/abp-1") > 0
            && on_topic(&sub, "fieldgate/sec-e2e/lora/otaa-1") > 0
    });

    // The status endpoint: right, wrong and missing tokens.
    wait_for("the status endpoint", 30, || {
        std::net::TcpStream::connect(status).is_ok()
    });
    let mut served = Vec::new();
    for path in ["/", "/api/status", "/metrics", "/healthz", "/readyz"] {
        let (code, body) = http(status, "GET", path, Some(HTTP_TOKEN));
        assert!(code == 200 || path == "/readyz", "{path}: {code}\n{body}");
        served.push((path.to_string(), body));
        let (code, body) = http(status, "GET", path, Some("wrong-token-0123456789"));
        if !path.ends_with('z') {
            assert_eq!(code, 401, "{path} with a wrong token");
        }
        served.push((format!("{path} (wrong token)"), body));
        let (code, body) = http(status, "GET", &format!("{path}?token={HTTP_TOKEN}"), None);
        assert!(code == 200 || path == "/readyz", "{path}?token=: {code}");
        served.push((format!("{path}?token="), body));
    }
    let (code, body) = http(
        status,
        "GET",
        "/api/status?token=S3cr3t-wrong-Vb2Nm4Qz",
        None,
    );
    assert_eq!(code, 401);
    served.push(("/api/status with a wrong query token".into(), body));

    // Reloads: one refused (mistakes beside and in secrets), then a good one that restarts
    // the simulator and the LoRaWAN adapter.
    let bad_keys = (
        format!(
            "nwk_skey = \"{}\"\napp_skey = \"{APP_SKEY}x\"",
            &NWK_SKEY[..31]
        ),
        format!("app_key = \"{}zz\"", &APP_KEY[..30]),
    );
    let bad = running_site(
        d,
        http_port,
        udp,
        &broker,
        server.addr,
        "150ms",
        "60ms",
        (&bad_keys.0, &bad_keys.1),
        &format!("pasword = \"{MQTT_PASSWORD}\""),
    );
    write(d, "site.toml", &bad);
    signal(gw.pid(), "HUP");
    wait_for("the refused reload in the log", 30, || {
        gw.log().contains("reload refused")
    });
    let (_, after_refusal) = http(status, "GET", "/api/status", Some(HTTP_TOKEN));
    assert!(
        after_refusal.contains("refused"),
        "the status shows the refusal: {after_refusal}"
    );
    served.push(("/api/status after a refused reload".into(), after_refusal));
    // `fieldgate reload` gets the same refusal, with every problem, over the endpoint.
    let out = fieldgate()
        .args(["reload", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("fieldgate reload runs");
    let refusal = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{refusal}");
    for key in ["pasword", "nwk_skey", "app_skey", "app_key"] {
        assert!(refusal.contains(key), "the refusal names {key}: {refusal}");
    }
    served.push(("`fieldgate reload` of a refused config".into(), refusal));

    let before = on_topic(&sub, "fieldgate/sec-e2e/sim/pump");
    let accepted = (server.accepted("/ingest"), server.accepted("/basic"));
    let lora_before = (
        on_topic(&sub, "fieldgate/sec-e2e/lora/abp-1"),
        on_topic(&sub, "fieldgate/sec-e2e/lora/otaa-1"),
    );
    write(d, "site.toml", &site("150ms", "60ms", ""));
    signal(gw.pid(), "HUP");
    wait_for("the reload in the log", 30, || {
        gw.log().contains("config reloaded")
    });
    // The LoRaWAN adapter restarted with the keys from the file and the OTAA session from
    // its stored state: both devices are heard again.
    let mut t = 1;
    wait_for("both LoRaWAN devices heard after the reload", 30, || {
        let frames = [
            abp.uplink(2, &smart_pole_payload(1, t), false),
            otaa.uplink(2, &smart_pole_payload(2, t), false),
        ];
        let tmst = 10_000_000 * u32::try_from(t).expect("small");
        t += 1;
        rt.block_on(fwd.push(&frames, tmst, -60.0, 5.0));
        on_topic(&sub, "fieldgate/sec-e2e/lora/abp-1") > lora_before.0
            && on_topic(&sub, "fieldgate/sec-e2e/lora/otaa-1") > lora_before.1
    });
    // A broker restart: the gateway connects again, sending the password again.
    broker.restart(Duration::from_millis(300));
    let connects = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("connected to the MQTT broker")
                    && (l.contains(&format!("{} ", broker.url()))
                        || l.contains(&format!("{}\"", broker.url())))
            })
            .count()
    };
    wait_for("a second CONNECT with the password", 30, || {
        connects(&gw.log()) >= 2
    });
    wait_for("deliveries after the reload and the reconnect", 30, || {
        on_topic(&sub, "fieldgate/sec-e2e/sim/pump") > before + 2
            && server.accepted("/ingest") > accepted.0 + 2
            && server.accepted("/basic") > accepted.1 + 2
    });

    // `fieldgate status --json`, and the endpoint's answers after all that.
    let out = fieldgate()
        .args(["status", "--json", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("fieldgate status runs");
    let status_json = String::from_utf8_lossy(&out.stdout).to_string();
    let json: serde_json::Value = serde_json::from_str(&status_json)
        .unwrap_or_else(|_| panic!("--json is JSON: {status_json}"));
    assert_eq!(json["gateway"]["id"], "sec-e2e", "{status_json}");
    let lora_devices = json["adapters"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == "lora"))
        .map(|a| a["devices"].to_string())
        .unwrap_or_default();
    assert!(
        lora_devices.contains("abp-1") && lora_devices.contains("otaa-1"),
        "{status_json}"
    );
    served.push((
        "`fieldgate status --json`".into(),
        format!("{status_json}{}", String::from_utf8_lossy(&out.stderr)),
    ));
    let out = fieldgate()
        .args(["status", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("fieldgate status runs");
    served.push((
        "`fieldgate status`".into(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ));
    let (code, metrics) = http(status, "GET", "/metrics", Some(HTTP_TOKEN));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("fieldgate_uplink_delivered_total{uplink=\"broker\"}"),
        "{metrics}"
    );
    served.push(("/metrics at the end".into(), metrics));

    let log = gw.stop();
    assert!(
        log.contains("connected to the MQTT broker") && log.contains("device joined"),
        "the log shows the gateway at work:\n{log}"
    );
    if rust_log == Some("trace") {
        assert!(
            log.contains("TRACE") && log.contains("DEBUG"),
            "RUST_LOG=trace reached the gateway"
        );
    }
    if json_log {
        assert!(
            log.lines().all(|l| l.starts_with('{')),
            "a JSON log:\n{log}"
        );
    }
    assert_clean(
        &format!("the gateway's log (RUST_LOG={rust_log:?})"),
        &log,
        &needles,
    );
    for (what, text) in &served {
        assert!(
            !text.is_empty() || what.contains("wrong"),
            "{what} is empty"
        );
        assert_clean(what, text, &needles);
    }
}

#[test]
fn a_running_gateway_logs_no_secret_at_trace_level() {
    a_running_gateway_keeps_its_secrets(Some("trace"), false);
}

#[test]
fn a_running_gateway_logs_no_secret_at_the_default_level_in_json() {
    a_running_gateway_keeps_its_secrets(None, true);
}
