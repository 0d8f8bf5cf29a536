"""Weight formats: packing bit order, the reference dequantizer, quantization quality, metadata."""
import numpy as np
import pytest
import torch

import lutc
import lutc.formats
from lutc.formats import PackedWeights, pack_bits


def _weight(N=64, K=256, seed=0):
    return torch.randn(N, K, generator=torch.Generator().manual_seed(seed))


def test_pack_bits_is_lsb_first():
    bits = torch.zeros(1, 16, dtype=torch.bool)
    bits[0, 0] = bits[0, 9] = bits[0, 15] = True
    assert pack_bits(bits).tolist() == [[0b00000001, 0b10000010]]


@pytest.mark.parametrize("wbits", [1, 2, 3, 4])
@pytest.mark.parametrize("zero_point", [False, True])
def test_uniform_codes_roundtrip(wbits, zero_point):
    w = _weight()
    qw = lutc.quantize(w, wbits=wbits, group_size=64, zero_point=zero_point, scale_dtype="float32")
    deq = qw.dequantize()
    assert qw.planes.shape == (wbits, 64, 32) and qw.planes.dtype == torch.uint8
    # Every group uses at most 2^b distinct values, and quantization error shrinks with bits.
    for row in deq[:4].reshape(-1, 64):
        assert len(torch.unique(row)) <= 2 ** wbits
    err = float((deq - w.double()).pow(2).mean() / w.double().pow(2).mean())
    assert err < {1: 0.4, 2: 0.13, 3: 0.04, 4: 0.011}[wbits]   # Gaussian, near Lloyd-Max


def test_uniform_zero_point_without_clipping_spans_min_and_max(monkeypatch):
    monkeypatch.setattr(lutc.formats, "CLIP_RATIOS", (1.0,))
    w = _weight(8, 128)
    qw = lutc.quantize(w, wbits=4, group_size=32, zero_point=True, scale_dtype="float32")
    deq, wg = qw.dequantize().reshape(8, 4, 32), w.double().reshape(8, 4, 32)
    half_step = qw.scales.double() / 2 + 1e-6       # the zero point is rounded to a code
    assert ((deq.amin(-1) - wg.amin(-1)).abs() <= half_step).all()
    assert ((deq.amax(-1) - wg.amax(-1)).abs() <= half_step).all()
    assert torch.equal(qw.zeros, qw.zeros.round())


@pytest.mark.parametrize("zero_point", [False, True])
def test_clip_search_never_loses_to_min_max(monkeypatch, zero_point):
    w = _weight(32, 256)

    def group_err(qw):
        return (qw.dequantize() - w.double()).pow(2).reshape(32, 4, 64).sum(-1)

    searched = group_err(lutc.quantize(w, wbits=2, group_size=64, zero_point=zero_point,
                                       scale_dtype="float32"))
    monkeypatch.setattr(lutc.formats, "CLIP_RATIOS", (1.0,))
    plain = group_err(lutc.quantize(w, wbits=2, group_size=64, zero_point=zero_point,
                                    scale_dtype="float32"))
    assert (searched <= plain + 1e-9).all() and searched.sum() < 0.8 * plain.sum()


@pytest.mark.parametrize("wbits", [1, 2, 3, 4])
def test_bcq_quality(wbits):
    w = _weight()
    qw = lutc.quantize(w, wbits=wbits, group_size=128, format="bcq", scale_dtype="float32")
    assert qw.scales.shape == (64, 2, wbits)
    err = float((qw.dequantize() - w.double()).pow(2).mean() / w.double().pow(2).mean())
    assert err < {1: 0.4, 2: 0.13, 3: 0.045, 4: 0.018}[wbits]


def test_ternary_values_and_single_scale():
    w = _weight()
    qw = lutc.quantize(w, format="ternary")
    assert qw.group_size == -1 and qw.scales.shape == (1,)
    levels = torch.unique(qw.dequantize() / float(qw.scales[0]))
    assert set(levels.tolist()) <= {-1.0, 0.0, 1.0} and len(levels) == 3
    # absmean scale (BitNet b1.58)
    assert abs(float(qw.scales[0]) - float(w.abs().mean())) < 1e-3


def test_numpy_and_torch_inputs_agree():
    w = _weight()
    a = lutc.quantize(w, wbits=3, group_size=32)
    b = lutc.quantize(w.numpy(), wbits=3, group_size=32)
    assert torch.equal(a.planes, b.planes) and torch.equal(a.scales, b.scales)


def test_bits_per_weight():
    qw = lutc.quantize(_weight(256, 512), wbits=2, group_size=128)
    assert qw.bits_per_weight == pytest.approx(2 + 16 / 128)


def test_state_roundtrip_and_layout_version_check():
    qw = lutc.quantize(_weight(), wbits=2, group_size=64, zero_point=True)
    back = PackedWeights.from_state(qw.state())
    assert torch.equal(back.dequantize(), qw.dequantize())
    old = dict(qw.state(), layout_version=0)
    with pytest.raises(ValueError, match="layout"):
        PackedWeights.from_state(old)


