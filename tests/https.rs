//! The real binary against a real HTTPS server in this process (hyper + rustls, certificates
//! made for the test): delivery with a bearer token and gzip, mutual TLS, 500 and 429 with
//! `Retry-After`, a 400 dead-lettered and requeued, a wrong CA, lost responses and an outage
//! de-duplicated by idempotency key, an HTTPS uplink down beside a working MQTT one, and the
//! GPS-tracker example end to end from a (pseudo-)serial receiver.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::mqtt::{Mosquitto, Subscriber};
use common::{queue_stats, run, start, start_with_env, stop, try_queue_stats, wait_for, write};
use fieldgate::httpd::ingest::{Fault, IngestOptions, IngestServer};
use tokio::runtime::Runtime;

/// A runtime for the server and a directory for the gateway's state. Fields drop in order:
/// the directory outlives nothing that needs it, the runtime goes last.
struct Env {
    dir: tempfile::TempDir,
    rt: Runtime,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            rt: Runtime::new().expect("runtime"),
        }
    }

    fn server(&self, opts: IngestOptions) -> IngestServer {
        self.rt
            .block_on(IngestServer::start(IngestOptions {
                record: true,
                ..opts
            }))
            .expect("server starts")
    }

    fn tls_server(&self) -> IngestServer {
        self.server(IngestOptions {
            tls: true,
            ..IngestOptions::default()
        })
    }

    /// The server's CA certificate, written for the gateway's `ca_file`.
    fn ca_file(&self, server: &IngestServer) -> PathBuf {
        write(self.dir.path(), "ca.pem", &server.pki().ca)
    }

    /// A site with `points` simulator counter points of `n` readings each, and `uplinks`.
    fn site(&self, points: usize, n: u64, uplinks: &str) -> PathBuf {
        let pts: String = (0..points)
            .map(|i| format!("[[adapters.devices.points]]\nname = \"p{i}\"\nwaveform = \"counter\"\ninterval = \"1ms\"\ncount = {n}\n"))
            .collect();
        let text = format!(
            "[gateway]\nid = \"e2e\"\ndata_dir = \"{dir}\"\n\n[queue]\nflush_interval = \"20ms\"\n\n[[adapters]]\nid = \"sim\"\ntype = \"simulator\"\n[[adapters.devices]]\nid = \"dev\"\n{pts}\n{uplinks}\n",
            dir = self.dir.path().display()
        );
        write(self.dir.path(), "site.toml", &text)
    }
}

/// An `[[uplinks]]` entry of type https for `url`, with `extra` keys.
fn https_uplink(url: &str, extra: &str) -> String {
    format!(
        "[[uplinks]]\nid = \"ingest\"\ntype = \"https\"\nurl = \"{url}\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\n{extra}\n"
    )
}

