"""``LUTLinear`` (an ``nn.Linear`` with packed low-bit weights) and ``quantize_model``.

    >>> import torch, lutc
    >>> model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 128))
    >>> model = lutc.quantize_model(model, wbits=4, group_size=64)
    >>> model[0]
    LUTLinear(in_features=256, out_features=512, bias=True, uniform w4 g64)
    >>> model(torch.randn(2, 5, 256)).shape
    torch.Size([2, 5, 128])

The forward runs ``torch.ops.lutc.mpgemm`` (:mod:`lutc.torch_ops`): any leading batch dimensions,
``M`` known only at run time (kernels per ``M`` bucket, compiled on first use and cached),
float32/float16/bfloat16 activations, eager or ``torch.compile(fullgraph=True)``, CPU or CUDA.

**State dict.** The packed tensors are buffers (``planes``, ``scales`` and, with zero points,
``zeros``; ``bias`` is a frozen parameter) and the metadata (format, wbits, group_size,
zero_point, scale_dtype, N, K, layout, layout_version and the LUT knobs) is the module's extra
state, so ``torch.save(model.state_dict())`` / ``load_state_dict`` round-trip exactly. Loading
refuses a checkpoint whose layout or layout version this lutc does not read, or whose weight
format differs from the module's, with an error naming the field, before any buffer changes.
To load without quantizing first, build the model with empty layers:
``quantize_model(model, ..., empty=True)`` (or ``LUTLinear(in, out, wbits=...)``).
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from .formats import LAYOUT, PackedWeights, check_layout, quantize, repack
from .frontend import _scale_shape  # the single definition of the scales' shape per format
from .runtime import TORCH_DTYPES
from .spec import LAYOUT_VERSION, MPGemmSpec, SpecError
from . import torch_ops  # registers torch.ops.lutc.mpgemm

#: Weight-format fields a checkpoint must share with the module it is loaded into.
_FORMAT_FIELDS = ("format", "wbits", "group_size", "zero_point", "scale_dtype", "N", "K")
#: LUT knobs: how the kernel computes, taken from the checkpoint when it has them.
_KNOB_FIELDS = ("g", "symmetrize", "table_dtype")

Selector = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]


class LUTLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` packed as lutc low-bit weights (module docstring).

    Args:
        in_features, out_features: ``K`` and ``N``.
        bias: whether the layer has a bias.
        wbits, group_size, format, zero_point, scale_dtype: the weight format
            (:func:`lutc.quantize`); ``group_size`` defaults to 128 (-1 for ternary).
        g, symmetrize, table_dtype: the LUT algorithm (:func:`lutc.compile`).
        device, dtype: where the (zero-initialized) buffers live, and the bias dtype.

    A new module holds zero weights: fill it with :meth:`from_linear`, :meth:`from_packed` or
    ``load_state_dict``. It has no float ``weight`` attribute (code that reads ``layer.weight``,
    such as weight tying, needs that layer excluded); ``packed().dequantize()`` gives the float64
    weight the kernels compute with. Inference only: backward through it raises.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(256, 64)
        >>> q = LUTLinear.from_linear(lin, wbits=4, group_size=64)
        >>> x = torch.randn(2, 3, 256)
        >>> ref = x.double() @ q.packed().dequantize().T + lin.bias.double()   # the float64 reference
        >>> bool((q(x) - ref).abs().max() < 1e-4)
        True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, wbits: int = 2,
                 group_size: Optional[int] = None, format: str = "uniform", zero_point: bool = False,
                 scale_dtype: str = "float16", g: int = 4, symmetrize: bool = True,
                 table_dtype: str = "float32", device=None, dtype=None):
        super().__init__()
        # Validates every field (SpecError names the first bad one) before any buffer exists.
        spec = MPGemmSpec(1, out_features, in_features, wbits=wbits, format=format,
                          group_size=group_size, zero_point=zero_point, scale_dtype=scale_dtype,
                          g=g, symmetrize=symmetrize, table_dtype=table_dtype)
        self.in_features, self.out_features = in_features, out_features
        self.wbits, self.group_size, self.format = wbits, spec.group_size, format   # None: the format's default
        self.zero_point, self.scale_dtype = zero_point, scale_dtype
        self.g, self.symmetrize, self.table_dtype = g, symmetrize, table_dtype
        sdt = TORCH_DTYPES[scale_dtype]
        self.register_buffer("planes", torch.zeros(
            (spec.planes, out_features, in_features // 8), dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(_scale_shape(spec), dtype=sdt, device=device))
        self.register_buffer("zeros", torch.zeros((out_features, spec.groups), dtype=sdt, device=device)
                             if zero_point else None)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype),
                                 requires_grad=False) if bias else None

    # --- construction ---
    @classmethod
    def from_linear(cls, linear: nn.Linear, wbits: int = 2, group_size: Optional[int] = None,
                    format: str = "uniform", zero_point: bool = False, scale_dtype: str = "float16",
                    **knobs) -> "LUTLinear":
        """Quantize ``linear.weight`` (:func:`lutc.quantize`) into a new module on its device.

        ``knobs``: ``g``, ``symmetrize``, ``table_dtype`` (see :func:`lutc.compile`).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        qw = quantize(linear.weight, wbits=wbits, group_size=group_size, format=format,
                      zero_point=zero_point, scale_dtype=scale_dtype)
        return cls.from_packed(qw, linear.bias, device=linear.weight.device, **knobs)

    @classmethod
    def from_packed(cls, qw: PackedWeights, bias: Optional[torch.Tensor] = None, device=None,
                    **knobs) -> "LUTLinear":
        """A module holding already packed weights ``qw`` (and an optional ``bias [N]``)."""
        if not isinstance(qw, PackedWeights):
            raise TypeError(f"qw must be lutc.PackedWeights, got {type(qw).__name__}")
        check_layout(qw.layout, qw.layout_version)  # refuses a layout this lutc does not read
        qw = repack(qw, LAYOUT)                      # the buffers are bitplane
        device = device if device is not None else qw.planes.device
        module = cls(qw.K, qw.N, bias is not None, wbits=qw.wbits, group_size=qw.group_size,
                     format=qw.format, zero_point=qw.zero_point, scale_dtype=qw.scale_dtype,
                     device=device, dtype=None if bias is None else bias.dtype, **knobs)
        with torch.no_grad():
            for name, t in zip(("planes", "scales", "zeros"), qw.tensors()):
                getattr(module, name).copy_(t)
            if bias is not None:
                module.bias.copy_(bias.detach())
        return module

    def packed(self) -> PackedWeights:
        """The layer's weight as :class:`lutc.PackedWeights` (sharing the buffers)."""
        return PackedWeights(format=self.format, wbits=self.wbits, N=self.out_features,
                             K=self.in_features, group_size=self.group_size,
                             zero_point=self.zero_point, scale_dtype=self.scale_dtype,
                             planes=self.planes, scales=self.scales, zeros=self.zeros)

    # --- compute ---
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch_ops._linear(x, self.planes, self.scales, self.zeros, self.out_features,
                                 self.in_features, self.wbits, self.group_size, self.format,
                                 self.bias, self.g, self.symmetrize, self.table_dtype)

    def extra_repr(self) -> str:
        zp = " zp" if self.zero_point else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.format} w{self.wbits} g{self.group_size}{zp}")

    def _apply(self, fn, recurse=True):
        # module.half()/.to(torch.bfloat16) cast every float buffer; the scales and zero points
        # must keep the dtype they were quantized with (the kernel reads scale_dtype), so they
        # follow device moves only. The bias follows the module's dtype like nn.Linear's.
        kept = {name: getattr(self, name) for name in ("scales", "zeros") if getattr(self, name) is not None}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            now = getattr(self, name)
            if now.dtype != before.dtype:
                setattr(self, name, before.to(now.device))
        return self

    # --- state dict ---
    def get_extra_state(self) -> dict:
        """Metadata saved next to the buffers: weight format, layout version, LUT knobs."""
        return {"format": self.format, "wbits": self.wbits, "group_size": self.group_size,
                "zero_point": self.zero_point, "scale_dtype": self.scale_dtype,
                "N": self.out_features, "K": self.in_features, "layout": LAYOUT,
                "layout_version": LAYOUT_VERSION, "g": self.g, "symmetrize": self.symmetrize,
                "table_dtype": self.table_dtype}

    def set_extra_state(self, state: dict) -> None:
        self._check_extra_state(state)
        for name in _KNOB_FIELDS:
            if name in state:
                setattr(self, name, state[name])

    def _check_extra_state(self, state) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"LUTLinear extra state must be a dict, got {type(state).__name__}")
        layout, version = state.get("layout"), state.get("layout_version")
        if (layout, version) != (LAYOUT, LAYOUT_VERSION):
            raise ValueError(f"checkpoint holds packed weights in layout {layout!r} v{version}; this "
                             f"lutc reads {LAYOUT!r} v{LAYOUT_VERSION}: re-quantize the float model "
                             "(lutc.quantize_model) with this lutc")
        mine = self.get_extra_state()
        for name in _FORMAT_FIELDS:
            if state.get(name) != mine[name]:
                raise ValueError(f"checkpoint has {name}={state.get(name)!r} but this LUTLinear has "
                                 f"{name}={mine[name]!r}: build the module with the checkpoint's format")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Check the metadata before torch copies any buffer, so a refused checkpoint leaves the
        # module as it was (torch calls set_extra_state only after the buffers are copied).
        key = prefix + "_extra_state"
        if key in state_dict:
            self._check_extra_state(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def quantize_model(model: nn.Module, wbits: int = 2, group_size: Optional[int] = None,
                   format: str = "uniform", zero_point: bool = False, scale_dtype: str = "float16",
                   include: Selector = None, exclude: Selector = None, empty: bool = False,
                   **knobs) -> nn.Module:
    """Replace the model's ``nn.Linear`` layers by :class:`LUTLinear` (in place); returns it.

    Args:
        model: any module (a bare ``nn.Linear`` is returned as a new ``LUTLinear``).
        wbits, group_size, format, zero_point, scale_dtype: the weight format (:func:`lutc.quantize`).
        include, exclude: which layers, by qualified name (``model.named_modules()``): a glob
            pattern (``"*.mlp.*"``), a list of them, or a callable ``(name, module) -> bool``.
            A layer is replaced if it matches ``include`` (default: every ``nn.Linear``) and
            not ``exclude``.
        empty: create zero-filled layers without quantizing (to ``load_state_dict`` into).
        knobs: ``g``, ``symmetrize``, ``table_dtype`` for the kernels.

    A selected layer whose ``in_features`` the format cannot pack (not a multiple of 8 or of
    the group size) raises :class:`lutc.SpecError` naming the layer; exclude it to keep it float.
    Only modules whose type is exactly ``nn.Linear`` are replaced: subclasses may have their own
    forward or be read through ``.weight`` by their parent (``nn.MultiheadAttention.out_proj``),
    and a ``LUTLinear`` has no float ``weight``.

    Example:
        >>> import torch
        >>> net = torch.nn.ModuleDict({"up": torch.nn.Linear(128, 256), "head": torch.nn.Linear(256, 10)})
        >>> net = quantize_model(net, wbits=2, group_size=128, exclude="head")
        >>> type(net["up"]).__name__, type(net["head"]).__name__
        ('LUTLinear', 'Linear')
    """
    fmt = dict(wbits=wbits, group_size=group_size, format=format, zero_point=zero_point,
               scale_dtype=scale_dtype)

    def convert(name: str, lin: nn.Linear) -> LUTLinear:
        try:
            if empty:
                return LUTLinear(lin.in_features, lin.out_features, lin.bias is not None,
                                 **fmt, device=lin.weight.device,
                                 dtype=None if lin.bias is None else lin.bias.dtype, **knobs)
            return LUTLinear.from_linear(lin, **fmt, **knobs)
        except SpecError as e:
            raise SpecError(f"layer {name or '<model>'!r} ({lin.in_features} -> {lin.out_features}): "
                            f"{e}; pass exclude={name!r} to keep it in float") from None

    if type(model) is nn.Linear:
        return convert("", model) if _selected("", model, include, exclude) else model
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and _selected(name, module, include, exclude):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, convert(name, module))
    return model


def _selected(name: str, module: nn.Module, include: Selector, exclude: Selector) -> bool:
    return (include is None or _matches(name, module, include)) and \
        (exclude is None or not _matches(name, module, exclude))


def _matches(name: str, module: nn.Module, selector: Selector) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"include/exclude patterns must be strings, got {type(p).__name__}")
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


__all__ = ["LUTLinear", "quantize_model"]
