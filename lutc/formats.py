"""Low-bit weight formats: quantize, pack into bit planes, and dequantize (the float64 reference).

Every format is stored the same way, as ``planes`` one-bit planes ``sigma_i[n, k]`` in {-1, +1}
(bit 1 means +1) plus per-group coefficients; only the coefficients differ:

=========  ===========================================  ==========================================
format     weight                                       stored coefficients
=========  ===========================================  ==========================================
uniform    ``s * (q - z)``, ``q = sum_i 2^i b_i``        ``scales[N, G]`` (+ ``zeros[N, G]``)
           (``z = (2^b - 1)/2`` without zero points)
bcq        ``sum_i alpha_i * sigma_i``                  ``scales[N, G, b]`` (one alpha per plane)
ternary    ``s * t``, ``t in {-1, 0, +1}``,              ``scales[1]`` (one per tensor)
           ``t = (sigma_0 + sigma_1) / 2``
=========  ===========================================  ==========================================

(``G`` = groups per row, ``b_i`` = bit ``i`` of the code, ``sigma_i = 2 b_i - 1``.) The ternary
encoding needs no activation-sum correction: ``+1 = (+1, +1)``, ``0 = (+1, -1)``, ``-1 = (-1, -1)``.

Layouts: a :class:`PackedWeights` holds its tensors in one layout of :mod:`lutc.layouts`
(``bitplane`` by default; each kernel reads its own, ``kernel.layout``), which owns the shapes,
the byte order and the exact conversions; :func:`repack` converts between any two.

Every layout keeps the device of the tensors it is given (arithmetic may run on the CPU).
This module uses torch for the arithmetic and imports no TVM.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from . import layouts
from .dtypes import torch_dtype
from .layouts import codes_to_planes, pack_bits
from .spec import WEIGHT_FIELDS, MPGemmSpec, SpecError

ArrayLike = Union[np.ndarray, torch.Tensor]
LAYOUT = layouts.BITPLANE


@dataclass(eq=False)
class PackedWeights:
    """A quantized ``[N, K]`` weight in lutc's packed form (see the module docstring).

    Create it with :func:`quantize` (or :func:`repack`, :func:`lutc.load_weights`);
    :meth:`dequantize` is the float64 reference every kernel is tested against. Construction
    checks every field and each tensor's shape and dtype against :attr:`layout`
    (:mod:`lutc.layouts`), so a malformed weight fails here, naming the tensor, never in a
    kernel. Compared by identity.

    Example:
        >>> import torch, lutc
        >>> qw = lutc.quantize(torch.randn(256, 512), wbits=2, group_size=128)
        >>> qw.planes.shape, qw.scales.shape, round(qw.bits_per_weight, 3)
        (torch.Size([2, 256, 64]), torch.Size([256, 4]), 2.125)
    """

    format: str
    wbits: int
    N: int
    K: int
    group_size: int
    zero_point: bool
    scale_dtype: str
    planes: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor] = None
    layout: str = LAYOUT
    #: The version of ``layout`` the tensors are in (None: this lutc's, :mod:`lutc.layouts`).
    layout_version: Optional[int] = None
    #: The input order of the stored columns (act-order GPTQ): stored column ``j`` is input
    #: feature ``perm[j]``, so ``y = x[:, perm] @ W_stored^T``; int64 ``[K]``, or None.
    perm: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        spec = self.weight_spec()   # validates the format fields (SpecError names the field)
        if self.layout_version is None:
            self.layout_version = layouts.get(self.layout).version
        layout = layouts.check_version(self.layout, self.layout_version)
        expected = layout.shapes(spec)
        given = {"planes": self.planes, "scales": self.scales, "zeros": self.zeros}
        for name, t in given.items():
            if name not in expected:
                if t is not None:
                    raise ValueError("packed weight has zeros but zero_point=False: pass zeros=None, "
                                     "or zero_point=True")
                continue
            want = expected[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"packed weight's {name} must be a torch.Tensor, got {type(t).__name__}"
                                + (" (zero_point=True needs zeros)" if t is None else ""))
            if tuple(t.shape) != want.shape or t.dtype != torch_dtype(want.dtype):
                raise ValueError(f"packed weight's {name} is {t.dtype} {tuple(t.shape)}; layout "
                                 f"{self.layout!r} of this {self.format} w{self.wbits} [N={self.N}, "
                                 f"K={self.K}] weight needs {want.dtype} {want.shape}")
        if self.perm is not None:
            check_perm(self.perm, self.K)

    # --- identity ---
    def weight_spec(self, M: int = 1, **knobs) -> MPGemmSpec:
        """The :class:`MPGemmSpec` this weight fits, for ``M`` rows of activations."""
        return MPGemmSpec.of_weight(self.N, self.K, self, M, **knobs)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, planes and coefficients together."""
        nbytes = sum(t.numel() * t.element_size() for t in self.tensors())
        return 8.0 * nbytes / (self.N * self.K)

    def tensors(self) -> list:
        """The stored tensors in kernel-argument order: planes, scales[, zeros]."""
        return [self.planes, self.scales] + ([self.zeros] if self.zeros is not None else [])

    def check_fits(self, spec: MPGemmSpec) -> None:
        """Raise ``ValueError`` naming the first field where this weight differs from ``spec``."""
        check_layout(self.layout, self.layout_version)
        for name in ("N", "K", *WEIGHT_FIELDS):
            mine, theirs = getattr(self, name), getattr(spec, name)
            if mine != theirs:
                raise ValueError(f"packed weight has {name}={mine!r} but the kernel was compiled "
                                 f"for {name}={theirs!r}")

    def to(self, device: Union[str, torch.device]) -> "PackedWeights":
        """A copy whose tensors live on ``device`` (e.g. ``"cuda"``)."""
        move = lambda t: None if t is None else t.to(device).contiguous()  # noqa: E731
        return dataclasses.replace(self, planes=move(self.planes), scales=move(self.scales),
                                   zeros=move(self.zeros), perm=move(self.perm))

    # --- the reference ---
    def signs(self) -> torch.Tensor:
        """The bit planes as float64 ``{-1, +1}``, shape ``[planes, N, K]`` (CPU, bitplane layout)."""
        bits = np.unpackbits(self.planes.cpu().numpy(), axis=-1, bitorder="little")
        return torch.from_numpy(bits[..., : self.K]).to(torch.float64) * 2.0 - 1.0

    def dequantize(self) -> torch.Tensor:
        """The float64 ``[N, K]`` weight these bits and coefficients stand for (CPU).

        This is the reference: kernels compute ``x @ dequantize().T`` up to rounding.
        """
        if self.layout != LAYOUT:
            return repack(self, LAYOUT).dequantize()
        if self.perm is not None:      # stored column j is input feature perm[j]
            stored = dataclasses.replace(self, perm=None).dequantize()
            w = torch.empty_like(stored)
            w[:, self.perm.cpu()] = stored
            return w
        sig = self.signs()
        spec = self.weight_spec()
        gs = spec.group
        per_group = lambda c: c.cpu().to(torch.float64).repeat_interleave(gs, dim=1)  # noqa: E731
        if self.format == "bcq":
            alpha = self.scales.cpu().to(torch.float64).repeat_interleave(gs, dim=1)  # [N, K, b]
            return torch.einsum("nkb,bnk->nk", alpha, sig)
        planes = sum(spec.plane_coef(i) * sig[i] for i in range(spec.planes))   # q - c, or t (exact)
        if self.format == "ternary":
            return float(self.scales.cpu().to(torch.float64)[0]) * planes
        zero = per_group(self.zeros) if self.zero_point else spec.code_center
        return per_group(self.scales) * (planes + spec.code_center - zero)

    # --- persistence (plain tensors + metadata, for torch.save / state_dict) ---
    def state(self) -> dict:
        """Tensors and metadata as a flat dict of tensors and plain values."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_state(cls, state: dict) -> "PackedWeights":
        """Inverse of :meth:`state`; refuses a layout this lutc does not read."""
        check_layout(state.get("layout"), state.get("layout_version"))
        return cls(**state)


def quantize(weight: ArrayLike, wbits: int = 2, group_size: Optional[int] = None,
             format: str = "uniform", zero_point: bool = False,
             scale_dtype: str = "float16", layout: str = LAYOUT) -> PackedWeights:
    """Quantize a float ``[N, K]`` weight and pack it into bit planes.

    Args:
        weight: torch tensor or numpy array, ``[N, K]`` (``nn.Linear.weight`` layout).
        wbits: 1-4 (must be 2 for ``ternary``).
        group_size: 32, 64, 128 or -1 (whole row); default 128, and -1 for ``ternary``.
        format: ``"uniform"``, ``"bcq"`` or ``"ternary"`` (module docstring).
        zero_point: uniform only: asymmetric codes with a zero point per group (an integer
            code from 2 bits up, so 0 is exact);
            without it codes are symmetric around zero, ``w = s * (q - (2^b - 1)/2)``.
        scale_dtype: ``"float16"`` or ``"float32"`` storage for the coefficients.
        layout: ``"bitplane"`` or a kernel's layout (``kernel.layout``, e.g. ``"tiles128"``), so
            the kernel needs no repacking at its first call.

    Example:
        >>> import numpy as np, lutc
        >>> w = np.random.default_rng(0).standard_normal((128, 256)).astype("float32")
        >>> qw = lutc.quantize(w, wbits=4, group_size=64, zero_point=True)
        >>> float(abs(qw.dequantize().numpy() - w).max()) < 0.5
        True
    """
    w = _as_weight(weight)
    N, K = w.shape
    spec = MPGemmSpec.of_weight(N, K, dict(wbits=wbits, format=format, group_size=group_size,
                                           zero_point=zero_point, scale_dtype=scale_dtype), g=2)
    gs, group_size = spec.group, spec.group_size
    wg = w.reshape(N, K // gs, gs)
    sdt = torch_dtype(scale_dtype)
    if format == "ternary":
        s = w.abs().mean().clamp_min(_SMALLEST_SCALE[sdt]).to(sdt)  # BitNet b1.58 absmean
        t = torch.clamp(torch.round(w / s.float()), -1, 1)
        bits = torch.stack([t >= 0, t > 0])
        scales = s.reshape(1)
    elif format == "bcq":
        bits, scales = _bcq(wg, wbits, sdt)
        bits = bits.reshape(wbits, N, K)
    else:
        q, scales, zeros = _uniform(wg, wbits, zero_point, sdt)
        qw = from_codes(q.reshape(N, K), wbits, group_size, scales, zeros, scale_dtype)
        return qw if layout == LAYOUT else repack(qw, layout)
    qw = PackedWeights(format=format, wbits=wbits, N=N, K=K, group_size=group_size,
                       zero_point=zero_point, scale_dtype=scale_dtype, planes=pack_bits(bits),
                       scales=scales.contiguous())
    return qw if layout == LAYOUT else repack(qw, layout)


def from_codes(codes: torch.Tensor, wbits: int, group_size: int, scales: torch.Tensor,
               zeros: Optional[torch.Tensor] = None, scale_dtype: str = "float16") -> PackedWeights:
    """A ``uniform`` weight ``w = s (q - z)`` from its integer codes ``q [N, K]`` (0 .. 2^b - 1),
    scales ``[N, G]`` and zero points ``[N, G]`` (None: the symmetric ``(2^b - 1)/2``), packed
    into bit planes; what the checkpoint importers (:mod:`lutc.importers`) build.

    Example:
        >>> import torch
        >>> q = torch.tensor([[0, 1, 2, 3] * 8])
        >>> qw = from_codes(q, 2, 32, torch.tensor([[0.5]]), torch.tensor([[1.0]]))
        >>> qw.dequantize()[0, :4].tolist()
        [-0.5, 0.0, 0.5, 1.0]
    """
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2 ** wbits):
        raise ValueError(f"codes must lie in [0, {2 ** wbits - 1}] for wbits={wbits}, got "
                         f"[{int(codes.min())}, {int(codes.max())}]")
    return from_planes(codes_to_planes(codes, wbits), wbits, group_size, scales, zeros, scale_dtype)


def from_planes(planes: torch.Tensor, wbits: int, group_size: int, scales: torch.Tensor,
                zeros: Optional[torch.Tensor] = None, scale_dtype: str = "float16") -> PackedWeights:
    """:func:`from_codes` for codes already split into ``bitplane`` planes (uint8 ``[b, N, K/8]``)."""
    sdt = torch_dtype(scale_dtype)
    b, N, KB = planes.shape
    return PackedWeights(format="uniform", wbits=wbits, N=N, K=8 * KB, group_size=group_size,
                         zero_point=zeros is not None, scale_dtype=scale_dtype, planes=planes.contiguous(),
                         scales=scales.to(sdt).contiguous(),
                         zeros=None if zeros is None else zeros.to(sdt).contiguous())


def check_perm(perm: torch.Tensor, K: int) -> None:
    """Refuse anything but an int64 permutation of ``0 .. K-1`` (a weight's column order)."""
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64 or tuple(perm.shape) != (K,):
        raise ValueError(f"perm must be an int64 tensor [K={K}], got "
                         f"{getattr(perm, 'dtype', type(perm).__name__)} {tuple(getattr(perm, 'shape', ()))}")
    if not torch.equal(perm.cpu().sort().values, torch.arange(K)):
        raise ValueError(f"perm is not a permutation of 0..{K - 1}")


def check_layout(layout, version) -> None:
    """Refuse a layout name or version this lutc does not read."""
    layouts.check_version(layout, version)


def repack(qw: PackedWeights, layout: str) -> PackedWeights:
    """The same weight in another layout (:mod:`lutc.layouts`); exact, no requantization. The
    result stays on ``qw``'s device (the conversion itself runs on the CPU).

    Example:
        >>> import torch, lutc
        >>> qw = lutc.quantize(torch.randn(100, 256), wbits=3, group_size=64)
        >>> t = lutc.repack(qw, "tiles64")
        >>> t.planes.shape, bool((t.dequantize() == qw.dequantize()).all())
        (torch.Size([2, 64, 3, 32]), True)
    """
    target = layouts.get(layout)
    if qw.layout == layout:
        return qw
    spec = qw.weight_spec()
    target.check(spec)     # before any work: names what the layout cannot hold
    device = qw.planes.device
    tensors = qw.tensors() + ([None] if qw.zeros is None else [])
    if qw.layout != LAYOUT:
        tensors = layouts.get(qw.layout).unpack(spec, *tensors)
    planes, scales, zeros = target.pack(spec, *tensors)
    out = dataclasses.replace(qw, planes=planes, scales=scales, zeros=zeros, layout=layout,
                              layout_version=target.version)
    return out if device.type == "cpu" else out.to(device)


#: The smallest positive scale each scale dtype holds (float16: the least subnormal), the floor
#: of every computed scale: a floor that rounds to 0 in the scale dtype would zero the group (and
#: make its zero point NaN), while this one keeps tiny weights tiny.
_SMALLEST_SCALE = {torch.float16: 2.0 ** -24, torch.float32: 2.0 ** -149}

#: Rows quantized together (see :func:`_uniform`).
_QUANT_ROWS = 64

#: Fractions of the full range tried per group; the one with the least squared error wins.
CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(17))  # down to 0.2: 1-bit codes want ~0.3


