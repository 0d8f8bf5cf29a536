#!/usr/bin/env bash
# Build OUT/lutc_in_ggml: lutc_in_ggml.c + the kernel prepare.py exported into OUT + ggml's CPU
# backend (build_ggml.sh, cached).   bash examples/ggml/build.sh OUT
# For a kernel exported with --target arm: GGML_ARCH=aarch64 bash examples/ggml/build.sh OUT, then
# qemu-aarch64 OUT/lutc_in_ggml OUT (a static aarch64 program; ggml cross-built the same way).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT}
arch=${GGML_ARCH:-native}
ggml=$(GGML_ARCH=$arch bash "$here/build_ggml.sh" | tail -1)
case "$arch" in
  native) CC=gcc CXX=g++ static=() ;;
  aarch64) CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ static=(-static) ;;
esac
# C for the host and lutc's backend services (lutc_backend.c, standalone: no libtvm_ffi), g++ to
# link ggml's C++ parts; ggml was built with GGML_OPENMP=OFF, so pthreads is all it needs.
cflags=(-O2 -std=gnu11 -Wall -I"$out" -I"$out/include" -I"$ggml/src/ggml/include" -DLUTC_STANDALONE -pthread)
"$CC" "${cflags[@]}" -c "$here/lutc_in_ggml.c" -o "$out/lutc_in_ggml.o"
"$CC" "${cflags[@]}" -c "$out/lutc_backend.c" -o "$out/lutc_backend.o"
lib="$ggml/lib-$arch"
"$CXX" "${static[@]}" -o "$out/lutc_in_ggml" "$out/lutc_in_ggml.o" "$out/kernel.o" "$out/lutc_backend.o" \
  "$lib/libggml.a" "$lib/libggml-cpu.a" "$lib/libggml-base.a" -lm -pthread
