"""x86 schedules: the SIMD LUT kernel with AVX2 or AVX-512BW byte shuffles.

``vpshufb`` looks up 32 (AVX2, ymm) or 64 (AVX-512BW, zmm) int8 table entries per instruction;
:mod:`schedules.simd_lut` holds the loop nest. The knob ``vector_bytes`` picks the register
width (and with it the weight layout ``tiles64`` or ``tiles128``); by default the widest the
target has. On the 2-core AVX-512 VM both widths reach about the same speed at M = 1 (the
kernel is bound by memory there), so the tuner decides per shape.

Lookups in quads (knob ``quads``, layout ``gtiles32``; CPUs with AVX-512 VBMI and VNNI): the
tables of four activation groups fill one 64-byte register, an index byte carries its group in
bits 4-5, so one ``vpermb`` does 64 rows' lookups across the four tables, and one ``vpdpbusd``
(times 1) sums each row's four looked-up bytes into its int32 lane: no int16 widening, and no
block limit from int16 sums. The default for one bit plane at M = 1 (:func:`default_quads`).
"""
from __future__ import annotations

from tvm import IRModule, s_tir
from .common import arch, half_rate_512, has_features
from .simd_lut import ORDER_ADDED, ORDER_KNOBS, QUAD_ROWS, lut_kernel, order_worth_tuning, task_shape

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
KNOBS = {"vector_bytes": (32, 64), "unroll": (1, 2, 4, 8, 16, 32), "paired": (True, False), **ORDER_KNOBS,
         "quads": (False, True)}
#: Knobs added after tuning logs were written, at the value their kernels had.
ADDED_KNOBS = {**ORDER_ADDED, "quads": False}
#: The weight layouts it reads (:mod:`lutc.layouts`, :func:`layout`): paired or not, per vector
#: width, and in quads.
LAYOUTS = (tuple(f"ptiles{v}" for v in KNOBS["vector_bytes"]) + tuple(f"tiles{2 * v}" for v in KNOBS["vector_bytes"])
           + ("gtiles32",))
SHUFFLE = {32: "llvm.x86.avx2.pshuf.b", 64: "llvm.x86.avx512.pshuf.b.512"}
PAIR_MADD = {32: "llvm.x86.avx2.pmadd.ub.sw", 64: "llvm.x86.avx512.pmaddubs.w.512"}
#: Lookups in quads (knob ``quads``): a 64-entry byte permute (VBMI) and a 4-way byte dot product (VNNI).
QUAD_PERMUTE, QUAD_DOT = "llvm.x86.avx512.permvar.qi.512", "llvm.x86.avx512.vpdpbusd.512"
QUAD_FEATURES = ("avx512vbmi", "avx512vnni")


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
    M = 16 (``front_doors_cpu_batches.md``): W2 797 us against 448.

    The exception: one bit plane (W1) at M = 1 where the CPU has VBMI and VNNI, looked up in
    quads (:func:`default_quads`). On the Emerald Rapids VM (weights rotating through 1 GiB, us,
    ``benchmarks/results/cpu_quads_emr_{2t,1t}.md``) against ``dot_mac``: 2 threads 46 / 117 /
    339 / 322 against 47 / 124 / 411 / 352 on 1024 x 4096, 4096 x 4096, 14336 x 4096, 4096 x 14336;
    1 thread 60 / 187 / 639 / 610 against 64 / 231 / 829 / 651 (1.02-1.30x). At W2 and W4
    ``dot_mac`` stays ahead (quads at 0.71-0.96x its speed), but not on Zen 4 (:func:`half_rate_lut`)."""
    return spec.M == 1 and (not has_features(target, "avx512vnni") or default_quads(spec, target)
                            or half_rate_lut(spec, target))


#: Fewest rows from which W4 takes the LUT kernel at half rate (:func:`half_rate_lut`): 1024 x 4096
#: lost (0.86x / 0.78x at 1 / 2 threads), 4096 rows and more won 1.02-1.23x.
HALF_RATE_W4_MIN_N = 4096


def half_rate_lut(spec, target) -> bool:
    """The LUT kernel at M = 1 for uniform W2 and ternary, and W4 from :data:`HALF_RATE_W4_MIN_N`
    rows, where 512-bit integer instructions run at half rate (Zen 4: ``dot_mac``'s ``vpdpbusd``
    per 4 codes costs more there than a shuffle); W2 and ternary in quads (:func:`default_quads`).
    On a 2-core Zen 4 EPYC VM, weights rotating through 1 GiB, in turns against ``dot_mac``
    (``benchmarks/results/cpu_zen4_lut_vs_dot_mac.md``): W2 1.14-1.31x at 1 thread and
    0.95-1.12x at 2 on Llama-2's and Llama-3-8B's six shapes (4096 x 4096: 203 against 267 us,
    146 against 163); W4 1.03-1.23x / 1.02-1.06x from 4096 rows; ternary in quads 1.14-1.44x /
    0.93-1.12x on Llama-3-8B's four (``cpu_zen4_batches_ternary_w3.md``). The tuner's runs there
    chose it at W2 on three of Llama-3-8B's four shapes (1.11-1.36x over ``dot_mac``). Not W3
    (``dot_mac`` 1.17-1.21x faster at 1 thread) and not from M = 2 (``dot_mac`` 1.1-2.9x faster
    at 2 threads: the LUT kernel builds a table per row of x)."""
    two_bit = spec.wbits == 2 and spec.format in ("uniform", "ternary")
    return ((two_bit or (spec.format == "uniform" and spec.wbits == 4 and spec.N >= HALF_RATE_W4_MIN_N))
            and half_rate_512(target))


def default_quads(spec, target) -> bool:
    """Lookups in quads by default: one bit plane (each 64-byte code load then serves 512 weights
    with two ``vpermb`` and two ``vpdpbusd``, where the 16-entry shuffles and their int16 widening
    took about twice the instructions: 73.7 against 150.4 us at 4096 x 4096 with the weights in
    cache, 2 threads), on a CPU with VBMI and VNNI. More planes cost a lookup each, and
    ``dot_mac``'s multiply-adds are cheaper there (but on Zen 4, W2 and ternary: :func:`half_rate_lut`)."""
    planes = 2 if half_rate_lut(spec, target) else 1    # W2 and ternary in quads too at half rate
    return spec.planes <= planes and spec.block % 16 == 0 and has_features(target, *QUAD_FEATURES)


