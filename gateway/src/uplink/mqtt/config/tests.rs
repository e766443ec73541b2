use super::*;

fn section(text: &str) -> MqttUplinkConfig {
    MqttUplinkConfig::from_toml(text).expect("section parses")
}

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn ok(text: &str) -> MqttSettings {
    section(text)
        .settings(
            "gw",
            &base(),
            &[(
                "KEY".into(),
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
            )],
        )
        .unwrap_or_else(|p| panic!("valid: {p:?}"))
}

/// The problems as `key: message` lines.
fn problems(text: &str) -> Vec<String> {
    match section(text).settings("gw", &base(), &[]) {
        Ok(_) => Vec::new(),
        Err(p) => p
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect(),
    }
}

fn has(text: &str, expected: &str) {
    let got = problems(text);
    assert!(
        got.iter().any(|l| l.contains(expected)),
        "{expected:?} not in {got:?}"
    );
}

#[test]
fn generic_defaults() {
    let s = ok("url = \"mqtt://broker.lan\"");
    assert_eq!(
        (s.host.as_str(), s.port, s.tls),
        ("broker.lan", 1883, false)
    );
    assert_eq!(s.client_id, "fieldgate-gw");
    assert_eq!(s.topic, "fieldgate/gw/{adapter}/{device}");
    assert_eq!(s.status_topic.as_deref(), Some("fieldgate/gw/status"));
    assert_eq!(
        (s.qos, s.max_message_bytes, s.max_packet_size, s.inflight),
        (1, 120_000, 262_144, 100)
    );
    let s = ok("url = \"mqtts://broker.lan\"\nmode = \"per_value\"\nstatus_topic = \"\"");
    assert_eq!((s.port, s.tls, s.status_topic), (8883, true, None));
    assert_eq!(s.topic, "fieldgate/gw/{adapter}/{device}/{point}");
}

#[test]
fn mistakes_name_their_key() {
    has(
        "url = \"ws://broker\"",
        "url: `ws://broker`: MQTT over WebSockets is not supported",
    );
    has(
        "url = \"broker:1883\"",
        "url: `broker:1883` must start with mqtt:// or mqtts://",
    );
    has(
        "url = \"mqtt://broker:99999\"",
        "url: `mqtt://broker:99999`: `99999` is not a port number",
    );
    has("url = \"mqtt://b\"\nqos = 2", "qos: must be 0 or 1, not 2");
    has(
        "url = \"mqtt://b\"\ntopic = \"a/{point}\"",
        "topic: `{point}` needs mode = \"per_value\"",
    );
    has(
        "url = \"mqtt://b\"\ntopic = \"a/{site}\"",
        "topic: unknown placeholder `{site}`",
    );
    has(
        "url = \"mqtt://b\"\ntopic = \"a/#\"",
        "topic: `a/#` holds a wildcard",
    );
    has(
        "url = \"mqtt://b\"\nmode = \"per_value\"\ntopic = \"a/{device}\"",
        "topic: mode = \"per_value\" needs `{point}`",
    );
    has(
        "url = \"mqtts://b\"\nca_file = \"nope.pem\"",
        "ca_file: cannot read",
    );
    has(
        "url = \"mqtts://b\"\nclient_cert = \"example-certs/device.pem\"",
        "client_key: client_cert needs client_key",
    );
    has(
        "url = \"mqtt://b\"\nca_file = \"example-certs/ca.pem\"",
        "url: TLS settings (ca_file, client_cert, insecure_skip_verify) need an mqtts:// url",
    );
    has(
        "url = \"mqtt://b\"\npassword = { env = \"NOT_SET\" }",
        "password: environment variable NOT_SET is not set",
    );
    has(
        "url = \"mqtt://b\"\nmax_packet_size = \"64KiB\"",
        "max_packet_size: 64KiB is below max_message_bytes",
    );
    has(
        "url = \"mqtts://b\"\nca_file = \"example-certs/device.key\"",
        "ca_file: CA file",
    );
}

#[test]
fn aws_preset_requires_mutual_tls_and_caps_the_rate() {
    has(
        "preset = \"aws_iot\"\nurl = \"mqtt://x.iot.eu-west-1.amazonaws.com\"",
        "url: AWS IoT Core needs mqtts://",
    );
    has(
        "preset = \"aws_iot\"\nurl = \"mqtts://x.iot.eu-west-1.amazonaws.com\"",
        "client_cert: AWS IoT Core authenticates devices by certificate",
    );
    has(
        "preset = \"aws_iot\"\nurl = \"mqtts://x\"\nclient_cert = \"example-certs/device.pem\"\nclient_key = \"example-certs/device.key\"\nmax_message_bytes = \"200KB\"\nmax_packet_size = \"1MB\"",
        "max_message_bytes: AWS IoT Core refuses messages above 128 KB",
    );
    let s = ok("preset = \"aws_iot\"\nurl = \"mqtts://x.iot.eu-west-1.amazonaws.com\"\nca_file = \"example-certs/ca.pem\"\nclient_cert = \"example-certs/device.pem\"\nclient_key = \"example-certs/device.key\"");
    assert_eq!(s.max_publish_rate, Some(100.0));
    assert!(s.client_auth.is_some());
}

