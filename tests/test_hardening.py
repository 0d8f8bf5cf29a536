"""Hardening: no silent NaN, no stale results, every bad input a named error (one test per
finding; each failed before its fix)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lutc
from lutc.testing import reference, rel_error, tolerance

GEN = torch.Generator().manual_seed(7)


# --- silent wrong numbers ---
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("wbits", [2, 4])
def test_zero_point_constant_and_zero_groups_are_exact(wbits, scale_dtype):
    w = torch.randn(64, 256, generator=GEN) * 0.02
    w[0] = 0                      # a pruned row
    w[1, :128] = 0.013            # constant groups of either sign
    w[2, 128:] = -0.5
    qw = lutc.quantize(w, wbits=wbits, group_size=128, zero_point=True, scale_dtype=scale_dtype)
    assert torch.isfinite(qw.zeros.float()).all() and torch.isfinite(qw.scales.float()).all()
    d = qw.dequantize()
    assert torch.equal(d[0], torch.zeros(256, dtype=torch.float64))
    rounding = 2e-3 if scale_dtype == "float16" else 1e-6        # of the scale dtype
    assert (d[1, :128] - 0.013).abs().max() < 0.013 * rounding
    assert (d[2, 128:] + 0.5).abs().max() < 0.5 * rounding
    x = torch.randn(3, 256, generator=GEN)
    y = lutc.compile((3, 64, 256), wbits=wbits, group_size=128, zero_point=True, scale_dtype=scale_dtype)(x, qw)
    assert torch.isfinite(y).all()
    assert torch.nn.functional.layer_norm(y, (64,)).isfinite().all()


@pytest.mark.parametrize("zero_point", [False, True])
def test_tiny_weights_keep_a_nonzero_scale(zero_point):
    w = torch.randn(32, 128, generator=GEN) * 1e-11
    qw = lutc.quantize(w, wbits=4, group_size=128, zero_point=zero_point, scale_dtype="float32")
    assert (qw.scales > 0).all()
    assert (qw.dequantize() - w.double()).abs().max() < 0.2 * w.abs().max()    # tiny stays tiny and close
    q16 = lutc.quantize(w, wbits=4, group_size=128, zero_point=zero_point)       # float16: the least subnormal
    assert (q16.scales.float() > 0).all() and torch.isfinite(q16.dequantize()).all()
    assert q16.dequantize().abs().max() < 1e-6


INT8_PATHS = [("x86", None), ("x86", {"paired": False}), ("dot_mac", None), ("amx", None), ("cpu_generic", None)]


@pytest.mark.parametrize("schedule,knobs", INT8_PATHS)
@pytest.mark.parametrize("fmt", [dict(wbits=2), dict(wbits=3, zero_point=True), dict(format="ternary")])
def test_nan_in_x_gives_nan_rows_on_int8_paths(schedule, knobs, fmt):
    spec = lutc.MPGemmSpec(4, 100, 512, table_dtype="int8", **fmt)
    try:
        kernel = lutc.build(spec, schedule=schedule, knobs=knobs)
    except ValueError:
        pytest.skip(f"{schedule} does not build {fmt} here")
    qw = lutc.quantize(torch.randn(100, 512, generator=GEN) * 0.02, wbits=spec.wbits, format=spec.format,
                       group_size=spec.group_size, zero_point=spec.zero_point)
    x = torch.randn(4, 512, generator=GEN)
    x[1, 77], x[2, 300], x[3, 511] = float("nan"), float("inf"), float("-inf")
    y = kernel(x, qw)
    assert y[1].isnan().all() and not y[2:].isfinite().any()     # as F.linear: NaN (or +-inf) rows
    assert rel_error(y[:1], reference(x[:1], qw)) < tolerance(spec)   # the clean row is untouched


def test_nan_through_the_op_and_lutlinear():
    q = lutc.LUTLinear.from_linear(torch.nn.Linear(256, 64), wbits=2, group_size=128)
    x = torch.randn(3, 256, generator=GEN)
    x[0, 5] = float("nan")
    y = q(x)
    assert y[0].isnan().all() and y[1:].isfinite().all()


def test_in_place_changes_to_packed_weights_are_seen():
    qw = lutc.quantize(torch.randn(64, 256, generator=GEN) * 0.02, wbits=2, group_size=64)
    for kernel in (lutc.compile((1, 64, 256), wbits=2, group_size=64),
                   lutc.compile((1, 64, 256), wbits=2, group_size=64, schedule="dot_mac")):
        x = torch.randn(1, 256, generator=GEN)
        y0 = kernel(x, qw)
        qw.scales.mul_(2)
        assert torch.allclose(kernel(x, qw), 2 * y0, rtol=1e-3, atol=1e-6)
        qw.scales.div_(2)


def test_float16_tables_are_refused():
    with pytest.raises(lutc.SpecError, match=r"table_dtype must be one of \['float32', 'int8'\], got 'float16'"):
        lutc.compile((1, 64, 256), table_dtype="float16")


# --- quality of the quantizer (real weights: tests/test_real_weights.py) ---
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("wbits", [2, 3, 4])
def test_zero_point_grids_hold_zero_exactly(wbits, scale_dtype):
    # A fractional zero point moved every near-zero weight by the same offset: a per-group bias
    # that adds up over the inputs (W4 MiniLM embeddings fell below min-max rounding).
    w = torch.distributions.Laplace(0.0, 0.02).sample((64, 256))
    w[:, ::7] = 0
    qw = lutc.quantize(w, wbits=wbits, group_size=128, zero_point=True, scale_dtype=scale_dtype)
    assert torch.equal(qw.zeros.float(), qw.zeros.float().round())
    assert torch.equal(qw.dequantize()[:, ::7], torch.zeros(64, 37, dtype=torch.float64))


# --- disk caches ---
def test_a_truncated_cache_entry_is_rebuilt_not_fatal(tmp_path):
    env = dict(os.environ, LUTC_CACHE="1", LUTC_CACHE_DIR=str(tmp_path))
    script = "import lutc, torch; k = lutc.compile((1, 512, 1024), wbits=2, group_size=128); print(k.from_cache)"
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and first.stdout.strip() == "False"
    libs = list((tmp_path / "kernels").glob("*.so"))
    assert libs
    for lib in libs:
        lib.write_bytes(lib.read_bytes()[:1000])               # a copy cut short
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]         # no SIGBUS (exit 135)
    assert second.stdout.strip() == "False" and "truncated" in second.stderr
    third = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert third.stdout.strip() == "True"                         # the rebuilt entry serves again


def test_an_edited_schedule_never_loads_its_old_kernel():
    from lutc.cache import KernelCache, source_fingerprint
    spec = lutc.MPGemmSpec(1, 64, 256)
    key = KernelCache.key(spec, {"kind": "llvm"}, "x86", {})
    assert len(source_fingerprint()) == 16 and key != KernelCache.key(spec, {"kind": "llvm"}, "x86", {"unroll": 2})


# --- bad input: named errors ---
@pytest.mark.parametrize("knobs,match", [
    ({"unroll": 0}, r"schedule x86 knob unroll=0 is not one of"),
    ({"unroll": -1}, r"knob unroll=-1"),
    ({"unroll": 3}, r"knob unroll=3"),
    ({"unroll": 1000}, r"knob unroll=1000"),
    ({"paired": "False"}, r"knob paired='False' is not one of \[True, False\]"),
    ({"vector_bytes": 128}, r"knob vector_bytes=128"),
])
def test_knobs_outside_their_domain_are_named(knobs, match):
    with pytest.raises(ValueError, match=match):
        lutc.compile((1, 64, 256), wbits=2, group_size=64, schedule="x86", knobs=knobs)
    with pytest.raises(ValueError, match=r"schedule dot_mac has no knob\(s\) \['unroll'\]; its knobs are"):
        lutc.compile((1, 64, 256), wbits=2, group_size=64, schedule="dot_mac", knobs={"unroll": 2})


def test_knobs_of_other_schedules_are_named():
    with pytest.raises(ValueError, match=r"schedule dot_mac knob row_tiles=0"):
        lutc.compile((1, 64, 256), schedule="dot_mac", knobs={"row_tiles": 0})
    with pytest.raises(ValueError, match=r"schedule cpu_generic knob n_block=0"):
        lutc.compile((1, 64, 256), schedule="cpu_generic", knobs={"n_block": 0}, table_dtype="float32")
    from lutc.cli import main
    assert main(["export", "--shape", "1,64,256", "--schedule", "cpu_generic", "--knob", "n_block=0",
                 "-o", "/tmp/lutc-never"]) == 2


@pytest.mark.parametrize("shape,match", [((1.5, 64, 256), r"M must be a positive int, got 1.5 \(float\)"),
                                         ((True, 64, 256), r"M must be a positive int, got True \(bool\)"),
                                         ((1, 64.0, 256), r"N must be a positive int, got 64.0")])
def test_non_integer_counts_are_refused(shape, match):
    with pytest.raises(lutc.SpecError, match=match):
        lutc.compile(shape)


def test_bool_bit_width_is_refused_everywhere():
    with pytest.raises(lutc.SpecError, match=r"wbits must be an int, got True \(bool\)"):
        lutc.compile((1, 64, 256), wbits=True)
    with pytest.raises(lutc.SpecError, match=r"wbits must be an int"):
        lutc.quantize(torch.randn(64, 256), wbits=True)
    with pytest.raises(lutc.SpecError, match=r"zero_point must be True or False, got 1"):
        lutc.MPGemmSpec(1, 64, 256, zero_point=1)


def test_packed_weights_with_wrong_tensors_fail_at_construction():
    qw = lutc.quantize(torch.randn(64, 256, generator=GEN), wbits=2, group_size=64)
    fields = {k: v for k, v in qw.state().items()}
    with pytest.raises(ValueError, match=r"packed weight's scales is torch.float16 \(64, 2\); layout 'bitplane'"):
        lutc.PackedWeights(**dict(fields, scales=qw.scales[:, :2].contiguous()))
    with pytest.raises(ValueError, match=r"has zeros but zero_point=False"):
        lutc.PackedWeights(**dict(fields, zeros=torch.zeros(64, 4, dtype=torch.float16)))
    with pytest.raises(TypeError, match=r"zeros must be a torch.Tensor, got NoneType \(zero_point=True needs zeros\)"):
        lutc.PackedWeights(**dict(fields, zero_point=True))
    with pytest.raises(ValueError, match=r"planes is torch.uint8 \(2, 64, 32\); layout 'tiles64'"):
        lutc.PackedWeights(**dict(fields, layout="tiles64"))
    with pytest.raises(ValueError, match=r"unknown weight layout 'tiles7'"):
        lutc.PackedWeights(**dict(fields, layout="tiles7"))


# --- feedback on long work ---
def test_quantize_model_reports_progress_when_asked(capsys):
    model = torch.nn.Sequential(*(torch.nn.Linear(128, 128) for _ in range(3)))
    lutc.quantize_model(model, wbits=2, group_size=128, progress=True)
    err = capsys.readouterr().err
    assert "lutc.quantize_model: 3/3 layers" in err and "ETA" in err
    lutc.quantize_model(torch.nn.Sequential(torch.nn.Linear(128, 128)), wbits=2, group_size=128)
    assert capsys.readouterr().err == ""             # not a terminal: quiet by default


def test_help_answers_without_importing_torch_and_tvm():
    script = textwrap.dedent("""
        import sys, time
        from lutc.cli import main
        try:
            main(["tune", "--help"])
        except SystemExit:
            pass
        print("LOADED", "torch" in sys.modules, "tvm" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("LOADED")[1].split() == ["False", "False"]     # was 2.6-3.4 s of imports
    assert "measurements per shape (default: 64)" in " ".join(out.split())


def test_openmp_waits_passively_when_lutc_loads_first():
    """torch's spinning OpenMP threads made a whole model 7x slower (lutc's docstring)."""
    code = "import os, sys; import {}; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = lambda mods: subprocess.run([sys.executable, "-c", code.format(mods)], env=env, text=True,  # noqa: E731
                                      capture_output=True, check=True).stdout.strip()
    assert run("lutc, torch") == "PASSIVE"
    assert run("torch, lutc") == "None"         # too late for libgomp: lutc leaves it and warns


