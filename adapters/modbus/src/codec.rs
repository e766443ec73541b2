//! Register contents ↔ values: data types, byte and word orders, scaling.
//!
//! Registers travel as big-endian 16-bit words. A value that spans several registers is
//! described by the order in which its bytes appear on the wire, naming the value's most
//! significant byte `A`:
//!
//! | order | 32-bit wire bytes | 64-bit wire bytes | also called |
//! |---|---|---|---|
//! | `ABCD` | A B C D | A B C D E F G H | big-endian (the Modbus default) |
//! | `CDAB` | C D A B | G H E F C D A B | word swap, "little-endian word order" |
//! | `BADC` | B A D C | B A D C F E H G | byte swap within each register |
//! | `DCBA` | D C B A | H G F E D C B A | little-endian |
//!
//! 16-bit values: `ABCD` and `CDAB` read `AB`; `BADC` and `DCBA` read the two bytes swapped.
//! Strings are two characters per register in register order; `BADC` and `DCBA` swap the two
//! characters of each register. `bit` numbers the bits of a register as transmitted (0 is
//! the least significant); byte order does not apply to it. Every transform is its own inverse, so the same function
//! encodes writes.

use std::fmt;

use fieldgate_adapter::Value;
use serde::Deserialize;

/// Byte and word order of a multi-register value.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum ByteOrder {
    /// Big-endian: registers most significant first, bytes high first.
    #[default]
    #[serde(rename = "ABCD")]
    Abcd,
    /// Registers least significant first, bytes high first.
    #[serde(rename = "CDAB")]
    Cdab,
    /// Registers most significant first, bytes low first.
    #[serde(rename = "BADC")]
    Badc,
    /// Little-endian: registers least significant first, bytes low first.
    #[serde(rename = "DCBA")]
    Dcba,
}

impl ByteOrder {
    /// All four, for tests.
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    fn swaps_bytes(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }

    fn swaps_words(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }

    /// Strings keep register order; only the byte swap applies.
    fn for_strings(self) -> ByteOrder {
        if self.swaps_bytes() {
            ByteOrder::Badc
        } else {
            ByteOrder::Abcd
        }
    }

    /// Registers as they came off the wire → the value's bytes, most significant first.
    /// Also the inverse: value bytes → registers to put on the wire.
    fn to_value_bytes(self, regs: &[u16]) -> Vec<u8> {
        let mut words: Vec<u16> = regs.to_vec();
        if self.swaps_words() {
            words.reverse();
        }
        let mut out = Vec::with_capacity(words.len() * 2);
        for w in words {
            let [hi, lo] = w.to_be_bytes();
            if self.swaps_bytes() {
                out.extend_from_slice(&[lo, hi]);
            } else {
                out.extend_from_slice(&[hi, lo]);
            }
        }
        out
    }

    /// The value's bytes (most significant first) → registers for the wire.
    fn to_registers(self, bytes: &[u8]) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks(2)
            .map(|c| {
                let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
                if self.swaps_bytes() {
                    u16::from_be_bytes([lo, hi])
                } else {
                    u16::from_be_bytes([hi, lo])
                }
            })
            .collect();
        if self.swaps_words() {
            words.reverse();
        }
        words
    }
}

impl fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Cdab => "CDAB",
            ByteOrder::Badc => "BADC",
            ByteOrder::Dcba => "DCBA",
        })
    }
}

/// The type of a point's value.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Four registers, unsigned.
    U64,
    /// Four registers, two's complement.
    I64,
    /// Two registers, IEEE 754 single precision.
    F32,
    /// Four registers, IEEE 754 double precision.
    F64,
    /// `length` registers of text, two characters each.
    String,
    /// One bit of one register.
    Bit,
}

impl DataType {
    /// Registers the type occupies (strings: see `length`; bools: one bit).
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 | DataType::Bit | DataType::String => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// True for the types a scale and offset apply to.
    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::Bit | DataType::String)
    }
}

