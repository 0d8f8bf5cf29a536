"""ARM: kernels cross-compiled for aarch64 and run under qemu-aarch64 through a small C host.

The NEON ``tbl`` LUT kernel (every format and bit width) and the generic schedule are linked
statically with tests/c/kernel_runner.c and run on random data; outputs are poisoned with NaN
and compared with the float64 reference (and, for int8 tables, with the bound (4) of
lutc.frontend). Needs Debian's qemu-user and gcc-aarch64-linux-gnu (.ci/run installs them).
"""
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
import tvm_ffi.libinfo

import lutc
from lutc.testing import (FORMATS, int8_activation_bound, int8_table_bound, random_case, reference, rel_error,
                          tolerance)

CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
HERE = os.path.dirname(__file__)
pytestmark = pytest.mark.skipif(
    (shutil.which(CC) is None or shutil.which(QEMU) is None) and not os.environ.get("CI"),
    reason="needs qemu-user and gcc-aarch64-linux-gnu (CI installs them; there this fails instead)")
DL_CODES = {torch.float32: (2, 32), torch.float16: (2, 16), torch.bfloat16: (4, 16), torch.uint8: (1, 8)}


@pytest.fixture(scope="module")
def runner_object(tmp_path_factory):
    obj = tmp_path_factory.mktemp("runner") / "kernel_runner.o"
    subprocess.run([CC, "-O2", "-c", "-I", tvm_ffi.libinfo.find_include_path(),
                    "-I", tvm_ffi.libinfo.find_dlpack_include_path(),
                    os.path.join(HERE, "c", "kernel_runner.c"), "-o", str(obj)], check=True)
    return obj


def run_under_qemu(kernel, args, out_shape, out_dtype, runner_object, tmp_path):
    """Link ``kernel`` with the C host, run it under qemu on ``args``; return the output."""
    obj, exe = tmp_path / "kernel.o", tmp_path / "kernel"
    kernel.executable.mod.write_to_file(str(obj))
    subprocess.run([CC, "-static", str(runner_object), str(obj), "-o", str(exe), "-lm"], check=True)
    poison = torch.full(out_shape, float("nan"), dtype=out_dtype)
    call, out_file = tmp_path / "call.bin", tmp_path / "out.bin"
    with open(call, "wb") as f:
        f.write(struct.pack("<i", len(args) + 1))
        for t in list(args) + [poison]:
            t = t.contiguous()
            code, bits = DL_CODES[t.dtype]
            f.write(struct.pack("<iii", code, bits, t.dim()) + struct.pack(f"<{t.dim()}q", *t.shape))
            f.write(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes())
    subprocess.run([QEMU, str(exe), str(call), str(out_file)], check=True, timeout=120)
    raw = np.fromfile(out_file, np.uint8)
    return torch.from_numpy(raw).view(out_dtype).reshape(out_shape)




@pytest.mark.parametrize("fmt,wbits,zp", FORMATS, ids=lambda v: str(v))
def test_neon_tbl_kernel_under_qemu(fmt, wbits, zp, runner_object, tmp_path):
    gs = -1 if fmt == "ternary" else (32, 64, 128, -1)[wbits - 1]
    M, N, K = ((1, 100, 512), (3, 40, 11008))[wbits % 2]
    spec = lutc.MPGemmSpec(M, N, K, wbits=wbits, format=fmt, group_size=gs, zero_point=zp,
                           table_dtype="int8", symmetrize=wbits != 3)
    kernel = lutc.build(spec, target="arm")
    assert kernel.schedule == "arm" and kernel.layout == "tiles32" and "tbl" in kernel.source
    x, qw = random_case(spec, seed=wbits)
    y = run_under_qemu(kernel, [x, *kernel.pack(qw).tensors()], (M, N), x.dtype, runner_object, tmp_path)
    ref = reference(x, qw)
    bound = int8_table_bound(spec, x, qw)
    assert torch.isfinite(y).all()
    assert ((y.double() - ref).abs() <= bound + 1e-5 * ref.abs().max()).all()
    assert rel_error(y, ref) < tolerance(spec)


@pytest.mark.parametrize("wbits,knobs", [(2, {"tiles": 2}), (1, {"tiles": 4, "row_groups": 2, "k_span": 2}),
                                          (4, {"tiles": 2, "row_groups": 2, "k_span": 1})], ids=str)
