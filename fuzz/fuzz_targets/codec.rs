//! The application payload codecs on arbitrary bytes: Cayenne LPP, the `tank-2` byte layout
//! of the shared config (on FPorts 1, 2 and 3, where fields are filtered by FPort), and a
//! layout with every field type in both byte orders.

#![no_main]

#[path = "../common/lorawan.rs"]
mod common;

use std::sync::OnceLock;

use fieldgate_lorawan::codec::{self, CodecKind, Endian, LayoutField, LayoutType};
use libfuzzer_sys::fuzz_target;

fn every_type() -> &'static [LayoutField] {
    static FIELDS: OnceLock<Vec<LayoutField>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        use LayoutType::*;
        let types = [
            U8, I8, U16, I16, U24, I24, U32, I32, U64, I64, F32, F64, Bool,
        ];
        let mut out = Vec::new();
        let mut offset = 0;
        for (i, ty) in types.into_iter().enumerate() {
            for (j, endian) in [Endian::Big, Endian::Little].into_iter().enumerate() {
                out.push(LayoutField {
                    point: format!("f{i}_{j}"),
                    offset,
                    ty,
                    endian,
                    bit: (ty == Bool).then_some(7),
                    scale: (i % 3 == 1).then_some(0.01),
                    add: (i % 4 == 2).then_some(-40.0),
                    unit: None,
                    fport: None,
                });
                offset += ty.size();
            }
        }
        let problems = codec::validate(&CodecKind::Layout, &out);
        assert!(problems.is_empty(), "{problems:?}");
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = std::hint::black_box(codec::decode(&CodecKind::Cayenne, &[], 1, data));
    let tank = common::layout_fields();
    for fport in [1, 2, 3] {
        let _ = std::hint::black_box(codec::decode(&CodecKind::Layout, tank, fport, data));
    }
    let _ = std::hint::black_box(codec::decode(&CodecKind::Layout, every_type(), 1, data));
});
