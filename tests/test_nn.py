"""LUTLinear and quantize_model: forward shapes, bias, M buckets, compile, state_dict round trip."""
import copy

import pytest
import torch
from torch import nn

import lutc
from lutc import LUTLinear, quantize_model
from lutc.testing import rel_error

GEN = torch.Generator().manual_seed(0)


def _linear(K=256, N=64, bias=True):
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=GEN) * 0.02)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=GEN))
    return lin


def _reference(module: LUTLinear, x):
    """float64 x @ W^T (+ b) for the module's packed weight."""
    y = x.double().reshape(-1, module.in_features) @ module.packed().dequantize().T
    if module.bias is not None:
        y = y + module.bias.double().cpu()
    return y.reshape(*x.shape[:-1], module.out_features)


@pytest.mark.parametrize("shape", [(2, 3, 256), (256,), (1, 1, 1, 256), (5, 40, 256), (300, 256)])
def test_forward_leading_dims_and_bias(shape):
    q = LUTLinear.from_linear(_linear(), wbits=3, group_size=64, zero_point=True)
    x = torch.randn(*shape, generator=GEN)
    y = q(x)
    assert y.shape == (*shape[:-1], 64)
    assert rel_error(y, _reference(q, x)) < 2e-5


def test_without_bias_and_formats():
    for fmt in (dict(format="bcq", wbits=2, group_size=32), dict(format="ternary"),
                dict(wbits=4, group_size=-1, scale_dtype="float32")):
        q = LUTLinear.from_linear(_linear(K=512, bias=False), **fmt)
        assert q.bias is None
        x = torch.randn(4, 512, generator=GEN)
        assert rel_error(q(x), _reference(q, x)) < 2e-5


def test_close_to_the_float_layer():
    lin = _linear(K=512, N=128)
    q = LUTLinear.from_linear(lin, wbits=4, group_size=32)
    x = torch.randn(8, 512, generator=GEN)
    with torch.no_grad():
        err = float((q(x) - lin(x)).norm() / (lin(x) - lin.bias).norm())
    assert err < 0.15   # 4-bit codes, groups of 32: ~10% of the product, 0 of the bias


def test_half_precision_module_keeps_scale_dtype():
    q = LUTLinear.from_linear(_linear(), wbits=2, group_size=64)
    qb = copy.deepcopy(q).to(torch.bfloat16)
    assert qb.scales.dtype == torch.float16 and qb.bias.dtype == torch.bfloat16
    x = torch.randn(3, 256, generator=GEN).bfloat16()
    y = qb(x)
    assert y.dtype == torch.bfloat16 and rel_error(y, _reference(q, x)) < 1e-2
    assert copy.deepcopy(q).float().scales.dtype == torch.float16


