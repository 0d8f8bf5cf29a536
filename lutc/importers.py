r"""Quantized checkpoints in: GPTQ, AWQ, compressed-tensors and GGUF tensors as :class:`lutc.PackedWeights`.

Every importer reads the format's integer codes, scales and zero points and rebuilds the same
weight in lutc's ``uniform`` format with zero points, ``w = s (q - z)``, exactly: the float64
:meth:`lutc.PackedWeights.dequantize` of the result equals the format's own dequantization to
float rounding of the scale dtype (the tests compare against each format's reference packer or
reader). No requantization happens; the weight can then go to any layout (``lutc.repack``) or
into a model (``lutc.LUTLinear.from_packed``).

    >>> import torch, lutc
    >>> N, K, bits, gs = 64, 256, 4, 128
    >>> codes = torch.randint(0, 16, (N, K))
    >>> qweight = lutc.importers.pack_bitstream(codes, bits).T.contiguous()     # GPTQ: [K*bits/32, N]
    >>> qzeros = lutc.importers.pack_bitstream(torch.full((K // gs, N), 7), bits)  # v1: zero - 1
    >>> scales = torch.rand(K // gs, N).half()
    >>> qw = lutc.import_weights({"qweight": qweight, "qzeros": qzeros, "scales": scales},
    ...                          format="gptq", bits=4, group_size=128)
    >>> ref = scales.double().repeat_interleave(gs, 0).T * (codes.double() - 8)
    >>> bool((qw.dequantize() - ref).abs().max() == 0)
    True

What imports (``bits``: weight bits; ``G``: groups of ``group_size`` along K):

==================  ==========================================  ==================================
format              tensors                                     imported as
==================  ==========================================  ==================================
``gptq`` (v1)       ``qweight`` int32 [K bits/32, N] (codes     uniform, ``zero_point``, bits 2/3/4,
(AutoGPTQ,          along K, a dense little-endian bit stream   group 32/64/128 or -1, fp16
GPTQModel)          per column), ``qzeros`` int32 [G, N bits/   scales; symmetric and asymmetric
                    32] (stored ``zero - 1``), ``scales`` [G,   (symmetric: zero ``2^(bits-1)``);
                    N], ``g_idx`` [K] (optional; act-order)     act-order as ``perm``;
                                                                ``checkpoint_format="gptq_v2"``
                                                                for zeros stored as they are
``awq`` (GEMM)      ``qweight`` int32 [K, N/8] (8 codes per     uniform, ``zero_point``, 4 bits
                    word in the order 0 2 4 6 1 3 5 7),         
                    ``qzeros`` int32 [G, N/8], ``scales`` [G,   
                    N]                                          
``compressed-       ``weight_packed`` int32 [N, K bits/32]      uniform, ``zero_point``, bits 2/3/4
tensors``           (signed codes + 2^(bits-1), dense stream    (float32 scales for bf16 ones)
(pack-quantized)    along K), ``weight_scale`` [N, G],          
                    ``weight_zero_point`` [N bits/32, G]        
                    (asymmetric only), ``weight_shape``         
GGUF ``Q4_0``       blocks of 32: fp16 ``d``, 4-bit ``q``:      uniform W4 g32, zero 8, fp16 scales
                    ``d (q - 8)``
GGUF ``Q4_1``       ``d q + m``                                 W4 g32, float32 scale and zero
GGUF ``Q4_K``       super-blocks of 256: ``d sc q - dmin m``    W4 g32, float32 scale ``d sc``
                    (6-bit sub-scales and mins per 32)          and zero ``dmin m / (d sc)``
GGUF ``TQ2_0``,     ternary blocks of 256 (2-bit or base-3      uniform W2 g128, zero 1, the
``TQ1_0``           packed trits) with an fp16 scale each:      block's fp16 scale on both its
                    ``d (q - 1)``                               groups
==================  ==========================================  ==================================

GPTQ act-order (``desc_act=True``: ``g_idx`` not ``k // group_size``) imports with the column
order that makes the groups contiguous (``PackedWeights.perm``): the kernels read the permuted
weight and ``x`` is gathered in that order per call (``Kernel``, the op and ``LUTLinear`` do it).

Not imported, with the reason in the error: 8-bit codes, group
sizes lutc's kernels lack (16, 256, ...), GGUF ``Q2_K`` (sub-blocks of 16), ``Q5``/``Q6``/``Q8``
types (more than 4 bits) and the ``IQ`` types (codebooks).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .formats import PackedWeights, from_codes, from_planes
from .spec import GROUP_SIZES

FORMATS = ("gptq", "awq", "compressed-tensors")
#: AWQ's GEMM kernel order: nibble i of a word holds output column 8 c + AWQ_ORDER[i].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def import_weights(tensors: Mapping[str, torch.Tensor], format: str, bits: int,
                   group_size: Optional[int] = 128, sym: Optional[bool] = None,
                   checkpoint_format: str = "gptq") -> PackedWeights:
    """One quantized linear layer's tensors -> :class:`lutc.PackedWeights` (module docstring).

    Args:
        tensors: the layer's tensors by their names in the checkpoint (``qweight``, ``qzeros``,
            ``scales``, ``g_idx``; or ``weight_packed``, ``weight_scale``, ...).
        format: ``"gptq"``, ``"awq"`` or ``"compressed-tensors"``.
        bits, group_size: as the checkpoint's ``quantization_config`` says (``group_size`` -1 or
            None: one group per row).
        sym: compressed-tensors only: symmetric (no ``weight_zero_point``); default: whether
            the zero points are absent.
        checkpoint_format: GPTQ only: ``"gptq"`` (v1, zeros stored minus one) or ``"gptq_v2"``.

    Example: the module docstring.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)} (GGUF: lutc.import_gguf), got {format!r}")
    if isinstance(bits, bool) or bits not in (2, 3, 4):
        raise ValueError(f"bits={bits!r}: lutc imports 2-, 3- and 4-bit codes")
    group_size = -1 if group_size in (None, -1, 0) else group_size
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size={group_size}: lutc's kernels take groups of {list(GROUP_SIZES)}")
    if format == "gptq":
        return _gptq(tensors, bits, group_size, checkpoint_format)
    if format == "awq":
        return _awq(tensors, bits, group_size)
    return _compressed_tensors(tensors, bits, group_size, sym)


