//! The fixtures' tiny models, compiled by nfnet-compiler at build time.

/// `fixtures/tiny`: batch 2 at 45x37, 10 classes.
pub mod tiny {
    include!(concat!(env!("OUT_DIR"), "/tiny/nfnet_model.rs"));
}

/// `fixtures/tiny_variant_bf16`: no conv2b, one group, no classifier, bf16 weights, 33x64.
pub mod variant {
    include!(concat!(env!("OUT_DIR"), "/tiny_variant_bf16/nfnet_model.rs"));
}

/// `fixtures/tiny` without fusion passes: every graph node its own kernel.
pub mod tiny_passes_0 {
    include!(concat!(env!("OUT_DIR"), "/tiny_passes_0/nfnet_model.rs"));
}

/// `fixtures/tiny` after the first fusion pass (conv + SiLU).
pub mod tiny_passes_1 {
    include!(concat!(env!("OUT_DIR"), "/tiny_passes_1/nfnet_model.rs"));
}

/// `fixtures/tiny` after two passes (+ channel sums in the conv epilogue).
pub mod tiny_passes_2 {
    include!(concat!(env!("OUT_DIR"), "/tiny_passes_2/nfnet_model.rs"));
}

/// `fixtures/tiny` with its conv weights stored in bf16.
pub mod tiny_weights_bf16 {
    include!(concat!(env!("OUT_DIR"), "/tiny_weights_bf16/nfnet_model.rs"));
}

/// `fixtures/tiny` with its conv weights stored in f16.
pub mod tiny_weights_f16 {
    include!(concat!(env!("OUT_DIR"), "/tiny_weights_f16/nfnet_model.rs"));
}

/// `fixtures/tiny` with every eligible 3x3 conv as Winograd F(4x4, 3x3).
pub mod tiny_winograd_f4 {
    include!(concat!(env!("OUT_DIR"), "/tiny_winograd_f4/nfnet_model.rs"));
}

/// `fixtures/tiny_variant_bf16` with every eligible 3x3 conv as Winograd F(4x4, 3x3).
pub mod variant_winograd_f4 {
    include!(concat!(env!("OUT_DIR"), "/variant_winograd_f4/nfnet_model.rs"));
}

/// `fixtures/tiny` with direct convs only.
pub mod tiny_winograd_off {
    include!(concat!(env!("OUT_DIR"), "/tiny_winograd_off/nfnet_model.rs"));
}

/// `fixtures/tiny_wide`: groups of 32 channels.
pub mod wide {
    include!(concat!(env!("OUT_DIR"), "/wide/nfnet_model.rs"));
}

/// `fixtures/tiny_wide` in bf16 precision: 3x3 and 1x1 convs in bf16, chains of them
/// passing bf16 activations.
pub mod wide_bf16 {
    include!(concat!(env!("OUT_DIR"), "/wide_bf16/nfnet_model.rs"));
}

/// `fixtures/tiny` in bf16 precision.
pub mod tiny_bf16 {
    include!(concat!(env!("OUT_DIR"), "/tiny_bf16/nfnet_model.rs"));
}

/// `fixtures/tiny_variant_bf16` in bf16 precision.
pub mod variant_bf16 {
    include!(concat!(env!("OUT_DIR"), "/variant_bf16/nfnet_model.rs"));
}
