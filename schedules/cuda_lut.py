"""CUDA LUT kernel for small M: tables in shared memory, one weight row per lane, 16-byte loads.

Same math as :mod:`lutc.frontend` (``g = 4``, float32 tables), written as explicit TensorIR
(TVMScript) like :mod:`schedules.simd_lut`, because the parts that make it fast are decisions
about threads and registers that the front end's loop nest does not express: which lane owns
which row, which bytes one load instruction brings, when a block synchronizes.

Weights come in the ``warp32`` layout of :mod:`lutc.formats`: lane ``l`` of a warp owns row
``32 t + l`` of tile ``t``, and one 16-byte load gives it a 128-weight slice of one bit plane
(32 table indices); the warp's 32 loads are one contiguous 512-byte segment.

Thread block = ``warps`` x ``tiles`` warps: ``tiles`` row tiles side by side, each split along K
over ``warps`` warps (the split-K knob: narrow N still fills the GPU). Each lane owns ``rows``
rows (tiles ``rows`` apart in the block's range). K is walked in chunks of
``128 * units * warps`` activations, one chunk ahead: iteration ``i`` issues the loads of chunk
``i``, does the lookups of chunk ``i - 1``, builds the tables of chunk ``i``, then one barrier.

1. **Loads**: every lane issues its 16-byte weight loads (``units`` slices x ``rows`` x ``b``
   planes) and the group coefficients they need into one of two register sets, and the 4
   activations of the tables it will build; they fly during a chunk of lookups.
2. **Tables** (per thread block, shared memory, double-buffered so one barrier per chunk
   suffices): for each row of ``x`` and each group of 4 activations, the 16 signed partial sums
   of equation (2); each thread builds 4 entries of one table (one 16-byte store, conflict-free).
   With ``symmetrize`` the entries whose top bit is 1 are the negations of the others,
   ``T[15 - p] = -T[p]`` (equation (3)), exact; all 16 are stored: a lookup is then one
   ``LDS`` with no sign fix-up (2-3 integer instructions saved per lookup), and the table is
   small next to the 228 KB of shared memory per SM (``32 * chunk * M`` bytes).
3. **Lookups**: for each 32-bit word of a plane, 8 table indices (nibbles); all lanes of a warp
   read the same 64-byte table at once (16 distinct banks, no conflicts), one lookup per row of
   ``x``, multiplied by the plane's coefficient and accumulated in float32: ``s 2^(i-1)``
   (uniform), ``alpha_i`` (bcq), ``s / 2`` (ternary). The group coefficients are fused here, and
   zero points add ``s ((2^b - 1)/2 - z) X`` with the word's activation sum ``X`` (built with the
   table).

The epilogue adds the ``warps`` partial sums of a row through shared memory and writes ``y`` in
the activation dtype (coalesced: lane = row).

Limits (``supports``): ``g = 4``, float32 tables, K a multiple of 128, M <= 8 (the tables of a
chunk grow with M; beyond small M the tensor-core schedule wins anyway).
"""
from __future__ import annotations

from tvm import IRModule, s_tir
from tvm.script import tirx as T

from .common import drop_param, merge_knobs, plane_coef, weight_buffers

#: Writes its kernel itself; the front end's function is only its reference (schedules.contract).
TEMPLATE = True
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("warp32",)
KNOBS = {"warps": (1, 2, 4, 8), "tiles": (1, 2, 4), "rows": (1, 2), "units": (1, 2, 4)}
MAX_M = 8
SMEM_LIMIT = 48 * 1024
#: TVM cannot see the shared-memory reads made by inline PTX (the table lookups here, the x
#: tile of ``cuda_mma``): StorageRewrite reused the tables' storage for the split-K reduction
#: buffer as if the tables were dead, so it is off for these kernels (they place their buffers
#: themselves), and a buffer read only through PTX is either fully written by TIR or flat, so
#: that buffer compaction keeps its strides (compaction of ``cuda_mma``'s padded x tile to its
#: written columns gave an illegal address on the H100).
PASS_CONFIG = {"tirx.disable_storage_rewrite": True}


