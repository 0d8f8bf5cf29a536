"""LUTLinear and quantize_model: forward shapes, bias, M buckets, compile, state_dict round trip."""
import copy

import pytest
import torch
from torch import nn

import lutc
from lutc import LUTLinear, quantize_model
from lutc.testing import rel_error, tolerance
from lutc.nn import decode_extra_state, encode_extra_state
from lutc.torch_ops import kernel_cache

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
    assert rel_error(y, _reference(q, x)) < tolerance(q.kernel_spec())


def test_without_bias_and_formats():
    for fmt in (dict(format="bcq", wbits=2, group_size=32), dict(format="ternary"),
                dict(wbits=4, group_size=-1, scale_dtype="float32")):
        q = LUTLinear.from_linear(_linear(K=512, bias=False), **fmt)
        assert q.bias is None
        x = torch.randn(4, 512, generator=GEN)
        assert rel_error(q(x), _reference(q, x)) < tolerance(q.kernel_spec())


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
    assert y.dtype == torch.bfloat16 and rel_error(y, _reference(q, x)) < tolerance(qb.kernel_spec())
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
    assert rel_error(q(x), _reference(q, x)) < tolerance(q.kernel_spec())


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
    assert decode_extra_state(sd["_extra_state"])["layout_version"] == lutc.LAYOUT_VERSION
    assert all(isinstance(t, torch.Tensor) for t in sd.values())        # safetensors can store it
    fresh = LUTLinear(256, 64, wbits=3, group_size=64, zero_point=True)
    fresh.load_state_dict(sd)
    assert fresh.table_dtype == "int8"           # LUT knobs come with the checkpoint
    x = torch.randn(2, 5, 256, generator=GEN)
    assert torch.equal(fresh(x), src(x))


def test_state_dict_refuses_another_layout_version():
    src = LUTLinear.from_linear(_linear(), wbits=2, group_size=64)
    sd = src.state_dict()
    meta = decode_extra_state(sd["_extra_state"])
    sd["_extra_state"] = encode_extra_state(dict(meta, layout_version=lutc.LAYOUT_VERSION + 1))
    fresh = LUTLinear(256, 64, wbits=2, group_size=64)
    before = fresh.planes.clone()
    with pytest.raises(ValueError, match=r"layout 'bitplane' v2; this lutc reads 'bitplane' v1"):
        fresh.load_state_dict(sd)
    assert torch.equal(fresh.planes, before)     # refused before any buffer was copied
    sd["_extra_state"] = dict(meta, layout="interleaved")          # a dict: an older lutc's checkpoint
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
    assert rel_error(q(x.cuda()).cpu(), _reference(q, x)) < tolerance(q.kernel_spec())
    torch.save(q.state_dict(), tmp_path / "q.pt")
    cpu = LUTLinear(256, 64, wbits=4, group_size=64, zero_point=True)
    cpu.load_state_dict(torch.load(tmp_path / "q.pt", map_location="cpu", weights_only=True))
    assert rel_error(cpu(x), _reference(q, x)) < tolerance(cpu.kernel_spec())
    assert torch.equal(cpu.packed().dequantize(), q.packed().dequantize())
    back = copy.deepcopy(cpu).cuda()                     # CPU layout -> CUDA layouts, once, in .to()
    assert back.layouts == q.layouts
    assert rel_error(back(x.cuda()).cpu(), _reference(q, x)) < tolerance(q.kernel_spec())


def test_from_packed_takes_a_kernel_layout():
    qw = lutc.quantize(torch.randn(48, 256), wbits=2, group_size=64)
    a = lutc.LUTLinear.from_packed(qw, bias=None)
    b = lutc.LUTLinear.from_packed(lutc.repack(qw, "tiles64"), bias=None)
    assert all(torch.equal(s, t) for s, t in zip(a.packed().tensors(), b.packed().tensors()))


