r"""The front end: mpGEMM described the LUT way, as a TensorIR PrimFunc (built with TE).

What is computed (``how`` is the schedules' business) for ``y[m, n] = sum_k x[m, k] W[n, k]``:

**Bit-serial decomposition.** Every format of :mod:`lutc.formats` writes a weight as one-bit
planes ``sigma_i[n, k] in {-1, +1}`` with per-group coefficients. For a ``b``-bit unsigned code
``q = sum_i 2^i bit_i`` and ``bit_i = (1 + sigma_i) / 2``::

    q = (2^b - 1)/2 + sum_i 2^(i-1) sigma_i                                           (1)

so a uniform weight ``s (q - z)`` is ``s (sum_i 2^(i-1) sigma_i + c)`` with the constant
``c = (2^b - 1)/2 - z``: ``b`` signed planes plus a constant that multiplies the group's
activation sum. Symmetric codes (``z = (2^b - 1)/2``) make ``c = 0``; BCQ weights are
``sum_i alpha_i sigma_i`` (``c = 0``); ternary ``t = (sigma_0 + sigma_1)/2`` (``c = 0``).

**Table precompute.** Split each row of ``x`` into groups of ``g`` activations. For group ``kg``
and every ``g``-bit pattern ``p`` the table holds the signed partial sum::

    T[m, kg, p] = sum_{j<g} (+x[m, g kg + j] if bit j of p else -x[m, g kg + j])      (2)

A plane's ``g`` bits over that group are exactly such a ``p``, so
``sum_{j<g} sigma_i[n, g kg + j] x[m, g kg + j] = T[m, kg, p_i[n, kg]]``: one lookup replaces
``g`` multiply-adds, and the table is shared by all ``N`` rows.

**Table symmetrization.** Complementing every bit of ``p`` negates every term of (2), so
``T[~p] = -T[p]`` exactly (no rounding: negation is exact in floating point and in int8 with
the symmetric range [-127, 127]). Only the ``2^(g-1)`` entries whose top bit is 0 are stored::

    T[p] = (1 - 2 t) * H[(p XOR -t) & (2^(g-1) - 1)],   t = p >> (g-1)                (3)

(``-t`` is all ones when ``t = 1``, so the XOR complements ``p``.)

**Epilogue.** Lookups are summed over *blocks* of ``B = spec.block`` activations (the weight
group, or a slice of it when the group is longer than 128: short sums stay in registers and
give int8 tables a finer scale). With ``P[m, n, c, i]`` the sum of plane ``i``'s lookups over
block ``c``, and ``j(c)`` the weight group holding block ``c``::

    y[m, n] = sum_c  s[n, j] (sum_i 2^(i-1) P[m, n, c, i] + c[n, j] X[m, c])   (uniform)
            = sum_c  sum_i alpha[n, j, i] P[m, n, c, i]                          (bcq)
            = s/2 sum_c (P[m, n, c, 0] + P[m, n, c, 1])                          (ternary)

where ``X[m, c]`` is the activation sum of block ``c`` (only with zero points).

**int8 tables** (``table_dtype="int8"``). ``T`` is rounded to ``Q = round(T / d)`` with one scale
``d[m, c] = max |T[m, kg, :]| / 127`` over the tables of block ``c``; lookups accumulate exactly
in int32 and ``P = d * sum Q``. Each lookup is off by at most ``d/2``, so for one output::

    |y - y_exact| <= sum_c (B / g) (d[m, c] / 2) sum_i |coef[n, j(c), i]|           (4)

(``B/g`` lookups per plane per block, ``coef`` = ``s 2^(i-1)``, ``alpha_i`` or ``s/2``); the
rounding errors are independent, so the typical error is about ``1/sqrt(3 B/g)`` of that
bound. :func:`int8_table_error_bound` evaluates (4) for the tests.

Blocks (names the schedules use): ``table`` [M, K/g, E] (E = 2^g or 2^(g-1)), for int8 tables
also ``table_absmax`` [M, C], ``table_nan`` [M, C] (1 where the block's activations hold NaN or
Inf: the scale is then NaN (:func:`nan_if`), so NaN in ``x`` gives NaN in ``y`` as with float
tables),
``table_scale`` [M, C], ``table_q`` [M, K/g, E] (C = K/B);
``act_sum`` [M, C] (zero points only); ``partial`` [M, N, C, b]; ``out`` [M, N] in float32;
``y`` [M, N] cast to the activation dtype (absent for float32).

Arguments of the PrimFunc, in order: ``x [M, K]``, ``planes [b, N, K/8] uint8``, ``scales``
(``[N, G]``, ``[N, G, b]`` for bcq, ``[1]`` for ternary), ``zeros [N, G]`` (zero points only),
and the output ``[M, N]`` (buffer ``out`` for float32 activations, ``y`` otherwise).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from . import layouts
from .spec import MPGemmSpec

F32 = "float32"


def lut_mpgemm(spec: MPGemmSpec) -> tirx.PrimFunc:
    """The LUT mpGEMM of ``spec`` as an unscheduled TensorIR PrimFunc (module docstring).

    Example:
        >>> from lutc.spec import MPGemmSpec
        >>> f = lut_mpgemm(MPGemmSpec(1, 64, 128, wbits=2, group_size=32))
        >>> [p.name for p in f.params]
        ['x', 'planes', 'scales', 'out']
    """
    M, N, K, b = spec.M, spec.N, spec.K, spec.planes
    C, B, g = spec.blocks, spec.block, spec.g
    x = te.placeholder((M, K), spec.act_dtype, name="x")
    weight = layouts.get(layouts.BITPLANE).shapes(spec)   # the front end reads bitplane weights
    planes, scales, zeros = (te.placeholder(weight[n].shape, weight[n].dtype, name=n) if n in weight else None
                             for n in ("planes", "scales", "zeros"))

    table = _table(spec, x)
    lookup_table, table_scale = table, None
    if spec.table_dtype == "int8":
        lookup_table, table_scale = _quantize_table(spec, table, x)
    acc_dtype = "int32" if spec.table_dtype == "int8" else F32

    r = te.reduce_axis((0, B // g), name="r")
    partial = te.compute(
        (M, N, C, b),
        lambda m, n, c, i: te.sum(
            _lookup(spec, lookup_table, planes, m, n, c * (B // g) + r, i).astype(acc_dtype), axis=r),
        name="partial")

    act_sum = None
    if spec.needs_act_sum:
        ks = te.reduce_axis((0, B), name="ks")
        act_sum = te.compute((M, C), lambda m, c: te.sum(x[m, c * B + ks].astype(F32), axis=ks),
                             name="act_sum")

    c = te.reduce_axis((0, C), name="c")
    out = te.compute(
        (M, N),
        lambda m, n: te.sum(_epilogue(spec, partial, table_scale, scales, zeros, act_sum, m, n, c), axis=c),
        name="out")
    args = [x, planes, scales] + ([zeros] if zeros is not None else [])
    if spec.act_dtype == F32:
        return te.create_prim_func(args + [out])
    y = te.compute((M, N), lambda m, n: out[m, n].astype(spec.act_dtype), name="y")
    return te.create_prim_func(args + [y])


def _table(spec: MPGemmSpec, x: te.Tensor) -> te.Tensor:
    """Equation (2); with symmetrization only the patterns whose top bit is 0 (so ``-x`` there)."""
    g = spec.g

    def entry(m, kg, p):
        terms = []
        for jj in range(g):
            a = x[m, kg * g + jj].astype(F32)
            if spec.symmetrize and jj == g - 1:
                terms.append(-a)  # top bit of a stored pattern is always 0
            else:
                terms.append(tirx.Select(((p >> jj) & 1) == 1, a, -a))
        return sum(terms[1:], terms[0])

    return te.compute((spec.M, spec.table_groups, spec.table_entries), entry, name="table")


def _quantize_table(spec: MPGemmSpec, table: te.Tensor, x: te.Tensor):
    """int8 table with one scale per (row of x, block): ``Q = round(T / d)``."""
    per = spec.block // spec.g
    rk = te.reduce_axis((0, per), name="rk")
    rp = te.reduce_axis((0, spec.table_entries), name="rp")
    absmax = te.compute((spec.M, spec.blocks),
                        lambda m, c: te.max(tirx.abs(table[m, c * per + rk, rp]), axis=[rk, rp]),
                        name="table_absmax")
    # NaN (or Inf) in a block's activations must reach the output, as in F.linear: a max
    # reduction may drop NaN and an int8 cast cannot hold it, so the scale carries it (a flag
    # per block, then a NaN scale).
    rk2 = te.reduce_axis((0, spec.block), name="rk2")
    nan = te.compute((spec.M, spec.blocks),
                     lambda m, c: te.max(nonfinite(x[m, c * spec.block + rk2].astype(F32)).astype("int32"),
                                         axis=rk2),
                     name="table_nan")
    # A block of zero activations has an all-zero table: any positive scale is exact there.
    scale = te.compute((spec.M, spec.blocks),
                       lambda m, j: nan_if(nan[m, j] > 0, tirx.max(absmax[m, j], tirx.const(1e-30, F32))
                                           / tirx.const(127.0, F32)),
                       name="table_scale")
    q = te.compute(table.shape,
                   lambda m, kg, p: tirx.round(table[m, kg, p] / scale[m, kg // per]).astype("int8"),
                   name="table_q")
    return q, scale


def nonfinite(v):
    """``v`` (float32) is NaN or +-Inf (``v - v != 0`` would be simplified away by TVM's
    arithmetic, and a ``max`` reduction may drop NaN)."""
    return tirx.bitwise_not(tirx.isfinite(v))


def nan_if(flag, v):
    """``v`` (float32), or NaN where ``flag`` holds: how an int8 kernel passes NaN in ``x`` on
    to ``y`` (its int8 tables and activations cannot hold NaN; the scale can)."""
    return tirx.Select(flag, tirx.const(float("nan"), F32), v)


def _index(spec: MPGemmSpec, planes: te.Tensor, i, n, kg):
    """The ``g``-bit pattern of plane ``i``, row ``n``, activation group ``kg`` (layout v1)."""
    bit = kg * spec.g
    byte = planes[i, n, bit // 8]
    shift = (bit % 8).astype("uint8")
    return ((byte >> shift) & tirx.const(2 ** spec.g - 1, "uint8")).astype("int32")


def _lookup(spec: MPGemmSpec, table: te.Tensor, planes: te.Tensor, m, n, kg, i):
    """One table lookup, through equation (3) when the table is symmetrized."""
    p = _index(spec, planes, i, n, kg)
    if not spec.symmetrize:
        return table[m, kg, p]
    top = p >> (spec.g - 1)
    half = (p ^ (0 - top)) & (2 ** (spec.g - 1) - 1)
    sign = (1 - 2 * top).astype(table.dtype)
    return sign * table[m, kg, half]


def _epilogue(spec, partial, table_scale, scales, zeros, act_sum, m, n, c):
    """The per-block term of ``y[m, n]`` (module docstring, Epilogue)."""
    j = c // (spec.group // spec.block)  # the weight group holding block c

    def P(i):
        v = partial[m, n, c, i].astype(F32)
        return v * table_scale[m, c] if table_scale is not None else v

    b = spec.planes
    if spec.format == "ternary":
        return scales[0].astype(F32) * tirx.const(spec.plane_coef(0), F32) * (P(0) + P(1))
    if spec.format == "bcq":
        terms = [scales[n, j, i].astype(F32) * P(i) for i in range(b)]
        return sum(terms[1:], terms[0])
    terms = [tirx.const(spec.plane_coef(i), F32) * P(i) for i in range(b)]
    inner = sum(terms[1:], terms[0])
    if spec.zero_point:
        const = tirx.const(spec.code_center, F32) - zeros[n, j].astype(F32)
        inner = inner + const * act_sum[m, c]
    return scales[n, j].astype(F32) * inner


def int8_table_error_bound(spec: MPGemmSpec, x: np.ndarray, coef_abs: np.ndarray) -> np.ndarray:
    """Worst-case ``|y - y_exact|`` of an int8 table, equation (4), per output ``[M, N]``.

    Args:
        x: the activations ``[M, K]`` (float).
        coef_abs: ``sum_i |coef[n, j, i]|`` per row and weight group, ``[N, G]``.
    """
    x = np.asarray(x, np.float64).reshape(spec.M, spec.table_groups, spec.g)
    tmax = np.abs(x).sum(-1)                                       # max_p |T[m, kg, p]|
    d = tmax.reshape(spec.M, spec.blocks, -1).max(-1) / 127.0      # [M, C]
    coef = np.repeat(np.asarray(coef_abs, np.float64), spec.group // spec.block, axis=1)  # [N, C]
    return (d * (spec.block // spec.g) / 2.0) @ coef.T
