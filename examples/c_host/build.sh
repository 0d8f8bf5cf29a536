#!/usr/bin/env bash
# Build a host for the kernel that prepare.py exported into OUT:
#   build.sh OUT o     C host + the LLVM object kernel.o          -> OUT/c_host      (default)
#   build.sh OUT c     C host + the C source kernel.c             -> OUT/c_host_src
#   build.sh OUT cxx   C++ host loading kernel.so through tvm-ffi -> OUT/cxx_host
# The C hosts need only gcc and the export directory; the C++ host needs tvm-ffi's headers and
# libtvm_ffi.so (tvm-ffi-config, from `pip install apache-tvm-ffi`), not libtvm_runtime.
# kernel.c exists only for kernels without SIMD intrinsics (kernel.h says why it is missing).
# CC, CXX, CFLAGS and LDFLAGS are honoured: a kernel exported for --target arm builds with
#   CC=aarch64-linux-gnu-gcc CFLAGS=-fno-tree-vectorize LDFLAGS=-static bash build.sh OUT
# and runs under qemu-aarch64 (gcc 12's aarch64 vectorizer crashed on such a loop once).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT [o|c|cxx]}
kind=${2:-o}
CC=${CC:-gcc}
CXX=${CXX:-g++}
cflags=(-O2 -std=gnu11 -Wall -I"$out" -I"$out/include" -DLUTC_STANDALONE -pthread ${CFLAGS:-})
case "$kind" in
  o) "$CC" "${cflags[@]}" "$here/main.c" "$out/kernel.o" "$out/lutc_backend.c" -lm ${LDFLAGS:-} \
       -o "$out/c_host" ;;
  # -fno-strict-aliasing: TVM's C code converts bfloat16 through pointer casts.
  c) if [ ! -f "$out/kernel.c" ]; then
       echo "build.sh: no $out/kernel.c:" >&2
       grep -F "kernel.c: not written" "$out/kernel.h" >&2 || true
       exit 2
     fi
     "$CC" "${cflags[@]}" -fno-strict-aliasing "$here/main.c" "$out/kernel.c" "$out/lutc_backend.c" \
       -lm ${LDFLAGS:-} -o "$out/c_host_src" ;;
  cxx)
    cfg=${TVM_FFI_CONFIG:-tvm-ffi-config}
    "$CXX" -O1 $("$cfg" --cxxflags) -I"$out" "$here/load_so.cc" -o "$out/cxx_host" \
      $("$cfg" --ldflags) $("$cfg" --libs) -Wl,-rpath,"$("$cfg" --libdir)" ;;
  *) echo "unknown kind $kind: use o, c or cxx" >&2; exit 2 ;;
esac
