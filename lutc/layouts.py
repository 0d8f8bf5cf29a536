r"""Packed-weight layouts: one object per layout owns its tensor shapes, its byte order (the
text a C host reads), and the exact conversion from and to ``bitplane``.

A layout is how the bits and coefficients of one quantized ``[N, K]`` weight
(:class:`lutc.PackedWeights`) are laid out in memory for a kernel. Every consumer asks the
layout instead of restating it: the front end and the templates declare their buffers with
:meth:`Layout.shapes`, :class:`lutc.PackedWeights` checks its tensors against it, the runtime and
the torch op check arguments with it, ``LUTLinear`` allocates with it, the exporter writes
:meth:`Layout.doc` into its headers, and :func:`lutc.repack` converts with :meth:`Layout.pack` /
:meth:`Layout.unpack`.

    >>> import lutc
    >>> spec = lutc.MPGemmSpec(1, 100, 256, wbits=2, group_size=64)
    >>> get("ptiles64").shapes(spec)["planes"]
    TensorSpec(shape=(2, 64, 1, 64), dtype='uint8')
    >>> get("warp32").shapes(spec)["scales"]
    TensorSpec(shape=(4, 4, 32), dtype='float16')

Families (``G`` = groups per row, ``b`` = bit planes, rows padded with zero-scale rows to a
multiple of the tile; every layout here is version :data:`lutc.spec.LAYOUT_VERSION`, ``tc16`` the next):

=============  ===========================  ==========================================  ============
layout         ``planes``                   read by                                     formats
=============  ===========================  ==========================================  ============
``bitplane``   uint8 ``[b, N, K/8]``        ``cpu_generic``, ``cuda_generic``           all
``tiles{R}``   uint8 ``[N/R, K/4, b, R/2]`` SIMD LUT (NEON R=32, AVX2 64, AVX-512 128)  all
``ptiles{R}``  uint8 ``[N/R, K/4, b/2, R]`` x86 LUT with paired planes (R=32, 64)       even ``b``
``dot{L}``     uint8 ``[N/L, K/(4c), 4L]``  ``dot_mac`` (NEON L=4, VNNI 16), ``amx``    not bcq
``warp32``     int32 ``[N/32, K/128, b,     ``cuda_lut``                                all
               32, 4]``
``tc16``       int32 ``[N/16, K/128, w/2,   ``cuda_stream``, ``cuda_wgmma``, ``cuda_mma`` not bcq
               32, 4]`` (``w`` 2 or 4)
=============  ===========================  ==========================================  ============

Coefficients: ``bitplane`` keeps them row-major (``scales [N, G]``, bcq ``[N, G, b]``, ternary
``[1]``, ``zeros [N, G]``); every tiled layout stores them tile-major, ``[N/R, G, R]`` (bcq
``[N/R, G, b, R]``; ternary ``[1]``, but ``[N/16, 1, 16]`` in ``tc16``), so an epilogue loads
one group's coefficients of a tile as one vector.
Each family's :attr:`Layout.doc` gives the byte order.

Conversions run on the CPU with torch and numpy (no TVM); :func:`lutc.repack` puts the result
back on the weight's device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .spec import LAYOUT_VERSION, MPGemmSpec

BITPLANE = "bitplane"

#: (planes, scales, zeros or None): a weight's tensors in kernel-argument order.
Tensors = tuple


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype name of one packed tensor."""

    shape: tuple
    dtype: str


