//! A simulated Modbus device: tokio-modbus's server over a register bank.
//!
//! [`SimServer`] answers reads and writes of coils, discrete inputs, input and holding
//! registers for the unit ids it has, counts every request, and injects faults on demand
//! ([`Faults`]: illegal addresses, silent units, slow answers, a fixed exception). It serves
//! over TCP ([`SimServer::serve_tcp`], killable with its connections) or over a serial port or
//! pseudo-terminal ([`SimServer::serve_rtu`]). [`water_tank`] animates one unit as the demo's
//! tank. Tests, the demo and the bench use it; it is not a production server.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::config::Table;

/// One unit's four tables, 65,536 entries each.
#[derive(Debug, Clone)]
struct Registers {
    coils: Vec<bool>,
    discrete_inputs: Vec<bool>,
    input_registers: Vec<u16>,
    holding_registers: Vec<u16>,
}

impl Registers {
    fn new() -> Self {
        Registers {
            coils: vec![false; 65536],
            discrete_inputs: vec![false; 65536],
            input_registers: vec![0; 65536],
            holding_registers: vec![0; 65536],
        }
    }
}

/// Faults the server injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Addresses that do not exist: a read or write covering one gets *illegal data address*.
    pub illegal: HashSet<(Table, u16)>,
    /// Units that never answer (a dead slave on the bus).
    pub silent_units: HashSet<u8>,
    /// Every answer waits this long.
    pub delay: Duration,
    /// Answers from these units wait this long (a slow slave answering late).
    pub slow_units: HashMap<u8, Duration>,
    /// Every request is answered with this exception.
    pub exception: Option<ExceptionCode>,
    /// Addresses the device never answers for (a meter that silently ignores registers it
    /// does not have): a read covering one gets no answer at all.
    pub silent: HashSet<(Table, u16)>,
    /// Writes are acknowledged but change nothing (a device clamping or ignoring them).
    pub ignore_writes: bool,
}

#[derive(Debug, Default)]
struct Shared {
    units: Mutex<HashMap<u8, Registers>>,
    faults: Mutex<Faults>,
    requests: AtomicU64,
    requests_by_unit: Mutex<HashMap<u8, u64>>,
}

/// A simulated Modbus device (or several units behind one port). Cheap to clone; clones
/// share the registers.
#[derive(Debug, Clone, Default)]
pub struct SimServer {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimServer {
    /// A server with the given unit ids, every register zero.
    pub fn new(units: &[u8]) -> Self {
        let s = SimServer::default();
        {
            let mut map = lock(&s.shared.units);
            for u in units {
                map.insert(*u, Registers::new());
            }
        }
        s
    }

    /// Sets holding registers of `unit` from `address` on.
    pub fn set_holding(&self, unit: u8, address: u16, values: &[u16]) {
        self.with(unit, |r| copy(&mut r.holding_registers, address, values));
    }

    /// Sets input registers of `unit` from `address` on.
    pub fn set_input(&self, unit: u8, address: u16, values: &[u16]) {
        self.with(unit, |r| copy(&mut r.input_registers, address, values));
    }

    /// Sets coils of `unit` from `address` on.
    pub fn set_coils(&self, unit: u8, address: u16, values: &[bool]) {
        self.with(unit, |r| copy(&mut r.coils, address, values));
    }

    /// Sets discrete inputs of `unit` from `address` on.
    pub fn set_discrete(&self, unit: u8, address: u16, values: &[bool]) {
        self.with(unit, |r| copy(&mut r.discrete_inputs, address, values));
    }

    /// `count` holding registers of `unit` from `address`.
    pub fn holding(&self, unit: u8, address: u16, count: u16) -> Vec<u16> {
        let units = lock(&self.shared.units);
        units.get(&unit).map_or_else(Vec::new, |r| {
            slice(&r.holding_registers, address, count).to_vec()
        })
    }

    /// The coil of `unit` at `address`.
    pub fn coil(&self, unit: u8, address: u16) -> bool {
        let units = lock(&self.shared.units);
        units
            .get(&unit)
            .is_some_and(|r| r.coils[usize::from(address)])
    }

    /// Requests received so far (all units, answered or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests received so far for one unit.
    pub fn requests_for(&self, unit: u8) -> u64 {
        lock(&self.shared.requests_by_unit)
            .get(&unit)
            .copied()
            .unwrap_or(0)
    }

    /// The faults to inject, to change them.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.shared.faults)
    }

    fn with(&self, unit: u8, f: impl FnOnce(&mut Registers)) {
        let mut units = lock(&self.shared.units);
        f(units.entry(unit).or_insert_with(Registers::new));
    }

    /// Serves Modbus TCP on `listener` until the handle is killed or dropped.
    pub fn serve_tcp(&self, listener: TcpListener) -> TcpHandle {
        self.serve_on(listener, false)
    }

    /// Serves Modbus RTU frames over TCP (a serial device server) on `listener`.
    pub fn serve_rtu_over_tcp(&self, listener: TcpListener) -> TcpHandle {
        self.serve_on(listener, true)
    }

