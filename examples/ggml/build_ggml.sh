#!/usr/bin/env bash
# Build ggml's CPU backend (llama.cpp's compute engine) from the llama-cpp-python sdist on PyPI,
# which vendors llama.cpp and with it ggml: static libraries + headers into a cached folder.
#
#   bash examples/ggml/build_ggml.sh            # prints the folder (GGML_DIR) on its last line
#
# GGML_DIR (default ~/.cache/lutc/ggml-<version>) is reused when it holds a finished build
# (delete it to rebuild). Release, GGML_NATIVE (this machine's ISA: AVX2/AVX-512/VNNI on x86),
# OpenMP off so that ggml runs its own thread pool, CPU backend only. About 30 s on 2 cores
# after the 77 MB download.
# The sdist's sha256 and ggml's version are written to GGML_DIR/SOURCE (llama-cpp-python 0.3.36
# vendors ggml 0.25.3). Needs pip (for the download), cmake >= 3.14 and a C/C++ compiler.
set -euo pipefail
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
dir=${GGML_DIR:-$HOME/.cache/lutc/ggml-llama-cpp-python-$version}
if [ -f "$dir/.done" ]; then echo "$dir"; exit 0; fi
mkdir -p "$dir"
src="$dir/src"
if [ ! -d "$src/ggml" ]; then
  python -m pip download -q --no-deps --no-binary :all: --dest "$dir/dl" "llama-cpp-python==$version" >&2
  tarball=$(ls "$dir"/dl/llama_cpp_python-*.tar.gz)
  mkdir -p "$src"
  tar xzf "$tarball" -C "$src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp/ggml"
  ggml_version=$(sed -nE 's/^set\(GGML_VERSION_(MAJOR|MINOR|PATCH) ([0-9]+)\)/\2/p' "$src/ggml/CMakeLists.txt" | paste -sd.)
  echo "ggml $ggml_version vendored in llama-cpp-python $version (sdist sha256 $(sha256sum "$tarball" | cut -d' ' -f1))" > "$dir/SOURCE"
  rm -rf "$dir/dl"
fi
# the sdist leaves out ggml's pkg-config template, which a top-level ggml build configures
[ -f "$src/ggml/ggml.pc.in" ] || : > "$src/ggml/ggml.pc.in"
cmake -S "$src/ggml" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF \
  -DGGML_CPU=ON -DGGML_METAL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF >&2
cmake --build "$dir/build" -j "$(nproc)" >&2
mkdir -p "$dir/lib"
find "$dir/build" -name 'libggml*.a' -exec cp {} "$dir/lib/" \;
touch "$dir/.done"
echo "$dir"
