"""The SIMD table-lookup kernel (T-MAC style): int8 tables in registers, byte shuffles.

Same math as :mod:`lutc.frontend` with ``g = 4`` and int8 tables, written as explicit vector
TensorIR so that each lookup instruction does ``VL`` lookups (AVX2 ``vpshufb`` 32, AVX-512BW
``vpshufb`` 64, NEON ``tbl`` 16). Weights come in the ``tiles{2 VL}`` layout of
:mod:`lutc.formats`: one ``VL``-byte load holds the 4-bit indices of ``2 VL`` rows for one
activation group and one plane.

Loops:

1. **Tables**, parallel over (row of x, block): for each group of 4 activations the 8 table
   entries whose top bit is 0 are computed (one vector expression) and rounded to int8 with
   the block's scale ``d = max |T| / 127`` (``max |T|`` of a group is ``sum |x_j|``); the other
   8 are their negations (symmetrization: ``T[15 - p] = -T[p]``, exact in int8). Each 16-entry
   table is stored ``VL / 16`` times, once per 128-bit lane, because x86 shuffles look up within
   a lane. With ``symmetrize=False`` all 16 entries are computed directly (same values).
2. **Lookups**, parallel over tasks of ``row_groups`` groups of ``tiles`` row tiles of ``2 VL``
   rows (knobs; 4 tiles and one group by default, :func:`default_tiles`): for each span of
   ``k_span`` blocks (all of K by default: the K-block order), each group, each block of the
   span, each row of x, each group of 4 activations (unrolled), each tile and each plane
   (unrolled): load the table register once per activation group for all the tiles and the
   weight register once per tile and plane, split the nibbles (``& 15``, ``>> 4``), two
   shuffles, widen to int16 and add into the tile's and plane's own accumulator: ``b``
   independent add chains per tile (one chain was latency-bound: llvm-mca gave IPC 1.2-1.6 on
   Neoverse-V1), and widen+add fuse (NEON ``saddw``). Four tiles per table load took 0.61-0.90x
   the time of one (AVX2 code, M = 1, :func:`default_tiles`). Spans keep the tables of a few
   blocks in L1 while several groups use them (a task's partial sums stay on its stack in
   between): with AVX2 code two span settings took 0.96-1.39x the time of the 4-tile default at
   M = 1; the tuner chose spans of 8 blocks for W1 with AVX-512 on the same VM
   (``benchmarks/results/tuning_cpu_emr_lut_tiles.md``).
   In quads (``quad_dot``, x86 VBMI + VNNI) one table register holds four groups' tables, a
   permute looks each row up in its group's table, and a 4-way dot product by 1 sums a row's
   four lookups into int32 (32-row tiles, ``gtiles32``).
   With paired planes (x86 ``vpmaddubsw``, see ``pair_madd``) one accumulator holds
   ``sum_i 2^i Q_i``. The int16 sums cannot overflow: ``MPGemmSpec.block`` limits a block to
   ``32767 / (127 * plane_weight)`` groups. Weights of one block (``block/4 * b * VL`` bytes,
   at most 8 KiB) stay in L1 while every row of x uses them.
3. **Epilogue** per block, vectorized over the tile's rows: int16 -> float, times the table
   scale and each plane's coefficient (``2^(i-1) s``, ``alpha_i`` or ``s/2``; tile-major, so
   vector loads), plus the zero-point term.
   Rows past ``N`` in the last tile are computed on zero scales and never stored.

Why explicit vector TIR with ``call_llvm_pure_intrin`` rather than ``tensorize`` or a C
micro-kernel: a table lookup is a data-dependent gather, which tensorize cannot match (the
intrinsic description would need the gather as a buffer index) and which ``vectorize`` lowers
to slow ``vpgather``; a C micro-kernel would hide the loop nest from TVM's codegen and from the
"c"/object export. Written this way, LLVM sees the whole kernel, the same template serves x86
and ARM by changing ``VL`` and the intrinsic, and the exported object stays self-contained.
"""
from __future__ import annotations

from tvm.script import tirx as T

from lutc.frontend import nan_if, nonfinite

from .common import drop_param, plane_coef, weight_buffers


#: The task-shape knobs of both LUT schedules (x86, arm): row tiles per table load, groups of
#: them per task, and the K-block order (:func:`lut_kernel`).
ORDER_KNOBS = {"tiles": (1, 2, 4), "row_groups": (1, 2, 4, 8), "k_span": (0, 1, 2, 4, 8)}
#: Their values in kernels built before they existed (one tile per task, all of K per tile).
ORDER_ADDED = {"tiles": 1, "row_groups": 1, "k_span": 0}


