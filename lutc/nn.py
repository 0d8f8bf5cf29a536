"""``LUTLinear`` (an ``nn.Linear`` with packed low-bit weights) and ``quantize_model``.

    >>> import torch, lutc
    >>> model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 128))
    >>> model = lutc.quantize_model(model, wbits=4, group_size=64)
    >>> model[0]   # doctest: +ELLIPSIS
    LUTLinear(in_features=256, out_features=512, bias=True, uniform w4 g64, layout=...)
    >>> model(torch.randn(2, 5, 256)).shape
    torch.Size([2, 5, 128])

The forward runs ``torch.ops.lutc.mpgemm`` (:mod:`lutc.torch_ops`): any leading batch dimensions,
``M`` known only at run time (kernels per ``M`` bucket, compiled on first use and cached),
float32/float16/bfloat16 activations, eager or ``torch.compile(fullgraph=True)``, CPU or CUDA.

**Weights in the kernels' layout.** A ``LUTLinear`` holds its packed weight in the layout of
the kernels of its device (:mod:`lutc.layouts`; :meth:`lutc.torch_ops.OpKernels.layout_plan`):
on x86 the SIMD LUT kernel's ``ptiles``/``tiles`` (or the VNNI kernel's ``dot16`` where the
tuning log says it is the faster decode kernel), ``tiles32`` on ARM, and on CUDA ``tc16`` for
the tensor-core kernels at every ``M`` (fp16 or bf16: W2-W4 and ternary), or ``warp32`` for the
LUT decode kernel plus a ``tc16`` copy for the larger ``M`` (W1, and W2 with zero points), or
``warp32`` alone (fp32 activations, bcq). On a CPU the held
copies live in 2 MiB pages where Linux offers them (:mod:`lutc.memory`). The weight is repacked
once, when it is given (``from_linear``, ``from_packed``, ``load_state_dict``) and when the
module moves (``.to(device)``, ``.half()``: the activation dtype decides the CUDA kernels), not
inside ``forward``, so
``torch.compile(fullgraph=True)`` and CUDA-graph capture see plain buffers. (The one exception:
activations of another dtype than the module was moved to make an eager ``forward`` repack
once, with a warning; call ``model.to(dtype)`` first.) The held copies are independent tensors:
change a weight through ``load_state_dict`` or ``from_packed``, not in place. Each ``M`` bucket
then runs the fastest kernel that reads the held layout.

**State dict.** ``state_dict()`` stays portable: it holds the weight in the target-neutral
``bitplane`` layout (``planes``, ``scales`` and, with zero points, ``zeros``; ``bias`` is a frozen
parameter) and the metadata (format, wbits, group_size, zero_point, scale_dtype, N, K, layout,
layout_version and the LUT knobs) as the module's extra state, so a checkpoint written on a CPU
loads on a GPU and the reverse. Loading refuses a checkpoint whose layout or layout version
this lutc does not read, or whose weight format differs from the module's, with an error
naming the field, before anything changes. To load without quantizing first, build the model
with empty layers: ``quantize_model(model, ..., empty=True)`` (or ``LUTLinear(in, out, wbits=...)``).
"""
from __future__ import annotations

import copy
import fnmatch
import json
import sys
import time
import warnings
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from . import layouts
from .dtypes import dtype_name, torch_dtype
from .formats import LAYOUT, PackedWeights, check_layout, quantize, repack
from .memory import in_huge_pages
from .spec import ACT_DTYPES, LAYOUT_VERSION, WEIGHT_FIELDS, MPGemmSpec, SpecError
from . import torch_ops  # registers torch.ops.lutc.mpgemm

#: Weight-format fields a checkpoint must share with the module it is loaded into.
_FORMAT_FIELDS = (*WEIGHT_FIELDS, "N", "K")
#: LUT knobs: how the kernel computes, taken from the checkpoint when it has them.
_KNOB_FIELDS = ("g", "symmetrize", "table_dtype")
#: Buffer names of the held copies: the first serves M <= plan.split, the second the larger M.
_COPIES = (("planes", "scales", "zeros"), ("batch_planes", "batch_scales", "batch_zeros"))

