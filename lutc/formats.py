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

Layouts (each version :data:`lutc.spec.LAYOUT_VERSION`; :func:`repack` converts between them):

``bitplane``: ``planes`` is uint8 ``[b, N, K/8]``; bit ``k % 8`` (least significant first) of
byte ``k // 8`` in plane ``i`` is ``b_i[n, k]``. A group of ``g`` consecutive activations reads
``g`` consecutive bits of one byte (``g`` divides 8): that number is the table index.
Coefficients are ``[N, G]`` (``[N, G, b]`` for bcq). Target-neutral; the generic schedules read it.

``tiles{R}`` (``R`` = 32, 64 or 128): for SIMD table lookups with ``g = 4``. Rows are cut into
tiles of ``R`` (``N`` padded with zero-scale rows to a multiple of ``R``); ``planes`` is uint8
``[N/R, K/4, b, R/2]`` and byte ``j`` of ``planes[t, kg, i]`` holds the 4-bit index of row
``t R + j`` in its low nibble and of row ``t R + R/2 + j`` in its high nibble. One ``R/2``-byte
load (a NEON, AVX2 or AVX-512 register for R = 32, 64, 128) thus feeds two shuffles that look
up ``R`` rows, and a tile's weights stream contiguously. Coefficients are tile-major so the
epilogue loads them as vectors: ``scales``/``zeros`` ``[N/R, G, R]``, bcq ``[N/R, G, b, R]``;
ternary keeps its single scale.

``ptiles{R}`` (``R`` = 32 or 64): paired-plane tiles, for an even number of planes (2- and
4-bit uniform codes, ternary) on x86. Tiles of ``R`` rows; ``planes`` is uint8
``[N/R, K/4, b/2, R]``; byte ``j`` of ``planes[t, kg, p]`` holds plane ``2p + j % 2`` of row
``t R + j // 2`` (low nibble) and of row ``t R + R/2 + j // 2`` (high nibble). A shuffle then
leaves the two planes of a row in adjacent bytes, and one ``vpmaddubsw`` with weights
``(2^2p, 2^(2p+1))`` widens and combines them. Coefficients are tile-major as for ``tiles{R}``.

``dot{L}`` (``L`` = 4 or 16): for multiply-add kernels (NEON ``sdot``, AVX-512 VNNI
``vpdpbusd``), uniform and ternary formats. Each weight is its unsigned code ``q`` (ternary:
``t + 1``) in a slot of ``w`` bits (1, 2, or 4 for 3- and 4-bit codes); a dot instruction multiplies
4 consecutive codes of each of ``L`` rows by 4 activations. Rows are cut into tiles of ``L``;
``planes`` is uint8 ``[N/L, K/(4c), 4L]`` with ``c = 8/w`` codes per byte, and byte ``4r + u``
of chunk ``kc`` holds, in bits ``[w s, w s + w)``, the code of row ``r``, ``k = 4 c kc + 4 s + u``:
one ``4L``-byte load, shifted by ``w s`` and masked, is the operand for ``c`` dot instructions.
Coefficients are tile-major as for ``tiles{R}``.


``warp32``: for CUDA kernels, where lane ``l`` of a warp owns row ``32 t + l`` of a 32-row tile
``t`` and reads its weights with 16-byte loads (K must be a multiple of 128). ``planes`` is int32
``[N/32, K/128, b, 32, 4]`` (``N`` padded with zero-scale rows to a multiple of 32): the 16 bytes
of ``planes[t, u, i, l]`` are bytes ``16 u .. 16 u + 15`` of row ``32 t + l`` of bitplane plane
``i``, so word ``q`` holds bits ``k = 128 u + 32 q .. + 31`` (least significant first) and its
nibble ``j`` is the 4-bit table index of activation group ``k / 4 = 32 u + 8 q + j``. One warp load
instruction reads 512 contiguous bytes (one 128-weight slice of one plane for 32 rows).
Coefficients are tile-major as for ``tiles32``: ``scales``/``zeros`` ``[N/32, G, 32]``, bcq
``[N/32, G, b, 32]``, so a warp reads a group's 32 scales as one 64-byte segment.

