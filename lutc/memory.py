"""Host memory for the packed weights lutc holds: 2 MiB transparent huge pages where Linux has them.

A decode step reads every weight once, in long sequential runs per thread. With 4 KiB pages those
runs cross a page every 4 KiB: a TLB miss each time, and the hardware prefetchers, which do not
cross pages, start again. Backed by 2 MiB pages, ``LUTLinear`` decoded 1.02-1.12x faster on the
2-core EPYC VM at 4096x4096 in three runs (M = 1, weights rotating through 1 GiB, alternating
rounds in one process: W4 1 thread 288.0 -> 270.4 us, 80% of the read rate) and 0.96-1.08x at
4096x11008 (within the VM's noise; ``benchmarks/results/cpu_huge_pages_epyc.md``). Linux backs
an anonymous region with huge pages on its first writes when the region is advised
(``madvise(MADV_HUGEPAGE)``; THP mode ``always`` or ``madvise``), so :func:`in_huge_pages` maps fresh memory (its own anonymous mapping, 2 MiB
aligned: memory from torch's allocator may be recycled heap, already backed by 4 KiB pages, as it
was in a long test run), advises it, and only then copies into it.

lutc advises only the copies it makes and keeps (``LUTLinear``'s buffers, a kernel's repacked
weight); ``LUTC_HUGE_PAGES=0`` turns it off. Copies that torch makes of them (``copy.deepcopy``,
``torch.load`` of a pickled module, ``share_memory_``) are ordinary memory again: build or load
the module (``from_linear``, ``from_packed``, ``load_state_dict``) where it will run. (torch's
own ``THP_MEM_ALLOC_ENABLE=1`` does the same for every large CPU tensor of a process.)
"""
from __future__ import annotations

import functools
import mmap
import os
import sys

import numpy as np
import torch

#: Bytes per transparent huge page on x86-64 and (4 KiB-granule) aarch64 Linux.
HUGE_PAGE = 2 << 20


@functools.lru_cache(maxsize=1)
def _available() -> bool:
    """Whether this system can back memory with transparent huge pages on request."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def enabled() -> bool:
    """Whether :func:`in_huge_pages` copies (``LUTC_HUGE_PAGES`` is not ``0`` and Linux offers
    transparent huge pages)."""
    return os.environ.get("LUTC_HUGE_PAGES", "1") != "0" and _available()


def in_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a CPU tensor) copied into a fresh mapping whose whole 2 MiB pages are advised for
    huge pages, contiguous; ``t`` itself where that cannot pay or cannot be had: not on the CPU,
    under two huge pages, or not :func:`enabled`. The tail past the last whole huge page stays
    in 4 KiB pages (no memory spent on a partly used huge page).

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
    try:    # an address-space limit or vm.max_map_count (each copy is about 2 mappings) refuses it
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return t
    raw = np.frombuffer(region, dtype=np.uint8)        # keeps the mapping alive as long as the tensor
    start = (-raw.ctypes.data) % HUGE_PAGE              # the first 2 MiB boundary (a whole page offset)
    try:
        region.madvise(mmap.MADV_HUGEPAGE, start, nbytes // HUGE_PAGE * HUGE_PAGE)
    except OSError:                                     # advice only: refused, the copy keeps 4 KiB pages
        pass
    out = torch.from_numpy(raw[start:start + nbytes]).view(t.dtype).view(t.shape)
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
