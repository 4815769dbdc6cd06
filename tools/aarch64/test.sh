#!/usr/bin/env bash
# The NEON-relevant tests, cross-built for aarch64 and run under qemu-aarch64 (ARM's semantics,
# not its speed): the generated tiny models and the built-in L2 against the timm fixtures on
# every ISA of the target (scalar, neon), NEON against its x86 emulation bit for bit,
# concurrency, zero allocation, SiLU accuracy, preprocessing (JPEG included), the runtime's own
# tests, the C API; then `nfnet info`, `run` and `preprocess` of the built-in L2 under qemu.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
"$here/setup.sh"
start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The emulation's outputs, on this (x86) machine with its own toolchain.
NFNET_NEON_OUTPUTS_WRITE="$tmp/neon_emu.bin" cargo test --release -q --test generated_models \
    neon_and_its_emulation_agree_bit_for_bit >/dev/null
(
    . "$here/env.sh"
    cargo test --release --target "$TARGET" -p nfnet-runtime --lib
    NFNET_NEON_OUTPUTS_CHECK="$tmp/neon_emu.bin" cargo test --release --target "$TARGET" -p nfnet \
        --test generated_models --test concurrency --test no_alloc --test silu_accuracy --test preprocess
    # The C API's own checks; its L2 inferences (zero allocation, timm match) are the same
    # kernels as above and run many minutes under qemu.
    cargo test --release --target "$TARGET" -p nfnet-capi --test api -- \
        --skip allocates_nothing --skip builtin_model_matches_timm
)
nfnet=$("$here/build.sh" --release --bin nfnet | tail -1)
run() { qemu-aarch64-static "$nfnet" "$@"; }
info=$(run info)
grep -Eq "^isa +neon " <<<"$info" || { echo "nfnet info does not report NEON:"; echo "$info"; exit 1; }
run run --input fixtures/l2_320/input.npy --output "$tmp/logits.npy"
run preprocess fixtures/preprocess/q85_420_61x47.jpg --output "$tmp/x.npy"
echo "aarch64 under qemu: all passed in $(( $(date +%s) - start )) s"
