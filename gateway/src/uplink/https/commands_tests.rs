//! The command poll against a real HTTPS server in this process ([`IngestServer`]: TLS with a
//! certificate made for the test, a bearer token): commands arrive exactly as the server
//! handed them out, responses are posted in order (again after a failure, dropped after a
//! rejection), and polling survives an outage and answers that are not commands.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::{HttpsUplink, HttpsUplinkConfig};
use crate::command::{Inbound, INBOX_CAPACITY};
use crate::httpd::ingest::{Fault, IngestOptions, IngestServer};

const TOKEN: &str = "s3cret-token";

/// A TLS ingest server and an HTTPS uplink polling it every second, with the router's side
/// of the inbox in the test's hands.
struct Site {
    server: IngestServer,
    inbox: mpsc::Receiver<Inbound>,
    uplink: Option<HttpsUplink>,
    _dir: tempfile::TempDir,
}

impl Site {
    async fn start() -> Site {
        let server = IngestServer::start(IngestOptions {
            tls: true,
            bearer: Some(TOKEN.into()),
            record: true,
            ..IngestOptions::default()
        })
        .await
        .expect("server starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &server.pki().ca).expect("write the CA");
        let raw = HttpsUplinkConfig::from_toml(&format!(
            "url = \"{}\"\nca_file = \"{}\"\nbearer_token = \"{TOKEN}\"\ncommands_url = \"{}\"\ncommands_interval = \"1s\"\ntimeout = \"5s\"\n",
            server.url(),
            ca.display(),
            server.commands_url(),
        ))
        .expect("valid TOML");
        let settings = raw.settings(Path::new("."), &[]).expect("valid settings");
        assert!(settings.commands.is_some());
        let (tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let uplink =
            HttpsUplink::new_with_commands(settings, "gw".into(), Some(("cloud".into(), tx)));
        Site {
            server,
            inbox,
            uplink: Some(uplink),
            _dir: dir,
        }
    }

    /// The next command the uplink handed in.
    async fn next(&mut self) -> Inbound {
        tokio::time::timeout(Duration::from_secs(10), self.inbox.recv())
            .await
            .expect("a command within 10s")
            .expect("the inbox is open")
    }

    /// Waits until the server has `n` responses and returns them.
    async fn responses(&self, n: usize) -> Vec<serde_json::Value> {
        wait_for(&format!("{n} responses"), || {
            self.server.responses().len() >= n
        })
        .await;
        self.server.responses()
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn payload(msg: &Inbound) -> serde_json::Value {
    serde_json::from_slice(&msg.payload).expect("the payload is JSON")
}

async fn respond(msg: &Inbound, response: &serde_json::Value) {
    msg.responses
        .send(serde_json::to_vec(response).expect("serializable"))
        .await
        .expect("the responder is running");
}

#[tokio::test]
async fn commands_arrive_as_sent_and_responses_go_back_in_order() {
    let mut site = Site::start().await;
    let command = json!({
        "id": "c-1", "adapter": "tanks", "device": "tank-1", "action": "write",
        "point": "setpoint", "value": 2.5, "ttl": "30s", "note": "ünïcode \"quoted\""
    });
    site.server.push_command(command.clone());
    let msg = site.next().await;
    assert_eq!(payload(&msg), command);
    assert_eq!(msg.origin, "cloud");

    let accepted = json!({"id": "c-1", "gateway": "gw", "status": "accepted", "ts": "t1"});
    let done = json!({"id": "c-1", "gateway": "gw", "status": "done", "value": 2.5, "ts": "t2"});
    respond(&msg, &accepted).await;
    respond(&msg, &done).await;
    assert_eq!(site.responses(2).await, vec![accepted, done]);

    // A burst arrives in order, and the `{"commands": [...]}` form is taken too.
    let burst: Vec<_> = (0..3).map(|i| json!({"id": format!("b-{i}")})).collect();
    for c in &burst {
        site.server.push_command(c.clone());
    }
    for c in &burst {
        assert_eq!(payload(&site.next().await), *c);
    }
    site.server.script_polls([Fault::Status {
        status: 200,
        retry_after: None,
        body: r#"{"commands":[{"id":"w-1"},{"id":"w-2"}]}"#.into(),
    }]);
    assert_eq!(payload(&site.next().await), json!({"id": "w-1"}));
    assert_eq!(payload(&site.next().await), json!({"id": "w-2"}));
    assert!(
        site.server.seen().is_empty(),
        "command requests are not deliveries"
    );

    // Dropping the uplink stops the poller (which holds the inbox's only sender).
    drop(site.uplink.take());
    let closed = tokio::time::timeout(Duration::from_secs(5), site.inbox.recv())
        .await
        .expect("the poller stops");
    assert!(closed.is_none());
}

#[tokio::test]
async fn responses_are_sent_again_until_taken_and_dropped_when_refused() {
    let mut site = Site::start().await;
    site.server.push_command(json!({"id": "c-1"}));
    let msg = site.next().await;
    let r = |n: u32| json!({"id": "c-1", "n": n});

    site.server.script_responses([Fault::Status {
        status: 503,
        retry_after: None,
        body: "busy".into(),
    }]);
    respond(&msg, &r(1)).await;
    respond(&msg, &r(2)).await;
    assert_eq!(site.responses(2).await, vec![r(1), r(2)]);

    // 400: the server can never take this response; the next one is not held up by it.
    site.server.script_responses([Fault::Status {
        status: 400,
        retry_after: None,
        body: "no".into(),
    }]);
    respond(&msg, &r(3)).await;
    respond(&msg, &r(4)).await;
    assert_eq!(site.responses(3).await, vec![r(1), r(2), r(4)]);
}

#[tokio::test]
async fn polling_recovers_from_an_outage_and_from_answers_that_are_not_commands() {
    let mut site = Site::start().await;
    wait_for("first poll", || site.server.command_polls() >= 1).await;

    // Down for more than two intervals: the polls fail, then succeed once it is back.
    site.server.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    site.server
        .restart()
        .await
        .expect("restarts on the same port");
    site.server.push_command(json!({"id": "after-outage"}));
    assert_eq!(payload(&site.next().await), json!({"id": "after-outage"}));

    // Garbage, a bare object and a 503 are skipped; the queued command comes with the next.
    let before = site.server.command_polls();
    site.server.script_polls([
        Fault::Status {
            status: 200,
            retry_after: None,
            body: "<html>maintenance</html>".into(),
        },
        Fault::Status {
            status: 200,
            retry_after: None,
            body: r#"{"id":"not-in-a-list"}"#.into(),
        },
        Fault::Status {
            status: 503,
            retry_after: None,
            body: "later".into(),
        },
    ]);
    site.server.push_command(json!({"id": "after-garbage"}));
    assert_eq!(payload(&site.next().await), json!({"id": "after-garbage"}));
    assert!(
        site.server.command_polls() >= before + 4,
        "three failed polls, then the one that brought the command"
    );
    assert!(site.inbox.try_recv().is_err(), "nothing else was handed in");
}
