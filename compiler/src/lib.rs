//! nfnet-compiler: timm's ECA-NFNet `config.json` + `model.safetensors` in, a validated and
//! folded model graph out, with a reference executor that evaluates the model exactly as timm
//! does (f64) to check everything downstream against.
//!
//! Data flows one way, one stage per module:
//! [`config`] (hub config.json) -> [`arch`] (every module's shape) -> [`checkpoint`] (validated
//! tensors) -> [`graph`] (fixed shapes, folded weights). [`reference`] is the oracle, [`synth`]
//! makes deterministic checkpoints in the hub layout.
//!
//! ```no_run
//! use nfnet_compiler::Model;
//! let model = Model::load("path/to/eca_nfnet_l2".as_ref()).unwrap();
//! let graph = model.graph((320, 320), 1).unwrap();
//! println!("{:.2} GFLOP", graph.total_flops() as f64 / 1e9);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(clippy::needless_doctest_main, reason = "the build.rs example is shown whole, as users copy it")]

pub mod arch;
pub mod builder;
pub mod checkpoint;
pub mod config;
pub mod emit;
pub mod error;
pub mod graph;
pub mod ops;
pub mod passes;
pub mod plan;
pub mod reference;
pub mod schedule;
pub mod synth;

use std::path::Path;

pub use error::{Error, Result};

/// A model directory (`config.json` + `model.safetensors`), parsed and validated.
pub struct Model {
    pub arch: arch::Arch,
    pub checkpoint: checkpoint::Checkpoint,
}

impl Model {
    /// Loads and validates a model directory. Problems in config.json are reported first; if
    /// the config is sound every problem of the checkpoint is reported together.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = config::ModelConfig::load(&dir.join("config.json"))?;
        let arch = arch::Arch::new(&config).map_err(|e| Error {
            problems: e.problems.iter().map(|p| format!("{}: {p}", dir.join("config.json").display())).collect(),
        })?;
        let checkpoint = checkpoint::Checkpoint::load(&dir.join("model.safetensors"), &arch)?;
        Ok(Model { arch, checkpoint })
    }

    /// The folded graph for `batch` images of `input_hw` (height, width).
    pub fn graph(&self, input_hw: (usize, usize), batch: usize) -> Result<graph::Graph> {
        arch::check_input_size(input_hw.0, input_hw.1).map_err(Error::new)?;
        if !(1..=builder::MAX_BATCH).contains(&batch) {
            return Err(Error::new(format!("batch {batch} is not from 1 to {}", builder::MAX_BATCH)));
        }
        graph::Graph::build(&self.arch, &self.checkpoint, input_hw, batch)
    }

    /// The reference executor over this model.
    pub fn reference(&self) -> reference::Reference<'_> {
        reference::Reference { arch: &self.arch, checkpoint: &self.checkpoint }
    }
}
