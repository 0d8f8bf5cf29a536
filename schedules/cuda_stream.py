"""CUDA decode-batch kernel (M <= 16): ``tc16`` weights streamed through a ``cp.async`` pipeline of
``stages`` shared-memory buffers, dequantized in registers into ``mma.sync`` (as ``cuda_mma``).

Why a second tensor-core kernel: at M <= 16 the product is bound by reading the weights, and
``cuda_mma`` keeps only the next chunk in flight, in registers. On the H200 at 28672 x 8192 it
took 55-60 us at M = 2..16 for W2 and W4 alike (27% of the copy floor): the time is DRAM
latency, paid once per chunk per warp, not bytes. Here every thread copies its part of step
``i + stages - 1`` (weights, their scales and zero points, and the block's rows of x) straight
from global into shared memory with ``cp.async`` while it multiplies step ``i``, so
``stages - 1`` steps of weights are in flight per warp without holding registers (the pipeline
of Marlin, written in TIR). ``cp.async`` groups are per thread: a step waits for its own group
(``cp.async.wait_group stages - 2``) and one barrier, which also frees the buffer of step
``i - 1`` for refilling.

Loops: a block has ``warps`` x ``wn`` warps. Warp ``(ks, wn)`` owns ``nw`` 16-row tiles of N
(``(blockIdx.x * wn + wn) * nw + t``) and the 128-weight K units ``ks, ks + warps, ...`` (step
``i`` is unit ``i * warps + ks``): split K inside the block, the ``warps`` slices summed at the
end in the ring's storage, free by then. The ring is dynamic shared memory (past 48 KB where
the knobs ask; :data:`SMEM_LIMIT`). Per step and stage a warp's part holds, per lane, its
``nw x b/2`` 16-byte weight vectors (the ``tc16`` order: the lane reads back exactly what it
copied), the 16 rows x groups of scales (and zero points) of its tiles, and, per K slice, M
rows of x (fp16, padded to 136 per row against bank conflicts). Multiplying a step: 4 times,
one ``ldmatrix`` of x per 8 rows (x's fragments of two k16 steps: ``tc16`` holds k in the
fragments' order, so x stays in its own), the fragments of two k16 steps of weights dequantized as
``cuda_mma`` does (:func:`schedules.cuda_ptx.deq`: ``(q - c) s``, one rounding; without zero
points :func:`~schedules.cuda_ptx.deq_c`, which folds ``- c`` into the magic-number FMA: at
M <= 8 the kernel is bound by these instructions, W2 and W4 took the same time), then the mma.
For M up to ``swap_upto`` tokens (knob: 8, or 16, the default from M = 9) the product is
computed transposed, ``y^T = W x^T``: the 16 x 16 weight fragment is the A operand (its registers
are exactly the two 8-row B fragments of ``cuda_mma``) and x^T the B operand, 8 tokens per
fragment, so one ``m16n8k16`` per 8 tokens covers 16 rows of N (``2 x nw`` per k16 pair at
M <= 8) where padding M to 16 took two (``2 x nw x 2``); past ``swap_upto``, x is A (rows 8..15
loaded). Transposed, the fp32 sums hold rows of N, which is what the late scale needs: at M = 16
on 28672 x 8192 W2 (H200, 4 warps x 2, 2 tiles, 3 stages) 48.2 us against 60.1 with x as A
(``benchmarks/results/cuda_stream_batches_h200.md``).

Limits (``supports``): CUDA sm_80+, fp16 or bf16 activations, the formats ``tc16`` holds (uniform
W1-W4, ternary: :func:`~schedules.cuda_ptx.reads_tc16`), K % 128 == 0, M <= 16. Results equal
``cuda_mma``'s up to the order of the fp32 sums; with the late scale (the default of the
transposed product without zero points, :func:`stream_kernel`) the scale multiplies fp32 sums
instead of fp16 weights: one rounding less.
"""
from __future__ import annotations

from typing import Optional

from tvm import IRModule, s_tir
from tvm.script import tirx as T

from lutc.dtypes import nbytes
from lutc.layouts import tc16_code_bits, tc16_vectors

from .common import SMS, cuda_arch, drop_param, merge_knobs, weight_buffers
from .cuda_lut import PASS_CONFIG  # noqa: F401  (TVM cannot see reads made by inline PTX)
from .cuda_ptx import (cp16, cp_commit, cp_wait, groups_per_unit, lds128, lds_scale_f32, lds_scale_h2, ldsm_x4, mma,
                       reads_tc16, syncwarp, tc16_fragment, tc16_raw_fragment, tc16_raw_offset)

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("tc16",)
KNOBS = {"warps": (1, 2, 4, 8), "wn": (1, 2, 4, 8), "nw": (1, 2, 4), "stages": (2, 3, 4, 6, 8), "late_scale": (0, 1),
         "warp_sync": (0, 1), "swap_upto": (8, 16), "raw_codes": (0, 1)}
