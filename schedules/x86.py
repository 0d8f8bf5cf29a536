"""x86 schedules: the SIMD LUT kernel with AVX2 or AVX-512BW byte shuffles.

``vpshufb`` looks up 32 (AVX2, ymm) or 64 (AVX-512BW, zmm) int8 table entries per instruction;
:mod:`schedules.simd_lut` holds the loop nest. The knob ``vector_bytes`` picks the register
width (and with it the weight layout ``tiles64`` or ``tiles128``); by default the widest the
target has. On the 2-core AVX-512 VM both widths reach about the same speed at M = 1 (the
kernel is bound by memory there), so the tuner decides per shape.
"""
from __future__ import annotations

from tvm import IRModule, s_tir
from .common import arch, has_features
from .simd_lut import ORDER_ADDED, ORDER_KNOBS, lut_kernel, order_worth_tuning, task_shape

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
KNOBS = {"vector_bytes": (32, 64), "unroll": (1, 2, 4, 8, 16, 32), "paired": (True, False), **ORDER_KNOBS}
#: Knobs added after tuning logs were written, at the value their kernels had.
ADDED_KNOBS = ORDER_ADDED
#: The weight layouts it reads (:mod:`lutc.layouts`, :func:`layout`): paired or not, per vector width.
LAYOUTS = tuple(f"ptiles{v}" for v in KNOBS["vector_bytes"]) + tuple(f"tiles{2 * v}" for v in KNOBS["vector_bytes"])
SHUFFLE = {32: "llvm.x86.avx2.pshuf.b", 64: "llvm.x86.avx512.pshuf.b.512"}
PAIR_MADD = {32: "llvm.x86.avx2.pmadd.ub.sw", 64: "llvm.x86.avx512.pmaddubs.w.512"}


def supports(spec, target) -> bool:
    """g = 4, int8 tables, and an x86 target with AVX2."""
    return (spec.g == 4 and spec.table_dtype == "int8" and arch(target) == "x86"
            and has_features(target, "avx2"))


def preferred(spec, target) -> bool:
    """M = 1 on CPUs without AVX-512 VNNI. Where ``dot_mac`` builds (VNNI), it is as fast or
    faster at M = 1 too, and from M = 2 much faster: it unpacks each weight vector once for 4
    rows of x, where this kernel builds a table per row and looks each weight up once per row.
    AMD EPYC (2 cores, AVX-512 VNNI/VBMI), weights rotating through 1 GiB, M = 1, us, 1 / 2
    threads (``benchmarks/results/cpu_epyc.md``), this kernel against ``dot_mac``: 4096 x 4096
    W2 234 / 142 against 223 / 142, W4 544 / 312 against 332 / 292, ternary 237 / 217 against
    228 / 182, W1 153 / 157 against 165 / 130; 4096 x 11008 W2 571 / 325 against 473 / 275.
    M = 16 (``front_doors_cpu_batches.md``): W2 797 us against 448."""
    return spec.M == 1 and not has_features(target, "avx512vnni")


def layout(spec, target, vector_bytes=None, paired=None, tiles=None, row_groups: int = 1, k_span: int = 0,
           **_) -> str:
    """The weight layout the kernel reads: ``ptiles{vector_bytes}`` when planes are paired,
    else ``tiles{2 * vector_bytes}``."""
    vl = _width(target, vector_bytes)
    pairs = _paired(spec, paired)
    task_shape(spec, vl if pairs else 2 * vl, tiles, row_groups, k_span)     # refuses what cannot build
    return f"ptiles{vl}" if pairs else f"tiles{2 * vl}"


def worth_tuning(spec, target, row_groups: int = 1, k_span: int = 0, **_) -> bool:
    """See :func:`schedules.simd_lut.order_worth_tuning`."""
    return order_worth_tuning(row_groups, k_span)


def schedule(func, spec, target, vector_bytes=None, unroll: int = 16, paired=None, tiles=None,
             row_groups: int = 1, k_span: int = 0) -> s_tir.Schedule:
    """The SIMD LUT kernel for ``spec`` on ``target`` (``func`` is its reference semantics).

    ``paired`` (default: wherever it applies) combines planes two at a time with
    ``vpmaddubsw``; ``tiles``, ``row_groups`` and ``k_span`` shape each task and its K-block
    order (see :func:`schedules.simd_lut.lut_kernel`).
    """
    vl = _width(target, vector_bytes)
    madd = PAIR_MADD[vl] if _paired(spec, paired) else ""
    return s_tir.Schedule(IRModule({"main": lut_kernel(spec, vl, SHUFFLE[vl], unroll, madd, tiles, row_groups,
                                                       k_span)}))


def _paired(spec, paired) -> bool:
    possible = spec.format in ("uniform", "ternary") and spec.planes % 2 == 0
    if paired and not possible:
        raise ValueError("paired planes need uniform 2/4-bit codes or ternary weights")
    return possible if paired is None else bool(paired)


def _width(target, vector_bytes) -> int:
    widest = 64 if has_features(target, "avx512bw") else 32
    if vector_bytes is None:
        return widest
    if vector_bytes not in SHUFFLE or vector_bytes > widest:
        raise ValueError(f"vector_bytes={vector_bytes} is not available on this target "
                         f"(widest: {widest})")
    return vector_bytes
