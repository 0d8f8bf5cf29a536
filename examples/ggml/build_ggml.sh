#!/usr/bin/env bash
# Build ggml's CPU backend (llama.cpp's compute engine) from the llama-cpp-python sdist on PyPI,
# which vendors llama.cpp and with it ggml: static libraries + headers into a cached folder.
#
#   bash examples/ggml/build_ggml.sh            # prints the folder (GGML_DIR) on its last line
#   GGML_ARCH=aarch64 bash examples/ggml/build_ggml.sh   # cross-built for aarch64 (run under qemu)
#
# Libraries go to GGML_DIR/lib-native or GGML_DIR/lib-aarch64 (the source is shared).
# GGML_DIR (default ~/.cache/lutc/ggml-<version>) is reused when it holds a finished build
# (delete it to rebuild). Release, GGML_NATIVE (this machine's ISA: AVX2/AVX-512/VNNI on x86;
# aarch64: armv8.2-a+dotprod with aarch64-linux-gnu-gcc/g++),
# OpenMP off so that ggml runs its own thread pool, CPU backend only. About 30 s on 2 cores
# after the 77 MB download.
# The sdist's sha256 and ggml's version are written to GGML_DIR/SOURCE (llama-cpp-python 0.3.36
# vendors ggml 0.25.3). Needs pip (for the download), cmake >= 3.14 and a C/C++ compiler.
set -euo pipefail
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
dir=${GGML_DIR:-$HOME/.cache/lutc/ggml-llama-cpp-python-$version}
arch=${GGML_ARCH:-native}
if [ -f "$dir/.done-$arch" ]; then echo "$dir"; exit 0; fi
mkdir -p "$dir"
src="$dir/src"
if [ ! -d "$src/ggml" ]; then
  python -m pip download -q --no-deps --no-binary :all: --dest "$dir/dl" "llama-cpp-python==$version" >&2
  tarball=$(ls "$dir"/dl/llama_cpp_python-*.tar.gz)
  mkdir -p "$src"
  tar xzf "$tarball" -C "$src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp/ggml"
  ggml_version=$(sed -nE 's/^set\(GGML_VERSION_(MAJOR|MINOR|PATCH) ([0-9]+)\)/\2/p' "$src/ggml/CMakeLists.txt" | paste -sd.)
  # the llama.cpp commit this release vendors, from its changelog
  commit=$(tar xzf "$tarball" -O "llama_cpp_python-$version/CHANGELOG.md" | awk -v v="## [$version]" \
    'index($0, v) == 1 {f = 1; next} /^## \[/ {f = 0} f && match($0, /llama\.cpp@[0-9a-f]+/) {print substr($0, RSTART + 10, RLENGTH - 10); exit}')
  echo "ggml $ggml_version of llama.cpp ${commit:-?} (ggml-org/llama.cpp), vendored in llama-cpp-python $version (sdist sha256 $(sha256sum "$tarball" | cut -d' ' -f1))" > "$dir/SOURCE"
  rm -rf "$dir/dl"
fi
# the sdist leaves out ggml's pkg-config template, which a top-level ggml build configures
[ -f "$src/ggml/ggml.pc.in" ] || : > "$src/ggml/ggml.pc.in"
case "$arch" in
  native) flags=(-DGGML_NATIVE=ON) ;;
  aarch64) flags=(-DGGML_NATIVE=OFF -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64
                  -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++
                  -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod) ;;
  *) echo "build_ggml.sh: GGML_ARCH must be native or aarch64, not $arch" >&2; exit 2 ;;
esac
cmake -S "$src/ggml" -B "$dir/build-$arch" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  "${flags[@]}" -DGGML_OPENMP=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF \
  -DGGML_CPU=ON -DGGML_METAL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF >&2
cmake --build "$dir/build-$arch" -j "$(nproc)" >&2
mkdir -p "$dir/lib-$arch"
find "$dir/build-$arch" -name 'libggml*.a' -exec cp {} "$dir/lib-$arch/" \;
touch "$dir/.done-$arch"
echo "$dir"