/// How a point turns registers into a value: type, order, bit, scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    /// The type.
    pub data_type: DataType,
    /// The byte order.
    pub order: ByteOrder,
    /// The bit, for `DataType::Bit`.
    pub bit: u8,
    /// `value = raw * scale + offset`; `None` keeps integers as integers.
    pub scale: Option<f64>,
    /// See `scale`.
    pub offset: Option<f64>,
}

/// A raw number before scaling: integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    Int(i128),
    Float(f64),
}

impl Codec {
    /// A codec without scaling.
    pub fn new(data_type: DataType, order: ByteOrder) -> Codec {
        Codec {
            data_type,
            order,
            bit: 0,
            scale: None,
            offset: None,
        }
    }

    fn scaled(&self) -> bool {
        self.scale.is_some() || self.offset.is_some()
    }

    /// Decodes the point's registers (exactly as many as it occupies, in wire order).
    pub fn decode(&self, regs: &[u16]) -> Value {
        let b = self.order.to_value_bytes(regs);
        let raw = match self.data_type {
            DataType::Bool => return Value::Bool(regs.first().is_some_and(|r| *r != 0)),
            DataType::Bit => {
                return Value::Bool(regs.first().is_some_and(|r| (r >> self.bit) & 1 == 1))
            }
            DataType::String => {
                let b = self.order.for_strings().to_value_bytes(regs);
                let text = String::from_utf8_lossy(&b);
                return Value::Text(text.trim_end_matches(['\0', ' ']).to_string());
            }
            DataType::U16 => Raw::Int(i128::from(u16::from_be_bytes(arr(&b)))),
            DataType::I16 => Raw::Int(i128::from(i16::from_be_bytes(arr(&b)))),
            DataType::U32 => Raw::Int(i128::from(u32::from_be_bytes(arr(&b)))),
            DataType::I32 => Raw::Int(i128::from(i32::from_be_bytes(arr(&b)))),
            DataType::U64 => Raw::Int(i128::from(u64::from_be_bytes(arr(&b)))),
            DataType::I64 => Raw::Int(i128::from(i64::from_be_bytes(arr(&b)))),
            DataType::F32 => Raw::Float(f64::from(f32::from_be_bytes(arr(&b)))),
            DataType::F64 => Raw::Float(f64::from_be_bytes(arr(&b))),
        };
        let scale = self.scale.unwrap_or(1.0);
        let offset = self.offset.unwrap_or(0.0);
        match raw {
            Raw::Int(i) if !self.scaled() => match i64::try_from(i) {
                Ok(v) => Value::I64(v),
                // A u64 above i64::MAX: kept as a float rather than refused.
                #[allow(clippy::cast_precision_loss)]
                Err(_) => Value::F64(i as f64),
            },
            #[allow(clippy::cast_precision_loss)]
            Raw::Int(i) => Value::F64(i as f64 * scale + offset),
            Raw::Float(f) if !self.scaled() => Value::F64(f),
            Raw::Float(f) => Value::F64(f * scale + offset),
        }
    }

    /// Encodes `value` (in engineering units) into registers for a write: the inverse of the
    /// scaling, then the type and byte order. Refuses values that do not fit.
    pub fn encode(&self, value: &Value, registers: u16) -> Result<Vec<u16>, String> {
        let bytes: Vec<u8> = match self.data_type {
            DataType::Bool | DataType::Bit => {
                return Err("bits are written as coils, not registers".into())
            }
            DataType::String => {
                let Value::Text(s) = value else {
                    return Err(format!(
                        "a string point takes text, not {}",
                        value.type_name()
                    ));
                };
                let cap = usize::from(registers) * 2;
                if s.len() > cap {
                    return Err(format!(
                        "{} bytes of text do not fit in {registers} registers ({cap} bytes)",
                        s.len()
                    ));
                }
                let mut b = s.as_bytes().to_vec();
                b.resize(cap, 0);
                return Ok(self.order.for_strings().to_registers(&b));
            }
            DataType::F32 => {
                let f = self.unscale_float(value)?;
                #[allow(clippy::cast_possible_truncation)]
                let narrow = f as f32;
                if f.is_finite() && !narrow.is_finite() {
                    return Err(format!("{f} is out of range for f32"));
                }
                narrow.to_be_bytes().to_vec()
            }
            DataType::F64 => self.unscale_float(value)?.to_be_bytes().to_vec(),
            int => {
                let i = self.unscale_int(value)?;
                let (min, max): (i128, i128) = match int {
                    DataType::U16 => (0, u16::MAX.into()),
                    DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
                    DataType::U32 => (0, u32::MAX.into()),
                    DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
                    DataType::U64 => (0, u64::MAX.into()),
                    _ => (i64::MIN.into(), i64::MAX.into()),
                };
                if i < min || i > max {
                    return Err(format!(
                        "{value} is out of range: the register holds {min} to {max}{}",
                        if self.scaled() { " before scaling" } else { "" }
                    ));
                }
                let n = usize::from(int.registers()) * 2;
                i.to_be_bytes()[16 - n..].to_vec()
            }
        };
        Ok(self.order.to_registers(&bytes))
    }

