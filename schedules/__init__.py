"""lutc's schedule library: how each target runs the front end's LUT mpGEMM.

One module per idea, each providing the contract of :mod:`schedules.contract` (``KNOBS``,
``supports``, ``layout``, ``schedule``; optionally ``preferred``, ``worth_tuning``,
``PASS_CONFIG``, ``TEMPLATE``), checked when this package is imported.

:func:`default` picks, per target kind, the first module in :data:`CANDIDATES` that supports
the spec and prefers it (``contract.preferred``): on an x86 CPU with AVX-512 VNNI the
multiply-add kernel (``dot_mac``: int8 activations times codes by ``vpdpbusd``, 4 rows of x per
unpacked weight) at every M (as fast as the LUT kernel at M = 1, or faster: ``x86.preferred``),
and where the CPU has AMX-INT8 the same arithmetic on tiles (``amx``) from M = 9;
on other CPUs the SIMD LUT kernel (``x86``/``arm``) at M = 1; the generic schedules otherwise. :data:`ALTERNATIVES` holds kernels that are only ever tuned (none
now). On CUDA: ``cuda_wgmma`` (sm_90a: ``tc16`` weights dequantized in registers as the A
operand of ``wgmma``, x in shared memory from copying warpgroups, K split where blocks are
few; preferred from M = 9, and from M = 2 (4-bit slots) or 4 (2-bit) where N is wide enough for its
tile alone and K too short for ``cuda_stream``'s 8 slices: ``cuda_wgmma.wide_min_m``),
``cuda_stream`` (dequantize + ``mma.sync`` fed by a ``cp.async``
pipeline, ``tc16`` weights: uniform W1-W4 and ternary, M <= 16; preferred for M = 2..8 and for
W2-W4 and ternary at M = 1), ``cuda_lut`` (shared-memory tables, ``warp32`` weights; builds M <= 8 and
every format; preferred at M = 1), ``cuda_mma`` (the ``tc16`` product with register prefetch,
any M: M >= 9 before Hopper), and ``cuda_generic`` for everything else.
"""
from __future__ import annotations

import itertools

from . import amx, arm, contract, cpu_generic, cuda_generic, cuda_lut, cuda_mma, cuda_stream, cuda_wgmma, dot_mac, x86

#: Schedules that build every spec (no SIMD tables): the fallbacks.
GENERIC = (cpu_generic, cuda_generic)
#: target kind (see ``lutc.target.kind``) -> schedule modules, best first.
CANDIDATES = {"cpu": (x86, arm, amx, dot_mac, cpu_generic), "cpu-cross": (x86, arm, amx, dot_mac, cpu_generic),
              "cuda": (cuda_wgmma, cuda_stream, cuda_lut, cuda_mma, cuda_generic)}
#: Other ways to compute the same spec, never chosen by default: the tuner weighs them.
ALTERNATIVES = {"cpu": (), "cpu-cross": (), "cuda": ()}
#: Every module above, each checked against the contract on import.
MODULES = tuple(contract.check(m) for m in dict.fromkeys(
    m for table in (CANDIDATES, ALTERNATIVES) for ms in table.values() for m in ms))


def named(name: str):
    """The schedule module called ``name`` (as tuning records name it), or None."""
    return next((m for m in MODULES if m.__name__.rsplit(".", 1)[-1] == name), None)


def default(target_kind: str, spec, target):
    """The schedule module used for ``spec`` on ``target`` when nothing is tuned."""
    return _ranked(CANDIDATES, target_kind, spec, target)[0]


def for_layout(target_kind: str, spec, target, layout: str):
    """``(module, knobs)`` of the kernel for ``spec`` that reads weights in ``layout``, or None.

    Modules that may read ``layout`` (``contract.may_read``) are tried as :func:`default` ranks
    them (the target's candidates, then its alternatives); a module whose default knobs read
    another layout is built with the fewest knob changes that make it read ``layout`` (e.g. x86
    ``tiles64``: ``vector_bytes=32, paired=False``). Used where the weight is already packed (the torch op, ``LUTLinear``).

    Example:
        >>> import lutc, lutc.target
        >>> spec = lutc.MPGemmSpec(1, 256, 512, wbits=2, table_dtype="int8")
        >>> module, knobs = for_layout("cpu", spec, lutc.target.resolve("x86"), "tiles128")
        >>> module.__name__, knobs
        ('schedules.x86', {'paired': False})
    """
    ranked = _ranked(CANDIDATES, target_kind, spec, target) + [
        m for m in ALTERNATIVES.get(target_kind, ()) if m.supports(spec, target)]
    for module in (m for m in ranked if contract.may_read(m, layout)):
        names = sorted(module.KNOBS)
        for changed in range(len(names) + 1):
            for subset in itertools.combinations(names, changed):
                for values in itertools.product(*(module.KNOBS[n] for n in subset)):
                    knobs = dict(zip(subset, values))
                    try:
                        if module.layout(spec, target, **knobs) == layout:
                            return module, knobs
                    except ValueError:    # a combination this spec or target cannot build
                        continue
    return None


def _ranked(table: dict, target_kind: str, spec, target) -> list:
    """The modules of ``table[target_kind]`` that support ``spec``, best first: the preferred ones
    in table order, then the others (a kernel that is not preferred still beats the generic
    fallbacks)."""
    try:
        candidates = table[target_kind]
    except KeyError:
        raise ValueError(f"no schedule for target kind {target_kind!r}") from None
    usable = [m for m in candidates if m.supports(spec, target)]
    ranked = []
    for i, m in enumerate(usable):
        if (contract.preferred(m, spec, target)
                or all(n in GENERIC for n in usable[i + 1:])):
            ranked.append(m)
    return ranked + [m for m in usable if m not in ranked]