#: Knobs added after tuning logs were written, at the value their kernels had (``late_scale``: the
#: scales multiplied the dequantized fp16 weights; ``warp_sync``: a block barrier per step;
#: ``swap_upto``: the product transposed at M <= 8 only; ``raw_codes``: every pair dequantized).
ADDED_KNOBS = {"late_scale": 0, "warp_sync": 0, "swap_upto": 8, "raw_codes": 0}
MAX_M = 16
#: Shared memory of one block (all of it dynamic: the ring, reused for the split-K sum): the
#: opt-in limit of sm_86/sm_89 (99 KB), the smallest of the GPUs this kernel supports (sm_80
#: allows 163 KB, sm_90 227 KB). TVM's CUDA runtime and ``lutc export``'s launcher raise the
#: kernel's dynamic limit past the default 48 KB.
SMEM_LIMIT = 99 * 1024
#: fp16 elements per padded row of x in shared memory (128 + 8: rows start 16 bytes apart mod 128)
X_ROW = 136
#: K from which a wide M = 1 decode splits K in 8 slices per block (:func:`default_knobs`): each
#: warp still walks 8 units or more.
LONG_K = 8192


def supports(spec, target) -> bool:
    arch = cuda_arch(target)
    return (arch.startswith("sm_") and int(arch[3:5]) >= 80 and spec.act_dtype in ("float16", "bfloat16")
            and reads_tc16(spec) and spec.M <= MAX_M)


def preferred(spec, target) -> bool:
    """M = 2..8, and M = 1 for all but W1 (H200, ``benchmarks/results/cuda_late_scale_h200.md``,
    ``cuda_stream_h200.md``, ``cuda_w1_w3_ternary_h200.md``).

    At M = 1, W2 and ternary are this kernel's since its late scale (28672 x 8192: W2 29.9 us
    against the LUT kernel's 30.0, ternary 30.0 against 32.4; 8192 x 28672: 33.2 against 39.5,
    32.9 against 40.6; 4096 x 4096: 6.0 against 6.6, 5.7 against 6.6): a W2 or ternary
    ``LUTLinear`` on a GPU then holds one ``tc16`` copy, not two. So are W4 (43.6 against 54.6
    us; 44.6 against 63.5 at 8192 x 28672) and W3, though it reads a 4-bit slot where the LUT
    kernel reads 3 bits (41.0 against 44.5 us; 41.2 against 52.6 at 8192 x 28672; 6.2 against
    7.6 at 4096 x 4096): the LUT kernel's lookups per bit plane cost more than the extra bit. W1
    stays with the LUT kernel (23.5 / 31.9 / 5.6 us against 29.3 / 33.1 / 5.9 with the late
    scale: it reads 1 bit per weight, this one a 2-bit slot), and so do W2 with zero points (no
    late scale there: 33.5 against the LUT kernel's 30.0 us without it). From M = 9 the
    A operand is x again (no transposed product): on Hopper ``cuda_wgmma`` with split-K was faster
    on every shape measured (``cuda_small_m_h200.md``), elsewhere it is ``cuda_mma``'s. On Hopper
    ``cuda_wgmma`` also ranks first from M = 2 (4-bit slots) or 4 (2-bit slots) on weights wide
    enough for its tile alone (:func:`schedules.cuda_wgmma.preferred`)."""
    return 2 <= spec.M <= 8 or (spec.M == 1 and not (spec.format == "uniform" and spec.wbits == 1)
                                and (tc16_code_bits(spec) == 4 or can_scale_late(spec)))


def layout(spec, target, **knobs) -> str:
    if knobs:
        resolve_knobs(spec, **knobs)    # refuses impossible combinations
    return "tc16"


