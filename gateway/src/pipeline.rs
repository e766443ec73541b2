//! Wiring, supervision and shutdown.
//!
//! ```text
//! adapters ──(bounded channel)──▶ writer ──(batches)──▶ queue ──▶ forwarder ─▶ uplink
//!    ▲ supervisor restarts                                    └──▶ forwarder ─▶ uplink
//! ```
//!
//! [`start`] opens the queue, spawns one supervisor per adapter, the writer, one forwarder
//! per uplink and, when `max_age` is set, the expiry task, and returns a [`Running`]
//! gateway. [`Running::stop`] shuts down in the order that loses nothing: adapters first,
//! then the writer commits what is still in memory (forwarders keep delivering meanwhile, so
//! a `block`ed queue can drain), then the forwarders finish their current send, then the
//! queue is checkpointed and closed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fieldgate_adapter::{
    reading_channel, Adapter, AdapterContext, AdapterError, CommandSender, Reading,
    ReadingReceiver, ReadingSender, SharedState, Shutdown, ShutdownTrigger,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::clock::{Clock, SystemClock};
use crate::command::{CommandRoutes, Inbound, Router};
use crate::config::{AdapterConfig, AdapterSection, Config};
use crate::queue::{Batch, Queue, QueueError, QueueHandle, SqliteState};
use crate::rules::{Output, Rules};
use crate::status::server::{Endpoint, ReloadRequest};
use crate::status::Board;
use crate::uplink::sleep_until_opt;
use crate::uplink::{self, ForwarderOptions, Uplink};
use crate::watchdog::{Heartbeat, SystemdNotify};

/// Builds a fresh adapter; called again after every failure.
pub type AdapterFactory = Box<dyn Fn() -> Result<Box<dyn Adapter>, AdapterError> + Send + Sync>;

/// Why the gateway could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The queue could not be opened or closed.
    #[error("queue {path}: {source}")]
    Queue {
        /// The database file.
        path: String,
        /// What failed.
        source: QueueError,
    },
}

/// Tunables of the pipeline that are not in the config file.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// How long the adapters (together) get to stop after shutdown fires.
    pub adapter_grace: Duration,
    /// How long the writer gets to commit what is in memory.
    pub writer_grace: Duration,
    /// How long the forwarders (together) get to settle what is in flight.
    pub forwarder_grace: Duration,
    /// First delay before restarting a failed adapter.
    pub restart_min: Duration,
    /// Longest delay before restarting a failed adapter.
    pub restart_max: Duration,
    /// The clocks (the system's; tests inject a fake).
    pub clock: Arc<dyn Clock>,
    /// After the queue's disk was full, how long commits must work before the
    /// `queue_disk_full` alert clears.
    pub disk_clear_after: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            adapter_grace: Duration::from_secs(5),
            writer_grace: Duration::from_secs(10),
            forwarder_grace: Duration::from_secs(10),
            restart_min: Duration::from_secs(1),
            restart_max: Duration::from_secs(60),
            clock: SystemClock::shared(),
            disk_clear_after: Duration::from_secs(10),
        }
    }
}

