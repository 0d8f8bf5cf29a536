"""torch.ops.lutc.mpgemm: every layout the default kernels read, eager, torch.compile(fullgraph=True),
M buckets, and bad arguments."""
import pytest
import torch

import lutc
from lutc.testing import reference, rel_error, tolerance
from lutc.torch_ops import OpKernels, check_args, kernel_cache

GEN = torch.Generator().manual_seed(0)


def _weights(N=64, K=256, layout="bitplane", **fmt):
    fmt = {"wbits": 2, "group_size": 64, **fmt}
    return lutc.repack(lutc.quantize(torch.randn(N, K, generator=GEN) * 0.02, **fmt), layout)


def _op(x, qw, **knobs):
    return torch.ops.lutc.mpgemm(x, qw.planes, qw.scales, qw.zeros, qw.wbits, qw.group_size,
                                 qw.format, layout=qw.layout, N=qw.N, **knobs)


def _tol(x, qw, **knobs):
    """The documented bound for the spec the op resolves (int8 tables by default on SIMD CPUs)."""
    return tolerance(check_args(x, qw.planes, qw.scales, qw.zeros, qw.wbits, qw.group_size, qw.format,
                                layout=qw.layout, N=qw.N, **knobs))


def _cpu_layouts(spec):
    """The layouts some kernel of this CPU reads for ``spec`` (int8 tables)."""
    out = []
    for name, layout in lutc.layouts.LAYOUTS.items():
        try:
            if layout.holds(spec) and kernel_cache().rows_limit(spec, "cpu", name):
                out.append(name)
        except ValueError:
            pass
    return out


CPU_LAYOUTS = _cpu_layouts(lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64, table_dtype="int8"))


def test_the_default_x86_layouts_are_served():
    if lutc.target.kind(lutc.target.resolve(None)) == "cpu" and "avx512bw" in lutc.target.device_name(
            lutc.target.resolve(None)):
        assert {"ptiles64", "tiles128", "tiles64", "ptiles32", "dot16", "bitplane"} <= set(CPU_LAYOUTS)


@pytest.mark.parametrize("layout", CPU_LAYOUTS)
@pytest.mark.parametrize("M", [1, 3, 16, 37, 300])   # exact, padded buckets, > 256: chunks
def test_eager_any_m_every_layout(M, layout):
    qw = _weights(N=100, wbits=2, layout=layout)       # N not a multiple of any tile
    x = torch.randn(M, 256, generator=GEN)
    y = _op(x, qw)
    assert y.shape == (M, 100) and y.dtype == torch.float32
    assert rel_error(y, reference(x, qw)) < _tol(x, qw)