def _uniform(wg: torch.Tensor, wbits: int, zero_point: bool, sdt: torch.dtype):
    """Integer codes ``[N, G, gs]``, scales and zero points (or None) for ``wg [N, G, gs]``.

    Symmetric codes use the mid-rise grid ``s (q - (2^b - 1)/2)``; zero points map the group's
    (clipped) min and max onto codes 0 and ``2^b - 1``, the zero point rounded to a code (from 2
    bits up). The range is clipped per group to the
    ratio of :data:`CLIP_RATIOS` with the least squared error: min-max 2-bit codes lose a
    quarter of a Gaussian weight's energy, clipped ones about half as much.
    """
    if wg.shape[0] > _QUANT_ROWS:
        # Rows in chunks: each pass of the clip search then stays in the caches (16 M weights in
        # one piece made every pass a 64 MB memory round trip: 3.5 s for 4096x4096).
        parts = [_uniform(wg[i:i + _QUANT_ROWS], wbits, zero_point, sdt) for i in range(0, wg.shape[0], _QUANT_ROWS)]
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                None if parts[0][2] is None else torch.cat([p[2] for p in parts]))
    levels = 2 ** wbits - 1
    floor = _SMALLEST_SCALE[sdt]
    best = None
    for ratio in CLIP_RATIOS:
        if zero_point:
            # The range always includes 0 (as GPTQ's) and z is an integer code from 2 bits up,
            # so a weight of 0 is exact: with a fractional z every near-zero weight (most of a real layer) moved
            # by the same offset, a per-group bias that adds up coherently over the inputs (W4
            # all-MiniLM-L6-v2 embeddings: cosine 0.951 fractional, 0.961 integer, 0.959
            # min-max). A constant group c (a pruned, all-zero one too) stays exact: codes 0 or
            # 2^b - 1 with s = |c| / (2^b - 1).
            lo, hi = wg.amin(-1).clamp_max(0) * ratio, wg.amax(-1).clamp_min(0) * ratio
            s = ((hi - lo) / levels).clamp_min(floor).to(sdt)
            z = (-lo / s.float()).clamp(0, levels)
            z = (torch.round(z) if wbits > 1 else z).to(sdt)     # 1 bit: {0, s} would be no grid
            zf = z.float()
        else:
            amax = wg.abs().amax(-1) * ratio
            s = (amax * 2 / levels).clamp_min(floor).to(sdt)
            z, zf = None, torch.full_like(s, levels / 2, dtype=torch.float32)
        q = torch.clamp(torch.round(wg / s.float()[..., None] + zf[..., None]), 0, levels)
        err = ((q - zf[..., None]) * s.float()[..., None] - wg).pow(2).sum(-1)
        if best is None:
            best = [q, s, z, err]
            continue
        better = err < best[3]
        best[0] = torch.where(better[..., None], q, best[0])
        best[1] = torch.where(better, s, best[1])
        best[2] = None if z is None else torch.where(better, z, best[2])
        best[3] = torch.minimum(err, best[3])
    q, s, z, _ = best
    return q.to(torch.int64), s, z


