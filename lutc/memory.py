"""Host memory for the packed weights lutc holds: 2 MiB transparent huge pages where Linux has them.

A decode step reads every weight once, in long sequential runs per thread. With 4 KiB pages those
runs cross a page every 4 KiB: a TLB miss each time, and the hardware prefetchers, which do not
cross pages, start again. Backed by 2 MiB pages, ``LUTLinear`` decoded 1.00-1.12x faster on the
2-core EPYC VM, never slower (M = 1, weights rotating through 1 GiB, alternating rounds in one
process: 4096x4096 W4 1 thread 319.9 -> 286.7 us, W2 205.2 -> 192.4 us; 4096x11008 W4 1.00-1.01x;
``benchmarks/results/cpu_huge_pages_epyc.md``). Only the whole 2 MiB pages inside a tensor are
advised (no over-allocation): a 4 MiB weight gets one or two. Linux backs an anonymous region with huge pages on its first
writes when the region is advised (``madvise(MADV_HUGEPAGE)``; THP mode ``always`` or
``madvise``), so :func:`in_huge_pages` advises fresh memory before copying into it.

lutc advises only the copies it makes and keeps (``LUTLinear``'s buffers, a kernel's repacked
weight); ``LUTC_HUGE_PAGES=0`` turns it off. (torch's own ``THP_MEM_ALLOC_ENABLE=1`` does the
same for every large CPU tensor of a process.)
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Optional

import torch

#: Bytes per transparent huge page on x86-64 and (4 KiB-granule) aarch64 Linux.
HUGE_PAGE = 2 << 20
#: ``MADV_HUGEPAGE`` of ``<sys/mman.h>`` (Linux).
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise() -> Optional[ctypes._CFuncPtr]:
    """libc's ``madvise`` where transparent huge pages can be asked for, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return None
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def enabled() -> bool:
    """Whether :func:`in_huge_pages` copies (``LUTC_HUGE_PAGES`` is not ``0`` and Linux offers
    transparent huge pages)."""
    return os.environ.get("LUTC_HUGE_PAGES", "1") != "0" and _madvise() is not None


def in_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a CPU tensor) copied into fresh memory advised for 2 MiB pages, contiguous; ``t``
    itself where that cannot pay or cannot be had: not on the CPU, under two huge pages, or
    not :func:`enabled`.

    Example:
        >>> import torch
        >>> w = torch.randint(0, 255, (8 << 20,), dtype=torch.uint8)
        >>> torch.equal(in_huge_pages(w), w)
        True
        >>> small = w[:100]
        >>> in_huge_pages(small) is small     # under two huge pages: kept as it is
        True
    """
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < 2 * HUGE_PAGE or not enabled():
        return t
    out = torch.empty(t.shape, dtype=t.dtype)          # not written yet: its pages come on first write
    start = out.data_ptr()
    first = -(-start // HUGE_PAGE) * HUGE_PAGE          # the whole huge pages inside the tensor
    last = (start + nbytes) // HUGE_PAGE * HUGE_PAGE
    if last > first:
        _madvise()(first, last - first, _MADV_HUGEPAGE)   # advice only: a refusal leaves 4 KiB pages
    out.copy_(t)
    return out


def huge_page_bytes(t: torch.Tensor) -> int:
    """Bytes of the mappings overlapping ``t``'s memory that Linux backs with huge pages
    (``AnonHugePages`` of ``/proc/self/smaps``; advising part of a mapping splits it); 0 where
    that cannot be read. For tests."""
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    total, inside = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    inside = lo < end and start < hi
                elif inside and head == "AnonHugePages:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total
