"""The schedule contract: what a module of ``schedules/`` provides, and the defaults of its
optional parts, stated once (as TVM dlight's ``ScheduleRule`` states it for its rules).

Every schedule module is a :class:`Schedule`:

* ``KNOBS``: knob name -> candidate values, for the tuner (keyword defaults = untuned choice);
* ``supports(spec, target) -> bool``: whether it can build ``spec`` for ``target``;
* ``layout(spec, target, **knobs) -> str``: the packed-weight layout it reads
  (:mod:`lutc.layouts`); raises ``ValueError`` for knob values it cannot build;
* ``schedule(func, spec, target, **knobs) -> s_tir.Schedule``: the kernel.

Optional, asked for through the functions below (never with ``getattr`` elsewhere):

* ``preferred(spec, target) -> bool`` (default True): False where another candidate that also
  builds ``spec`` is known to be faster (:func:`schedules.default` ranks it after them);
* ``worth_tuning(spec, target, **knobs) -> bool`` (default True): False for knob values that
  build but can only be slower (the tuner's space leaves them out);
* ``resolve_knobs(spec, **given) -> dict`` (default: ``given`` as it is, the ``schedule``'s keyword
  defaults filling the rest): the knobs a kernel is built with, defaults filled in
  (``default_knobs(spec)``, the untuned choice) and impossible combinations refused with
  ``ValueError`` (the CUDA templates, whose defaults depend on the spec);
* ``transfers(spec, **knobs) -> bool`` (default True): False for knobs tuned on another shape
  that do not suit ``spec`` (a transferred record, :func:`lutc.tuner.records.nearest_for`; e.g.
  a CUDA grid far smaller than this shape's default);
* ``default_changed(spec) -> str | None`` (default None): when the rule of its default knobs
  last changed for shapes like ``spec`` (UTC, as tuning records' ``time``): a log's record of the
  default older than that timed another kernel (:func:`lutc.build.timed_current_default`);
  whoever changes the rule moves the date;
* ``LAYOUTS`` (default: any): the layouts ``layout`` can return for some spec and knobs, so that
  :func:`schedules.for_layout` asks only modules that may read a weight's layout (walking
  ``cuda_wgmma``'s knob combinations for a ``warp32`` weight took 18 s per M bucket);
* ``PASS_CONFIG`` (default None): TVM pass options its kernels need (CUDA);
* ``ADDED_KNOBS`` (default none): knobs added after tuning logs were written, each with the value
  their kernels had before (``dot_mac``'s ``rows``: 1, ``prefetch``: 0; the CUDA templates'
  ``late_scale``: 0), so that an older record
  still pins every knob (:func:`pins_every_knob`) and builds the kernel it measured
  (:func:`recorded_knobs`);
* ``TEMPLATE`` (default False): True for a module that writes its kernel itself and keeps the
  front end's function only as its reference semantics (``simd_lut`` through ``x86``/``arm``,
  ``dot_mac``, ``cuda_lut``, ``cuda_stream``, ``cuda_wgmma``, ``cuda_mma``): :func:`lutc.build.scheduled` then passes
  ``func=None`` instead of building a function it would discard. The others (``cpu_generic``,
  ``cuda_generic``) transform the front end's function.

Example:
    >>> import schedules
    >>> from schedules import contract
    >>> contract.is_template(schedules.cuda_mma), contract.is_template(schedules.cpu_generic)
    (True, False)
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Protocol, runtime_checkable

REQUIRED = ("KNOBS", "supports", "layout", "schedule")


@runtime_checkable
class Schedule(Protocol):
    """The required part of a schedule module (module docstring)."""

    KNOBS: dict

    def supports(self, spec: Any, target: Any) -> bool: ...

    def layout(self, spec: Any, target: Any, **knobs: Any) -> str: ...

    def schedule(self, func: Any, spec: Any, target: Any, **knobs: Any) -> Any: ...


def check(module: ModuleType) -> ModuleType:
    """``module`` if it provides the contract, else ``TypeError`` naming what it lacks."""
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing or not isinstance(module.KNOBS, dict) or not all(
            callable(getattr(module, f)) for f in ("supports", "layout", "schedule")):
        raise TypeError(f"schedule module {module.__name__} does not provide the schedule contract: "
                        f"missing or wrong {missing or ['KNOBS (a dict) / callables']}")
    return module


def preferred(module: ModuleType, spec, target) -> bool:
    """Whether :func:`schedules.default` may rank ``module`` first for ``spec`` (default True)."""
    rule = getattr(module, "preferred", None)
    return True if rule is None else bool(rule(spec, target))


def resolve_knobs(module: ModuleType, spec, **given) -> dict:
    """The knobs ``module`` builds ``spec`` with for the ``given`` ones (module docstring); a
    module without ``resolve_knobs`` gets ``given`` back (its ``schedule``'s keyword defaults fill
    the rest)."""
    rule = getattr(module, "resolve_knobs", None)
    return dict(given) if rule is None else rule(spec, **given)


def worth_tuning(module: ModuleType, spec, target, **knobs) -> bool:
    """Whether the tuner should try ``knobs`` of ``module`` for ``spec`` (default True)."""
    rule = getattr(module, "worth_tuning", None)
    return True if rule is None else bool(rule(spec, target, **knobs))


def transfers(module: ModuleType, spec, knobs: dict) -> bool:
    """Whether ``knobs`` tuned on another shape may be built for ``spec`` (default True)."""
    rule = getattr(module, "transfers", None)
    return True if rule is None else bool(rule(spec, **knobs))


def default_changed(module: ModuleType, spec) -> Optional[str]:
    """When ``module``'s default knobs last changed for shapes like ``spec`` (UTC, ISO 8601, as
    a tuning record's ``time``), or None where they have not since the logs began: a log's record
    of the default (``knobs = {}``) older than this timed another kernel than today's default."""
    rule = getattr(module, "default_changed", None)
    return None if rule is None else rule(spec)


def pins_every_knob(module: ModuleType, knobs: dict) -> bool:
    """Whether a record's ``knobs`` fix every knob of ``module`` (the ones added after it was
    written, ``ADDED_KNOBS``, at the value its kernel had)."""
    return set(knobs) | set(getattr(module, "ADDED_KNOBS", {})) >= set(module.KNOBS)


def recorded_knobs(module: ModuleType, knobs: dict) -> dict:
    """The knobs of the kernel a log record measured: ``knobs``, plus the ``ADDED_KNOBS`` it
    predates at the value its kernel had, where that pins every knob; a record that leaves knobs
    to the defaults (the default kernel's ``{}``) is returned as it is."""
    if not pins_every_knob(module, knobs):
        return dict(knobs)
    return {**getattr(module, "ADDED_KNOBS", {}), **knobs}


def may_read(module: ModuleType, layout: str) -> bool:
    """Whether some knobs of ``module`` read weights in ``layout`` (its ``LAYOUTS``; True where it
    names none)."""
    layouts = getattr(module, "LAYOUTS", None)
    return layouts is None or layout in layouts


def pass_config(module: ModuleType) -> Optional[dict]:
    """TVM pass options ``module``'s kernels need (default None)."""
    return getattr(module, "PASS_CONFIG", None)


def is_template(module: ModuleType) -> bool:
    """Whether ``module`` writes its kernel itself and ignores the front end's function."""
    return bool(getattr(module, "TEMPLATE", False))


__all__ = ["Schedule", "REQUIRED", "check", "preferred", "resolve_knobs", "worth_tuning", "default_changed", "pins_every_knob",
           "recorded_knobs", "may_read", "pass_config", "is_template"]