def _bcq(wg: torch.Tensor, wbits: int, sdt: torch.dtype, rounds: int = 6):
    """Binary coding by alternating refinement (LUT-GEMM's BCQ) per group.

    Start from the greedy residual code (``alpha_i = mean |r|``, ``sigma_i = sign r``), then
    alternate: give each weight the nearest of the ``2^b`` values ``sum_i alpha_i sigma_i``, and
    refit the alphas by least squares for those signs.
    Returns bits ``[b, N, G, gs]`` (True = +1) and alphas ``[N, G, b]`` in ``sdt``.
    """
    w = wg.to(torch.float64)
    r, sig, alpha = w, [], []
    for _ in range(wbits):
        s = torch.where(r >= 0, 1.0, -1.0).to(torch.float64)
        a = r.abs().mean(-1, keepdim=True)
        sig.append(s)
        alpha.append(a[..., 0])
        r = r - a * s
    S, alpha = torch.stack(sig, -1), torch.stack(alpha, -1)    # [N, G, gs, b], [N, G, b]
    combos = torch.tensor([[1.0 if (c >> i) & 1 else -1.0 for i in range(wbits)]
                           for c in range(2 ** wbits)], dtype=torch.float64)      # [2^b, b]
    ridge = 1e-9 * torch.eye(wbits, dtype=torch.float64)
    for _ in range(rounds):
        values, order = (alpha @ combos.T).sort(-1)               # [N, G, 2^b]
        mids = (values[..., 1:] + values[..., :-1]) / 2
        nearest = torch.searchsorted(mids.contiguous(), w.contiguous())   # [N, G, gs]
        S = combos[order.gather(-1, nearest)]
        gram = S.transpose(-1, -2) @ S + ridge * w.shape[-1]
        alpha = torch.linalg.solve(gram, S.transpose(-1, -2) @ w[..., None])[..., 0]
    return S.permute(3, 0, 1, 2) > 0, alpha.to(sdt)


def _as_weight(weight: ArrayLike) -> torch.Tensor:
    if isinstance(weight, np.ndarray):
        weight = torch.from_numpy(np.ascontiguousarray(weight))
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or numpy.ndarray, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise SpecError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    w = weight.detach().to("cpu", torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError("weight contains NaN or Inf")
    return w
