# Sourced by build.sh and test.sh: cargo set up to cross-build for aarch64-unknown-linux-gnu with
# Debian's rustc (which has the aarch64 standard library), link with the aarch64 gcc, build C
# with it, and run test binaries under qemu-aarch64. Host artifacts (build scripts, which
# compile the model) go to their own target directory so the two toolchains never share one.
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-target/aarch64}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# A dynamic executable (built without the static flag below) must load the sysroot's libc, not
# the multiarch one the aarch64 Rust packages install: an ld.so and a libc of two glibc builds
# share private state, and pthread_create then spins forever.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib"
# A static executable runs alone on any aarch64 Linux (and under qemu without a sysroot).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
TARGET=aarch64-unknown-linux-gnu
