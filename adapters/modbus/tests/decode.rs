//! The codec against register images worked out by hand.
//!
//! Every expected value here is a literal derived from the specs — IEEE 754 bit patterns,
//! two's complement, and the byte-order table in the `codec` module doc — never from the
//! decoder or from `from_be_bytes`. Each case carries its derivation in a comment.
//!
//! The byte-order table, with the value's most significant byte named `A`:
//!
//! | order  | 16-bit | 32-bit  | 64-bit          |
//! |--------|--------|---------|-----------------|
//! | `ABCD` | A B    | A B C D | A B C D E F G H |
//! | `CDAB` | A B    | C D A B | G H E F C D A B |
//! | `BADC` | B A    | B A D C | B A D C F E H G |
//! | `DCBA` | B A    | D C B A | H G F E D C B A |
//!
//! Registers go on the wire big-endian, so a register written `0xXXYY` carries byte `XX`
//! first. Strings keep register order; `BADC`/`DCBA` swap the two characters of a register.

use fieldgate_adapter::Value;
use fieldgate_modbus::codec::{ByteOrder, Codec, DataType as Ty};

use ByteOrder::{Abcd, Badc, Cdab, Dcba};

/// One decode case: type, order, registers as they arrive on the wire, expected value.
type Case = (Ty, ByteOrder, &'static [u16], Value);

fn int(i: i64) -> Value {
    Value::I64(i)
}

fn float(f: f64) -> Value {
    Value::F64(f)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// Value equality, but floats compared bit for bit (so `-0.0 != 0.0` and a one-ulp
/// difference is reported).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn hex(regs: &[u16]) -> String {
    let words: Vec<String> = regs.iter().map(|r| format!("0x{r:04X}")).collect();
    format!("[{}]", words.join(", "))
}

fn show(v: &Value) -> String {
    match v {
        Value::F64(f) => format!("F64({f:?}, bits {:#018x})", f.to_bits()),
        other => format!("{other:?}"),
    }
}

/// `None` when `codec` decodes `regs` to `expected`, else a description of the mismatch.
fn mismatch(codec: &Codec, regs: &[u16], expected: &Value) -> Option<String> {
    let actual = codec.decode(regs);
    if same(&actual, expected) {
        return None;
    }
    Some(format!(
        "{:?} {} bit={} scale={:?} offset={:?} regs {}: expected {}, got {}",
        codec.data_type,
        codec.order,
        codec.bit,
        codec.scale,
        codec.offset,
        hex(regs),
        show(expected),
        show(&actual),
    ))
}

/// Decodes `regs` as `ty` in `order` (no scaling) and compares with `expected`.
#[track_caller]
fn check(ty: Ty, order: ByteOrder, regs: &[u16], expected: Value) {
    check_codec(&Codec::new(ty, order), regs, expected);
}

#[track_caller]
fn check_codec(codec: &Codec, regs: &[u16], expected: Value) {
    if let Some(m) = mismatch(codec, regs, &expected) {
        panic!("{m}");
    }
}

/// Runs every case and reports all the failures at once.
#[track_caller]
fn check_table(cases: &[Case]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(ty, order, regs, expected)| {
            mismatch(&Codec::new(*ty, *order), regs, expected)
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 16-bit integers
// ---------------------------------------------------------------------------------------

fn u16_cases() -> Vec<Case> {
    vec![
        // 0x1234 = 1*4096 + 2*256 + 3*16 + 4 = 4660. ABCD/CDAB read A B as sent.
        (Ty::U16, Abcd, &[0x1234], int(4660)),
        (Ty::U16, Cdab, &[0x1234], int(4660)),
        // BADC/DCBA: the wire carries B A = 0x34 0x12, so register 0x3412 is 0x1234.
        (Ty::U16, Badc, &[0x3412], int(4660)),
        (Ty::U16, Dcba, &[0x3412], int(4660)),
        // ... and register 0x1234 read byte-swapped is 0x3412 = 3*4096 + 4*256 + 16 + 2 = 13330.
        (Ty::U16, Badc, &[0x1234], int(13330)),
        (Ty::U16, Dcba, &[0x1234], int(13330)),
        // 0x8000 = 2^15 = 32768; byte-swapped on the wire as 0x0080.
        (Ty::U16, Abcd, &[0x8000], int(32768)),
        (Ty::U16, Cdab, &[0x8000], int(32768)),
        (Ty::U16, Badc, &[0x0080], int(32768)),
        (Ty::U16, Dcba, &[0x0080], int(32768)),
        // 0xFFFF = 2^16 - 1 = 65535 in every order (both bytes equal); 0 likewise.
        (Ty::U16, Abcd, &[0xFFFF], int(65535)),
        (Ty::U16, Cdab, &[0xFFFF], int(65535)),
        (Ty::U16, Badc, &[0xFFFF], int(65535)),
        (Ty::U16, Dcba, &[0xFFFF], int(65535)),
        (Ty::U16, Badc, &[0x0000], int(0)),
    ]
}

fn i16_cases() -> Vec<Case> {
    vec![
        // 0xFFFE: top bit set, so 0xFFFE - 0x10000 = -2.
        (Ty::I16, Abcd, &[0xFFFE], int(-2)),
        (Ty::I16, Cdab, &[0xFFFE], int(-2)),
        // Byte-swapped: the wire carries FE FF, i.e. register 0xFEFF.
        (Ty::I16, Badc, &[0xFEFF], int(-2)),
        (Ty::I16, Dcba, &[0xFEFF], int(-2)),
        // Register 0xFFFE byte-swapped is 0xFEFF = 0xFEFF - 0x10000 = -0x0101 = -257.
        (Ty::I16, Badc, &[0xFFFE], int(-257)),
        // 0x8000 = -2^15 = -32768 (i16::MIN); swapped wire form 0x0080.
        (Ty::I16, Abcd, &[0x8000], int(-32768)),
        (Ty::I16, Cdab, &[0x8000], int(-32768)),
        (Ty::I16, Badc, &[0x0080], int(-32768)),
        (Ty::I16, Dcba, &[0x0080], int(-32768)),
        // 0x7FFF = 2^15 - 1 = 32767 (i16::MAX); swapped wire form 0xFF7F.
        (Ty::I16, Abcd, &[0x7FFF], int(32767)),
        (Ty::I16, Cdab, &[0x7FFF], int(32767)),
        (Ty::I16, Badc, &[0xFF7F], int(32767)),
        (Ty::I16, Dcba, &[0xFF7F], int(32767)),
        // 0xFFFF = -1 in every order.
        (Ty::I16, Abcd, &[0xFFFF], int(-1)),
        (Ty::I16, Dcba, &[0xFFFF], int(-1)),
        // 0xFF9C = 0xFF9C - 0x10000 = -0x64 = -100; swapped 0x9CFF.
        (Ty::I16, Abcd, &[0xFF9C], int(-100)),
        (Ty::I16, Badc, &[0x9CFF], int(-100)),
    ]
}

// ---------------------------------------------------------------------------------------
// 32-bit integers
// ---------------------------------------------------------------------------------------

fn u32_cases() -> Vec<Case> {
    vec![
        // 0x12345678 = 305_419_896 (A=12 B=34 C=56 D=78):
        //   0x1234 * 65536 + 0x5678 = 4660 * 65536 + 22136 = 305_397_760 + 22_136.
        // ABCD: 12 34 56 78
        (Ty::U32, Abcd, &[0x1234, 0x5678], int(305_419_896)),
        // CDAB: 56 78 12 34
        (Ty::U32, Cdab, &[0x5678, 0x1234], int(305_419_896)),
        // BADC: 34 12 78 56
        (Ty::U32, Badc, &[0x3412, 0x7856], int(305_419_896)),
        // DCBA: 78 56 34 12
        (Ty::U32, Dcba, &[0x7856, 0x3412], int(305_419_896)),
        // 0xFFFFFFFE = 2^32 - 2 = 4_294_967_294 (stays positive for u32).
        (Ty::U32, Abcd, &[0xFFFF, 0xFFFE], int(4_294_967_294)),
        (Ty::U32, Cdab, &[0xFFFE, 0xFFFF], int(4_294_967_294)),
        (Ty::U32, Badc, &[0xFFFF, 0xFEFF], int(4_294_967_294)),
        (Ty::U32, Dcba, &[0xFEFF, 0xFFFF], int(4_294_967_294)),
        // 0x00010000 = 65536: tells ABCD from CDAB (a word swap would give 1).
        (Ty::U32, Abcd, &[0x0001, 0x0000], int(65536)),
        (Ty::U32, Cdab, &[0x0001, 0x0000], int(1)),
        // Register 0x0001 byte-swapped is 0x0100: BADC 0x01000000 = 2^24 = 16_777_216,
        // DCBA 0x00000100 = 256.
        (Ty::U32, Badc, &[0x0001, 0x0000], int(16_777_216)),
        (Ty::U32, Dcba, &[0x0001, 0x0000], int(256)),
    ]
}

fn i32_cases() -> Vec<Case> {
    vec![
        // Positive: 0x12345678 = 305_419_896, same images as u32.
        (Ty::I32, Abcd, &[0x1234, 0x5678], int(305_419_896)),
        (Ty::I32, Cdab, &[0x5678, 0x1234], int(305_419_896)),
        (Ty::I32, Badc, &[0x3412, 0x7856], int(305_419_896)),
        (Ty::I32, Dcba, &[0x7856, 0x3412], int(305_419_896)),
        // -2 = 2^32 - 2 = 0xFFFFFFFE.
        (Ty::I32, Abcd, &[0xFFFF, 0xFFFE], int(-2)),
        (Ty::I32, Cdab, &[0xFFFE, 0xFFFF], int(-2)),
        (Ty::I32, Badc, &[0xFFFF, 0xFEFF], int(-2)),
        (Ty::I32, Dcba, &[0xFEFF, 0xFFFF], int(-2)),
        // i32::MIN = -2^31 = 0x80000000 = -2_147_483_648.
        (Ty::I32, Abcd, &[0x8000, 0x0000], int(-2_147_483_648)),
        (Ty::I32, Cdab, &[0x0000, 0x8000], int(-2_147_483_648)),
        (Ty::I32, Badc, &[0x0080, 0x0000], int(-2_147_483_648)),
        (Ty::I32, Dcba, &[0x0000, 0x0080], int(-2_147_483_648)),
        // -123_456: 123_456 = 0x0001E240 (1*65536 + 14*4096 + 2*256 + 4*16),
        // so -123_456 = !0x0001E240 + 1 = 0xFFFE1DBF + 1 = 0xFFFE1DC0 (A=FF B=FE C=1D D=C0).
        (Ty::I32, Abcd, &[0xFFFE, 0x1DC0], int(-123_456)),
        (Ty::I32, Cdab, &[0x1DC0, 0xFFFE], int(-123_456)),
        (Ty::I32, Badc, &[0xFEFF, 0xC01D], int(-123_456)),
        (Ty::I32, Dcba, &[0xC01D, 0xFEFF], int(-123_456)),
        // i32::MAX = 2^31 - 1 = 0x7FFFFFFF = 2_147_483_647.
        (Ty::I32, Abcd, &[0x7FFF, 0xFFFF], int(2_147_483_647)),
        (Ty::I32, Dcba, &[0xFFFF, 0xFF7F], int(2_147_483_647)),
    ]
}

// ---------------------------------------------------------------------------------------
// 64-bit integers
// ---------------------------------------------------------------------------------------

fn u64_cases() -> Vec<Case> {
    vec![
        // 0x0102030405060708 (A=01 B=02 ... H=08)
        //   = 0x01020304 * 2^32 + 0x05060708
        //   = 16_909_060 * 4_294_967_296 + 84_281_096
        //   = 72_623_859_706_101_760 + 84_281_096 = 72_623_859_790_382_856.
        // ABCD: 01 02 03 04 05 06 07 08
        (
            Ty::U64,
            Abcd,
            &[0x0102, 0x0304, 0x0506, 0x0708],
            int(72_623_859_790_382_856),
        ),
        // CDAB: G H E F C D A B = 07 08 05 06 03 04 01 02
        (
            Ty::U64,
            Cdab,
            &[0x0708, 0x0506, 0x0304, 0x0102],
            int(72_623_859_790_382_856),
        ),
        // BADC: B A D C F E H G = 02 01 04 03 06 05 08 07
        (
            Ty::U64,
            Badc,
            &[0x0201, 0x0403, 0x0605, 0x0807],
            int(72_623_859_790_382_856),
        ),
        // DCBA: H G F E D C B A = 08 07 06 05 04 03 02 01
        (
            Ty::U64,
            Dcba,
            &[0x0807, 0x0605, 0x0403, 0x0201],
            int(72_623_859_790_382_856),
        ),
        // i64::MAX = 2^63 - 1 = 0x7FFFFFFFFFFFFFFF = 9_223_372_036_854_775_807: still an I64.
        (
            Ty::U64,
            Abcd,
            &[0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF],
            int(9_223_372_036_854_775_807),
        ),
        (
            Ty::U64,
            Cdab,
            &[0xFFFF, 0xFFFF, 0xFFFF, 0x7FFF],
            int(9_223_372_036_854_775_807),
        ),
        (
            Ty::U64,
            Badc,
            &[0xFF7F, 0xFFFF, 0xFFFF, 0xFFFF],
            int(9_223_372_036_854_775_807),
        ),
        (
            Ty::U64,
            Dcba,
            &[0xFFFF, 0xFFFF, 0xFFFF, 0xFF7F],
            int(9_223_372_036_854_775_807),
        ),
        // Above i64::MAX the codec answers a float (see `Codec::decode`).
        // 0x8000000000000000 = 2^63 = 9_223_372_036_854_775_808, exact in f64.
        (
            Ty::U64,
            Abcd,
            &[0x8000, 0x0000, 0x0000, 0x0000],
            float(9_223_372_036_854_775_808.0),
        ),
        (
            Ty::U64,
            Cdab,
            &[0x0000, 0x0000, 0x0000, 0x8000],
            float(9_223_372_036_854_775_808.0),
        ),
        (
            Ty::U64,
            Badc,
            &[0x0080, 0x0000, 0x0000, 0x0000],
            float(9_223_372_036_854_775_808.0),
        ),
        (
            Ty::U64,
            Dcba,
            &[0x0000, 0x0000, 0x0000, 0x0080],
            float(9_223_372_036_854_775_808.0),
        ),
        // u64::MAX = 2^64 - 1 = 18_446_744_073_709_551_615 needs 64 significant bits; f64 has
        // 53, so it rounds to the nearest f64, 2^64 = 18_446_744_073_709_551_616.0.
        // All bytes are FF, so the image is the same in every order.
        (
            Ty::U64,
            Abcd,
            &[0xFFFF; 4],
            float(18_446_744_073_709_551_616.0),
        ),
        (
            Ty::U64,
            Cdab,
            &[0xFFFF; 4],
            float(18_446_744_073_709_551_616.0),
        ),
        (
            Ty::U64,
            Badc,
            &[0xFFFF; 4],
            float(18_446_744_073_709_551_616.0),
        ),
        (
            Ty::U64,
            Dcba,
            &[0xFFFF; 4],
            float(18_446_744_073_709_551_616.0),
        ),
    ]
}

fn i64_cases() -> Vec<Case> {
    vec![
        // Positive: same images as u64 0x0102030405060708 = 72_623_859_790_382_856.
        (
            Ty::I64,
            Abcd,
            &[0x0102, 0x0304, 0x0506, 0x0708],
            int(72_623_859_790_382_856),
        ),
        (
            Ty::I64,
            Cdab,
            &[0x0708, 0x0506, 0x0304, 0x0102],
            int(72_623_859_790_382_856),
        ),
        (
            Ty::I64,
            Badc,
            &[0x0201, 0x0403, 0x0605, 0x0807],
            int(72_623_859_790_382_856),
        ),
        (
            Ty::I64,
            Dcba,
            &[0x0807, 0x0605, 0x0403, 0x0201],
            int(72_623_859_790_382_856),
        ),
        // -1 = 0xFFFFFFFFFFFFFFFF: all bytes FF, the same in every order.
        (Ty::I64, Abcd, &[0xFFFF; 4], int(-1)),
        (Ty::I64, Cdab, &[0xFFFF; 4], int(-1)),
        (Ty::I64, Badc, &[0xFFFF; 4], int(-1)),
        (Ty::I64, Dcba, &[0xFFFF; 4], int(-1)),
        // -2 = 0xFFFFFFFFFFFFFFFE (H = FE): the FE byte shows where H lands.
        (Ty::I64, Abcd, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], int(-2)),
        (Ty::I64, Cdab, &[0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], int(-2)),
        (Ty::I64, Badc, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], int(-2)),
        (Ty::I64, Dcba, &[0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], int(-2)),
        // i64::MIN = -2^63 = 0x8000000000000000 = -9_223_372_036_854_775_808.
        (
            Ty::I64,
            Abcd,
            &[0x8000, 0x0000, 0x0000, 0x0000],
            int(-9_223_372_036_854_775_808),
        ),
        (
            Ty::I64,
            Cdab,
            &[0x0000, 0x0000, 0x0000, 0x8000],
            int(-9_223_372_036_854_775_808),
        ),
        (
            Ty::I64,
            Badc,
            &[0x0080, 0x0000, 0x0000, 0x0000],
            int(-9_223_372_036_854_775_808),
        ),
        (
            Ty::I64,
            Dcba,
            &[0x0000, 0x0000, 0x0000, 0x0080],
            int(-9_223_372_036_854_775_808),
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Floats
// ---------------------------------------------------------------------------------------

fn f32_cases() -> Vec<Case> {
    vec![
        // 1.0 = 1.0 * 2^0: sign 0, exponent 127 = 0x7F, mantissa 0
        //   = 0 01111111 000... = 0x3F800000. Exact.
        (Ty::F32, Abcd, &[0x3F80, 0x0000], float(1.0)),
        (Ty::F32, Cdab, &[0x0000, 0x3F80], float(1.0)),
        (Ty::F32, Badc, &[0x803F, 0x0000], float(1.0)),
        (Ty::F32, Dcba, &[0x0000, 0x803F], float(1.0)),
        // -2.5 = -1.25 * 2^1: sign 1, exponent 128 = 0x80, mantissa .01b = 0x200000
        //   = 1 10000000 0100000... = 0xC0200000. Exact.
        (Ty::F32, Abcd, &[0xC020, 0x0000], float(-2.5)),
        (Ty::F32, Cdab, &[0x0000, 0xC020], float(-2.5)),
        (Ty::F32, Badc, &[0x20C0, 0x0000], float(-2.5)),
        (Ty::F32, Dcba, &[0x0000, 0x20C0], float(-2.5)),
        // 123.456 = 1.929 * 2^6: exponent 133 = 0x85; mantissa round(0.929 * 2^23)
        //   = round(7_793_016.83) = 7_793_017 = 0x76E979 -> 0 10000101 1110110... = 0x42F6E979
        //   = (2^23 + 7_793_017) / 2^17 = 16_181_625 / 131_072 = 123.45600128173828125,
        //   which is the f32 literal 123.456 widened to f64.
        (
            Ty::F32,
            Abcd,
            &[0x42F6, 0xE979],
            float(f64::from(123.456_f32)),
        ),
        (
            Ty::F32,
            Cdab,
            &[0xE979, 0x42F6],
            float(f64::from(123.456_f32)),
        ),
        (
            Ty::F32,
            Badc,
            &[0xF642, 0x79E9],
            float(f64::from(123.456_f32)),
        ),
        (
            Ty::F32,
            Dcba,
            &[0x79E9, 0xF642],
            float(f64::from(123.456_f32)),
        ),
        // 0x40490FDB = 3.14159274 (f32 pi): exponent 128, mantissa 0x490FDB.
        (
            Ty::F32,
            Abcd,
            &[0x4049, 0x0FDB],
            float(f64::from(std::f32::consts::PI)),
        ),
        (
            Ty::F32,
            Cdab,
            &[0x0FDB, 0x4049],
            float(f64::from(std::f32::consts::PI)),
        ),
        (
            Ty::F32,
            Badc,
            &[0x4940, 0xDB0F],
            float(f64::from(std::f32::consts::PI)),
        ),
        (
            Ty::F32,
            Dcba,
            &[0xDB0F, 0x4940],
            float(f64::from(std::f32::consts::PI)),
        ),
        // 0x00000000 = +0.0 (compared bit for bit, so not -0.0).
        (Ty::F32, Abcd, &[0x0000, 0x0000], float(0.0)),
        // 0x80000000 = -0.0: sign bit only. In DCBA the sign byte A=80 comes last.
        (Ty::F32, Abcd, &[0x8000, 0x0000], float(-0.0)),
        (Ty::F32, Dcba, &[0x0000, 0x0080], float(-0.0)),
    ]
}

fn f64_cases() -> Vec<Case> {
    vec![
        // 1.0: sign 0, exponent 1023 = 0x3FF, mantissa 0 = 0x3FF0000000000000. Exact.
        (Ty::F64, Abcd, &[0x3FF0, 0x0000, 0x0000, 0x0000], float(1.0)),
        (Ty::F64, Cdab, &[0x0000, 0x0000, 0x0000, 0x3FF0], float(1.0)),
        (Ty::F64, Badc, &[0xF03F, 0x0000, 0x0000, 0x0000], float(1.0)),
        (Ty::F64, Dcba, &[0x0000, 0x0000, 0x0000, 0xF03F], float(1.0)),
        // -0.1 = -1.6 * 2^-4: sign 1, exponent 1019 = 0x3FB, mantissa 0.6 * 2^52 rounded
        //   = 0x999999999999A -> 0xBFB999999999999A, the f64 nearest -0.1, i.e. the literal.
        (
            Ty::F64,
            Abcd,
            &[0xBFB9, 0x9999, 0x9999, 0x999A],
            float(-0.1),
        ),
        // CDAB: G H E F C D A B = 99 9A 99 99 99 99 BF B9
        (
            Ty::F64,
            Cdab,
            &[0x999A, 0x9999, 0x9999, 0xBFB9],
            float(-0.1),
        ),
        // BADC: B A D C F E H G = B9 BF 99 99 99 99 9A 99
        (
            Ty::F64,
            Badc,
            &[0xB9BF, 0x9999, 0x9999, 0x9A99],
            float(-0.1),
        ),
        // DCBA: H G F E D C B A = 9A 99 99 99 99 99 B9 BF
        (
            Ty::F64,
            Dcba,
            &[0x9A99, 0x9999, 0x9999, 0xB9BF],
            float(-0.1),
        ),
        // -2.5 = -1.25 * 2^1: sign 1, exponent 1024 = 0x400, mantissa .01b = 0x4000000000000
        //   = 0xC004000000000000. Exact.
        (
            Ty::F64,
            Abcd,
            &[0xC004, 0x0000, 0x0000, 0x0000],
            float(-2.5),
        ),
        (
            Ty::F64,
            Cdab,
            &[0x0000, 0x0000, 0x0000, 0xC004],
            float(-2.5),
        ),
        (
            Ty::F64,
            Badc,
            &[0x04C0, 0x0000, 0x0000, 0x0000],
            float(-2.5),
        ),
        (
            Ty::F64,
            Dcba,
            &[0x0000, 0x0000, 0x0000, 0x04C0],
            float(-2.5),
        ),
        // 0x400921FB54442D18 = 3.141592653589793 (f64 pi); all eight bytes differ, so any
        // misplaced byte changes the value. A..H = 40 09 21 FB 54 44 2D 18.
        (
            Ty::F64,
            Abcd,
            &[0x4009, 0x21FB, 0x5444, 0x2D18],
            float(std::f64::consts::PI),
        ),
        // CDAB: G H E F C D A B = 2D 18 54 44 21 FB 40 09
        (
            Ty::F64,
            Cdab,
            &[0x2D18, 0x5444, 0x21FB, 0x4009],
            float(std::f64::consts::PI),
        ),
        // BADC: B A D C F E H G = 09 40 FB 21 44 54 18 2D
        (
            Ty::F64,
            Badc,
            &[0x0940, 0xFB21, 0x4454, 0x182D],
            float(std::f64::consts::PI),
        ),
        // DCBA: H G F E D C B A = 18 2D 44 54 FB 21 09 40
        (
            Ty::F64,
            Dcba,
            &[0x182D, 0x4454, 0xFB21, 0x0940],
            float(std::f64::consts::PI),
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Strings, bits, bools
// ---------------------------------------------------------------------------------------

fn string_cases() -> Vec<Case> {
    vec![
        // 'T'=0x54 'A'=0x41 'N'=0x4E 'K'=0x4B '-'=0x2D '1'=0x31, NUL padding trimmed.
        // ABCD and CDAB: two characters per register, first character high, register order
        // kept (no word swap for strings).
        (
            Ty::String,
            Abcd,
            &[0x5441, 0x4E4B, 0x2D31, 0x0000],
            text("TANK-1"),
        ),
        (
            Ty::String,
            Cdab,
            &[0x5441, 0x4E4B, 0x2D31, 0x0000],
            text("TANK-1"),
        ),
        // BADC and DCBA: the two characters of each register swapped, order still kept.
        (
            Ty::String,
            Badc,
            &[0x4154, 0x4B4E, 0x312D, 0x0000],
            text("TANK-1"),
        ),
        (
            Ty::String,
            Dcba,
            &[0x4154, 0x4B4E, 0x312D, 0x0000],
            text("TANK-1"),
        ),
        // Trailing spaces (0x20) and NULs are trimmed, mixed too: "TANK" + "  " / " \0".
        (Ty::String, Abcd, &[0x5441, 0x4E4B, 0x2020], text("TANK")),
        (Ty::String, Cdab, &[0x5441, 0x4E4B, 0x2000], text("TANK")),
        (Ty::String, Badc, &[0x4154, 0x4B4E, 0x2020], text("TANK")),
        (Ty::String, Dcba, &[0x4154, 0x4B4E, 0x0020], text("TANK")),
        // Odd length: "ABC" = 41 42 43 00.
        (Ty::String, Abcd, &[0x4142, 0x4300], text("ABC")),
        (Ty::String, Badc, &[0x4241, 0x0043], text("ABC")),
        // Leading and inner spaces are kept: " A B" = 20 41 20 42.
        (Ty::String, Abcd, &[0x2041, 0x2042], text(" A B")),
        // All NUL: the empty string.
        (Ty::String, Dcba, &[0x0000, 0x0000], text("")),
    ]
}

fn bit_cases() -> Vec<Case> {
    // `Codec::new` reads bit 0. Bits are numbered in the register value (bit 0 = least
    // significant). The byte-order table only describes multi-byte values; the codec
    // applies no order to a bit, so a register answers the same in all four orders.
    // 0x8008 = 1000 0000 0000 1000b: bit 0 clear. 0x0001: bit 0 set.
    let mut cases = Vec::new();
    for order in ByteOrder::ALL {
        cases.push((Ty::Bit, order, &[0x8008_u16][..], Value::Bool(false)));
        cases.push((Ty::Bit, order, &[0x0001_u16][..], Value::Bool(true)));
    }
    cases
}

/// `Bit` needs `Codec::bit`, which the plain table cannot set.
#[test]
fn bits_of_a_register() {
    // 0x8008: bit 0 -> 0, bit 1 -> 0, bit 3 -> 1 (0x0008), bit 4 -> 0, bit 7 -> 0,
    // bit 14 -> 0, bit 15 -> 1 (0x8000).
    let expected = [
        (0, false),
        (1, false),
        (3, true),
        (4, false),
        (7, false),
        (14, false),
        (15, true),
    ];
    for order in ByteOrder::ALL {
        for (bit, set) in expected {
            let codec = Codec {
                bit,
                ..Codec::new(Ty::Bit, order)
            };
            check_codec(&codec, &[0x8008], Value::Bool(set));
        }
    }
    // 0xFFFF: every bit set; 0x0000: none.
    for bit in 0..16 {
        let codec = Codec {
            bit,
            ..Codec::new(Ty::Bit, Abcd)
        };
        check_codec(&codec, &[0xFFFF], Value::Bool(true));
        check_codec(&codec, &[0x0000], Value::Bool(false));
    }
}

fn bool_cases() -> Vec<Case> {
    vec![
        // A coil or discrete input: any non-zero is true.
        (Ty::Bool, Abcd, &[1], Value::Bool(true)),
        (Ty::Bool, Cdab, &[1], Value::Bool(true)),
        (Ty::Bool, Badc, &[1], Value::Bool(true)),
        (Ty::Bool, Dcba, &[1], Value::Bool(true)),
        (Ty::Bool, Abcd, &[0], Value::Bool(false)),
        (Ty::Bool, Cdab, &[0], Value::Bool(false)),
        (Ty::Bool, Badc, &[0], Value::Bool(false)),
        (Ty::Bool, Dcba, &[0], Value::Bool(false)),
        // 0xFF00 (the Modbus "coil on" value) is non-zero.
        (Ty::Bool, Abcd, &[0xFF00], Value::Bool(true)),
    ]
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn decode_u16() {
    check_table(&u16_cases());
}

#[test]
fn decode_i16() {
    check_table(&i16_cases());
}

#[test]
fn decode_u32() {
    check_table(&u32_cases());
}

#[test]
fn decode_i32() {
    check_table(&i32_cases());
}

#[test]
fn decode_u64() {
    check_table(&u64_cases());
}

#[test]
fn decode_i64() {
    check_table(&i64_cases());
}

#[test]
fn decode_f32() {
    check_table(&f32_cases());
}

#[test]
fn decode_f64() {
    check_table(&f64_cases());
}

#[test]
fn decode_string() {
    check_table(&string_cases());
}

#[test]
fn decode_bit() {
    check_table(&bit_cases());
}

#[test]
fn decode_bool() {
    check_table(&bool_cases());
}

/// Every data type appears with every byte order somewhere in the tables above.
#[test]
fn tables_cover_every_type_and_order() {
    let all: Vec<Case> = [
        u16_cases(),
        i16_cases(),
        u32_cases(),
        i32_cases(),
        u64_cases(),
        i64_cases(),
        f32_cases(),
        f64_cases(),
        string_cases(),
        bit_cases(),
        bool_cases(),
    ]
    .concat();
    let types = [
        Ty::Bool,
        Ty::U16,
        Ty::I16,
        Ty::U32,
        Ty::I32,
        Ty::U64,
        Ty::I64,
        Ty::F32,
        Ty::F64,
        Ty::String,
        Ty::Bit,
    ];
    let mut missing = Vec::new();
    for ty in types {
        for order in ByteOrder::ALL {
            if !all.iter().any(|(t, o, _, _)| *t == ty && *o == order) {
                missing.push(format!("{ty:?} {order}"));
            }
        }
    }
    assert!(missing.is_empty(), "no decode case for: {missing:?}");
}

#[test]
fn check_helper_decodes_a_single_case() {
    // The one-line form, for when a single case is clearer than a table.
    check(Ty::U32, Cdab, &[0x5678, 0x1234], int(305_419_896));
    check(Ty::I16, Dcba, &[0xFEFF], int(-2));
}

// ---------------------------------------------------------------------------------------
// Scaling
// ---------------------------------------------------------------------------------------

fn scaled(ty: Ty, order: ByteOrder, scale: Option<f64>, offset: Option<f64>) -> Codec {
    Codec {
        scale,
        offset,
        ..Codec::new(ty, order)
    }
}

#[test]
fn decode_scaled() {
    // value = raw * scale + offset. Where the arithmetic is inexact the expected value is
    // written as the same expression, so it rounds the same way.

    // u16 raw 615 (0x0267), scale 0.1, offset -40: 615 * 0.1 - 40 (about 21.5 °C).
    let temp = scaled(Ty::U16, Abcd, Some(0.1), Some(-40.0));
    check_codec(&temp, &[0x0267], float(615.0 * 0.1 - 40.0));
    // Same point byte-swapped on the wire: 0x6702.
    let temp_swapped = scaled(Ty::U16, Badc, Some(0.1), Some(-40.0));
    check_codec(&temp_swapped, &[0x6702], float(615.0 * 0.1 - 40.0));

    // i16 0xFF9C = -100 (0xFF9C - 0x10000), scale 0.5: -100 * 0.5 = -50.0 exactly.
    check_codec(
        &scaled(Ty::I16, Abcd, Some(0.5), None),
        &[0xFF9C],
        float(-50.0),
    );
    check_codec(
        &scaled(Ty::I16, Dcba, Some(0.5), None),
        &[0x9CFF],
        float(-50.0),
    );

    // Offset only: raw 0 with offset -40 = -40.0; the result is a float even so.
    check_codec(
        &scaled(Ty::U16, Abcd, None, Some(-40.0)),
        &[0x0000],
        float(-40.0),
    );
    // Scale 1.0 still turns an integer into a float: 10 -> 10.0.
    check_codec(
        &scaled(Ty::U16, Abcd, Some(1.0), None),
        &[0x000A],
        float(10.0),
    );

    // u32 0x000186A0 = 1*65536 + 8*4096 + 6*256 + 10*16 = 100_000, scale 0.001, CDAB.
    check_codec(
        &scaled(Ty::U32, Cdab, Some(0.001), None),
        &[0x86A0, 0x0001],
        float(100_000.0 * 0.001),
    );

    // f32 1.0 (0x3F800000) * 2 + 1 = 3.0 exactly.
    check_codec(
        &scaled(Ty::F32, Abcd, Some(2.0), Some(1.0)),
        &[0x3F80, 0x0000],
        float(3.0),
    );
}

#[test]
fn unscaled_integers_stay_integers() {
    // Without scale and offset an integer point is an I64, never an F64.
    check(Ty::U16, Abcd, &[0x0267], int(615));
    check(Ty::I16, Abcd, &[0xFF9C], int(-100));
    check(Ty::U32, Abcd, &[0x0001, 0x86A0], int(100_000));
    check(Ty::I64, Abcd, &[0xFFFF; 4], int(-1));
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// One encode case: codec, value, register count (only strings use it), expected result.
type EncodeCase = (Codec, Value, u16, Result<&'static [u16], ()>);

fn plain(ty: Ty, order: ByteOrder) -> Codec {
    Codec::new(ty, order)
}

#[test]
fn encode_table() {
    let cases: Vec<EncodeCase> = vec![
        // F32 1.0 = 0x3F800000 (A=3F B=80 C=00 D=00).
        (plain(Ty::F32, Abcd), float(1.0), 2, Ok(&[0x3F80, 0x0000])),
        (plain(Ty::F32, Cdab), float(1.0), 2, Ok(&[0x0000, 0x3F80])),
        (plain(Ty::F32, Badc), float(1.0), 2, Ok(&[0x803F, 0x0000])),
        (plain(Ty::F32, Dcba), float(1.0), 2, Ok(&[0x0000, 0x803F])),
        // F32 123.456 narrows to 0x42F6E979 (see the decode table).
        (
            plain(Ty::F32, Abcd),
            float(123.456),
            2,
            Ok(&[0x42F6, 0xE979]),
        ),
        (
            plain(Ty::F32, Dcba),
            float(123.456),
            2,
            Ok(&[0x79E9, 0xF642]),
        ),
        // U32 0x12345678 = 305_419_896.
        (
            plain(Ty::U32, Abcd),
            int(305_419_896),
            2,
            Ok(&[0x1234, 0x5678]),
        ),
        (
            plain(Ty::U32, Cdab),
            int(305_419_896),
            2,
            Ok(&[0x5678, 0x1234]),
        ),
        (
            plain(Ty::U32, Badc),
            int(305_419_896),
            2,
            Ok(&[0x3412, 0x7856]),
        ),
        (
            plain(Ty::U32, Dcba),
            int(305_419_896),
            2,
            Ok(&[0x7856, 0x3412]),
        ),
        // I16 -2 = 0xFFFE; byte-swapped orders put FE first.
        (plain(Ty::I16, Abcd), int(-2), 1, Ok(&[0xFFFE])),
        (plain(Ty::I16, Cdab), int(-2), 1, Ok(&[0xFFFE])),
        (plain(Ty::I16, Badc), int(-2), 1, Ok(&[0xFEFF])),
        (plain(Ty::I16, Dcba), int(-2), 1, Ok(&[0xFEFF])),
        // I32 i32::MIN = 0x80000000.
        (
            plain(Ty::I32, Dcba),
            int(-2_147_483_648),
            2,
            Ok(&[0x0000, 0x0080]),
        ),
        // I32 -123_456 = 0xFFFE1DC0.
        (
            plain(Ty::I32, Badc),
            int(-123_456),
            2,
            Ok(&[0xFEFF, 0xC01D]),
        ),
        // U64 0x0102030405060708 in CDAB: G H E F C D A B.
        (
            plain(Ty::U64, Cdab),
            int(72_623_859_790_382_856),
            4,
            Ok(&[0x0708, 0x0506, 0x0304, 0x0102]),
        ),
        // U64 2^63 = 0x8000000000000000 given as the float the decoder answers for it.
        (
            plain(Ty::U64, Abcd),
            float(9_223_372_036_854_775_808.0),
            4,
            Ok(&[0x8000, 0x0000, 0x0000, 0x0000]),
        ),
        // I64 -2 = 0xFFFFFFFFFFFFFFFE in DCBA: H G F E D C B A = FE FF FF FF FF FF FF FF.
        (
            plain(Ty::I64, Dcba),
            int(-2),
            4,
            Ok(&[0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]),
        ),
        // F64 -0.1 = 0xBFB999999999999A in DCBA.
        (
            plain(Ty::F64, Dcba),
            float(-0.1),
            4,
            Ok(&[0x9A99, 0x9999, 0x9999, 0xB9BF]),
        ),
        // F64 1.0 = 0x3FF0000000000000 in BADC.
        (
            plain(Ty::F64, Badc),
            float(1.0),
            4,
            Ok(&[0xF03F, 0x0000, 0x0000, 0x0000]),
        ),
        // Strings: NUL-padded to the register count, register order kept.
        (
            plain(Ty::String, Abcd),
            text("TANK-1"),
            4,
            Ok(&[0x5441, 0x4E4B, 0x2D31, 0x0000]),
        ),
        (
            plain(Ty::String, Cdab),
            text("TANK-1"),
            4,
            Ok(&[0x5441, 0x4E4B, 0x2D31, 0x0000]),
        ),
        (
            plain(Ty::String, Badc),
            text("TANK-1"),
            4,
            Ok(&[0x4154, 0x4B4E, 0x312D, 0x0000]),
        ),
        (
            plain(Ty::String, Dcba),
            text("TANK-1"),
            4,
            Ok(&[0x4154, 0x4B4E, 0x312D, 0x0000]),
        ),
        // Scaled: 21.5 °C with scale 0.1, offset -40 -> (21.5 + 40) / 0.1 = 615 = 0x0267.
        (
            scaled(Ty::U16, Abcd, Some(0.1), Some(-40.0)),
            float(21.5),
            1,
            Ok(&[0x0267]),
        ),
        // Out of range.
        // u16 holds 0..=65535; 70000 does not fit.
        (plain(Ty::U16, Abcd), int(70_000), 1, Err(())),
        // u16 cannot hold a negative.
        (plain(Ty::U16, Badc), int(-1), 1, Err(())),
        // i16 holds -32768..=32767.
        (plain(Ty::I16, Abcd), int(32_768), 1, Err(())),
        (plain(Ty::I16, Abcd), int(-32_769), 1, Err(())),
        // u32 holds 0..=4_294_967_295 (2^32 - 1).
        (plain(Ty::U32, Abcd), int(4_294_967_296), 2, Err(())),
        // i32 holds -2^31..=2^31 - 1.
        (plain(Ty::I32, Abcd), int(2_147_483_648), 2, Err(())),
        // u64 cannot hold 2^64 (the float u64::MAX decodes to).
        (
            plain(Ty::U64, Abcd),
            float(18_446_744_073_709_551_616.0),
            4,
            Err(()),
        ),
        // f32's largest finite value is about 3.4e38.
        (plain(Ty::F32, Abcd), float(1e39), 2, Err(())),
        // Seven bytes of text in three registers (six bytes).
        (plain(Ty::String, Abcd), text("TANK-10"), 3, Err(())),
        // Text into a number, a number into text.
        (plain(Ty::U16, Abcd), text("1"), 1, Err(())),
        (plain(Ty::String, Abcd), int(1), 2, Err(())),
        // Bits are coils, not registers.
        (plain(Ty::Bool, Abcd), Value::Bool(true), 1, Err(())),
        (plain(Ty::Bit, Abcd), Value::Bool(true), 1, Err(())),
    ];
    let mut failures = Vec::new();
    for (codec, value, registers, expected) in &cases {
        let actual = codec.encode(value, *registers);
        let ok = match (&actual, expected) {
            (Ok(got), Ok(want)) => got.as_slice() == *want,
            (Err(_), Err(())) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{:?} {} encode {value:?} into {registers}: expected {}, got {}",
                codec.data_type,
                codec.order,
                expected.map_or_else(|()| "Err".to_string(), hex),
                actual
                    .as_ref()
                    .map_or_else(|e| format!("Err({e})"), |r| hex(r)),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} encode cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
