//! NumPy `.npy` files (version 1/2 headers), little-endian f32, f64, i64 and i32 arrays.
//! Writes are atomic: a temporary file renamed into place.

use std::path::Path;

use crate::error::{Error, Result};

/// An array read from a `.npy` file, converted to f64 for uniform handling.
#[derive(Clone, Debug)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl NpyArray {
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
    pub fn to_usize(&self) -> Vec<usize> {
        self.data.iter().map(|&v| v as usize).collect()
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        msg: format!("not a supported .npy file: {}", msg.into()),
    }
}

/// Read a C-ordered little-endian array of f32/f64/i64/i32.
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// Parse `.npy` bytes (`path` names them in errors). Total: any input gives an array or an
/// error, never a panic, and no allocation larger than the data the bytes hold.
pub fn parse(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "missing magic"));
    }
    let (hlen, hstart): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(path, "truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(path, format!("version {v}"))),
    };
    let header = std::str::from_utf8(
        bytes
            .get(hstart..hstart.saturating_add(hlen))
            .ok_or_else(|| bad(path, "truncated header"))?,
    )
    .map_err(|_| bad(path, "header is not text"))?;
    // The text after `'name':` in the header dict.
    let field = |name: &str| -> Option<&str> {
        let key = format!("'{name}'");
        let i = header.find(&key)?;
        Some(
            header
                .get(i + key.len()..)?
                .trim_start()
                .strip_prefix(':')?
                .trim_start(),
        )
    };
    let descr = field("descr").ok_or_else(|| bad(path, "no descr"))?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split_once('\''))
        .map(|(d, _)| d)
        .ok_or_else(|| bad(path, "bad descr"))?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad(path, "Fortran order"));
    }
    let sh = field("shape").ok_or_else(|| bad(path, "no shape"))?;
    let sh = sh
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| bad(path, "bad shape"))?;
    let shape: Vec<usize> = sh
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("bad shape entry {s}")))
        })
        .collect::<Result<_>>()?;
    let (size, conv): (usize, fn(&[u8]) -> f64) = match descr {
        "<f4" => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        "<f8" => (8, |c| {
            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        }),
        "<i8" => (8, |c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
        }),
        "<i4" => (4, |c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        other => return Err(bad(path, format!("dtype {other}"))),
    };
    let body = bytes.get(hstart.saturating_add(hlen)..).unwrap_or_default();
    let need = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(path, format!("shape {shape:?} is too large")))?;
    if body.len() < need {
        return Err(bad(
            path,
            format!("{} data bytes for shape {shape:?} of {descr}", body.len()),
        ));
    }
    Ok(NpyArray {
        shape,
        data: body[..need].chunks_exact(size).map(conv).collect(),
    })
}

/// Encode an f32 array as `.npy` bytes.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Write an f32 array to `path` as `.npy`, atomically.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    crate::io::fs::write_atomic(path, &encode_f32(shape, data))
}
