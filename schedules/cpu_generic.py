"""Generic CPU schedule: any spec, any LLVM target (x86, aarch64); the correct default.

What it does to the loops of :func:`lutc.frontend.lut_mpgemm`:

* ``table`` (and the int8 ``table_absmax`` / ``table_q``, the ``act_sum``) stay root stages,
  computed once per call before any weight is read, their spatial loops fused and run in
  parallel: a table is shared by all N rows, so it is built once and read N times.
* ``out[m, n]`` is split along N into blocks of ``n_block`` rows, the blocks run on the thread
  pool, and ``m`` goes inside ``n``: a weight row, read from memory once, serves all M rows of
  activations while it is still in L1.
* ``partial[m, n, :, :]`` (the per-group plane sums) is computed at ``out``'s ``m`` loop into a
  thread-local buffer of ``C x b`` floats, so no ``[M, N, C, b]`` workspace ever exists. Its
  loops go plane-major (``i, c, r``: one plane's bytes of the row are read in order) and the
  lookups of a block (``r``) are unrolled by ``unroll``: straight-line lookups keep the running
  sum in a register. On a 2-core AVX-512 VM, 4096x4096 W2: 3.6 ms without the unroll, 1.5 ms
  with 32.

Lookups stay scalar gathers from the float table: the SIMD shuffle kernels (``vpshufb``/``tbl``
on int8 tables in registers) are the x86/ARM schedules' job, not this one's.
"""
from __future__ import annotations

import math

from tvm import IRModule, s_tir, tirx

from .common import has_block, inline_table_scale, loops_below, parallelize, table_stages

#: Knobs and their domains, for the tuner.
#: The weight layout it reads (:mod:`lutc.layouts`), whatever the knobs.
LAYOUTS = ("bitplane",)
KNOBS = {"n_block": (4, 8, 16, 32, 64), "unroll": (1, 8, 16, 32, 64)}


def supports(spec, target) -> bool:
    """Always: any spec on any LLVM target."""
    return True


def layout(spec, target, **_) -> str:
    return "bitplane"


def schedule(func: tirx.PrimFunc, spec, target, n_block: int = 16, unroll: int = 32) -> s_tir.Schedule:
    """Schedule the LUT mpGEMM ``func`` of ``spec`` for a CPU (module docstring)."""
    sch = s_tir.Schedule(IRModule({"main": func}))
    inline_table_scale(sch)
    for name in table_stages(sch):
        parallelize(sch, name)

    out = sch.get_sblock("out")
    m, n, _j = sch.get_loops(out)
    n_outer, n_inner = sch.split(n, factors=[None, min(n_block, spec.N)])
    sch.reorder(n_outer, n_inner, m)
    sch.parallel(n_outer)
    partial = sch.get_sblock("partial")
    sch.compute_at(partial, m)
    sch.set_scope(partial, 0, "local")
    inner = loops_below(sch, partial, m)  # (c, i, r); compute_at drops loops of extent 1
    if len(inner) == 3:
        sch.reorder(inner[1], inner[0], inner[2])
    r = inner[-1]
    lookups = spec.block // spec.g
    if unroll > 1:
        _, r_inner = sch.split(r, factors=[None, math.gcd(unroll, lookups)])
        sch.unroll(r_inner)
    if has_block(sch, "y"):
        parallelize(sch, "y")
    return sch