def layout(spec, target, vector_bytes=None, paired=None, tiles=None, row_groups: int = 1, k_span: int = 0,
           quads=None, **_) -> str:
    """The weight layout the kernel reads: ``gtiles32`` in quads, ``ptiles{vector_bytes}`` when
    planes are paired, else ``tiles{2 * vector_bytes}``."""
    if _quads(spec, target, quads, vector_bytes, paired):
        task_shape(spec, QUAD_ROWS, tiles, row_groups, k_span)
        return "gtiles32"
    vl = _width(target, vector_bytes)
    pairs = _paired(spec, paired)
    task_shape(spec, vl if pairs else 2 * vl, tiles, row_groups, k_span)     # refuses what cannot build
    return f"ptiles{vl}" if pairs else f"tiles{2 * vl}"


def worth_tuning(spec, target, row_groups: int = 1, k_span: int = 0, **_) -> bool:
    """See :func:`schedules.simd_lut.order_worth_tuning`."""
    return order_worth_tuning(row_groups, k_span)


def schedule(func, spec, target, vector_bytes=None, unroll: int = 16, paired=None, tiles=None,
             row_groups: int = 1, k_span: int = 0, quads=None) -> s_tir.Schedule:
    """The SIMD LUT kernel for ``spec`` on ``target`` (``func`` is its reference semantics).

    ``paired`` (default: wherever it applies) combines planes two at a time with
    ``vpmaddubsw``; ``tiles``, ``row_groups`` and ``k_span`` shape each task and its K-block
    order (see :func:`schedules.simd_lut.lut_kernel`). ``quads`` looks up four groups' tables
    per ``vpermb`` and sums each row's four lookups with one ``vpdpbusd`` (module docstring;
    default: :func:`default_quads`, unless other knobs ask for shuffles).
    """
    if _quads(spec, target, quads, vector_bytes, paired):
        return s_tir.Schedule(IRModule({"main": lut_kernel(spec, 64, QUAD_PERMUTE, unroll, "", tiles, row_groups,
                                                           k_span, quad_dot=QUAD_DOT)}))
    vl = _width(target, vector_bytes)
    madd = PAIR_MADD[vl] if _paired(spec, paired) else ""
    return s_tir.Schedule(IRModule({"main": lut_kernel(spec, vl, SHUFFLE[vl], unroll, madd, tiles, row_groups,
                                                       k_span)}))


def _quads(spec, target, quads, vector_bytes, paired) -> bool:
    """Whether the kernel looks up in quads: as asked (refused with :func:`_check_quads`'s error
    where it cannot build), or by default where :func:`default_quads` says so and no shuffle-only
    knob (``vector_bytes=32``, ``paired=True``) is given."""
    if quads is None:
        return default_quads(spec, target) and vector_bytes in (None, 64) and not paired
    if quads:
        _check_quads(spec, target, vector_bytes, paired)
    return bool(quads)


def _check_quads(spec, target, vector_bytes, paired) -> None:
    """Refuse lookups in quads where they cannot build, naming why."""
    if not has_features(target, *QUAD_FEATURES):
        raise ValueError("knob quads=True needs AVX-512 VBMI and VNNI (vpermb, vpdpbusd)")
    if vector_bytes not in (None, 64) or paired:
        raise ValueError("knob quads=True uses 64-byte registers and one accumulator per plane "
                         "(not vector_bytes=32 or paired=True)")
    if spec.block % 16:
        raise ValueError(f"knob quads=True needs K blocks of a multiple of 16 activations, not {spec.block}")


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
