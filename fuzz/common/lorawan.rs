//! The LoRaWAN configuration shared by the `lorawan_*` targets: an ABP device with the
//! Cayenne codec (demo smart pole 1 of `fieldgate_lorawan::sim::pole_device(1)`), an ABP
//! device with a byte-layout codec (pole 2's keys), an OTAA device, and a forward filter
//! that matches every DevAddr, so that every data frame reaches a decision past the lookup.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fieldgate_lorawan::codec::LayoutField;
use fieldgate_lorawan::semtech::DataRate;
use fieldgate_lorawan::{LorawanConfig, LorawanStats, Network, RxMeta, Server};

/// The gateway EUI the targets' PUSH_DATA datagrams come from.
pub const GATEWAY: u64 = 0x00AA_BBFF_FE00_0001;

pub const CONFIG: &str = r#"
bind = "127.0.0.1:0"
dedup_window = "200ms"

[[devices]]
name = "pole-1"
dev_eui = "70b3d57ed0000001"
activation = "abp"
dev_addr = "26011f01"
nwk_skey = "21212121212121212121212121212121"
app_skey = "31313131313131313131313131313131"
codec = "cayenne"

[[devices]]
name = "tank-2"
dev_eui = "70b3d57ed0000002"
activation = "abp"
dev_addr = "26011f02"
nwk_skey = "22222222222222222222222222222222"
app_skey = "32323232323232323232323232323232"
codec = "layout"

[[devices.fields]]
point = "temperature"
offset = 0
type = "i16"
scale = 0.1
unit = "°C"

[[devices.fields]]
point = "pump_on"
offset = 2
type = "bool"
bit = 3

[[devices.fields]]
point = "level"
offset = 3
type = "f32"
endian = "little"
unit = "m"

[[devices.fields]]
point = "flow"
offset = 7
type = "u24"
scale = 0.001
add = -1.5

[[devices.fields]]
point = "total"
offset = 10
type = "i64"
fport = 2

[[devices.fields]]
point = "pressure"
offset = 10
type = "f64"
endian = "little"
fport = 3

[[devices]]
name = "tracker-3"
dev_eui = "70b3d57ed0000003"
activation = "otaa"
app_key = "2b7e151628aed2a6abf7158809cf4f3c"
join_eui = "70b3d57ed0000000"
codec = "cayenne"

[forward]
dev_addr_prefixes = ["00000000/0"]
"#;

/// The validated configuration, parsed once.
pub fn config() -> &'static LorawanConfig {
    static CFG: OnceLock<LorawanConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        use figment::providers::{Format as _, Toml};
        let cfg: LorawanConfig = figment::Figment::from(Toml::string(CONFIG))
            .extract()
            .expect("the fuzz config parses");
        let problems = cfg.validate();
        assert!(
            problems.is_empty(),
            "the fuzz config is invalid: {problems:?}"
        );
        cfg
    })
}

/// The layout fields of the `tank-2` device.
pub fn layout_fields() -> &'static [LayoutField] {
    &config().devices[1].fields
}

/// A fresh server (fresh sessions and counters) for one input.
pub fn server() -> Server {
    Server::new("lora".into(), config(), Arc::new(LorawanStats::default()))
}

/// A fresh network for one input.
pub fn network() -> Network {
    Network::new("lora".into(), config(), Arc::new(LorawanStats::default()))
}

/// A fixed wall-clock time (2026-11-21), so runs are reproducible.
pub fn wall_clock() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_200)
}

pub fn meta() -> RxMeta {
    RxMeta {
        gateway: GATEWAY,
        tmst: 1_000_000,
        freq: 868.1,
        chan: 0,
        rfch: 0,
        datr: DataRate::Lora("SF7BW125".into()),
        codr: "4/5".into(),
        rssi: Some(-71.0),
        snr: Some(7.5),
    }
}
