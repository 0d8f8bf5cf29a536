"""Generic CUDA schedule: any spec; the correct default, not the fast one.

What it does to the loops of :func:`lutc.frontend.lut_mpgemm`:

* every table stage (``table``, ``table_absmax``, ``table_q``, ``act_sum``) is its own kernel:
  its spatial loops are fused and spread over blocks of ``threads`` threads (reductions serial
  inside a thread);
* ``out[m, n]``: ``(m, n)`` fused and spread the same way, one output per thread, with
  ``partial[m, n, :, :]`` computed into that thread's registers/local memory;
* ``y`` (the cast to the activation dtype) is a last elementwise kernel.

One thread per output reads its weight row alone, so loads are not coalesced: the LUT kernels
with shared-memory tables and permuted weights are the CUDA schedules' job, not this one's.
"""
from __future__ import annotations

from tvm import IRModule, s_tir, tirx

from .common import bind_threads, has_block, inline_table_scale, table_stages

#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("bitplane",)
KNOBS = {"threads": (64, 128, 256)}


def supports(spec, target) -> bool:
    """Always: any spec on CUDA."""
    return True


def layout(spec, target, **_) -> str:
    return "bitplane"


def schedule(func: tirx.PrimFunc, spec, target, threads: int = 128) -> s_tir.Schedule:
    """Schedule the LUT mpGEMM ``func`` of ``spec`` for CUDA (module docstring)."""
    sch = s_tir.Schedule(IRModule({"main": func}))
    inline_table_scale(sch)
    for name in table_stages(sch):
        bind_threads(sch, name, threads)

    out = sch.get_sblock("out")
    m, n, _j = sch.get_loops(out)
    bx, tx = sch.split(sch.fuse(m, n), factors=[None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    partial = sch.get_sblock("partial")
    sch.compute_at(partial, tx)
    sch.set_scope(partial, 0, "local")
    if has_block(sch, "y"):
        bind_threads(sch, "y", threads)
    return sch