    fn serve_on(&self, listener: TcpListener, rtu_framing: bool) -> TcpHandle {
        let addr = listener.local_addr().ok();
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let server = self.clone();
        let track = conns.clone();
        let task = tokio::spawn(async move {
            let on_connected = move |stream: TcpStream, _addr: SocketAddr| {
                let server = server.clone();
                let track = track.clone();
                async move {
                    // Keep a second handle on the socket so that `kill` can cut it.
                    let std = stream.into_std()?;
                    lock(&track).push(std.try_clone()?);
                    let stream = TcpStream::from_std(std)?;
                    let _ = stream.set_nodelay(true);
                    Ok(Some((server, stream)))
                }
            };
            if rtu_framing {
                let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
                let _ = server.serve(&on_connected, |_err| {}).await;
            } else {
                let server = tokio_modbus::server::tcp::Server::new(listener);
                let _ = server.serve(&on_connected, |_err| {}).await;
            }
        });
        TcpHandle { addr, task, conns }
    }

    /// Serves Modbus RTU on a serial port (or one end of a pseudo-terminal) until the port
    /// fails or the future is dropped.
    pub async fn serve_rtu(&self, port: tokio_serial::SerialStream) -> io::Result<()> {
        tokio_modbus::server::rtu::Server::new(port)
            .serve_forever(self.clone())
            .await
    }

    /// Serves Modbus RTU on a new pseudo-terminal: the server holds the master side; the
    /// returned bus names the slave side, for a gateway to open as its serial port, and keeps
    /// it open (so the master never sees a hang-up) until dropped.
    pub fn serve_pty(&self) -> io::Result<PtyBus> {
        use tokio_serial::SerialPort;
        let (master, slave) = tokio_serial::SerialStream::pair()?;
        let path = slave
            .name()
            .ok_or_else(|| io::Error::other("the pseudo-terminal has no name"))?;
        let server = self.clone();
        let task = tokio::spawn(async move {
            let _ = server.serve_rtu(master).await;
        });
        Ok(PtyBus {
            path,
            _slave: slave,
            task,
        })
    }

