"""The runtime: a compiled kernel as a safe Python callable.

TVM kernels trust their arguments: they assume compact, 64-byte-aligned buffers of the right
shape, dtype and device, and a misaligned buffer can crash the process (a vectorized LUT kernel
segfaulted on a ``torch.from_numpy`` view). :class:`Kernel` checks every argument at every call
and either copies it into a safe buffer (inputs that are only non-contiguous or misaligned) or
raises an error that names the argument and what was expected. It never lets a bad buffer reach
the kernel.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from . import layouts
from .dtypes import TORCH_DTYPES
from .formats import PackedWeights, repack
from .memory import in_huge_pages
from .spec import MPGemmSpec

ALIGN = 64  # bytes; what TVM's buffers declare and its vector code assumes

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
        layout: the packed-weight layout the kernel reads (``"bitplane"``, ``"tiles128"``...).
            Weights in another layout are repacked at their first call and the copy is cached
            for as long as the weight object lives; quantize with ``layout=kernel.layout`` (or
            call :meth:`pack` once) to skip that.

    Example:
        >>> import torch, lutc
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
        >>> k = lutc.compile((1, 64, 256), wbits=2, group_size=64)
        >>> k(torch.randn(1, 256), qw).shape
        torch.Size([1, 64])
    """

    def __init__(self, spec: MPGemmSpec, target: dict, device: str, fn: Optional[Callable],
                 source: str, script: str, executable: Any, schedule: str, knobs: dict,
                 layout: str = "bitplane"):
        self.spec = spec
        self.target = target
        self.device = device
        self._fn = fn
        self.source = source
        self.script = script
        self.executable = executable
        self.schedule = schedule
        self.knobs = dict(knobs)
        self.layout = layout
        self.from_cache = False   # set by lutc.cache when loaded from disk
        self.tuned = None         # the tuning record it was built from, if any
        self.origin = "default"   # where its knobs came from: "default", "tuned", "transferred"
        self._x_shape = (spec.M, spec.K)
        self._y_shape = (spec.M, spec.N)
        self._dtype = TORCH_DTYPES[spec.act_dtype]
        # The kernel's explicit cache: weight object -> (ids of its tensors when checked, the
        # checked tensors in this kernel's layout). Entries live as long as the weight object;
        # a weight whose tensors were swapped since is checked (and repacked) again.
        self._prepared: "weakref.WeakKeyDictionary[PackedWeights, tuple]" = weakref.WeakKeyDictionary()

    @property
    def prepared_weights(self) -> int:
        """How many weight objects this kernel holds a checked copy of in its layout (a weight
        passed in another layout is repacked once; the copy goes with the weight object).

        Example:
            >>> import lutc
            >>> lutc.compile((1, 64, 256), wbits=2, group_size=64).prepared_weights
            0
        """
        return len(self._prepared)

    def pack(self, qw: PackedWeights) -> PackedWeights:
        """``qw`` in this kernel's layout, on this kernel's device (a copy unless it already is)."""
        packed = repack(qw, self.layout)
        on_device = all(t.device.type == self.device for t in packed.tensors())
        return packed if on_device else packed.to(self.device)

    @property
    def runnable(self) -> bool:
        return self._fn is not None

    @property
    def function(self) -> Optional[Callable]:
        """The compiled function ``f(x, *weights, out)`` with no argument checks (None when the
        kernel cannot run here): for timing loops over arguments already checked once, as the
        tuner's."""
        return self._fn

    def __repr__(self) -> str:
        s = self.spec
        return (f"Kernel({s.M}x{s.N}x{s.K}, {s.format} w{s.wbits} g{s.group_size}, x {s.act_dtype}, "
                f"{self.schedule}{self.knobs or ''} on {self.target.get('kind')})")

    def __call__(self, x: Array, qw: PackedWeights, out: Optional[Array] = None) -> Array:
        """``y = x @ W^T`` for the weight packed in ``qw``; ``out`` (optional) receives ``y``.

        CUDA kernels run on the current torch stream of ``x``'s device (tvm-ffi sets its stream
        to torch's at every call), never synchronize the host, and may be captured in a CUDA
        graph once a first call has prepared ``qw`` (a repack, if its layout differs, happens
        at that first call).
        """
        self._require_runnable()
        weights = self._weights(qw)
        as_numpy = isinstance(x, np.ndarray)
        if qw.perm is not None:        # act-order weight: its columns are x's features in perm order
            x = _as_torch("x", x)
            x = x.index_select(-1, qw.perm.to(x.device)) if x.dim() == 2 and x.shape[-1] == self.spec.K else x
        if (type(x) is torch.Tensor and x.shape == self._x_shape and x.dtype == self._dtype
                and x.device.type == self.device and _safe(x)):
            xt = x  # the common case, checked in one expression
        else:
            xt = _input("x", x, self._x_shape, self._dtype, self.device)
        dest = None if out is None else _output(out, self._y_shape, self._dtype, self.device)
        y = dest if dest is not None and _safe(dest) else torch.empty(
            self._y_shape, dtype=self._dtype, device=xt.device)
        self._fn(xt, *weights, y)
        if dest is not None:
            if y is not dest:
                dest.copy_(y)  # out was non-contiguous or misaligned: written through a copy
            return out
        return y.numpy() if as_numpy else y

    def _weights(self, qw: PackedWeights) -> list:
        """The checked tensors of ``qw`` in this kernel's layout (cached per weight object)."""
        if not isinstance(qw, PackedWeights):
            raise TypeError(f"qw must be lutc.PackedWeights (from lutc.quantize), got {type(qw).__name__}")
        # identity and version counter of each tensor: an in-place change (qw.scales.mul_(2))
        # or a swapped tensor is seen, and the weight is checked and repacked again
        ids = tuple((id(t), t.data_ptr(), _version(t)) for t in qw.tensors()) + (qw.layout,)
        entry = self._prepared.get(qw)
        if entry is not None and entry[0] == ids:
            return entry[1]
        qw.check_fits(self.spec)
        packed = repack(qw, self.layout)
        held = packed.tensors() if packed is qw else [in_huge_pages(t) for t in packed.tensors()]  # our copy
        expected = layouts.get(self.layout).shapes(self.spec)
        tensors = [_input(f"qw.{name}", t, expected[name].shape, TORCH_DTYPES[expected[name].dtype],
                          self.device, hint_move=True)
                   for name, t in zip(("planes", "scales", "zeros"), held)]
        self._prepared[qw] = (ids, tensors)
        return tensors

    def launch(self, *tensors: torch.Tensor) -> None:
        """Run on ``x, planes, scales[, zeros], out`` whose shapes, dtypes, device and
        contiguity the caller has already checked (the torch op does, with :func:`check_tensor`),
        skipping :meth:`__call__`'s checks: ~15 us less per call. Alignment is still ensured:
        misaligned inputs are copied, and ``out`` must be aligned (a fresh torch allocation).
        """
        self._require_runnable()
        *inputs, out = tensors
        if not _safe(out):
            raise ValueError(f"out must be contiguous and {ALIGN}-byte aligned for Kernel.launch")
        self._fn(*[_aligned(t) for t in inputs], out)

    def _require_runnable(self) -> None:
        if self._fn is None:
            raise RuntimeError(f"this kernel was built for {self.target} and cannot run in this "
                               "process (cross-compiled, or no GPU here): export it instead")


def _version(t: torch.Tensor) -> int:
    """The tensor's version counter (bumped by every in-place change); inference-mode tensors
    have none (-1): their in-place changes are not seen (their identity and storage still are)."""
    return -1 if t.is_inference() else t._version


def _input(name: str, t: Array, shape: tuple, dtype: torch.dtype, device: str,
           hint_move: bool = False) -> torch.Tensor:
    """A tensor the kernel may read: checked, and copied if non-contiguous or misaligned."""
    t = _as_torch(name, t)
    check_tensor(name, t, shape, dtype, device, hint_move)
    return _aligned(t)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if compact and aligned, else a copy that is (a fresh torch allocation is:
    torch's allocators align to 64+ bytes)."""
    return t if _safe(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


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
