"""ARM schedules: the SIMD LUT kernel with NEON ``tbl`` (16 lookups per instruction).

Same loop nest as x86 (:mod:`schedules.simd_lut`) with 16-byte registers and
``llvm.aarch64.neon.tbl1``; weights in the ``tiles32`` layout. A 128-bit NEON register holds one
16-entry table, so no lane duplication is needed.
"""
from __future__ import annotations

from tvm import IRModule, s_tir

from . import simd_lut
from .common import arch
from .simd_lut import ORDER_ADDED, ORDER_KNOBS, lut_kernel, order_worth_tuning, task_shape

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("tiles32",)
KNOBS = {"unroll": (1, 2, 4, 8, 16, 32), **ORDER_KNOBS}
#: Knobs added after tuning logs were written, at the value their kernels had.
ADDED_KNOBS = ORDER_ADDED
SHUFFLE = "llvm.aarch64.neon.tbl1"
#: q registers of NEON's 32 that a task's int16 accumulators may hold (4 per plane and row tile).
ACC_REGISTERS = 16


def supports(spec, target) -> bool:
    """g = 4, int8 tables, and an aarch64 target (cross, or this machine)."""
    return spec.g == 4 and spec.table_dtype == "int8" and arch(target) == "aarch64"


def default_tiles(spec) -> int:
    """Row tiles per table load: as many (up to 4) as :data:`ACC_REGISTERS` hold (1 plane: 4, 2: 2).
    llvm-mca (LLVM 19, M = 1, 4096 x 4096), cycles per ``tbl`` for 1 / 2 / 4 tiles on Neoverse V2:
    W1 1.26 / 1.00 / 1.00, W2 and ternary 1.00 / 1.00 / 1.26 (4 tiles spill: 303 stack loads and
    stores per block), W4 1.39 / 1.64 / 1.89 (spills from 1 tile); N2 the same ratios. Not timed
    on ARM hardware; on x86 the tiles also paid in memory streams (:func:`simd_lut.default_tiles`)."""
    return simd_lut.default_tiles(spec, 32, most=max(1, ACC_REGISTERS // (4 * spec.planes)))


def layout(spec, target, tiles=None, row_groups: int = 1, k_span: int = 0, **_) -> str:
    # refuses what cannot build
    task_shape(spec, 32, default_tiles(spec) if tiles is None else tiles, row_groups, k_span)
    return "tiles32"


def worth_tuning(spec, target, row_groups: int = 1, k_span: int = 0, **_) -> bool:
    """See :func:`schedules.simd_lut.order_worth_tuning`."""
    return order_worth_tuning(row_groups, k_span)


def schedule(func, spec, target, unroll: int = 16, tiles=None, row_groups: int = 1,
             k_span: int = 0) -> s_tir.Schedule:
    """The NEON LUT kernel for ``spec`` (``func`` is its reference semantics; the knobs as x86's)."""
    tiles = default_tiles(spec) if tiles is None else tiles
    return s_tir.Schedule(IRModule({"main": lut_kernel(spec, 16, SHUFFLE, unroll, "", tiles, row_groups,
                                                       k_span)}))
