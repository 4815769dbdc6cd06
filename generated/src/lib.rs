//! The compiled model. Code generation (build.rs calling nfnet-compiler) lands with issue 3; until then this crate is empty.
