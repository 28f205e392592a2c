//! The protobuf wire form of `xds.data.orca.v3.OrcaLoadReport`, read and written by hand,
//! and the base64 of gRPC's `-bin` metadata.
//!
//! ```text
//! message OrcaLoadReport {
//!   double cpu_utilization = 1;        double mem_utilization = 2;
//!   uint64 rps = 3 [deprecated];       map<string, double> request_cost = 4;
//!   map<string, double> utilization = 5;
//!   double rps_fractional = 6;         double eps = 7;
//!   map<string, double> named_metrics = 8;
//!   double application_utilization = 9;
//! }
//! ```
//!
//! A map field is a repeated length-delimited entry message `{ string key = 1; double
//! value = 2; }`. Unknown fields are skipped by their wire type; a known field with the
//! wrong wire type, a truncated value, an over-long varint, a group or a reserved wire
//! type is an error.

use std::collections::BTreeMap;

use super::{Kind, ParseError, Report};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn bad(what: &'static str) -> ParseError {
    ParseError::new(Kind::Protobuf(what))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ParseError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            if i == 9 && b > 1 {
                return Err(bad("varint over 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint over 64 bits"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.buf.len() < n {
            return Err(bad("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn double(&mut self) -> Result<f64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ParseError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| bad("truncated field"))?;
        self.take(n)
    }

    /// The next field's number and wire type, `None` at the end.
    fn tag(&mut self) -> Result<Option<(u32, u8)>, ParseError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = tag >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return Err(bad("field number out of range"));
        }
        Ok(Some((field as u32, (tag & 7) as u8)))
    }

    /// Skips a field of an unknown number.
    fn skip(&mut self, wire: u8) -> Result<(), ParseError> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            3 | 4 => Err(bad("groups are not supported")),
            _ => Err(bad("reserved wire type")),
        }
    }
}

pub(super) fn decode(bytes: &[u8]) -> Result<Report, ParseError> {
    let mut r = Reader { buf: bytes };
    let mut report = Report::default();
    while let Some((field, wire)) = r.tag()? {
        let expect = |w: u8| {
            if wire == w {
                Ok(())
            } else {
                Err(bad("wrong wire type for a known field"))
            }
        };
        match field {
            1 | 2 | 6 | 7 | 9 => {
                expect(FIXED64)?;
                let v = r.double()?;
                *match field {
                    1 => &mut report.cpu_utilization,
                    2 => &mut report.mem_utilization,
                    6 => &mut report.rps_fractional,
                    7 => &mut report.eps,
                    _ => &mut report.application_utilization,
                } = v;
            }
            3 => {
                // The deprecated integer `rps`: read and dropped (`rps_fractional` is the
                // rate, as in gRPC).
                expect(VARINT)?;
                r.varint()?;
            }
            4 | 5 | 8 => {
                expect(LEN)?;
                let map = match field {
                    4 => &mut report.request_cost,
                    5 => &mut report.utilization,
                    _ => &mut report.named_metrics,
                };
                entry(r.bytes()?, map)?;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(report)
}

/// One map entry; a repeated key replaces the earlier value, as protobuf merges.
fn entry(bytes: &[u8], map: &mut BTreeMap<String, f64>) -> Result<(), ParseError> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut value) = (String::new(), 0.0);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, LEN) => {
                key = std::str::from_utf8(r.bytes()?)
                    .map_err(|_| bad("map key is not UTF-8"))?
                    .to_owned();
            }
            (2, FIXED64) => value = r.double()?,
            (1 | 2, _) => return Err(bad("wrong wire type in a map entry")),
            _ => r.skip(wire)?,
        }
    }
    if key.is_empty() {
        return Err(ParseError::new(Kind::EmptyName));
    }
    map.insert(key, value);
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, u64::from(field) << 3 | u64::from(FIXED64));
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn encode(report: &Report) -> Vec<u8> {
    let mut out = Vec::new();
    let scalar = |out: &mut Vec<u8>, field, v: f64| {
        // proto3 leaves zeros out (a negative zero is kept, as protobuf does).
        if v.to_bits() != 0 {
            put_double(out, field, v);
        }
    };
    let map = |out: &mut Vec<u8>, field: u32, map: &BTreeMap<String, f64>| {
        for (k, &v) in map {
            let mut e = Vec::with_capacity(k.len() + 12);
            put_varint(&mut e, 1 << 3 | u64::from(LEN));
            put_varint(&mut e, k.len() as u64);
            e.extend_from_slice(k.as_bytes());
            if v.to_bits() != 0 {
                put_double(&mut e, 2, v);
            }
            put_varint(out, u64::from(field) << 3 | u64::from(LEN));
            put_varint(out, e.len() as u64);
            out.extend_from_slice(&e);
        }
    };
    scalar(&mut out, 1, report.cpu_utilization);
    scalar(&mut out, 2, report.mem_utilization);
    map(&mut out, 4, &report.request_cost);
    map(&mut out, 5, &report.utilization);
    scalar(&mut out, 6, report.rps_fractional);
    scalar(&mut out, 7, report.eps);
    map(&mut out, 8, &report.named_metrics);
    scalar(&mut out, 9, report.application_utilization);
    out
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Unpadded standard base64, as gRPC sends binary metadata.
pub(super) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Standard base64, padded or not (gRPC accepts both); anything else is an error.
pub(super) fn base64_decode(text: &[u8]) -> Result<Vec<u8>, ParseError> {
    let err = || ParseError::new(Kind::Base64);
    let body = match text {
        [rest @ .., b'=', b'='] if text.len().is_multiple_of(4) => rest,
        [rest @ .., b'='] if text.len().is_multiple_of(4) => rest,
        _ => text,
    };
    if body.len() % 4 == 1 {
        return Err(err());
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(err()),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