def default_knobs(spec) -> dict:
    """Untuned choice, from the H200 sweeps of ``benchmarks/bench_cuda.py --sweep cuda_stream``
    (``benchmarks/results/sweep_cuda_stream_h200*.json``) on 4096 x 4096, 28672 x 8192 and
    8192 x 28672: 4 warps splitting K with 4 stages; 2 row tiles each at M = 2..4 (M = 1 takes
    8 warps, below); for M = 5..8 (x fills more of each stage) 2 warps side by
    side, with 2 tiles each and 3 stages past N = 4096 (28672 x 8192 M = 8: 43.1 us W2, 47.6 W4,
    against 46.1 and 52.3 with 1 tile; 8192 x 28672 with the late scale: 38.7 and 41.7 against
    42.6 and 46.1, ``cuda_late_scale_h200.md``) and 1 tile, 4 stages up to it (4096 x 4096: 7.3
    against 9.1 us); past N = 16384 K split in 2 with 4 stages (28672 x 8192 M = 8: 35.0 / 44.4
    us W2 / W4 against 35.5 / 46.5, same run); 2 x 2 tiles and 3 stages beyond. Where a choice
    does not fit in shared memory, stages, then warps, then tiles step down
    (:func:`resolve_knobs`).

    At M = 1, K is split in 8 slices per block (8 warps, 4 stages), each warp with 2 row tiles
    where that still gives a block per SM (N / 32 >= :data:`SMS`), else 1: the 4-warp blocks left
    an SM 12.6 warps of the 24 its registers allow, stalled on fixed-latency dependencies (the
    docstring of :func:`stream_kernel`), and twice the warps per block doubles them. On the H200,
    in turns against the tuned 4-warp kernels (``benchmarks/results/cuda_stream_warps8_h200.log``):
    28672 x 8192 W2 26.1 against 28.2 us, W4 33.7 against 36.5; 8192 x 28672 W2 26.0 against
    30.4, W4 33.3 against 34.7. That was the default from K = :data:`LONG_K` on; the tuner's runs
    on Qwen2.5-7B's and Llama-3-8B's shapes (``benchmarks/results/tuning_h200_qwen25_7b_llama3_8b.md``)
    chose 8 warps in all 14 M = 1 workloads and timed these knobs faster than the 4-warp defaults
    of shorter K and narrow weights in all 12 where they were timed (0.71-0.98x: 1024 x 4096 W2 / W4
    2.7 / 3.3 us against 3.4 / 4.5, 3584 x 18944 12.6 / 13.9 against 13.4 / 16.0, 18944 x 3584 11.1 /
    13.7 against 12.0 / 15.5, 3584 x 3584 4.5 / 5.0 against 4.6 / 5.3). (Those 4-warp defaults: a row
    tile per warp on a narrow weight, 8 deep, ``cuda_stream_narrow_h200.log``, and 4-bit slots 6 deep.)
    With 2-bit slots it is the default up to M = 8 too, with 4 row
    tiles per warp and 2 stages, which keep a block's ring (x grows with M) small enough for 4
    blocks per SM (H200, in turns, ``benchmarks/results/cuda_stream_batches_h200.md``): W2 on
    28672 x 8192 at M = 2 / 4 / 8 27.1 / 27.5 / 38.0 us against the 4-warp default's 30.2 / 34.1 /
    52.0 (``cuda_wgmma`` 33.3 / 32.1 / 32.2; since the raw codes this kernel leads to M = 8 there,
    :func:`schedules.cuda_wgmma.wide_min_m`), on
    8192 x 28672 26.1 / 27.1 / 31.2 against 30.5 / 33.6 / 45.5. 4-bit slots keep the 4-warp
    defaults from M = 2 (W4 on 28672 x 8192 at M = 2: 43.4 against 38.4).

    The 8-slice kernels of 2-bit slots read their codes raw (``raw_codes``, :func:`stream_kernel`):
    in turns on the H200 W2 took 0.96-1.00x the time at M = 1..8 on 28672 x 8192 and 8192 x 28672
    (28672 x 8192 at M = 1: 25.1 against 26.2 us; 8192 x 28672 at M = 4: 25.9 against 27.1), while
    W4, and the 4-warp kernels of 4096 x 4096, took 1.00-1.16x
    (``benchmarks/results/cuda_stream_raw_codes_w8_h200.log``).

    Each warp waits on its own copies (``warp_sync``) up to M = 4, and past it where a K slice has
    one warp (``wn=1``): on the H200, the defaults at M = 1 and 4 on 28672 x 8192, 8192 x 28672 and
    4096 x 4096 took 0.95-1.01x the time with the block barrier, in turns (8192 x 28672 M = 4:
    33.9 / 39.2 us W2 / W4 against 35.8 / 41.4; ``benchmarks/results/cuda_stream_warp_sync_h200.log``).
    With ``wn=2`` each warp copies x's rows again, and from M = 5 that costs more than the barrier:
    in turns at M = 5 and 8, W2 / W4, the defaults without it took 0.73-0.90x the time with it on
    4096 x 4096, 4096 x 11008 and 11008 x 4096 (4096 x 4096 at M = 8: 6.1 / 6.7 us against 8.2 /
    9.2; ``benchmarks/results/cuda_stream_warp_sync_m5_m8_h200.log``)."""
    tiles = default_tiles(spec)
    swap_upto = 8 if spec.M <= 8 else 16
    late = can_scale_late(spec, swap_upto)
    return {**tiles, "late_scale": int(late), "swap_upto": swap_upto,
            "warp_sync": int(spec.M <= 4 or tiles["wn"] == 1),
            "raw_codes": int(late and eight_slices(spec) and tc16_code_bits(spec) == 2)}


def default_changed(spec) -> Optional[str]:
    """When :func:`default_knobs` last changed for ``spec``'s shapes (``schedules.contract``):
    at M = 1 on 2026-12-02 (8 warps at every K, commit 2e18416). Move it with the rule."""
    return "2026-12-02T11:34:31" if spec.M == 1 else None


