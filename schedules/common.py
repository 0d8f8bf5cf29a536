"""Helpers shared by the schedules: find a block's spatial loops, parallelize or bind them;
merge given knob values over a schedule's defaults; declare a template's weight buffers from
:mod:`lutc.layouts` and drop its unused parameter; ask a target's facts (:class:`lutc.target.Facts`).

Blocks built by ``te.create_prim_func`` list their spatial loops first, then their reduction
loops; these helpers rely on that and never touch the reduction loops.
"""
from __future__ import annotations

from typing import Optional

from tvm import s_tir

from lutc import layouts
from lutc import target as targets

DATA_PAR = 0  # tirx.IterVar.DataPar
#: SMs of the GPU the CUDA defaults are sized for (H100 SXM, H200, GH200: 132; H100 PCIe has 114,
#: H20 78): the block counts that fill it, one wave or two. Tuning measures the GPU at hand.
SMS = 132


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    """Whether the function being scheduled has a block called ``name``."""
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # TVM raises a generic error for a missing block
        return False


def spatial_loops(sch: s_tir.Schedule, block) -> list:
    """The loops of ``block`` that bind its spatial (data-parallel) iteration variables."""
    n = sum(1 for iv in sch.get(block).iter_vars if iv.iter_type == DATA_PAR)
    return sch.get_loops(block)[:n]


def loops_below(sch: s_tir.Schedule, block, loop) -> list:
    """The loops of ``block`` nested inside ``loop`` (one of its outer loops)."""
    loops = sch.get_loops(block)
    at = [k for k, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop))]
    return loops[at[0] + 1:]


def parallelize(sch: s_tir.Schedule, name: str) -> None:
    """Fuse the spatial loops of block ``name`` into one and run it on the CPU thread pool."""
    block = sch.get_sblock(name)
    loops = spatial_loops(sch, block)
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def bind_threads(sch: s_tir.Schedule, name: str, threads: int) -> None:
    """Fuse the spatial loops of block ``name`` and spread them over CUDA blocks of ``threads``."""
    block = sch.get_sblock(name)
    loops = spatial_loops(sch, block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, factors=[None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def table_stages(sch: s_tir.Schedule) -> list:
    """Names of the blocks that run once per activation row, before any weight is read."""
    names = ("table", "table_absmax", "table_nan", "table_q", "act_sum")
    return [n for n in names if has_block(sch, n)]


def inline_table_scale(sch: s_tir.Schedule) -> None:
    """Fold ``table_scale = max(absmax, tiny) / 127`` into its readers (it is elementwise)."""
    if has_block(sch, "table_scale"):
        sch.compute_inline(sch.get_sblock("table_scale"))


def plane_coef(spec, i):
    """:meth:`lutc.spec.MPGemmSpec.plane_coef` as a float32 TIR expression, for a plane index
    ``i`` that may be a loop variable (an unrolled loop over the planes): ``2^(i-1)`` as
    ``(1 << i) * 0.5`` (exact), the format's constant otherwise."""
    from tvm.script import tirx as T
    if isinstance(i, int) or spec.format != "uniform":
        return T.float32(spec.plane_coef(i if isinstance(i, int) else 0))
    return T.Cast("float32", T.shift_left(T.int32(1), i)) * T.float32(0.5)


def merge_knobs(schedule: str, domains: dict, defaults: dict, given: dict) -> dict:
    """``defaults`` with the values in ``given`` that are not None; a value outside its domain
    in ``domains`` (the schedule's ``KNOBS``) raises ValueError naming ``schedule``."""
    knobs = dict(defaults)
    for name, value in given.items():
        if value is not None:
            if value not in domains[name]:
                raise ValueError(f"{schedule} knob {name}={value!r} is not one of {domains[name]}")
            knobs[name] = value
    return knobs


def weight_buffers(spec, layout: str) -> tuple:
    """``(planes, coefficients, zero points)`` buffer shapes of ``spec``'s weight in ``layout``,
    as :mod:`lutc.layouts` (their one owner) states them; zero points ``(1,)`` where the format
    has none (the template's unused parameter, which :func:`drop_param` removes)."""
    shapes = layouts.get(layout).shapes(spec)
    return shapes["planes"].shape, shapes["scales"].shape, shapes["zeros"].shape if "zeros" in shapes else (1,)


def drop_param(func, name: str):
    """``func`` without its (unused) buffer parameter ``name``: one template, two signatures."""
    from tvm import tirx
    keep = [p for p in func.params if p.name != name]
    return tirx.PrimFunc(keep, func.body, func.ret_type, func.attrs)


def arch(target) -> Optional[str]:
    """``"x86"``, ``"aarch64"`` or None: the SIMD family of an LLVM target's architecture
    (:attr:`lutc.target.Facts.simd`)."""
    return targets.facts(target).simd


def has_features(target, *features: str) -> bool:
    """Whether the CPU ``target`` has the LLVM ``features`` (:meth:`lutc.target.Facts.has`)."""
    return targets.facts(target).has(*features)


def half_rate_512(target) -> bool:
    """Whether the CPU ``target`` runs 512-bit integer instructions as two 256-bit halves (AMD
    Zen 4: :attr:`lutc.target.Facts.half_rate_512`), where VNNI's multiply-adds cost twice what
    the LUT kernel's byte shuffles do."""
    return targets.facts(target).half_rate_512


def cuda_arch(target) -> str:
    """The CUDA architecture of ``target`` (``"sm_90a"``, ``"sm_80"``, ...), "" for any other
    target (or None): what the CUDA schedules' ``supports`` and ``preferred`` ask."""
    return "" if target is None else targets.facts(target).cuda_arch
