"""CUDA dequantize + tensor-core kernel (``mma.sync.m16n8k16``) for larger M before Hopper.

The LUT kernel's cost grows with M (one table lookup per row of ``x`` per weight nibble and
plane); a tensor core multiplies a 16 x 16 tile of ``x`` by a 16 x 8 tile of weights in one
instruction, so past a few rows it pays to turn the weights back into fp16 in registers and let
the tensor cores do the products (what LUT Tensor Core and LUT-GEMM users report on current
GPUs). This schedule computes the same ``y = x @ W^T`` as :mod:`lutc.frontend` for the integer
codes ``tc16`` holds (uniform W1-W4, zero points or not, and ternary) with fp16 or bf16
activations.

Why ``mma.sync`` written as inline PTX in TVMScript (through ``T.cuda.func_call``), not TVM's
tensor intrinsics or ``wgmma``: the B operand is made in registers by bit tricks that no
``tensorize`` description of a plain matmul matches (the same reason :mod:`schedules.simd_lut`
writes its shuffles explicitly), and ``mma.sync`` takes register operands, so the dequantized
fragments go straight into it. ``wgmma`` wants B in shared memory and a warpgroup pipeline
(sm_90a only): :mod:`schedules.cuda_wgmma` does that and takes M >= 17 on Hopper; this kernel
serves sm_80/sm_89 and the tuner.

Weights come in the ``tc16`` layout of :mod:`lutc.formats`: integer codes pre-permuted so that
one 16-byte load per lane gives it the B fragments of two 8-row tiles for a 128-weight unit
(2-bit slots: W1, W2, ternary; two loads for 4-bit slots: W3, W4), coalesced across the warp.
Dequantization of two codes (a ``half2``, :func:`schedules.cuda_ptx.deq`): ``LOP3`` (mask + fp16
magic ``0x6400``: ``1024 + q 2^(w v)`` for slot width ``w``), ``HFMA2`` (exactly ``q``), ``HSUB2``
(``q - c``, exact; ``c`` the zero point or the format's ``spec.code_center``),
``HMUL2`` by the group scale: 2 instructions per weight; without zero points
:func:`~schedules.cuda_ptx.deq_c` folds ``- c`` into the ``HFMA2``: 1.5. ``tc16`` holds k in
the fragments' own order (k16 step ``s``: k ``16 s + 2 c``, + 1, + 8, + 9 for lane ``c`` of a
quad), so x is read in its own: one ``ldmatrix`` per 8 rows and two k16 steps from shared memory,
or four 4-byte loads from global (``xsm=False``).

Loops: blocks of ``wn`` x ``warps`` warps; ``wn`` warps side by side along N (``nw`` 16-row tiles
each), ``warps`` along K (split-K, added in shared memory at the end); ``mt`` 16-row tiles of M
per block (blockIdx.y walks M). K goes in chunks of 128 weights per warp, one chunk ahead: while
a warp multiplies chunk i - 1 (x staged in shared memory, fp16 rows padded by 16 bytes against
bank conflicts; 8 k16 steps of ``mt x nw x 2`` mma), the weight words, scales and x of chunk i
are on their way into registers; then x of chunk i goes to shared memory. Knobs: ``xsm=False``
reads x fragments straight from global memory (L1/L2) instead, no barriers in the loop;
``units`` = 128-weight units per warp per chunk (more bytes in flight per warp).

Limits (``supports``): CUDA sm_80+, fp16 or bf16 activations (weights dequantized to their type:
:func:`schedules.cuda_ptx.dequant_tc16`), the formats ``tc16`` holds (uniform W1-W4, ternary),
K % 128 == 0.
Numerics: each weight becomes the fp16 ``(q - c) s`` (``q - c`` exact, one rounding), products
are exact in the fp32 tensor-core accumulation; an earlier ``q s - c s`` form rounded ``c s``
per group, a bias that failed the fp16 test tolerance at W4.
"""
from __future__ import annotations

import tvm
from tvm import IRModule, s_tir
from tvm.script import tirx as T

from .common import SMS, cuda_arch, drop_param, merge_knobs, weight_buffers
from lutc.layouts import tc16_vectors

