"""CUDA prefill kernel for Hopper (sm_90a): ``tc16`` weights dequantized into shared memory as
the B operand of ``wgmma``, activations from registers as its A operand.

Why a third tensor-core kernel: from M = 64 on the product is bound by the tensor cores, not by
the weights (28672 x 8192 at M = 128: 60 GFLOP against 59 MB of W2), and ``mma.sync`` reaches
only part of what Hopper's tensor cores do. ``wgmma`` multiplies a 64 x N x 16 tile per
warpgroup (4 warps) asynchronously: the warps issue it and go on dequantizing the next K unit
while the tensor cores work. On the H200 this kernel takes 0.55-0.74x the time of ``cuda_mma``
at M = 64..2048 (28672 x 8192 W2, M = 128: 156 us against 276), but it is still 1.25-2.25x behind
cuBLAS fp16 (except 28672 x 8192 at M = 64) and 1.35-2.4x behind Humming (93 us at M = 128):
``benchmarks/results/cuda_wgmma_h200.md``.

Which operand is which. ``wgmma`` takes B (and optionally A) from shared memory through a matrix
descriptor, in its canonical layout: 8 x 16-byte "core matrices". The ``tc16`` layout hands each
lane its weights in the ``mma.m16n8k16`` fragment order, with k permuted (lane ``c`` of a quad
holds the contiguous 32 k of its quarter of a 128-weight unit, so its codes come in one 16-byte
load); x can be read with the same permutation by 16-byte loads (as ``cuda_mma`` does), so x
is the register operand A (tokens are wgmma's M: 64 per warpgroup), and the weights,
dequantized in registers exactly as ``cuda_mma`` does (:func:`schedules.cuda_ptx.dequant_tc16`:
``(q - c) s``, one rounding), are stored as B in the descriptor's logical k order: each lane's
``half2`` lands in one 4-byte slot (:func:`b_byte`), a warp's store covers 32 distinct banks.
Dequantizing into shared memory costs one ``st.shared`` per two weights, shared by the
``64 wgm`` tokens of the block; the other way round (weights as A, x^T as B) would need x
permuted in 4-byte pieces on its way into shared memory, or a second weight layout. Knob
``swizzle``: B in the non-swizzled layout (0) or the 128-byte swizzle (128); the H200 timed
them the same.

Loops: block ``(m, n)`` computes ``64 wgm`` token rows by ``bn`` weight rows (blockIdx.x walks
M, so the blocks that share a weight tile run together and read it from DRAM once). K goes in
128-weight units through a ring of ``stages`` ``cp.async`` stages (weights, scales, zero points,
and with ``xsm`` the block's rows of x, :func:`x_byte`), as in :mod:`schedules.cuda_stream`;
``xsm=False`` loads each lane's x fragments of the next unit straight from global memory into
registers instead (no faster on the H200: ``sweep_cuda_wgmma_h200_xsm.json``). Iteration ``i``:
issue the 8 ``wgmma.m64n{bn}k16`` of unit ``i - 1`` (A registers, B buffer ``(i - 1) % 2``) as
one group; while they run, wait for unit ``i``'s copies (one barrier), start the copies of unit
``i + stages - 1`` and dequantize unit ``i`` into B buffer ``i % 2``; ``wgmma.wait_group 0``;
load unit ``i``'s A fragments; ``fence.proxy.async`` (the tensor cores read shared memory
through the async proxy) and a barrier. Nothing is in flight across iterations: with a group
left pending over the loop's back edge (``wait_group 1``), ptxas serialized every wgmma
(C7514), whatever the fences.

Where the time goes (not measured with a profiler; estimates from the sweeps): a unit of the
2 x 256 tile takes about 4600 cycles per SM where its products need 2048 on the tensor cores;
x through registers instead of shared memory changed nothing, the dequantization (about 900
issue cycles) now overlaps the products, and each B tile is read once per warpgroup. A
producer/consumer split (TMA or ``cp.async.bulk`` feeding warps that only dequantize, others
that only issue wgmma, mbarriers instead of block barriers) and split-K for the narrow shapes
(8192 x 28672 gives 32 blocks of 2 x 256) are the next steps.

Limits (``supports``): sm_90a (``wgmma``), fp16 activations, uniform W2/W4, K % 128 == 0, any
M and N (rows past M and N are computed from stale shared memory and never stored).
Results equal ``cuda_mma``'s up to the order of the fp32 sums.
"""
from __future__ import annotations

