"""lutc's schedule library: how each target runs the front end's LUT mpGEMM.

One module per idea. Each exposes ``schedule(func, spec, target, **knobs) -> s_tir.Schedule`` and
``KNOBS`` (knob name -> candidate values, for the tuner); defaults of the keyword arguments are
the untuned choice. :func:`default` picks the schedule for a target kind.
"""
from __future__ import annotations

from . import cpu_generic, cuda_generic

#: target kind (see ``lutc.target.kind``) -> schedule module used when nothing is tuned.
DEFAULTS = {"cpu": cpu_generic, "cpu-cross": cpu_generic, "cuda": cuda_generic}


def default(target_kind: str):
    """The default schedule module for ``"cpu"``, ``"cpu-cross"`` or ``"cuda"``."""
    try:
        return DEFAULTS[target_kind]
    except KeyError:
        raise ValueError(f"no schedule for target kind {target_kind!r}") from None