/// What a pipeline is built from: the config's sections turned into runtime parts. Tests and
/// the bench build one by hand to plug in their own adapters and uplinks.
pub struct Parts {
    /// Adapters by id.
    pub adapters: Vec<(String, AdapterFactory)>,
    /// Uplinks with their forwarder options.
    pub uplinks: Vec<(ForwarderOptions, Box<dyn Uplink>)>,
    /// The commands the uplinks receive, when any takes commands.
    pub commands: Option<tokio::sync::mpsc::Receiver<Inbound>>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field(
                "adapters",
                &self.adapters.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .field(
                "uplinks",
                &self.uplinks.iter().map(|(o, _)| &o.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Parts {
    /// The adapters and uplinks `config` describes.
    pub fn from_config(config: &Config) -> Parts {
        let adapters = config
            .adapters
            .iter()
            .map(|a| (a.id.clone(), adapter_factory(config, a)))
            .collect();
        let (inbox, commands) = tokio::sync::mpsc::channel(crate::command::INBOX_CAPACITY);
        let uplinks = config
            .uplinks
            .iter()
            .map(|u| {
                (
                    ForwarderOptions::from_section(u),
                    uplink::build(config, u, Some(&inbox)),
                )
            })
            .collect();
        Parts {
            adapters,
            uplinks,
            // Only uplinks that take commands keep a sender.
            commands: config
                .uplinks
                .iter()
                .any(uplink::takes_commands)
                .then_some(commands),
        }
    }
}

/// The factory of the adapter a config section describes.
pub fn adapter_factory(config: &Config, a: &AdapterSection) -> AdapterFactory {
    match &a.kind {
        AdapterConfig::Simulator(sim) => {
            let sim = sim.clone();
            let base = config.base_dir.clone();
            Box::new(move || {
                fieldgate_simulator::Simulator::new(&sim, &base)
                    .map(|s| Box::new(s) as Box<dyn Adapter>)
            })
        }
        AdapterConfig::Modbus(m) => {
            let m = m.clone();
            Box::new(move || {
                fieldgate_modbus::Modbus::new(&m).map(|a| Box::new(a) as Box<dyn Adapter>)
            })
        }
        AdapterConfig::Serial(c) => {
            let c = c.clone();
            Box::new(move || {
                fieldgate_serial::Serial::new(&c).map(|a| Box::new(a) as Box<dyn Adapter>)
            })
        }
        AdapterConfig::Lorawan(c) => {
            let c = c.clone();
            Box::new(move || {
                Ok(Box::new(fieldgate_lorawan::Lorawan::new((*c).clone())) as Box<dyn Adapter>)
            })
        }
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    queue: QueueHandle,
    opts: PipelineOptions,
    /// The running adapters' supervisors, by id.
    adapters: BTreeMap<String, Supervised>,
    /// What new supervisors (after a reload) are given; dropped at stop, so the writer sees
    /// the channel close once every adapter is gone.
    readings: Option<ReadingSender>,
    state: SharedState,
    writer_abort: ShutdownTrigger,
    forwarders_stop: ShutdownTrigger,
    writer: JoinHandle<WriterReport>,
    forwarders: Vec<JoinHandle<()>>,
    routes: CommandRoutes,
    heartbeat: Arc<Heartbeat>,
    board: Arc<Board>,
    /// Replaces the writer's rules stage (reload); the writer acknowledges.
    rules: tokio::sync::mpsc::UnboundedSender<RulesUpdate>,
}

/// One adapter's supervisor and the trigger that stops it.
#[derive(Debug)]
struct Supervised {
    stop: ShutdownTrigger,
    task: JoinHandle<()>,
}

/// What the writer did over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterReport {
    /// Readings committed to the queue.
    pub committed: u64,
    /// Readings refused by a full queue (`drop_newest`).
    pub refused: u64,
    /// Readings still in memory that could not be committed before shutdown.
    pub lost: u64,
}

/// Starts the pipeline `config` describes.
pub async fn start(config: &Config) -> Result<Running, PipelineError> {
    start_with(
        config,
        Parts::from_config(config),
        PipelineOptions::default(),
    )
    .await
}

/// Starts a pipeline with the queue settings of `config` and the given parts.
pub async fn start_with(
    config: &Config,
    parts: Parts,
    opts: PipelineOptions,
) -> Result<Running, PipelineError> {
    let path = config.queue_path();
    let ids: Vec<String> = parts.uplinks.iter().map(|(o, _)| o.id.clone()).collect();
    let qopts = config.queue_options();
    let qpath = path.clone();
    let queue = tokio::task::spawn_blocking(move || {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Queue::open(&qpath, qopts, &ids)
    })
    .await
    .map_err(|e| QueueError::Task(e.to_string()))
    .and_then(|r| r)
    .map_err(|source| PipelineError::Queue {
        path: path.display().to_string(),
        source,
    })?;
    tracing::info!(path = %path.display(), next_seq = queue.next_seq(), "queue open");
    let spath = path.clone();
    let state: SharedState = tokio::task::spawn_blocking(move || SqliteState::open(&spath))
        .await
        .map_err(|e| QueueError::Task(e.to_string()))
        .and_then(|r| r)
        .map(|s| Arc::new(s) as SharedState)
        .map_err(|source| PipelineError::Queue {
            path: path.display().to_string(),
            source,
        })?;
    let queue = QueueHandle::new(queue);
    let board = Board::new(&config.gateway.id);

    let (forwarders_stop, fwd_shutdown) = ShutdownTrigger::new();
    let mut forwarders = Vec::new();
    for (fopts, up) in parts.uplinks {
        board.add_uplink(&fopts.id, Arc::clone(&fopts.live));
        forwarders.push(tokio::spawn(uplink::forwarder(
            queue.clone(),
            up,
            fopts,
            fwd_shutdown.clone(),
        )));
    }
    forwarders.push(tokio::spawn(upkeep(
        queue.clone(),
        Arc::clone(&board),
        fwd_shutdown.clone(),
    )));
    forwarders.push(tokio::spawn(crate::clock::monitor(
        Arc::clone(&opts.clock),
        queue.clone(),
        fwd_shutdown.clone(),
    )));

    let (tx, rx) = reading_channel(config.queue.channel_capacity);
    let (writer_abort, abort) = ShutdownTrigger::new();
    let heartbeat = Heartbeat::new();
    let (rules_tx, rule_updates) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(Writer {
        queue: queue.clone(),
        rx,
        batch_size: config.queue.batch_size,
        flush_interval: config.queue.flush_interval,
        abort,
        heartbeat: Arc::clone(&heartbeat),
        clock: Arc::clone(&opts.clock),
        rules: rules_for(config),
        rule_updates,
        board: Arc::clone(&board),
        disk_clear_after: opts.disk_clear_after,
    }));

    let routes: CommandRoutes = Arc::default();
    if let Some(inbox) = parts.commands {
        let audit = {
            let apath = path.clone();
            tokio::task::spawn_blocking(move || crate::queue::AuditLog::open(&apath))
                .await
                .map_err(|e| QueueError::Task(e.to_string()))
                .and_then(|r| r)
                .map_err(|source| PipelineError::Queue {
                    path: path.display().to_string(),
                    source,
                })?
        };
        let router = Router {
            routes: Arc::clone(&routes),
            audit: Some(Arc::new(audit)),
            default_ttl: config.commands.default_ttl,
            gateway: config.gateway.id.clone(),
        };
        forwarders.push(tokio::spawn(router.run(inbox, fwd_shutdown.clone())));
    }
    let mut running = Running {
        queue,
        opts,
        adapters: BTreeMap::new(),
        readings: Some(tx),
        state,
        writer_abort,
        forwarders_stop,
        writer,
        forwarders,
        routes,
        heartbeat,
        board,
        rules: rules_tx,
    };
    for (id, factory) in parts.adapters {
        running.spawn_adapter(id, factory);
    }
    Ok(running)
}

/// The rules stage `config` describes, if it has any rule or alert.
fn rules_for(config: &Config) -> Option<Rules> {
    Some(Rules::new(&config.rules, &config.alerts)).filter(|r| !r.is_empty())
}

impl Running {
    /// The queue, for stats.
    pub fn queue(&self) -> &QueueHandle {
        &self.queue
    }

    /// The pipeline's heartbeat (for the systemd watchdog).
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        Arc::clone(&self.heartbeat)
    }

    /// Where to send commands for adapter `id` (while it runs).
    pub fn commands(&self, id: &str) -> Option<CommandSender> {
        self.routes.lock().ok().and_then(|r| r.get(id).cloned())
    }

    /// The live status (for the status endpoint).
    pub fn board(&self) -> Arc<Board> {
        Arc::clone(&self.board)
    }

    /// Serves the status endpoint on `listen` (see [`crate::status::server`]) until the
    /// returned task is aborted; `reloads` takes `POST /api/reload`.
    pub async fn serve_status(
        &self,
        config: &Config,
        listen: std::net::SocketAddr,
        token: Option<String>,
        reloads: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    ) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
        let endpoint = Endpoint {
            board: self.board(),
            queue: self.queue.clone(),
            max_bytes: config.queue.max_bytes.map(|b| b.0),
            heartbeat: self.heartbeat(),
            reloads,
            token,
            stats: Arc::default(),
        };
        crate::status::server::start(listen, endpoint).await
    }

    /// Applies what can change in place of `new` to the running gateway and records it in
    /// `current` (the config in effect; `new` is already validated). Adapters whose section is
    /// unchanged keep running, with their connections; changed and removed ones are stopped
    /// (together, within one adapter grace); changed rules or alerts replace the rules stage
    /// (its open windows are flushed first, its alert states start afresh) before changed and
    /// new adapters start, so their readings meet the new rules. The other sections change
    /// only at the next start: the summary names those that differ from what runs.
    pub async fn reload(&mut self, current: &mut Config, new: &Config) -> String {
        let mut done: Vec<String> = Vec::new();
        let mut stopping = Vec::new();
        let mut starting = Vec::new();
        let mut unchanged = 0;
        for a in &current.adapters {
            if !new.adapters.iter().any(|n| n.id == a.id) {
                stopping.push(a.id.clone());
                done.push(format!("removed adapter {}", a.id));
            }
        }
        for a in &new.adapters {
            match current.adapters.iter().find(|o| o.id == a.id) {
                Some(before) if before == a && self.adapters.contains_key(&a.id) => {
                    unchanged += 1;
                }
                Some(_) => {
                    stopping.push(a.id.clone());
                    starting.push(a);
                    done.push(format!("restarted adapter {} (its section changed)", a.id));
                }
                None => {
                    starting.push(a);
                    done.push(format!("added adapter {}", a.id));
                }
            }
        }
        let mut tasks = Vec::new();
        for id in &stopping {
            if let Some(s) = self.adapters.remove(id) {
                s.stop.fire();
                tasks.push(s.task);
            }
        }
        join_all_within(tasks, self.opts.adapter_grace, "adapter").await;
        for id in &stopping {
            // What a stopped adapter still had in the channel does not bring it back.
            self.board.adapter_removed(id);
            if let Ok(mut r) = self.routes.lock() {
                r.remove(id);
            }
        }
        if current.rules != new.rules || current.alerts != new.alerts {
            let (ack, applied) = tokio::sync::oneshot::channel();
            let _ = self.rules.send((rules_for(new), ack));
            // The writer takes it at its next turn; only a commit stuck in a full `block`ed
            // queue can hold it up.
            if tokio::time::timeout(Duration::from_secs(30), applied)
                .await
                .is_err()
            {
                tracing::warn!("the queue writer has not taken the new rules within 30 s; it will when its commit goes through");
            }
            done.push(format!(
                "rules and alerts replaced ({} rule(s), {} alert(s))",
                new.rules.len(),
                new.alerts.len()
            ));
        }
        for a in starting {
            self.spawn_adapter(a.id.clone(), adapter_factory(new, a));
        }
        if unchanged > 0 {
            done.push(format!("{unchanged} adapter(s) unchanged"));
        }
        current.adapters.clone_from(&new.adapters);
        current.rules.clone_from(&new.rules);
        current.alerts.clone_from(&new.alerts);
        let later: Vec<&str> = [
            ("[gateway]", current.gateway != new.gateway),
            ("[log]", current.log != new.log),
            ("[queue]", current.queue != new.queue),
            ("[[uplinks]]", current.uplinks != new.uplinks),
            ("[commands]", current.commands != new.commands),
            ("[http]", current.http != new.http),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        let mut summary = if done.is_empty() {
            "nothing to apply".to_string()
        } else {
            done.join("; ")
        };
        if !later.is_empty() {
            summary.push_str(&format!(
                "; changed, and applied only at the next restart: {}",
                later.join(", ")
            ));
        }
        summary
    }

    /// Starts supervising adapter `id` (unless the gateway is stopping).
    fn spawn_adapter(&mut self, id: String, factory: AdapterFactory) {
        let Some(readings) = &self.readings else {
            return;
        };
        let s = Supervisor {
            id: id.clone(),
            factory,
            readings: readings.clone(),
            routes: Arc::clone(&self.routes),
            state: Arc::clone(&self.state),
            opts: self.opts.clone(),
            board: Arc::clone(&self.board),
        };
        self.adapters.insert(id, s.spawn());
    }

    /// Stops everything in the order that loses nothing, then closes the queue.
    pub async fn stop(self) -> Result<WriterReport, PipelineError> {
        let Running {
            queue,
            opts,
            adapters,
            readings,
            state: _,
            writer_abort,
            forwarders_stop,
            writer,
            forwarders,
            routes,
            heartbeat: _,
            board: _,
            rules: _,
        } = self;
        tracing::info!("stopping adapters");
        drop(readings);
        let mut supervisors = Vec::new();
        for (_, s) in adapters {
            s.stop.fire();
            supervisors.push(s.task);
        }
        join_all_within(supervisors, opts.adapter_grace, "adapter").await;
        if let Ok(mut r) = routes.lock() {
            r.clear();
        }
        tracing::info!("committing readings still in memory");
        let mut writer = writer;
        let report = match tokio::time::timeout(opts.writer_grace, &mut writer).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "queue writer failed; readings in memory are lost");
                WriterReport::default()
            }
            Err(_) => {
                writer_abort.fire();
                // The writer returns at once when aborted, unless a commit is stuck in SQLite.
                match tokio::time::timeout(Duration::from_secs(5), &mut writer).await {
                    Ok(r) => r.unwrap_or_default(),
                    Err(_) => {
                        writer.abort();
                        tracing::error!("queue writer did not stop; readings in memory are lost");
                        WriterReport::default()
                    }
                }
            }
        };
        tracing::info!("stopping uplinks");
        forwarders_stop.fire();
        join_all_within(forwarders, opts.forwarder_grace, "uplink").await;
        let path = match queue.stats().await {
            Ok(s) => {
                tracing::info!(
                    depth = s.depth,
                    appended = s.appended,
                    delivered = s.delivered,
                    "queue closing"
                );
                String::new()
            }
            Err(e) => e.to_string(),
        };
        queue
            .close()
            .await
            .map_err(|source| PipelineError::Queue { path, source })?;
        tracing::info!(committed = report.committed, lost = report.lost, "stopped");
        Ok(report)
    }
}

