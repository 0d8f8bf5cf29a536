"""ARM schedules: the SIMD LUT kernel with NEON ``tbl`` (16 lookups per instruction).

Same loop nest as x86 (:mod:`schedules.simd_lut`) with 16-byte registers and
``llvm.aarch64.neon.tbl1``; weights in the ``tiles32`` layout. A 128-bit NEON register holds one
16-entry table, so no lane duplication is needed.
"""
from __future__ import annotations

from tvm import IRModule, s_tir

from .common import arch
from .simd_lut import lut_kernel

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("tiles32",)
KNOBS = {"unroll": (1, 2, 4, 8, 16, 32)}
SHUFFLE = "llvm.aarch64.neon.tbl1"


def supports(spec, target) -> bool:
    """g = 4, int8 tables, and an aarch64 target (cross, or this machine)."""
    return spec.g == 4 and spec.table_dtype == "int8" and arch(target) == "aarch64"


def layout(spec, target, **_) -> str:
    return "tiles32"


def schedule(func, spec, target, unroll: int = 16) -> s_tir.Schedule:
    """The NEON LUT kernel for ``spec`` (``func`` is its reference semantics)."""
    return s_tir.Schedule(IRModule({"main": lut_kernel(spec, 16, SHUFFLE, unroll)}))