def default_tiles(spec) -> dict:
    """The default block shape and pipeline: ``warps``, ``wn``, ``nw``, ``stages``
    (:func:`default_knobs`)."""
    if spec.M == 1:     # K in 8 slices per block; 2 row tiles per warp where that gives a block per SM
        return {"warps": 8, "wn": 1, "nw": 2 if -(-spec.N // 32) >= SMS else 1, "stages": 4}
    if eight_slices(spec):                     # ... with 4 row tiles per warp, 2 stages (M <= 8)
        return {"warps": 8, "wn": 1, "nw": 4, "stages": 2}
    if spec.M <= 4:
        return {"warps": 4, "wn": 1, "nw": 2, "stages": 4}
    if spec.M <= 8:     # wide N: 2 tiles per warp (very wide: K split in 2, 4 stages); narrow N: 1
        if spec.N > 16384:
            return {"warps": 2, "wn": 2, "nw": 2, "stages": 4}
        wide = spec.N > 4096
        return {"warps": 4, "wn": 2, "nw": 2 if wide else 1, "stages": 3 if wide else 4}
    return {"warps": 4, "wn": 2, "nw": 2, "stages": 3}


def eight_slices(spec) -> bool:
    """Whether the default splits a long K (:data:`LONG_K`) in 8 slices per block (8 warps) on a
    weight with a 2-tile block per SM, reading 2-bit slots raw: at M = 1 (where every K is split in
    8), and at M = 2..8 for 2-bit slots (W1, W2, ternary), whose cheaper dequantization leaves the
    product bound by the chains in flight longest (:func:`default_knobs`)."""
    long_wide = spec.K >= LONG_K and -(-spec.N // 32) >= SMS
    return long_wide and (spec.M == 1 or (spec.M <= 8 and tc16_code_bits(spec) == 2))


def can_scale_late(spec, swap_upto: int = MAX_M) -> bool:
    """Whether the ``late_scale`` knob can be 1: the transposed product (M <= ``swap_upto``), whose
    fp32 sums of a tile hold one row of N per register pair, and the format's constant zero (a
    zero point would have to leave the dequantization too)."""
    return spec.M <= swap_upto and not spec.zero_point


def worth_tuning(spec, target, swap_upto=None, **knobs) -> bool:
    """At M <= 8 both ``swap_upto`` values build the same kernel: the tuner times one."""
    return spec.M > 8 or swap_upto != 16


def resolve_knobs(spec, **given) -> dict:
    """The knobs a kernel is built with: ``given`` (None = default) over :func:`default_knobs`.
    Raises ValueError for a value outside ``KNOBS`` or more shared memory than a block has."""
    knobs = merge_knobs("cuda_stream", KNOBS, default_knobs(spec), given)
    if given.get("late_scale") is None:     # the default follows the product's form
        knobs["late_scale"] = int(can_scale_late(spec, knobs["swap_upto"]))
    if given.get("raw_codes") is None:      # ... and raw codes the late scale
        knobs["raw_codes"] = knobs["raw_codes"] and knobs["late_scale"]
    if knobs["late_scale"] and not can_scale_late(spec, knobs["swap_upto"]):
        raise ValueError("cuda_stream knob late_scale=1 needs the transposed product (M <= swap_upto) and no "
                         f"zero points (M = {spec.M}, swap_upto = {knobs['swap_upto']}, "
                         f"zero_point = {spec.zero_point})")
    if knobs["raw_codes"] and not knobs["late_scale"]:
        raise ValueError("cuda_stream knob raw_codes=1 needs late_scale=1 (the raw pairs' offsets come off the "
                         "unscaled sums of a scale group)")
    for name in ("stages", "warps", "nw"):    # a default that does not fit beside the knobs given
        while given.get(name) is None and smem_bytes(spec, **knobs) > SMEM_LIMIT and knobs[name] > min(KNOBS[name]):
            knobs[name] = max(v for v in KNOBS[name] if v < knobs[name])
    used = smem_bytes(spec, **knobs)
    if used > SMEM_LIMIT:
        raise ValueError(f"cuda_stream knobs {knobs} need {used} bytes of shared memory "
                         f"(limit {SMEM_LIMIT}): lower stages, nw or wn")
    return knobs


def stage_bytes(spec, warps: int, wn: int, nw: int, warp_sync: int = 0) -> dict:
    """Bytes of one pipeline stage, by part (weights, scales, zero points, x: M rows per K slice,
    or per warp with ``warp_sync``)."""
    per_warp_tile = 16 * groups_per_unit(spec) * scale_size(spec)
    coef = warps * wn * nw * per_warp_tile
    return {"w": warps * wn * nw * tc16_vectors(spec) * 512, "s": coef,
            "z": coef if spec.zero_point else 0, "x": x_slices(warps, wn, warp_sync) * spec.M * X_ROW * 2}


def x_slices(warps: int, wn: int, warp_sync: int) -> int:
    """Copies of x's M rows in a stage: one per K slice, shared by the slice's ``wn`` warps, or one
    per warp with ``warp_sync`` (each warp then reads only what its own lanes copied)."""
    return warps * wn if warp_sync else warps


def smem_bytes(spec, warps: int, wn: int, nw: int, stages: int, late_scale: int = 0, warp_sync: int = 0,
               swap_upto: int = 8, raw_codes: int = 0) -> int:
    """Dynamic shared memory of one block: the ring, whose storage the split-K sum reuses
    (``late_scale``, ``swap_upto`` and ``raw_codes`` change none of it)."""
    ring = stages * sum(stage_bytes(spec, warps, wn, nw, warp_sync).values())
    red = warps * wn * 16 * nw * 16 * 4 if warps > 1 else 0
    return max(ring, red)


def scale_size(spec) -> int:
    """Bytes of one stored scale or zero point (what the ``cp.async`` copies of coefficients count)."""
    return nbytes(spec.scale_dtype)


def schedule(func, spec, target, warps=None, wn=None, nw=None, stages=None, late_scale=None,
             warp_sync=None, swap_upto=None, raw_codes=None) -> s_tir.Schedule:
    """The streamed dequantize + mma kernel for ``spec`` (``func`` is its reference semantics)."""
    knobs = resolve_knobs(spec, warps=warps, wn=wn, nw=nw, stages=stages, late_scale=late_scale, warp_sync=warp_sync,
                          swap_upto=swap_upto, raw_codes=raw_codes)
    return s_tir.Schedule(IRModule({"main": stream_kernel(spec, **knobs)}))


def stream_kernel(spec, warps: int, wn: int, nw: int, stages: int, late_scale: int = 0, warp_sync: int = 0,
                  swap_upto: int = 8, raw_codes: int = 0):
    """The PrimFunc (module docstring). Arguments: ``x [M, K]`` fp16 or bf16, ``planes`` (``tc16``),
    ``scales [N/16, G, 16]``, ``zeros`` (zero points only), ``out [M, N]``.

    ``late_scale``: the weights are dequantized to ``q - c`` (exact, :func:`~schedules.cuda_ptx.deq_c`
    without its multiply: two instructions per pair instead of three) and multiplied into a
    tile's fp32 sums of the scale group, which are then scaled into the tile's accumulators,
    4 FMAs per tile and group per lane; one rounding less than scaling the fp16 weights.

    ``warp_sync``: each warp copies its own rows of x too, so every byte of a stage is written and
    read by one warp, and a step waits on ``__syncwarp`` instead of the block's barrier: a warp
    whose copies have landed need not wait for the block's slowest.

    ``raw_codes`` (with the late scale): each pair is one ``LOP3``, the codes under a magic number
    whose exponent makes the code's lowest bit worth 1, ``2^(P-e) + q``
    (:func:`~schedules.cuda_ptx.raw_tc16`), and no ``HFMA2``; a fragment of the pairs' offsets
    ``2^(P-e) + c`` (the same in every row and tile) times x, one more mma per k16 step and 8
    tokens, is taken off each group's sums before they are scaled. 64 fewer ``HFMA2`` and 8 more mma
    per step of 2 tiles (PTX; ``tests/test_targets.py``). The fp32 sums then carry the offsets'
    products (up to ``2^(P-1)`` times x) and lose up to 9 of their 24 bits to the subtraction, far
    below the fp16 output's rounding.

    Why it pays only with 8 warps: with 4 warps it measured the same time (29.4 against 29.3 us,
    28672 x 8192 W2 at M = 1; ``benchmarks/results/cuda_raw_codes_stream_h200.log``), when Nsight
    Compute showed the decode bound by latency: the tuned 4-warp W2 kernel (4 tiles, 2 stages: 448
    blocks, 76 registers) kept 12.6 warps per SM of the 24 its registers allow, waiting 5.4 cycles
    per instruction issued: 1.65 on fixed-latency dependencies (the ``LOP3`` -> ``HFMA2`` -> mma
    chains), 0.60 on a busy math pipe, 0.41 dispatch, 0.37 on global memory, 0.29 at the barrier,
    0.16 on shared memory (``ncu_stream_w2_m1_stalls.txt``, the profiler's 1.35 GHz). The 8-warp
    default (``warps=8``, 58 registers) holds 4 blocks, 32 warps per SM (registers and shared memory
    both allow 4) and issues 0.69 instructions per cycle per scheduler at the profiler's 1.33 GHz,
    62% of the SM's throughput, DRAM 40% busy (``ncu_stream_w2_m1_warps8.txt``): at 1.98 GHz its
    14.8 million warp instructions alone take 14 us of its 26, so there the instructions cut count
    (25.1 against 26.2 us; :func:`default_knobs`). A kernel for 75% of the copy floor (20 us) needs
    fewer still."""
    M, N, K = spec.M, spec.N, spec.K
    S, WN, NW, P = warps, wn, nw, stages
    NT, KU, gs = -(-N // 16), K // 128, spec.group
    J4 = tc16_vectors(spec)                   # 16-byte weight vectors per lane per tile and unit
    threads = 32 * S * WN
    steps = -(-KU // S)
    nbx = -(-NT // (WN * NW))
    zp, sdt, ssz = spec.zero_point, spec.scale_dtype, scale_size(spec)
    adt = spec.act_dtype                      # x, the dequantized weights and out
    NG = groups_per_unit(spec)
    SPG = 8 // NG                             # k16 steps per scale group (a unit has 8)
    LATE = bool(late_scale)
    RAW = bool(raw_codes)                     # pairs read raw, their offsets' products off each group's sums
    CP_TILE = 16 * NG * ssz // 16             # 16-byte copies of one tile's coefficients per unit
    EL16 = 16 // ssz                          # coefficients per 16-byte copy
    CPL = -(-NW * CP_TILE // 32)               # such copies per lane
    part = stage_bytes(spec, S, WN, NW, warp_sync)
    WS = bool(warp_sync)
    STAGE = sum(part.values())
    OFF_S, OFF_Z, OFF_X = part["w"], part["w"] + part["s"], part["w"] + part["s"] + part["z"]
    XC = S * M * 16                           # 16-byte copies of x per stage (block barrier)
    xpt = -(-XC // threads)
    XW = M * 16                               # ... of a warp's own rows (warp_sync)
    HI = M > 8                                # x's rows 8..15 hold data
    SWAP = M <= swap_upto                     # y^T = W x^T: one m16n8k16 per 16 x 16 weights and 8 tokens
    TB = -(-M // 8) if SWAP else 2            # mma per tile and k16 step: 8-token B fragments, or 8-row ones
    PLANES, COEF, ZEROS = weight_buffers(spec, "tc16")   # lutc.layouts' shapes of tc16
    RED = S * WN * 16 * NW * 16 if S > 1 else 0   # fp32 partial sums of the K slices, in the ring
    WORDS = max(P * STAGE, 4 * RED) // 4
    outs = WN * 16 * NW * 16
    opt = -(-outs // threads)

    @T.macro
    def copy_step(j, tx, bx, x, planes, scales, zeros, base):
        """Start this thread's ``cp.async`` copies of step ``j`` into stage ``j % P``: its warp's
        weight vectors and coefficients of the unit ``j S + ks``, and its share of x's rows."""
        warp = T.meta_var(tx // 32)
        lane = T.meta_var(tx % 32)
        ks = T.meta_var(warp % S)                      # this warp's K slice
        tile0 = T.meta_var((bx * WN + warp // S) * NW)  # this warp's first N tile
        if j * S + ks < KU:
            for t in T.unroll(NW):
                if tile0 + t < NT:
                    for j4 in T.unroll(J4):
                        T.evaluate(cp16(
                            base[0] + T.Cast("uint32", (j % P) * STAGE
                                             + (((warp * NW + t) * J4 + j4) * 32 + lane) * 16),
                            T.address_of(planes[tile0 + t, j * S + ks, j4, lane, 0])))
            for e in T.unroll(CPL):
                copy = T.meta_var(lane + e * 32)       # (tile, 16-byte chunk) of coefficients
                group = T.meta_var(((j * S + ks) * 128) // gs + ((copy % CP_TILE) * EL16) // 16)
                row = T.meta_var(((copy % CP_TILE) * EL16) % 16)
                if copy < NW * CP_TILE:
                    if tile0 + copy // CP_TILE < NT:
                        T.evaluate(cp16(
                            base[0] + T.Cast("uint32", (j % P) * STAGE + OFF_S + (warp * NW * CP_TILE + lane + e * 32) * 16),
                            T.address_of(scales[tile0 + copy // CP_TILE, group, row])))
                        if zp:
                            T.evaluate(cp16(
                                base[0] + T.Cast("uint32", (j % P) * STAGE + OFF_Z + (warp * NW * CP_TILE + lane + e * 32) * 16),
                                T.address_of(zeros[tile0 + copy // CP_TILE, group, row])))
        # x: each warp its own M rows of its K slice (warp_sync), or the block's threads all the
        # K slices' rows, one copy per slice
        for e in T.unroll(-(-XW // 32) if WS else xpt):
            vec = T.meta_var(lane + e * 32 if WS else tx + e * threads)   # 8 values of x: (slice,) row, column
            part = T.meta_var(warp if WS else vec // (M * 16))           # whose rows: a warp's or a slice's
            kslice = T.meta_var(ks if WS else vec // (M * 16))
            if vec < (XW if WS else XC):
                if j * S + kslice < KU:
                    T.evaluate(cp16(
                        base[0] + T.Cast("uint32", (j % P) * STAGE + OFF_X
                                         + ((part * M + (vec // 16) % M) * X_ROW + (vec % 16) * 8) * 2),
                        T.address_of(x[(vec // 16) % M, (j * S + kslice) * 128 + (vec % 16) * 8])))

    @T.macro
    def multiply_step(i, tx, bx, base, wreg, sreg, zreg, areg, bfrag, acc, gacc, xacc):
        """Step ``i`` from stage ``i % P``: the warp's weight vectors and coefficients into
        registers, then per pair of k16 steps the weight fragments, x's, and the mma (with a
        late scale: into the group's sums ``gacc``, scaled into ``acc`` where a group ends)."""
        warp = T.meta_var(tx // 32)
        lane = T.meta_var(tx % 32)
        ks = T.meta_var(warp % S)
        tile0 = T.meta_var((bx * WN + warp // S) * NW)
        g4 = T.meta_var(lane // 4)                     # fragment row (and row + 8)
        at = T.meta_var((i % P) * STAGE)               # the stage's byte offset in the ring
        if i * S + ks < KU:
            for t in T.unroll(NW):
                if tile0 + t < NT:
                    for j4 in T.unroll(J4):
                        T.evaluate(lds128(base[0] + T.Cast("uint32", at + (((warp * NW + t) * J4 + j4) * 32 + lane) * 16),
                                          T.address_of(wreg[t, j4, 0])))
                    for t8 in T.unroll(2):
                        for ng in T.unroll(NG):
                            # coefficient of row t8 * 8 + g4 in the unit's group ng
                            coef = T.meta_var((((warp * NW + t) * NG + ng) * 16 + t8 * 8 + g4) * ssz)
                            if LATE:
                                sreg[t, t8, ng] = T.reinterpret("uint32", lds_scale_f32(
                                    base[0] + T.Cast("uint32", at + OFF_S + coef), sdt))
                            else:
                                sreg[t, t8, ng] = lds_scale_h2(base[0] + T.Cast("uint32", at + OFF_S + coef), sdt, adt)
                            if zp:
                                zreg[t, t8, ng] = lds_scale_h2(base[0] + T.Cast("uint32", at + OFF_Z + coef), sdt, adt)
            for s2 in T.unroll(4):
                for sp in T.unroll(2):
                    for t in T.unroll(NW):
                        for t8 in T.unroll(2):
                            for h in T.unroll(2):
                                if RAW:
                                    bfrag[sp, t, t8, h] = tc16_raw_fragment(spec, wreg, (), t, s2 * 2 + sp, t8, h)
                                else:
                                    bfrag[sp, t, t8, h] = tc16_fragment(spec, wreg, None if LATE else sreg, zreg, (),
                                                                        t, s2 * 2 + sp, t8, h)
                for r in T.unroll(2 if HI else 1):
                    # x rows r 8 .. r 8 + 7 (the last row again past M: its products
                    # are never stored), k 32 s2 + 8 m as matrix m
                    T.evaluate(ldsm_x4(
                        base[0] + T.Cast("uint32", at + OFF_X
                                         + (((warp if WS else ks) * M + T.min(r * 8 + lane % 8, M - 1)) * X_ROW
                                            + s2 * 32 + (lane // 8) * 8) * 2),
                        T.address_of(areg[r, 0])))
                for sp in T.unroll(2):
                    if RAW:    # the raw pairs' offsets times x: one mma for every tile
                        for r in T.unroll(TB):
                            T.evaluate(mma(
                                T.address_of(xacc[r, 0]),
                                tc16_raw_offset(spec, s2 * 2 + sp, 0, 0), tc16_raw_offset(spec, s2 * 2 + sp, 1, 0),
                                tc16_raw_offset(spec, s2 * 2 + sp, 0, 1), tc16_raw_offset(spec, s2 * 2 + sp, 1, 1),
                                areg[r, sp * 2], areg[r, sp * 2 + 1], adt))
                    for t in T.unroll(NW):
                        if tile0 + t < NT:
                            if SWAP:   # W tile as A (16 rows of N), x^T as B (tokens 8 r .. 8 r + 7)
                                for r in T.unroll(TB):
                                    T.evaluate(mma(
                                        T.address_of(gacc[t, r, 0] if LATE else acc[t, r, 0]),
                                        bfrag[sp, t, 0, 0], bfrag[sp, t, 1, 0], bfrag[sp, t, 0, 1], bfrag[sp, t, 1, 1],
                                        areg[r, sp * 2], areg[r, sp * 2 + 1], adt))
                                    if LATE and (s2 * 2 + sp + 1) % SPG == 0:
                                        # the group's last step: its sums, rows g4 (q < 2) and g4 + 8, scaled
                                        for q in T.unroll(4):
                                            acc[t, r, q] = acc[t, r, q] + (
                                                gacc[t, r, q] - xacc[r, q] if RAW else gacc[t, r, q]) * T.reinterpret(
                                                "float32", sreg[t, q // 2, (s2 * 2 + sp) // SPG])
                                            gacc[t, r, q] = T.float32(0)
                            else:
                                for t8 in T.unroll(2):
                                    T.evaluate(mma(
                                        T.address_of(acc[t, t8, 0]),
                                        areg[0, sp * 2], areg[1, sp * 2] if HI else T.uint32(0),
                                        areg[0, sp * 2 + 1], areg[1, sp * 2 + 1] if HI else T.uint32(0),
                                        bfrag[sp, t, t8, 0], bfrag[sp, t, t8, 1], adt))
                    if RAW and (s2 * 2 + sp + 1) % SPG == 0:   # every tile has taken the group's offsets
                        for r in T.unroll(TB):
                            for q in T.unroll(4):
                                xacc[r, q] = T.float32(0)

    @T.macro
    def store(tx, bx, acc, ring, tot, out):
        """Epilogue (the K slices' sums meet in the ring, free by then)."""
        warp = T.meta_var(tx // 32)
        lane = T.meta_var(tx % 32)
        ks = T.meta_var(warp % S)
        tile0 = T.meta_var((bx * WN + warp // S) * NW)
        g4 = T.meta_var(lane // 4)
        c4 = T.meta_var(lane % 4)
        # epilogue. Lane holds, of each 16 x 8 tile of C: rows g4, g4 + 8, columns 2 c4, 2 c4 + 1;
        # rows are M and columns N, or (SWAP) rows are N and columns M (tile t8: tokens 8 t8 ..).
        if S == 1:
            for t in T.unroll(NW):
                for t8 in T.unroll(TB):
                    for q in T.unroll(4 if HI or SWAP else 2):
                        if SWAP:   # register q: token 8 t8 + 2 c4 + q % 2, weight row g4 + 8 (q // 2)
                            token = T.meta_var(t8 * 8 + c4 * 2 + q % 2)
                            n = T.meta_var((tile0 + t) * 16 + (q // 2) * 8 + g4)
                            if token < M and n < N:
                                out[token, n] = T.Cast(adt, acc[t, t8, q])
                        else:      # register q: token g4 + 8 (q // 2), weight row t8 8 + 2 c4 + q % 2
                            token = T.meta_var(g4 + (q // 2) * 8)
                            n = T.meta_var((tile0 + t) * 16 + t8 * 8 + c4 * 2 + q % 2)
                            if token < M and n < N:
                                out[token, n] = T.Cast(adt, acc[t, t8, q])
        else:
            T.tvm_storage_sync("shared")           # every warp is done with the stages
            for t in T.unroll(NW):
                for t8 in T.unroll(TB):
                    for q in T.unroll(4):
                        if SWAP:
                            ring[((ks * WN + warp // S) * 16 + t8 * 8 + c4 * 2 + q % 2) * NW * 16
                                 + t * 16 + (q // 2) * 8 + g4] = T.reinterpret("uint32", acc[t, t8, q])
                        else:
                            ring[((ks * WN + warp // S) * 16 + g4 + (q // 2) * 8) * NW * 16
                                 + t * 16 + t8 * 8 + c4 * 2 + q % 2] = T.reinterpret("uint32", acc[t, t8, q])
            T.tvm_storage_sync("shared")
            for e in range(opt):
                o = T.meta_var(tx + e * threads)           # output of the block: warp column, row, column
                if o < outs:
                    if ((o // (NW * 16)) % 16 < M
                            and (bx * WN + o // (16 * NW * 16)) * NW * 16 + o % (NW * 16) < N):
                        tot[0] = T.float32(0)
                        for s in T.unroll(S):
                            # [slice s][warp column][row][column] = slice s's block + this index
                            tot[0] = tot[0] + T.reinterpret("float32", ring[s * outs + tx + e * threads])
                        out[(o // (NW * 16)) % 16, (bx * WN + o // (16 * NW * 16)) * NW * 16 + o % (NW * 16)] = \
                            T.Cast(adt, tot[0])

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), adt), planes: T.Buffer(PLANES, "int32"),
             scales: T.Buffer(COEF, sdt), zeros: T.Buffer(ZEROS, sdt),
             out: T.Buffer((M, N), adt)):
        T.func_attr({"tirx.noalias": True})
        for bx in T.thread_binding(nbx, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                # one flat ring, written only by cp.async and read only through PTX; buffer
                # compaction keeps the region TIR sees, so TIR is shown both ends of it
                # (one dynamic allocation: TVM merges no others into it)
                ring = T.alloc_buffer((WORDS,), "uint32", scope="shared.dyn")
                wreg = T.alloc_buffer((NW, J4, 4), "uint32", scope="local")
                sreg = T.alloc_buffer((NW, 2, NG), "uint32", scope="local")
                zreg = T.alloc_buffer((NW, 2, NG), "uint32", scope="local")
                areg = T.alloc_buffer((2, 4), "uint32", scope="local")
                bfrag = T.alloc_buffer((2, NW, 2, 2), "uint32", scope="local")
                acc = T.alloc_buffer((NW, 2, 4), "float32", scope="local")
                gacc = T.alloc_buffer((NW, 2, 4), "float32", scope="local")   # a scale group's sums (late_scale)
                xacc = T.alloc_buffer((2, 4), "float32", scope="local")   # its raw pairs' offsets times x (raw_codes)
                tot = T.alloc_buffer((1,), "float32", scope="local")
                base = T.alloc_buffer((1,), "uint32", scope="local")
                base[0] = T.cuda.cvta_generic_to_shared(T.address_of(ring[0]))
                T.evaluate(T.address_of(ring[WORDS - 1]))
                for i0 in T.unroll(NW):
                    for i1 in T.unroll(2):
                        for i2 in T.unroll(4):
                            acc[i0, i1, i2] = T.float32(0)
                            gacc[i0, i1, i2] = T.float32(0)
                            xacc[i1, i2] = T.float32(0)
                # Prologue: steps 0 .. P-2 in flight, one cp.async group each.
                for j in range(steps + P - 1):
                    if j >= P - 1:
                        T.evaluate(cp_wait(P - 2))             # the group of step j - P + 1 has landed
                        if WS:                                 # ... for the warp's lanes; its part of
                            T.evaluate(syncwarp())             # stage j - 1 is free
                        else:
                            T.tvm_storage_sync("shared")       # ... for every thread; stage j - 1 is free
                    if j < steps:
                        copy_step(j, tx, bx, x, planes, scales, zeros, base)
                    T.evaluate(cp_commit())                    # empty groups keep the count uniform
                    if j >= P - 1:
                        multiply_step(j - P + 1, tx, bx, base, wreg, sreg, zreg, areg, bfrag, acc, gacc, xacc)
                store(tx, bx, acc, ring, tot, out)

    return main if zp else drop_param(main, "zeros")
