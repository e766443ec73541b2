//! The serial adapter's byte path: the input (after its first byte) is fed in two chunks,
//! split where the first byte says, to a line framer (and to an STX/ETX delimited framer);
//! every frame is decoded as NMEA (checksum required, every field automatic), as NMEA
//! (checksum optional, named fields) and as CSV with a header line.
//!
//! One property is checked besides "no panic": the frames do not depend on where the
//! stream was split (the same bytes pushed in one piece give the same frames).

#![no_main]

use std::sync::OnceLock;

use fieldgate_serial::fields::Decoder;
use fieldgate_serial::frame::{Event, Framer};
use fieldgate_serial::SerialConfig;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 128;

fn parse(toml: &str) -> SerialConfig {
    use figment::providers::{Format as _, Toml};
    let cfg: SerialConfig = figment::Figment::from(Toml::string(toml))
        .extract()
        .expect("the fuzz config parses");
    let problems = cfg.validate();
    assert!(problems.is_empty(), "invalid fuzz config: {problems:?}");
    cfg
}

struct Configs {
    nmea: SerialConfig,
    nmea_named: SerialConfig,
    csv: SerialConfig,
}

fn configs() -> &'static Configs {
    static CFGS: OnceLock<Configs> = OnceLock::new();
    CFGS.get_or_init(|| Configs {
        nmea: parse("port = \"/dev/null\"\nformat = \"nmea\"\nmax_frame = 128"),
        nmea_named: parse(
            r#"
            port = "/dev/null"
            format = "nmea"
            checksum = "optional"
            max_frame = 128
            [[fields]]
            field = "GGA.altitude"
            [[fields]]
            field = "GGA.satellites"
            [[fields]]
            field = "MWV.wind_speed_true"
            scale = 3.6
            unit = "km/h"
            [[fields]]
            field = "MDA.pressure"
            [[fields]]
            field = "XDR.AirTemp"
            point = "air"
            [[fields]]
            field = "RMC.speed"
            type = "text"
            "#,
        ),
        csv: parse(
            r#"
            port = "/dev/null"
            format = "csv"
            header = true
            max_frame = 128
            [[fields]]
            field = "O2"
            unit = "%"
            [[fields]]
            field = "CO"
            type = "int"
            [[fields]]
            field = "ok"
            type = "bool"
            [[fields]]
            index = 3
            point = "note"
            type = "text"
            [[fields]]
            index = 4
            point = "scaled"
            scale = 0.5
            offset = -3
            "#,
        ),
    })
}

/// Frames (owned) and oversized/stray events of `chunks` pushed in order.
fn frames(mut framer: Framer, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for c in chunks {
        framer.push(c, |e| {
            if let Event::Frame(f) = e {
                assert!(!f.is_empty(), "the framer emitted an empty frame");
                assert!(f.len() <= MAX_FRAME, "a frame of {} bytes > max", f.len());
                out.push(f.to_vec());
            }
        });
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let at = usize::from(split) % (data.len() + 1);
    let (a, b) = data.split_at(at);

    let lines = frames(Framer::lines(b"\n", MAX_FRAME), &[a, b]);
    let whole = frames(Framer::lines(b"\n", MAX_FRAME), &[data]);
    assert_eq!(lines, whole, "line frames depend on the split at {at}");
    let delimited = frames(Framer::delimited(b"\x02", b"\x03", MAX_FRAME), &[a, b]);
    let whole = frames(Framer::delimited(b"\x02", b"\x03", MAX_FRAME), &[data]);
    assert_eq!(
        delimited, whole,
        "delimited frames depend on the split at {at}"
    );

    let c = configs();
    let mut decoders = [
        Decoder::new(&c.nmea).expect("nmea decoder"),
        Decoder::new(&c.nmea_named).expect("nmea decoder"),
        Decoder::new(&c.csv).expect("csv decoder"),
    ];
    let mut out = Vec::new();
    for f in lines.iter().chain(&delimited) {
        let text = String::from_utf8_lossy(f);
        for d in &mut decoders {
            let _ = d.decode(&text, &mut out);
            out.clear();
        }
    }
});