from tvm import IRModule, s_tir
from tvm.script import tirx as T

from .common import drop_param, merge_knobs, weight_buffers
from .cuda_lut import PASS_CONFIG  # noqa: F401  (TVM cannot see reads made by inline PTX)
from .cuda_ptx import (cp16, cp_commit, cp_wait, dequant_tc16, ldg128, lds128, lds_scale_h2, proxy_fence_async,
                       wgmma_commit, wgmma_fence, wgmma_fence_acc, wgmma_m64k16, wgmma_wait)
from .cuda_stream import groups_per_unit, scale_size

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
KNOBS = {"wgm": (1, 2), "bn": (64, 128, 256), "stages": (2, 3, 4), "swizzle": (0, 128), "xsm": (True, False)}
#: Dynamic shared memory of one block on sm_90 (227 KB, the opt-in maximum).
SMEM_LIMIT = 227 * 1024
#: Alignment of the B buffers in shared memory (the 128-byte swizzle repeats every 1024 bytes).
ALIGN = 1024
#: From this M on the kernel is the default (below it the weights dominate: ``cuda_stream``).
MIN_M = 17


def supports(spec, target) -> bool:
    arch = str(target.attrs.get("arch", "")) if target.kind.name == "cuda" else ""
    return (arch == "sm_90a" and spec.act_dtype == "float16" and spec.format == "uniform"
            and spec.wbits in (2, 4) and spec.K % 128 == 0)


def preferred(spec, target) -> bool:
    """M >= 17: where the tensor cores, not the weight bytes, set the time."""
    return spec.M >= MIN_M


def layout(spec, target, **knobs) -> str:
    if knobs:
        resolve_knobs(spec, **knobs)    # refuses impossible combinations
    return "tc16"


def worth_tuning(spec, target, wgm: int = 1, **_) -> bool:
    """False for a second warpgroup of tokens where M fits in one (it only multiplies padding)."""
    return wgm == 1 or spec.M > 64


#: Tiles (wgm, bn, stages) from the largest down, each with the stages that fit it: the H200 sweep
#: (``benchmarks/results/sweep_cuda_wgmma_h200.json``) found the largest tile fastest wherever
#: its blocks fill the GPU, and the smaller tiles fastest where they do not.
TILES = ((2, 256, 2), (1, 256, 2), (1, 128, 3), (1, 64, 4))
#: Blocks a tile must give to be chosen by default (about 3/4 of the H200's 132 SMs).
MIN_BLOCKS = 100