    fn unscale_float(&self, value: &Value) -> Result<f64, String> {
        let v = value
            .as_f64()
            .ok_or_else(|| format!("a numeric point takes a number, not {}", value.type_name()))?;
        if !v.is_finite() {
            return Err(format!("{v} is not a finite number"));
        }
        Ok((v - self.offset.unwrap_or(0.0)) / self.scale.unwrap_or(1.0))
    }

    fn unscale_int(&self, value: &Value) -> Result<i128, String> {
        if let (Value::I64(i), false) = (value, self.scaled()) {
            return Ok(i128::from(*i));
        }
        let unscaled = self.unscale_float(value)?;
        let raw = unscaled.round();
        // With a scale, rounding to the register's resolution is the point; without one a
        // fraction would be silently cut off.
        if !self.scaled() && raw != unscaled {
            return Err(format!(
                "{value} is not a whole number, and this point is an integer register"
            ));
        }
        if !raw.is_finite() {
            return Err(format!("{value} is not a finite number"));
        }
        // Range-checked by the caller; the cast saturates far outside any register's range.
        #[allow(clippy::cast_possible_truncation)]
        Ok(raw as i128)
    }
}

/// The first `N` bytes as an array (the caller passes exactly the type's size).
fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_round_trips_through_encode() {
        let values = [
            (DataType::U16, Value::I64(0xBEEF)),
            (DataType::I16, Value::I64(-2)),
            (DataType::U32, Value::I64(0x0102_0304)),
            (DataType::I32, Value::I64(-123_456)),
            (DataType::U64, Value::I64(0x0102_0304_0506_0708)),
            (DataType::I64, Value::I64(-9_000_000_000)),
            (DataType::F32, Value::F64(1.5)),
            (DataType::F64, Value::F64(-0.1)),
            (DataType::String, Value::Text("PUMP-7".into())),
        ];
        for order in ByteOrder::ALL {
            for (ty, v) in &values {
                let codec = Codec::new(*ty, order);
                let n = if *ty == DataType::String {
                    4
                } else {
                    ty.registers()
                };
                let regs = codec.encode(v, n).expect("fits");
                assert_eq!(regs.len(), usize::from(n), "{ty:?} {order}");
                assert_eq!(&codec.decode(&regs), v, "{ty:?} {order}");
            }
        }
    }

    #[test]
    fn scaling_is_inverted_for_writes_and_ranges_are_checked() {
        let codec = Codec {
            scale: Some(0.1),
            offset: Some(-40.0),
            ..Codec::new(DataType::U16, ByteOrder::Abcd)
        };
        // 21.5 °C = raw 615 with scale 0.1 and offset -40.
        assert_eq!(codec.encode(&Value::F64(21.5), 1), Ok(vec![615]));
        assert_eq!(codec.decode(&[615]), Value::F64(615.0 * 0.1 - 40.0));
        let err = codec
            .encode(&Value::F64(-50.0), 1)
            .expect_err("below 0 raw");
        assert!(err.contains("out of range"), "{err}");
        let plain = Codec::new(DataType::I16, ByteOrder::Abcd);
        assert!(plain.encode(&Value::I64(40_000), 1).is_err());
        assert!(plain.encode(&Value::Text("x".into()), 1).is_err());
    }
}
