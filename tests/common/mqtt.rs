//! Real MQTT peers for the end-to-end tests: Mosquitto spawned on a free port with a
//! generated config, certificates made with rcgen, and a subscriber that records what the
//! broker delivers.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The mosquitto binary (Debian puts it in /usr/sbin, often not on a user's PATH).
fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mosquitto")
}

/// A Mosquitto broker with a plain listener for test subscribers and, optionally, another
/// listener configured by the test (TLS, passwords) for the gateway.
pub struct Mosquitto {
    child: Option<Child>,
    conf: PathBuf,
    /// Plain, anonymous listener (subscribers).
    pub plain_port: u16,
    /// The gateway's listener (the same as `plain_port` when none was given).
    pub port: u16,
}

impl Mosquitto {
    /// Starts Mosquitto with its persistence in `dir`. `gateway_listener`, if given, is the
    /// body of a second `listener` block (TLS files, password file...).
    pub fn start(dir: &Path, gateway_listener: Option<&str>) -> Mosquitto {
        Mosquitto::start_with(dir, gateway_listener, "")
    }

    /// [`Mosquitto::start`] with `extra` general settings (lines of mosquitto.conf, like
    /// `max_queued_messages 0` or another `log_dest`) before the listeners.
    pub fn start_with(dir: &Path, gateway_listener: Option<&str>, extra: &str) -> Mosquitto {
        let plain_port = free_port();
        let mut conf = format!(
            "per_listener_settings true\npersistence true\npersistence_location {}/\nautosave_interval 1\nlog_dest stderr\nlog_type error\nuser root\n{extra}\nlistener {plain_port} 127.0.0.1\nallow_anonymous true\n",
            dir.display()
        );
        let port = match gateway_listener {
            Some(body) => {
                let p = free_port();
                conf.push_str(&format!("\nlistener {p} 127.0.0.1\n{body}\n"));
                p
            }
            None => plain_port,
        };
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            conf: path,
            plain_port,
            port,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts (is the mosquitto package installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || TcpStream::connect(("127.0.0.1", self.plain_port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker with SIGTERM (it saves its persistence) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    /// Stops and starts it again on the same ports.
    pub fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// `mqtt://127.0.0.1:PORT` of the gateway listener, for plain configs.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// PEM files of a test PKI (a CA, a server certificate for localhost and a client
/// certificate) under `dir/name-*.pem`.
pub fn pki(dir: &Path, name: &str) -> fieldgate::httpd::pki::PkiFiles {
    fieldgate::httpd::pki::Pki::generate(name)
        .expect("test PKI")
        .write(dir, name)
        .expect("write PEM files")
}

/// Messages as (topic, payload), shared with the subscriber's thread.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A subscriber with a persistent session (QoS 1), recording every message; it reconnects by
/// itself when the broker restarts.
pub struct Subscriber {
    messages: Received,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Subscribes on the broker at `port` and returns once the subscription is acknowledged.
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (m, s, filter) = (Arc::clone(&messages), Arc::clone(&stop), filter.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut opts =
                    rumqttc::MqttOptions::new(format!("checker-{port}"), "127.0.0.1", port);
                opts.set_clean_session(false);
                opts.set_keep_alive(Duration::from_secs(5));
                opts.set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
                let mut subscribed = false;
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), el.poll()).await {
                        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
                            if !subscribed =>
                        {
                            client
                                .subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                                .await
                                .expect("subscribe");
                        }
                        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))))
                            if !subscribed =>
                        {
                            subscribed = true;
                            let _ = ready_tx.send(());
                        }
                        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                            m.lock()
                                .expect("lock")
                                .push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscriber connected and subscribed");
        Subscriber {
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.messages.lock().expect("lock").clone()
    }

    /// Sequence ids carried by fieldgate batch messages, with how often each arrived.
    pub fn seqs(&self) -> BTreeMap<u64, u32> {
        let mut out = BTreeMap::new();
        for (topic, body) in self.messages() {
            if topic.ends_with("/status") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
            for r in v["readings"].as_array().expect("readings array") {
                *out.entry(r["seq"].as_u64().expect("seq")).or_insert(0) += 1;
            }
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client that publishes at QoS 1, in order, on one connection (the cloud sending commands).
pub struct Publisher {
    client: rumqttc::Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// Connects to the broker at `port` as `client_id` and returns once the broker accepted.
    pub fn start(port: u16, client_id: &str) -> Publisher {
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = rumqttc::Client::new(opts, 100);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("publisher connected");
        Publisher {
            client,
            thread: Some(thread),
        }
    }

    /// Publishes `payload` on `topic` (QoS 1, not retained).
    pub fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .expect("publish queued");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