#[test]
fn azure_preset_derives_username_topic_and_token() {
    let s = ok("preset = \"azure_iot_hub\"\nurl = \"mqtts://hub1.azure-devices.net\"\ndevice_id = \"pole-7\"\nsas_key = { env = \"KEY\" }");
    assert_eq!(
        s.username.as_deref(),
        Some("hub1.azure-devices.net/pole-7/?api-version=2021-04-12")
    );
    assert_eq!(s.topic, "devices/pole-7/messages/events/");
    assert_eq!(s.status_topic, None);
    let sas = s.azure.as_ref().expect("sas");
    assert_eq!(sas.resource_uri, "hub1.azure-devices.net/devices/pole-7");
    assert!(
        !format!("{s:?}").contains("MDEyMzQ1"),
        "the key never shows in Debug output"
    );
    has(
        "preset = \"azure_iot_hub\"\nurl = \"mqtts://hub1.azure-devices.net\"",
        "sas_key: Azure IoT Hub needs sas_key",
    );
    has(
        "preset = \"azure_iot_hub\"\nurl = \"mqtts://broker.lan\"\npassword = \"t\"",
        "url: Azure IoT Hub is mqtts://<hub>.azure-devices.net:8883",
    );
    has("preset = \"azure_iot_hub\"\nurl = \"mqtts://h.azure-devices.net\"\npassword = \"t\"\ntopic = \"x\"", "topic: Azure IoT Hub takes device-to-cloud messages on devices/<device_id>/messages/events/ only");
    has("preset = \"azure_iot_hub\"\nurl = \"mqtts://h.azure-devices.net\"\nsas_key = \"not base64!\"", "sas_key: is not valid base64");
}

#[test]
fn thingsboard_preset_uses_the_gateway_api() {
    let s = ok("preset = \"thingsboard\"\nurl = \"mqtt://tb.lan\"\nusername = \"TOKEN\"");
    assert_eq!(
        (s.topic.as_str(), s.body, s.status_topic.clone()),
        ("v1/gateway/telemetry", BodyFormat::Thingsboard, None)
    );
    has(
        "preset = \"thingsboard\"\nurl = \"mqtt://tb.lan\"",
        "username: ThingsBoard authenticates a gateway by its access token",
    );
}

#[test]
fn passwords_never_show_in_debug_output() {
    let s = ok("url = \"mqtt://b\"\nusername = \"u\"\npassword = \"hunter2-secret\"");
    assert_eq!(
        s.password.as_ref().map(Secret::expose),
        Some("hunter2-secret")
    );
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn a_thingsboard_access_token_never_shows_in_debug_output() {
    let text = "preset = \"thingsboard\"\nurl = \"mqtt://tb.lan\"\nusername = \"tb-token-4Xq9\"";
    let s = ok(text);
    assert_eq!(s.username.as_deref(), Some("tb-token-4Xq9"));
    for shown in [format!("{s:?}"), format!("{:?}", section(text))] {
        assert!(
            !shown.contains("4Xq9") && shown.contains("username: Some(<redacted>)"),
            "{shown}"
        );
    }
    // Any other username is not a secret, and stays visible.
    let s = ok("url = \"mqtt://b\"\nusername = \"site-7\"\npassword = \"pw\"");
    assert!(format!("{s:?}").contains("\"site-7\""), "{s:?}");
    // An access token written without quotes is refused without being echoed.
    let e = MqttUplinkConfig::from_toml(
        "preset = \"thingsboard\"\nurl = \"mqtt://tb.lan\"\nusername = 7319462850123456789",
    )
    .expect_err("a number");
    assert!(!e.contains("7319"), "{e}");
}

#[test]
fn credentials_in_the_url_are_refused_without_being_quoted() {
    for url in [
        "mqtt://gw:pw-8Hk2@broker.lan:1883",
        "mqtt://gw:pw-8Hk2@broker.lan",
        "mqtts://gw:pw-8Hk2@[::1]:8883/",
        "ws://gw:pw-8Hk2@broker.lan",
    ] {
        let got = problems(&format!("url = \"{url}\""));
        assert!(
            got.iter()
                .any(|p| p.starts_with("url: must not hold a user name or password")),
            "{url}: {got:?}"
        );
        assert!(got.iter().all(|p| !p.contains("pw-8Hk2")), "{got:?}");
    }
    // An `@` in a path-like part is not userinfo.
    assert!(parse_url("mqtt://broker.lan:1883/").is_ok());
}