@pytest.mark.parametrize("fmt", [dict(format="bcq", wbits=2, group_size=32),
                                 dict(format="ternary", wbits=2, group_size=-1),
                                 dict(wbits=3, group_size=64, zero_point=True),
                                 dict(wbits=4, group_size=128, scale_dtype="float32")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_eager_formats_and_dtypes(fmt, dtype):
    base = _weights(N=40, K=512, **fmt)
    plan = kernel_cache().layout_plan(base.weight_spec(table_dtype="int8"), "cpu")
    for qw in (base, lutc.repack(base, plan.layouts[0])):   # bitplane, and the CPU kernels' layout
        x = torch.randn(5, 512, generator=GEN).to(dtype)
        y = _op(x, qw)
        assert y.dtype == dtype
        assert rel_error(y, reference(x, qw)) < _tol(x, qw)


@pytest.mark.parametrize("dot_mac_us", [10.5, 13.0])
def test_a_cpu_holds_the_decode_copy_only_where_the_log_says_it_pays(tmp_path, monkeypatch, dot_mac_us):
    """A tuning record that makes the LUT kernel the M = 1 choice by a few percent must not send
    batches to the LUT kernel (about 2x slower at M = 16 than dot_mac on a VNNI CPU, more than amx) nor double
    the memory held: one copy, the batch kernel's. Where it is 1.3x faster (W1's LUT kernel on
    the Emerald Rapids VM: 1.25x), ``LUTLinear`` holds both, M = 1 runs the LUT kernel and the
    batches ``dot_mac`` (or ``amx``), each within the bound; ``single_layout`` keeps the batch copy alone."""
    from lutc.target import describe, device_name, resolve
    from lutc.torch_ops import SECOND_COPY_GAIN
    from lutc.tuner.records import log_for
    spec = lutc.MPGemmSpec(1, 256, 512, wbits=2, group_size=64, table_dtype="int8")
    batch = lutc.build(spec.with_(M=16), tuned=False, cache=None)
    if batch.layout != "dot16":
        pytest.skip("no VNNI: the LUT kernel serves every M here")
    monkeypatch.setenv("LUTC_TUNING_LOGS", str(tmp_path))
    tgt = resolve("host")
    log = log_for("cpu", describe(tgt))
    lut_knobs = {"unroll": 4, "paired": False, "vector_bytes": 64}
    for schedule, knobs, us in (("x86", lut_knobs, 10.0), ("dot_mac", {}, dot_mac_us)):
        log.append({"workload": spec.key(), "target": describe(tgt), "device": device_name(tgt), "versions": {},
                    "schedule": schedule, "knobs": knobs, "us": us, "error": None, "confirm": "run"})
    decode = lutc.build(spec, cache=None)
    assert decode.schedule == "x86"             # the tuned M = 1 kernel
    pays = dot_mac_us >= SECOND_COPY_GAIN * 10.0
    plan = OpKernels().layout_plan(spec, "cpu")
    assert plan.layouts == ((decode.layout, batch.layout) if pays else (batch.layout,))
    assert plan.split == (1 if pays else None)
    assert OpKernels().layout_plan(spec, "cpu", single=True).layouts == (batch.layout,)
    if not pays:
        return
    monkeypatch.setattr(lutc.torch_ops, "_CACHE", OpKernels())   # plans made with this log
    lin = torch.nn.Linear(512, 256, bias=False)
    q = lutc.LUTLinear.from_linear(lin, wbits=2, group_size=64)
    assert q.layouts == (decode.layout, batch.layout)
    assert lutc.LUTLinear.from_linear(lin, wbits=2, group_size=64, single_layout=True).layouts == (batch.layout,)
    w = q.packed().dequantize()
    for M in (1, 16):
        x = torch.randn(M, 512, generator=GEN)
        assert rel_error(q(x), x.double() @ w.T) < tolerance(q.kernel_spec())
    ran = {(k.spec.M, k.schedule) for k in kernel_cache().kernels() if k.spec.N == 256}
    assert (1, "x86") in ran and (16, batch.schedule) in ran


def test_default_layout_runs_the_simd_kernel():
    """The op on a weight in the SIMD kernel's layout runs that kernel, not a generic one."""
    spec = lutc.MPGemmSpec(1, 64, 256, wbits=2, group_size=64, table_dtype="int8")
    layout = kernel_cache().layout_plan(spec, "cpu").layouts[0]
    qw = _weights(layout=layout)
    _op(torch.randn(1, 256, generator=GEN), qw)
    used = [k for k in kernel_cache().kernels() if k.layout == layout and k.spec.N == 64]
    assert used and all(k.schedule not in ("cpu_generic",) for k in used)
    assert layout != "bitplane" or "avx2" not in lutc.target.device_name(lutc.target.resolve(None))


def test_lut_knobs_reach_the_kernel():
    qw = _weights(K=512)
    x = torch.randn(2, 512, generator=GEN)
    for knobs in (dict(g=2, symmetrize=False, table_dtype="float32"), dict(table_dtype="int8")):
        y = _op(x, qw, **knobs)
        assert rel_error(y, reference(x, qw)) < _tol(x, qw, **knobs)
    specs = {k.spec for k in kernel_cache().kernels()}
    assert any(s.g == 2 and not s.symmetrize for s in specs) and any(s.table_dtype == "int8" for s in specs)


def test_a_layout_no_kernel_reads_is_refused_by_name():
    qw = _weights(layout="warp32", K=256)
    with pytest.raises(ValueError, match=r"no lutc kernel for cpu reads weights in layout 'warp32'"):
        _op(torch.randn(2, 256, generator=GEN), qw)
    with pytest.raises(ValueError, match=r"unknown weight layout 'tiles7'"):
        torch.ops.lutc.mpgemm(torch.randn(2, 256), qw.planes, qw.scales, None, 2, 64, layout="tiles7", N=64)
    t = _weights(layout="tiles128")
    with pytest.raises(ValueError, match=r"pass the weight's row count N for layout 'tiles128'"):
        torch.ops.lutc.mpgemm(torch.randn(2, 256), t.planes, t.scales, None, 2, 64, layout="tiles128")


def test_contiguous_but_misaligned_input_is_safe():
    qw = _weights()
    x = torch.randn(3 * 256 + 1, generator=GEN)[1:].view(3, 256)   # 4 bytes past an aligned start
    assert x.is_contiguous() and x.data_ptr() % 64
    assert rel_error(_op(x, qw), reference(x, qw)) < _tol(x, qw)

def test_kernel_launch_copies_misaligned_inputs_and_refuses_misaligned_out():
    spec = lutc.MPGemmSpec(2, 64, 256, wbits=2, group_size=64)
    kernel = lutc.build(spec)
    qw = _weights()
    x = torch.randn(2 * 256 + 1, generator=GEN)[1:].view(2, 256)
    out = torch.full((2, 64), float("nan"))
    kernel.launch(x, qw.planes, qw.scales, out)
    assert rel_error(out, reference(x, qw)) < tolerance(spec)
    with pytest.raises(ValueError, match="out must be contiguous and 64-byte aligned"):
        kernel.launch(x, qw.planes, qw.scales, torch.empty(2 * 64 + 1)[1:].view(2, 64))


def test_zero_rows():
    qw = _weights()
    assert _op(torch.empty(0, 256), qw).shape == (0, 64)


def test_a_gradient_asked_for_runs_forward_and_refuses_backward():
    """Grad mode with an input that wants a gradient (a model called without torch.no_grad()):
    the product is still right, and a backward raises instead of leaving x.grad silently unset."""
    qw = _weights(wbits=3)
    x = torch.randn(4, 256, generator=GEN, requires_grad=True)
    y = _op(x, qw)
    assert y.requires_grad and rel_error(y.detach(), reference(x.detach(), qw)) < _tol(x, qw)
    with pytest.raises(RuntimeError, match="lutc::mpgemm has no backward"):
        y.sum().backward()
    with torch.no_grad():
        assert not _op(x, qw).requires_grad
    with torch.inference_mode():
        assert rel_error(_op(x.detach(), qw), y.detach()) == 0


def test_a_dispatch_mode_sees_the_op():
    """Plain tensors skip the dispatcher's lower levels, but not under a TorchDispatchMode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    qw = _weights()
    x = torch.randn(2, 256, generator=GEN)
    with torch.no_grad(), Seen():
        y = _op(x, qw)
    assert "lutc.mpgemm.default" in Seen.ops and rel_error(y, reference(x, qw)) < _tol(x, qw)


def test_compile_fullgraph_no_graph_break():
    qw = _weights(wbits=4, zero_point=True)

    def f(x):
        return torch.relu(lutc.torch_ops.linear(x, qw)) * 2

    x = torch.randn(2, 3, 256, generator=GEN)
    explanation = torch._dynamo.explain(f)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(f, fullgraph=True)
    ref = torch.relu(reference(x.reshape(6, 256), qw)).reshape(2, 3, 64) * 2
    assert rel_error(compiled(x), ref) < 2 * _tol(x[0], qw)


@pytest.mark.parametrize("layout", ["bitplane", CPU_LAYOUTS[0]])
def test_compile_dynamic_m(layout):
    qw = _weights(layout=layout)
    compiled = torch.compile(lambda x: _op(x, qw) * 2, fullgraph=True, dynamic=True)
    for M in (1, 5, 33):
        x = torch.randn(M, 256, generator=GEN)
        assert rel_error(compiled(x), reference(x, qw) * 2) < _tol(x, qw)


def test_fake_tensor_shapes_and_meta_inputs():
    qw = _weights(wbits=3)
    meta = [t.to("meta") for t in (qw.planes, qw.scales)]
    y = torch.ops.lutc.mpgemm(torch.empty(7, 256, device="meta"), *meta, None, 3, 64)
    assert y.device.type == "meta" and y.shape == (7, 64) and y.dtype == torch.float32
    y16 = torch.ops.lutc.mpgemm(torch.empty(2, 256, device="meta", dtype=torch.float16), *meta, None, 3, 64)
    assert y16.dtype == torch.float16
    t = lutc.repack(_weights(N=50, wbits=3), "tiles128")   # a padded layout: N comes from the argument
    meta = [u.to("meta") for u in (t.planes, t.scales)]
    y = torch.ops.lutc.mpgemm(torch.empty(4, 256, device="meta"), *meta, None, 3, 64, layout="tiles128", N=50)
    assert y.shape == (4, 50)


# --- bad arguments: the message names the argument and what was expected ---
@pytest.fixture(scope="module")
def qw2():
    return _weights()


@pytest.fixture
def x():
    return torch.randn(3, 256, generator=GEN)


def test_bad_dtypes(qw2, x):
    with pytest.raises(TypeError, match=r"x has dtype torch.float64, expected one of torch.float32"):
        _op(x.double(), qw2)
    with pytest.raises(TypeError, match=r"planes has dtype torch.int8, expected torch.uint8"):
        torch.ops.lutc.mpgemm(x, qw2.planes.to(torch.int8), qw2.scales, None, 2, 64)
    with pytest.raises(TypeError, match=r"scales has dtype torch.bfloat16, expected torch.float16 or torch.float32"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales.bfloat16(), None, 2, 64)


def test_bad_devices(qw2, x):
    with pytest.raises(ValueError, match=r"planes is on cpu, expected meta \(the device of x\)"):
        _op(x.to("meta"), qw2)
    with pytest.raises(ValueError, match=r"scales is on meta, expected cpu"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales.to("meta"), None, 2, 64)


def test_bad_shapes(qw2, x):
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 256\), expected 2-D \[M, K\]"):
        _op(x.reshape(1, 3, 256).expand(2, 3, 256).contiguous(), qw2)
    with pytest.raises(ValueError, match=r"planes has shape \(2, 64, 32\), expected \(2, 64, 16\) \(layout 'bitplane'"):
        _op(x[:, :128].contiguous(), qw2)
    with pytest.raises(ValueError, match=r"scales has shape \(64, 2\), expected \(64, 4\)"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales[:, :2].contiguous(), None, 2, 64)
    with pytest.raises(ValueError, match=r"zeros has shape \(64, 3\), expected \(64, 4\)"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales, torch.zeros(64, 3, dtype=torch.float16), 2, 64)


def test_non_contiguous(qw2, x):
    xt = x.t().contiguous().t()
    with pytest.raises(ValueError, match=r"x is not contiguous .*pass x.contiguous\(\)"):
        _op(xt, qw2)
    planes = qw2.planes.transpose(1, 2).contiguous().transpose(1, 2)
    with pytest.raises(ValueError, match=r"planes is not contiguous"):
        torch.ops.lutc.mpgemm(x, planes, qw2.scales, None, 2, 64)


def test_bad_bit_width_and_format(qw2, x):
    with pytest.raises(ValueError, match=r"planes has shape \(2, 64, 32\), expected \(3, 64, 32\) \(layout 'bitplane', uniform w3\)"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales, None, 3, 64)
    with pytest.raises(lutc.SpecError, match=r"wbits must be 1, 2, 3 or 4, got 5"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales, None, 5, 64)
    with pytest.raises(lutc.SpecError, match=r"zero_point applies to the uniform format only"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales, torch.zeros(64, 4, dtype=torch.float16), 2, 64, "bcq")
    with pytest.raises(lutc.SpecError, match=r"group_size must be one of"):
        torch.ops.lutc.mpgemm(x, qw2.planes, qw2.scales, None, 2, 48)


def test_errors_under_compile_name_the_argument(qw2):
    compiled = torch.compile(lambda x: _op(x, qw2), fullgraph=True)
    with pytest.raises(Exception, match=r"x has dtype torch.float64"):
        compiled(torch.randn(3, 256, dtype=torch.float64))


def test_check_args_returns_the_spec(qw2, x):
    spec = check_args(x, qw2.planes, qw2.scales, None, 2, 64)
    assert (spec.N, spec.K, spec.wbits, spec.scale_dtype, spec.zero_point) == (64, 256, 2, "float16", False)


# --- the cache ---
def test_buckets_and_plan():
    cache = OpKernels()
    # powers of two, then steps of 1.5x from 64 (96, 192)
    assert [cache.bucket(m) for m in (1, 2, 3, 5, 65, 97, 129, 193, 255, 256, 257)] == \
        [1, 2, 4, 8, 96, 128, 192, 256, 256, 256, 256]
    assert cache.plan(600) == [(0, 256, 256), (256, 256, 256), (512, 88, 96)]
    assert cache.plan(0) == []
    assert cache.plan(20, limit=8) == [(0, 8, 8), (8, 8, 8), (16, 4, 4)]
    exact = OpKernels(buckets="exact")
    assert exact.bucket(37) == 37 and exact.plan(37) == [(0, 37, 37)]
    assert exact.plan(20, limit=8) == [(0, 8, 8), (8, 8, 8), (16, 4, 4)]
    with pytest.raises(ValueError, match="buckets must be positive"):
        OpKernels(buckets=(0, 4))


def test_cache_compiles_once_per_bucket():
    qw = _weights(N=48, K=128, group_size=32)
    cache = OpKernels(buckets=(1, 4, 16))
    old = lutc.torch_ops.set_kernel_cache(cache)
    try:
        for M in (1, 2, 3, 4, 9, 1, 3, 40):   # buckets 1, 4, 16 (40 = 16 + 16 + 8 -> 16)
            x = torch.randn(M, 128, generator=GEN)
            assert rel_error(_op(x, qw), reference(x, qw)) < _tol(x, qw)
        assert sorted(k.spec.M for k in cache.kernels()) == [1, 4, 16]
    finally:
        lutc.torch_ops.set_kernel_cache(old)
    with pytest.raises(TypeError, match="OpKernels"):
        lutc.torch_ops.set_kernel_cache({})


# --- CUDA (skipped without a GPU) ---
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("M", [1, 5, 300])
def test_cuda_eager(M):
    qw = _weights(K=512, wbits=4, zero_point=True)
    x = torch.randn(M, 512, generator=GEN)
    y = _op(x.cuda(), qw.to("cuda"))
    assert y.device.type == "cuda"
    assert rel_error(y.cpu(), reference(x, qw)) < _tol(x.cuda(), qw.to("cuda"))


@cuda
@pytest.mark.parametrize("layout,dtype", [("warp32", torch.float16), ("warp32", torch.bfloat16),
                                          ("warp32", torch.float32), ("tc16", torch.float16)])
@pytest.mark.parametrize("M", [1, 3, 9, 130])     # warp32: M > 8 runs in chunks of 8
def test_cuda_kernel_layouts(layout, dtype, M):
    qw = _weights(N=100, K=512, wbits=2, layout=layout).to("cuda")
    x = torch.randn(M, 512, generator=GEN).to(dtype)
    y = _op(x.cuda(), qw)
    assert rel_error(y.cpu(), reference(x, qw)) < _tol(x.cuda(), qw)
    used = {k.schedule for k in kernel_cache().kernels() if k.layout == layout}
    # tc16: the streamed kernel for M = 2..8, the register-prefetch one otherwise (wgmma on Hopper)
    assert used == {"cuda_lut"} if layout == "warp32" else used <= {"cuda_stream", "cuda_mma", "cuda_wgmma"}


@cuda
def test_cuda_compile_and_graph_capture():
    for layout in ("bitplane", "warp32", "tc16"):
        qw = _weights(K=512, layout=layout).to("cuda")
        x = torch.randn(3, 512, generator=GEN).cuda().half()
        ref = reference(x.cpu(), qw)
        compiled = torch.compile(lambda x: _op(x, qw) * 2, fullgraph=True)
        assert rel_error(compiled(x).cpu(), ref * 2) < _tol(x, qw)
        _op(x, qw)                       # warm-up: compile the kernel outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = _op(x, qw)
        x.copy_(torch.randn(3, 512, generator=GEN).cuda())
        graph.replay()
        torch.cuda.synchronize()
        assert rel_error(y.cpu(), reference(x.cpu(), qw)) < _tol(x, qw)


@cuda
def test_cuda_device_mismatch_is_named():
    qw = _weights(K=512)
    with pytest.raises(ValueError, match=r"planes is on cpu, expected cuda:0"):
        _op(torch.randn(2, 512, device="cuda"), qw)