def test_neon_tbl_task_shapes_under_qemu(wbits, knobs, runner_object, tmp_path):
    """Several row tiles per table load, groups of them per task and a K-block order: 7 tiles of
    32 rows (the last task repeats a tile it does not store), NaN-poisoned output."""
    spec = lutc.MPGemmSpec(2, 200, 1024, wbits=wbits, group_size=128, table_dtype="int8")
    kernel = lutc.build(spec, target="arm", schedule="arm", knobs=knobs)
    x, qw = random_case(spec, seed=11 + wbits)
    y = run_under_qemu(kernel, [x, *kernel.pack(qw).tensors()], (2, 200), x.dtype, runner_object, tmp_path)
    ref = reference(x, qw)
    assert torch.isfinite(y).all()
    assert ((y.double() - ref).abs() <= int8_table_bound(spec, x, qw) + 1e-5 * ref.abs().max()).all()
    assert rel_error(y, ref) < tolerance(spec)


@pytest.mark.parametrize("spec", [
    lutc.MPGemmSpec(2, 50, 256, wbits=2, group_size=64, table_dtype="float32"),
    lutc.MPGemmSpec(1, 64, 512, wbits=4, group_size=128, zero_point=True, g=2, act_dtype="float16"),
], ids=["generic-fp32", "generic-fp16-g2"])
def test_generic_schedule_under_qemu(spec, runner_object, tmp_path):
    kernel = lutc.build(spec, target="arm")
    assert kernel.schedule == "cpu_generic"
    x, qw = random_case(spec, seed=3)
    y = run_under_qemu(kernel, [x, *qw.tensors()], (spec.M, spec.N), x.dtype, runner_object, tmp_path)
    assert rel_error(y, reference(x, qw)) < tolerance(spec)


def test_neon_bf16_under_qemu(runner_object, tmp_path):
    spec = lutc.MPGemmSpec(3, 64, 1024, wbits=2, group_size=128, table_dtype="int8", act_dtype="bfloat16")
    kernel = lutc.build(spec, target="arm")
    x, qw = random_case(spec, seed=5)
    y = run_under_qemu(kernel, [x, *kernel.pack(qw).tensors()], (3, 64), x.dtype, runner_object, tmp_path)
    assert rel_error(y, reference(x, qw)) < tolerance(spec)


@pytest.mark.parametrize("target,knobs,dot", [("arm", {}, "sdot"), ("arm-i8mm", {"in_place": 1, "row_tiles": 2}, "usdot"),
                                             ("arm", {"in_place": 2}, "sdot"),
                                             ("arm", {"splits": 2, "row_tiles": 1}, "sdot")])
@pytest.mark.parametrize("fmt,wbits,zp", [("uniform", 1, False), ("uniform", 2, True),
                                          ("uniform", 3, False), ("uniform", 4, True),
                                          ("ternary", 2, False)], ids=str)
def test_neon_dot_kernel_under_qemu(fmt, wbits, zp, target, knobs, dot, runner_object, tmp_path):
    """``sdot`` on shifted codes, and with ``in_place`` on an Armv8.6 target (qemu-aarch64's
    default CPU has ``i8mm``) ``usdot`` on codes masked where they stand (up to 192 for 2 bits,
    unsigned), a sum per slot shifted down per block; ``sdot`` on codes masked where they stand
    in their half byte (at most 15, ``in_place=2``); K in two slices summed by a second loop."""
    spec = lutc.MPGemmSpec(3, 42, 1024, wbits=wbits, format=fmt, zero_point=zp, table_dtype="int8",
                           group_size=-1 if fmt == "ternary" else 64)
    kernel = lutc.build(spec, target=target, schedule="dot_mac", knobs=knobs)
    assert kernel.layout == "dot4" and dot in kernel.source
    x, qw = random_case(spec, seed=wbits)
    y = run_under_qemu(kernel, [x, *kernel.pack(qw).tensors()], (3, 42), x.dtype, runner_object, tmp_path)
    ref = reference(x, qw)
    assert ((y.double() - ref).abs() <= int8_activation_bound(spec, x, qw) + 1e-5 * ref.abs().max()).all()
    assert rel_error(y, ref) < tolerance(spec)
