"""lutc inside llama.cpp's engine (ggml): ggml's blocks imported exactly, and the example that
runs a lutc kernel as a ggml graph op (on ggml's thread pool) beside ggml's own mul_mat.

The example test builds ggml's CPU backend from the llama-cpp-python sdist once (a 77 MB download
and about 30 s on 2 cores, cached in ~/.cache/lutc or GGML_DIR); it skips without cmake or network here, and
fails instead in CI.
"""
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import lutc
import schedules
from lutc.importers import import_ggml_blocks
from lutc.testing import GGML_TOLERANCE, tolerance

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ggml"
gguf = pytest.importorskip("gguf")
# examples/ggml/bench.py: its prepare (the example's inputs) and its parser of the program's output
_spec = importlib.util.spec_from_file_location("ggml_bench", EXAMPLE / "bench.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)
TYPES = ("Q4_0", "Q4_1", "TQ1_0", "TQ2_0")


@pytest.mark.parametrize("qtype", TYPES)
def test_ggml_blocks_import_exactly(qtype):
    N, K = 48, 512
    w = np.random.default_rng(7).standard_normal((N, K)).astype(np.float32) * 0.05
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype])
    expected = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype]).astype(np.float64)
    qw = import_ggml_blocks(blocks, qtype, N, K)
    assert np.abs(qw.dequantize().double().numpy() - expected).max() <= 1e-6 * np.abs(expected).max()


def test_unknown_ggml_types_and_ragged_rows_are_named():
    with pytest.raises(ValueError, match="ggml type 'Q2_K': lutc imports"):
        import_ggml_blocks(np.zeros((4, 84), np.uint8), "Q2_K", 4, 256)
    with pytest.raises(ValueError, match="does not hold 512 weights in blocks of 32"):
        import_ggml_blocks(np.zeros((4, 100), np.uint8), "Q4_0", 4, 512)


def _ggml_dir(arch: str = "native") -> str:
    tools = ["cmake"] + (["aarch64-linux-gnu-g++", "qemu-aarch64"] if arch == "aarch64" else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"{missing} not installed (CI installs them, and there this test fails instead)")
    run = subprocess.run(["bash", str(EXAMPLE / "build_ggml.sh")], capture_output=True, text=True,
                         env={**os.environ, "GGML_ARCH": arch})
    if run.returncode != 0:
        if not os.environ.get("CI") and "pip" in run.stderr and "download" in run.stderr.lower():
            pytest.skip("cannot download the llama-cpp-python sdist here")
        raise AssertionError(run.stderr[-3000:])
    return run.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("qtype,shape", [("Q4_0", (1, 256, 512)), ("Q4_0", (5, 200, 1024)),
                                         ("TQ2_0", (3, 128, 768)), ("TQ1_0", (1, 64, 512)),
                                         # ggml quantizes these itself; lutc its own format of the bits
                                         ("Q2_K", (3, 256, 512)), ("Q1_0", (16, 128, 1024))])