# --- the kernels' layout ---
def test_holds_the_kernel_layout_and_runs_the_fast_kernel():
    q = LUTLinear.from_linear(_linear(K=512, N=100), wbits=2, group_size=128)
    plan = kernel_cache().layout_plan(q.kernel_spec(), "cpu")
    assert q.layouts == plan.layouts and q.packed().layout == plan.layouts[0]
    # one packed copy on the CPU, no bitplane buffers beside it
    assert {n for n, b in q.named_buffers()} == {"planes", "scales"}
    if "avx2" in lutc.target.device_name(lutc.target.resolve(None)):
        assert plan.layouts[0] != "bitplane"
        for M in (1, 5, 16, 300):
            x = torch.randn(M, 512, generator=GEN)
            assert rel_error(q(x), _reference(q, x)) < tolerance(q.kernel_spec())
        used = {k.schedule for k in kernel_cache().kernels() if k.spec.N == 100 and k.spec.K == 512}
        assert used and not used & {"cpu_generic"}


def test_state_dict_is_portable_bitplane_across_layouts(tmp_path):
    src = LUTLinear.from_linear(_linear(K=512, N=100), wbits=3, group_size=128)
    sd = src.state_dict()
    assert sd["planes"].shape == (3, 100, 64) and decode_extra_state(sd["_extra_state"])["layout"] == "bitplane"
    # a module whose kernels read another layout (float tables: the generic kernel's bitplane)
    other = LUTLinear(512, 100, wbits=3, group_size=128, table_dtype="float32")
    other.load_state_dict({**sd, "_extra_state": encode_extra_state(dict(decode_extra_state(sd["_extra_state"]),
                                                                         table_dtype="float32"))})
    assert other.layouts == ("bitplane",) and src.layouts != other.layouts or src.layouts == ("bitplane",)
    assert torch.equal(other.packed().dequantize(), src.packed().dequantize())
    x = torch.randn(3, 512, generator=GEN)
    assert rel_error(other(x), _reference(src, x)) < tolerance(other.kernel_spec())


def test_load_state_dict_refuses_wrong_tensor_shapes_untouched():
    src = LUTLinear.from_linear(_linear(), wbits=2, group_size=64)
    sd = src.state_dict()
    sd["scales"] = sd["scales"][:, :2].contiguous()
    fresh = LUTLinear(256, 64, wbits=2, group_size=64)
    before = fresh.planes.clone()
    with pytest.raises(ValueError, match=r"scales is torch.float16 \(64, 2\); layout 'bitplane'"):
        fresh.load_state_dict(sd)
    assert torch.equal(fresh.planes, before)
    del sd["scales"]
    result = fresh.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["scales"] and not result.unexpected_keys