@pytest.mark.parametrize("kwargs,match", [
    (dict(wbits=5), "wbits"),
    (dict(wbits=0), "wbits"),
    (dict(group_size=48), "group_size"),
    (dict(format="nf4"), "format"),
    (dict(format="bcq", zero_point=True), "zero_point"),
    (dict(format="ternary", wbits=3), "wbits"),
    (dict(scale_dtype="int8"), "scale_dtype"),
])
def test_bad_quantize_arguments(kwargs, match):
    with pytest.raises(lutc.SpecError, match=match):
        lutc.quantize(_weight(), **kwargs)


def test_bad_weights():
    with pytest.raises(lutc.SpecError, match="not a multiple of group_size"):
        lutc.quantize(_weight(8, 192), group_size=128)
    with pytest.raises(lutc.SpecError, match="multiple of 8"):
        lutc.quantize(_weight(8, 100), group_size=-1)
    with pytest.raises(lutc.SpecError, match="2-D"):
        lutc.quantize(torch.randn(4, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        lutc.quantize(torch.ones(8, 128, dtype=torch.int32))
    bad = _weight(8, 128)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lutc.quantize(bad)


@pytest.mark.parametrize("layout", ["tiles32", "tiles64", "tiles128"])
@pytest.mark.parametrize("fmt,wbits,zp", [("uniform", 3, True), ("bcq", 2, False), ("ternary", 2, False)])
def test_tile_layouts_are_exact_and_invertible(layout, fmt, wbits, zp):
    w = _weight(100, 256)                       # 100 rows: not a multiple of any tile
    qw = lutc.quantize(w, wbits=wbits, group_size=-1 if fmt == "ternary" else 64, format=fmt,
                       zero_point=zp)
    tiled = lutc.repack(qw, layout)
    R = int(layout[5:])
    assert tiled.layout == layout and tiled.planes.shape == (-(-100 // R), 64, qw.planes.shape[0], R // 2)
    assert torch.equal(tiled.dequantize(), qw.dequantize())
    back = lutc.repack(tiled, "bitplane")
    assert torch.equal(back.planes, qw.planes) and torch.equal(back.scales, qw.scales)
    direct = lutc.quantize(w, wbits=wbits, group_size=-1 if fmt == "ternary" else 64, format=fmt,
                           zero_point=zp, layout=layout)
    assert torch.equal(direct.planes, tiled.planes)


def test_tile_layout_nibbles():
    # row r of a 32-row tile: low nibble of byte r (r < 16) or high nibble of byte r - 16
    w = _weight(32, 8)
    qw = lutc.quantize(w, wbits=1, group_size=-1)
    t = lutc.repack(qw, "tiles32")
    for r in (0, 5, 16, 31):
        idx = int(qw.planes[0, r, 0]) & 15      # group 0 of row r
        byte = int(t.planes[0, 0, 0, r % 16])
        assert (byte >> 4 if r >= 16 else byte & 15) == idx


def test_unknown_layout():
    with pytest.raises(ValueError, match="unknown weight layout"):
        lutc.repack(lutc.quantize(_weight()), "tiles48")


@pytest.mark.parametrize("fmt,wbits,zp,gs", [("uniform", 3, True, 64), ("bcq", 2, False, 32),
                                             ("ternary", 2, False, -1), ("uniform", 1, False, 128),
                                             ("uniform", 4, False, -1)])
def test_warp32_layout_is_exact_and_invertible(fmt, wbits, zp, gs):
    w = _weight(100, 384)                       # 100 rows: not a multiple of 32
    qw = lutc.quantize(w, wbits=wbits, group_size=gs, format=fmt, zero_point=zp)
    t = lutc.repack(qw, "warp32")
    b = qw.planes.shape[0]
    assert t.layout == "warp32" and t.planes.dtype == torch.int32 and t.planes.shape == (4, 3, b, 32, 4)
    assert torch.equal(t.dequantize(), qw.dequantize())
    back = lutc.repack(t, "bitplane")
    assert torch.equal(back.planes, qw.planes) and torch.equal(back.scales, qw.scales)
    # lane l of tile t, slice u, plane i: word q, nibble j = table index of group 32 u + 8 q + j
    for row, kg, i in ((37, 53, b - 1), (99, 95, 0), (0, 0, 0)):
        u, q, j = kg // 32, (kg % 32) // 8, kg % 8
        nib = (int(t.planes[row // 32, u, i, row % 32, q]) >> (4 * j)) & 15
        assert nib == (int(qw.planes[i, row, kg // 2]) >> (4 * (kg % 2))) & 15
    # padded rows carry zero coefficients
    if fmt != "ternary":
        assert (t.scales[-1, ..., 100 % 32:] == 0).all()


@pytest.mark.parametrize("fmt,wbits,zp,gs,slot", [("uniform", 2, False, 128, 2), ("uniform", 4, True, 32, 4),
                                                  ("uniform", 2, True, -1, 2), ("uniform", 4, False, 64, 4),
                                                  ("uniform", 1, False, 64, 2), ("uniform", 1, True, 128, 2),
                                                  ("uniform", 3, False, 32, 4), ("uniform", 3, True, -1, 4),
                                                  ("ternary", 2, False, -1, 2)])
def test_tc16_layout_is_exact_and_invertible(fmt, wbits, zp, gs, slot):
    """Each code sits at the bit the layout's docstring gives, in a slot of 2 bits (W1, W2,
    ternary: code t + 1) or 4 (W3, W4); ternary's one scale is every row's."""
    w = _weight(100, 384)
    qw = lutc.quantize(w, wbits=wbits, format=fmt, group_size=gs, zero_point=zp)
    t = lutc.repack(qw, "tc16")
    assert t.planes.shape == (7, 3, slot // 2, 32, 4) and t.planes.dtype == torch.int32
    assert t.layout_version == 2
    assert torch.equal(t.dequantize(), qw.dequantize())
    assert torch.equal(lutc.repack(t, "bitplane").planes, qw.planes)
    assert torch.equal(lutc.repack(t, "bitplane").scales, qw.scales)
    bits = np.unpackbits(qw.planes.numpy(), axis=-1, bitorder="little").astype(np.int64)
    code = bits[0] + bits[1] if fmt == "ternary" else sum(bits[i] << i for i in range(wbits))
    if fmt == "ternary":     # one scale per row, rows past N zero as in every tiled layout
        per_row = t.scales.permute(0, 2, 1).reshape(-1)
        assert t.scales.shape == (7, 1, 16) and (per_row[:100] == qw.scales[0]).all() and (per_row[100:] == 0).all()
        assert set(np.unique(code)) == {0, 1, 2}
    for T, u, g, c, s, tt, h, e in ((1, 2, 5, 3, 6, 1, 1, 0), (0, 0, 0, 0, 0, 0, 0, 1), (6, 1, 3, 2, 7, 0, 1, 1)):
        n, k = 16 * T + 8 * tt + g, 128 * u + 16 * s + 8 * h + 2 * c + e     # the fragments' k order (v2)
        if n >= 100:
            continue
        P, PW = 4 * s + 2 * tt + h, 16 // slot
        word = int(t.planes[T, u, (P // PW) // 4, 4 * g + c, (P // PW) % 4]) & 0xFFFFFFFF
        v = P % PW
        pos = 8 * (v // (8 // slot)) + slot * (v % (8 // slot)) + 16 * e
        assert (word >> pos) & (2 ** slot - 1) == code[n, k]


def test_tc16_refuses_ternary_scales_that_differ():
    t = lutc.repack(lutc.quantize(_weight(32, 128), format="ternary"), "tc16")
    t.scales[1, 0, 3] += 1
    with pytest.raises(ValueError, match="ternary 'tc16' scales differ"):
        lutc.repack(t, "bitplane")


@pytest.mark.parametrize("fmt,wbits", [("uniform", 1), ("uniform", 3), ("ternary", 2)])
def test_tc16_refuses_bits_above_a_code(fmt, wbits):
    """A wider slot's spare bits must be zero: the kernels read the whole slot, the reference
    only the code's bits, so a weight with stray bits would compute something else."""
    t = lutc.repack(lutc.quantize(_weight(32, 128), wbits=wbits, format=fmt), "tc16")
    t.planes |= 0x0C0C0C0C if wbits == 3 else 0x0A0A0A0A     # bit 3 of 4-bit slots, bit 1 of 2-bit ones
    with pytest.raises(ValueError, match="code above"):
        t.dequantize()


def test_cuda_layouts_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError, match="multiple of 128"):
        lutc.repack(lutc.quantize(_weight(32, 64), group_size=32), "warp32")
    with pytest.raises(ValueError, match="integer codes .*not bcq"):
        lutc.repack(lutc.quantize(_weight(32, 128), format="bcq"), "tc16")
    with pytest.raises(ValueError, match="multiple of 128"):
        lutc.repack(lutc.quantize(_weight(32, 64), wbits=3, group_size=32), "tc16")


def test_repack_keeps_the_device():
    # (tests/test_cuda_gpu.py repacks CUDA weights: the kernel would refuse them elsewhere)
    qw = lutc.quantize(_weight(64, 256), wbits=2)
    for layout in ("warp32", "tc16", "tiles64"):
        packed = lutc.repack(qw, layout)
        assert all(t.device.type == "cpu" for t in packed.tensors())
        assert all(t.device.type == "cpu" for t in lutc.repack(packed, "bitplane").tensors())
