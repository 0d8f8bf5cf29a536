"""Packed weights lutc holds live in 2 MiB pages where Linux offers them (lutc.memory)."""
import pytest
import torch

import lutc
from lutc import memory
from lutc.testing import reference, rel_error, tolerance

GEN = torch.Generator().manual_seed(7)
needs_thp = pytest.mark.skipif(not memory.enabled(), reason="no transparent huge pages on this system")


def test_copies_equal_and_small_or_foreign_tensors_stay():
    w = torch.randint(-2 ** 31, 2 ** 31 - 1, (3, 1 << 20), dtype=torch.int32, generator=GEN)
    out = memory.in_huge_pages(w)
    assert torch.equal(out, w) and (out.data_ptr() != w.data_ptr()) == memory.enabled()
    small = w[0, :1000]
    assert memory.in_huge_pages(small) is small
    strided = w[:, ::2]                                  # a copy is contiguous whatever the input
    assert torch.equal(memory.in_huge_pages(strided), strided)
    assert memory.in_huge_pages(strided).is_contiguous() == memory.enabled()


def test_switched_off_by_the_environment(monkeypatch):
    w = torch.zeros(8 << 20, dtype=torch.uint8)
    monkeypatch.setenv("LUTC_HUGE_PAGES", "0")
    assert not memory.enabled() and memory.in_huge_pages(w) is w


@needs_thp
def test_the_copy_is_backed_by_huge_pages():
    w = torch.randint(0, 255, (16 << 20,), dtype=torch.uint8, generator=GEN)
    assert memory.huge_page_bytes(memory.in_huge_pages(w)) >= memory.HUGE_PAGE


@needs_thp
def test_lutlinear_holds_its_cpu_weights_in_huge_pages():
    lin = torch.nn.Linear(4096, 2048)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2048, 4096, generator=GEN) * 0.02)
    q = lutc.LUTLinear.from_linear(lin, wbits=4, group_size=128)
    assert q.planes.numel() * q.planes.element_size() >= 4 << 20
    assert memory.huge_page_bytes(q.planes) >= memory.HUGE_PAGE
    x = torch.randn(3, 4096, generator=GEN)
    y = q(x) - q.bias
    assert rel_error(y, reference(x, q.packed())) < tolerance(q.kernel_spec())