class Layout:
    """One packed-weight layout (module docstring). Subclasses set :attr:`name`, :attr:`rows`
    and implement ``_planes_shape``, ``_pack_planes`` and ``_unpack_planes``."""

    name: str = ""
    family: str = ""
    rows: int = 0                #: rows per tile (0: untiled)
    planes_dtype: str = "uint8"
    version: int = LAYOUT_VERSION
    family_doc: str = ""

    # --- what it holds ---
    def check(self, spec: MPGemmSpec) -> None:
        """Raise ``ValueError`` naming why this layout cannot hold ``spec``'s weight."""

    def holds(self, spec: MPGemmSpec) -> bool:
        """Whether this layout can hold ``spec``'s weight."""
        try:
            self.check(spec)
            return True
        except ValueError:
            return False

    def tiles(self, spec: MPGemmSpec) -> int:
        """Row tiles (``N`` rounded up to :attr:`rows`)."""
        return -(-spec.N // self.rows) if self.rows else spec.N

    def shapes(self, spec: MPGemmSpec) -> dict:
        """``{"planes", "scales"[, "zeros"]} -> TensorSpec`` of ``spec``'s weight in this layout."""
        self.check(spec)
        out = {"planes": TensorSpec(self._planes_shape(spec), self.planes_dtype),
               "scales": TensorSpec(self.coef_shape(spec, scales=True), spec.scale_dtype)}
        if spec.zero_point:
            out["zeros"] = TensorSpec(self.coef_shape(spec, scales=False), spec.scale_dtype)
        return out

    def coef_shape(self, spec: MPGemmSpec, scales: bool = True) -> tuple:
        """Shape of the scales (or zero points): row-major untiled, tile-major tiled."""
        if scales and spec.format == "ternary":
            return (1,)
        per_row = (spec.groups, spec.planes) if scales and spec.format == "bcq" else (spec.groups,)
        if not self.rows:
            return (spec.N, *per_row)
        return (self.tiles(spec), *per_row, self.rows)

    def doc(self, spec: Optional[MPGemmSpec] = None) -> str:
        """The byte-level description a host program needs (exported headers, weight files)."""
        lines = [f'Packed weight layout "{self.name}" version {self.version} (lutc.layouts), for W [N, K]:']
        if spec is not None:
            lines.append("  " + ", ".join(f"{k} {v.dtype} [{', '.join(map(str, v.shape))}]"
                                          for k, v in self.shapes(spec).items()))
        lines += ["  " + line for line in self.family_doc.strip().splitlines()]
        lines += ["  " + line for line in _COEF_DOC.strip().splitlines()]
        return "\n".join(lines)

    # --- conversion (CPU tensors) ---
    def pack(self, spec: MPGemmSpec, planes: torch.Tensor, scales: torch.Tensor,
             zeros: Optional[torch.Tensor]) -> Tensors:
        """``bitplane`` tensors -> this layout's (exact)."""
        self.check(spec)
        NT = self.tiles(spec)
        return (self._pack_planes(spec, planes.cpu()), self._tile_coef(spec, scales, NT),
                self._tile_coef(spec, zeros, NT))

    def unpack(self, spec: MPGemmSpec, planes: torch.Tensor, scales: torch.Tensor,
               zeros: Optional[torch.Tensor]) -> Tensors:
        """This layout's tensors -> ``bitplane`` (exact inverse of :meth:`pack`)."""
        return (self._unpack_planes(spec, planes.cpu()), self._untile_coef(spec, scales),
                self._untile_coef(spec, zeros))

    def _tile_coef(self, spec, c, NT):
        """Row-major ``[N, G(, b)]`` -> tile-major ``[NT, G(, b), R]`` (zero-padded rows)."""
        if c is None or not self.rows or spec.format == "ternary":
            return None if c is None else c.cpu().contiguous()
        c = _pad_rows(c.cpu(), NT * self.rows).reshape(NT, self.rows, *c.shape[1:])
        return c.permute(0, *range(2, c.dim()), 1).contiguous()

    def _untile_coef(self, spec, c):
        if c is None or not self.rows or spec.format == "ternary":
            return None if c is None else c.cpu().contiguous()
        c = c.cpu()
        return c.movedim(-1, 1).reshape(c.shape[0] * c.shape[-1], *c.shape[1:-1])[:spec.N].contiguous()

    def __repr__(self) -> str:
        return f"Layout({self.name!r})"


_COEF_DOC = """
Coefficients (G = K / group_size, 1 when group_size is -1): untiled layouts keep scales
[N, G] (bcq [N, G, b]: one alpha per plane; ternary [1]) and zeros [N, G]; tiled layouts with
R rows per tile store them tile-major, [ceil(N/R), G, R] (bcq [ceil(N/R), G, b, R]), rows past
N zero. With bit_i the bit of plane i and q = sum_i 2^i bit_i, the weight is
  uniform  s * (q - z),  z = zeros[n, j] or (2^b - 1)/2
  bcq      sum_i alpha_i * (2 bit_i - 1)
  ternary  s * ((2 bit_0 - 1) + (2 bit_1 - 1)) / 2"""


class Bitplane(Layout):
    name = family = BITPLANE
    family_doc = """
planes uint8 [b, N, K/8]: bit (k % 8), least significant first, of byte k/8 in plane i is
bit i of the code of W[n, k] (b = wbits; ternary: 2 planes). Target-neutral."""

    def _planes_shape(self, spec):
        return (spec.planes, spec.N, spec.K // 8)

    def _pack_planes(self, spec, planes):
        return planes.contiguous()

    def _unpack_planes(self, spec, planes):
        return planes.contiguous()


class Tiles(Layout):
    family = "tiles"
    family_doc = """
Rows in tiles of R (N padded with zero-scale rows); planes uint8 [N/R, K/4, b, R/2]: byte j of
planes[t, kg, i] holds in its low nibble the 4 bits of plane i of row t R + j for activations
4 kg .. 4 kg + 3 (least significant first), in its high nibble those of row t R + R/2 + j. One
R/2-byte register load feeds two table shuffles covering R rows."""

    def __init__(self, rows: int):
        self.rows, self.name = rows, f"tiles{rows}"

    def _planes_shape(self, spec):
        return (self.tiles(spec), spec.K // 4, spec.planes, self.rows // 2)

    def _pack_planes(self, spec, byte):
        b, K, R, NT = spec.planes, spec.K, self.rows, self.tiles(spec)
        idx = _nibbles(byte, NT * R)                                            # [b, Np, KG]
        half = idx.reshape(b, NT, 2, R // 2, K // 4).permute(1, 4, 0, 2, 3)     # [NT, KG, b, 2, R/2]
        return (half[..., 0, :] | (half[..., 1, :] << 4)).contiguous()

    def _unpack_planes(self, spec, p):
        NT, KG, b, _ = p.shape
        half = torch.stack([p & 15, p >> 4], -2)                                # [NT, KG, b, 2, R/2]
        idx = half.permute(2, 0, 3, 4, 1).reshape(b, NT * self.rows, KG)[:, :spec.N]
        return _from_nibbles(idx)


class PairedTiles(Layout):
    family = "ptiles"
    family_doc = """
Paired-plane tiles of R rows (an even number of planes): planes uint8 [N/R, K/4, b/2, R]; byte j
of planes[t, kg, p] holds plane 2p + j % 2 of row t R + j // 2 (low nibble) and of row
t R + R/2 + j // 2 (high nibble), 4 activations per nibble as in tiles{R}. A shuffle leaves the
two planes of a row in adjacent bytes, so one vpmaddubsw widens and combines them."""

    def __init__(self, rows: int):
        self.rows, self.name = rows, f"ptiles{rows}"

    def check(self, spec):
        if spec.planes % 2:
            raise ValueError(f"layout {self.name!r} pairs bit planes: it needs an even number, not {spec.planes}")

    def _planes_shape(self, spec):
        return (self.tiles(spec), spec.K // 4, spec.planes // 2, self.rows)

    def _pack_planes(self, spec, byte):
        b, K, R, NT = spec.planes, spec.K, self.rows, self.tiles(spec)
        idx = _nibbles(byte, NT * R)
        t = idx.reshape(b // 2, 2, NT, 2, R // 2, K // 4).permute(2, 5, 0, 3, 4, 1)  # nt kg pair half row plane
        t = t.reshape(NT, K // 4, b // 2, 2, R)
        return (t[..., 0, :] | (t[..., 1, :] << 4)).contiguous()

    def _unpack_planes(self, spec, p):
        NT, KG, pairs, _ = p.shape
        R = self.rows
        t = torch.stack([p & 15, p >> 4], -2).reshape(NT, KG, pairs, 2, R // 2, 2)  # nt kg pair half row plane
        idx = t.permute(2, 5, 0, 3, 4, 1).reshape(2 * pairs, NT * R, KG)[:, :spec.N]
        return _from_nibbles(idx)


class GroupTiles(Layout):
    family = "gtiles"
    family_doc = """
Rows in tiles of R = 32 (N padded with zero-scale rows), activations in quads of 4 groups of 4;
planes uint8 [N/32, K/16, b, 64]: byte 4 j + u of planes[t, kq, i] holds in its low nibble the 4
bits of plane i of row 32 t + j for activations 16 kq + 4 u .. 16 kq + 4 u + 3 (least significant
first), in its high nibble those of row 32 t + 16 + j. A nibble with u in bits 4-5 indexes the
64-byte register of the quad's four 16-entry tables (AVX-512 VBMI vpermb), and the four bytes
of a row are the operand of one 4-way dot product that sums them (VNNI vpdpbusd)."""

    rows = 32

    def __init__(self):
        self.name = "gtiles32"

    def check(self, spec):
        if spec.K % 16:
            raise ValueError(f"layout {self.name!r} needs K to be a multiple of 16, got K={spec.K}")

    def _planes_shape(self, spec):
        return (self.tiles(spec), spec.K // 16, spec.planes, 64)

    def _pack_planes(self, spec, byte):
        b, K, NT = spec.planes, spec.K, self.tiles(spec)
        idx = _nibbles(byte, NT * 32).reshape(b, NT, 2, 16, K // 16, 4)    # plane tile half row quad group
        t = idx.permute(1, 4, 0, 3, 5, 2).reshape(NT, K // 16, b, 64, 2)
        return (t[..., 0] | (t[..., 1] << 4)).contiguous()

    def _unpack_planes(self, spec, p):
        NT, KQ, b, _ = p.shape
        t = torch.stack([p & 15, p >> 4], -1).reshape(NT, KQ, b, 16, 4, 2)  # tile quad plane row group half
        idx = t.permute(2, 0, 5, 3, 1, 4).reshape(b, NT * 32, KQ * 4)[:, :spec.N]
        return _from_nibbles(idx)


def code_bits(wbits: int) -> int:
    """Bits of a code's slot in the ``dot{L}`` layouts (3-bit codes take 4-bit slots)."""
    return {1: 1, 2: 2, 3: 4, 4: 4}[wbits]


def integer_codes(spec: MPGemmSpec, byte: torch.Tensor) -> torch.Tensor:
    """``bitplane`` planes -> the integer codes int64 ``[N, K]`` that the multiply-add and
    tensor-core layouts hold: uniform ``q``, ternary ``t + 1`` (0..2, the sum of its two bits:
    ``w = s (code - spec.code_center)`` for both)."""
    if spec.format == "ternary":
        bits = _unpack_bits(byte, spec.K).to(torch.int64)
        return bits[0] + bits[1]
    return planes_to_codes(byte, spec.K, spec.wbits)


def integer_planes(spec: MPGemmSpec, code: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`integer_codes`: codes ``[N, K]`` -> ``bitplane`` planes."""
    if spec.format == "ternary":
        return pack_bits(torch.stack([code >= 1, code >= 2]))
    return codes_to_planes(code, spec.wbits)


class Dot(Layout):
    family = "dot"
    family_doc = """
Integer codes for multiply-add kernels (uniform q; ternary t + 1), each in a slot of w bits
(w = 1, 2, or 4 for 3- and 4-bit codes; c = 8/w codes per byte). Rows in tiles of L; planes
uint8 [N/L, K/(4c), 4L]: byte 4r + u of chunk kc holds, in bits [w s, w s + w), the code of row
r at k = 4 c kc + 4 s + u. One 4L-byte load, shifted by w s and masked, is the operand of one
dot instruction (4 codes of each of L rows times 4 activations)."""

    def __init__(self, rows: int):
        self.rows, self.name = rows, f"dot{rows}"

    def check(self, spec):
        if spec.format == "bcq":
            raise ValueError(f"layout {self.name!r} holds integer codes: uniform and ternary formats only")
        c = 8 // code_bits(spec.wbits)
        if spec.K % (4 * c):
            raise ValueError(f"layout {self.name!r} needs K to be a multiple of {4 * c}, got K={spec.K}")

    def _planes_shape(self, spec):
        return (self.tiles(spec), spec.K // (4 * (8 // code_bits(spec.wbits))), 4 * self.rows)

    def _pack_planes(self, spec, byte):
        L, NT, K = self.rows, self.tiles(spec), spec.K
        code = integer_codes(spec, byte)
        w = code_bits(spec.wbits)
        c = 8 // w
        code = _pad_rows(code, NT * L)
        code = code.reshape(NT, L, K // (4 * c), c, 4).permute(0, 2, 1, 4, 3)  # [NT, KC, L, 4, c]
        packed = sum(code[..., s] << (w * s) for s in range(c))
        return packed.reshape(NT, K // (4 * c), 4 * L).to(torch.uint8).contiguous()

    def _unpack_planes(self, spec, p):
        L, w = self.rows, code_bits(spec.wbits)
        c = 8 // w
        NT, KC, _ = p.shape
        p = p.to(torch.int32).reshape(NT, KC, L, 4)
        code = torch.stack([(p >> (w * s)) & (2 ** w - 1) for s in range(c)], -1)   # [NT, KC, L, 4, c]
        return integer_planes(spec, code.permute(0, 2, 1, 4, 3).reshape(NT * L, spec.K)[: spec.N])


#: CUDA: 32 rows (one per lane), 128-weight slices (one 16-byte load per lane and plane).
WARP_ROWS, WARP_K = 32, 128


class Warp32(Layout):
    name = family = "warp32"
    rows = WARP_ROWS
    planes_dtype = "int32"
    family_doc = """
For CUDA: lane l of a warp owns row 32 t + l of tile t. planes int32 [N/32, K/128, b, 32, 4]:
the 16 bytes of planes[t, u, i, l] are bytes 16 u .. 16 u + 15 of row 32 t + l of bitplane
plane i, so word q holds bits k = 128 u + 32 q .. + 31 (least significant first). One warp load
reads 512 contiguous bytes."""

    def check(self, spec):
        if spec.K % WARP_K:
            raise ValueError(f"layout 'warp32' needs K to be a multiple of {WARP_K}, got K={spec.K}")

    def _planes_shape(self, spec):
        return (self.tiles(spec), spec.K // WARP_K, spec.planes, WARP_ROWS, 4)

    def _pack_planes(self, spec, byte):
        b, K, NT = spec.planes, spec.K, self.tiles(spec)
        p = torch.nn.functional.pad(byte, (0, 0, 0, NT * WARP_ROWS - spec.N))       # [b, NT*32, K/8]
        p = p.reshape(b, NT, WARP_ROWS, K // WARP_K, 16).permute(1, 3, 0, 2, 4).contiguous()
        return p.view(torch.int32)                                                  # [NT, KU, b, 32, 4]

    def _unpack_planes(self, spec, p):
        NT, KU, b, R, _ = p.shape
        p = p.contiguous().view(torch.uint8).reshape(NT, KU, b, R, 16)
        return p.permute(2, 0, 3, 1, 4).reshape(b, NT * R, KU * 16)[:, :spec.N].contiguous()


#: Tensor-core layout (uniform W1-W4, ternary): 16-row tiles, 128-weight units.
TC_ROWS = 16


def tc16_code_bits(spec: MPGemmSpec) -> int:
    """Bits of a code's slot in ``tc16``: 2 for 1- and 2-bit codes and ternary, 4 for 3- and
    4-bit codes. The kernels' dequantization (one LOP3 under a magic number per code pair,
    ``schedules.cuda_ptx.deq``) reads 2- and 4-bit fields that tile a byte; a wider slot costs
    the bits (W3 reads 4 bits per weight, W1 2) and keeps one kernel per slot width."""
    return 2 if spec.planes <= 2 else 4


def tc16_vectors(spec: MPGemmSpec) -> int:
    """16-byte vectors per lane, 16-row tile and 128-weight unit in ``tc16``: half the slot width
    (a unit holds 2048 codes, 512 bytes per 2 bits of slot)."""
    return tc16_code_bits(spec) // 2


def tc_shifts(b: int) -> torch.Tensor:
    """Bit position of code ``e`` of slot ``v`` in a ``tc16`` word: ``[16/b, 2]``."""
    v = torch.arange(16 // b)[:, None]
    return 8 * (v // (8 // b)) + b * (v % (8 // b)) + 16 * torch.arange(2)[None, :]


class TC16(Layout):
    name = family = "tc16"
    rows = TC_ROWS
    planes_dtype = "int32"
    #: Version 2 puts k in the tensor cores' own order (version 1 gave a lane 32 contiguous k):
    #: x then enters ``wgmma``'s shared-memory operand in 16-byte copies (``cuda_wgmma``).
    version = LAYOUT_VERSION + 1
    family_doc = """
For tensor-core (mma.sync m16n8k16, wgmma) kernels, integer codes q (uniform q = sum_i 2^i bit_i,
ternary t + 1 in 0..2) in w-bit slots (w = 2 for W1, W2 and ternary, 4 for W3 and W4; the bits
above a code are zero) placed where one lane needs them as fragments; the weight is s (q - c)
with c the zero point, (2^wbits - 1)/2 for uniform codes without (W3: 3.5, W1: 0.5), 1 for
ternary. Rows in 16-row tiles, K in 128-weight units; planes int32 [N/16, K/128, w/2, 32, 4].
Lane l = 4 g + c of tile T, unit u owns the 2 w words W[j] = planes[T, u, j / 4, l, j % 4];
they hold 32 pairs P = 4 s + 2 t + h (s < 8; t, h < 2): the codes of row 16 T + 8 t + g at
k = 128 u + 16 s + 8 h + 2 c + e (e < 2), the fragment's own k order (k16 step s), pair P in
word P / (16/w), slot v = P % (16/w), code e at bit 8 (v / (8/w)) + w (v % (8/w)) + 16 e.
Ternary's one scale is stored per row, scales [N/16, 1, 16] (rows past N zero): the kernels
read every format's coefficients alike."""

    def check(self, spec):
        if spec.format == "bcq":
            raise ValueError("layout 'tc16' holds integer codes (uniform, ternary), not bcq: its "
                             "planes carry one alpha each")
        if spec.K % 128:
            raise ValueError(f"layout 'tc16' needs K to be a multiple of 128, got K={spec.K}")

    def coef_shape(self, spec, scales=True):
        if scales and spec.format == "ternary":     # the tensor's scale, per row (module docstring)
            return (self.tiles(spec), 1, self.rows)
        return super().coef_shape(spec, scales)

    def _tile_coef(self, spec, c, NT):
        if c is not None and spec.format == "ternary":   # one group of one scale per row, then tiled
            per_row = c.cpu().reshape(1, 1).expand(spec.N, 1)
            return super()._tile_coef(spec.with_(format="uniform"), per_row, NT)
        return super()._tile_coef(spec, c, NT)

    def _untile_coef(self, spec, c):
        if c is not None and spec.format == "ternary":
            rows = super()._untile_coef(spec.with_(format="uniform"), c).reshape(-1)
            if not bool((rows == rows[0]).all()):
                raise ValueError("ternary 'tc16' scales differ between rows: a ternary weight has one scale")
            return rows[:1].contiguous()
        return super()._untile_coef(spec, c)

    def _planes_shape(self, spec):
        return (self.tiles(spec), spec.K // 128, tc16_vectors(spec), 32, 4)

    def _pack_planes(self, spec, byte):
        b, K, NT = tc16_code_bits(spec), spec.K, self.tiles(spec)
        q = _pad_rows(integer_codes(spec, byte), NT * TC_ROWS)                             # [Np, K]
        # n = (T 2 + t) 8 + g ; k = u 128 + s 16 + h 8 + c 2 + e
        q = q.reshape(NT, 2, 8, K // 128, 8, 2, 4, 2).permute(0, 3, 2, 6, 4, 1, 5, 7)   # T u g c s t h e
        q = q.reshape(NT, K // 128, 32, 2 * b, 16 // b, 2)                               # lane, word, slot, e
        words = (q << tc_shifts(b)).sum((-1, -2))                                         # [NT, KU, 32, 2b]
        words = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)
        return words.reshape(NT, K // 128, 32, b // 2, 4).permute(0, 1, 3, 2, 4).contiguous()

    def _unpack_planes(self, spec, p):
        codes = tc16_codes(p)[:spec.N].cpu()
        top = int(2 * spec.code_center)                  # codes run 0 .. 2c (uniform 2^b - 1, ternary 2)
        if codes.numel() and int(codes.max()) > top:     # the kernels would read the stray bits
            raise ValueError(f"'tc16' planes hold a code above {top}, the largest of a {spec.format} "
                             f"w{spec.wbits} weight: bits above a code must be zero")
        return integer_planes(spec, codes)


def tc16_codes(planes: torch.Tensor) -> torch.Tensor:
    """The integer codes int64 ``[N/16 * 16, K]`` held by ``tc16`` planes (their slot width is
    in the shape: ``b/2`` vectors per lane), on their device (the inverse of ``TC16``'s
    packing; benchmarks check GPU kernels with it)."""
    NT, KU, vectors = planes.shape[:3]
    b = 2 * vectors
    words = planes.to(torch.int64) & 0xFFFFFFFF
    words = words.permute(0, 1, 3, 2, 4).reshape(NT, KU, 32, 2 * b, 1, 1)
    q = (words >> tc_shifts(b).to(words.device)) & (2 ** b - 1)                       # [NT, KU, 32, 2b, PW, 2]
    # T u g c s t h e -> n = (T 2 + t) 8 + g ; k = u 128 + s 16 + h 8 + c 2 + e
    return q.reshape(NT, KU, 8, 4, 8, 2, 2, 2).permute(0, 5, 2, 1, 4, 6, 3, 7).reshape(NT * TC_ROWS, KU * 128)


TILE_ROWS = (32, 64, 128)   # NEON, AVX2, AVX-512BW: two nibbles per byte of a 16/32/64-byte register
PAIRED_ROWS = (32, 64)      # AVX2, AVX-512BW: two planes of R/2 rows per nibble of an R-byte register
DOT_ROWS = (4, 16)          # int32 lanes of a NEON / AVX-512 register

#: Every layout this lutc reads and writes, by name.
LAYOUTS = {lay.name: lay for lay in [Bitplane(), *(Tiles(r) for r in TILE_ROWS),
                                     *(PairedTiles(r) for r in PAIRED_ROWS),
                                     GroupTiles(), *(Dot(r) for r in DOT_ROWS), Warp32(), TC16()]}


def get(name: str) -> Layout:
    """The layout called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return LAYOUTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown weight layout {name!r}: one of {list(LAYOUTS)}") from None


def check_version(name: str, version) -> Layout:
    """The layout ``name`` if this lutc reads its ``version``; ``ValueError`` otherwise."""
    layout = get(name)
    if version != layout.version:
        raise ValueError(f"packed weight layout {name!r} is version {version}; this lutc reads "
                         f"version {layout.version}: quantize the weight again")
    return layout


# --- bit helpers shared by the families ---
def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool ``[..., K]`` tensor into uint8 ``[..., K/8]``, least significant bit first."""
    packed = np.packbits(bits.cpu().numpy().astype(np.uint8), axis=-1, bitorder="little")
    return torch.from_numpy(packed).contiguous()


def codes_to_planes(codes: torch.Tensor, wbits: int) -> torch.Tensor:
    """Integer codes ``[N, K]`` (0 .. 2^b - 1) -> ``bitplane`` planes, uint8 ``[b, N, K/8]``."""
    return pack_bits(torch.stack([(codes >> i) & 1 for i in range(wbits)]).bool())


def planes_to_codes(byte: torch.Tensor, K: int, wbits: int) -> torch.Tensor:
    """``bitplane`` planes uint8 ``[b, N, K/8]`` -> integer codes int64 ``[N, K]`` (inverse of
    :func:`codes_to_planes`)."""
    bits = _unpack_bits(byte, K).to(torch.int64)
    return sum(bits[i] << i for i in range(wbits))


def _unpack_bits(byte: torch.Tensor, K: int) -> torch.Tensor:
    """uint8 ``[b, N, K/8]`` -> ``{0, 1}`` uint8 ``[b, N, K]``."""
    return torch.from_numpy(np.unpackbits(byte.numpy(), axis=-1, bitorder="little")[..., :K])


def _nibbles(byte: torch.Tensor, rows: int) -> torch.Tensor:
    """bitplane bytes ``[b, N, K/8]`` -> 4-bit table indices ``[b, rows, K/4]`` (rows zero-padded)."""
    b, N, KB = byte.shape
    idx = torch.stack([byte & 15, byte >> 4], -1).reshape(b, N, 2 * KB)
    return torch.nn.functional.pad(idx, (0, 0, 0, rows - N))


def _from_nibbles(idx: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_nibbles` (without the padding): ``[b, N, K/4]`` -> ``[b, N, K/8]``."""
    return (idx[..., 0::2] | (idx[..., 1::2] << 4)).contiguous()


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    pad = torch.zeros((rows - t.shape[0], *t.shape[1:]), dtype=t.dtype)
    return torch.cat([t, pad]) if rows > t.shape[0] else t