# --- found in review ---
def test_weights_made_in_inference_mode_run():
    with torch.inference_mode():
        qw = lutc.quantize(torch.randn(64, 256, generator=GEN) * 0.02, wbits=2, group_size=64)
        kernel = lutc.compile((1, 64, 256), wbits=2, group_size=64)
        x = torch.randn(1, 256, generator=GEN)
        assert rel_error(kernel(x, qw), reference(x, qw)) < tolerance(kernel.spec)


def test_chunks_whose_output_rows_start_misaligned():
    from lutc.torch_ops import OpKernels, kernel_cache, set_kernel_cache
    qw = lutc.quantize(torch.randn(100, 256, generator=GEN) * 0.02, wbits=2, group_size=64)
    old = set_kernel_cache(OpKernels(buckets=(1, 3)))        # 3-row chunks: y rows at 1200-byte steps
    try:
        x = torch.randn(7, 256, generator=GEN)
        y = lutc.torch_ops.linear(x, qw)
        assert rel_error(y, reference(x, qw)) < tolerance(kernel_cache().kernels()[0].spec)
    finally:
        set_kernel_cache(old)


def test_tensor_counts_are_not_truncated():
    with pytest.raises(lutc.SpecError, match=r"M must be a positive int, got tensor\(1.7"):
        lutc.MPGemmSpec(torch.tensor(1.7), 64, 256)
    import numpy as np
    assert lutc.MPGemmSpec(np.int64(2), 64, 256).M == 2


