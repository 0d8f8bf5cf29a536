"""The runtime: a compiled kernel as a safe Python callable.

TVM kernels trust their arguments: they assume compact, 64-byte-aligned buffers of the right
shape, dtype and device, and a misaligned buffer can crash the process (a vectorized LUT kernel
segfaulted on a ``torch.from_numpy`` view). :class:`Kernel` checks every argument at every call
and either copies it into a safe buffer (inputs that are only non-contiguous or misaligned) or
raises an error that names the argument and what was expected. It never lets a bad buffer reach
the kernel.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from .formats import PackedWeights
from .spec import MPGemmSpec

ALIGN = 64  # bytes; what TVM's buffers declare and its vector code assumes
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Array = Union[np.ndarray, torch.Tensor]


class Kernel:
    """A compiled LUT mpGEMM for one :class:`~lutc.spec.MPGemmSpec` and target.

    Call it as ``y = kernel(x, qw)`` (``x``: ``[M, K]`` numpy or torch; ``qw``: packed weights
    from :func:`lutc.quantize`); ``y`` comes back as the same kind of array as ``x``.

    Attributes:
        spec: the workload.
        target: the TVM target it was built for (``dict`` form).
        device: ``"cpu"`` or ``"cuda"``; ``runnable`` says whether this process can call it
            (a cross-compiled ARM kernel, or CUDA code on a machine without a GPU, cannot).
        source: the generated code (CUDA C for CUDA, LLVM IR for CPUs).
        script: the scheduled TensorIR (TVMScript), for reading what the schedule did.
        executable: the ``tvm.compile`` result, for export.

    Example:
        >>> import torch, lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
        >>> k = lutc.compile((1, 64, 256), wbits=2, group_size=64)
        >>> k(torch.randn(1, 256), qw).shape
        torch.Size([1, 64])
    """

    def __init__(self, spec: MPGemmSpec, target: dict, device: str, fn: Optional[Callable],
                 source: str, script: str, executable: Any, schedule: str, knobs: dict):
        self.spec = spec
        self.target = target
        self.device = device
        self._fn = fn
        self.source = source
        self.script = script
        self.executable = executable
        self.schedule = schedule
        self.knobs = dict(knobs)

    @property
    def runnable(self) -> bool:
        return self._fn is not None

    def __repr__(self) -> str:
        s = self.spec
        return (f"Kernel({s.M}x{s.N}x{s.K}, {s.format} w{s.wbits} g{s.group_size}, x {s.act_dtype}, "
                f"{self.schedule}{self.knobs or ''} on {self.target.get('kind')})")

    def __call__(self, x: Array, qw: PackedWeights, out: Optional[Array] = None) -> Array:
        """``y = x @ W^T`` for the weight packed in ``qw``; ``out`` (optional) receives ``y``."""
        if not self.runnable:
            raise RuntimeError(f"this kernel was built for {self.target} and cannot run in this "
                               "process (cross-compiled, or no GPU here): export it instead")
        spec = self.spec
        if not isinstance(qw, PackedWeights):
            raise TypeError(f"qw must be lutc.PackedWeights (from lutc.quantize), got {type(qw).__name__}")
        qw.check_fits(spec)
        as_numpy = isinstance(x, np.ndarray)
        xt = _input("x", x, (spec.M, spec.K), TORCH_DTYPES[spec.act_dtype], self.device)
        weights = [_input(f"qw.{name}", t, tuple(t.shape), t.dtype, self.device, hint_move=True)
                   for name, t in zip(("planes", "scales", "zeros"), qw.tensors())]
        dtype = TORCH_DTYPES[spec.act_dtype]
        dest = None if out is None else _output(out, (spec.M, spec.N), dtype, self.device)
        y = dest if dest is not None and _safe(dest) else torch.empty(
            (spec.M, spec.N), dtype=dtype, device=xt.device)
        self._fn(xt, *weights, y)
        if dest is not None:
            if y is not dest:
                dest.copy_(y)  # out was non-contiguous or misaligned: written through a copy
            return out
        return y.numpy() if as_numpy else y

    def launch(self, *tensors: torch.Tensor) -> None:
        """Run on ``x, planes, scales[, zeros], out`` whose shapes, dtypes, device and
        contiguity the caller has already checked (the torch op does, with :func:`check_tensor`),
        skipping :meth:`__call__`'s checks: ~15 us less per call. Alignment is still ensured:
        misaligned inputs are copied, and ``out`` must be aligned (a fresh torch allocation).
        """
        if not self.runnable:
            raise RuntimeError(f"this kernel was built for {self.target} and cannot run in this "
                               "process (cross-compiled, or no GPU here): export it instead")
        *inputs, out = tensors
        if not _safe(out):
            raise ValueError(f"out must be contiguous and {ALIGN}-byte aligned for Kernel.launch")
        self._fn(*[t if _safe(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
                   for t in inputs], out)


def _input(name: str, t: Array, shape: tuple, dtype: torch.dtype, device: str,
           hint_move: bool = False) -> torch.Tensor:
    """A tensor the kernel may read: checked, and copied if non-contiguous or misaligned."""
    t = _as_torch(name, t)
    check_tensor(name, t, shape, dtype, device, hint_move)
    if not _safe(t):
        # A fresh allocation is compact and aligned (torch's allocators align to 64+ bytes).
        t = torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
    return t


def _output(t: Array, shape: tuple, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The caller's ``out`` buffer (a torch view of it), checked; it receives ``y``."""
    t = _as_torch("out", t)
    check_tensor("out", t, shape, dtype, device)
    return t


def check_contiguous(name: str, t: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``t`` is contiguous (row-major, compact).

    :class:`Kernel` copies non-contiguous inputs itself; the torch op refuses them instead, so a
    copy never hides inside a compiled graph (the caller decides where ``.contiguous()`` goes).
    """
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (shape {tuple(t.shape)}, strides {tuple(t.stride())}); "
                         f"expected a contiguous tensor: pass {name}.contiguous()")


def _safe(t: torch.Tensor) -> bool:
    """Whether the kernel may touch ``t`` directly: compact and 64-byte aligned."""
    return t.is_contiguous() and t.data_ptr() % ALIGN == 0


def _as_torch(name: str, t: Array) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    if isinstance(t, np.ndarray):
        if t.dtype.kind != "f" and t.dtype != np.uint8:
            raise TypeError(f"{name} has numpy dtype {t.dtype}; expected a float array")
        if not t.flags.writeable or any(st < 0 for st in t.strides):
            t = t.copy()  # torch cannot view read-only memory or negative strides
        return torch.from_numpy(t)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(t).__name__}")


def check_tensor(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype, device: str,
                 hint_move: bool = False) -> None:
    """Raise an error naming ``name`` unless ``t`` has this shape, dtype and device type.

    Shared by :class:`Kernel` and the torch op (``lutc.torch_ops``), so both word their errors
    the same way. ``device`` is a device type (``"cpu"``, ``"cuda"``); ``hint_move`` adds how to
    move packed weights when they are on the wrong device.

    Example:
        >>> check_tensor("x", torch.zeros(2, 3), (2, 4), torch.float32, "cpu")
        Traceback (most recent call last):
        ...
        ValueError: x has shape (2, 3), expected (2, 4)
    """
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}, expected {dtype}")
    if t.device.type != device:
        move = f" (move it once with qw.to({device!r}))" if hint_move else ""
        raise ValueError(f"{name} is on {t.device}, the kernel runs on {device}{move}")