_ACT_DTYPES = tuple(torch_dtype(n) for n in ACT_DTYPES)

Selector = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]


class LUTLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` packed as lutc low-bit weights (module docstring).

    Args:
        in_features, out_features: ``K`` and ``N``.
        bias: whether the layer has a bias.
        wbits, group_size, format, zero_point, scale_dtype: the weight format
            (:func:`lutc.quantize`); ``group_size`` defaults to 128 (-1 for ternary).
        g, symmetrize, table_dtype: the LUT algorithm (:func:`lutc.compile`); ``table_dtype=None``
            is the device's default (int8 on SIMD CPUs, float32 on CUDA).
        single_layout: hold one packed copy where two would be (:class:`lutc.torch_ops.LayoutPlan`):
            on CUDA the decode kernel's layout, without the copy for the tensor-core kernels; on a
            CPU the batch kernel's, without the decode kernel's copy. Every ``M`` then runs the
            fastest kernel reading it.
        device, dtype: where the (zero-initialized) weight lives, and the bias and activation
            dtype (which picks the CUDA kernels; ``.half()``/``.to(dtype)`` update it).

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
        >>> from lutc.testing import rel_error, tolerance   # int8 tables on a SIMD CPU: bound (4)
        >>> bool(rel_error(q(x), ref) < tolerance(q.kernel_spec()))
        True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, wbits: int = 2,
                 group_size: Optional[int] = None, format: str = "uniform", zero_point: bool = False,
                 scale_dtype: str = "float16", g: int = 4, symmetrize: bool = True,
                 table_dtype: Optional[str] = None, single_layout: bool = False, device=None, dtype=None):
        super().__init__()
        # Validates every field (SpecError names the first bad one) before any buffer exists.
        spec = MPGemmSpec.of_weight(out_features, in_features, dict(
            wbits=wbits, format=format, group_size=group_size, zero_point=zero_point, scale_dtype=scale_dtype),
            g=g, symmetrize=symmetrize, table_dtype=table_dtype or "float32")
        self.in_features, self.out_features = in_features, out_features
        self.wbits, self.group_size, self.format = wbits, spec.group_size, format   # None: the format's default
        self.zero_point, self.scale_dtype = zero_point, scale_dtype
        self.g, self.symmetrize, self.table_dtype = g, symmetrize, table_dtype
        self.single_layout = bool(single_layout)
        self.act_dtype = dtype_name(dtype or torch.get_default_dtype())
        # Persistent buffers (loaders that assign tensors by name, as transformers' does, find them
        # and keep them), but the state dict holds the portable bitplane form: _save_to_state_dict
        # and _load_from_state_dict convert.
        for names in _COPIES:
            for name in names:
                self.register_buffer(name, None)
        self.register_buffer("perm", None)     # act-order column order (PackedWeights.perm)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype),
                                 requires_grad=False) if bias else None
        # device None: torch's default device (`with torch.device("meta"):` too)
        self._hold_zeros(torch.device(device) if device is not None else torch.empty(0).device)

    # --- construction ---
    @classmethod
    def from_linear(cls, linear: nn.Linear, wbits: int = 2, group_size: Optional[int] = None,
                    format: str = "uniform", zero_point: bool = False, scale_dtype: str = "float16",
                    **knobs) -> "LUTLinear":
        """Quantize ``linear.weight`` (:func:`lutc.quantize`) into a new module on its device,
        for activations of its dtype.

        ``knobs``: ``g``, ``symmetrize``, ``table_dtype``, ``single_layout`` (class docstring).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        qw = quantize(linear.weight, wbits=wbits, group_size=group_size, format=format,
                      zero_point=zero_point, scale_dtype=scale_dtype)
        return cls.from_packed(qw, linear.bias, device=linear.weight.device,
                               dtype=linear.weight.dtype, **knobs)

    @classmethod
    def from_packed(cls, qw: PackedWeights, bias: Optional[torch.Tensor] = None, device=None,
                    dtype=None, **knobs) -> "LUTLinear":
        """A module holding already packed weights ``qw`` (any layout; an optional ``bias [N]``)
        on ``device`` (default: ``qw``'s), for activations of ``dtype`` (default: the bias's)."""
        if not isinstance(qw, PackedWeights):
            raise TypeError(f"qw must be lutc.PackedWeights, got {type(qw).__name__}")
        check_layout(qw.layout, qw.layout_version)  # refuses a layout this lutc does not read
        device = torch.device(device) if device is not None else qw.planes.device
        dtype = dtype or (None if bias is None else bias.dtype)
        module = cls(qw.K, qw.N, bias is not None, wbits=qw.wbits, group_size=qw.group_size,
                     format=qw.format, zero_point=qw.zero_point, scale_dtype=qw.scale_dtype,
                     device="meta", dtype=dtype, **knobs)
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().to(device, module.bias.dtype).clone(), requires_grad=False)
        module._hold(qw, device)
        return module

    def packed(self) -> PackedWeights:
        """The layer's weight as :class:`lutc.PackedWeights` in the held layout (sharing the
        buffers); ``lutc.repack(layer.packed(), "bitplane")`` for the portable form."""
        return PackedWeights(format=self.format, wbits=self.wbits, N=self.out_features,
                             K=self.in_features, group_size=self.group_size,
                             zero_point=self.zero_point, scale_dtype=self.scale_dtype,
                             planes=self.planes, scales=self.scales, zeros=self.zeros,
                             layout=self.layouts[0], perm=self.perm)

    @property
    def plan(self) -> "torch_ops.LayoutPlan":
        """How the weight is held on this device: layouts, the M split between two copies, the
        table dtype (:class:`lutc.torch_ops.LayoutPlan`)."""
        return self._plan

    @property
    def layouts(self) -> tuple:
        """The layouts of the held copies (:class:`lutc.torch_ops.LayoutPlan`)."""
        return self._plan.layouts

    def __setstate__(self, state: dict) -> None:
        # A pickled module (torch.save(model)) may come back on another device (map_location):
        # hold its weight in that device's layout, as .to() would.
        super().__setstate__(state)
        device = self.planes.device
        if device.type != "meta" and self._plan != self._plan_for(device):
            self._relayout(device, self.act_dtype)

    # --- holding the weight in the kernels' layout ---
    def kernel_spec(self, device: Optional[torch.device] = None) -> MPGemmSpec:
        """The ``M = 1`` spec the kernels of ``device`` (default: the layer's) build for this layer."""
        device = torch.device(device) if device is not None else self.planes.device
        return torch_ops.weight_spec(self.out_features, self.in_features, self.wbits, self.format,
                                     self.group_size, self.zero_point, self.act_dtype, self.scale_dtype,
                                     self.g, self.symmetrize, self.table_dtype, device.type)

    def _plan_for(self, device: torch.device) -> "torch_ops.LayoutPlan":
        if device.type == "meta":   # shapes only, until real weights arrive (load_state_dict, to_empty)
            return torch_ops.LayoutPlan((LAYOUT,), None, self.kernel_spec(device).table_dtype)
        return torch_ops.kernel_cache().layout_plan(self.kernel_spec(device), device, self.single_layout)

    def _hold(self, qw: PackedWeights, device: torch.device) -> None:
        """Keep ``qw`` (any layout, any device) as the copies the plan for ``device`` wants."""
        plan = self._plan_for(device)
        for i, names in enumerate(_COPIES):
            tensors = [None] * 3
            if i < len(plan.layouts):
                held = repack(qw, plan.layouts[i])
                tensors = [in_huge_pages(t.to(device).contiguous()) for t in held.tensors()]
                tensors += [None] * (3 - len(tensors))
            for name, t in zip(names, tensors):
                setattr(self, name, t)
        self.perm = None if qw.perm is None else qw.perm.to(device).contiguous()
        self._set_plan(plan, device)

    def _hold_zeros(self, device: torch.device) -> None:
        """All-zero weights in the plan's layouts (zero bits and zero scales read the same in
        every layout, padding included), without packing anything."""
        plan = self._plan_for(device)
        spec = self.kernel_spec(device)
        for i, names in enumerate(_COPIES):
            shapes = layouts.get(plan.layouts[i]).shapes(spec) if i < len(plan.layouts) else {}
            for name, key in zip(names, ("planes", "scales", "zeros")):
                setattr(self, name, torch.zeros(shapes[key].shape, dtype=torch_dtype(shapes[key].dtype),
                                                device=device) if key in shapes else None)
        self._set_plan(plan, device)

    def _set_plan(self, plan: "torch_ops.LayoutPlan", device: torch.device) -> None:
        self._plan = plan
        self._kernel_spec = self.kernel_spec(device)          # what forward's fast path runs
        self._kernel_dtype = torch_dtype(self.act_dtype)

    def load_bitplane(self, device: Optional[torch.device] = None) -> None:
        """Repack, for ``device`` (default: where the buffers are), ``bitplane`` tensors that a
        loader assigned straight into ``planes``/``scales``/``zeros`` (transformers' loader does,
        by name, bypassing ``load_state_dict``)."""
        qw = PackedWeights(format=self.format, wbits=self.wbits, N=self.out_features, K=self.in_features,
                           group_size=self.group_size, zero_point=self.zero_point, scale_dtype=self.scale_dtype,
                           planes=self.planes, scales=self.scales, zeros=self.zeros,
                           perm=self.perm)   # checks the tensors
        self._hold(qw, torch.device(device) if device is not None else self.planes.device)

    def _relayout(self, device: torch.device, act_dtype: str) -> None:
        qw = self.packed()
        self.act_dtype = act_dtype
        self._hold(qw, device)

    # --- compute ---
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch_dtype(self.act_dtype) and not torch.compiler.is_compiling():
            if x.dtype in _ACT_DTYPES:   # others: the op names the dtype it refuses
                # the held layout was chosen for another activation dtype (CUDA: tensor cores are fp16)
                warnings.warn(f"LUTLinear({self.in_features} -> {self.out_features}) receives {x.dtype} "
                              f"activations; its weights were laid out for {self.act_dtype}: repacking "
                              "once (call model.to(dtype) before running to avoid this)", stacklevel=2)
                self._relayout(self.planes.device, dtype_name(x.dtype))
        plan = self._plan
        i = plan.layout_for(x.numel() // self.in_features)
        if self._eager(x):
            # Eager fast path: the held buffers were checked when they were packed, so only x is
            # checked here and the kernels run without the op's dispatch and checks (~16 us per
            # call on a 2-core x86, lutc.torch_ops); torch.compile, autograd and bad inputs take
            # the op below.
            flat = x.dim() == 2           # (a reshape costs ~0.5 us even when it changes nothing)
            x2 = x if flat else x.reshape(-1, self.in_features)
            held = self._buffers        # not getattr: nn.Module.__getattr__ costs ~0.5 us a buffer
            if held["perm"] is not None:
                x2 = x2.index_select(1, held["perm"])
            weights = [held[n] for n in _COPIES[i] if held[n] is not None]
            y = torch_ops.kernel_cache().run(self._kernel_spec, x2 if x2.is_contiguous() else x2.contiguous(),
                                             plan.layouts[i], *weights)
            y = y if flat else y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        planes, scales, zeros = (getattr(self, name) for name in _COPIES[i])
        return torch_ops.linear_packed(x, planes, scales, zeros, self.out_features, self.in_features,
                                       self.wbits, self.group_size, self.format, self.bias, self.g,
                                       self.symmetrize, plan.table_dtype, plan.layouts[i], self.perm)

    def _eager(self, x: torch.Tensor) -> bool:
        """Whether ``x`` may take the eager fast path: a plain tensor of the planned dtype on the
        weights' device, no gradient wanted, and no torch.compile tracing."""
        return (type(x) is torch.Tensor and x.dtype == self._kernel_dtype and x.device.type in ("cpu", "cuda")
                and x.device == self._buffers["planes"].device
                and x.shape[-1] == self.in_features and not (x.requires_grad and torch.is_grad_enabled())
                and not torch.compiler.is_compiling())

    def extra_repr(self) -> str:
        zp = " zp" if self.zero_point else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.format} w{self.wbits} g{self.group_size}{zp}, "
                f"layout={'+'.join(self.layouts)}")

    def _apply(self, fn, recurse=True):
        # module.half()/.to(torch.bfloat16) cast every float buffer; the scales and zero points
        # must keep the dtype they were quantized with (the kernel reads scale_dtype), so they
        # follow device moves only. The bias follows the module's dtype like nn.Linear's. The
        # new device and activation dtype may want another layout: repack once, here.
        act = self.act_dtype
        try:   # what fn does to a floating tensor of the activation dtype: the new dtype
            probe = fn(torch.empty(0, dtype=torch_dtype(act), device=self.planes.device))
            if isinstance(probe, torch.Tensor) and probe.dtype in _ACT_DTYPES:
                act = dtype_name(probe.dtype)
        except Exception:  # noqa: BLE001  (fn may not apply to a probe: keep the dtype)
            pass
        kept = {name: t for names in _COPIES for name in names[1:]
                if (t := getattr(self, name)) is not None}
        before = self.planes.device
        super()._apply(fn, recurse)
        for name, t in kept.items():
            now = getattr(self, name)
            if now is not None and now.dtype != t.dtype:
                setattr(self, name, t.to(now.device))
        device = self.planes.device
        if device.type != "meta" and (device != before or act != self.act_dtype):
            if before.type == "meta":
                self.act_dtype = act
                self._hold_zeros(device)       # to_empty(): no weight yet
            else:
                self._relayout(device, act)
        return self

    # --- state dict: portable bitplane ---
    def metadata(self) -> dict:
        """Weight format, layout (bitplane) and version, LUT knobs: the extra state of the
        state dict (:meth:`get_extra_state` stores it as JSON bytes)."""
        return {"format": self.format, "wbits": self.wbits, "group_size": self.group_size,
                "zero_point": self.zero_point, "scale_dtype": self.scale_dtype,
                "N": self.out_features, "K": self.in_features, "layout": LAYOUT,
                "layout_version": LAYOUT_VERSION, "g": self.g, "symmetrize": self.symmetrize,
                "table_dtype": self.table_dtype}

    def get_extra_state(self) -> torch.Tensor:
        """:meth:`metadata` as a uint8 tensor of JSON: a state dict of tensors only, which
        safetensors (``save_pretrained``) stores; :func:`decode_extra_state` reads it back."""
        return encode_extra_state(self.metadata())

    def set_extra_state(self, state) -> None:
        state = decode_extra_state(state)
        self._check_extra_state(state)
        knobs = {name: state[name] for name in _KNOB_FIELDS if name in state}
        if any(getattr(self, n) != v for n, v in knobs.items()):
            qw = self.packed()
            for name, value in knobs.items():
                setattr(self, name, value)
            if qw.planes.device.type != "meta":      # the LUT knobs decide the kernels: plan again
                self._hold(qw, qw.planes.device)

    def _check_extra_state(self, state) -> None:
        state = decode_extra_state(state)
        layout, version = state.get("layout"), state.get("layout_version")
        if (layout, version) != (LAYOUT, LAYOUT_VERSION):
            raise ValueError(f"checkpoint holds packed weights in layout {layout!r} v{version}; this "
                             f"lutc reads {LAYOUT!r} v{LAYOUT_VERSION}: re-quantize the float model "
                             "(lutc.quantize_model) with this lutc")
        try:   # the LUT knobs of the checkpoint must be ones this lutc builds
            MPGemmSpec.of_weight(self.out_features, self.in_features, self, g=state.get("g", self.g),
                                 symmetrize=state.get("symmetrize", self.symmetrize),
                                 table_dtype=state.get("table_dtype") or "float32")
        except SpecError as e:
            raise ValueError(f"checkpoint's LUT knobs: {e}") from None
        mine = self.metadata()
        for name in _FORMAT_FIELDS:
            if state.get(name) != mine[name]:
                raise ValueError(f"checkpoint has {name}={state.get(name)!r} but this LUTLinear has "
                                 f"{name}={mine[name]!r}: build the module with the checkpoint's format")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in _COPIES[1]:      # the second copy is the first in another layout
            destination.pop(prefix + name, None)
        portable = repack(self.packed(), LAYOUT)
        for name, t in zip(_COPIES[0], portable.tensors()):
            destination[prefix + name] = t if keep_vars else t.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Check the metadata and the tensors before anything changes, so a refused checkpoint
        # leaves the module as it was (torch calls set_extra_state only after the buffers).
        key = prefix + "_extra_state"
        if key in state_dict:
            self._check_extra_state(state_dict[key])
        names = _COPIES[0][:3 if self.zero_point else 2]
        found = {n: state_dict[prefix + n] for n in names if prefix + n in state_dict}
        perm = state_dict.get(prefix + "perm")
        qw = None
        if len(found) == len(names):
            try:
                qw = PackedWeights(format=self.format, wbits=self.wbits, N=self.out_features,
                                   K=self.in_features, group_size=self.group_size,
                                   zero_point=self.zero_point, scale_dtype=self.scale_dtype, **found,
                                   perm=None if perm is None else perm.long())
            except (ValueError, TypeError) as e:
                raise ValueError(f"checkpoint tensors under {prefix!r}: {e}") from None
        # torch would copy the bitplane tensors into the kernel-layout buffers: it skips them
        # while they count as non-persistent, and they are held below instead.
        held = {n for names in _COPIES for n in names} | {"perm"}
        held -= self._non_persistent_buffers_set
        self._non_persistent_buffers_set |= held
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
        finally:
            self._non_persistent_buffers_set -= held
        for n in _COPIES[0] + ("perm",):
            if prefix + n in unexpected_keys:
                unexpected_keys.remove(prefix + n)
        if qw is None:
            missing_keys.extend(prefix + n for n in names if n not in found)
            return
        device = self.planes.device if self.planes.device.type != "meta" else qw.planes.device
        self._hold(qw, device)




def encode_extra_state(meta: dict) -> torch.Tensor:
    """A ``LUTLinear`` metadata dict as the uint8 JSON tensor its state dict holds."""
    return torch.frombuffer(bytearray(json.dumps(meta, sort_keys=True).encode()), dtype=torch.uint8).clone()


def decode_extra_state(state) -> dict:
    """The metadata dict of a ``LUTLinear`` extra state: the uint8 JSON tensor, or a dict (the
    checkpoints of lutc <= 0.1.0 before safetensors support)."""
    if isinstance(state, dict):
        return state
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1:
        try:
            meta = json.loads(bytes(state.cpu().tolist()).decode())
        except ValueError as e:
            raise ValueError(f"LUTLinear extra state is not valid JSON bytes ({e})") from None
        if isinstance(meta, dict):
            return meta
    raise ValueError(f"LUTLinear extra state must be a uint8 JSON tensor or a dict, got {type(state).__name__}")


def quantize_model(model: nn.Module, wbits: int = 2, group_size: Optional[int] = None,
                   format: str = "uniform", zero_point: bool = False, scale_dtype: str = "float16",
                   include: Selector = None, exclude: Selector = None, empty: bool = False,
                   progress: Optional[bool] = None, **knobs) -> nn.Module:
    """Replace the model's ``nn.Linear`` layers by :class:`LUTLinear` (in place); returns it.

    Args:
        model: any module (a bare ``nn.Linear`` is returned as a new ``LUTLinear``).
        wbits, group_size, format, zero_point, scale_dtype: the weight format (:func:`lutc.quantize`).
        include, exclude: which layers, by qualified name (``model.named_modules()``): a glob
            pattern (``"*.mlp.*"``), a list of them, or a callable ``(name, module) -> bool``.
            A layer is replaced if it matches ``include`` (default: every ``nn.Linear``) and
            not ``exclude``.
        empty: create zero-filled layers without quantizing (to ``load_state_dict`` into).
        progress: print layers done, time and ETA on stderr as it goes (a 7B model has ~200
            layers); default: only when stderr is a terminal.
        knobs: ``g``, ``symmetrize``, ``table_dtype``, ``single_layout`` (:class:`LUTLinear`).

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
                                 **fmt, device=lin.weight.device, dtype=lin.weight.dtype, **knobs)
            return LUTLinear.from_linear(lin, **fmt, **knobs)
        except SpecError as e:
            raise SpecError(f"layer {name or '<model>'!r} ({lin.in_features} -> {lin.out_features}): "
                            f"{e}; pass exclude={name!r} to keep it in float") from None

    if type(model) is nn.Linear:
        return convert("", model) if _selected("", model, include, exclude) else model
    chosen = [(name, m) for name, m in model.named_modules()
              if type(m) is nn.Linear and _selected(name, m, include, exclude)]
    report = Progress("lutc.quantize_model", len(chosen), progress)
    for name, module in chosen:
        replace_layer(model, name, convert(name, module))
        report.step(name)
    report.close()
    return model


def replace_layer(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put ``layer`` where ``model.get_submodule(name)`` is (``name`` non-empty), as
    ``quantize_model`` and the checkpoint loaders replace ``nn.Linear`` layers.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8))
        >>> replace_layer(net, "0", torch.nn.Identity()); type(net[0]).__name__
        'Identity'
    """
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def dequantize_model(model: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A copy of ``model`` in which every :class:`LUTLinear` is an ``nn.Linear`` holding its
    float64 dequantized weight (:meth:`PackedWeights.dequantize`) cast to ``dtype`` (default:
    the layer's activation dtype): the reference a quantized model is checked against (same
    weights, float kernels).

    Example:
        >>> net = quantize_model(torch.nn.Linear(128, 64), wbits=4, group_size=64)
        >>> type(dequantize_model(net)).__name__
        'Linear'
    """
    def linear(layer: LUTLinear) -> nn.Linear:
        dt = dtype or torch_dtype(layer.act_dtype)
        w = layer.packed().dequantize()
        out = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None,
                        device=layer.planes.device, dtype=dt)
        with torch.no_grad():
            out.weight.copy_(w.to(out.weight.device, dt))
            if layer.bias is not None:
                out.bias.copy_(layer.bias)
        return out.requires_grad_(False)

    if isinstance(model, LUTLinear):
        return linear(model)
    # deepcopy's memo maps each LUTLinear to its float layer: packed buffers are never copied.
    return copy.deepcopy(model, memo={id(m): linear(m) for m in model.modules() if isinstance(m, LUTLinear)})


class Progress:
    """``what: 12/224 layers, 9.8 s, ETA 2:51 (model.layers.3.mlp.up)`` on one stderr line,
    rewritten as work advances; silent when ``enabled`` is False, or None and stderr is not a
    terminal (logs, CI)."""

    def __init__(self, what: str, total: int, enabled: Optional[bool] = None, unit: str = "layers"):
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.start = time.perf_counter()

    def step(self, item: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        spent = time.perf_counter() - self.start
        eta = spent / self.done * (self.total - self.done)
        sys.stderr.write(f"\r{self.what}: {self.done}/{self.total} {self.unit}, {spent:.1f} s, "
                         f"ETA {int(eta) // 60}:{int(eta) % 60:02d} ({item})\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")


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


__all__ = ["LUTLinear", "quantize_model", "dequantize_model", "replace_layer"]
