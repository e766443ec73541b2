//! One Modbus link: connecting, one request at a time with a timeout, and classifying every
//! failure as a device answer (keep the link), a desync (discard and go on) or a transport
//! failure (reconnect).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Request, Response, SlaveContext};
use tokio_modbus::{ExceptionCode, Slave};

use crate::config::{ModbusConfig, Parity, Table, Transport};

/// Why a request did not return data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The device answered with an exception: the link is fine.
    Exception(ExceptionCode),
    /// No answer within the timeout.
    Timeout,
    /// An answer that does not belong to this request (a late response, another slave's
    /// frame, a short read): discarded; the link is kept.
    Desync(String),
    /// The connection or port failed: reconnect.
    Transport(String),
}

impl Failure {
    /// The text used as a reading's quality reason.
    pub fn reason(&self) -> String {
        match self {
            Failure::Exception(code) => format!("exception {:#04x}: {code}", u8::from(*code)),
            Failure::Timeout => "timeout".into(),
            Failure::Desync(m) => format!("unexpected response: {m}"),
            Failure::Transport(m) => format!("link down: {m}"),
        }
    }
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Registers.
    Words(Vec<u16>),
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
}

/// Counters of one link, readable while it runs.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Responses discarded as not belonging to their request.
    pub desyncs: AtomicU64,
    /// Stray bytes found waiting on the link before a request and thrown away.
    pub discarded_bytes: AtomicU64,
    /// Connections (or port openings) made.
    pub connects: AtomicU64,
}

/// A connected link.
#[derive(Debug)]
pub struct Link {
    ctx: Context,
    timeout: Duration,
    stats: Arc<LinkStats>,
}

