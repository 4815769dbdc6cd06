#!/usr/bin/env bash
# Installs what cross-building for aarch64 and running its tests under qemu needs, and only what
# is missing: Debian's Rust toolchain with the aarch64 standard library, the aarch64 C toolchain
# (linker, libc) and qemu's user-mode emulator. Idempotent and quiet; one line if it fails.
set -uo pipefail

fail() { echo "tools/aarch64/setup.sh: $*" >&2; exit 1; }

pkgs=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

command -v apt-get >/dev/null || fail "apt-get not found; install ${missing[*]} by hand"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64 || fail "cannot add the arm64 architecture to dpkg"
fi
log=$(mktemp)
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"; } >"$log" 2>&1; then
    fail "cannot install ${missing[*]}: $(grep -E '^E:' "$log" | head -1)"
fi
rm -f "$log"
