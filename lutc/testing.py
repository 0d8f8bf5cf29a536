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

from .formats import PackedWeights, quantize
from .runtime import TORCH_DTYPES
from .spec import MPGemmSpec


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


def reference(x, qw: PackedWeights) -> torch.Tensor:
    """``x @ qw.dequantize().T`` in float64 (``x`` taken exactly as given)."""
    xt = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    return xt.detach().cpu().to(torch.float64) @ qw.dequantize().T


def rel_error(y, ref: torch.Tensor) -> float:
    """``max |y - ref| / max |ref|``; NaN or Inf anywhere in ``y`` gives ``inf``."""
    yt = (torch.as_tensor(y) if isinstance(y, np.ndarray) else y).detach().cpu().to(torch.float64)
    if not torch.isfinite(yt).all():
        return float("inf")
    return float((yt - ref).abs().max() / ref.abs().max().clamp_min(1e-300))