def order_worth_tuning(row_groups: int, k_span: int) -> bool:
    """Only the orders that differ: several groups per task walking K in spans. One group walks
    its blocks in the same order whatever the span, and groups walking all of K in turn are the
    tasks of ``row_groups = 1`` taken in a row."""
    return (row_groups == 1) == (k_span == 0)


#: Rows of a ``gtiles32`` tile: the 16 int32 lanes of a 64-byte dot product, twice (two nibbles).
QUAD_ROWS = 32


#: Bytes of a task's float partial sums (``M x row_groups x tiles`` rows of ``R``) it may keep on
#: its thread's stack.
TASK_SUMS_LIMIT = 64 * 1024
#: Fewest parallel tasks the default ``tiles`` leaves (:func:`default_tiles`).
MIN_TASKS = 8


def default_tiles(spec, R: int, most: int = 4) -> int:
    """Row tiles per table load when the knob is not given: ``most`` (4, or what a target's
    registers hold: ``schedules.arm``), or fewer where N's tiles of ``R`` rows would make fewer
    than :data:`MIN_TASKS` tasks (a task is one thread's share at a time) or the partial sums
    would pass :data:`TASK_SUMS_LIMIT` (M = 128 and more).

    Measured on the 2-core Emerald Rapids VM compiled for AVX2 alone (``mcpu=haswell``: the CPUs
    where this kernel is the default), M = 1, 2 threads, weights rotating through 1 GiB, us for 1 /
    2 / 4 tiles (``benchmarks/results/cpu_lut_tiles_avx2_emr.md``): W2 4096 x 4096 352 / 276 / 233,
    14336 x 4096 1184 / 917 / 769, 4096 x 14336 1082 / 836 / 701; W4 4096 x 4096 609 / 476 / 427,
    4096 x 14336 1841 / 1235 / 1121; W1 4096 x 14336 547 / 433 / 391: 4 tiles 1.11-1.64x faster than
    one on all 12 rows (Llama-3-8B's shapes, W1 / W2 / W4). Each table register load then serves 4
    tiles' lookups, and each thread reads 4 weight streams at once; 8 tiles was no faster with
    AVX-512 (4096 x 4096 W2: 230 against 222 us)."""
    NT = -(-spec.N // R)
    fits = (t for t in (4, 2) if t <= most and -(-NT // t) >= MIN_TASKS and sums_bytes(spec, R, t) <= TASK_SUMS_LIMIT)
    return next(fits, 1)


def sums_bytes(spec, R: int, tiles: int, row_groups: int = 1) -> int:
    """Bytes of one task's float partial sums: ``M`` rows of x by its tiles' rows."""
    return spec.M * row_groups * tiles * R * 4


def task_shape(spec, R: int, tiles=None, row_groups: int = 1, k_span: int = 0) -> tuple:
    """``(tiles, row_groups, k_span, tasks)`` of the lookup loop for row tiles of ``R`` rows:
    the knobs fitted to the spec (``tiles`` None: :func:`default_tiles`; no more tiles than N
    has; ``k_span`` 0 is all of K's blocks) and the parallel tasks they make. Raises
    ``ValueError`` for a span that does not divide K's blocks, or for several tiles per task
    whose partial sums pass :data:`TASK_SUMS_LIMIT`.

    Example:
        >>> import lutc
        >>> task_shape(lutc.MPGemmSpec(1, 4096, 4096, wbits=2, table_dtype="int8"), 64, 2, 4, 8)
        (2, 4, 8, 8)
    """
    NT = -(-spec.N // R)
    C = spec.K // spec.block
    TT = min(default_tiles(spec, R) if tiles is None else tiles, NT)
    G = min(row_groups, -(-NT // TT))
    if k_span and C % k_span:
        raise ValueError(f"knob k_span={k_span} does not divide the {C} blocks of K = {spec.K} "
                         f"(block {spec.block})")
    if G * TT > 1 and sums_bytes(spec, R, TT, G) > TASK_SUMS_LIMIT:     # (one tile's: as ever)
        raise ValueError(f"knobs tiles={tiles}, row_groups={row_groups} at M = {spec.M} need "
                         f"{sums_bytes(spec, R, TT, G) // 1024} KiB of partial sums per task "
                         f"(at most {TASK_SUMS_LIMIT // 1024} KiB)")
    return TT, G, k_span or C, -(-NT // (G * TT))


def task_tile(task, group, tile, row_groups: int, tiles: int):
    """Row tile ``tile`` of group ``group`` of ``task`` (past the last tile the kernel reads the
    last again and stores nothing)."""
    return (task * row_groups + group) * tiles + tile


def lut_kernel(spec, VL: int, shuffle: str, unroll: int = 8, pair_madd: str = "", tiles=None,
               row_groups: int = 1, k_span: int = 0, quad_dot: str = ""):
    """The PrimFunc of the SIMD LUT mpGEMM for ``spec`` (``g = 4``, int8 tables).

    Args:
        VL: bytes per shuffle register (16 NEON, 32 AVX2, 64 AVX-512BW).
        shuffle: the LLVM intrinsic ``(table int8xVL, index int8xVL) -> int8xVL``.
        unroll: groups of a block unrolled together (a knob: unrolling all 32 groups made LLVM
            hoist every weight load of the block and spill on NEON at 2 bits).
        pair_madd: for the ``ptiles{VL}`` layout (planes paired in adjacent bytes), the LLVM
            intrinsic ``(uint8xVL, int8xVL) -> int16x(VL/2)`` that multiplies adjacent bytes by
            ``(2^2p, 2^(2p+1))`` and adds each pair (``vpmaddubsw``): one instruction widens
            and combines two planes, instead of a widening, a shift and an add per plane.
            Uniform codes with 2 or 4 bits and ternary only.
        tiles: row tiles whose lookups share each table register load (None:
            :func:`default_tiles`).
        row_groups: groups of ``tiles`` row tiles per parallel task.
        k_span: the K-block order within a task: 0, each group walks all of K in turn; ``s``, K
            in spans of ``s`` blocks, every group of the task walking the span before the next.
        quad_dot: lookups in quads (the ``gtiles32`` layout; :mod:`schedules.x86` says why): ``shuffle``
            is then a full-register permute ``(table int8x64, index int8x64)`` (AVX-512 VBMI
            ``vpermb``) and this the LLVM intrinsic of a 4-way dot product into int32 lanes
            ``(int32x16, uint8x64, int8x64) -> int32x16`` (VNNI ``vpdpbusd``).

    Arguments of the PrimFunc: ``x [M, K]``, ``planes [NT, K/4, b, VL]`` (``[NT, K/4, b/2,
    VL]`` paired, ``[NT, K/16, b, 64]`` in quads), ``scales`` (tile-major, see :mod:`lutc.formats`), ``zeros`` (zero points
    only), ``out [M, N]``.
    """
    M, N, K, b = spec.M, spec.N, spec.K, spec.planes
    paired = bool(pair_madd)
    QUAD = bool(quad_dot)
    assert not (QUAD and (paired or VL != 64)), "quads: 64-byte registers, one accumulator per plane"
    R = QUAD_ROWS if QUAD else VL if paired else 2 * VL
    NT = -(-N // R)
    KG = K // 4
    B = spec.block
    GB = B // 4                      # groups per block
    C = K // B                       # blocks per row
    per_group = spec.group // B      # blocks per weight group
    NACC = 1 if pair_madd else b     # accumulators per row: one per plane unless paired
    ACC_T = "int32" if QUAD else "int16"    # (a dot product's lanes are int32)
    fmt, zp, sym = spec.format, spec.zero_point, spec.symmetrize
    act, sdt = spec.act_dtype, spec.scale_dtype
    i8, i16 = f"int8x{VL}", f"int16x{VL}"
    dup = 1 if QUAD else VL // 16    # copies of a group's table: one per 128-bit lane a shuffle looks up in
    TW = 16 * dup                    # table bytes per group
    const = spec.code_center         # constant of identity (1) in lutc.frontend
    PLANES, scale_shape, zero_shape = weight_buffers(spec, "gtiles32" if QUAD else f"ptiles{R}" if paired
                                                     else f"tiles{R}")
    GQ = GB // 4 if QUAD else GB     # table registers per block: quads of groups, or groups
    U = next(u for u in range(min(unroll, GQ), 0, -1) if GQ % u == 0)   # a divisor of GQ
    TT, G, KS, NTASK = task_shape(spec, R, tiles, row_groups, k_span)
    GT = G * TT                      # row tiles per task
    nplanes = b // 2 if paired else b       # weight registers per group
    H = VL // 2
    i16h = f"int16x{H}"
    # uint16 of the byte pair (lo, hi) = (1, 2) for uniform codes (times 4^i for pair i), (1, 1) ternary
    pair_unit = 1 + 2 * 256 if fmt == "uniform" else 1 + 256
    # quads: byte 4 j + u of an index register gets u in bits 4-5 (its group's table in the
    # register), and the dot product multiplies each looked-up byte by 1
    quad_bits = T.reinterpret("uint8x64", T.broadcast(T.uint32(0x30201000), 16))
    ones = T.reinterpret("int8x64", T.broadcast(T.uint32(0x01010101), 16))

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), act), planes: T.Buffer(PLANES, "uint8"),
             scales: T.Buffer(scale_shape, sdt), zeros: T.Buffer(zero_shape, sdt),
             out: T.Buffer((M, N), act)):
        T.func_attr({"tirx.noalias": True})
        table = T.alloc_buffer((M, KG * TW), "int8")
        tscale = T.alloc_buffer((M, C), "float32")
        xsum = T.alloc_buffer((M, C), "float32")
        # 1. tables
        for mc in T.parallel(M * C):
            row = T.meta_var(mc // C)          # the row of x ...
            block = T.meta_var(mc % C)         # ... and the K block whose tables this task builds
            amax = T.alloc_buffer((1,), "float32", scope="local")
            bad = T.alloc_buffer((1,), "int32", scope="local")   # NaN/Inf seen (T.max drops NaN)
            amax[0] = T.float32(0)
            bad[0] = 0
            for q in range(GB):
                base = (block) * B + q * 4
                tmax = (T.abs(T.Cast("float32", x[row, base])) + T.abs(T.Cast("float32", x[row, base + 1]))
                        + T.abs(T.Cast("float32", x[row, base + 2]))
                        + T.abs(T.Cast("float32", x[row, base + 3])))
                amax[0] = T.max(amax[0], tmax)
                bad[0] = bad[0] | T.Cast("int32", nonfinite(tmax))
            # NaN in x reaches every output of its row through the scale (the int8 table cannot hold it)
            tscale[row, block] = nan_if(bad[0] != 0, T.max(amax[0], T.float32(1e-30)) / T.float32(127))
            for q in range(GB):
                kg = (block) * GB + q
                for lane in range(dup):
                    # one vector expression over the entries: 4 sign-selects and adds, a divide,
                    # a round, a narrowing store
                    for p in T.vectorized(8 if sym else 16):
                        table[row, kg * TW + lane * 16 + p] = T.Cast("int8", T.round(
                            (T.Select(p & 1 == 1, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4])
                             + T.Select(p & 2 == 2, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4 + 1])
                             + T.Select(p & 4 == 4, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4 + 2])
                             + T.Select(p & 8 == 8, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4 + 3]))
                            / tscale[row, block]))
                    if sym:  # the other half by negation: T[15 - p] = -T[p]
                        for p in T.vectorized(8):
                            table[row, kg * TW + lane * 16 + 15 - p] = T.int8(0) - table[row, kg * TW + lane * 16 + p]
            if zp:
                xsum[row, block] = T.float32(0)
                for k in range(B):
                    xsum[row, block] = xsum[row, block] + T.Cast("float32", x[row, (block) * B + k])
        # 2. lookups and 3. epilogue
        for task in T.parallel(NTASK):
            accf = T.alloc_buffer((GT, M, R), "float32", scope="local")
            acc = T.alloc_buffer((TT, NACC, R), ACC_T, scope="local")
            for u, m in T.grid(GT, M):
                for r in T.vectorized(R):
                    accf[u, m, r] = T.float32(0)
            for span in range(C // KS):
              for rg in range(G):  # noqa: E111 (the task's tile groups, each walking the span's blocks)
                for c1 in range(KS):
                    c = T.meta_var(span * KS + c1)
                    for m in range(M):
                        for tt, a in T.grid(TT, NACC):
                            for r in T.vectorized(R):
                                acc[tt, a, r] = T.Cast(ACC_T, 0)
                        for qo in range(GQ // U):
                          for qi in T.unroll(U):  # noqa: E111 (keeps the body's indentation)
                            kg = T.meta_var(c * GQ + qo * U + qi)    # (with quads: kq, groups 4 kq ..)
                            # one table load (a group's copies, or a quad's four tables), TT tiles' lookups
                            tab = table[m, T.ramp(kg * VL, 1, VL)]
                            if QUAD:
                              for tt in T.unroll(TT):  # noqa: E111 (as the branch below)
                                nt = T.meta_var(T.min(task_tile(task, rg, tt, G, TT), NT - 1))
                                for i in T.unroll(b):
                                    w = planes[nt, kg, i, T.ramp(0, 1, VL)]
                                    low = T.reinterpret(i8, (w & T.broadcast(T.uint8(15), VL)) | quad_bits)
                                    high = T.reinterpret(i8, T.shift_right(w, T.broadcast(T.uint8(4), VL)) | quad_bits)
                                    lo = T.call_llvm_pure_intrin(i8, shuffle, tab, low)     # rows 0..15, 4 groups each
                                    hi = T.call_llvm_pure_intrin(i8, shuffle, tab, high)    # rows 16..31
                                    acc[tt, i, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                                        "int32x16", quad_dot, acc[tt, i, T.ramp(0, 1, 16)], ones, lo)
                                    acc[tt, i, T.ramp(16, 1, 16)] = T.call_llvm_pure_intrin(
                                        "int32x16", quad_dot, acc[tt, i, T.ramp(16, 1, 16)], ones, hi)
                            else:
                              for tt in T.unroll(TT):  # noqa: E111
                                nt = T.meta_var(T.min(task_tile(task, rg, tt, G, TT), NT - 1))
                                for i in T.unroll(nplanes):
                                    w = planes[nt, kg, i, T.ramp(0, 1, VL)]
                                    low = T.reinterpret(i8, w & T.broadcast(T.uint8(15), VL))     # nibbles
                                    high = T.reinterpret(i8, T.shift_right(w, T.broadcast(T.uint8(4), VL)))
                                    lo = T.call_llvm_pure_intrin(i8, shuffle, tab, low)
                                    hi = T.call_llvm_pure_intrin(i8, shuffle, tab, high)
                                    if paired:
                                        # bytes (2r, 2r+1) = planes (2i, 2i+1) of row r: weights (4^i, 2 * 4^i)
                                        pw = T.reinterpret(i8, T.broadcast(
                                            T.Cast("uint16", T.int32(pair_unit) * T.shift_left(T.int32(1), 2 * i)), H))
                                        acc[tt, 0, T.ramp(0, 1, H)] = acc[tt, 0, T.ramp(0, 1, H)] + (
                                            T.call_llvm_pure_intrin(i16h, pair_madd, pw, lo))
                                        acc[tt, 0, T.ramp(H, 1, H)] = acc[tt, 0, T.ramp(H, 1, H)] + (
                                            T.call_llvm_pure_intrin(i16h, pair_madd, pw, hi))
                                    else:
                                        acc[tt, i, T.ramp(0, 1, VL)] = acc[tt, i, T.ramp(0, 1, VL)] + T.Cast(i16, lo)
                                        acc[tt, i, T.ramp(VL, 1, VL)] = acc[tt, i, T.ramp(VL, 1, VL)] + T.Cast(i16, hi)
                        # 3. epilogue: y += d * sum_i coef_i * acc_i (+ zero-point term)
                        for tt in range(TT):
                            nt = T.meta_var(T.min(task_tile(task, rg, tt, G, TT), NT - 1))
                            u = T.meta_var(rg * TT + tt)
                            for i in T.unroll(NACC):
                                for r in T.vectorized(R):
                                    plane_sum = T.meta_var(tscale[m, c] * T.Cast("float32", acc[tt, i, r]))
                                    if fmt == "bcq":
                                        accf[u, m, r] = accf[u, m, r] + plane_sum * T.Cast(
                                            "float32", scales[nt, c // per_group, i, r])
                                    elif fmt == "ternary":
                                        accf[u, m, r] = accf[u, m, r] + plane_sum * plane_coef(spec, i) * T.Cast(
                                            "float32", scales[0])
                                    else:  # a paired accumulator (i = 0) holds sum_i 2^i Q_i: plane 0's 1/2 makes it 2^(i-1)
                                        accf[u, m, r] = accf[u, m, r] + plane_sum * T.Cast(
                                            "float32", scales[nt, c // per_group, r]) * plane_coef(spec, i)
                            if zp:
                                for r in T.vectorized(R):
                                    accf[u, m, r] = accf[u, m, r] + T.Cast("float32", scales[nt, c // per_group, r]) * (
                                        T.float32(const) - T.Cast("float32", zeros[nt, c // per_group, r])) * xsum[m, c]
            for rg, tt, m in T.grid(G, TT, M):
                for r in range(R):
                    n = T.meta_var(task_tile(task, rg, tt, G, TT) * R + r)   # (past N: a repeated tile, not stored)
                    if n < N:
                        out[m, n] = T.Cast(act, accf[rg * TT + tt, m, r])

    return main if zp else drop_param(main, "zeros")
