"""The search space: every (schedule, knobs) that can build a spec on a target, and its features.

The space is the union, over the schedules that support the spec (the target kind's defaults
and its alternatives, e.g. LUT vs multiply-add on CPUs), of the cartesian product of each
schedule's ``KNOBS``. Combinations a schedule rejects for this spec and target (a vector width
the CPU lacks, pairing odd planes, too much shared memory) are dropped here, by asking the
schedule for its layout, and so are those its optional ``worth_tuning`` rules out (builds that
can only be slower, e.g. tiles of M rows that are all padding).

Features for the cost model are numbers that describe the candidate *and* the workload, so one
model can learn across shapes: log2 of M, N, K, the bit width, the group, one-hot of the
schedule, and every knob (booleans as 0/1, numbers as log2).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import schedules
from schedules import contract

from ..spec import MPGemmSpec


@dataclass(frozen=True)
class Candidate:
    """One point of the space: a schedule module name and its knob values."""

    schedule: str
    knobs: tuple  # sorted (name, value) pairs: hashable

    @property
    def knob_dict(self) -> dict:
        return dict(self.knobs)

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.knobs)
        return f"{self.schedule}({inner})"


def candidates(spec: MPGemmSpec, target, target_kind: str) -> list:
    """All valid candidates for ``spec`` on ``target`` (deterministic order)."""
    modules = list(schedules.CANDIDATES.get(target_kind, ())) + list(schedules.ALTERNATIVES.get(target_kind, ()))
    out = []
    for module in modules:
        if not module.supports(spec, target):
            continue
        name = module.__name__.rsplit(".", 1)[-1]
        names = sorted(module.KNOBS)
        for values in itertools.product(*(module.KNOBS[n] for n in names)):
            knobs = dict(zip(names, values))
            try:
                module.layout(spec, target, **knobs)   # rejects impossible combinations
            except ValueError:
                continue
            if not contract.worth_tuning(module, spec, target, **knobs):
                continue
            out.append(Candidate(name, tuple(sorted(knobs.items()))))
    return out


def default_candidate(spec: MPGemmSpec, target, target_kind: str) -> Candidate:
    """The candidate ``lutc.compile`` builds when nothing is tuned: the default schedule with
    its default knob values (not in the knob tuple: the schedule's own defaults apply)."""
    module = schedules.default(target_kind, spec, target)
    return Candidate(module.__name__.rsplit(".", 1)[-1], ())


def features(spec: MPGemmSpec, cand: Candidate, schedule_names: list, knob_names: list) -> list:
    """Numeric features of a candidate on a workload (module docstring)."""
    row = [math.log2(spec.M), math.log2(spec.N), math.log2(spec.K), float(spec.wbits),
           math.log2(spec.group), float(spec.format == "bcq"), float(spec.format == "ternary"),
           float(spec.zero_point)]
    row += [float(cand.schedule == s) for s in schedule_names]
    knobs = cand.knob_dict
    row += [_num(knobs.get(k)) for k in knob_names]
    return row


def _num(v: Optional[object]) -> float:
    if v is None:
        return -1.0            # knob absent (another schedule's) or left at its default
    if isinstance(v, bool):
        return float(v)
    return math.log2(v) if isinstance(v, (int, float)) and v > 0 else float(v)
