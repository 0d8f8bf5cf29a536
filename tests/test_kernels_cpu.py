"""CPU kernels against the float64 reference of the dequantized weights.

Every format x bit width x g x symmetrization runs; group sizes, M and (N, K) rotate through
the cases so each value meets several others (K = 11008 included). Outputs are poisoned with
NaN first (``out=``), so an element the kernel never writes fails the test.
"""
import itertools

import numpy as np
import pytest
import torch

import lutc
import schedules
from lutc.testing import (FORMATS, GROUP_SIZES, int8_table_bound, random_case, reference, rel_error,
                          tolerance)

MS = (1, 3, 16)
# N values that are not multiples of the 16-row block; K = 11008 (LLaMA MLP) included.
NKS = ((64, 256), (130, 1024), (40, 11008), (96, 512))
# Relative error bounds (max |y - ref| / max |ref|), from the output dtype's rounding.


def _cases():
    for idx, ((fmt, wbits, zp), g, sym) in enumerate(itertools.product(FORMATS, (2, 4), (False, True))):
        gs = -1 if fmt == "ternary" else GROUP_SIZES[idx % 4]
        M, (N, K) = MS[idx % 3], NKS[(idx // 4 + idx) % 4]
        yield pytest.param(lutc.MPGemmSpec(M, N, K, wbits=wbits, format=fmt, group_size=gs,
                                           zero_point=zp, g=g, symmetrize=sym),
                           id=f"{fmt}-w{wbits}{'-zp' if zp else ''}-g{g}-{'sym' if sym else 'full'}"
                              f"-gs{gs}-M{M}-{N}x{K}")


def _run_poisoned(kernel, x, qw):
    out = torch.full((kernel.spec.M, kernel.spec.N), float("nan"), dtype=x.dtype)
    returned = kernel(x, qw, out=out)
    assert returned is out
    return out


@pytest.mark.parametrize("spec", list(_cases()))
def test_fp32_matches_reference(spec):
    x, qw = random_case(spec, seed=spec.N + spec.K + spec.wbits)
    y = _run_poisoned(lutc.build(spec), x, qw)
    assert rel_error(y, reference(x, qw)) < tolerance(spec)


@pytest.mark.parametrize("act_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt,wbits,zp,gs", [("uniform", 4, True, 128), ("uniform", 2, False, 64),
                                             ("bcq", 3, False, 32), ("ternary", 2, False, -1)])
def test_half_activations(act_dtype, fmt, wbits, zp, gs):
    spec = lutc.MPGemmSpec(3, 130, 1024, wbits=wbits, format=fmt, group_size=gs, zero_point=zp,
                           act_dtype=act_dtype)
    x, qw = random_case(spec, seed=7)
    y = _run_poisoned(lutc.build(spec), x, qw)
    assert y.dtype == getattr(torch, act_dtype)
    assert rel_error(y, reference(x, qw)) < tolerance(spec)


@pytest.mark.parametrize("fmt,wbits,zp,gs,g,sym,NK", [
    ("uniform", 2, False, 128, 4, True, (64, 1024)),
    ("uniform", 4, True, 32, 4, False, (96, 512)),
    ("uniform", 1, False, -1, 2, True, (40, 11008)),
    ("bcq", 2, False, 64, 4, True, (130, 1024)),
    ("ternary", 2, False, -1, 4, True, (64, 11008)),
])
def test_int8_table_within_documented_bound(fmt, wbits, zp, gs, g, sym, NK):
    N, K = NK
    spec = lutc.MPGemmSpec(3, N, K, wbits=wbits, format=fmt, group_size=gs, zero_point=zp, g=g,
                           symmetrize=sym, table_dtype="int8")
    x, qw = random_case(spec, seed=11)
    y = _run_poisoned(lutc.build(spec), x, qw)
    ref = reference(x, qw)
    bound = int8_table_bound(spec, x, qw)
    err = (y.double() - ref).abs()
    assert torch.isfinite(y).all()
    # Equation (4) of lutc.frontend, plus float32 rounding of the rest of the computation.
    assert (err <= bound + 1e-5 * ref.abs().max()).all(), float((err - bound).max())
    # Independent rounding errors stay far below the worst case: a few percent at most.
    assert rel_error(y, ref) < tolerance(spec)


def test_float32_scales():
    spec = lutc.MPGemmSpec(2, 64, 512, wbits=3, group_size=64, scale_dtype="float32")
    x, qw = random_case(spec, seed=3)
    assert qw.scales.dtype == torch.float32
    assert rel_error(_run_poisoned(lutc.build(spec), x, qw), reference(x, qw)) < tolerance(spec)


def test_numpy_in_numpy_out():
    spec = lutc.MPGemmSpec(3, 64, 256, wbits=2, group_size=64)
    x, qw = random_case(spec, seed=5)
    y = lutc.build(spec)(x.numpy(), qw)
    assert isinstance(y, np.ndarray) and y.shape == (3, 64) and y.dtype == np.float32
    assert rel_error(y, reference(x, qw)) < tolerance(spec)


def test_compile_entry_point_and_sources():
    kernel = lutc.compile((1, 64, 256), wbits=4, group_size=32, zero_point=True, target="llvm",
                          table_dtype="float32")
    assert kernel.runnable and kernel.device == "cpu" and kernel.schedule == "cpu_generic"
    assert "define" in kernel.source            # LLVM IR
    assert 'T.sblock("partial")' in kernel.script
    x, qw = random_case(kernel.spec, seed=1)
    assert rel_error(kernel(x, qw), reference(x, qw)) < tolerance(kernel.spec)


def test_default_on_x86_is_dot_mac_with_vnni_else_the_simd_lut_kernel_with_int8_tables():
    host = lutc.target.resolve(None)
    vnni = "avx512_vnni" in lutc.target.device_name(host)
    half_rate = lutc.target.facts(host).half_rate_512     # Zen 4: the LUT kernel at W2 (x86.half_rate_lut)
    assert lutc.compile((1, 64, 256), wbits=2, group_size=64).schedule == ("dot_mac" if vnni and not half_rate else "x86")
    kernel = lutc.compile((1, 64, 256), wbits=2, group_size=64, schedule="x86", knobs={"quads": False})
    assert kernel.spec.table_dtype == "int8" and kernel.schedule == "x86"
    assert kernel.layout in ("ptiles32", "ptiles64")   # 2-bit planes paired
    assert "pshuf.b" in kernel.source
    x, qw = random_case(kernel.spec, seed=1)
    assert qw.layout == "bitplane"              # repacked (and cached) at the first call
    assert rel_error(kernel(x, qw), reference(x, qw)) < tolerance(kernel.spec)
    assert rel_error(kernel(x, kernel.pack(qw)), reference(x, qw)) < tolerance(kernel.spec)
    # g=2 has no SIMD LUT kernel: the VNNI multiply-add kernel where the CPU has one (g is a
    # table parameter it does not use), else float tables and the generic schedule
    spec = lutc.MPGemmSpec(1, 64, 256, g=2, table_dtype="int8")
    vnni = schedules.dot_mac.supports(spec, lutc.target.resolve(None))
    assert lutc.compile((1, 64, 256), g=2).schedule == ("dot_mac" if vnni else "cpu_generic")


@pytest.mark.parametrize("knobs", [{"n_block": 4, "unroll": 1}, {"n_block": 64, "unroll": 8}])
def test_schedule_knobs_keep_results(knobs):
    spec = lutc.MPGemmSpec(3, 130, 1024, wbits=2, group_size=128)
    x, qw = random_case(spec, seed=9)
    y = _run_poisoned(lutc.build(spec, knobs=knobs), x, qw)
    assert rel_error(y, reference(x, qw)) < tolerance(spec)
