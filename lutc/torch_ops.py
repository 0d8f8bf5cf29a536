r"""The PyTorch op ``torch.ops.lutc.mpgemm`` and the kernel cache behind it.

``torch.ops.lutc.mpgemm(x, planes, scales, zeros, wbits, group_size, format="uniform", g=4,
symmetrize=True, table_dtype="float32")`` computes ``y[M, N] = x[M, K] @ W[N, K]^T`` for the
weight packed in ``planes``/``scales``/``zeros`` (the tensors of :class:`lutc.PackedWeights`,
layout ``bitplane`` v1). It is a ``torch.library.custom_op``, so it runs in eager mode, traces as
one node under ``torch.compile(fullgraph=True)`` (its ``register_fake`` gives the output shape
and dtype, ``[M, N]`` in ``x``'s dtype, and checks the arguments at trace time) and inside CUDA
graph capture. It takes tensors and plain values only (custom ops cannot take Python objects):
the weight format travels as ints and strings, and ``scale_dtype``/``zero_point``/``N``/``K``
are read from the tensors themselves.

    >>> import torch, lutc, lutc.torch_ops
    >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
    >>> x = torch.randn(3, 256)
    >>> y = torch.ops.lutc.mpgemm(x, qw.planes, qw.scales, qw.zeros, 2, 64)
    >>> y.shape
    torch.Size([3, 64])

Arguments are checked with the runtime's checks (:func:`lutc.runtime.check_tensor`); a wrong
dtype, device, shape, contiguity or bit width raises an error that names the argument and says
what was expected. Unlike :class:`~lutc.runtime.Kernel`, the op refuses non-contiguous inputs
instead of copying them: a copy should be visible in the caller's code (and graph), not hidden in
the op. Inputs that are contiguous but not 64-byte aligned (row slices) are still copied safely.

**M buckets.** A compiled kernel has a static ``M``; the op's ``M`` is known only at run time.
:class:`OpKernels` maps ``M`` to a *bucket*: the next power of two up to 256 (``1, 2, 4, ...,
256``); the rows are zero-padded to the bucket and the padding rows of ``y`` dropped, and an
``M`` above 256 runs in chunks of 256 rows. Why not a kernel per exact ``M``: a model sees many
``M`` (every prompt length), each compile costs ~0.1 s and a kernel, and at small ``M`` a LUT
GEMM's time is reading the weights (the same for 3 rows or 4) plus building one table per row
(cheap), so padding at most doubles the cheap part; at large ``M`` the 256-row chunks keep the
table workspace (``8 M K`` bytes for ``g=4``) and the number of kernels bounded (9 per layer
shape). ``OpKernels(buckets="exact")`` compiles one kernel per ``M`` instead (decode-only
serving with a few fixed batch sizes).

CUDA graphs: the op allocates its output (and any padding) with torch on ``x``'s device, never
synchronizes, and TVM launches on torch's current stream (tvm-ffi reads it from the tensors).
Kernels are compiled on first use, so run the model once before capturing (as for any lazily
initialized CUDA code).

Autograd is not registered: the op is for inference (``torch.no_grad()``/``inference_mode()``);
backward through it raises torch's "no autograd formula" error.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional, Sequence, Union

import torch

from .build import build
from .formats import LAYOUT, PackedWeights
from .frontend import _scale_shape  # the single definition of the scales' shape per format
from .runtime import TORCH_DTYPES, Kernel, check_contiguous, check_tensor
from .spec import MPGemmSpec

#: Row counts lutc compiles kernels for by default (see the module docstring).
DEFAULT_BUCKETS = tuple(2 ** i for i in range(9))  # 1 .. 256
_SCALE_DTYPES = {torch.float32: "float32", torch.float16: "float16"}
_ACT_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}


class OpKernels:
    """Compiled kernels keyed by (spec, M bucket, device type -> target), with the op's bucketing.

    Args:
        buckets: sorted row counts to compile kernels for (default ``1, 2, 4, ..., 256``);
            an ``M`` is padded up to the next bucket, and an ``M`` above the last bucket runs in
            chunks of that size. ``"exact"``: one kernel per distinct ``M``, no padding.
        targets: device type -> lutc target, e.g. ``{"cpu": "x86", "cuda": "cuda:sm_80"}``;
            default: this CPU, and the visible GPU's architecture.
        schedule, knobs: passed to :func:`lutc.build` (default: the target's schedule).

    The op uses the process-wide :func:`kernel_cache`. Example:

        >>> cache = OpKernels()
        >>> [cache.bucket(m) for m in (1, 3, 16, 17, 300)]
        [1, 4, 16, 32, 256]
        >>> cache.plan(300)          # (first row, rows, bucket) per kernel call
        [(0, 256, 256), (256, 44, 64)]
    """

    def __init__(self, buckets: Union[Sequence[int], str] = DEFAULT_BUCKETS,
                 targets: Optional[dict] = None, schedule=None, knobs: Optional[dict] = None):
        if buckets == "exact":
            self.buckets = None
        else:
            self.buckets = tuple(sorted(int(b) for b in buckets))
            if not self.buckets or self.buckets[0] < 1:
                raise ValueError(f"buckets must be positive row counts, got {buckets!r}")
        self.targets = dict(targets or {})
        self.schedule = schedule
        self.knobs = dict(knobs or {})
        self._kernels: dict = {}
        self._lock = threading.Lock()

    def bucket(self, M: int) -> int:
        """The kernel ``M`` that ``M`` rows run with (for ``M`` up to the largest bucket)."""
        if self.buckets is None:
            return M
        for b in self.buckets:
            if b >= M:
                return b
        return self.buckets[-1]

    def plan(self, M: int) -> list:
        """``(first row, rows, bucket)`` for each kernel call that ``M`` rows take."""
        if self.buckets is None:
            return [(0, M, M)] if M else []
        top, calls, start = self.buckets[-1], [], 0
        while start < M:
            rows = min(top, M - start)
            calls.append((start, rows, self.bucket(rows)))
            start += rows
        return calls

    def get(self, spec: MPGemmSpec, device: Union[str, torch.device] = "cpu") -> Kernel:
        """The kernel for ``spec`` (its ``M`` as given) on ``device``'s type, compiled on first use."""
        return self._get(spec, spec.M, torch.device(device).type)

    def _get(self, spec: MPGemmSpec, M: int, dev: str) -> Kernel:
        # Keyed by (spec, M, device type) so a hit costs no new MPGemmSpec (run() passes the
        # M = 1 spec of the op and the bucket).
        key = (spec, M, dev)
        kernel = self._kernels.get(key)
        if kernel is None:
            with self._lock:  # one compile per key even when threads race
                kernel = self._kernels.get(key)
                if kernel is None:
                    # The op's weights are bitplane v1; kernels reading another layout (the SIMD
                    # ones) would need the weights repacked per call: build() then takes the
                    # target's generic schedule, which reads bitplane (same math, slower).
                    kernel = build(spec.with_(M=M), self._target(dev), self.schedule, self.knobs,
                                   layout=LAYOUT)
                    if not kernel.runnable:
                        raise RuntimeError(f"lutc built {kernel!r} for {dev} but cannot run it in "
                                           "this process (no GPU driver?)")
                    self._kernels[key] = kernel
        return kernel

    def run(self, spec: MPGemmSpec, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        """``y = x @ W^T`` for any number of rows of ``x`` (``spec.M`` is ignored).

        ``weights``: ``planes, scales[, zeros]``. The arguments must have passed
        :func:`check_args` (this is the op's fast path: the kernels skip their own checks).
        """
        M, N, K = x.shape[0], spec.N, spec.K
        y = torch.empty((M, N), dtype=x.dtype, device=x.device)
        dev = x.device.type
        if M and self.bucket(M) == M:  # M is a bucket (decode: M = 1): one call, no slicing
            self._get(spec, M, dev).launch(x, *weights, y)
            return y
        for start, rows, bucket in self.plan(M):
            kernel = self._get(spec, bucket, dev)
            if rows == bucket:  # a whole 256-row chunk: 64-byte aligned rows of x and y
                kernel.launch(x[start:start + rows], *weights, y[start:start + rows])
                continue
            # Zero rows give all-zero tables and outputs; they are dropped again below.
            xp = torch.zeros((bucket, K), dtype=x.dtype, device=x.device)
            xp[:rows] = x[start:start + rows]
            yp = torch.empty((bucket, N), dtype=x.dtype, device=x.device)
            kernel.launch(xp, *weights, yp)
            y[start:start + rows] = yp[:rows]
        return y

    def kernels(self) -> list:
        """The kernels compiled so far."""
        return list(self._kernels.values())

    def clear(self) -> None:
        with self._lock:
            self._kernels.clear()

    def __len__(self) -> int:
        return len(self._kernels)

    def _target(self, dev: str):
        if dev in self.targets:
            return self.targets[dev]
        if dev == "cpu":
            return None
        if dev == "cuda":
            return "cuda"
        raise ValueError(f"lutc kernels run on cpu or cuda, not {dev}")


_CACHE = OpKernels()


def kernel_cache() -> OpKernels:
    """The process-wide cache the op compiles into."""
    return _CACHE


def set_kernel_cache(cache: OpKernels) -> OpKernels:
    """Replace the process-wide cache (e.g. other buckets or targets); returns the old one."""
    global _CACHE
    if not isinstance(cache, OpKernels):
        raise TypeError(f"cache must be a lutc.torch_ops.OpKernels, got {type(cache).__name__}")
    old, _CACHE = _CACHE, cache
    return old


@functools.lru_cache(maxsize=4096)
def _spec(N: int, K: int, wbits: int, format: str, group_size: int, zero_point: bool,
          act_dtype: str, scale_dtype: str, g: int, symmetrize: bool, table_dtype: str) -> MPGemmSpec:
    # Validation raises SpecError naming the field; cached so a call costs a dict lookup.
    return MPGemmSpec(1, N, K, wbits=wbits, format=format, group_size=group_size,
                      zero_point=zero_point, act_dtype=act_dtype, scale_dtype=scale_dtype, g=g,
                      symmetrize=symmetrize, table_dtype=table_dtype)


def check_args(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor,
               zeros: Optional[torch.Tensor], wbits: int, group_size: int, format: str = "uniform",
               g: int = 4, symmetrize: bool = True, table_dtype: str = "float32") -> MPGemmSpec:
    """Check the op's arguments (no data is read) and return their spec (with ``M = 1``).

    Raises ``TypeError`` (dtype), ``ValueError`` (shape, device, contiguity, bit planes) or
    :class:`lutc.SpecError` (an unsupported format), each naming the argument.

    Example:
        >>> import lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
        >>> check_args(torch.randn(3, 256), qw.planes, qw.scales, None, wbits=3, group_size=64)
        Traceback (most recent call last):
        ...
        ValueError: planes holds 2 bit planes, expected 3 for wbits=3, format='uniform'
    """
    if x.dim() != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected 2-D [M, K] (reshape leading "
                         "dimensions into M, as lutc.LUTLinear does)")
    if x.dtype not in _ACT_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}, expected one of "
                        f"{', '.join(str(d) for d in _ACT_DTYPES)}")
    if planes.dtype != torch.uint8:
        raise TypeError(f"planes has dtype {planes.dtype}, expected torch.uint8 (packed bits)")
    if planes.dim() != 3:
        raise ValueError(f"planes has shape {tuple(planes.shape)}, expected 3-D [bit planes, N, K/8]")
    if scales.dtype not in _SCALE_DTYPES:
        raise TypeError(f"scales has dtype {scales.dtype}, expected torch.float16 or torch.float32")
    dev = x.device
    named = [("planes", planes), ("scales", scales)] + ([("zeros", zeros)] if zeros is not None else [])
    for name, t in named:
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device}, expected {dev} (the device of x): move the "
                             "packed weights with .to() (LUTLinear: module.to(device))")
    if dev.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"x is on {dev}: lutc kernels run on cpu or cuda")
    # int() specializes symbolic K/N under torch.compile: kernels are compiled per K and N anyway.
    N, K = int(planes.shape[1]), int(x.shape[1])
    spec = _spec(N, K, int(wbits), str(format), int(group_size), zeros is not None,
                 _ACT_DTYPES[x.dtype], _SCALE_DTYPES[scales.dtype], int(g), bool(symmetrize),
                 str(table_dtype))
    if planes.shape[0] != spec.planes:
        raise ValueError(f"planes holds {planes.shape[0]} bit planes, expected {spec.planes} for "
                         f"wbits={wbits}, format={format!r}")
    check_tensor("planes", planes, (spec.planes, N, K // 8), torch.uint8, dev.type)
    check_tensor("scales", scales, _scale_shape(spec), scales.dtype, dev.type)
    if zeros is not None:
        check_tensor("zeros", zeros, (N, spec.groups), scales.dtype, dev.type)
    for name, t in [("x", x)] + named:
        check_contiguous(name, t)
    return spec


@torch.library.custom_op("lutc::mpgemm", mutates_args=())
def mpgemm(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor,
           zeros: Optional[torch.Tensor], wbits: int, group_size: int, format: str = "uniform",
           g: int = 4, symmetrize: bool = True, table_dtype: str = "float32") -> torch.Tensor:
    """``y[M, N] = x[M, K] @ W[N, K]^T`` for packed ``W`` (module docstring); ``y`` in x's dtype."""
    spec = check_args(x, planes, scales, zeros, wbits, group_size, format, g, symmetrize, table_dtype)
    return _CACHE.run(spec, x, planes, scales, *([zeros] if zeros is not None else []))


@mpgemm.register_fake
def _mpgemm_fake(x, planes, scales, zeros, wbits, group_size, format="uniform", g=4,
                 symmetrize=True, table_dtype="float32"):
    # Same checks at trace time, so torch.compile reports a bad argument before running anything.
    check_args(x, planes, scales, zeros, wbits, group_size, format, g, symmetrize, table_dtype)
    return x.new_empty((x.shape[0], planes.shape[1]))


def linear(x: torch.Tensor, qw: PackedWeights, bias: Optional[torch.Tensor] = None, g: int = 4,
           symmetrize: bool = True, table_dtype: str = "float32") -> torch.Tensor:
    """``F.linear`` for a packed weight: ``x [..., K]`` -> ``[..., N]`` (plus ``bias``).

    Leading dimensions are flattened into ``M`` (copied if that needs a copy), then the op runs.

    Example:
        >>> import lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=4, group_size=64)
        >>> linear(torch.randn(2, 3, 256), qw).shape
        torch.Size([2, 3, 64])
    """
    return _linear(x, qw.planes, qw.scales, qw.zeros, qw.N, qw.K, qw.wbits, qw.group_size, qw.format,
                   bias, g, symmetrize, table_dtype)


def _linear(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
            N: int, K: int, wbits: int, group_size: int, format: str, bias: Optional[torch.Tensor],
            g: int, symmetrize: bool, table_dtype: str) -> torch.Tensor:
    """:func:`linear` on the packed tensors themselves (``LUTLinear.forward`` holds buffers)."""
    if x.shape[-1] != K:
        # Checked here: a reshape to [-1, K] would otherwise silently regroup the numbers.
        raise ValueError(f"x has shape {tuple(x.shape)}, expected last dimension in_features={K}")
    y = torch.ops.lutc.mpgemm(x.reshape(-1, K).contiguous(), planes, scales, zeros, wbits, group_size,
                              format, g, symmetrize, table_dtype)
    y = y.reshape(*x.shape[:-1], N)
    return y if bias is None else y + bias.to(y.dtype)


__all__ = ["mpgemm", "linear", "check_args", "OpKernels", "kernel_cache", "set_kernel_cache",
           "DEFAULT_BUCKETS"]
