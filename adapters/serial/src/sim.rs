//! Instruments without hardware: a pseudo-terminal behind a stable path that can be
//! unplugged and plugged back ([`VirtualPort`]), and a weather station speaking NMEA 0183
//! ([`weather_sentences`], [`spawn_weather_station`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};

/// A pseudo-terminal reached through a symlink that stays put, the way a USB-serial adapter
/// is reached through `/dev/serial/by-id/...`: [`VirtualPort::unplug`] closes the terminal
/// and removes the link (the gateway's reads fail, opening fails); [`VirtualPort::plug`]
/// makes a new terminal behind the same path. The instrument's side is the terminal's
/// master: what it writes, the gateway reads, and the other way round. The master is not
/// close-on-exec: a process spawned while the port is plugged inherits it, and an unplug then
/// no longer hangs the terminal up; plug it after spawning a gateway process.
#[derive(Debug)]
pub struct VirtualPort {
    link: PathBuf,
    pty: Option<Pty>,
}

#[derive(Debug)]
struct Pty {
    master: SerialStream,
    /// Held so that the master never sees a hang-up while no gateway has the port open.
    _slave: SerialStream,
}

impl VirtualPort {
    /// A new pseudo-terminal, plugged in at `link` (which must not be a file other than an
    /// old link).
    pub fn new(link: impl Into<PathBuf>) -> io::Result<VirtualPort> {
        let mut port = VirtualPort {
            link: link.into(),
            pty: None,
        };
        port.plug()?;
        Ok(port)
    }

    /// The stable path the gateway opens.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// True while plugged in.
    pub fn is_plugged(&self) -> bool {
        self.pty.is_some()
    }

    /// Plugs in a new terminal behind the path (nothing if already plugged).
    pub fn plug(&mut self) -> io::Result<()> {
        if self.pty.is_some() {
            return Ok(());
        }
        let (master, slave) = SerialStream::pair()?;
        let target = slave
            .name()
            .ok_or_else(|| io::Error::other("the pseudo-terminal has no name"))?;
        match std::fs::remove_file(&self.link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(target, &self.link)?;
        self.pty = Some(Pty {
            master,
            _slave: slave,
        });
        Ok(())
    }

    /// Pulls the plug: the terminal closes and the path disappears.
    pub fn unplug(&mut self) {
        self.pty = None;
        let _ = std::fs::remove_file(&self.link);
    }

    /// The instrument sends `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let pty = self.pty.as_mut().ok_or_else(unplugged)?;
        pty.master.write_all(bytes).await?;
        pty.master.flush().await
    }

    /// What the gateway sent to the instrument (waits for at least one byte).
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pty = self.pty.as_mut().ok_or_else(unplugged)?;
        pty.master.read(buf).await
    }
}

fn unplugged() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the virtual port is unplugged")
}

impl Drop for VirtualPort {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// `$<body>*<checksum>\r\n`: an NMEA sentence with its checksum.
pub fn nmea_sentence(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |acc, b| acc ^ b);
    format!("${body}*{sum:02X}\r\n")
}

/// Readings one cycle of [`weather_sentences`] gives with the NMEA parser's default fields.
pub const WEATHER_READINGS_PER_CYCLE: usize = 29;

/// One cycle of a weather station's output at step `t`: MDA, MWV (relative and true), two
/// XDR sentences with ten transducers, GGA (where it stands) and HDT (its compass) —
/// 29 readings, values drifting smoothly with `t`.
pub fn weather_sentences(t: u64) -> Vec<String> {
    #[allow(clippy::cast_precision_loss)]
    let x = t as f64 / 60.0;
    let wave = |period: f64, amplitude: f64| amplitude * (x * std::f64::consts::TAU / period).sin();
    let air = 14.0 + wave(24.0, 6.0);
    let humidity = 62.0 - wave(24.0, 15.0);
    let dew = air - (100.0 - humidity) / 5.0;
    let bar = 1.0132 + wave(90.0, 0.008);
    let wind_dir = (225.0 + wave(7.0, 40.0)).rem_euclid(360.0);
    let wind = 4.0 + wave(3.0, 2.5);
    let rel_angle = (wind_dir - 180.0).rem_euclid(360.0);
    vec![
        nmea_sentence(&format!(
            "WIMDA,{:.4},I,{bar:.4},B,{air:.1},C,,C,{humidity:.1},,{dew:.1},C,{wind_dir:.1},T,{:.1},M,{:.1},N,{wind:.1},M",
            bar * 29.529_983,
            (wind_dir - 3.1).rem_euclid(360.0),
            wind / 0.514_444,
        )),
        nmea_sentence(&format!("WIMWV,{rel_angle:.1},R,{:.1},N,A", wind / 0.514_444)),
        nmea_sentence(&format!("WIMWV,{wind_dir:.1},T,{:.1},K,A", wind * 3.6)),
        nmea_sentence(&format!(
            "WIXDR,C,{air:.1},C,AirTemp,H,{humidity:.1},P,RelHum,P,{bar:.4},B,Baro,C,{dew:.1},C,DewPoint,C,{:.1},C,WindChill",
            air - wind * 0.7,
        )),
        nmea_sentence(&format!(
            "WIXDR,V,{:.1},M,Rain,G,{:.0},,SolarRad,U,{:.2},V,Battery,C,{:.1},C,HeaterTemp,U,{:.2},V,Supply",
            (x / 10.0).floor() * 0.2,
            (600.0 + wave(24.0, 400.0)).max(0.0),
            12.6 + wave(24.0, 0.4),
            air + 8.0,
            24.1 + wave(5.0, 0.1),
        )),
        nmea_sentence(&format!(
            "GPGGA,{:06},5230.123,N,01322.456,E,1,{:02},0.9,34.5,M,44.6,M,,",
            t % 240_000,
            9 + t % 3,
        )),
        nmea_sentence(&format!("HCHDT,{:.1},T", 12.0 + wave(11.0, 0.5))),
    ]
}

/// A weather station on `port`: one cycle of [`weather_sentences`] every `period`, until
/// the task is aborted (or the port is unplugged).
pub fn spawn_weather_station(mut port: VirtualPort, period: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        for t in 0.. {
            tick.tick().await;
            for line in weather_sentences(t) {
                if port.write(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
}
