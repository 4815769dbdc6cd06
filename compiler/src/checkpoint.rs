//! The checkpoint: a memory-mapped `model.safetensors`, validated against the architecture
//! before anything reads a weight.

use crate::arch::Arch;
use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where one tensor lives in the mapped file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the whole file.
    pub bytes: Range<usize>,
}

/// A mapped safetensors file and its tensor index (sorted by name).
pub struct Checkpoint {
    pub path: PathBuf,
    map: Mmap,
    pub tensors: BTreeMap<String, TensorRef>,
    /// The `__metadata__` of the header (the synthesizer records its seed there).
    pub metadata: HashMap<String, String>,
}

/// The dtypes nfnet reads (all upcast exactly to f64).
const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

impl Checkpoint {
    /// Maps `path` and parses its header. The header's offsets are checked (in bounds,
    /// contiguous, sized by shape and dtype); tensors are checked against an architecture by
    /// [`Checkpoint::validate`].
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |what: String| Error::new(format!("{}: {what}", path.display()));
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        // SAFETY: the mapping is read-only and private to this process; like every reader of
        // safetensors files we require that nobody truncates or rewrites the file while it is
        // mapped (a concurrent writer could otherwise change the bytes under us).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| fail(format!("cannot map: {e}")))?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map[..]).map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
        let base = 8 + header_len;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (s, e) = info.data_offsets;
                let t = TensorRef { dtype: info.dtype, shape: info.shape.clone(), bytes: base + s..base + e };
                (name, t)
            })
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Checkpoint { path: path.to_path_buf(), map, tensors, metadata })
    }

    /// Opens `path` and validates it against `arch` (see [`Checkpoint::validate`]).
    pub fn load(path: &Path, arch: &Arch) -> Result<Self> {
        let c = Self::open(path)?;
        c.validate(arch)?;
        Ok(c)
    }

    /// Checks every tensor against the architecture: missing and unexpected keys, shapes,
    /// dtypes and non-finite values, all reported together, one line per key.
    pub fn validate(&self, arch: &Arch) -> Result<()> {
        let file = self.path.display();
        let mut problems = Vec::new();
        let expected = arch.expected_tensors();
        let known: std::collections::HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        for (key, shape) in &expected {
            let Some(t) = self.tensors.get(key) else {
                problems.push(format!("{file}: {key}: missing, expected shape {shape:?}"));
                continue;
            };
            if &t.shape != shape {
                problems.push(format!("{file}: {key}: expected shape {shape:?}, found {:?}", t.shape));
            }
            if !DTYPES.contains(&t.dtype) {
                problems.push(format!("{file}: {key}: expected dtype F32, F16 or BF16, found {}", dtype_name(t.dtype)));
            } else if let Some(i) = self.first_non_finite(t) {
                problems.push(format!("{file}: {key}: value {i} is not finite (NaN or infinity)"));
            }
        }
        for (key, t) in &self.tensors {
            if !known.contains(key.as_str()) {
                problems.push(format!(
                    "{file}: {key}: unexpected tensor (shape {:?}, {}) that {} does not have",
                    t.shape,
                    dtype_name(t.dtype),
                    arch.config.architecture
                ));
            }
        }
        Error::check(problems)
    }

    fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.map[t.bytes.clone()]
    }

    fn first_non_finite(&self, t: &TensorRef) -> Option<usize> {
        let b = self.bytes(t);
        match t.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000),
            Dtype::F16 => b.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
            Dtype::BF16 => b.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
            _ => None,
        }
    }

    /// The tensor `key` upcast to f64 (exact for every accepted dtype). Call after validation.
    pub fn f64(&self, key: &str) -> Result<Vec<f64>> {
        let t = self.tensors.get(key).ok_or_else(|| Error::new(format!("{}: {key}: missing", self.path.display())))?;
        let b = self.bytes(t);
        Ok(match t.dtype {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            d => {
                return Err(Error::new(format!(
                    "{}: {key}: dtype {} is not readable",
                    self.path.display(),
                    dtype_name(d)
                )));
            }
        })
    }

    /// SHA-256 of the whole file, lowercase hex.
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&self.map[..]);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}