def test_wrong_input_width_is_named():
    q = LUTLinear.from_linear(_linear(), wbits=2, group_size=64)
    with pytest.raises(ValueError, match=r"x has shape \(2, 6, 128\), expected last dimension in_features=256"):
        q(torch.randn(2, 6, 128))
    with pytest.raises(TypeError, match=r"x has dtype torch.float64"):
        q(torch.randn(2, 256, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"planes is on cpu, expected meta"):
        q(torch.randn(2, 256, device="meta"))


def test_non_contiguous_input_is_made_contiguous():
    q = LUTLinear.from_linear(_linear(), wbits=2, group_size=64)
    x = torch.randn(256, 6, generator=GEN).t()          # [6, 256], column-major
    assert rel_error(q(x), _reference(q, x)) < 2e-5


def test_compile_fullgraph_model():
    model = nn.Sequential(_linear(256, 128), nn.GELU(), _linear(128, 64))
    qmodel = quantize_model(model, wbits=4, group_size=64)
    x = torch.randn(2, 7, 256, generator=GEN)
    eager = qmodel(x)
    explanation = torch._dynamo.explain(qmodel)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(qmodel, fullgraph=True)
    assert rel_error(compiled(x), eager.double()) < 1e-5
    x2 = torch.randn(3, 256, generator=GEN)              # another M and rank: recompiles, no break
    assert rel_error(compiled(x2), qmodel(x2).double()) < 1e-5


# --- state dict ---
def test_state_dict_save_load_round_trip(tmp_path):
    src = LUTLinear.from_linear(_linear(), wbits=3, group_size=64, zero_point=True, table_dtype="int8")
    path = tmp_path / "q.pt"
    torch.save(src.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert set(sd) == {"planes", "scales", "zeros", "bias", "_extra_state"}
    assert sd["_extra_state"]["layout_version"] == lutc.LAYOUT_VERSION
    fresh = LUTLinear(256, 64, wbits=3, group_size=64, zero_point=True)
    fresh.load_state_dict(sd)
    assert fresh.table_dtype == "int8"           # LUT knobs come with the checkpoint
    x = torch.randn(2, 5, 256, generator=GEN)
    assert torch.equal(fresh(x), src(x))


def test_state_dict_refuses_another_layout_version():
    src = LUTLinear.from_linear(_linear(), wbits=2, group_size=64)
    sd = src.state_dict()
    sd["_extra_state"] = dict(sd["_extra_state"], layout_version=lutc.LAYOUT_VERSION + 1)
    fresh = LUTLinear(256, 64, wbits=2, group_size=64)
    before = fresh.planes.clone()
    with pytest.raises(ValueError, match=r"layout 'bitplane' v2; this lutc reads 'bitplane' v1"):
        fresh.load_state_dict(sd)
    assert torch.equal(fresh.planes, before)     # refused before any buffer was copied
    sd["_extra_state"] = dict(sd["_extra_state"], layout_version=lutc.LAYOUT_VERSION, layout="interleaved")
    with pytest.raises(ValueError, match=r"layout 'interleaved'"):
        fresh.load_state_dict(sd)


def test_state_dict_refuses_another_format():
    sd = LUTLinear.from_linear(_linear(), wbits=2, group_size=64, format="bcq").state_dict()
    with pytest.raises(ValueError, match=r"checkpoint has format='bcq' but this LUTLinear has format='uniform'"):
        LUTLinear(256, 64, wbits=2, group_size=64).load_state_dict(sd)


def test_model_checkpoint_into_empty_layers(tmp_path):
    model = nn.Sequential(_linear(256, 128), nn.ReLU(), _linear(128, 32, bias=False))
    qmodel = quantize_model(copy.deepcopy(model), wbits=2, group_size=128, zero_point=True)
    torch.save(qmodel.state_dict(), tmp_path / "m.pt")
    empty = quantize_model(copy.deepcopy(model), wbits=2, group_size=128, zero_point=True, empty=True)
    assert not empty[0].planes.any()
    empty.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randn(4, 256, generator=GEN)
    assert torch.equal(empty(x), qmodel(x))


# --- quantize_model ---
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({n: _linear(128, 128) for n in ("q", "k", "v", "o")})
        self.mlp = nn.Sequential(_linear(128, 256), nn.GELU(), _linear(256, 128))
        self.lm_head = _linear(128, 50)


def _kinds(model):
    return {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, (nn.Linear, LUTLinear))}


def test_quantize_model_include_exclude():
    kinds = _kinds(quantize_model(Tiny(), wbits=2, group_size=128, exclude="lm_head"))
    assert kinds == {"attn.q": "LUTLinear", "attn.k": "LUTLinear", "attn.v": "LUTLinear",
                     "attn.o": "LUTLinear", "mlp.0": "LUTLinear", "mlp.2": "LUTLinear",
                     "lm_head": "Linear"}
    kinds = _kinds(quantize_model(Tiny(), wbits=2, group_size=128, include="attn.*", exclude=["attn.o"]))
    assert [n for n, k in kinds.items() if k == "LUTLinear"] == ["attn.q", "attn.k", "attn.v"]
    kinds = _kinds(quantize_model(Tiny(), wbits=4, group_size=64,
                                  include=lambda name, m: m.out_features == 128))
    assert [n for n, k in kinds.items() if k == "LUTLinear"] == ["attn.q", "attn.k", "attn.v",
                                                                 "attn.o", "mlp.2"]


def test_quantize_model_output_and_config():
    model = Tiny()
    x = torch.randn(3, 128, generator=GEN)
    qmodel = quantize_model(copy.deepcopy(model), wbits=4, group_size=64, exclude="lm_head")
    assert qmodel.attn["q"].wbits == 4 and qmodel.mlp[2].group_size == 64
    with torch.no_grad():
        h_ref, h = model.mlp(model.attn["q"](x)), qmodel.mlp(qmodel.attn["q"](x))
    assert float((h - h_ref).norm() / h_ref.norm()) < 0.2


def test_quantize_model_names_a_layer_it_cannot_pack():
    model = nn.Sequential(_linear(128, 64), nn.ReLU(), _linear(64, 10))
    with pytest.raises(lutc.SpecError, match=r"layer '2' \(64 -> 10\): K=64 is not a multiple of "
                                             r"group_size=128; pass exclude='2'"):
        quantize_model(model, wbits=2, group_size=128)
    quantize_model(model, wbits=2, group_size=128, exclude="2")
    assert isinstance(model[0], LUTLinear) and isinstance(model[2], nn.Linear)


def test_quantize_a_bare_linear_and_bad_selectors():
    q = quantize_model(_linear(), wbits=2, group_size=64)
    assert isinstance(q, LUTLinear)
    with pytest.raises(TypeError, match="patterns must be strings"):
        quantize_model(Tiny(), include=[3])
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        LUTLinear.from_linear(nn.Conv1d(3, 3, 1))


def test_linear_subclasses_are_left_alone():
    # nn.MultiheadAttention reads out_proj.weight itself (out_proj is a Linear subclass).
    model = nn.ModuleDict({"mha": nn.MultiheadAttention(128, 4, batch_first=True), "proj": _linear(128, 64)})
    quantize_model(model, wbits=2, group_size=128)
    assert type(model["mha"].out_proj) is not LUTLinear and isinstance(model["proj"], LUTLinear)
    x = torch.randn(2, 5, 128, generator=GEN)
    with torch.no_grad():
        h, _ = model["mha"](x, x, x)
    assert model["proj"](h).shape == (2, 5, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lutlinear_on_cuda_and_state_dict_across_devices(tmp_path):
    q = LUTLinear.from_linear(_linear().cuda(), wbits=4, group_size=64, zero_point=True)
    assert q.planes.device.type == "cuda"
    x = torch.randn(2, 3, 256, generator=GEN)
    assert rel_error(q(x.cuda()).cpu(), _reference(q, x)) < 2e-5
    torch.save(q.state_dict(), tmp_path / "q.pt")
    cpu = LUTLinear(256, 64, wbits=4, group_size=64, zero_point=True)
    cpu.load_state_dict(torch.load(tmp_path / "q.pt", map_location="cpu", weights_only=True))
    assert rel_error(cpu(x), _reference(q, x)) < 2e-5


def test_from_packed_takes_a_kernel_layout():
    qw = lutc.quantize(torch.randn(48, 256), wbits=2, group_size=64)
    a = lutc.LUTLinear.from_packed(qw, bias=None)
    b = lutc.LUTLinear.from_packed(lutc.repack(qw, "tiles64"), bias=None)
    assert all(torch.equal(s, t) for s, t in zip(a.packed().tensors(), b.packed().tensors()))
