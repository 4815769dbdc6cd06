//! Runtime support shared by the nfnet compiler, the generated model crate and the `nfnet` app.
//!
//! For now this holds the `.npy` tensor file reader and writer that every front door uses;
//! the generated model's API types, thread pool and preprocessing arrive with code generation.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod npy;
