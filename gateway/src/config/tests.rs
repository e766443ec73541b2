use super::*;

const MINIMAL: &str = r#"
[[adapters]]
id = "sim"
type = "simulator"
[[adapters.devices]]
id = "d"
[[adapters.devices.points]]
name = "p"
waveform = "counter"
interval = "1s"

[[uplinks]]
id = "out"
type = "file"
path = "out.jsonl"
"#;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Loads `text` as `site.toml` and returns the error lines (empty if it is valid).
fn errors(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match Config::from_toml(Path::new("/etc/fieldgate/site.toml"), text, &env(vars)) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn check(text: &str, expected: &[&str]) {
    let got = errors(text, &[]);
    assert_eq!(got, expected, "\n--- config ---\n{text}");
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_toml(Path::new("/etc/fieldgate/site.toml"), MINIMAL, &[]).expect("valid");
    assert_eq!(c.gateway.id, "fieldgate");
    assert_eq!(c.queue_path(), Path::new("/var/lib/fieldgate/queue.db"));
    assert_eq!(c.queue.max_bytes, Some(ByteSize(512_000_000)));
    assert_eq!(c.queue.flush_interval, Duration::from_millis(200));
    assert_eq!(c.queue.when_full, WhenFull::DropOldest);
    assert_eq!(c.uplinks[0].batch_size, 1000);
    assert_eq!(c.uplinks[0].retry_max, Duration::from_secs(60));
    let UplinkConfig::File(f) = &c.uplinks[0].kind else {
        panic!("file uplink")
    };
    assert_eq!(c.resolve(&f.path), Path::new("/etc/fieldgate/out.jsonl"));
    assert_eq!(c.adapters[0].kind.type_name(), "simulator");
}

#[test]
fn template_is_valid() {
    let c = Config::from_toml(Path::new("/etc/fieldgate/fieldgate.toml"), TEMPLATE, &[])
        .expect("template valid");
    assert_eq!(c.gateway.id, "site-01");
    let kinds: Vec<&str> = c.adapters.iter().map(|a| a.kind.type_name()).collect();
    assert_eq!(kinds, ["simulator", "modbus", "serial", "lorawan"]);
    let uplinks: Vec<&str> = c.uplinks.iter().map(|u| u.kind.type_name()).collect();
    assert_eq!(uplinks, ["mqtt", "https", "file"]);
    // The rules and alert examples are live, so `fieldgate check` keeps them valid.
    assert_eq!(c.rules.len(), 4);
    assert_eq!(c.alerts.len(), 1);
    assert_eq!(c.commands.default_ttl, Duration::from_secs(60));
    let http = c.http.expect("the template serves the status page");
    assert_eq!(http.listen.to_string(), "127.0.0.1:8686");
    assert_eq!(http.token, None);
}

#[test]
fn the_http_section_is_optional_and_checked() {
    let c = Config::from_toml(Path::new("/etc/fieldgate/site.toml"), MINIMAL, &[]).expect("valid");
    assert_eq!(c.http, None, "no section, no endpoint");
    let token = "0123456789abcdef-._~";
    let c = Config::from_toml(
        Path::new("/etc/fieldgate/site.toml"),
        &format!("[http]\nlisten = \"0.0.0.0:80\"\ntoken = \"{token}\"\n{MINIMAL}"),
        &[],
    )
    .expect("valid");
    let http = c.http.expect("section");
    assert_eq!(http.token.as_deref(), Some(token));
    assert!(
        !format!("{http:?}").contains(token),
        "the token stays out of Debug output"
    );
    check(
        &format!("[http]\nlisten = \"localhost\"\ntoken = \"short\"\nport = 1\n{MINIMAL}"),
        &[
            "/etc/fieldgate/site.toml:2: http.listen: invalid socket address syntax",
            "/etc/fieldgate/site.toml:4: http.port: unknown key `port`; expected one of: listen, token",
        ],
    );
    check(
        &format!("[http]\nlisten = \"127.0.0.1:0\"\ntoken = \"has spaces in it, 16+\"\n{MINIMAL}"),
        &["/etc/fieldgate/site.toml:3: http.token: must be at least 16 characters of letters, digits and -._~ (try `openssl rand -hex 24`)"],
    );
}

#[test]
fn uplink_filters_take_globs_and_refuse_empty_lists() {
    let c = Config::from_toml(
        Path::new("/etc/fieldgate/site.toml"),
        &MINIMAL.replace(
            "[[uplinks]]\n",
            "[[uplinks]]\ndevices = [\"tank-*\"]\npoints = [\"level\", \"*_alarm\"]\n",
        ),
        &[],
    )
    .expect("valid");
    let f = &c.uplinks[0].filter;
    assert_eq!(f.devices, ["tank-*"]);
    assert_eq!(f.points, ["level", "*_alarm"]);
    assert!(f.adapters.is_empty());
    let err = Config::from_toml(
        Path::new("/etc/fieldgate/site.toml"),
        &MINIMAL.replace("[[uplinks]]\n", "[[uplinks]]\npoints = []\n"),
        &[],
    )
    .expect_err("an empty list carries nothing");
    assert!(
        err.to_string().contains("uplinks[0].points: an empty list"),
        "{err}"
    );
}

#[test]
fn single_mistakes_name_file_line_and_key() {
    check(
        &MINIMAL.replace("[[uplinks]]", "[queue]\nmax_byte = \"1GB\"\n\n[[uplinks]]"),
        &["/etc/fieldgate/site.toml:13: queue.max_byte: unknown key `max_byte`; did you mean `max_bytes`?"],
    );
    check(
        &MINIMAL.replace("interval = \"1s\"", "interval = \"0s\""),
        &["/etc/fieldgate/site.toml:10: adapters[0].devices[0].points[0].interval: must be greater than zero, like \"1s\""],
    );
    check(
        &MINIMAL.replace("interval = \"1s\"", "interval = \"-1s\""),
        &["/etc/fieldgate/site.toml:10: adapters[0].devices[0].points[0].interval: `-1s` is negative; durations must be positive, like \"5s\""],
    );
    check(
        &MINIMAL.replace("type = \"simulator\"", "type = \"modbuss\""),
        &["/etc/fieldgate/site.toml:4: adapters[0].type: unknown adapter type `modbuss`; expected one of: \"simulator\", \"modbus\", \"serial\", \"lorawan\""],
    );
    check(
        &format!("{MINIMAL}\n[queue]\nbatch_size = \"many\"\n"),
        &["/etc/fieldgate/site.toml:18: queue.batch_size: expected a whole number, found string \"many\""],
    );
    check(
        &MINIMAL.replace("waveform = \"counter\"", "waveform = \"replay\"\nfile = \"missing.txt\""),
        &["/etc/fieldgate/site.toml:10: adapters[0].devices[0].points[0].file: cannot read replay file /etc/fieldgate/missing.txt: No such file or directory (os error 2)"],
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
[gateway]
id = "site 1"

[queue]
flush_interval = "0s"
when_full = "drop_everything"
colour = "blue"

[[adapters]]
id = "sim"
type = "simulator"
[[adapters.devices]]
id = "d"
[[adapters.devices.points]]
name = "p"
waveform = "sine"
interval = 5
min = 10.0
max = 1.0

[[adapters]]
id = "sim"
type = "gps"

[[uplinks]]
id = "out"
type = "file"
adapters = ["sim", "nope"]
"#;
    let got = errors(text, &[]);
    let expected = [
        "/etc/fieldgate/site.toml:3: gateway.id: `site 1` may only hold letters, digits, `-`, `_` and `.` (it ends up in topics and file names)",
        "/etc/fieldgate/site.toml:8: queue.colour: unknown key `colour`; expected one of: path, durability, max_bytes, max_age, when_full, batch_size, flush_interval, channel_capacity",
        "/etc/fieldgate/site.toml:7: queue.when_full: unknown value `drop_everything`; expected one of: \"drop_oldest\", \"drop_newest\", \"block\"",
        "/etc/fieldgate/site.toml:18: adapters[0].devices[0].points[0].interval: a bare number (5) is ambiguous; write the unit, like \"5s\" or \"5ms\"",
        "/etc/fieldgate/site.toml:24: adapters[1].type: unknown adapter type `gps`; expected one of: \"simulator\", \"modbus\", \"serial\", \"lorawan\"",
        "/etc/fieldgate/site.toml:26: uplinks[0].path: missing required key `path`",
        "/etc/fieldgate/site.toml:23: adapters[1].id: id `sim` is already used by adapters[0]",
        "/etc/fieldgate/site.toml:29: uplinks[0].adapters[1]: no adapter has id `nope`; known: sim",        "/etc/fieldgate/site.toml:6: queue.flush_interval: must be greater than zero and at most 60s, like \"200ms\"",
    ];
    for line in &expected {
        assert!(
            got.contains(&line.to_string()),
            "missing:\n  {line}\ngot:\n  {}",
            got.join("\n  ")
        );
    }
    assert_eq!(got.len(), expected.len(), "got:\n  {}", got.join("\n  "));
}

#[test]
fn environment_overrides_and_blames_the_variable() {
    let c = Config::from_toml(
        Path::new("/etc/fieldgate/site.toml"),
        MINIMAL,
        &env(&[
            ("FIELDGATE_QUEUE__MAX_BYTES", "2GB"),
            ("FIELDGATE_GATEWAY__ID", "tank-farm-3"),
            ("FIELDGATE_UPLINKS__0__PATH", "/tmp/x.jsonl"),
            ("FIELDGATE_CONFIG", "/ignored.toml"),
            ("OTHER", "x"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.queue.max_bytes, Some(ByteSize(2_000_000_000)));
    assert_eq!(c.gateway.id, "tank-farm-3");
    let UplinkConfig::File(f) = &c.uplinks[0].kind else {
        panic!("file uplink")
    };
    assert_eq!(f.path, Path::new("/tmp/x.jsonl"));

    assert_eq!(
        errors(MINIMAL, &[("FIELDGATE_QUEUE__FLUSH_INTERVAL", "soon")]),
        ["environment variable FIELDGATE_QUEUE__FLUSH_INTERVAL: queue.flush_interval: `soon` is not a duration (expected number at 0); write it like \"500ms\", \"5s\", \"10m\", \"2h\" or \"7d\""]
    );
    assert_eq!(
        errors(MINIMAL, &[("FIELDGATE_UPLINKS__3__PATH", "x")]),
        ["environment variable FIELDGATE_UPLINKS__3__PATH: uplinks[3].path: there is no entry 3 to override (the file has 1)"]
    );
}

#[test]
fn broken_toml_and_missing_files_are_one_clear_line() {
    let got = errors("[queue\nmax_bytes = 1", &[]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("/etc/fieldgate/site.toml:1: (top level): not valid TOML"),
        "{got:?}"
    );
    let missing = Config::load(Path::new("/nonexistent/site.toml"), &[]).expect_err("missing");
    assert_eq!(missing.0.len(), 1);
    assert!(
        missing.to_string().contains("cannot read the config file"),
        "{missing}"
    );
}

#[test]
fn empty_config_says_what_is_missing() {
    check(
        "",
        &[
            "/etc/fieldgate/site.toml: adapters: no adapters configured; add an [[adapters]] section (see `fieldgate config template`)",
            "/etc/fieldgate/site.toml: uplinks: no uplinks configured; add an [[uplinks]] section (see `fieldgate config template`)",
        ],
    );
}

#[test]
fn key_paths_parse_and_print() {
    let p = KeyPath::default()
        .key("adapters")
        .index(0)
        .join_str("devices[1].points[2].interval");
    assert_eq!(p.to_string(), "adapters[0].devices[1].points[2].interval");
}

/// Regression: a typo at the top level made the whole file look empty, so `check` reported
/// "no adapters configured" for a file full of them and skipped every other section.
#[test]
fn a_top_level_typo_does_not_hide_the_rest() {
    let got = errors(
        &format!("{MINIMAL}\n[queu]\nbatch_size = 5\n[queue]\nbatch_size = 0\n"),
        &[],
    );
    assert_eq!(
        got,
        [
            "/etc/fieldgate/site.toml:17: queu: unknown key `queu`; did you mean `queue`?",
            "/etc/fieldgate/site.toml:20: queue.batch_size: must be between 1 and 100000, not 0",
        ]
    );
    let got = errors(MINIMAL, &[("FIELDGATE_QUEU__BATCH_SIZE", "5")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("environment variable FIELDGATE_QUEU__BATCH_SIZE: queu: unknown key"),
        "{got:?}"
    );
}

#[test]
fn uplink_entries_suggest_their_common_keys_and_refuse_empty_filters() {
    let got = errors(
        &MINIMAL.replace(
            "path = \"out.jsonl\"",
            "path = \"out.jsonl\"\nbatch_sise = 10\nadapters = []",
        ),
        &[],
    );
    assert!(
        got.iter().any(|l| l.contains(
            "uplinks[0].batch_sise: unknown key `batch_sise`; did you mean `batch_size`?"
        )),
        "{got:?}"
    );
    let got = errors(
        &MINIMAL.replace(
            "path = \"out.jsonl\"",
            "path = \"out.jsonl\"\nadapters = []",
        ),
        &[],
    );
    assert!(
        got.iter()
            .any(|l| l.contains("uplinks[0].adapters: an empty list would carry nothing")),
        "{got:?}"
    );
}

#[test]
fn two_writers_on_one_file_are_refused() {
    let dup =
        format!("{MINIMAL}\n[[uplinks]]\nid = \"again\"\ntype = \"file\"\npath = \"out.jsonl\"\n");
    let got = errors(&dup, &[]);
    assert_eq!(got, ["/etc/fieldgate/site.toml:20: uplinks[1].path: /etc/fieldgate/out.jsonl is already written by uplinks[0].path"]);
    let into_queue = MINIMAL.replace(
        "path = \"out.jsonl\"",
        "path = \"/var/lib/fieldgate/queue.db\"",
    );
    let got = errors(&into_queue, &[]);
    assert!(
        got[0].contains(
            "uplinks[0].path: /var/lib/fieldgate/queue.db is already written by queue.path"
        ),
        "{got:?}"
    );
}

#[test]
fn type_names_are_said_in_words() {
    let got = errors(&format!("gateway = 5\n{MINIMAL}"), &[]);
    assert!(got[0].contains("gateway: expected a table"), "{got:?}");
    let got = errors(MINIMAL, &[("FIELDGATE_GATEWAY__ID", "1234")]);
    assert!(got[0].contains("quote it"), "{got:?}");
}
