//! Reading and writing float32 `.npy` files (NumPy format versions 1.0, 2.0 and 3.0).
//!
//! Only little-endian float32 in C order is accepted: that is what the model consumes and
//! produces. Anything else is refused with a message that names the file and what is wrong,
//! never converted silently. Files are written whole or not at all (temporary file + rename).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A dense float32 tensor in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    /// Creates an array, checking that `data` holds exactly the product of `shape` values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, String> {
        let n = checked_len(&shape).ok_or_else(|| format!("shape {shape:?} is too large"))?;
        if n != data.len() {
            return Err(format!("shape {shape:?} needs {n} values, got {}", data.len()));
        }
        Ok(Array { shape, data })
    }
}

/// An error about one `.npy` file: the path and what is wrong with it.
#[derive(Debug)]
pub struct NpyError {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for NpyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for NpyError {}

const MAGIC: &[u8] = b"\x93NUMPY";

fn checked_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Reads a float32 C-order `.npy` file.
pub fn read(path: &Path) -> Result<Array, NpyError> {
    let err = |message: String| NpyError { path: path.to_path_buf(), message };
    let bytes = fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    parse(&bytes).map_err(err)
}

/// Parses the bytes of a `.npy` file (see [`read`]).
pub fn parse(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (missing the \\x93NUMPY magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let end = start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or("truncated .npy header")?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not valid text".to_string())?;
    let (descr, fortran, shape) = parse_header(header)?;
    if descr != "<f4" {
        return Err(format!("dtype is '{descr}', expected float32 ('<f4')"));
    }
    if fortran {
        return Err("array is in Fortran order, expected C order (use np.ascontiguousarray)".into());
    }
    let n = checked_len(&shape).ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let payload = &bytes[end..];
    let want = n.checked_mul(4).ok_or_else(|| format!("shape {shape:?} is too large"))?;
    if payload.len() != want {
        return Err(format!(
            "data is {} bytes but shape {shape:?} of float32 needs {want} (file truncated or padded)",
            payload.len()
        ));
    }
    let data = payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(Array { shape, data })
}

/// Parses the Python dict literal of a .npy header: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(h: &str) -> Result<(String, bool, Vec<usize>), String> {
    let bad = || format!("malformed .npy header: {}", h.trim());
    let value_after = |key: &str| -> Result<&str, String> {
        let k = h.find(&format!("'{key}'")).ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        let rest = &h[k + key.len() + 2..];
        let colon = rest.find(':').ok_or_else(bad)?;
        Ok(rest[colon + 1..].trim_start())
    };
    let d = value_after("descr")?;
    let q = d.chars().next().filter(|c| *c == '\'' || *c == '"').ok_or_else(bad)?;
    let close = d[1..].find(q).ok_or_else(bad)?;
    let descr = d[1..1 + close].to_string();
    let f = value_after("fortran_order")?;
    let fortran = if f.starts_with("True") {
        true
    } else if f.starts_with("False") {
        false
    } else {
        return Err(bad());
    };
    let s = value_after("shape")?;
    if !s.starts_with('(') {
        return Err(bad());
    }
    let close = s.find(')').ok_or_else(bad)?;
    let mut shape = Vec::new();
    for part in s[1..close].split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        shape.push(part.parse::<usize>().map_err(|_| bad())?);
    }
    Ok((descr, fortran, shape))
}

/// Serializes an array as a version 1.0 `.npy` file.
pub fn to_bytes(a: &Array) -> Vec<u8> {
    let dims: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, header ends with '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &a.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes an array to `path` atomically: a temporary file beside it, then a rename.
pub fn write(path: &Path, a: &Array) -> Result<(), NpyError> {
    write_atomic(path, &to_bytes(a))
        .map_err(|e| NpyError { path: path.to_path_buf(), message: format!("cannot write: {e}") })
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_shape_and_bits() {
        let a = Array::new(vec![2, 3, 1], vec![1.0, -2.5, f32::MIN_POSITIVE, 0.0, 7.0, 1e30]).unwrap();
        let b = parse(&to_bytes(&a)).unwrap();
        assert_eq!(a, b);
        let v = Array::new(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        assert_eq!(parse(&to_bytes(&v)).unwrap(), v);
        // The header pads the data start to a multiple of 64 bytes; 6 values of 4 bytes follow.
        assert_eq!((to_bytes(&a).len() - 24) % 64, 0);
    }

    #[test]
    fn refuses_wrong_dtype_order_and_truncation() {
        let a = Array::new(vec![2, 2], vec![1.0; 4]).unwrap();
        let good = to_bytes(&a);
        let text = |b: &[u8]| parse(b).unwrap_err();
        let replace = |from: &[u8], to: &[u8]| {
            let at = good.windows(from.len()).position(|w| w == from).unwrap();
            let mut b = good.clone();
            b[at..at + to.len()].copy_from_slice(to);
            b
        };
        assert!(text(&replace(b"<f4", b"<f8")).contains("'<f8'"));
        assert!(text(&replace(b"False", b"True ")).contains("Fortran"));
        assert!(text(&good[..good.len() - 1]).contains("truncated"));
        assert!(text(b"hello").contains("magic"));
        assert!(text(&good[..20]).contains("truncated"));
    }
}
