"""Helpers to check kernels against the float64 reference: random cases, the reference, errors.

Used by lutc's own tests and benchmarks; useful for checking a kernel on your own shapes::

    >>> import lutc
    >>> from lutc.testing import random_case, reference, rel_error
    >>> spec = lutc.MPGemmSpec(3, 64, 256, wbits=3, group_size=64)
    >>> x, qw = random_case(spec, seed=0)
    >>> y = lutc.build(spec)(x, qw)
    >>> rel_error(y, reference(x, qw)) < 1e-5
    True
"""
from __future__ import annotations

import numpy as np
import torch

from . import layouts
from .formats import LAYOUT, PackedWeights, quantize, repack
from .frontend import int8_table_error_bound
from .dtypes import TORCH_DTYPES
from .spec import MPGemmSpec

#: Every (format, wbits, zero_point) lutc stores: the one case matrix the kernel tests share.
FORMATS = ([("uniform", b, zp) for b in (1, 2, 3, 4) for zp in (False, True)]
           + [("bcq", b, False) for b in (1, 2, 3, 4)] + [("ternary", 2, False)])
#: The group sizes a format may have (-1: one group per row).
GROUP_SIZES = (32, 64, 128, -1)


def rotation_copies(nbytes: int, pool_bytes: int) -> int:
    """Copies of a weight of ``nbytes`` that together fill ``pool_bytes`` (at least 2): a timing
    loop that calls each copy in turn reads weights that no cache still holds, as a model's
    decode step does. The one rule for the tuner and every benchmark.

    Example:
        >>> rotation_copies(100 << 20, 1 << 30), rotation_copies(2 << 30, 1 << 30)
        (11, 2)
    """
    return max(2, -(-pool_bytes // max(1, nbytes)))

#: Relative error (``max |y - ref| / max |ref|``, :func:`rel_error`) a kernel may have against the
#: float64 reference of its dequantized weight: the output dtype's rounding (float tables) ...
OUTPUT_TOLERANCE = {"float32": 2e-5, "float16": 1.5e-3, "bfloat16": 1e-2}
#: ... or, with int8 tables (or int8 activations, ``dot_mac``), bound (4) of :mod:`lutc.frontend`
#: as it comes out on Gaussian data: about 1.5e-2 of ``max |y|`` (median), up to 4.2e-2 over 40
#: seeds of 1x100x512 W4 with zero points per row (few outputs, so a small ``max |ref|``; 3e-2
#: was exceeded on 3 of them). Tests also check the elementwise bound, which always holds.
INT8_TOLERANCE = 5e-2
#: Elementwise slack of an int8 kernel beyond its exact bound (:func:`int8_table_bound`,
#: :func:`int8_activation_bound`), relative to ``max |y|``: the output dtype's rounding and the
#: float accumulation of the per-block partial sums.
ROUNDING_SLACK = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
#: Relative error of ggml's own CPU mul_mat on a quantized weight (its activations rounded to 8 bits
#: per 32, Q8_0/Q8_K), against the float64 product of the dequantized weight: the examples' and
#: tests' check on ggml's side when lutc runs beside it.
GGML_TOLERANCE = 3e-2


def tolerance(spec: MPGemmSpec) -> float:
    """The relative error lutc's tests, tuner and examples accept for a kernel of ``spec``.

    Example:
        >>> tolerance(MPGemmSpec(1, 64, 256, table_dtype="int8")), tolerance(MPGemmSpec(1, 64, 256))
        (0.05, 2e-05)
    """
    return INT8_TOLERANCE if spec.table_dtype == "int8" else OUTPUT_TOLERANCE[spec.act_dtype]


def random_case(spec: MPGemmSpec, seed: int = 0) -> tuple:
    """Random activations ``x [M, K]`` (torch, ``spec.act_dtype``) and packed weights for ``spec``.

    Weights are Gaussian with a few outliers per row (as LLM weights have), activations
    Gaussian; nothing is zero.
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(spec.N, spec.K, generator=gen) * 0.02
    w[:, :: max(1, spec.K // 3)] *= 8.0
    qw = quantize(w, wbits=spec.wbits, group_size=spec.group_size, format=spec.format,
                  zero_point=spec.zero_point, scale_dtype=spec.scale_dtype)
    x = torch.randn(spec.M, spec.K, generator=gen).to(TORCH_DTYPES[spec.act_dtype])
    return x, qw


def random_weights(spec: MPGemmSpec, seed: int = 0) -> PackedWeights:
    """Random packed weights for ``spec`` (bitplane layout), made directly rather than by
    quantizing: every bit random, coefficients random and nonzero. For timing and checking
    kernels on large shapes, where :func:`random_case`'s quantization (a clip search per group)
    takes a minute.

    Example:
        >>> import lutc
        >>> qw = random_weights(lutc.MPGemmSpec(1, 64, 256, wbits=3, format="bcq"))
        >>> qw.planes.shape, qw.scales.shape
        (torch.Size([3, 64, 32]), torch.Size([64, 2, 3]))
    """
    gen = torch.Generator().manual_seed(seed)
    N, K, b = spec.N, spec.K, spec.wbits
    shapes = layouts.get(LAYOUT).shapes(spec)          # the bitplane layout's tensors, its one owner
    sdt = TORCH_DTYPES[spec.scale_dtype]
    planes = torch.randint(0, 256, shapes["planes"].shape, dtype=torch.uint8, generator=gen)
    scales = (torch.rand(shapes["scales"].shape, generator=gen) * 0.02 + 0.005).to(sdt)
    zeros = None
    if "zeros" in shapes:
        zeros = (torch.rand(shapes["zeros"].shape, generator=gen) * (2 ** b - 1)).to(sdt)
    return PackedWeights(format=spec.format, wbits=b, N=N, K=K, group_size=spec.group_size,
                         zero_point=spec.zero_point, scale_dtype=spec.scale_dtype, planes=planes,
                         scales=scales, zeros=zeros)


def minmax_rounding(weight: torch.Tensor, wbits: int, group_size: int, zero_point: bool = True) -> torch.Tensor:
    """Plain min-max round-to-nearest of ``weight [N, K]`` per group, dequantized (float32): an
    integer zero point mapping the group's min and max onto codes 0 and ``2^b - 1``, or without
    one the symmetric mid-rise grid of its max ``|w|``; fp16 scales. The baseline that
    :func:`lutc.quantize`'s clip search has to beat on real weights.

    Example:
        >>> w = torch.randn(8, 128)
        >>> float((minmax_rounding(w, 4, 64) - w).abs().max()) < 0.5
        True
    """
    N, K = weight.shape
    g, levels = weight.float().reshape(N, K // group_size, group_size), 2 ** wbits - 1
    tiny = 2.0 ** -24                     # the smallest positive float16: no zero scale
    if zero_point:
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        s = ((hi - lo) / levels).clamp_min(tiny).half().float()
        z = torch.round(-lo / s)
        return ((torch.clamp(torch.round(g / s) + z, 0, levels) - z) * s).reshape(N, K)
    s = (g.abs().amax(-1, keepdim=True) * 2 / levels).clamp_min(tiny).half().float()
    return ((torch.clamp(torch.round(g / s + levels / 2), 0, levels) - levels / 2) * s).reshape(N, K)


def reference(x, qw: PackedWeights) -> torch.Tensor:
    """``x @ qw.dequantize().T`` in float64 (``x`` taken exactly as given)."""
    xt = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    return xt.detach().cpu().to(torch.float64) @ qw.dequantize().T


def rel_error(y, ref: torch.Tensor) -> float:
    """``max |y - ref| / max |ref|``; NaN or Inf anywhere in ``y`` gives ``inf``."""
    yt = (torch.as_tensor(y) if isinstance(y, np.ndarray) else y).detach().cpu().to(torch.float64)
    if not torch.isfinite(yt).all():
        return float("inf")
    ref = torch.as_tensor(ref).detach().cpu().to(torch.float64)
    return float((yt - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def int8_table_bound(spec: MPGemmSpec, x, qw: PackedWeights) -> torch.Tensor:
    """Worst-case ``|y - y_exact|`` ``[M, N]`` of an int8-table kernel: bound (4) of
    :mod:`lutc.frontend` for these activations and weight coefficients."""
    return torch.from_numpy(int8_table_error_bound(spec, torch.as_tensor(x).float().numpy(),
                                                   coef_abs(qw)))


def coef_abs(qw: PackedWeights) -> np.ndarray:
    """``sum_i |coef[n, j, i]|`` of :mod:`lutc.frontend`'s epilogue, ``[N, G]``."""
    qw = repack(qw, LAYOUT)
    spec = qw.weight_spec()
    s = qw.scales.double().abs()
    if qw.format == "bcq":
        return s.sum(-1).numpy()
    per_scale = sum(abs(spec.plane_coef(i)) for i in range(spec.planes))
    return (s.expand(qw.N, 1) if qw.format == "ternary" else s).numpy() * per_scale


def int8_activation_bound(spec: MPGemmSpec, x, qw: PackedWeights) -> torch.Tensor:
    """Worst-case ``|y - y_exact|`` ``[M, N]`` of a multiply-add kernel with int8 activations
    (``schedules.dot_mac``): ``sum_k |w_k| dx / 2`` per block."""
    xb = torch.as_tensor(x).double().abs().reshape(spec.M, spec.blocks, spec.block)
    dx = xb.amax(-1) / 127.0                                                  # [M, C]
    w_abs = qw.dequantize().abs().reshape(spec.N, spec.blocks, spec.block).sum(-1)  # [N, C]
    return (dx / 2.0) @ w_abs.T
