"""Bad calls get clear errors naming the argument, or a safe copy; never a crash."""
import numpy as np
import pytest
import torch

import lutc
from lutc.testing import random_case, reference, rel_error, tolerance

SPEC = lutc.MPGemmSpec(3, 64, 256, wbits=2, group_size=64)


@pytest.fixture(scope="module")
def kernel():
    return lutc.build(SPEC)


@pytest.fixture(scope="module")
def case():
    return random_case(SPEC, seed=2)


def test_wrong_shape(kernel, case):
    x, qw = case
    with pytest.raises(ValueError, match=r"x has shape \(3, 128\), expected \(3, 256\)"):
        kernel(x[:, :128], qw)
    with pytest.raises(ValueError, match="x has shape"):
        kernel(x[:2], qw)


def test_wrong_dtype(kernel, case):
    x, qw = case
    with pytest.raises(TypeError, match="x has dtype torch.float16, expected torch.float32"):
        kernel(x.half(), qw)
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        kernel(x.double().numpy(), qw)


def test_wrong_device(kernel, case):
    x, qw = case
    with pytest.raises(ValueError, match="x is on meta, the kernel runs on cpu"):
        kernel(x.to("meta"), qw)


def test_weights_for_another_kernel(kernel, case):
    x, _ = case
    other = lutc.quantize(torch.randn(64, 256), wbits=3, group_size=64)
    with pytest.raises(ValueError, match="wbits=3 but the kernel was compiled for wbits=2"):
        kernel(x, other)
    with pytest.raises(TypeError, match="qw must be lutc.PackedWeights"):
        kernel(x, torch.zeros(3))


def test_wrong_out(kernel, case):
    x, qw = case
    with pytest.raises(ValueError, match="out has shape"):
        kernel(x, qw, out=torch.empty(3, 65))
    with pytest.raises(TypeError, match="out has dtype"):
        kernel(x, qw, out=torch.empty(3, 64, dtype=torch.float64))


def test_non_contiguous_inputs_are_copied(kernel, case):
    x, qw = case
    wide = torch.randn(3, 512)
    wide[:, ::2] = x
    xs = wide[:, ::2]
    assert not xs.is_contiguous()
    assert rel_error(kernel(xs, qw), reference(x, qw)) < tolerance(kernel.spec)
    xt = x.t().contiguous().t()          # same values, column-major
    assert rel_error(kernel(xt, qw), reference(x, qw)) < tolerance(kernel.spec)


@pytest.mark.parametrize("offset_bytes", [4, 16, 32, 48])
def test_misaligned_buffers_are_copied_not_crashed(kernel, case, offset_bytes):
    x, qw = case
    n = x.numel()
    raw = np.empty(n + 64, np.float32)
    start = ((-raw.ctypes.data) % 64 + offset_bytes) // 4
    xa = raw[start:start + n].reshape(x.shape)
    xa[...] = x.numpy()
    assert xa.ctypes.data % 64 == offset_bytes
    ref = reference(x, qw)
    assert rel_error(kernel(xa, qw), ref) < tolerance(kernel.spec)
    out_raw = np.full(3 * 64 + 64, np.nan, np.float32)
    o = ((-out_raw.ctypes.data) % 64 + offset_bytes) // 4
    out = out_raw[o:o + 3 * 64].reshape(3, 64)
    kernel(xa, qw, out=out)
    assert rel_error(out, ref) < tolerance(kernel.spec)


def test_misaligned_weight_tensor_is_copied(kernel, case):
    x, qw = case
    raw = torch.empty(qw.planes.numel() + 1, dtype=torch.uint8)
    planes = raw[1:].view(qw.planes.shape)
    planes.copy_(qw.planes)
    assert planes.data_ptr() % 64
    shifted = lutc.PackedWeights(**dict(qw.state(), planes=planes))
    assert rel_error(kernel(x, shifted), reference(x, qw)) < tolerance(kernel.spec)


@pytest.mark.parametrize("kwargs,match", [
    (dict(wbits=5), "wbits"),
    (dict(group_size=100), "group_size"),
    (dict(act_dtype="float64"), "act_dtype"),
    (dict(g=3), "g must be"),
    (dict(table_dtype="int4"), "table_dtype"),
])
def test_unsupported_specs(kwargs, match):
    with pytest.raises(lutc.SpecError, match=match):
        lutc.compile((1, 64, 256), **kwargs)


def test_k_not_multiple_of_group_size():
    with pytest.raises(lutc.SpecError, match="K=192 is not a multiple of group_size=128"):
        lutc.compile((1, 64, 192), group_size=128)


def test_bad_shape_and_target_and_knobs():
    with pytest.raises(ValueError, match=r"shape must be \(M, N, K\)"):
        lutc.compile((64, 256))
    with pytest.raises(lutc.SpecError, match="M must be a positive int"):
        lutc.compile((0, 64, 256))
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        lutc.compile((1, 64, 256), target="tpu")
    with pytest.raises(ValueError, match="no knob"):
        lutc.compile((1, 64, 256), knobs={"tile": 3})
    with pytest.raises(ValueError, match="no cpu schedule named .nope."):
        lutc.compile((1, 64, 256), schedule="nope")


def test_cross_compiled_kernel_refuses_to_run(case):
    x, qw = case
    arm = lutc.build(SPEC, target="arm")
    assert not arm.runnable
    with pytest.raises(RuntimeError, match="cannot run in this process"):
        arm(x, qw)