/// Waits for all `handles` within one shared `grace` (they stop concurrently), aborting
/// whatever is still running at the deadline.
async fn join_all_within(handles: Vec<JoinHandle<()>>, grace: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + grace;
    for handle in handles {
        let abort = handle.abort_handle();
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => {
                tracing::error!(error = %e, "{what} task panicked during shutdown")
            }
            Ok(Err(_)) => {}
            Err(_) => {
                tracing::warn!(grace = ?grace, "{what} did not stop in time; aborting it");
                abort.abort();
            }
        }
    }
}

/// Reads the config file again (for a reload): the new config, or every problem found in it.
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Where reload requests come from (SIGHUP, `POST /api/reload`) and how the config is read.
pub struct Reloads {
    /// Requests, from the signal handler and the status endpoint.
    pub requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    /// A sender for the status endpoint.
    pub sender: tokio::sync::mpsc::Sender<ReloadRequest>,
    /// Reads and validates the config file.
    pub load: Loader,
}

impl std::fmt::Debug for Reloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloads").finish_non_exhaustive()
    }
}

/// Runs the pipeline until `shutdown` fires, then stops it cleanly. With `systemd`, tells
/// systemd when it is ready and pings its watchdog while the pipeline is alive. With
/// `reloads`, applies a re-read config on request ([`Running::reload`]); a config with any
/// problem is refused and the running one stays. With `[http]`, serves the status endpoint.
pub async fn run(
    config: &Config,
    mut shutdown: Shutdown,
    systemd: Option<SystemdNotify>,
    reloads: Option<Reloads>,
) -> Result<WriterReport, PipelineError> {
    let mut running = start(config).await?;
    tracing::info!(
        gateway = %config.gateway.id,
        adapters = config.adapters.len(),
        uplinks = config.uplinks.len(),
        "fieldgate running"
    );
    let (watchdog_stop, watchdog_shutdown) = ShutdownTrigger::new();
    if let Some(n) = &systemd {
        if let Err(e) = n.notify("READY=1") {
            tracing::warn!(error = %e, socket = %n.socket, "cannot notify systemd");
        }
        if let Some(period) = n.watchdog {
            tracing::info!(period = ?period, "systemd watchdog on");
            tokio::spawn(crate::watchdog::run(
                n.clone(),
                period,
                running.heartbeat(),
                running.queue().clone(),
                watchdog_shutdown,
            ));
        }
    }
    let (mut requests, sender, load) = match reloads {
        Some(r) => (Some(r.requests), Some(r.sender), Some(r.load)),
        None => (None, None, None),
    };
    let http = match &config.http {
        None => None,
        Some(h) => {
            match running
                .serve_status(config, h.listen, h.token.clone(), sender)
                .await
            {
                Ok((_, task)) => Some(AbortOnDrop(task)),
                Err(e) => {
                    // The data path matters more than the page: go on without it.
                    tracing::error!(listen = %h.listen, error = %e, "cannot serve the status endpoint; running without it");
                    None
                }
            }
        }
    };
    let mut current = config.clone();
    loop {
        let request = tokio::select! {
            () = shutdown.fired() => break,
            Some(r) = recv_opt(requests.as_mut()) => r,
        };
        let Some(load) = &load else { continue };
        if let Some(n) = &systemd {
            let _ = n.notify(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                crate::clock::sys::monotonic_usec()
            ));
        }
        // Reading the file is blocking I/O (and may resolve secrets from files).
        let load = Arc::clone(load);
        let loaded = tokio::task::spawn_blocking(move || load())
            .await
            .unwrap_or_else(|e| Err(format!("reading the config failed: {e}")));
        let outcome = match loaded {
            Err(problems) => Err(format!(
                "the new config was refused; the running one stays:\n{problems}"
            )),
            Ok(new) => Ok(running.reload(&mut current, &new).await),
        };
        match &outcome {
            Ok(summary) => tracing::info!(changes = %summary, "config reloaded"),
            Err(why) => tracing::error!(error = %why, "reload refused"),
        }
        let (ok, message) = match &outcome {
            Ok(m) => (true, m.as_str()),
            Err(m) => (false, m.as_str()),
        };
        running
            .board()
            .reloaded(ok, message, std::time::SystemTime::now());
        if let Some(n) = &systemd {
            let _ = n.notify("READY=1");
        }
        if let Some(reply) = request.reply {
            let _ = reply.send(outcome);
        }
    }
    drop(http);
    if let Some(n) = &systemd {
        let _ = n.notify("STOPPING=1");
    }
    let report = running.stop().await;
    watchdog_stop.fire();
    report
}