def test_knobs_of_a_checkpoint_replan_the_layer():
    from lutc.nn import decode_extra_state, encode_extra_state
    src = lutc.LUTLinear.from_linear(torch.nn.Linear(256, 64), wbits=2, group_size=128)
    sd = src.state_dict()
    dst = lutc.LUTLinear(256, 64, wbits=2, group_size=128)
    dst.load_state_dict({**sd, "_extra_state": encode_extra_state(dict(decode_extra_state(sd["_extra_state"]),
                                                                           table_dtype="float32"))})
    assert dst.table_dtype == "float32" and dst.layouts == ("bitplane",)       # the generic float kernel
    x = torch.randn(2, 256, generator=GEN)
    y = dst(x)
    assert rel_error(y - dst.bias, reference(x, src.packed())) < tolerance(dst.kernel_spec())
    bad = {**sd, "_extra_state": encode_extra_state(dict(decode_extra_state(sd["_extra_state"]), table_dtype="float16"))}
    before = dst.bias.clone()
    with pytest.raises(ValueError, match=r"checkpoint's LUT knobs: table_dtype must be one of"):
        dst.load_state_dict(bad)
    assert torch.equal(dst.bias, before)


def test_meta_activations_and_empty_half_models():
    q = lutc.LUTLinear.from_linear(torch.nn.Linear(256, 64), wbits=2, group_size=128).to("meta")
    assert q(torch.empty(3, 256, device="meta")).shape == (3, 64)
    model = lutc.quantize_model(torch.nn.Sequential(torch.nn.Linear(256, 64, bias=False)).half(),
                                wbits=2, group_size=128, empty=True)
    assert model[0].act_dtype == "float16"


def test_a_pickled_layer_comes_back_usable(tmp_path):
    q = lutc.LUTLinear.from_linear(torch.nn.Linear(256, 64), wbits=3, group_size=64)
    torch.save(q, tmp_path / "q.pt")
    back = torch.load(tmp_path / "q.pt", weights_only=False)
    x = torch.randn(2, 256, generator=GEN)
    assert back.layouts == q.layouts and torch.equal(back(x), q(x))