``tc16``: for tensor-core (``mma.sync m16n8k16``) kernels, uniform weights with 2 or 4 bits only
(K a multiple of 128): integer codes ``q = sum_i 2^i b_i`` placed where one lane of a warp needs
them as ``mma`` B fragments, two codes of consecutive k per 32-bit half pair, so that one
``LOP3`` with the fp16 magic ``0x6400`` turns them into a ``half2``. Rows come in 16-row tiles
(``N`` padded with zero-scale rows), K in 128-weight units; ``planes`` is int32
``[N/16, K/128, b/2, 32, 4]`` and lane ``l = 4 g + c`` of tile ``T``, unit ``u`` owns the ``2 b``
words ``W[j] = planes[T, u, j // 4, l, j % 4]``. They hold 32 pairs ``P = 4 s + 2 t + h``
(``s`` < 8, ``t``, ``h`` < 2): the codes of row ``16 T + 8 t + g`` at ``k = 128 u + 32 c + 4 s
+ 2 h + e`` (``e`` < 2), pair ``P`` in word ``P // (16/b)``, slot ``v = P % (16/b)``, code ``e`` at
bit ``8 (v // (8/b)) + b (v % (8/b)) + 16 e``. (Lane ``c`` owns a contiguous 32-k range of the
unit: the kernel pairs the same permuted k with its activations, so the products are those of
the plain order.) Coefficients are tile-major with 16 rows: ``[N/16, G, 16]``.

Every layout keeps the device of the tensors it is given (arithmetic may run on the CPU).
This module uses torch for the arithmetic and imports no TVM.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from .spec import LAYOUT_VERSION, MPGemmSpec, SpecError

ArrayLike = Union[np.ndarray, torch.Tensor]
LAYOUT = "bitplane"
TILE_ROWS = (32, 64, 128)  # NEON, AVX2, AVX-512BW: two nibbles per byte of a 16/32/64-byte register
DOT_ROWS = (4, 16)          # int32 lanes of a NEON / AVX-512 register
PAIRED_ROWS = (32, 64)      # AVX2, AVX-512BW: two planes of R/2 rows per nibble of an R-byte register
#: CUDA layout: 32 rows (one per lane), 128-weight slices (one 16-byte load per lane and plane).
WARP_LAYOUT, WARP_ROWS, WARP_K = "warp32", 32, 128
#: Tensor-core layout (uniform W2/W4): 16-row tiles, 128-weight units.
TC_LAYOUT, TC_ROWS = "tc16", 16
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(eq=False)
class PackedWeights:
    """A quantized ``[N, K]`` weight in lutc's packed form (see the module docstring).

    Create it with :func:`quantize`; :meth:`dequantize` is the float64 reference every kernel
    is tested against. Compared by identity (kernels cache repacked copies per object).

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
    layout_version: int = LAYOUT_VERSION

    # --- identity ---
    def weight_spec(self, M: int = 1, **knobs) -> MPGemmSpec:
        """The :class:`MPGemmSpec` this weight fits, for ``M`` rows of activations."""
        return MPGemmSpec(M, self.N, self.K, wbits=self.wbits, format=self.format,
                          group_size=self.group_size, zero_point=self.zero_point,
                          scale_dtype=self.scale_dtype, **knobs)

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
        for name in ("N", "K", "wbits", "format", "group_size", "zero_point", "scale_dtype"):
            mine, theirs = getattr(self, name), getattr(spec, name)
            if mine != theirs:
                raise ValueError(f"packed weight has {name}={mine!r} but the kernel was compiled "
                                 f"for {name}={theirs!r}")

    def to(self, device: Union[str, torch.device]) -> "PackedWeights":
        """A copy whose tensors live on ``device`` (e.g. ``"cuda"``)."""
        move = lambda t: None if t is None else t.to(device).contiguous()  # noqa: E731
        return dataclasses.replace(self, planes=move(self.planes), scales=move(self.scales),
                                   zeros=move(self.zeros))

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
        sig = self.signs()
        gs = self.K if self.group_size == -1 else self.group_size
        per_group = lambda c: c.cpu().to(torch.float64).repeat_interleave(gs, dim=1)  # noqa: E731
        if self.format == "ternary":
            return float(self.scales.cpu().to(torch.float64)[0]) * (sig[0] + sig[1]) / 2
        if self.format == "bcq":
            alpha = self.scales.cpu().to(torch.float64).repeat_interleave(gs, dim=1)  # [N, K, b]
            return torch.einsum("nkb,bnk->nk", alpha, sig)
        code = sum((2.0 ** i) * (sig[i] + 1) / 2 for i in range(self.wbits))
        zero = per_group(self.zeros) if self.zero_point else (2 ** self.wbits - 1) / 2
        return per_group(self.scales) * (code - zero)

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
        zero_point: uniform only: min-max asymmetric codes with a float zero point per group;
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
    spec = MPGemmSpec(1, N, K, wbits=wbits, format=format, group_size=group_size,
                      zero_point=zero_point, scale_dtype=scale_dtype, g=2)
    gs, group_size = spec.group, spec.group_size
    wg = w.reshape(N, K // gs, gs)
    sdt = _TORCH_DTYPES[scale_dtype]
    zeros = None
    if format == "ternary":
        s = w.abs().mean().clamp_min(1e-8).to(sdt)  # BitNet b1.58 absmean
        t = torch.clamp(torch.round(w / s.float()), -1, 1)
        bits = torch.stack([t >= 0, t > 0])
        scales = s.reshape(1)
    elif format == "bcq":
        bits, scales = _bcq(wg, wbits, sdt)
        bits = bits.reshape(wbits, N, K)
    else:
        q, scales, zeros = _uniform(wg, wbits, zero_point, sdt)
        bits = torch.stack([(q.reshape(N, K) >> i) & 1 for i in range(wbits)]).bool()
    qw = PackedWeights(format=format, wbits=wbits, N=N, K=K, group_size=group_size,
                       zero_point=zero_point, scale_dtype=scale_dtype, planes=pack_bits(bits),
                       scales=scales.contiguous(), zeros=None if zeros is None else zeros.contiguous())
    return qw if layout == LAYOUT else repack(qw, layout)


def tile_rows(layout: str) -> int:
    """Rows per tile of a ``tiles{R}``, ``ptiles{R}``, ``dot{L}``, ``warp32`` or ``tc16`` layout
    (0 for ``bitplane``)."""
    if layout == LAYOUT:
        return 0
    if layout == WARP_LAYOUT:
        return WARP_ROWS
    if layout == TC_LAYOUT:
        return TC_ROWS
    for prefix, allowed in (("tiles", TILE_ROWS), ("ptiles", PAIRED_ROWS), ("dot", DOT_ROWS)):
        rest = layout[len(prefix):]
        if layout.startswith(prefix) and rest.isdigit() and int(rest) in allowed:
            return int(rest)
    raise ValueError(f"unknown weight layout {layout!r}: 'bitplane', {WARP_LAYOUT!r}, {TC_LAYOUT!r} or one of "
                     f"{['tiles%d' % r for r in TILE_ROWS] + ['ptiles%d' % r for r in PAIRED_ROWS]}"
                     f" or {['dot%d' % r for r in DOT_ROWS]}")


def code_bits(wbits: int) -> int:
    """Bits of a code's slot in the ``dot{L}`` layouts (3-bit codes take 4-bit slots)."""
    return {1: 1, 2: 2, 3: 4, 4: 4}[wbits]


def check_layout(layout, version) -> None:
    """Refuse a layout name or version this lutc does not read."""
    tile_rows(str(layout))
    if version != LAYOUT_VERSION:
        raise ValueError(f"packed weight layout {layout!r} is version {version}; this lutc reads "
                         f"version {LAYOUT_VERSION}: quantize the weight again")


def repack(qw: PackedWeights, layout: str) -> PackedWeights:
    """The same weight in another layout (module docstring); exact, no requantization.

    Example:
        >>> import torch, lutc
        >>> qw = lutc.quantize(torch.randn(100, 256), wbits=3, group_size=64)
        >>> t = lutc.repack(qw, "tiles64")
        >>> t.planes.shape, bool((t.dequantize() == qw.dequantize()).all())
        (torch.Size([2, 64, 3, 32]), True)
    """
    if qw.layout == layout:
        return qw
    tile_rows(layout)  # refuses unknown names
    device = qw.planes.device
    if qw.layout != LAYOUT:
        return _to_device(repack(_untile(qw), layout), device)
    if layout == LAYOUT:
        return qw
    if layout == WARP_LAYOUT:
        return _to_device(_to_warp(qw), device)
    if layout == TC_LAYOUT:
        return _to_device(_to_tc(qw), device)
    R = tile_rows(layout)
    b, N, K = qw.planes.shape[0], qw.N, qw.K
    NT, Np = -(-N // R), -(-N // R) * R
    byte = qw.planes.cpu()
    if layout.startswith("dot"):
        planes = _dot_planes(qw, R, NT, Np)
    elif layout.startswith("ptiles"):
        if b % 2:
            raise ValueError(f"layout {layout} pairs bit planes: it needs an even number, not {b}")
        idx = torch.stack([byte & 15, byte >> 4], -1).reshape(b, N, K // 4)
        idx = torch.nn.functional.pad(idx, (0, 0, 0, Np - N))
        t = idx.reshape(b // 2, 2, NT, 2, R // 2, K // 4).permute(2, 5, 0, 3, 4, 1)  # nt kg pair half row plane
        t = t.reshape(NT, K // 4, b // 2, 2, R)
        planes = (t[..., 0, :] | (t[..., 1, :] << 4)).contiguous()
    else:
        idx = torch.stack([byte & 15, byte >> 4], -1).reshape(b, N, K // 4)   # [b, N, KG] 4-bit
        idx = torch.nn.functional.pad(idx, (0, 0, 0, Np - N))
        half = idx.reshape(b, NT, 2, R // 2, K // 4).permute(1, 4, 0, 2, 3)   # [NT, KG, b, 2, R/2]
        planes = (half[..., 0, :] | (half[..., 1, :] << 4)).contiguous()
    return _to_device(dataclasses.replace(qw, planes=planes, scales=_tile_coef(qw.scales, R, NT, qw.format),
                                          zeros=_tile_coef(qw.zeros, R, NT, qw.format), layout=layout), device)


def _to_device(qw: PackedWeights, device) -> PackedWeights:
    """``qw`` with every tensor on ``device`` (repacking computes on the CPU)."""
    return qw if all(t.device == device for t in qw.tensors()) else qw.to(device)


def _tile_coef(c: Optional[torch.Tensor], R: int, NT: int, fmt: str) -> Optional[torch.Tensor]:
    """Row-major coefficients ``[N, G(, b)]`` -> tile-major ``[NT, G(, b), R]`` (zero-padded rows)."""
    if c is None or fmt == "ternary":
        return c
    c = _pad_rows(c.cpu(), NT * R).reshape(NT, R, *c.shape[1:])
    return c.permute(0, *range(2, c.dim()), 1).contiguous()


def _untile_coef(c: Optional[torch.Tensor], N: int, fmt: str) -> Optional[torch.Tensor]:
    """Inverse of :func:`_tile_coef`."""
    if c is None or fmt == "ternary":
        return c
    c = c.cpu()
    return c.movedim(-1, 1).reshape(c.shape[0] * c.shape[-1], *c.shape[1:-1])[:N].contiguous()


def _to_warp(qw: PackedWeights) -> PackedWeights:
    """``bitplane`` -> ``warp32`` (module docstring)."""
    b, N, K = qw.planes.shape[0], qw.N, qw.K
    if K % WARP_K:
        raise ValueError(f"layout {WARP_LAYOUT!r} needs K to be a multiple of {WARP_K}, got K={K}")
    NT = -(-N // WARP_ROWS)
    p = torch.nn.functional.pad(qw.planes.cpu(), (0, 0, 0, NT * WARP_ROWS - N))   # [b, NT*32, K/8]
    p = p.reshape(b, NT, WARP_ROWS, K // WARP_K, 16).permute(1, 3, 0, 2, 4).contiguous()
    planes = p.view(torch.int32)                                                  # [NT, KU, b, 32, 4]
    return dataclasses.replace(qw, planes=planes, scales=_tile_coef(qw.scales, WARP_ROWS, NT, qw.format),
                               zeros=_tile_coef(qw.zeros, WARP_ROWS, NT, qw.format), layout=WARP_LAYOUT)


def _from_warp(qw: PackedWeights) -> PackedWeights:
    """``warp32`` -> ``bitplane`` (inverse of :func:`_to_warp`)."""
    NT, KU, b, R, _ = qw.planes.shape
    p = qw.planes.cpu().contiguous().view(torch.uint8).reshape(NT, KU, b, R, 16)
    planes = p.permute(2, 0, 3, 1, 4).reshape(b, NT * R, KU * 16)[:, :qw.N].contiguous()
    return dataclasses.replace(qw, planes=planes, scales=_untile_coef(qw.scales, qw.N, qw.format),
                               zeros=_untile_coef(qw.zeros, qw.N, qw.format), layout=LAYOUT)


def _tc_shifts(b: int) -> torch.Tensor:
    """Bit position of code ``e`` of slot ``v`` in a ``tc16`` word: ``[16/b, 2]``."""
    v = torch.arange(16 // b)[:, None]
    return 8 * (v // (8 // b)) + b * (v % (8 // b)) + 16 * torch.arange(2)[None, :]


def _to_tc(qw: PackedWeights) -> PackedWeights:
    """``bitplane`` -> ``tc16`` (module docstring)."""
    b, N, K = qw.wbits, qw.N, qw.K
    if qw.format != "uniform" or b not in (2, 4):
        raise ValueError(f"layout {TC_LAYOUT!r} holds uniform 2- or 4-bit codes, not {qw.format} "
                         f"with wbits={b}")
    if K % 128:
        raise ValueError(f"layout {TC_LAYOUT!r} needs K to be a multiple of 128, got K={K}")
    NT = -(-N // TC_ROWS)
    bits = np.unpackbits(qw.planes.cpu().numpy(), axis=-1, bitorder="little")[..., :K]
    q = torch.from_numpy(sum(bits[i].astype(np.int64) << i for i in range(b)))           # [N, K]
    q = torch.nn.functional.pad(q, (0, 0, 0, NT * TC_ROWS - N))
    # n = (T 2 + t) 8 + g ; k = u 128 + c 32 + s 4 + h 2 + e
    q = q.reshape(NT, 2, 8, K // 128, 4, 8, 2, 2).permute(0, 3, 2, 4, 5, 1, 6, 7)   # T u g c s t h e
    q = q.reshape(NT, K // 128, 32, 2 * b, 16 // b, 2)                               # lane, word, slot, e
    words = (q << _tc_shifts(b)).sum((-1, -2))                                        # [NT, KU, 32, 2b]
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)
    planes = words.reshape(NT, K // 128, 32, b // 2, 4).permute(0, 1, 3, 2, 4).contiguous()
    return dataclasses.replace(qw, planes=planes, scales=_tile_coef(qw.scales, TC_ROWS, NT, qw.format),
                               zeros=_tile_coef(qw.zeros, TC_ROWS, NT, qw.format), layout=TC_LAYOUT)


def _from_tc(qw: PackedWeights) -> PackedWeights:
    """``tc16`` -> ``bitplane`` (inverse of :func:`_to_tc`)."""
    b, N, K = qw.wbits, qw.N, qw.K
    NT, KU = qw.planes.shape[:2]
    words = qw.planes.cpu().to(torch.int64) & 0xFFFFFFFF
    words = words.permute(0, 1, 3, 2, 4).reshape(NT, KU, 32, 2 * b, 1, 1)
    q = (words >> _tc_shifts(b)) & (2 ** b - 1)                                        # [NT, KU, 32, 2b, PW, 2]
    q = q.reshape(NT, KU, 8, 4, 8, 2, 2, 2).permute(0, 5, 2, 1, 3, 4, 6, 7).reshape(NT * TC_ROWS, K)[:N]
    bits = torch.stack([(q >> i) & 1 for i in range(b)]).bool()
    return dataclasses.replace(qw, planes=pack_bits(bits), scales=_untile_coef(qw.scales, N, qw.format),
                               zeros=_untile_coef(qw.zeros, N, qw.format), layout=LAYOUT)


def _dot_planes(qw: PackedWeights, L: int, NT: int, Np: int) -> torch.Tensor:
    """Codes of a bitplane weight in the ``dot{L}`` layout (module docstring)."""
    if qw.format == "bcq":
        raise ValueError("the dot layouts hold integer codes: uniform and ternary formats only")
    bits = torch.from_numpy(np.unpackbits(qw.planes.cpu().numpy(), axis=-1, bitorder="little"))
    bits = bits[..., : qw.K].to(torch.int32)
    code = bits[0] + bits[1] if qw.format == "ternary" else sum(bits[i] << i for i in range(qw.wbits))
    w = code_bits(qw.wbits)
    c = 8 // w
    code = torch.nn.functional.pad(code, (0, 0, 0, Np - qw.N))
    code = code.reshape(NT, L, qw.K // (4 * c), c, 4).permute(0, 2, 1, 4, 3)  # [NT, KC, L, 4, c]
    packed = sum(code[..., s] << (w * s) for s in range(c))
    return packed.reshape(NT, qw.K // (4 * c), 4 * L).to(torch.uint8).contiguous()


def _dot_bits(qw: PackedWeights) -> torch.Tensor:
    """Bit planes ``[b, N, K]`` (bool) of a ``dot{L}`` weight: inverse of :func:`_dot_planes`."""
    L, w = tile_rows(qw.layout), code_bits(qw.wbits)
    c = 8 // w
    NT, KC, _ = qw.planes.shape
    p = qw.planes.cpu().to(torch.int32).reshape(NT, KC, L, 4)
    code = torch.stack([(p >> (w * s)) & (2 ** w - 1) for s in range(c)], -1)   # [NT, KC, L, 4, c]
    code = code.permute(0, 2, 1, 4, 3).reshape(NT * L, qw.K)[: qw.N]
    if qw.format == "ternary":
        return torch.stack([code >= 1, code >= 2])
    return torch.stack([(code >> i) & 1 for i in range(qw.wbits)]).bool()


def _untile(qw: PackedWeights) -> PackedWeights:
    """``tiles{R}``, ``ptiles{R}``, ``dot{L}``, ``warp32`` or ``tc16`` -> ``bitplane`` (inverse of :func:`repack`), on the CPU."""
    if qw.layout == WARP_LAYOUT:
        return _from_warp(qw)
    if qw.layout == TC_LAYOUT:
        return _from_tc(qw)
    R, N = tile_rows(qw.layout), qw.N
    if qw.layout.startswith("dot"):
        planes = pack_bits(_dot_bits(qw))
    elif qw.layout.startswith("ptiles"):
        NT, KG, pairs, _ = qw.planes.shape
        p = qw.planes.cpu()
        t = torch.stack([p & 15, p >> 4], -2).reshape(NT, KG, pairs, 2, R // 2, 2)  # nt kg pair half row plane
        idx = t.permute(2, 5, 0, 3, 4, 1).reshape(2 * pairs, NT * R, KG)[:, :N]
        planes = (idx[..., 0::2] | (idx[..., 1::2] << 4)).contiguous()
    else:
        NT, KG, b, _ = qw.planes.shape
        p = qw.planes.cpu()
        half = torch.stack([p & 15, p >> 4], -2)                              # [NT, KG, b, 2, R/2]
        idx = half.permute(2, 0, 3, 4, 1).reshape(b, NT * R, KG)[:, :N]        # [b, N, KG]
        planes = (idx[..., 0::2] | (idx[..., 1::2] << 4)).contiguous()
    return dataclasses.replace(qw, planes=planes, scales=_untile_coef(qw.scales, N, qw.format),
                               zeros=_untile_coef(qw.zeros, N, qw.format), layout=LAYOUT)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    pad = torch.zeros((rows - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad]) if rows > t.shape[0] else t


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool ``[..., K]`` tensor into uint8 ``[..., K/8]``, least significant bit first."""
    packed = np.packbits(bits.cpu().numpy().astype(np.uint8), axis=-1, bitorder="little")
    return torch.from_numpy(packed).contiguous()


#: Fractions of the full range tried per group; the one with the least squared error wins.
CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(17))  # down to 0.2: 1-bit codes want ~0.3


def _uniform(wg: torch.Tensor, wbits: int, zero_point: bool, sdt: torch.dtype):
    """Integer codes ``[N, G, gs]``, scales and zero points (or None) for ``wg [N, G, gs]``.

    Symmetric codes use the mid-rise grid ``s (q - (2^b - 1)/2)``; zero points map the group's
    (clipped) min and max onto codes 0 and ``2^b - 1``. The range is clipped per group to the
    ratio of :data:`CLIP_RATIOS` with the least squared error: min-max 2-bit codes lose a
    quarter of a Gaussian weight's energy, clipped ones about half as much.
    """
    levels = 2 ** wbits - 1
    best = None
    for ratio in CLIP_RATIOS:
        if zero_point:
            lo, hi = wg.amin(-1) * ratio, wg.amax(-1) * ratio
            s = ((hi - lo) / levels).clamp_min(1e-8).to(sdt)
            z = (-lo / s.float()).to(sdt)
            zf = z.float()
        else:
            amax = wg.abs().amax(-1) * ratio
            s = (amax * 2 / levels).clamp_min(1e-8).to(sdt)
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