def supports(spec, target) -> bool:
    """CUDA, g = 4, float32 tables, K % 128 == 0, M <= 8."""
    return (target.kind.name == "cuda" and spec.g == 4 and spec.table_dtype == "float32"
            and spec.K % 128 == 0 and spec.M <= MAX_M)


def layout(spec, target, **knobs) -> str:
    if knobs:
        resolve_knobs(spec, **knobs)    # refuses impossible combinations
    return "warp32"


def default_knobs(spec) -> dict:
    """Untuned choice, from the H100 sweep of ``benchmarks/bench_cuda.py --sweep cuda_lut``:
    8 warps on one 32-row tile (split K 8 ways) was best or within 6% at M = 1 on all of
    28672x8192, 8192x28672 and 4096x4096; larger M needs smaller chunks (tables grow with M)."""
    KU = spec.K // 128
    warps, units = 8, 1
    while warps > 1 and (warps * units * spec.M > 8 or warps * units > KU):
        warps //= 2
    return {"warps": warps, "tiles": 1 if warps >= 4 else 4 // warps, "rows": 1, "units": units}


def preferred(spec, target) -> bool:
    """Whether ``schedules.default`` should pick this kernel when another also builds ``spec``:
    only at M = 1, and there after ``cuda_stream`` where that one is preferred (W2-W4 and
    ternary with fp16/bf16 activations; :func:`schedules.cuda_stream.preferred`): this kernel
    decodes W1 (its 1 bit per weight), W2 with zero points, bcq and fp32 activations. It loses
    from M = 2 on (H200, ``benchmarks/results/cuda_h200.md``: 71.8 against 59.2 us W2, 93.4
    against 62.1 us W4): it builds one table per row of x."""
    return spec.M == 1


def resolve_knobs(spec, **given) -> dict:
    """The knobs a kernel is built with: ``given`` (None = default) over :func:`default_knobs`.
    Raises ValueError for a value outside ``KNOBS`` or more shared memory than a block has."""
    knobs = merge_knobs("cuda_lut", KNOBS, default_knobs(spec), given)
    used = smem_bytes(spec, **knobs)
    if used > SMEM_LIMIT:
        raise ValueError(f"cuda_lut knobs {knobs} need {used} bytes of shared memory for M={spec.M} "
                         f"(limit {SMEM_LIMIT}): lower warps or units")
    return knobs


def smem_bytes(spec, warps: int, tiles: int, rows: int, units: int) -> int:
    """Shared memory of one block: two table buffers, act sums, the split-K reduction."""
    KT = 128 * units * warps
    table = 2 * (KT // 4) * spec.M * 16 * 4
    sums = 2 * (KT // 32) * spec.M * 4 if spec.needs_act_sum else 0
    red = warps * tiles * rows * spec.M * 32 * 4 if warps > 1 else 0
    return table + sums + red


def schedule(func, spec, target, warps=None, tiles=None, rows=None, units=None) -> s_tir.Schedule:
    """The CUDA LUT kernel for ``spec`` (``func`` is its reference semantics)."""
    knobs = resolve_knobs(spec, warps=warps, tiles=tiles, rows=rows, units=units)
    return s_tir.Schedule(IRModule({"main": lut_kernel(spec, **knobs)}))


def lut_kernel(spec, warps: int, tiles: int, rows: int, units: int):
    """The PrimFunc (module docstring). Arguments: ``x [M, K]``, ``planes [NT, K/128, b, 32, 4]``
    int32, ``scales`` (tile-major), ``zeros`` (zero points only), ``out [M, N]``."""
    M, N, K, b = spec.M, spec.N, spec.K, spec.planes
    S, WT, RL, UW = warps, tiles, rows, units
    NT, KU, gs = -(-N // 32), K // 128, spec.group
    threads = 32 * S * WT
    KT = 128 * UW * S                 # activations per chunk
    GT = KT // 4                      # table groups per chunk
    WDS = KT // 32                    # 32-bit words per chunk (activation sums)
    chunks = -(-KU // (UW * S))
    nblocks = -(-NT // (WT * RL))
    SPU = 128 // gs if gs <= 128 else 1   # coefficient groups per 128-weight slice
    wide = gs > 128                       # one group spans several slices
    quads = M * GT * 4
    qpt = -(-quads // threads)
    zpt = -(-(WDS * M) // threads)
    opt = -(-(WT * RL * M * 32) // threads)
    fmt, zp, sym = spec.format, spec.zero_point, spec.symmetrize
    act, sdt = spec.act_dtype, spec.scale_dtype
    const = spec.code_center
    NS = b if fmt == "bcq" else 1         # coefficients per group
    PLANES, scale_shape, zero_shape = weight_buffers(spec, "warp32")   # lutc.layouts' shapes
    red_shape = (S, WT, RL, M, 32) if S > 1 else (1,)
    xs_shape = (2, WDS, M) if zp else (1,)

    @T.macro
    def load_chunk(chunk, par, tx, bx, x, planes, scales, zeros, wreg, sreg, zreg, xv):
        """Loads of chunk ``chunk`` into register set ``par`` (weights, coefficients, activations)."""
        lane = T.meta_var(tx % 32)
        k_warp = T.meta_var((tx // 32) % S)           # this warp's share of each chunk (split-K)
        first_tile = T.meta_var((bx * WT + tx // (32 * S)) * RL)   # its first 32-row tile
        for u in T.unroll(UW):
            unit = T.meta_var(chunk * (UW * S) + k_warp * UW + u)   # 128-weight unit
            if unit < KU:
                for r in T.unroll(RL):
                    tile = T.meta_var(first_tile + r)     # the 32-row tile in register set r
                    if tile < NT:
                        for i in T.unroll(b):
                            wreg[par, u, r, i, T.ramp(0, 1, 4)] = planes[tile, unit, i, lane, T.ramp(0, 1, 4)]
                        if fmt != "ternary":
                            for jj in T.unroll(SPU):
                                group = T.meta_var((unit * 128) // gs + jj)
                                for i in T.unroll(NS):
                                    if fmt == "bcq":
                                        sreg[par, u, r, jj, i] = T.Cast("float32", scales[tile, group, i, lane])
                                    else:
                                        sreg[par, u, r, jj, i] = T.Cast("float32", scales[tile, group, lane])
                                if zp:
                                    zreg[par, u, r, jj] = T.Cast("float32", zeros[tile, group, lane])
        for e in T.unroll(qpt):
            slot = T.meta_var(tx + e * threads)   # (row of x, table group, quad)
            if slot < quads:
                if chunk * GT + (slot // 4) % GT < K // 4:
                    for j in T.unroll(4):
                        xv[e, j] = T.Cast("float32", x[
                            slot // (GT * 4), (chunk * GT + (slot // 4) % GT) * 4 + j])

    @T.macro
    def look_up(chunk, par, tx, bx, tab, xs, tbase, wreg, sreg, zreg, acc, scales):
        """Lookups of chunk ``chunk`` (register set ``par``, table buffer ``par``)."""
        k_warp = T.meta_var((tx // 32) % S)           # this warp's share of each chunk (split-K)
        first_tile = T.meta_var((bx * WT + tx // (32 * S)) * RL)   # its first 32-row tile
        tbase[0] = T.cuda.cvta_generic_to_shared(T.address_of(
            tab[par, k_warp * (UW * 32), 0, 0]))
        for u in T.unroll(UW):
            if chunk * (UW * S) + k_warp * UW + u < KU:
                for r in T.unroll(RL):
                    if first_tile + r < NT:
                        for q in T.unroll(4):
                            coef_group = T.meta_var((q * 32) // gs if not wide else 0)
                            for nib in T.unroll(8):
                                for i in T.unroll(b):
                                    for m in T.unroll(M):
                                        acc[r, m, nib % 2] = acc[r, m, nib % 2] + _lds(
                                            tbase[0], wreg[par, u, r, i, q], nib,
                                            ((u * 32 + q * 8 + nib) * M + m) * 64) * _coef(
                                            spec, sreg, scales, par, u, r, coef_group, i)
                            if zp:
                                for m in T.unroll(M):
                                    acc[r, m, 0] = acc[r, m, 0] + (
                                        sreg[par, u, r, coef_group, 0]
                                        * (T.float32(const) - zreg[par, u, r, coef_group])
                                        * T.cuda.func_call("lutc_lds", T.cuda.cvta_generic_to_shared(
                                            T.address_of(xs[par, (k_warp * UW + u) * 4 + q, m])),
                                            source_code=LDS_SRC, return_type="float32"))

    @T.macro
    def build_tables(chunk, par, tx, x, tab, xs, xv, tq, tot):
        """Tables of chunk ``chunk`` (buffer ``par``): 4 entries of one (row of x, group) per thread.
        With q = the quad (entries 4 q .. 4 q + 3) and f = (-x0-x1, x0-x1, -x0+x1, x0+x1):
        T = base + f, base = +-x2 +-x3 by q's bits; symmetrized, quads 2 and 3 are the negated
        mirrors of 1 and 0: T[15 - p] = -T[p], i.e. base = -(base of quad 3 - q), same f."""
        for e in T.unroll(qpt):
            slot = T.meta_var(tx + e * threads)
            quad = T.meta_var(slot % 4)
            if slot < quads:
                if chunk * GT + (slot // 4) % GT < K // 4:
                    tq[0] = xv[e, 0] + xv[e, 1]
                    tq[1] = xv[e, 0] - xv[e, 1]
                    if sym:
                        tq[2] = T.Select(quad >= 2, T.float32(-1), T.float32(1)) * (
                            T.Select(((3 - quad) & 1 == 1) == (quad >= 2),
                                     xv[e, 2], T.float32(0) - xv[e, 2]) - xv[e, 3])
                    else:
                        tq[2] = (T.Select(quad & 1 == 1, xv[e, 2], T.float32(0) - xv[e, 2])
                                 + T.Select(quad & 2 == 2, xv[e, 3], T.float32(0) - xv[e, 3]))
                    for pp in T.unroll(4):
                        tab[par, (slot // 4) % GT, slot // (GT * 4), quad * 4 + pp] = (
                            tq[2] + _fsel(tq, pp))
        if zp:
            for e in range(zpt):
                slot = T.meta_var(tx + e * threads)   # (row of x, 32-activation word)
                if slot < WDS * M:
                    if chunk * KT + (slot % WDS) * 32 < K:
                        tot[0] = T.float32(0)
                        for k in T.unroll(32):
                            tot[0] = tot[0] + T.Cast("float32", x[
                                slot // WDS, chunk * KT + (slot % WDS) * 32 + k])
                        xs[par, slot % WDS, slot // WDS] = tot[0]

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), act), planes: T.Buffer(PLANES, "int32"),
             scales: T.Buffer(scale_shape, sdt), zeros: T.Buffer(zero_shape, sdt),
             out: T.Buffer((M, N), act)):
        T.func_attr({"tirx.noalias": True})
        for bx in T.thread_binding(nblocks, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                tab = T.alloc_buffer((2, GT, M, 16), "float32", scope="shared")
                xs = T.alloc_buffer(xs_shape, "float32", scope="shared")
                red = T.alloc_buffer(red_shape, "float32", scope="shared")
                wreg = T.alloc_buffer((2, UW, RL, b, 4), "int32", scope="local")
                sreg = T.alloc_buffer((2, UW, RL, SPU, NS), "float32", scope="local")
                zreg = T.alloc_buffer((2, UW, RL, SPU), "float32", scope="local")
                acc = T.alloc_buffer((RL, M, 2), "float32", scope="local")
                xv = T.alloc_buffer((qpt, 4), "float32", scope="local")
                tq = T.alloc_buffer((3,), "float32", scope="local")
                tot = T.alloc_buffer((1,), "float32", scope="local")
                tbase = T.alloc_buffer((1,), "uint32", scope="local")
                lane = T.meta_var(tx % 32)
                k_warp = T.meta_var((tx // 32) % S)
                for r in T.unroll(RL):
                    for m in T.unroll(M):
                        acc[r, m, 0] = T.float32(0)
                        acc[r, m, 1] = T.float32(0)
                # Iteration i loads chunk i (weights into register set i % 2, x for its tables),
                # looks up chunk i - 1 (tables built in iteration i - 1, then a barrier), then
                # builds the tables of chunk i: each warp's loads fly during a chunk of lookups.
                for i2 in range((chunks + 2) // 2):
                    for par in T.unroll(2):
                        chunk = T.meta_var(i2 * 2 + par)
                        if chunk <= chunks:
                            if chunk < chunks:
                                load_chunk(chunk, par, tx, bx, x, planes, scales, zeros, wreg, sreg, zreg, xv)
                            if chunk >= 1:
                                look_up(chunk - 1, 1 - par, tx, bx, tab, xs, tbase, wreg, sreg, zreg, acc, scales)
                            if chunk < chunks:
                                build_tables(chunk, par, tx, x, tab, xs, xv, tq, tot)
                            T.tvm_storage_sync("shared")
                # epilogue
                if S == 1:
                    for r in T.unroll(RL):
                        col = T.meta_var(((bx * WT + tx // 32) * RL + r) * 32 + lane)
                        if col < N:
                            for m in T.unroll(M):
                                out[m, col] = T.Cast(act, acc[r, m, 0] + acc[r, m, 1])
                else:
                    # TVM cannot see the lookups' reads of ``tab`` (inline PTX) and may give ``red``
                    # the same storage: no warp may overwrite it before all have finished.
                    T.tvm_storage_sync("shared")
                    for r in T.unroll(RL):
                        for m in T.unroll(M):
                            red[k_warp, tx // (32 * S), r, m, lane] = acc[r, m, 0] + acc[r, m, 1]
                    T.tvm_storage_sync("shared")
                    for e in range(opt):
                        slot = T.meta_var(tx + e * threads)   # (tile of the block, row tile, row of x, lane)
                        if slot < WT * RL * M * 32:
                            col = T.meta_var(((bx * WT + slot // (32 * M * RL)) * RL
                                              + (slot // (32 * M)) % RL) * 32 + slot % 32)
                            if col < N:
                                tot[0] = T.float32(0)
                                for s in T.unroll(S):
                                    tot[0] = tot[0] + red[s, slot // (32 * M * RL), (slot // (32 * M)) % RL,
                                                          (slot // 32) % M, slot % 32]
                                out[(slot // 32) % M, col] = T.Cast(act, tot[0])

    return main if zp else drop_param(main, "zeros")


#: ``ld.shared.f32`` at a 32-bit shared-memory address: written as PTX so that the address is
#: ``(table base | 4 * index) + constant`` (one LOP3; the constant folds into the load's
#: immediate). Through a C array index nvcc spent 4 integer instructions per lookup, not 2.
LDS_SRC = """
__device__ __forceinline__ float lutc_lds(unsigned addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr));
  return v;
}
"""


def _lds(base, word, nib, offset):
    """Table entry for nibble ``nib`` of ``word``: ``base | 4 * index``, plus ``offset`` bytes."""
    w = T.Cast("uint32", word)
    four_idx = T.if_then_else(nib == 0, T.shift_left(w, T.uint32(2)),
                              T.shift_right(w, T.Cast("uint32", T.max(nib * 4 - 2, 0)))) & T.uint32(60)
    return T.cuda.func_call("lutc_lds", T.bitwise_or(base, four_idx) + T.Cast("uint32", offset),
                            source_code=LDS_SRC, return_type="float32")


def _coef(spec, sreg, scales, par, u, r, jj, i):
    """The float32 coefficient of plane ``i`` (module docstring, step 3): the group's scale (bcq:
    the plane's alpha; ternary: the tensor's) times :func:`~schedules.common.plane_coef`."""
    if spec.format == "ternary":
        return plane_coef(spec, i) * T.Cast("float32", scales[0])
    if spec.format == "bcq":
        return sreg[par, u, r, jj, i]
    return sreg[par, u, r, jj, 0] * plane_coef(spec, i)


def _fsel(tq, pp):
    """``f[pp]`` of the table build: ``-(x0+x1), x0-x1, -(x0-x1), x0+x1`` (``tq[0]``, ``tq[1]``)."""
    return T.Select(pp == 0, T.float32(0) - tq[0], T.Select(pp == 1, tq[1], T.Select(
        pp == 2, T.float32(0) - tq[1], tq[0])))