/// Opens the link `config` describes, within `config.timeout`.
pub async fn connect(config: &ModbusConfig, stats: &Arc<LinkStats>) -> Result<Link, String> {
    let timeout = config.timeout;
    let ctx = match config.transport {
        Transport::Tcp | Transport::RtuOverTcp => {
            let addr = config.address.as_deref().unwrap_or_default();
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connecting to {addr} timed out"))?
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            // Requests are small and strictly alternate with responses: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let stream = Discard::new(stream, stats.clone());
            if config.transport == Transport::Tcp {
                tokio_modbus::client::tcp::attach(stream)
            } else {
                tokio_modbus::client::rtu::attach(stream)
            }
        }
        Transport::Rtu => {
            let path = config
                .port
                .as_deref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let builder = tokio_serial::new(&path, config.baud)
                .parity(match config.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .data_bits(if config.data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .stop_bits(if config.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .timeout(timeout);
            let port = tokio_serial::SerialStream::open(&builder)
                .map_err(|e| format!("cannot open {path}: {e}"))?;
            tokio_modbus::client::rtu::attach(Discard::new(port, stats.clone()))
        }
    };
    stats.connects.fetch_add(1, Ordering::Relaxed);
    Ok(Link {
        ctx,
        timeout,
        stats: stats.clone(),
    })
}

impl Link {
    /// Reads `count` registers or bits of `table` from `unit`.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
    ) -> Result<Data, Failure> {
        self.ctx.set_slave(Slave(unit));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = match table {
            Table::Coil => Request::ReadCoils(start, count),
            Table::DiscreteInput => Request::ReadDiscreteInputs(start, count),
            Table::InputRegister => Request::ReadInputRegisters(start, count),
            Table::HoldingRegister => Request::ReadHoldingRegisters(start, count),
        };
        // `call`, not `read_holding_registers` and co: those assert (in debug builds) that
        // the device answered with as many values as asked, and a device can answer with
        // anything (found by the `modbus_response` fuzz target). The count is checked here.
        let response = finish(self.timeout, self.ctx.call(request)).await?;
        let want = usize::from(count);
        match response {
            Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits)
                if bits.len() >= want =>
            {
                // Bits come in whole bytes: the padding of the last one goes.
                bits.truncate(want);
                Ok(Data::Bits(bits))
            }
            Response::ReadInputRegisters(words) | Response::ReadHoldingRegisters(words)
                if words.len() == want =>
            {
                Ok(Data::Words(words))
            }
            // A short (or long) answer would leave points without data, or shift them:
            // treat it as not ours.
            Response::ReadCoils(v) | Response::ReadDiscreteInputs(v) => Err(Failure::Desync(
                format!("asked for {count} values, got {}", v.len()),
            )),
            Response::ReadInputRegisters(v) | Response::ReadHoldingRegisters(v) => Err(
                Failure::Desync(format!("asked for {count} values, got {}", v.len())),
            ),
            other => Err(Failure::Desync(format!(
                "asked for {count} values, got another kind of answer: {other:?}"
            ))),
        }
    }

    /// Writes registers to `unit` (function 6 for one, 16 for several).
    pub async fn write_registers(
        &mut self,
        unit: u8,
        start: u16,
        words: &[u16],
    ) -> Result<(), Failure> {
        match words {
            [one] => {
                self.write(
                    unit,
                    Request::WriteSingleRegister(start, *one),
                    Response::WriteSingleRegister(start, *one),
                )
                .await
            }
            many => {
                let n = u16::try_from(many.len()).unwrap_or(u16::MAX);
                self.write(
                    unit,
                    Request::WriteMultipleRegisters(start, many.into()),
                    Response::WriteMultipleRegisters(start, n),
                )
                .await
            }
        }
    }

    /// Writes one coil of `unit` (function 5).
    pub async fn write_coil(&mut self, unit: u8, address: u16, on: bool) -> Result<(), Failure> {
        self.write(
            unit,
            Request::WriteSingleCoil(address, on),
            Response::WriteSingleCoil(address, on),
        )
        .await
    }

    /// Sends a write and checks that the answer echoes it. Through `call`: tokio-modbus's
    /// `write_*` methods assert the echo in debug builds, and a device can answer anything.
    async fn write(
        &mut self,
        unit: u8,
        request: Request<'_>,
        echo: Response,
    ) -> Result<(), Failure> {
        self.ctx.set_slave(Slave(unit));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = finish(self.timeout, self.ctx.call(request)).await?;
        if response == echo {
            Ok(())
        } else {
            Err(Failure::Desync(format!(
                "the answer to a write does not echo it: {response:?}"
            )))
        }
    }
}

/// Applies the timeout and sorts tokio-modbus's two-layer result into a [`Failure`].
async fn finish<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(code))) => Err(Failure::Exception(code)),
        Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(Failure::Desync(e.to_string())),
        Ok(Err(tokio_modbus::Error::Transport(e))) => Err(match e.kind() {
            // The codecs report undecodable bytes (a bad CRC, a garbled header) as InvalidData.
            io::ErrorKind::InvalidData => Failure::Desync(e.to_string()),
            _ => Failure::Transport(e.to_string()),
        }),
    }
}

impl Failure {
    /// Counts the failure in `stats`.
    pub fn count(&self, stats: &LinkStats) {
        match self {
            Failure::Timeout => stats.timeouts.fetch_add(1, Ordering::Relaxed),
            Failure::Desync(_) => stats.desyncs.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// A transport that throws away whatever is waiting to be read before each request goes out.
///
/// Modbus is strictly request/response: nothing can legitimately arrive before a request is
/// sent. Bytes that do are a late response to a request that already timed out, or line noise;
/// left in place they would be taken for the next response (on TCP a transaction-id mismatch,
/// on RTU another slave's frame), and the link would stay one answer behind for good.
#[derive(Debug)]
struct Discard<T> {
    inner: T,
    stats: Arc<LinkStats>,
}

impl<T> Discard<T> {
    fn new(inner: T, stats: Arc<LinkStats>) -> Self {
        Discard { inner, stats }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Discard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Discard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut scratch = [0u8; 256];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    let n = rb.filled().len() as u64;
                    self.stats.discarded_bytes.fetch_add(n, Ordering::Relaxed);
                }
                // End of stream: let the write report the closed link.
                Poll::Ready(Ok(())) => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
