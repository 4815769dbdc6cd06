//! Compiles the model at build time: NFNET_MODEL (a directory with config.json and
//! model.safetensors; unset: the built-in synthetic eca_nfnet_l2), NFNET_INPUT_SIZE (S or HxW),
//! NFNET_BATCH. A user error stops the build with one line per problem, no backtrace.

fn main() {
    let result = nfnet_compiler::builder::Builder::from_env().and_then(|b| b.compile());
    if let Err(e) = result {
        for p in &e.problems {
            eprintln!("error: {p}");
        }
        std::process::exit(1);
    }
}
