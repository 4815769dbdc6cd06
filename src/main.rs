//! `nfnet`: the static inference binary with the compiled model inside.
//!
//! The compiled model (code generation, `generated/`) is not built yet; until it is, this
//! binary only points to the compiler's tools and fails, so nobody mistakes it for a model.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "nfnet {}: no compiled model yet (code generation is not built). Use `nfc check`, \
         `nfc reference` and `nfc synth` from nfnet-compiler meanwhile.",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
