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
2. **Lookups**, parallel over row tiles of ``2 VL``: for each block, each row of x, each group
   (unrolled) and each plane (unrolled): load the table register once per group and the weight
   register once per plane, split the nibbles (``& 15``, ``>> 4``), two shuffles, widen to int16
   and add into the plane's own accumulator: ``b`` independent add chains (one chain was
   latency-bound: llvm-mca gave IPC 1.2-1.6 on Neoverse-V1), and widen+add fuse (NEON
   ``saddw``). With paired planes (x86 ``vpmaddubsw``, see ``pair_madd``) one accumulator holds
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


def lut_kernel(spec, VL: int, shuffle: str, unroll: int = 8, pair_madd: str = ""):
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

    Arguments of the PrimFunc: ``x [M, K]``, ``planes [NT, K/4, b, VL]`` (``[NT, K/4, b/2,
    VL]`` paired), ``scales`` (tile-major, see :mod:`lutc.formats`), ``zeros`` (zero points
    only), ``out [M, N]``.
    """
    M, N, K, b = spec.M, spec.N, spec.K, spec.planes
    paired = bool(pair_madd)
    R = VL if paired else 2 * VL
    NT = -(-N // R)
    KG = K // 4
    B = spec.block
    GB = B // 4                      # groups per block
    C = K // B                       # blocks per row
    per_group = spec.group // B      # blocks per weight group
    NACC = 1 if pair_madd else b     # int16 accumulators per row: one per plane unless paired
    fmt, zp, sym = spec.format, spec.zero_point, spec.symmetrize
    act, sdt = spec.act_dtype, spec.scale_dtype
    i8, i16 = f"int8x{VL}", f"int16x{VL}"
    dup = VL // 16
    const = spec.code_center         # constant of identity (1) in lutc.frontend
    PLANES, scale_shape, zero_shape = weight_buffers(spec, f"ptiles{R}" if paired else f"tiles{R}")
    U = next(u for u in range(min(unroll, GB), 0, -1) if GB % u == 0)   # a divisor of GB
    nplanes = b // 2 if paired else b       # weight registers per group
    H = VL // 2
    i16h = f"int16x{H}"
    # uint16 of the byte pair (lo, hi) = (1, 2) for uniform codes (times 4^i for pair i), (1, 1) ternary
    pair_unit = 1 + 2 * 256 if fmt == "uniform" else 1 + 256

    @T.prim_func(s_tir=True)
    def main(x: T.Buffer((M, K), act), planes: T.Buffer(PLANES, "uint8"),
             scales: T.Buffer(scale_shape, sdt), zeros: T.Buffer(zero_shape, sdt),
             out: T.Buffer((M, N), act)):
        T.func_attr({"tirx.noalias": True})
        table = T.alloc_buffer((M, KG, VL), "int8")
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
                        table[row, kg, lane * 16 + p] = T.Cast("int8", T.round(
                            (T.Select(p & 1 == 1, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4])
                             + T.Select(p & 2 == 2, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4 + 1])
                             + T.Select(p & 4 == 4, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4 + 2])
                             + T.Select(p & 8 == 8, T.float32(1), T.float32(-1)) * T.Cast("float32", x[row, kg * 4 + 3]))
                            / tscale[row, block]))
                    if sym:  # the other half by negation: T[15 - p] = -T[p]
                        for p in T.vectorized(8):
                            table[row, kg, lane * 16 + 15 - p] = T.int8(0) - table[row, kg, lane * 16 + p]
            if zp:
                xsum[row, block] = T.float32(0)
                for k in range(B):
                    xsum[row, block] = xsum[row, block] + T.Cast("float32", x[row, (block) * B + k])
        # 2. lookups and 3. epilogue
        for nt in T.parallel(NT):
            accf = T.alloc_buffer((M, R), "float32", scope="local")
            acc = T.alloc_buffer((NACC, R), "int16", scope="local")
            for m in range(M):
                for r in T.vectorized(R):
                    accf[m, r] = T.float32(0)
            for c in range(C):
                for m in range(M):
                    for a in range(NACC):
                        for r in T.vectorized(R):
                            acc[a, r] = T.int16(0)
                    for qo in range(GB // U):
                      for qi in T.unroll(U):  # noqa: E111 (keeps the body's indentation)
                        tab = table[m, c * GB + qo * U + qi, T.ramp(0, 1, VL)]
                        for i in T.unroll(nplanes):
                            w = planes[nt, c * GB + qo * U + qi, i, T.ramp(0, 1, VL)]
                            lo = T.call_llvm_pure_intrin(i8, shuffle, tab, T.reinterpret(i8, w & T.broadcast(T.uint8(15), VL)))
                            hi = T.call_llvm_pure_intrin(i8, shuffle, tab, T.reinterpret(i8, T.shift_right(w, T.broadcast(T.uint8(4), VL))))
                            if paired:
                                # bytes (2r, 2r+1) = planes (2i, 2i+1) of row r: weights (4^i, 2 * 4^i)
                                pw = T.reinterpret(i8, T.broadcast(
                                    T.Cast("uint16", T.int32(pair_unit) * T.shift_left(T.int32(1), 2 * i)), H))
                                acc[0, T.ramp(0, 1, H)] = acc[0, T.ramp(0, 1, H)] + T.call_llvm_pure_intrin(i16h, pair_madd, pw, lo)
                                acc[0, T.ramp(H, 1, H)] = acc[0, T.ramp(H, 1, H)] + T.call_llvm_pure_intrin(i16h, pair_madd, pw, hi)
                            else:
                                acc[i, T.ramp(0, 1, VL)] = acc[i, T.ramp(0, 1, VL)] + T.Cast(i16, lo)
                                acc[i, T.ramp(VL, 1, VL)] = acc[i, T.ramp(VL, 1, VL)] + T.Cast(i16, hi)
                    # 3. epilogue: y += d * sum_i coef_i * acc_i (+ zero-point term)
                    for i in T.unroll(NACC):
                        for r in T.vectorized(R):
                            if fmt == "bcq":
                                accf[m, r] = accf[m, r] + tscale[m, c] * T.Cast(
                                    "float32", scales[nt, c // per_group, i, r]) * T.Cast("float32", acc[i, r])
                            elif fmt == "ternary":
                                accf[m, r] = accf[m, r] + tscale[m, c] * plane_coef(spec, i) * T.Cast(
                                    "float32", scales[0]) * T.Cast("float32", acc[i, r])
                            else:  # a paired accumulator (i = 0) holds sum_i 2^i Q_i: plane 0's 1/2 makes it 2^(i-1)
                                accf[m, r] = accf[m, r] + tscale[m, c] * T.Cast(
                                    "float32", scales[nt, c // per_group, r]) * plane_coef(spec, i) * T.Cast(
                                    "float32", acc[i, r])
                    if zp:
                        for r in T.vectorized(R):
                            accf[m, r] = accf[m, r] + T.Cast("float32", scales[nt, c // per_group, r]) * (
                                T.float32(const) - T.Cast("float32", zeros[nt, c // per_group, r])) * xsum[m, c]
            for m in range(M):
                for r in range(R):
                    if nt * R + r < N:
                        out[m, nt * R + r] = T.Cast(act, accf[m, r])

    return main if zp else drop_param(main, "zeros")