def test_meta_device_then_load_with_assign():
    src = LUTLinear.from_linear(_linear(), wbits=4, group_size=64, zero_point=True)
    with torch.device("meta"):
        empty = LUTLinear(256, 64, wbits=4, group_size=64, zero_point=True)
    assert empty.planes.device.type == "meta"
    empty.load_state_dict(src.state_dict(), assign=True)
    assert empty.layouts == src.layouts and empty.planes.device.type == "cpu"
    x = torch.randn(2, 256, generator=GEN)
    assert torch.equal(empty(x), src(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lutlinear_cuda_decode_and_batch_layouts_compile_and_graph():
    lin = _linear(K=512, N=256).cuda().half()
    q = LUTLinear.from_linear(lin, wbits=2, group_size=128)      # W2: the tensor-core kernels at every M
    assert q.layouts == ("tc16",) and q.plan.split is None
    assert {n for n, _ in q.named_buffers()} == {"planes", "scales"}
    tol = tolerance(q.kernel_spec())
    for M in (1, 2, 3, 16, 300):
        x = torch.randn(M, 512, generator=GEN).half()
        assert rel_error(q(x.cuda()).cpu(), _reference(q, x)) < tol
    used = {k.schedule for k in kernel_cache().kernels() if k.spec.N == 256 and k.spec.K == 512 and k.spec.wbits == 2}
    hopper = torch.cuda.get_device_capability() == (9, 0)
    assert used == {"cuda_stream", "cuda_wgmma" if hopper else "cuda_mma"}
    compiled = torch.compile(q, fullgraph=True, dynamic=True)
    for M in (1, 5):
        x = torch.randn(M, 512, generator=GEN).half()
        assert rel_error(compiled(x.cuda()).cpu(), _reference(q, x)) < tol
    for M in (1, 16):                                          # CUDA graphs, after a warm-up call
        x = torch.randn(M, 512, generator=GEN).half().cuda()
        q(x)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = q(x)
        x.copy_(torch.randn(M, 512, generator=GEN).half().cuda())
        graph.replay()
        torch.cuda.synchronize()
        assert rel_error(y.cpu(), _reference(q, x.cpu())) < tol
    # W1 decodes with the LUT kernel (its own bits) and batches on the tensor cores: one copy asked
    two = LUTLinear.from_linear(lin, wbits=1, group_size=128)
    assert two.layouts == ("warp32", "tc16") and two.plan.split == 1
    single = LUTLinear.from_linear(lin, wbits=1, group_size=128, single_layout=True)
    assert single.layouts == ("warp32",)
    x = torch.randn(40, 512, generator=GEN).half()
    # M = 40 runs in chunks of 8 rows
    assert rel_error(single(x.cuda()).cpu(), _reference(single, x)) < tolerance(single.kernel_spec())


CODE_FORMATS = [("uniform", 1, False), ("uniform", 3, True), ("uniform", 3, False), ("ternary", 2, False)]


def _cuda_layouts(fmt, wbits):
    """W1 decodes with the LUT kernel (``warp32``, its 1 bit per weight) and batches on the tensor
    cores (``tc16`` in 2-bit slots): two copies; W3 and ternary run the tensor-core kernels at
    every M (at M = 1 ``cuda_stream`` beat the LUT kernel on the H200), as W2 and W4: one."""
    return ("warp32", "tc16") if (fmt, wbits) == ("uniform", 1) else ("tc16",)


@pytest.mark.parametrize("fmt,wbits,zp", CODE_FORMATS)
def test_w1_w3_ternary_plan_tensor_core_copies_on_cuda(fmt, wbits, zp):
    from lutc.torch_ops import OpKernels
    spec = lutc.MPGemmSpec(1, 200, 512, wbits=wbits, format=fmt, zero_point=zp, act_dtype="float16")
    for arch in ("sm_90a", "sm_80"):
        plan = OpKernels(targets={"cuda": f"cuda:{arch}"}).layout_plan(spec, "cuda")
        assert plan.layouts == _cuda_layouts(fmt, wbits), (arch, plan)
        assert plan.split == (1 if (fmt, wbits) == ("uniform", 1) else None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt,wbits,zp", CODE_FORMATS)
def test_lutlinear_cuda_w1_w3_ternary_batches_on_tensor_cores(fmt, wbits, zp):
    lin = _linear(K=512, N=200).cuda().half()
    q = LUTLinear.from_linear(lin, wbits=wbits, format=fmt, zero_point=zp,
                              group_size=-1 if fmt == "ternary" else 64)
    assert q.layouts == _cuda_layouts(fmt, wbits)
    tol = tolerance(q.kernel_spec())
    for M in (1, 2, 5, 16, 130):
        x = torch.randn(M, 512, generator=GEN).half()
        out = q(x.cuda())
        assert torch.isfinite(out).all()
        assert rel_error(out.cpu(), _reference(q, x)) < tol, M
    used = {k.schedule for k in kernel_cache().kernels()
            if k.spec.N == 200 and k.spec.wbits == wbits and k.spec.format == fmt}
    hopper = torch.cuda.get_device_capability() == (9, 0)
    decode = {"cuda_lut"} if (fmt, wbits) == ("uniform", 1) else set()
    assert used == decode | {"cuda_stream", "cuda_wgmma" if hopper else "cuda_mma"}