    fn answer(&self, req: &SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        *lock(&self.shared.requests_by_unit)
            .entry(req.slave)
            .or_insert(0) += 1;
        let faults = self.faults().clone();
        if faults.silent_units.contains(&req.slave) {
            return Ok(None);
        }
        if let Some(code) = faults.exception {
            return Err(code);
        }
        let mut units = lock(&self.shared.units);
        let Some(r) = units.get_mut(&req.slave) else {
            // No such slave on the bus: silence, as on a real RS-485 line.
            return Ok(None);
        };
        let covers = |table: Table, addr: u16, n: u16, set: &HashSet<(Table, u16)>| {
            (u32::from(addr)..u32::from(addr) + u32::from(n))
                .any(|a| u16::try_from(a).is_ok_and(|a| set.contains(&(table, a))))
        };
        let silent = match &req.request {
            Request::ReadCoils(a, n) => covers(Table::Coil, *a, *n, &faults.silent),
            Request::ReadDiscreteInputs(a, n) => {
                covers(Table::DiscreteInput, *a, *n, &faults.silent)
            }
            Request::ReadInputRegisters(a, n) => {
                covers(Table::InputRegister, *a, *n, &faults.silent)
            }
            Request::ReadHoldingRegisters(a, n) => {
                covers(Table::HoldingRegister, *a, *n, &faults.silent)
            }
            _ => false,
        };
        if silent {
            return Ok(None);
        }
        let check = |table: Table, addr: u16, n: usize, max: usize| {
            if n == 0 || n > max {
                return Err(ExceptionCode::IllegalDataValue);
            }
            if usize::from(addr) + n > 65536 {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            let end = u32::from(addr) + n as u32;
            if (u32::from(addr)..end)
                .any(|a| u16::try_from(a).is_ok_and(|a| faults.illegal.contains(&(table, a))))
            {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            Ok(())
        };
        let resp = match &req.request {
            Request::ReadCoils(a, n) => {
                check(Table::Coil, *a, usize::from(*n), 2000)?;
                Response::ReadCoils(slice(&r.coils, *a, *n).to_vec())
            }
            Request::ReadDiscreteInputs(a, n) => {
                check(Table::DiscreteInput, *a, usize::from(*n), 2000)?;
                Response::ReadDiscreteInputs(slice(&r.discrete_inputs, *a, *n).to_vec())
            }
            Request::ReadInputRegisters(a, n) => {
                check(Table::InputRegister, *a, usize::from(*n), 125)?;
                Response::ReadInputRegisters(slice(&r.input_registers, *a, *n).to_vec())
            }
            Request::ReadHoldingRegisters(a, n) => {
                check(Table::HoldingRegister, *a, usize::from(*n), 125)?;
                Response::ReadHoldingRegisters(slice(&r.holding_registers, *a, *n).to_vec())
            }
            Request::WriteSingleCoil(a, v) => {
                check(Table::Coil, *a, 1, 1)?;
                if !faults.ignore_writes {
                    r.coils[usize::from(*a)] = *v;
                }
                Response::WriteSingleCoil(*a, *v)
            }
            Request::WriteMultipleCoils(a, vs) => {
                check(Table::Coil, *a, vs.len(), 1968)?;
                if !faults.ignore_writes {
                    copy(&mut r.coils, *a, vs);
                }
                Response::WriteMultipleCoils(*a, u16::try_from(vs.len()).unwrap_or(0))
            }
            Request::WriteSingleRegister(a, v) => {
                check(Table::HoldingRegister, *a, 1, 1)?;
                if !faults.ignore_writes {
                    r.holding_registers[usize::from(*a)] = *v;
                }
                Response::WriteSingleRegister(*a, *v)
            }
            Request::WriteMultipleRegisters(a, vs) => {
                check(Table::HoldingRegister, *a, vs.len(), 123)?;
                if !faults.ignore_writes {
                    copy(&mut r.holding_registers, *a, vs);
                }
                Response::WriteMultipleRegisters(*a, u16::try_from(vs.len()).unwrap_or(0))
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        Ok(Some(resp))
    }
}

fn slice<T>(v: &[T], address: u16, count: u16) -> &[T] {
    let from = usize::from(address).min(v.len());
    let to = (from + usize::from(count)).min(v.len());
    &v[from..to]
}

fn copy<T: Copy>(dst: &mut [T], address: u16, values: &[T]) {
    let from = usize::from(address).min(dst.len());
    let n = values.len().min(dst.len() - from);
    dst[from..from + n].copy_from_slice(&values[..n]);
}

type Answer = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Service for SimServer {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, req: Self::Request) -> Self::Future {
        let delay = {
            let f = self.faults();
            f.slow_units.get(&req.slave).copied().unwrap_or(f.delay)
        };
        let answer = self.answer(&req);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

/// An RTU bus on a pseudo-terminal, served by a [`SimServer`]; stops when dropped.
#[derive(Debug)]
pub struct PtyBus {
    path: String,
    _slave: tokio_serial::SerialStream,
    task: JoinHandle<()>,
}

impl PtyBus {
    /// The serial port to open, like `/dev/pts/3`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Drop for PtyBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running TCP server.
#[derive(Debug)]
pub struct TcpHandle {
    addr: Option<SocketAddr>,
    task: JoinHandle<()>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpHandle {
    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Where it listens.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops listening and cuts every open connection, like a device being switched off.
    pub fn kill(self) {
        self.task.abort();
        for c in lock(&self.conns).drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TcpHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The register map of the simulated water tank (unit `unit` of `server`), which
/// `config/demo.toml` and `config/water-tank.toml` read:
///
/// | table | address | type | meaning |
/// |---|---|---|---|
/// | input register | 0 | u16 | level, cm |
/// | input register | 1–2 | f32 ABCD | water temperature, °C |
/// | holding register | 0 | u16 | high-level alarm setpoint, cm (writable) |
/// | holding register | 10–13 | string | serial number |
/// | coil | 0 | bool | pump running |
/// | discrete input | 0 | bool | high-level alarm |
///
/// The level falls with consumption and rises while the pump runs; the pump starts below
/// 100 cm and stops at the setpoint minus 20 cm. Returns the task animating it.
pub fn water_tank(server: &SimServer, unit: u8) -> JoinHandle<()> {
    server.set_holding(unit, 0, &[380]);
    let serial: Vec<u16> = b"TK-0001\0"
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    server.set_holding(unit, 10, &serial);
    let server = server.clone();
    tokio::spawn(async move {
        // Each unit starts at its own level and phase, so several tanks differ.
        let mut level: f64 = 120.0 + 70.0 * f64::from(unit % 4);
        let mut t: f64 = 30.0 * f64::from(unit);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            t += 0.2;
            let setpoint = f64::from(server.holding(unit, 0, 1).first().copied().unwrap_or(380));
            let mut pump = server.coil(unit, 0);
            if level < 100.0 {
                pump = true;
            } else if level >= setpoint - 20.0 {
                pump = false;
            }
            // Consumption varies slowly; the pump adds 6 cm/s.
            let consumption = 2.0 + 1.5 * (t / 20.0).sin();
            level += 0.2 * (if pump { 6.0 } else { 0.0 } - consumption);
            level = level.clamp(0.0, 500.0);
            let temperature = 11.0 + 0.8 * (t / 60.0).sin();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let level_cm = level.round() as u16;
            #[allow(clippy::cast_possible_truncation)]
            let bits = (temperature as f32).to_bits();
            server.set_input(unit, 0, &[level_cm, (bits >> 16) as u16, bits as u16]);
            server.set_coils(unit, 0, &[pump]);
            server.set_discrete(unit, 0, &[level >= setpoint]);
        }
    })
}