/// (point, value) → how many times the server took it, over every batch taken.
fn values(server: &IngestServer) -> BTreeMap<(String, i64), u32> {
    let mut out = BTreeMap::new();
    for b in server.batches() {
        let body = b.body.expect("recorded");
        for r in body["readings"].as_array().expect("readings") {
            let key = (
                r["point"].as_str().expect("point").to_string(),
                r["value"].as_i64().expect("integer value"),
            );
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

/// Waits until the server has taken `n` distinct readings.
fn wait_taken(server: &IngestServer, n: usize, secs: u64) {
    wait_for(&format!("{n} readings at the server"), secs, || {
        values(server).len() >= n
    });
}

/// Every (point, value) of `points` × `n` counter readings taken exactly once.
fn assert_exactly_once(server: &IngestServer, points: usize, n: usize, logs: &str) {
    let got = values(server);
    assert_eq!(got.len(), points * n, "distinct readings; logs:\n{logs}");
    let twice: Vec<_> = got.iter().filter(|(_, &c)| c != 1).collect();
    assert!(twice.is_empty(), "taken more than once: {twice:?}");
}

#[test]
fn delivers_gzipped_batches_with_a_bearer_token_and_idempotency_keys() {
    let env = Env::new();
    let server = env.server(IngestOptions {
        tls: true,
        bearer: Some("s3cret-token".into()),
        ..IngestOptions::default()
    });
    let ca = env.ca_file(&server);
    let cfg = env.site(
        2,
        100,
        &https_uplink(
            &server.url(),
            &format!(
                "ca_file = \"{}\"\nbearer_token = {{ env = \"INGEST_TOKEN\" }}\ngzip = true\nbatch_size = 50\nheaders = {{ \"X-Site\" = \"north\" }}",
                ca.display()
            ),
        ),
    );
    let gw = start_with_env(&cfg, &[("INGEST_TOKEN", "s3cret-token")]);
    wait_taken(&server, 200, 30);
    let logs = stop(gw);
    assert_exactly_once(&server, 2, 100, &logs);
    assert!(
        server.seen().iter().all(|s| s.status == 200),
        "no request was refused (the token was sent)"
    );
    let batches = server.batches();
    let queue_id = batches[0].body.as_ref().expect("recorded")["queue_id"]
        .as_str()
        .expect("queue id")
        .to_string();
    assert_eq!(queue_id.len(), 16);
    for b in batches {
        assert!(b.gzip, "gzip = true");
        let body = b.body.expect("recorded");
        assert_eq!(body["gateway"], "e2e");
        assert_eq!(body["queue_id"], queue_id.as_str());
        let count = body["readings"].as_array().expect("array").len() as u64;
        assert!(count <= 50, "batch_size");
        assert_eq!(body["count"], count);
        assert_eq!(
            b.key.as_deref(),
            Some(format!("{queue_id}:{}-{}", body["first_seq"], body["last_seq"]).as_str()),
            "the idempotency key names the batch's range"
        );
    }
    assert!(
        !logs.contains("s3cret-token"),
        "the token never reaches the log"
    );
}

#[test]
fn delivers_over_mutual_tls() {
    let env = Env::new();
    let server = env.server(IngestOptions {
        tls: true,
        client_auth: true,
        ..IngestOptions::default()
    });
    let files = server
        .pki()
        .write(env.dir.path(), "mtls")
        .expect("PEM files");
    let cfg = env.site(
        1,
        50,
        &https_uplink(
            &server.url(),
            &format!(
                "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
                files.ca.display(),
                files.client_cert.display(),
                files.client_key.display()
            ),
        ),
    );
    let gw = start(&cfg);
    wait_taken(&server, 50, 30);
    let logs = stop(gw);
    assert_exactly_once(&server, 1, 50, &logs);
}

#[test]
fn a_500_is_retried_and_a_429_waits_for_retry_after() {
    let env = Env::new();
    let server = env.tls_server();
    server.script([
        Fault::Status {
            status: 500,
            retry_after: None,
            body: "database busy".into(),
        },
        Fault::Status {
            status: 429,
            retry_after: Some("2".into()),
            body: "slow down".into(),
        },
    ]);
    let ca = env.ca_file(&server);
    // One request at a time, so the script meets the first batch.
    let cfg = env.site(
        1,
        100,
        &https_uplink(
            &server.url(),
            &format!("ca_file = \"{}\"\nmax_in_flight = 1", ca.display()),
        ),
    );
    let gw = start(&cfg);
    wait_taken(&server, 100, 30);
    let logs = stop(gw);
    assert_exactly_once(&server, 1, 100, &logs);
    let seen = server.seen();
    let statuses: Vec<u16> = seen.iter().take(3).map(|s| s.status).collect();
    assert_eq!(statuses, [500, 429, 200], "logs:\n{logs}");
    assert!(
        seen[0].key.is_some() && seen[1].key == seen[0].key && seen[2].key == seen[0].key,
        "the failed batch is sent again with the same range and key: {:?}",
        seen.iter().take(3).map(|s| &s.key).collect::<Vec<_>>()
    );
    let after_500 = seen[1].at - seen[0].at;
    let after_429 = seen[2].at - seen[1].at;
    assert!(
        after_500 < Duration::from_millis(1500),
        "a 500 backs off from retry_min (100ms), took {after_500:?}"
    );
    assert!(
        after_429 >= Duration::from_millis(1950),
        "Retry-After: 2 is honoured, waited {after_429:?}"
    );
    assert!(
        logs.contains("HTTP 500") && logs.contains("database busy"),
        "{logs}"
    );
}

#[test]
fn a_400_is_dead_lettered_and_requeue_delivers_it() {
    let env = Env::new();
    let server = env.tls_server();
    server.script([Fault::Status {
        status: 400,
        retry_after: None,
        body: "field `value` must be a number".into(),
    }]);
    let ca = env.ca_file(&server);
    let cfg = env.site(
        1,
        100,
        &https_uplink(
            &server.url(),
            &format!("ca_file = \"{}\"\nmax_in_flight = 1", ca.display()),
        ),
    );
    let c = cfg.to_str().expect("utf-8");
    let gw = start(&cfg);
    wait_for("the stream to be delivered or dead-lettered", 30, || {
        let s = try_queue_stats(&cfg);
        s["appended"] == 100 && s["depth"] == 0
    });
    let stats = queue_stats(&cfg);
    let rejected = stats["dead_letters"].as_u64().expect("count");
    assert!(rejected > 0, "{stats}");
    assert_eq!(values(&server).len() as u64, 100 - rejected);

    let out = run(&["queue", "dead-letters", "-c", c, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let letters: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(letters.len() as u64, rejected);
    for d in &letters {
        assert_eq!(d["uplink"], "ingest");
        let error = d["error"].as_str().expect("error");
        assert!(
            error.contains("400") && error.contains("must be a number"),
            "{error}"
        );
        let value = d["reading"]["value"].as_i64().expect("value");
        assert!(
            !values(&server).contains_key(&("p0".to_string(), value)),
            "a dead letter was not taken by the server"
        );
    }
    let text = run(&["queue", "dead-letters", "-c", c]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("rejected: HTTP 400"));

    let refused = run(&["queue", "requeue", "-c", c]);
    assert!(!refused.status.success(), "requeue needs --all or --id");
    let out = run(&["queue", "requeue", "-c", c, "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("{rejected} dead letters marked")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_taken(&server, 100, 30);
    wait_for("the requeued readings acknowledged", 10, || {
        queue_stats(&cfg)["depth"] == 0
    });
    let logs = stop(gw);
    assert_exactly_once(&server, 1, 100, &logs);
    let empty = run(&["queue", "dead-letters", "-c", c]);
    assert_eq!(
        String::from_utf8_lossy(&empty.stdout).trim(),
        "no dead letters"
    );
    assert!(
        logs.contains("rejected a batch") && logs.contains("HTTP 400"),
        "the reject is logged with the status: {logs}"
    );
}

#[test]
fn a_wrong_ca_is_refused_with_a_clear_error() {
    let env = Env::new();
    let server = env.tls_server();
    let other = fieldgate::httpd::pki::Pki::generate("other").expect("pki");
    let wrong = write(env.dir.path(), "other-ca.pem", &other.ca);
    let cfg = env.site(
        1,
        20,
        &https_uplink(&server.url(), &format!("ca_file = \"{}\"", wrong.display())),
    );
    let gw = start(&cfg);
    wait_for("the stream to be queued", 30, || {
        try_queue_stats(&cfg)["appended"] == 20
    });
    std::thread::sleep(Duration::from_millis(500));
    let logs = stop(gw);
    assert!(
        server.seen().is_empty(),
        "no request got through the handshake"
    );
    assert!(
        logs.contains("certificate") && logs.contains("check ca_file"),
        "the log says what is wrong and what to do: {logs}"
    );
    assert_eq!(queue_stats(&cfg)["depth"], 20, "nothing is lost meanwhile");
}

#[test]
fn lost_responses_and_an_outage_are_delivered_exactly_once_after_dedup() {
    let env = Env::new();
    let mut server = env.tls_server();
    // The first batch is taken but its answer comes after the client gave up.
    server.script([Fault::Late(Duration::from_secs(3))]);
    let ca = env.ca_file(&server);
    let cfg = env.site(
        2,
        300,
        &https_uplink(
            &server.url(),
            &format!(
                "ca_file = \"{}\"\ntimeout = \"1s\"\nbatch_size = 20",
                ca.display()
            ),
        ),
    );
    let gw = start(&cfg);
    wait_for("a first batch at the server", 30, || server.readings() > 0);
    // Past the uplink's 1s timeout: the client gives up on the late answer by itself, and
    // the batches behind it went through meanwhile.
    std::thread::sleep(Duration::from_millis(1300));
    server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    env.rt.block_on(server.restart()).expect("restart");
    wait_taken(&server, 600, 60);
    wait_for("everything acknowledged", 20, || {
        try_queue_stats(&cfg)["depth"] == 0
    });
    let logs = stop(gw);
    assert_exactly_once(&server, 2, 300, &logs);
    assert!(
        server.duplicates() >= 1,
        "the batch whose answer was lost came again with the same key"
    );
    assert!(logs.contains("timed out"), "the timeout is logged: {logs}");
}

#[test]
fn with_two_uplinks_one_down_the_other_keeps_delivering_and_the_slow_one_catches_up() {
    let env = Env::new();
    let broker = Mosquitto::start(env.dir.path(), None);
    let sub = Subscriber::start(broker.plain_port, "fieldgate/#");
    let mut server = env.tls_server();
    server.stop();
    let ca = env.ca_file(&server);
    let uplinks = format!(
        "[[uplinks]]\nid = \"cloud\"\ntype = \"mqtt\"\nurl = \"{}\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\n\n{}",
        broker.url(),
        // The company endpoint takes one point only.
        https_uplink(
            &server.url(),
            &format!("ca_file = \"{}\"\npoints = [\"p1\"]", ca.display())
        )
    );
    let cfg = env.site(2, 100, &uplinks);
    let gw = start(&cfg);
    wait_for("every reading over MQTT", 30, || {
        let seen = sub.seqs();
        (1..=200).all(|s| seen.contains_key(&s))
    });
    let stats = queue_stats(&cfg);
    let pending = |s: &serde_json::Value, id: &str| {
        s["uplinks"]
            .as_array()
            .expect("uplinks")
            .iter()
            .find(|u| u["uplink"] == id)
            .map(|u| u["pending"].as_u64().expect("pending"))
            .expect("uplink listed")
    };
    assert_eq!(pending(&stats, "cloud"), 0, "{stats}");
    assert!(pending(&stats, "ingest") > 0, "{stats}");
    assert!(
        stats["depth"].as_u64().expect("depth") > 0,
        "rows wait for the slow uplink"
    );

    env.rt.block_on(server.restart()).expect("restart");
    wait_taken(&server, 100, 30);
    wait_for("the queue emptied", 20, || queue_stats(&cfg)["depth"] == 0);
    let logs = stop(gw);
    let got = values(&server);
    assert_eq!(got.len(), 100, "logs:\n{logs}");
    assert!(
        got.keys().all(|(point, _)| point == "p1"),
        "the https uplink carries p1 only"
    );
    assert!(got.values().all(|&c| c == 1));
}

/// `config/gps-tracker.toml`, unchanged but for its port, endpoint and state directory: a
/// GPS receiver on a (pseudo-)serial port, its fixes picked, renamed and scaled, posted to an
/// HTTPS endpoint with the bearer token from the environment; the receiver unplugged (its
/// last fix goes out stale) and plugged back in (fixes resume, no restart).
#[test]
fn gps_tracker_example_posts_serial_fixes_over_https_across_an_unplug() {
    use fieldgate_serial::sim::{nmea_sentence, VirtualPort};
    let env = Env::new();
    let server = env.server(IngestOptions {
        tls: true,
        bearer: Some("fleet-token".into()),
        ..IngestOptions::default()
    });
    let ca = env.ca_file(&server);
    let link = env.dir.path().join("u-blox");
    let cfg = common::repo().join("config/gps-tracker.toml");
    let (url, ca) = (
        format!("\"{}\"", server.url()),
        format!("\"{}\"", ca.display()),
    );
    let dir = env.dir.path().display().to_string();
    let port = link.display().to_string();
    let gw = start_with_env(
        &cfg,
        &[
            ("FIELDGATE_GATEWAY__DATA_DIR", dir.as_str()),
            ("FIELDGATE_ADAPTERS__0__PORT", port.as_str()),
            ("FIELDGATE_UPLINKS__0__URL", url.as_str()),
            ("FIELDGATE_UPLINKS__0__CA_FILE", ca.as_str()),
            ("FLEET_API_TOKEN", "fleet-token"),
        ],
    );
    // The classic reference fix (48°07.038' N, 11°31.000' E, 8 satellites, HDOP 0.9, 545.4 m;
    // 22.4 knots on a track of 84.4°), with sentences the config does not map around it.
    let fix = [
        "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n".to_string(),
        nmea_sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"),
        "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n".to_string(),
        "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n".to_string(),
    ];
    // The receiver is plugged in after the gateway started (which waits for it): a
    // pseudo-terminal made before would be inherited by the gateway's process, whose copy
    // of the instrument's end would then outlive the unplug below (no hang-up).
    let mut gps = {
        let _rt = env.rt.enter();
        VirtualPort::new(&link).expect("pty")
    };
    env.rt
        .block_on(gps.write(fix.concat().as_bytes()))
        .expect("write");
    let readings = |quality: &str| -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        for b in server.batches() {
            let body = b.body.expect("recorded");
            for r in body["readings"].as_array().expect("readings") {
                if r["quality"] == quality {
                    assert_eq!(r["device"], "van-0042");
                    let point = r["point"].as_str().expect("point").to_string();
                    out.insert(point, r["value"].clone());
                }
            }
        }
        out
    };
    let points = [
        "alt",
        "hdop",
        "heading",
        "lat",
        "lon",
        "satellites",
        "speed_kmh",
    ];
    wait_for("the first fix at the endpoint", 30, || {
        readings("good").len() == 7
    });
    let good = readings("good");
    assert_eq!(good.keys().map(String::as_str).collect::<Vec<_>>(), points);
    let f = |p: &str| good[p].as_f64().expect("a number");
    assert!((f("lat") - 48.1173).abs() < 1e-9, "{good:?}");
    assert!((f("lon") - (11.0 + 31.0 / 60.0)).abs() < 1e-9, "{good:?}");
    assert!((f("speed_kmh") - 22.4 * 1.852).abs() < 1e-9, "{good:?}");
    assert_eq!(good["satellites"], 8);
    assert_eq!((f("alt"), f("hdop"), f("heading")), (545.4, 0.9, 84.4));

    gps.unplug();
    wait_for("the last fix again, stale", 30, || {
        readings("stale").len() == 7
    });
    {
        let _rt = env.rt.enter();
        gps.plug().expect("replug");
    }
    let moved = "$GPGGA,123520,4807.100,N,01131.000,E,1,09,0.8,546.0,M,46.9,M,,";
    env.rt
        .block_on(gps.write(nmea_sentence(&moved[1..]).as_bytes()))
        .expect("write");
    wait_for("a fix after the replug", 30, || {
        readings("good").get("satellites") == Some(&serde_json::json!(9))
    });
    let logs = stop(gw);
    // Seen as a failed read at once, or (when a gateway spawned meanwhile by another test
    // inherited the terminal) after 10 s without a reading; the serial crate's
    // tests/adapter.rs checks the immediate case.
    assert!(logs.contains("u-blox lost: "), "{logs}");
    assert!(
        !logs.contains("fleet-token"),
        "the token never reaches the log"
    );
}
