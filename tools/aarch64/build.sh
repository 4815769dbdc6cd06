#!/usr/bin/env bash
# Cross-builds for aarch64-unknown-linux-gnu: `tools/aarch64/build.sh [cargo build args]`, e.g.
# `--release --bin nfnet`. The model's environment (NFNET_MODEL, NFNET_INPUT_SIZE, NFNET_BATCH,
# NFNET_WEIGHT_DTYPE, NFNET_WINOGRAD) reaches the model's build script, which runs on the host.
# Prints the path of the (last) executable it built as its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
"$here/setup.sh"
. "$here/env.sh"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo build --target "$TARGET" --message-format=json-render-diagnostics "$@" >"$out"
exe=$(sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' "$out" | tail -1)
[ -n "$exe" ] || { echo "tools/aarch64/build.sh: no executable was built (give --bin NAME)" >&2; exit 1; }
echo "$exe"
