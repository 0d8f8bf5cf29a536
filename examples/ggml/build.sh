#!/usr/bin/env bash
# Build OUT/lutc_in_ggml: lutc_in_ggml.c + the kernel prepare.py exported into OUT + ggml's CPU
# backend (build_ggml.sh, cached).   bash examples/ggml/build.sh OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT}
ggml=${GGML_DIR:-$(bash "$here/build_ggml.sh" | tail -1)}
# C for the host and lutc's backend services (lutc_backend.c, standalone: no libtvm_ffi), g++ to
# link ggml's C++ parts; ggml was built with GGML_OPENMP=OFF, so pthreads is all it needs.
cflags=(-O2 -std=gnu11 -Wall -I"$out" -I"$out/include" -I"$ggml/src/ggml/include" -DLUTC_STANDALONE -pthread)
gcc "${cflags[@]}" -c "$here/lutc_in_ggml.c" -o "$out/lutc_in_ggml.o"
gcc "${cflags[@]}" -c "$out/lutc_backend.c" -o "$out/lutc_backend.o"
g++ -o "$out/lutc_in_ggml" "$out/lutc_in_ggml.o" "$out/kernel.o" "$out/lutc_backend.o" \
  "$ggml/lib/libggml.a" "$ggml/lib/libggml-cpu.a" "$ggml/lib/libggml-base.a" -lm -pthread