/// The next message of `rx`, or never without one.
async fn recv_opt<T>(rx: Option<&mut tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What one adapter's supervisor needs.
struct Supervisor {
    id: String,
    factory: AdapterFactory,
    readings: ReadingSender,
    routes: CommandRoutes,
    state: SharedState,
    opts: PipelineOptions,
    board: Arc<Board>,
}

impl Supervisor {
    /// Starts supervising; the returned trigger stops the adapter.
    fn spawn(self) -> Supervised {
        let (stop, shutdown) = ShutdownTrigger::new();
        let id = self.id.clone();
        let routes = Arc::clone(&self.routes);
        let board = Arc::clone(&self.board);
        let task = tokio::spawn(async move {
            let mine = supervise(self, shutdown).await;
            // Commands for a stopped adapter are refused ("unknown target") from now on; a
            // route a newer supervisor of the same id put in is left alone.
            if let (Ok(mut r), Some(mine)) = (routes.lock(), mine) {
                if r.get(&id).is_some_and(|t| t.same_channel(&mine)) {
                    r.remove(&id);
                }
            }
            board.adapter_stopped(&id);
        });
        Supervised { stop, task }
    }
}

/// Runs one adapter, restarting it with backoff whenever it fails, until shutdown. Returns the
/// command route it put in last.
async fn supervise(s: Supervisor, mut shutdown: Shutdown) -> Option<CommandSender> {
    let Supervisor {
        id,
        factory,
        readings,
        routes,
        state,
        opts,
        board,
    } = s;
    let mut backoff = Backoff::new(opts.restart_min, opts.restart_max);
    let mut mine = None;
    loop {
        let started = Instant::now();
        let outcome = match factory() {
            Err(e) => Err(e.to_string()),
            Ok(adapter) => {
                let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(64);
                if let Ok(mut r) = routes.lock() {
                    r.insert(id.clone(), cmd_tx.clone());
                }
                mine = Some(cmd_tx);
                let ctx = AdapterContext {
                    id: id.as_str().into(),
                    readings: readings.clone(),
                    shutdown: shutdown.clone(),
                    commands: cmd_rx,
                    state: Arc::clone(&state),
                };
                tracing::info!(adapter = %id, "adapter started");
                board.adapter_started(&id);
                // If this supervisor is aborted (an adapter that ignores shutdown), the guard
                // aborts the adapter's task too, so it cannot keep a reading sender alive.
                let mut task = AbortOnDrop(tokio::spawn(adapter.run(ctx)));
                match (&mut task.0).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) if e.is_panic() => Err(format!("panicked: {}", panic_message(e))),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        if shutdown.is_fired() {
            if let Err(why) = outcome {
                tracing::debug!(adapter = %id, error = %why, "adapter ended during shutdown");
            }
            tracing::info!(adapter = %id, "adapter stopped");
            return mine;
        }
        // A long healthy run earns a fresh backoff.
        if started.elapsed() > opts.restart_max {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match outcome {
            Ok(()) => {
                tracing::warn!(adapter = %id, restart_in = ?delay, "adapter stopped by itself; restarting")
            }
            Err(why) => {
                board.adapter_failed(&id, &why);
                tracing::error!(adapter = %id, error = %why, attempt = backoff.attempts(), restart_in = ?delay, "adapter failed; restarting")
            }
        }
        tokio::select! {
            () = shutdown.fired() => return mine,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    }
}

/// Commits readings in batches: up to `batch_size`, waiting at most `flush_interval` after
/// the first reading of a batch. With `rules`, every reading passes the rules stage first
/// (which may drop, suppress, aggregate or convert it, and raise alerts), and the stage's
/// timers (window ends, alert hold times) produce readings of their own. Ends when every
/// sender is gone and the channel is drained (open aggregation windows are then flushed), or
/// when `abort` fires (then whatever is still in memory is reported lost).
/// A new rules stage from [`Running::reload`] replaces the old one after the old one's open
/// windows are flushed.
async fn writer(w: Writer) -> WriterReport {
    let Writer {
        queue,
        mut rx,
        batch_size,
        flush_interval,
        mut abort,
        heartbeat,
        clock,
        mut rules,
        mut rule_updates,
        board,
        disk_clear_after,
    } = w;
    let mut committer = commit::Committer::new(
        queue,
        abort.clone(),
        Arc::clone(&heartbeat),
        Arc::clone(&clock),
        Arc::clone(&board),
        flush_interval,
        disk_clear_after,
    );
    let mut incoming: Vec<Reading> = Vec::with_capacity(batch_size);
    let mut batch = Batch {
        readings: Vec::with_capacity(batch_size),
        alerts: Vec::new(),
    };
    // The writer beats while it waits and after every commit; stuck in a commit, it stops
    // beating and the systemd watchdog stops being pinged.
    let mut beat = tokio::time::interval(crate::watchdog::WRITER_BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = false;
    loop {
        heartbeat.writer_beat();
        let rules_due = rules_deadline(rules.as_ref(), &*clock);
        // Alerts a full disk left in the batch (`drop_newest`) are tried again even when no
        // reading comes.
        let held_due = (!batch.is_empty()).then(|| Instant::now() + flush_interval.max(HELD_RETRY));
        // A disk that was full: once it has been quiet for long enough, an idle writer sees
        // whether it takes writes again (a busy one finds out with its next commit).
        let clear_due = committer.disk_clear_due().filter(|_| batch.is_empty());
        let got = tokio::select! {
            n = rx.recv_many(&mut incoming, batch_size) => n,
            () = sleep_until_opt(held_due) => usize::MAX,
            () = sleep_until_opt(clear_due) => {
                committer.try_clear().await;
                continue;
            }
            () = abort.fired() => 0,
            _ = beat.tick() => continue,
            () = sleep_until_opt(rules_due) => {
                if let Some(r) = rules.as_mut() {
                    let mut out = Output::default();
                    r.tick(clock.wall(), &mut out);
                    push_output(&mut batch, out);
                }
                usize::MAX
            }
            Some((update, ack)) = rule_updates.recv() => {
                if let Some(r) = rules.as_mut() {
                    let mut out = Output::default();
                    r.flush(clock.wall(), &mut out);
                    push_output(&mut batch, out);
                }
                rules = update;
                let _ = ack.send(());
                usize::MAX
            }
        };
        if got == 0 {
            if abort.is_fired() {
                break;
            }
            // Every sender is gone: what the rules stage still holds goes out last.
            closed = true;
            if let Some(r) = rules.as_mut() {
                let mut out = Output::default();
                r.flush(clock.wall(), &mut out);
                push_output(&mut batch, out);
            }
        } else if got != usize::MAX {
            stage(&mut rules, &mut incoming, &mut batch, &*clock, &board);
            let deadline = Instant::now() + flush_interval;
            while batch.len() < batch_size {
                let room = batch_size - batch.len();
                tokio::select! {
                    n = rx.recv_many(&mut incoming, room) => if n == 0 { break },
                    () = tokio::time::sleep_until(deadline) => break,
                    _ = beat.tick() => heartbeat.writer_beat(),
                }
                stage(&mut rules, &mut incoming, &mut batch, &*clock, &board);
            }
        }
        if !batch.is_empty() {
            committer.commit(&mut batch).await;
        }
        if abort.is_fired() || closed {
            break;
        }
    }
    let mut report = committer.report;
    if abort.is_fired() {
        // Count what could not be committed: the batch in hand and what is still queued up.
        rx.close();
        let mut rest = incoming.len() as u64;
        while rx.try_recv().is_ok() {
            rest += 1;
        }
        report.lost = batch.len() as u64 + rest;
        if report.lost > 0 {
            tracing::error!(
                lost = report.lost,
                "shutdown: readings in memory could not be committed and are lost"
            );
        }
    }
    report
}

/// How soon alerts held in memory by a full disk are tried again, at the least.
const HELD_RETRY: Duration = Duration::from_millis(500);

/// A new rules stage for the writer, and where it says it has taken it.
type RulesUpdate = (Option<Rules>, tokio::sync::oneshot::Sender<()>);

/// What the queue writer works with.
struct Writer {
    queue: QueueHandle,
    rx: ReadingReceiver,
    batch_size: usize,
    flush_interval: Duration,
    abort: Shutdown,
    heartbeat: Arc<Heartbeat>,
    clock: Arc<dyn Clock>,
    rules: Option<Rules>,
    rule_updates: tokio::sync::mpsc::UnboundedReceiver<RulesUpdate>,
    board: Arc<Board>,
    disk_clear_after: Duration,
}

/// Shows the readings in `incoming` to the status board, then passes them through the rules
/// stage (if any) into `batch`.
fn stage(
    rules: &mut Option<Rules>,
    incoming: &mut Vec<Reading>,
    batch: &mut Batch,
    clock: &dyn Clock,
    board: &Board,
) {
    board.observe(incoming, clock.wall());
    match rules {
        None => batch.readings.append(incoming),
        Some(r) => {
            let now = clock.wall();
            let mut out = Output::default();
            for reading in incoming.drain(..) {
                r.apply(reading, now, &mut out);
            }
            push_output(batch, out);
        }
    }
}

/// Appends what the rules stage produced: alerts first (they are the urgent part of the
/// batch), then readings.
fn push_output(batch: &mut Batch, out: Output) {
    for (reading, alert) in out.alerts {
        batch.alerts.push((batch.readings.len(), alert));
        batch.readings.push(reading);
    }
    batch.readings.extend(out.readings);
}

/// The rules stage's next timer as a tokio instant (its deadlines are wall-clock times).
fn rules_deadline(rules: Option<&Rules>, clock: &dyn Clock) -> Option<Instant> {
    let due = rules?.next_deadline()?;
    let wait = due.duration_since(clock.wall()).unwrap_or_default();
    Some(Instant::now() + wait)
}

/// Every second: drops readings older than `queue.max_age`, and moves the dead letters
/// `fieldgate queue requeue` asked for back into the queue.
/// Also takes the status board's throughput samples.
async fn upkeep(queue: QueueHandle, board: Arc<Board>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.fired() => return,
            _ = tick.tick() => {
                board.sample(std::time::SystemTime::now());
                if let Err(e) = queue.expire().await {
                    tracing::error!(error = %e, "cannot drop expired readings");
                }
                if let Err(e) = queue.requeue_requested().await {
                    tracing::error!(error = %e, "cannot requeue dead letters");
                }
            }
        }
    }
}

mod commit;
#[cfg(test)]
mod tests;