def blocks(spec, wgm: int, bn: int) -> int:
    """Thread blocks of the kernel: token tiles x weight-row tiles."""
    return -(-spec.M // (64 * wgm)) * -(-spec.N // bn)


def default_knobs(spec) -> dict:
    """The largest tile of :data:`TILES` (two warpgroups only where M > 64, shared memory
    permitting) that still gives :data:`MIN_BLOCKS` blocks, else the smallest: on the H200,
    28672 x 8192 W2 at M = 128 took 151 us with 2 x 256 (112 blocks) against 183 with 2 x 128;
    8192 x 28672 at M = 128 took 202 with 1 x 64 (256 blocks) against 488 with 2 x 256 (32)."""
    tiles = [t for t in TILES if (t[0] == 1 or spec.M > 64) and smem_bytes(spec, *t) <= SMEM_LIMIT]
    wgm, bn, stages = next((t for t in tiles if blocks(spec, t[0], t[1]) >= MIN_BLOCKS), tiles[-1])
    return {"wgm": wgm, "bn": bn, "stages": stages, "swizzle": 128, "xsm": True}


def resolve_knobs(spec, **given) -> dict:
    """The knobs a kernel is built with: ``given`` (None = default) over :func:`default_knobs`.
    Raises ValueError for a value outside ``KNOBS``, a weight tile the warps cannot share
    evenly, or more shared memory than a block has."""
    knobs = merge_knobs("cuda_wgmma", KNOBS, default_knobs(spec), given)
    while given.get("stages") is None and smem_bytes(spec, **knobs) > SMEM_LIMIT and knobs["stages"] > 2:
        knobs["stages"] -= 1
    if (knobs["bn"] // 16) % (4 * knobs["wgm"]):
        raise ValueError(f"cuda_wgmma knobs {knobs}: {knobs['bn'] // 16} row tiles cannot be "
                         f"shared by {4 * knobs['wgm']} warps: raise bn or lower wgm")
    used = smem_bytes(spec, **knobs)
    if used > SMEM_LIMIT:
        raise ValueError(f"cuda_wgmma knobs {knobs} need {used} bytes of shared memory "
                         f"(limit {SMEM_LIMIT}): lower stages or bn")
    return knobs


def stage_bytes(spec, wgm: int, bn: int, xsm: bool = True) -> dict:
    """Bytes of one pipeline stage, by part (weights, scales, zero points, x)."""
    coef = bn * groups_per_unit(spec) * scale_size(spec)
    return {"w": (bn // 16) * (spec.wbits // 2) * 512, "s": coef, "z": coef if spec.zero_point else 0,
            "x": 64 * wgm * 256 if xsm else 0}


def b_bytes(bn: int) -> int:
    """One B buffer: ``bn`` rows x 128 k of fp16."""
    return bn * 128 * 2


def smem_bytes(spec, wgm: int, bn: int, stages: int, swizzle: int = 0, xsm: bool = True) -> int:
    """Dynamic shared memory of one block: 1 KB to align the B buffers to a swizzle atom, the
    two B buffers, then the ring (``swizzle`` moves bytes, it does not change their number)."""
    return ALIGN + 2 * b_bytes(bn) + stages * sum(stage_bytes(spec, wgm, bn, xsm).values())


def schedule(func, spec, target, wgm=None, bn=None, stages=None, swizzle=None, xsm=None) -> s_tir.Schedule:
    """The dequantize-to-shared + wgmma kernel for ``spec`` (``func`` is its reference semantics)."""
    knobs = resolve_knobs(spec, wgm=wgm, bn=bn, stages=stages, swizzle=swizzle, xsm=xsm)
    return s_tir.Schedule(IRModule({"main": wgmma_kernel(spec, **knobs)}))


def b_byte(swizzle: int, bn: int, s, h, row8, g4, c4):
    """Byte offset in the B buffer of the ``half2`` of logical k ``16 s + 8 h + 2 c4`` (and + 1)
    of weight row ``8 row8 + g4``: a 4-byte slot of a core matrix (``swizzle=0``), or of a
    128-byte row of 64 k whose 16-byte chunks are XORed with the row mod 8 (``swizzle=128``)."""
    if swizzle == 0:
        return ((2 * s + h) * (bn // 8) + row8) * 128 + g4 * 16 + c4 * 4
    return (s // 4) * bn * 128 + (row8 * 8 + g4) * 128 + ((((s % 4) * 2 + h) ^ g4) * 16) + c4 * 4


def x_byte(row, chunk):
    """Byte offset in a stage's x of 16-byte chunk ``chunk`` (0..15: k ``8 chunk ..``) of token
    row ``row``: rows of 256 bytes, unpadded; the chunk index is XORed with bit 1 from the
    chunk's half and bit 0 from the row's parity, so that the 8 lanes of a quarter warp (rows
    ``2 q, 2 q + 1`` x quarters ``c4 = 0..3`` of one 16-byte column) hit 8 different bank groups."""
    return row * 256 + T.bitwise_xor(chunk, T.shift_left(T.bitwise_and(T.shift_right(chunk, 3), 1), 1)
                                     ^ T.bitwise_and(row, 1)) * 16


def b_step(swizzle: int, bn: int, s: int) -> int:
    """Byte offset of k16 step ``s`` in the B buffer (the start address of its descriptor)."""
    return 2 * s * (bn // 8) * 128 if swizzle == 0 else (s // 4) * bn * 128 + (s % 4) * 32


def wgmma_kernel(spec, wgm: int, bn: int, stages: int, swizzle: int, xsm: bool):
    """The PrimFunc (module docstring). Arguments: ``x [M, K]`` fp16, ``planes`` (``tc16``),
    ``scales [N/16, G, 16]``, ``zeros`` (zero points only), ``out [M, N]``."""
    M, N, K, b = spec.M, spec.N, spec.K, spec.wbits
    P, BM, BN = stages, 64 * wgm, bn
    NT, KU, G, gs = -(-N // 16), K // 128, spec.groups, spec.group
    J4 = b // 2                               # 16-byte weight vectors per lane per tile and unit
    threads = 128 * wgm
    TW = BN // 16 // (4 * wgm)                # 16-row tiles each warp dequantizes
    nbm, nbn = -(-M // BM), -(-NT * 16 // BN)
    zp, sdt = spec.zero_point, spec.scale_dtype
    ssz = scale_size(spec)
    NG = groups_per_unit(spec)
    CP_TILE = 16 * NG * ssz // 16             # 16-byte copies of one tile's coefficients per unit
    EL16 = 16 // ssz                          # coefficients per 16-byte copy
    CPL = -(-TW * CP_TILE // 32)              # such copies per lane
    const = (2 ** b - 1) / 2.0
    part = stage_bytes(spec, wgm, BN, xsm)
    STAGE = sum(part.values())
    BBUF = b_bytes(BN)
    RING = 2 * BBUF                           # the ring starts after the two B buffers
    OFF_S, OFF_Z, OFF_X = part["w"], part["w"] + part["s"], part["w"] + part["s"] + part["z"]
    XPT = BM * 16 // threads                  # 16-byte copies of x per thread and stage
    PLANES, COEF, ZEROS = weight_buffers(spec, "tc16")   # lutc.layouts' shapes of tc16
    WORDS = (ALIGN + RING + P * STAGE) // 4
    ACC = BN // 2                             # fp32 accumulators per thread (m64 x bn / 128)

    @T.macro
    def copy_unit(j, st, tx, bm, bnn, x, planes, scales, zeros):
        """Start thread ``tx``'s copies of unit ``j`` into the stage at shared byte ``st``: its
        warp's weight tiles and their coefficients, and its share of the block's rows of x."""
        warp = T.meta_var(tx // 32)
        lane = T.meta_var(tx % 32)
        tile0 = T.meta_var(bnn * (BN // 16) + warp * TW)     # this warp's first 16-row tile of N
        for t in T.unroll(TW):
            if tile0 + t < NT:
                for j4 in T.unroll(J4):
                    T.evaluate(cp16(st + T.Cast("uint32", (((warp * TW + t) * J4 + j4) * 32 + lane) * 16),
                                    T.address_of(planes[tile0 + t, j, j4, lane, 0])))
        for e in T.unroll(CPL):
            copy = T.meta_var(lane + e * 32)                   # the warp's coefficient copy: tile, chunk
            group = T.meta_var((j * 128) // gs + ((copy % CP_TILE) * EL16) // 16)
            row = T.meta_var(((copy % CP_TILE) * EL16) % 16)
            if copy < TW * CP_TILE:
                if tile0 + copy // CP_TILE < NT:
                    T.evaluate(cp16(st + T.Cast("uint32", OFF_S + (warp * TW * CP_TILE + copy) * 16),
                                    T.address_of(scales[tile0 + copy // CP_TILE, group, row])))
                    if zp:
                        T.evaluate(cp16(st + T.Cast("uint32", OFF_Z + (warp * TW * CP_TILE + copy) * 16),
                                        T.address_of(zeros[tile0 + copy // CP_TILE, group, row])))
        for e in T.unroll(XPT if xsm else 0):
            xrow = T.meta_var((tx + e * threads) // 16)        # the block's token row, and its
            xchunk = T.meta_var((tx + e * threads) % 16)       # 16-byte chunk (8 k) of the unit
            if bm * BM + xrow < M:
                T.evaluate(cp16(st + T.Cast("uint32", OFF_X + x_byte(xrow, xchunk)),
                                T.address_of(x[bm * BM + xrow, j * 128 + xchunk * 8])))

    @T.macro
    def load_x(u, dst, x, bm, arow, c4):
        """Start loading this lane's A fragments of unit ``u`` from global memory into ``dst``:
        token rows ``arow, arow + 8``, k ``128 u + 32 c4 + 8 s2 ..`` (``tc16``'s permutation)."""
        for s2 in T.unroll(4):
            for r in T.unroll(2):
                T.evaluate(ldg128(T.address_of(x[T.min(bm * BM + arow + r * 8, M - 1), u * 128 + c4 * 32 + s2 * 8]),
                                  bm * BM + arow + r * 8 < M, T.address_of(dst[s2, r, 0])))

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), "float16"), planes: T.Buffer(PLANES, "int32"),
             scales: T.Buffer(COEF, sdt), zeros: T.Buffer(ZEROS, sdt),
             out: T.Buffer((M, N), "float16")):
        T.func_attr({"tirx.noalias": True})
        for bm in T.thread_binding(nbm, thread="blockIdx.x"):
            for bnn in T.thread_binding(nbn, thread="blockIdx.y"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    # [alignment | B buffer 0 | B buffer 1 | ring stages]: written by cp.async and
                    # st.shared, read through PTX; TIR is shown both ends (see cuda_stream)
                    smem = T.alloc_buffer((WORDS,), "uint32", scope="shared.dyn")
                    wreg = T.alloc_buffer((TW, J4, 4), "uint32", scope="local")
                    sreg = T.alloc_buffer((TW, 2), "uint32", scope="local")
                    zreg = T.alloc_buffer((TW, 2), "uint32", scope="local")
                    areg = T.alloc_buffer((4, 2, 4), "uint32", scope="local")
                    xpre = T.alloc_buffer((4, 2, 4), "uint32", scope="local")  # next unit's x (xsm=False)
                    acc = T.alloc_buffer((ACC,), "float32", scope="local")
                    base = T.alloc_buffer((1,), "uint32", scope="local")
                    lead = T.alloc_buffer((1,), "int32", scope="local")
                    # base: the first 1024-byte boundary in the buffer; lead: its word index
                    base[0] = T.bitwise_and(T.cuda.cvta_generic_to_shared(T.address_of(smem[0])) + T.uint32(ALIGN - 1),
                                            T.uint32(~(ALIGN - 1) & 0xFFFFFFFF))
                    lead[0] = T.Cast("int32", base[0] - T.cuda.cvta_generic_to_shared(T.address_of(smem[0]))) // 4
                    T.evaluate(T.address_of(smem[WORDS - 1]))
                    warp = T.meta_var(tx // 32)
                    lane = T.meta_var(tx % 32)
                    g4 = T.meta_var(lane // 4)                 # fragment row (and row + 8)
                    c4 = T.meta_var(lane % 4)                  # fragment k quarter: 32 weights
                    arow = T.meta_var((warp // 4) * 64 + (warp % 4) * 16 + g4)  # token row of a0
                    stage = T.meta_var(lambda u: base[0] + T.Cast("uint32", RING + (u % P) * STAGE))
                    # byte of the coefficient of row t8 * 8 + g4 of tile t, group of k quarter c4
                    coef_at = T.meta_var(lambda t, t8: (((warp * TW + t) * NG + (c4 * 32) // gs % NG) * 16
                                                         + t8 * 8 + g4) * ssz)
                    for q in T.unroll(ACC):
                        acc[q] = T.float32(0)
                    for j in range(P - 1):            # prologue: units 0 .. P-2 in flight
                        if j < KU:
                            copy_unit(j, stage(j), tx, bm, bnn, x, planes, scales, zeros)
                        T.evaluate(cp_commit())
                    if not xsm:                       # x of unit 0 on its way into registers
                        load_x(0, xpre, x, bm, arow, c4)
                    for i in range(KU + 1):
                        # iteration i multiplies unit i - 1 (asynchronously) and meanwhile
                        # dequantizes unit i into B buffer i % 2; nothing stays in flight past it
                        if i >= 1:
                            T.evaluate(wgmma_fence())
                            for s in T.unroll(8):
                                T.evaluate(wgmma_m64k16(
                                    T.address_of(acc[0]), BN, swizzle, areg[s // 2, 0, (s % 2) * 2], areg[s // 2, 1, (s % 2) * 2],
                                    areg[s // 2, 0, (s % 2) * 2 + 1], areg[s // 2, 1, (s % 2) * 2 + 1],
                                    base[0] + T.Cast("uint32", ((i - 1) % 2) * BBUF + b_step(swizzle, BN, s))))
                            T.evaluate(wgmma_commit())
                        if i < KU:
                            T.evaluate(cp_wait(P - 2))         # unit i has landed
                            T.tvm_storage_sync("shared")       # ... for all threads
                            if i + P - 1 < KU:                 # into the stage of unit i - 1, read by now
                                copy_unit(i + P - 1, stage(i + P - 1), tx, bm, bnn, x, planes, scales, zeros)
                            T.evaluate(cp_commit())            # empty groups keep the count uniform
                            for t in T.unroll(TW):
                                for j4 in T.unroll(J4):
                                    T.evaluate(lds128(stage(i) + T.Cast("uint32", (((warp * TW + t) * J4 + j4) * 32 + lane) * 16),
                                                      T.address_of(wreg[t, j4, 0])))
                                for t8 in T.unroll(2):
                                    # coefficient of row t8 * 8 + g4 in the group of k quarter c4
                                    sreg[t, t8] = lds_scale_h2(stage(i) + T.Cast("uint32", OFF_S + coef_at(t, t8)), sdt)
                                    if zp:
                                        zreg[t, t8] = lds_scale_h2(stage(i) + T.Cast("uint32", OFF_Z + coef_at(t, t8)), sdt)
                                # k16 step s, rows t8 * 8 + g4, logical k 2 c4 + 8 h: core matrix
                                # (kb = 2 s + h, nb = 2 tile + t8), row g4, 4-byte slot c4
                                for s in T.unroll(8):
                                    for t8 in T.unroll(2):
                                        for h in T.unroll(2):
                                            smem[lead[0] + ((i % 2) * BBUF + b_byte(swizzle, BN, s, h, 2 * (warp * TW + t) + t8, g4, c4))
                                                 // 4] = dequant_tc16(
                                                wreg, (t,), s * 4 + t8 * 2 + h, b, sreg[t, t8], zreg[t, t8], zp, const)
                        T.evaluate(wgmma_wait(0))              # unit i - 1 done: A registers free
                        if i < KU:
                            if xsm:
                                for s2 in T.unroll(4):
                                    for r in T.unroll(2):
                                        T.evaluate(lds128(stage(i) + T.Cast("uint32", OFF_X + x_byte(arow + r * 8, c4 * 4 + s2)),
                                                          T.address_of(areg[s2, r, 0])))
                            else:                     # x of unit i arrived during the dequantization
                                for s2 in T.unroll(4):
                                    for r in T.unroll(2):
                                        for q in T.unroll(4):
                                            areg[s2, r, q] = xpre[s2, r, q]
                                if i + 1 < KU:
                                    load_x(i + 1, xpre, x, bm, arow, c4)
                            T.evaluate(proxy_fence_async())
                            T.tvm_storage_sync("shared")       # B buffer i % 2 written by all
                    T.evaluate(wgmma_fence_acc(T.address_of(acc[0]), BN))
                    # epilogue: accumulator j8 * 4 + q is token row arow + (q // 2) * 8, weight row
                    # j8 * 8 + 2 c4 + q % 2 of the block
                    for j8 in T.unroll(BN // 8):
                        for q in T.unroll(4):
                            if (bm * BM + arow + (q // 2) * 8 < M
                                    and bnn * BN + j8 * 8 + c4 * 2 + q % 2 < N):
                                out[bm * BM + arow + (q // 2) * 8, bnn * BN + j8 * 8 + c4 * 2 + q % 2] = T.Cast(
                                    "float16", acc[j8 * 4 + q])

    return main if zp else drop_param(main, "zeros")