def test_lutc_kernel_runs_in_a_ggml_graph(tmp_path, qtype, shape):
    ggml = _ggml_dir()
    kernel = example.prepare.prepare(tmp_path, qtype, shape, seed=shape[0])
    # lutc's default: with AVX-512 VNNI the multiply-add kernel at every M (on AMX tiles from
    # M = 9 where the CPU has them) but where x86.preferred says the LUT kernel, else the LUT kernel
    host = lutc.target.facts(None)
    amx = host.has("amx-tile", "amx-int8") and shape[0] >= schedules.amx.MIN_M
    lut = schedules.x86.preferred(kernel.spec, lutc.target.resolve(None))    # (Zen 4: W2 at M = 1)
    assert kernel.schedule == ("amx" if amx else "dot_mac" if host.has("avx512vnni") and not lut else "x86")
    build = subprocess.run(["bash", str(EXAMPLE / "build.sh"), str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "GGML_DIR": ggml, "GGML_ARCH": "native"})
    assert build.returncode == 0, build.stderr[-3000:]
    for threads in (1, 2):
        run = subprocess.run([str(tmp_path / "lutc_in_ggml"), str(tmp_path), "--threads", str(threads),
                              "--copies", "2", "--calls", "3"], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        found = example.parse(run.stdout)
        assert found["ggml"][0] == qtype and found["lutc"][0] == kernel.layout
        # both quantize x to 8 bits: ggml per block of 32 (Q8_0/Q8_K), lutc per table
        assert found["ggml"][1] < GGML_TOLERANCE and found["lutc"][1] < tolerance(kernel.spec)


@pytest.mark.parametrize("qtype,repacks", [("Q4_0", True), ("TQ2_0", False)])
def test_ggml_side_in_its_repack_buffer(tmp_path, qtype, repacks):
    """--repack 1 puts ggml's weights in its CPU_REPACK buffer (as llama.cpp does by default);
    a type it does not repack is refused, naming the type."""
    ggml = _ggml_dir()
    kernel = example.prepare.prepare(tmp_path, qtype, (3, 256, 512))
    assert subprocess.run(["bash", str(EXAMPLE / "build.sh"), str(tmp_path)], capture_output=True,
                          env={**os.environ, "GGML_DIR": ggml, "GGML_ARCH": "native"}).returncode == 0
    run = subprocess.run([str(tmp_path / "lutc_in_ggml"), str(tmp_path), "--threads", "2", "--calls", "2",
                          "--repack", "1"], capture_output=True, text=True)
    if repacks:
        assert run.returncode == 0, run.stdout + run.stderr
        found = example.parse(run.stdout)
        assert found["ggml"][0] == f"{qtype}+REPACK" and found["ggml"][1] < GGML_TOLERANCE
        assert found["lutc"][1] < tolerance(kernel.spec)
    else:
        assert run.returncode == 2 and f"does not repack {qtype}" in run.stderr


def test_the_example_refuses_a_weight_in_another_layout(tmp_path):
    ggml = _ggml_dir()
    example.prepare.prepare(tmp_path, "Q4_0", (1, 128, 512))
    assert subprocess.run(["bash", str(EXAMPLE / "build.sh"), str(tmp_path)], capture_output=True,
                          env={**os.environ, "GGML_DIR": ggml, "GGML_ARCH": "native"}).returncode == 0
    qw = lutc.importers.import_ggml_blocks(np.fromfile(tmp_path / "ggml.bin", np.uint8), "Q4_0", 128, 512)
    lutc.save_weights(qw, tmp_path / "weights.lutcw", layout="bitplane")
    run = subprocess.run([str(tmp_path / "lutc_in_ggml"), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and "not in the kernel's layout" in run.stderr


@pytest.mark.parametrize("qtype,shape", [("Q4_0", (3, 128, 512)), ("TQ2_0", (1, 64, 512))])
def test_neon_kernel_runs_in_a_ggml_graph_under_qemu(tmp_path, qtype, shape):
    """The same embedding cross-built for aarch64 (lutc's NEON kernel, ggml's NEON paths), run
    under qemu-aarch64: results only (qemu's timings say nothing about a real ARM core)."""
    ggml = _ggml_dir("aarch64")
    kernel = example.prepare.prepare(tmp_path, qtype, shape, target="arm")
    assert kernel.schedule == "arm"
    build = subprocess.run(["bash", str(EXAMPLE / "build.sh"), str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "GGML_DIR": ggml, "GGML_ARCH": "aarch64"})
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(["qemu-aarch64", str(tmp_path / "lutc_in_ggml"), str(tmp_path), "--threads", "2",
                          "--calls", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    found = example.parse(run.stdout)
    assert found["lutc"][0] == kernel.layout
    assert found["ggml"][1] < GGML_TOLERANCE and found["lutc"][1] < tolerance(kernel.spec)
