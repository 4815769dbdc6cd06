//! nfnet-model: the ECA-NFNet model compiled ahead of time by nfnet-compiler.
//!
//! Which model, input size and batch are chosen when this crate is built (see build.rs):
//! `NFNET_MODEL`, `NFNET_INPUT_SIZE`, `NFNET_BATCH`. The API (`Model`, `Workspace`, `Outputs`)
//! and the constants (`INPUT_LEN`, `LOGITS_LEN`, `FEATURE_SHAPES`, ...) are generated with
//! fixed shapes.
//!
//! ```no_run
//! use nfnet_model::{Model, Outputs, Workspace, INPUT_LEN, LOGITS_LEN};
//! let model = Model::new().unwrap();
//! let mut ws = Workspace::new(2).unwrap();
//! let input = vec![0.0f32; INPUT_LEN];
//! let mut logits = [0.0f32; LOGITS_LEN];
//! model.infer(&mut ws, input.as_slice().try_into().unwrap(),
//!     Outputs { logits: &mut logits, pre_logits: None, forward_features: None, features: None });
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

include!(concat!(env!("OUT_DIR"), "/nfnet_model.rs"));