from .cuda_ptx import groups_per_unit, h2, ldg_pairs, ldsm_x4, mma, reads_tc16, tc16_fragment
from .cuda_lut import PASS_CONFIG, SMEM_LIMIT  # noqa: F401  (one limit; TVM cannot see reads made by inline PTX)

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("tc16",)
KNOBS = {"warps": (1, 2, 4, 8), "wn": (1, 2, 4, 8), "nw": (1, 2, 4), "mt": (1, 2, 4, 8), "xsm": (True, False),
         "units": (1, 2)}


def supports(spec, target) -> bool:
    arch = cuda_arch(target)
    return (arch.startswith("sm_") and int(arch[3:5]) >= 80 and spec.act_dtype in ("float16", "bfloat16")
            and reads_tc16(spec))


def layout(spec, target, **knobs) -> str:
    if knobs:
        resolve_knobs(spec, **knobs)    # refuses impossible combinations
    return "tc16"


def worth_tuning(spec, target, mt: int = 1, **_) -> bool:
    """False for more M tiles than M needs: they only pad M with rows of zeros (never faster;
    ``schedule`` still builds them), so the tuner's space leaves them out."""
    return mt <= _m_tiles(spec)


def _m_tiles(spec) -> int:
    """16-row tiles that cover M, rounded up to a power of two."""
    return 1 << (-(-spec.M // 16) - 1).bit_length()


def default_knobs(spec) -> dict:
    """Untuned choice, from the H100 sweeps of ``benchmarks/bench_cuda.py --sweep cuda_mma``
    (``benchmarks/results/sweep_cuda_mma_h100*.json``): for M <= 16 with wide N, 4 warps along K on
    64 rows reading x directly; with narrow N (fewer row tiles to spread), 2 x 2 warps and x in
    shared memory. For 16 < M <= 128, all of M in one block when N is wide; when N is narrow, 32
    rows of M per block (blockIdx.y), which gives the GPU enough blocks (2x faster at 8192 x
    28672). For prefill (M > 128) 128 rows per block on any N: blockIdx.y already gives enough
    blocks, and each dequantized weight serves 4x the rows (H200 sweeps,
    ``sweep_cuda_mma_h200_prefill*.json``: 1.2-1.4x faster than 32 rows at M = 512 and 2048 on
    4096 x 4096, 11008 x 4096 and 8192 x 28672)."""
    mt = min(8, _m_tiles(spec))
    NT = -(-spec.N // 16)
    wide = NT > 1024
    prefill = _m_tiles(spec) > 8
    if mt == 1:
        knobs = ({"warps": 4, "wn": 1, "nw": 4, "mt": 1, "xsm": False, "units": 1} if wide else
                 {"warps": 4, "wn": 2, "nw": 2, "mt": 1, "xsm": True, "units": 1})
    elif wide or prefill:
        knobs = {"warps": 1, "wn": 4, "nw": 2, "mt": mt, "xsm": True, "units": 1}
    else:
        knobs = {"warps": 1, "wn": 4, "nw": 2, "mt": 2, "xsm": True, "units": 2}
    # Fewer warps side by side when one row of blocks would leave SMs idle (not for prefill:
    # blockIdx.y walks M there).
    while not prefill and knobs["wn"] > 1 and NT < SMS * knobs["wn"] * knobs["nw"] // 4:
        knobs["wn"] //= 2
    return knobs


def resolve_knobs(spec, **given) -> dict:
    """The knobs a kernel is built with: ``given`` (None = default) over :func:`default_knobs`.
    Raises ValueError for a value outside ``KNOBS`` or more shared memory than a block has."""
    knobs = merge_knobs("cuda_mma", KNOBS, default_knobs(spec), given)
    if given.get("units") is None and smem_bytes(spec, **knobs) > SMEM_LIMIT:
        knobs["units"] = 1          # a default that does not fit beside the knobs given
    used = smem_bytes(spec, **knobs)
    if used > SMEM_LIMIT:
        raise ValueError(f"cuda_mma knobs {knobs} need {used} bytes of shared memory (limit {SMEM_LIMIT})")
    return knobs


def smem_bytes(spec, warps: int, wn: int, nw: int, mt: int, xsm: bool = True, units: int = 1) -> int:
    xs = 16 * mt * (128 * warps * units + 8) * 2 if xsm else 0
    red = warps * wn * 16 * mt * 16 * nw * 4 if warps > 1 else 0
    return xs + red


def schedule(func, spec, target, warps=None, wn=None, nw=None, mt=None, xsm=None,
             units=None) -> s_tir.Schedule:
    """The dequantize + mma kernel for ``spec`` (``func`` is its reference semantics)."""
    knobs = resolve_knobs(spec, warps=warps, wn=wn, nw=nw, mt=mt, xsm=xsm, units=units)
    return s_tir.Schedule(IRModule({"main": mma_kernel(spec, **knobs)}))


def mma_kernel(spec, warps: int, wn: int, nw: int, mt: int, xsm: bool = True, units: int = 1):
    """The PrimFunc (module docstring). Arguments: ``x [M, K]`` fp16 or bf16, ``planes`` (``tc16``),
    ``scales [N/16, G, 16]``, ``zeros`` (zero points only), ``out [M, N]``."""
    M, N, K = spec.M, spec.N, spec.K
    J4 = tc16_vectors(spec)                   # 16-byte weight vectors per lane per tile and unit
    S, WN, NW, MT, UW = warps, wn, nw, mt, units
    NT, KU, gs = -(-N // 16), K // 128, spec.group
    MP = 16 * MT                          # rows of x per block
    threads = 32 * S * WN
    KC = 128 * S * UW                     # activations per chunk
    XR = KC + 8                           # padded smem row (halfs)
    chunks = -(-KU // (S * UW))
    nbx, nby = -(-NT // (WN * NW)), -(-M // MP)
    vecs = MP * KC // 8
    vpt = -(-vecs // threads)
    XPRE = xsm and vpt <= 4               # x of the next chunk through registers (else: copied late)
    outs = WN * MP * NW * 16
    opt = -(-outs // threads)
    zp, sdt, adt = spec.zero_point, spec.scale_dtype, spec.act_dtype   # adt: x, the weights and out
    NG = groups_per_unit(spec)
    PLANES, COEF, ZEROS = weight_buffers(spec, "tc16")   # lutc.layouts' shapes of tc16
    red_shape = (S, WN, MP, NW * 16) if S > 1 else (1,)
    ZERO = tvm.tirx.const(0, adt)

    @T.macro
    def load_chunk(i, par, tx, bx, by, x, planes, scales, zeros, wreg, sreg, zreg, xreg, sv):
        """Chunk ``i``'s loads into register set ``par``: this warp's weight words and
        coefficients (rows g, g + 8) of each unit and tile, and with ``XPRE`` its share of x."""
        warp_k = T.meta_var((tx // 32) % S)            # this warp's K slice
        warp_n = T.meta_var(tx // (32 * S))            # and N column of the block
        token0 = T.meta_var(by * MP)                   # the block's first row of x
        for u in T.unroll(UW):
            unit = T.meta_var((i * S + warp_k) * UW + u)
            if unit < KU:
                for t in T.unroll(NW):
                    tile = T.meta_var((bx * WN + warp_n) * NW + t)
                    if tile < NT:
                        for j4 in T.unroll(J4):
                            wreg[par, u, t, j4, T.ramp(0, 1, 4)] = planes[tile, unit, j4, tx % 32, T.ramp(0, 1, 4)]
                        for t8 in T.unroll(2):
                            for ng in T.unroll(NG):   # the unit's groups
                                sv[0] = T.Cast("float32", scales[tile, (unit * 128) // gs + ng, t8 * 8 + (tx % 32) // 4])
                                sreg[par, u, t, t8, ng] = h2(sv[0], adt)
                                if zp:
                                    zreg[par, u, t, t8, ng] = h2(T.Cast("float32", zeros[
                                        tile, (unit * 128) // gs + ng, t8 * 8 + (tx % 32) // 4]), adt)
        if XPRE:
            for e in T.unroll(vpt):
                vec = T.meta_var(tx + e * threads)     # 8 values of x: row, column of the chunk
                row = T.meta_var(vec // (KC // 8))
                col = T.meta_var(i * KC + (vec % (KC // 8)) * 8)
                if vec < vecs:
                    if token0 + row < M and col < K:
                        xreg[e, T.ramp(0, 1, 8)] = x[token0 + row, T.ramp(col, 1, 8)]
                    else:
                        xreg[e, T.ramp(0, 1, 8)] = T.broadcast(ZERO, 8)

    @T.macro
    def multiply_chunk(i, par, tx, bx, by, x, wreg, sreg, zreg, areg, bfrag, acc, xbase):
        """Chunk ``i`` from register set ``par``: per unit 8 k16 steps, two per load of x's
        fragments, each an mma per 16-row tile of x and 8-row tile of weights."""
        warp_k = T.meta_var((tx // 32) % S)
        warp_n = T.meta_var(tx // (32 * S))
        for u in T.unroll(UW):
            if (i * S + warp_k) * UW + u < KU:
                for s2 in T.unroll(4):
                    # B fragments of two k16 steps, then each 16-row tile of x
                    for sp in T.unroll(2):
                        for t in T.unroll(NW):
                            for t8 in T.unroll(2):
                                for h in T.unroll(2):
                                    bfrag[sp, t, t8, h] = tc16_fragment(spec, wreg, sreg, zreg, (par, u), t,
                                                                        s2 * 2 + sp, t8, h)
                    for mi in T.unroll(MT):
                        for r in T.unroll(2):
                            # A fragments of rows mi 16 + r 8 .., k 32 s2 .. of the unit
                            if xsm:
                                T.evaluate(ldsm_x4(
                                    xbase[0] + T.Cast("uint32", ((mi * 16 + r * 8 + tx % 8) * XR
                                                                 + (warp_k * UW + u) * 128 + s2 * 32
                                                                 + ((tx % 32) // 8) * 8) * 2),
                                    T.address_of(areg[r, 0])))
                            else:
                                T.evaluate(ldg_pairs(
                                    T.address_of(x[T.min(by * MP + mi * 16 + r * 8 + (tx % 32) // 4, M - 1),
                                                   ((i * S + warp_k) * UW + u) * 128 + s2 * 32 + (tx % 4) * 2]),
                                    by * MP + mi * 16 + r * 8 + (tx % 32) // 4 < M,
                                    T.address_of(areg[r, 0])))
                        for sp in T.unroll(2):
                            for t in T.unroll(NW):
                                if (bx * WN + warp_n) * NW + t < NT:
                                    for t8 in T.unroll(2):
                                        T.evaluate(mma(
                                            T.address_of(acc[mi, t, t8, 0]),
                                            areg[0, sp * 2], areg[1, sp * 2],
                                            areg[0, sp * 2 + 1], areg[1, sp * 2 + 1],
                                            bfrag[sp, t, t8, 0], bfrag[sp, t, t8, 1], adt))

    @T.macro
    def stage_x(i, tx, by, x, xreg, xs):
        """x of chunk ``i`` into shared memory (zeros past M and K): from the registers that
        ``load_chunk`` filled (``XPRE``), else straight from global memory."""
        token0 = T.meta_var(by * MP)                   # the block's first row of x
        if XPRE:
            for e in T.unroll(vpt):
                vec = T.meta_var(tx + e * threads)
                if vec < vecs:
                    xs[T.ramp((vec // (KC // 8)) * XR + (vec % (KC // 8)) * 8, 1, 8)] = xreg[e, T.ramp(0, 1, 8)]
        for e in range(1 if XPRE else vpt):
            vec = T.meta_var(tx + e * threads)
            row = T.meta_var(vec // (KC // 8))
            col = T.meta_var(i * KC + (vec % (KC // 8)) * 8)
            if not XPRE and vec < vecs:
                if token0 + row < M and col < K:
                    xs[T.ramp(row * XR + (vec % (KC // 8)) * 8, 1, 8)] = x[token0 + row, T.ramp(col, 1, 8)]
                else:
                    xs[T.ramp(row * XR + (vec % (KC // 8)) * 8, 1, 8)] = T.broadcast(ZERO, 8)

    @T.macro
    def store(tx, bx, by, acc, red, tot, out):
        """Epilogue: a lane holds rows g, g + 8 and columns 2c, 2c + 1 of each 16 x 8 tile; with
        split K the warps' partial sums meet in shared memory and are added there."""
        if S == 1:
            for mi in T.unroll(MT):
                for t in T.unroll(NW):
                    for t8 in T.unroll(2):
                        for q in T.unroll(4):
                            row = T.meta_var(by * MP + mi * 16 + (tx % 32) // 4 + (q // 2) * 8)
                            col = T.meta_var(((bx * WN + tx // 32) * NW + t) * 16 + t8 * 8 + (tx % 4) * 2 + q % 2)
                            if row < M and col < N:
                                out[row, col] = T.Cast(adt, acc[mi, t, t8, q])
        else:
            for mi in T.unroll(MT):
                for t in T.unroll(NW):
                    for t8 in T.unroll(2):
                        for q in T.unroll(4):
                            red[(tx // 32) % S, tx // (32 * S), mi * 16 + (tx % 32) // 4 + (q // 2) * 8,
                                t * 16 + t8 * 8 + (tx % 4) * 2 + q % 2] = acc[mi, t, t8, q]
            T.tvm_storage_sync("shared")
            for e in range(opt):
                o = T.meta_var(tx + e * threads)       # output of the block: column of warps, row, column
                wcol = T.meta_var(o // (MP * NW * 16))
                row = T.meta_var((o // (NW * 16)) % MP)
                col = T.meta_var(o % (NW * 16))
                if o < outs:
                    if by * MP + row < M and (bx * WN + wcol) * NW * 16 + col < N:
                        tot[0] = T.float32(0)
                        for sl in T.unroll(S):
                            tot[0] = tot[0] + red[sl, wcol, row, col]
                        out[by * MP + row, (bx * WN + wcol) * NW * 16 + col] = T.Cast(adt, tot[0])

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), adt), planes: T.Buffer(PLANES, "int32"),
             scales: T.Buffer(COEF, sdt), zeros: T.Buffer(ZEROS, sdt),
             out: T.Buffer((M, N), adt)):
        T.func_attr({"tirx.noalias": True})
        for by in T.thread_binding(nby, thread="blockIdx.y"):
            for bx in T.thread_binding(nbx, thread="blockIdx.x"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    # flat, so that TVM's buffer compaction (it sees only the stores; the loads
                    # are inline PTX) cannot drop the row padding and change the row stride
                    xs = T.alloc_buffer((MP * XR if xsm else 8,), adt, scope="shared")
                    red = T.alloc_buffer(red_shape, "float32", scope="shared")
                    wreg = T.alloc_buffer((2, UW, NW, J4, 4), "int32", scope="local")
                    sreg = T.alloc_buffer((2, UW, NW, 2, NG), "uint32", scope="local")
                    zreg = T.alloc_buffer((2, UW, NW, 2, NG), "uint32", scope="local")
                    xreg = T.alloc_buffer((vpt if XPRE else 1, 8), adt, scope="local")
                    areg = T.alloc_buffer((2, 4), "uint32", scope="local")
                    bfrag = T.alloc_buffer((2, NW, 2, 2), "uint32", scope="local")
                    acc = T.alloc_buffer((MT, NW, 2, 4), "float32", scope="local")
                    sv = T.alloc_buffer((1,), "float32", scope="local")
                    tot = T.alloc_buffer((1,), "float32", scope="local")
                    xbase = T.alloc_buffer((1,), "uint32", scope="local")
                    xbase[0] = T.cuda.cvta_generic_to_shared(T.address_of(xs[0]))
                    for i0 in T.unroll(MT):
                        for i1 in T.unroll(NW):
                            for i2 in T.unroll(2):
                                for i3 in T.unroll(4):
                                    acc[i0, i1, i2, i3] = T.float32(0)
                    # Iteration i loads chunk i (weights into register set i % 2, x into registers),
                    # multiplies chunk i - 1 (x in shared memory), then stores x of chunk i.
                    for k2 in range((chunks + 2) // 2):
                        for par in T.unroll(2):
                            i = T.meta_var(k2 * 2 + par)      # the chunk loaded into register set par
                            if i <= chunks:
                                if i < chunks:
                                    load_chunk(i, par, tx, bx, by, x, planes, scales, zeros, wreg, sreg, zreg, xreg, sv)
                                if i >= 1:
                                    multiply_chunk(i - 1, 1 - par, tx, bx, by, x, wreg, sreg, zreg, areg, bfrag, acc,
                                                   xbase)
                                if xsm:
                                    T.tvm_storage_sync("shared")
                                if xsm and i < chunks:
                                    stage_x(i, tx, by, x, xreg, xs)
                                if xsm:
                                    T.tvm_storage_sync("shared")
                    store(tx, bx, by, acc, red, tot, out)

    return main if zp else drop_param(main, "zeros")
