"""CUDA kernels run on a GPU (skipped without one): the default schedule against the reference."""
import pytest
import torch

import lutc
from lutc.testing import random_case, reference, rel_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SPECS = [
    lutc.MPGemmSpec(1, 4096, 4096, wbits=2, group_size=128),
    lutc.MPGemmSpec(3, 130, 11008, wbits=4, group_size=-1, zero_point=True, act_dtype="float16"),
    lutc.MPGemmSpec(16, 96, 512, wbits=3, format="bcq", group_size=32, act_dtype="bfloat16", g=2,
                    symmetrize=False),
    lutc.MPGemmSpec(5, 64, 1024, format="ternary", group_size=-1),
    lutc.MPGemmSpec(2, 200, 1024, wbits=1, group_size=64, table_dtype="int8"),
]
TOL = {"float32": 2e-5, "float16": 1.5e-3, "bfloat16": 1e-2}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.format}-w{s.wbits}-M{s.M}-{s.N}x{s.K}")
def test_cuda_default_schedule_matches_reference(spec):
    kernel = lutc.build(spec, target="cuda")
    assert kernel.runnable
    x, qw = random_case(spec, seed=spec.N)
    out = torch.full((spec.M, spec.N), float("nan"), dtype=x.dtype, device="cuda")
    kernel(x.cuda(), qw.to("cuda"), out=out)
    torch.cuda.synchronize()
    tol = 3e-2 if spec.table_dtype == "int8" else TOL[spec.act_dtype]
    assert rel_error(out.cpu(), reference(x, qw)) < tol


def test_cuda_kernel_refuses_cpu_tensors():
    spec = SPECS[0]
    kernel = lutc.build(spec, target="cuda")
    x, qw = random_case(spec)
    with pytest.raises(ValueError, match=r"qw.planes is on cpu, the kernel runs on cuda \(move it once"):
        kernel(x.cuda(), qw)
    with pytest.raises(ValueError, match="x is on cpu"):
        kernel(x, qw.to("cuda"))