def _need(tensors: Mapping, name: str, format: str) -> torch.Tensor:
    t = tensors.get(name)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{format} tensors need {name!r} (a torch.Tensor); got {sorted(tensors)}")
    return t.detach().cpu()


def _int32(name: str, t: torch.Tensor, shape: tuple) -> torch.Tensor:
    if t.dtype not in (torch.int32, torch.uint32) or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}, expected int32 {tuple(shape)}")
    return t.contiguous()


def _groups(K: int, group_size: int) -> int:
    if group_size != -1 and K % group_size:
        raise ValueError(f"K={K} is not a multiple of group_size={group_size}")
    return 1 if group_size == -1 else K // group_size


def _scales(name: str, t: torch.Tensor, shape: tuple) -> tuple:
    """Scales as lutc stores them: the tensor (transposed by the caller) and its dtype name;
    float16 stays, bfloat16 and float32 become float32 (exact)."""
    if tuple(t.shape) != tuple(shape) or not t.is_floating_point():
        raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}, expected a float tensor {tuple(shape)}")
    return (t, "float16") if t.dtype == torch.float16 else (t.float(), "float32")


def _gptq(tensors, bits: int, group_size: int, checkpoint_format: str) -> PackedWeights:
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' (v1) or 'gptq_v2', got {checkpoint_format!r}")
    qweight = _need(tensors, "qweight", "gptq")
    if qweight.dim() != 2 or (qweight.shape[0] * 32) % bits:
        raise ValueError(f"qweight has shape {tuple(qweight.shape)}, expected [K * {bits} / 32, N]")
    K, N = qweight.shape[0] * 32 // bits, qweight.shape[1]
    G = _groups(K, group_size)
    scales, sdt = _scales("scales", _need(tensors, "scales", "gptq"), (G, N))
    qzeros = _int32("qzeros", _need(tensors, "qzeros", "gptq"), (G, -(-N * bits // 32)))
    perm = _act_order(tensors.get("g_idx"), K, group_size)
    planes = stream_planes(qweight.T.contiguous(), K, bits, perm)                 # [b, N, K/8]
    zeros = unpack_bitstream(qzeros, N, bits).T.double()                          # [N, G]
    if checkpoint_format == "gptq":
        zeros = zeros + 1      # v1 stores zero - 1 (and its kernels add the 1 back without masking)
    qw = from_planes(planes, bits, group_size, scales.T.contiguous(), zeros, scale_dtype=sdt)
    return qw if perm is None else dataclasses.replace(qw, perm=perm)


def _act_order(g_idx: Optional[torch.Tensor], K: int, group_size: int) -> Optional[torch.Tensor]:
    """None for ``g_idx = k // group_size`` (or none); else the column order that makes the
    groups contiguous (act-order, ``desc_act=True``): the stored weight takes input features in
    this order and ``x`` is permuted the same way per call (as Marlin does), one gather of K."""
    if g_idx is None:
        return None
    gs = K if group_size == -1 else group_size
    g_idx = g_idx.detach().cpu().long()
    if g_idx.shape != (K,):
        raise ValueError(f"g_idx has shape {tuple(g_idx.shape)}, expected [K={K}]")
    if torch.equal(g_idx, torch.arange(K) // gs):
        return None
    counts = torch.bincount(g_idx, minlength=K // gs)
    if counts.numel() != K // gs or not bool((counts == gs).all()):
        raise ValueError(f"g_idx does not give each of the {K // gs} groups {gs} columns: not a "
                         "GPTQ act-order index")
    return torch.sort(g_idx, stable=True).indices


def _awq(tensors, bits: int, group_size: int) -> PackedWeights:
    if bits != 4:
        raise ValueError(f"bits={bits}: AWQ's GEMM layout packs 4-bit codes")
    qweight = _need(tensors, "qweight", "awq")
    if qweight.dim() != 2:
        raise ValueError(f"qweight has shape {tuple(qweight.shape)}, expected [K, N / 8]")
    K, N = qweight.shape[0], qweight.shape[1] * 8
    G = _groups(K, group_size)
    scales, sdt = _scales("scales", _need(tensors, "scales", "awq"), (G, N))
    qzeros = _int32("qzeros", _need(tensors, "qzeros", "awq"), (G, N // 8))
    codes = _awq_unpack(_int32("qweight", qweight, (K, N // 8))).T                # [N, K]
    zeros = _awq_unpack(qzeros).T.double()                                        # [N, G]
    return from_codes(codes, 4, group_size, scales.T.contiguous(), zeros, scale_dtype=sdt)


def _awq_unpack(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] in AWQ's order -> codes [R, 8 C]."""
    nib = torch.stack([(words.long() >> (4 * i)) & 15 for i in range(8)], -1)    # [R, C, i]
    out = torch.empty_like(nib)
    out[..., list(AWQ_ORDER)] = nib
    return out.reshape(words.shape[0], -1)


def _compressed_tensors(tensors, bits: int, group_size: int, sym: Optional[bool]) -> PackedWeights:
    packed = _need(tensors, "weight_packed", "compressed-tensors")
    if "weight_shape" in tensors:
        N, K = (int(v) for v in tensors["weight_shape"].tolist())
    else:
        N, K = packed.shape[0], packed.shape[1] * 32 // bits
    packed = _int32("weight_packed", packed, (N, -(-K * bits // 32)))
    G = _groups(K, group_size)
    scales, sdt = _scales("weight_scale", _need(tensors, "weight_scale", "compressed-tensors"), (N, G))
    zp = tensors.get("weight_zero_point")
    sym = zp is None if sym is None else sym
    offset = 1 << (bits - 1)           # codes are stored as signed values + 2^(bits-1)
    planes = stream_planes(packed, K, bits)
    if sym:
        zeros = torch.full((N, G), float(offset), dtype=torch.float64)
    else:
        if zp is None:
            raise ValueError("asymmetric compressed-tensors weights need 'weight_zero_point'")
        zp = _int32("weight_zero_point", zp.detach().cpu(), (-(-N * bits // 32), G))
        zeros = unpack_bitstream(zp.T.contiguous(), N, bits).T.double()           # [N, G], stored + offset
    return from_planes(planes, bits, group_size, scales.contiguous(), zeros, scale_dtype=sdt)


# --- dense little-endian bit streams (GPTQ's qweight/qzeros, compressed-tensors) ---
def unpack_bitstream(words: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """int32 ``[R, W]`` holding, per row, ``count`` codes of ``bits`` bits as one little-endian
    bit stream (code ``j`` at bits ``j bits .. j bits + bits - 1``, across word boundaries) ->
    int64 codes ``[R, count]``. GPTQ's 3-bit packing (10 2/3 codes per word) is this stream."""
    weights = (1 << np.arange(bits, dtype=np.int64))
    return torch.from_numpy(_stream_bits(words, count, bits).astype(np.int64) @ weights)


def _stream_bits(words: torch.Tensor, count: int, bits: int) -> np.ndarray:
    """The bit stream of each row of ``words`` as ``{0, 1}`` uint8 ``[R, count, bits]``."""
    rows = words.shape[0]
    stream = np.unpackbits(words.contiguous().numpy().view(np.uint8).reshape(rows, -1), axis=-1,
                           bitorder="little")
    return stream[:, :count * bits].reshape(rows, count, bits)


def stream_planes(words: torch.Tensor, count: int, bits: int, perm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`unpack_bitstream` straight to lutc's bit planes (uint8 ``[bits, R, count/8]``):
    bit ``i`` of every code is every ``bits``-th bit of the stream, so no integer codes are
    formed (4096x4096 W4: ~0.1 s instead of ~1 s). ``perm``: take the codes in this order."""
    stream = _stream_bits(words, count, bits)
    if perm is not None:            # codes in this column order (act-order)
        stream = stream[:, perm.numpy()]
    planes = np.packbits(np.ascontiguousarray(stream.transpose(2, 0, 1)), axis=-1, bitorder="little")
    return torch.from_numpy(planes)


def pack_bitstream(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`unpack_bitstream`: codes ``[R, count]`` -> int32 ``[R, ceil(count bits / 32)]``."""
    rows, count = codes.shape
    bitsarr = ((codes.long().numpy()[..., None] >> np.arange(bits)) & 1).astype(np.uint8)
    stream = bitsarr.reshape(rows, count * bits)
    words = -(-count * bits // 32)
    stream = np.pad(stream, ((0, 0), (0, words * 32 - count * bits)))
    return torch.from_numpy(np.packbits(stream, axis=-1, bitorder="little").view(np.int32).copy())


# --- GGUF ---
def open_gguf(path: Union[str, os.PathLike]):
    """A ``gguf.GGUFReader`` of ``path`` (memory-mapped); errors name the file, and a missing
    ``gguf`` package says how to install it.

    Example:
        >>> reader = lutc.importers.open_gguf("model.gguf")                # doctest: +SKIP
        >>> [t.name for t in reader.tensors][:2]                            # doctest: +SKIP
        ['token_embd.weight', 'blk.0.attn_norm.weight']
    """
    try:
        import gguf
    except ImportError:
        raise ImportError("lutc reads GGUF files with the gguf package: pip install gguf") from None
    try:
        return gguf.GGUFReader(os.fspath(path))
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise ValueError(f"{os.fspath(path)} is not a readable GGUF file: {e}") from None


def import_gguf(source: Union[str, os.PathLike, object], name: str,
                rows: Optional[Sequence[int]] = None) -> PackedWeights:
    """The tensor ``name`` of a GGUF file (a path, or a ``gguf.GGUFReader``) as packed weights.

    ``rows``: the output rows in this order (a permutation of ``range(N)``), e.g. the inverse of
    llama.cpp's interleaving of the rotary halves of ``attn_q``/``attn_k`` (:func:`lutc.load_gguf`
    asks transformers' tensor processor for it). Rows are whole blocks, so this is exact.

    Example:
        >>> qw = lutc.import_gguf("model.gguf", "blk.0.ffn_up.weight")   # doctest: +SKIP
    """
    reader = source if hasattr(source, "tensors") else open_gguf(source)
    import gguf     # present: open_gguf, or the caller's reader, needed it
    found = [t for t in reader.tensors if t.name == name]
    if not found:
        raise ValueError(f"no tensor {name!r} in the GGUF file; it has {[t.name for t in reader.tensors][:20]}...")
    t = found[0]
    qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
    if len(t.shape) != 2:
        raise ValueError(f"GGUF tensor {name!r} has shape {list(t.shape)}: lutc imports 2-D weights")
    K, N = (int(v) for v in t.shape)            # GGUF lists ne0 (the row length) first
    blocks = np.ascontiguousarray(t.data).reshape(N, -1)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if sorted(rows.tolist()) != list(range(N)):
            raise ValueError(f"rows for GGUF tensor {name!r} must be a permutation of range({N})")
        blocks = blocks[rows]
    if qtype.name not in _GGUF:
        raise ValueError(f"GGUF tensor {name!r} is {qtype.name}; lutc imports {sorted(_GGUF)} "
                         f"(lutc.importers docstring says why not the others)")
    return import_ggml_blocks(blocks, qtype.name, N, K)


def import_ggml_blocks(blocks: np.ndarray, qtype: str, N: int, K: int) -> PackedWeights:
    """ggml's quantized blocks of an ``[N, K]`` weight (``uint8 [N, bytes per row]``, ggml's
    row order: the bytes of ``ggml_tensor.data`` or of a GGUF tensor) as packed weights, exactly.

    ``qtype``: a ggml type name lutc imports (``Q4_0``, ``Q4_1``, ``Q4_K``, ``TQ1_0``, ``TQ2_0``).
    Used by :func:`import_gguf` and by hosts that hand lutc a ggml tensor (``examples/ggml``).

    Example:
        >>> import gguf, numpy as np
        >>> w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
        >>> blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
        >>> from lutc.importers import import_ggml_blocks
        >>> qw = import_ggml_blocks(blocks, "Q4_0", 64, 256)
        >>> qw.wbits, qw.group_size, qw.zero_point
        (4, 32, True)
    """
    if qtype not in _GGUF:
        raise ValueError(f"ggml type {qtype!r}: lutc imports {sorted(_GGUF)} "
                         f"(lutc.importers docstring says why not the others)")
    rows = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(N, -1)
    return _GGUF[qtype](rows, N, K)


def _blocks(rows: np.ndarray, N: int, K: int, block_bytes: int, per_block: int) -> np.ndarray:
    if K % per_block or rows.shape[1] != K // per_block * block_bytes:
        raise ValueError(f"GGUF data of {rows.shape[1]} bytes per row does not hold {K} weights in "
                         f"blocks of {per_block} ({block_bytes} bytes each)")
    return rows.reshape(N, K // per_block, block_bytes)


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """16 bytes of a 32-weight block -> 32 codes: low nibbles first, then high (ggml's order)."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int64)


def _q4_0(rows, N, K):
    b = _blocks(rows, N, K, 18, 32)
    d = b[..., :2].copy().view(np.float16)[..., 0]                                # [N, G]
    codes = _nibbles32(b[..., 2:]).reshape(N, K)
    return from_codes(torch.from_numpy(codes), 4, 32, torch.from_numpy(d.copy()),
                      torch.full((N, K // 32), 8.0, dtype=torch.float64), scale_dtype="float16")


def _q4_1(rows, N, K):
    b = _blocks(rows, N, K, 20, 32)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    codes = _nibbles32(b[..., 4:]).reshape(N, K)
    return _with_min(codes, d, m, N, K)


def _q4_k(rows, N, K):
    b = _blocks(rows, N, K, 144, 256)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)            # [N, SB]
    dmin = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    sc, mn = _k_scale_min(b[..., 4:16])                                           # [N, SB, 8]
    qs = b[..., 16:].reshape(N, K // 256, 4, 32)                                  # pairs of sub-blocks
    codes = np.stack([qs & 15, qs >> 4], axis=3).reshape(N, K).astype(np.int64)   # sub-block 2j: low
    scale = (d[..., None] * sc).reshape(N, -1)          # exact in float32 (11 x 6 bits)
    minus = (dmin[..., None] * mn).reshape(N, -1)
    return _with_min(codes, scale, -minus, N, K)


def _k_scale_min(s: np.ndarray) -> tuple:
    """The 8 6-bit sub-block scales and mins packed in 12 bytes (ggml's get_scale_min_k4)."""
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1).astype(np.float32)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1).astype(np.float32)
    return sc, mn


def _with_min(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, N: int, K: int) -> PackedWeights:
    """``w = scale q + offset`` per group of 32 as ``s (q - z)``: ``s = scale``, ``z = -offset / s``
    (float32). A group with a zero scale is the constant ``offset``: its codes become 0 and
    ``s = |offset|``, ``z = -sign(offset)`` (``s = 1, z = 0`` for an all-zero group): exact."""
    s = torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32))
    off = torch.from_numpy(np.ascontiguousarray(offset, dtype=np.float32))
    const = s == 0
    q = torch.from_numpy(codes).reshape(N, K // 32, 32).masked_fill(const[..., None], 0).reshape(N, K)
    s = torch.where(const, torch.where(off != 0, off.abs(), torch.ones_like(off)), s)
    z = -off / s
    return from_codes(q, 4, 32, s, z.double(), scale_dtype="float32")


def _ternary_blocks(trits: np.ndarray, d: np.ndarray, N: int, K: int) -> PackedWeights:
    """Ternary blocks of 256 with one fp16 scale each, ``w = d (q - 1)``, ``q`` in 0..2 (3 in
    corrupt data is kept: ``2 d``): lutc's uniform W2 with zero point 1 and groups of 128, the
    block's scale on both of its groups (exact; the 2-bit kernels run it)."""
    scales = torch.from_numpy(np.repeat(d.astype(np.float16), 2, axis=-1).copy())      # [N, K/128]
    return from_codes(torch.from_numpy(trits.reshape(N, K).astype(np.int64)), 2, 128, scales,
                      torch.ones(N, K // 128, dtype=torch.float64), scale_dtype="float16")


def _tq2_0(rows, N, K):
    b = _blocks(rows, N, K, 66, 256)
    qs = b[..., :64].reshape(N, K // 256, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
    d = b[..., 64:66].copy().view(np.float16)[..., 0]
    return _ternary_blocks(qs & 3, d, N, K)


def _tq1_0(rows, N, K):
    """Five trits per byte in base 3, scaled to a byte (``q = (3 v) >> 8`` of the byte times 3^i)."""
    b = _blocks(rows, N, K, 54, 256)
    pow3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
    qs0 = (b[..., :32].reshape(N, -1, 1, 32) * pow3.reshape(1, 1, 5, 1)).reshape(N, K // 256, 160)
    qs1 = (b[..., 32:48].reshape(N, -1, 1, 16) * pow3.reshape(1, 1, 5, 1)).reshape(N, K // 256, 80)
    qh = (b[..., 48:52].reshape(N, -1, 1, 4) * pow3[:4].reshape(1, 1, 4, 1)).reshape(N, K // 256, 16)
    v = np.concatenate([qs0, qs1, qh], axis=-1).astype(np.uint16)
    d = b[..., 52:54].copy().view(np.float16)[..., 0]
    return _ternary_blocks((v * 3) >> 8, d, N, K)


_GGUF = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k, "TQ1_0": _tq1_0, "TQ2_0": _tq2_0}
#: The GGUF tensor types :func:`import_gguf` reads.
GGUF_TYPES = tuple(sorted(_GGUF))




# --- whole checkpoints ---
def checkpoint_config(path: Union[str, os.PathLike]) -> dict:
    """``{"format", "bits", "group_size", "sym", "checkpoint_format", "ignore"}`` read from the
    ``quantization_config`` of a checkpoint directory's ``config.json`` (GPTQ, AWQ,
    compressed-tensors); ``ValueError`` naming the field for variants lutc does not import."""
    import json
    with open(os.path.join(os.fspath(path), "config.json")) as f:
        qc = json.load(f).get("quantization_config")
    if not isinstance(qc, dict):
        raise ValueError(f"{path}/config.json has no quantization_config: not a quantized checkpoint")
    method = qc.get("quant_method")
    if method == "gptq":
        return {"format": "gptq", "bits": qc.get("bits"), "group_size": qc.get("group_size", 128),
                "sym": qc.get("sym"), "checkpoint_format": qc.get("checkpoint_format", "gptq"), "ignore": []}
    if method == "awq":
        if str(qc.get("version", "gemm")).lower() != "gemm":
            raise ValueError(f"{path}: AWQ version={qc.get('version')!r}; lutc imports the GEMM layout")
        return {"format": "awq", "bits": qc.get("bits", qc.get("w_bit")), "sym": None,
                "group_size": qc.get("group_size", qc.get("q_group_size", 128)),
                "checkpoint_format": "gptq", "ignore": list(qc.get("modules_to_not_convert") or [])}
    if method == "compressed-tensors":
        if qc.get("format") != "pack-quantized":
            raise ValueError(f"{path}: compressed-tensors format={qc.get('format')!r}; lutc imports "
                             "'pack-quantized'")
        groups = list((qc.get("config_groups") or {}).values())
        if len(groups) != 1 or not groups[0].get("weights"):
            raise ValueError(f"{path}: compressed-tensors config_groups: lutc imports one weight scheme")
        w = groups[0]["weights"]
        if w.get("type", "int") != "int" or w.get("strategy") not in ("group", "channel"):
            raise ValueError(f"{path}: compressed-tensors weights type={w.get('type')!r} "
                             f"strategy={w.get('strategy')!r}; lutc imports int weights by group or channel")
        gs = w.get("group_size") if w.get("strategy") == "group" else -1
        return {"format": "compressed-tensors", "bits": w.get("num_bits"), "group_size": gs,
                "sym": w.get("symmetric"), "checkpoint_format": "gptq", "ignore": list(qc.get("ignore") or [])}
    raise ValueError(f"{path}: quant_method={method!r}; lutc imports 'gptq', 'awq' and 'compressed-tensors'")


_MARKERS = {"gptq": "qweight", "awq": "qweight", "compressed-tensors": "weight_packed"}


def load_checkpoint(model: "torch.nn.Module", path: Union[str, os.PathLike], device=None,
                    progress: Optional[bool] = None, **knobs) -> "torch.nn.Module":
    """Load a quantized checkpoint directory (``config.json`` with a GPTQ, AWQ or
    compressed-tensors ``quantization_config``, and ``*.safetensors``) into ``model``: every
    ``nn.Linear`` whose tensors are quantized becomes a :class:`lutc.LUTLinear` holding the
    imported weight (exact, :func:`import_weights`) in its device's kernel layout; every other
    tensor (embeddings, norms, an unquantized ``lm_head``) is loaded as it is. ``model`` is the
    architecture with matching names, built on a real device (buffers that models compute at
    construction, such as rotary frequencies, must exist), e.g.
    ``transformers.AutoModelForCausalLM.from_config(cfg)``. Returns ``model``.

    Args:
        device: where the model ends up (default: CPU).
        progress: layers done and ETA on stderr (default: when stderr is a terminal).
        knobs: for the ``LUTLinear`` layers (``table_dtype``, ``single_layout``, ...).

    Example:
        >>> model = transformers.AutoModelForCausalLM.from_config(config)        # doctest: +SKIP
        >>> lutc.load_checkpoint(model, "Llama-3-8B-GPTQ/")                         # doctest: +SKIP
    """
    from safetensors import safe_open
    from torch import nn

    from .nn import LUTLinear, Progress, replace_layer
    cfg = checkpoint_config(path)
    marker = _MARKERS[cfg["format"]]
    files = sorted(f for f in os.listdir(os.fspath(path)) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{path} has no .safetensors files")
    handles = [safe_open(os.path.join(os.fspath(path), f), framework="pt") for f in files]
    where = {key: h for h in handles for key in h.keys()}
    device = torch.device(device if device is not None else "cpu")
    # The model's own dtypes, read before its Linear layers are replaced (a LUTLinear's state
    # dict repacks to bitplane): a float16 model stays float16 under assign=True.
    own = {k: v.dtype for k, v in itertools.chain(model.named_parameters(), model.named_buffers())}
    quantized = [(name, m) for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and f"{name}.{marker}" in where]
    report = Progress("lutc.load_checkpoint", len(quantized), progress)
    used = set()
    for name, linear in quantized:
        prefix = name + "."
        keys = [k for k in where if k.startswith(prefix) and "." not in k[len(prefix):]]
        tensors = {k[len(prefix):]: where[k].get_tensor(k) for k in keys}
        used.update(keys)
        qw = import_weights(tensors, cfg["format"], cfg["bits"], cfg["group_size"], sym=cfg["sym"],
                            checkpoint_format=cfg["checkpoint_format"])
        if (qw.N, qw.K) != (linear.out_features, linear.in_features):
            raise ValueError(f"{name}: the checkpoint holds a [{qw.N}, {qw.K}] weight, the model's "
                             f"Linear is [{linear.out_features}, {linear.in_features}]")
        dtype = linear.weight.dtype if linear.weight.dtype.is_floating_point else torch.float32
        bias = tensors.get("bias")
        layer = LUTLinear.from_packed(qw, bias=None if bias is None else bias.to(dtype), device=device,
                                      dtype=dtype, **knobs)
        replace_layer(model, name, layer)
        report.step(name)
    report.close()
    if not quantized:
        raise ValueError(f"{path}: no nn.Linear of the model has quantized tensors ('<name>.{marker}'); "
                         "are the model's module names those of the checkpoint?")
    def as_model_has_it(key: str) -> torch.Tensor:
        t = where[key].get_tensor(key)
        mine = own.get(key)
        same = mine is not None and mine.is_floating_point and t.is_floating_point()
        return t.to(device, mine if same else t.dtype)

    rest = {k: as_model_has_it(k) for k in where if k not in used}
    result = model.load_state_dict(rest, strict=False, assign=True)
    lut = tuple(f"{name}." for name, _ in quantized)     # filled above, not from the state dict
    missing = [k for k in result.missing_keys if not k.startswith(lut)]
    if missing:
        raise ValueError(f"{path}: the checkpoint has no tensors for {missing[:8]}{'...' if len(missing) > 8 else ''}")
    return model.to(device)


__all__ = ["import_weights", "import_gguf", "open_gguf", "GGUF_TYPES", "load_checkpoint", "checkpoint_config", "unpack_bitstream",
           "stream_planes", "pack_bitstream", "FORMATS", "AWQ_ORDER"]
