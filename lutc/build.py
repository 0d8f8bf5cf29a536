"""Build: a spec and a target, through a schedule, to a compiled :class:`~lutc.runtime.Kernel`.

The chain is front end (:func:`lutc.frontend.lut_mpgemm`) -> schedule (``schedules/``, the
target's default unless one is named) -> ``tvm.compile`` -> :class:`Kernel`.

CUDA without a GPU: on a machine with no CUDA driver, ``tvm.compile`` quietly keeps the CUDA
source only (a ``CUDAFallbackModule``). :func:`cuda_binary` compiles that source with nvcc to
PTX or a cubin, so machines without a GPU (CI) still prove the code builds.

Disk caches (:mod:`lutc.cache`): built kernels, and nvcc's binaries keyed by the CUDA source,
the architecture and the nvcc version. A machine without a GPU can fill the nvcc cache ahead of
time (:func:`precompile`), so the GPU machine skips nvcc.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional, Sequence, Union

import tvm

import schedules
from schedules import contract

from . import layouts
from . import target as targets
from .cache import KernelCache, nvcc_fatbin
from .frontend import lut_mpgemm
from .runtime import Kernel
from .spec import LAYOUT_VERSION, MPGemmSpec
from .tuner.records import TuningLog, best_for, log_for, nearest_for

_FROM_ENV = object()  # sentinel: "use KernelCache.from_env()"

ScheduleLike = Union[None, str, ModuleType]


def compile(shape: Sequence[int], wbits: int = 2, group_size: Optional[int] = None,
            format: str = "uniform", zero_point: bool = False, act_dtype: str = "float32",
            scale_dtype: str = "float16", g: int = 4, symmetrize: bool = True,
            table_dtype: Optional[str] = None, target: targets.TargetLike = None,
            schedule: ScheduleLike = None, knobs: Optional[dict] = None,
            cache=_FROM_ENV, tuned: bool = True) -> Kernel:
    """Compile the LUT mpGEMM ``y[M, N] = x[M, K] @ W[N, K]^T`` for low-bit ``W``.

    Args:
        shape: ``(M, N, K)``.
        wbits, group_size, format, zero_point, scale_dtype: the weight format; they must match
            the :func:`lutc.quantize` call that packs the weights (``group_size`` defaults to
            128, or -1 for ternary).
        act_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` activations and output.
        g, symmetrize, table_dtype: the LUT algorithm (see :mod:`lutc.frontend`). By default
            ``table_dtype`` is ``"int8"`` where the target has a SIMD lookup kernel (x86 AVX2 /
            AVX-512, ARM NEON, with ``g=4``: the fast path, relative error about 1e-2 of
            ``max |y|``, bound in :mod:`lutc.frontend`) and ``"float32"`` elsewhere.
        target: ``None`` (this CPU), ``"llvm"``/``"x86"``, ``"arm"``, ``"cuda"``,
            ``"cuda:sm_80"``, or a TVM target dict (see :mod:`lutc.target`).
        schedule: a module of ``schedules/`` or its name; default: the best tuned candidate in
            the tuning logs for this workload and target (``lutc.tune``), else the target's
            default schedule.
        knobs: keyword arguments for the schedule (its ``KNOBS``).
        cache: a :class:`lutc.cache.KernelCache`, or None for none; default: ``$LUTC_CACHE_DIR``
            (``~/.cache/lutc/kernels``) unless ``LUTC_CACHE=0``.
        tuned: look up the tuning logs (when no schedule is named).

    Example:
        >>> import torch, lutc
        >>> w, x = torch.randn(512, 1024), torch.randn(1, 1024)
        >>> qw = lutc.quantize(w, wbits=2, group_size=128)
        >>> kernel = lutc.compile((1, 512, 1024), wbits=2, group_size=128)
        >>> y = kernel(x, qw)
        >>> ref = x.double() @ qw.dequantize().T
        >>> from lutc.testing import rel_error, tolerance   # the bound lutc's own tests use
        >>> bool(rel_error(y, ref) < tolerance(kernel.spec))
        True
    """
    tgt = targets.resolve(target)
    spec = spec_for(shape, tgt, wbits=wbits, format=format, group_size=group_size,
                    zero_point=zero_point, act_dtype=act_dtype, scale_dtype=scale_dtype, g=g,
                    symmetrize=symmetrize, table_dtype=table_dtype)
    return build(spec, tgt, schedule, knobs, cache=cache, tuned=tuned)


def spec_for(shape: Sequence[int], target: targets.TargetLike = None,
             table_dtype: Optional[str] = None, **fields) -> MPGemmSpec:
    """The workload :func:`compile` builds for ``shape`` and the spec ``fields`` on ``target``:
    ``table_dtype=None`` becomes the target's default (int8 where a SIMD lookup kernel would
    be chosen, else float32).

    Example:
        >>> spec_for((1, 256, 512), "cuda:sm_80", wbits=4).table_dtype
        'float32'
    """
    if len(shape) != 3:
        raise ValueError(f"shape must be (M, N, K), got {tuple(shape)}")
    M, N, K = shape   # MPGemmSpec refuses floats and bools (no silent truncation of 1.5 to 1)
    if table_dtype is None:
        table_dtype = default_table_dtype(MPGemmSpec(M, N, K, **fields), targets.resolve(target))
    return MPGemmSpec(M, N, K, table_dtype=table_dtype, **fields)


@dataclass(frozen=True)
class Choice:
    """What :func:`build` compiles for a spec: the schedule module, its knobs, the tuning record
    they came from (None: the default), and the weight layout the kernel reads."""

    module: ModuleType
    knobs: dict
    record: Optional[dict]
    layout: str
    #: "default", "tuned" (a record of this workload) or "transferred" (the record of the nearest
    #: tuned workload: :func:`lutc.tuner.records.nearest_for`)
    origin: str = "default"

    @property
    def schedule(self) -> str:
        return _name(self.module)


def choose(spec: MPGemmSpec, target: targets.TargetLike = None, schedule: ScheduleLike = None,
           knobs: Optional[dict] = None, tuned: bool = True, layout: Optional[str] = None) -> Optional[Choice]:
    """The kernel :func:`build` would compile for ``spec`` on ``target``, without compiling.

    A named ``schedule`` is used as given (knobs checked against its ``KNOBS``). Otherwise the
    fastest usable record of the tuning log for this workload and target; for a workload the
    log has no record of, the best record of the nearest tuned workload that builds for this
    one (``origin="transferred"``: :func:`lutc.tuner.records.nearest_for`); else the target's
    default schedule. A log decides only among what it measured: where the default schedule
    has no record of the workload (a kernel newer than the log, e.g. ``cuda_stream`` beside
    records of ``cuda_lut``/``cuda_mma``), the default is built. With ``layout``, only kernels that read weights in that layout count
    (tuned records too; the default becomes :func:`schedules.for_layout`), and None means no
    kernel of this target reads it for ``spec``; a named schedule reading another raises.

    Example:
        >>> spec = MPGemmSpec(1, 256, 512, wbits=2, table_dtype="int8")
        >>> [choose(spec, {"kind": "llvm", "mcpu": cpu}, tuned=False).schedule for cpu in ("skylake", "icelake-server")]
        ['x86', 'dot_mac']
    """
    facts = targets.facts(target)
    tgt, kind = facts.target, facts.kind
    if schedule is not None:
        module = _schedule_module(schedule, kind, spec, tgt)
        knobs = checked_knobs(module, knobs or {})
        read = module.layout(spec, tgt, **knobs)
        if layout is not None and read != layout:
            raise ValueError(f"schedule {_name(module)} reads weights in layout {read!r}, not {layout!r}")
        return Choice(module, knobs, None, read)
    if knobs is not None:   # knobs for the default schedule
        module = _schedule_module(None, kind, spec, tgt)
        knobs = checked_knobs(module, knobs)
        return choose(spec, tgt, module, knobs, layout=layout)
    default = _default_choice(spec, tgt, kind, layout)
    if tuned:
        found = logged_record(log_for(kind, facts.described), spec, tgt,
                              None if default is None else default.schedule, layout)
        if found is not None:
            record, origin = found
            module = _schedule_module(record["schedule"], kind, spec, tgt)
            knobs = contract.recorded_knobs(module, record["knobs"])
            return Choice(module, knobs, record, module.layout(spec, tgt, **knobs), origin)
    return default


def logged_record(log: TuningLog, spec: MPGemmSpec, tgt, default_schedule: Optional[str],
                  layout: Optional[str] = None, device: Optional[str] = None) -> Optional[tuple]:
    """``(record, origin)`` of what ``log`` says to build for ``spec`` on ``tgt`` (the tuning
    part of :func:`choose`), or None for the default: the best record of this workload
    (``"tuned"``) if the log measured ``default_schedule`` for it; for a workload with no record
    on this target, the nearest tuned workload's (``"transferred"``, :func:`transferred_record`).
    ``device``: the hardware to prefer records of (default: this machine's,
    :func:`lutc.target.device_name`)."""
    facts = targets.facts(tgt)
    kind, described, device = facts.kind, facts.described, device or facts.device
    if log.schedules(spec.key(), described):
        threads = targets.cpu_threads() if kind == "cpu" else None    # (CPU records name their threads)
        usable, current = _record_filters(kind, spec, tgt, layout)
        # the log decides only if it timed today's default kernel
        timed = {r["schedule"] for r in log.matching(spec.key(), described) if current(r)}
        record = best_for(log, spec.key(), described, device, usable=usable, where=current, threads=threads)
        ok = record is not None and (default_schedule is None or default_schedule in timed)
        return (record, "tuned") if ok else None
    record = transferred_record(log, spec, tgt, default_schedule, layout, device)
    return None if record is None else (record, "transferred")


def transferred_record(log: TuningLog, spec: MPGemmSpec, tgt, default_schedule: Optional[str],
                       layout: Optional[str] = None, device: Optional[str] = None) -> Optional[dict]:
    """The record ``lutc.compile`` builds for ``spec`` where ``log`` holds none of it on ``tgt``:
    the best record of the nearest tuned workload whose knobs suit this shape
    (:func:`lutc.tuner.records.nearest_for`), or None for the default. Records of ``spec`` itself
    on ``tgt`` are not asked (the tuner seeds its search with this choice while it has them).

    Example: with the committed H200 log, ``transferred_record(log, MPGemmSpec(128, 5120, 27648,
    wbits=4, act_dtype="float16"), resolve("cuda:sm_90a"), "cuda_wgmma", device="NVIDIA H200 |
    sm_90")`` is the W2 weight's best record (a 128-token tile of three warpgroups in 4 K
    slices: 65.9 us there against the default's 81.9)."""
    facts = targets.facts(tgt)
    kind, described, device = facts.kind, facts.described, device or facts.device
    threads = targets.cpu_threads() if kind == "cpu" else None
    usable, current = _record_filters(kind, spec, tgt, layout)

    # A transfer needs records that pin every knob: a partial one means "the defaults for the
    # rest", which depend on the shape and on the lutc that reads it. Knobs added after a record
    # count at the value its kernel had (``ADDED_KNOBS``: dot_mac grew ``rows`` after the Xeon's
    # reference log, whose ``{"row_tiles": 2}`` measured one row of x per pass; built with the
    # default 4 rows it was 1.75x slower than the default at 16 x 4096 x 4096 W4 on an EPYC).
    # The schedule judges whether another shape's knobs suit this one (``transfers``: cuda_wgmma's
    # grid, which a tile and K slices tuned for a wider N can leave mostly idle).
    def pinned(r):
        if not usable(r):
            return False
        module = _schedule_module(r["schedule"], kind, spec, tgt)
        return contract.pins_every_knob(module, r["knobs"]) and contract.transfers(
            module, spec, contract.recorded_knobs(module, r["knobs"]))

    return nearest_for(log, spec.key(), described, device, pinned, targets.transferable(tgt),
                       default_schedule, current, threads=threads,
                       default_current=comparable_default(spec, default_schedule))


def default_knobs_of(schedule: str, spec: MPGemmSpec) -> Optional[dict]:
    """The knobs ``schedule``'s default builds ``spec`` with today (``contract.resolve_knobs``),
    as a tuning record of the default stores them (``default_knobs``); None where it has none,
    and ``{}`` for a schedule whose defaults are its keyword arguments (the CPU schedules: not
    stored, nothing to compare).

    Example:
        >>> default_knobs_of("cuda_stream", MPGemmSpec(1, 4096, 4096, act_dtype="float16"))["warps"]
        8
    """
    module = schedules.named(schedule)
    try:
        return None if module is None else contract.resolve_knobs(module, spec)
    except ValueError:
        return None


def timed_current_default(record: dict) -> bool:
    """Whether ``record`` (a log's record of a default kernel, ``knobs = {}``) timed the kernel
    its schedule's default builds today: the knobs it stored (``default_knobs``, written since
    2026-12-02) are today's (:func:`default_knobs_of`), or, in a record without them, it is no
    older than the last change of that default for its workload
    (``schedules.contract.default_changed``; both in UTC).

    Example:
        >>> rec = {"schedule": "cuda_wgmma", "time": "2026-12-01T09:00:00",
        ...        "workload": MPGemmSpec(16, 4096, 4096, act_dtype="float16").key()}
        >>> timed_current_default(rec), timed_current_default(dict(rec, time="2026-12-03T09:00:00"))
        (False, True)
    """
    module = schedules.named(record.get("schedule"))
    try:
        spec = MPGemmSpec(**record["workload"])
    except (TypeError, ValueError):     # a workload this lutc no longer describes
        return False
    if module is None:
        return True
    if record.get("default_knobs"):
        return record["default_knobs"] == default_knobs_of(record["schedule"], spec)
    changed = contract.default_changed(module, spec)
    return changed is None or (record.get("time") or "") >= changed


def comparable_default(spec: MPGemmSpec, default_schedule: Optional[str]) -> Callable[[dict], bool]:
    """Whether another workload's record of the default (``knobs = {}``) is a margin that a
    transfer to ``spec`` may be judged by: it timed today's default (:func:`timed_current_default`)
    and that default builds the same kernel as ``spec``'s (same resolved knobs). A source's win
    over another default says little about ours: on the H200 log 128 x 5120 x 27648's tile of 128
    tokens in 4 K slices beat its default 1.34x and took 1.23x its own default's time at 128 x
    4096 x 12288, where the default is ``batch_split``'s (``benchmarks/results/transfer_eval.md``).
    Answers are kept per workload (a transfer asks for every source's records).

    Example:
        >>> rec = {"schedule": "cuda_wgmma", "knobs": {}, "time": "2026-12-03T09:00:00",
        ...        "workload": MPGemmSpec(128, 5120, 27648, act_dtype="float16").key()}
        >>> comparable_default(MPGemmSpec(128, 4096, 12288, act_dtype="float16"), "cuda_wgmma")(rec)
        False
    """
    mine = default_knobs_of(default_schedule, spec) if default_schedule else None
    answers: dict = {}

    def comparable(record: dict) -> bool:
        if not timed_current_default(record):
            return False
        if not default_schedule or schedules.named(default_schedule) is None:
            return True
        key = json.dumps(record["workload"], sort_keys=True)
        if key not in answers:      # (a workload timed_current_default accepted is one MPGemmSpec takes)
            theirs = default_knobs_of(default_schedule, MPGemmSpec(**record["workload"]))
            answers[key] = mine is not None and theirs == mine
        return answers[key]
    return comparable


def _record_filters(kind: str, spec: MPGemmSpec, tgt, layout: Optional[str]) -> tuple:
    """``(usable, current)``: whether a record builds for ``spec`` (unbuildable records are
    skipped with a warning), and whether it timed a kernel that still exists (not an older
    layout version's, e.g. tc16 v1's: skipped silently) reading ``layout`` where one is asked
    for. Each record's layout is read once per call (a transfer tests every record of the log)."""
    read = {}   # id -> (record, layout): holding the record keeps its id from being reused

    def layout_of(r):
        if id(r) not in read:
            read[id(r)] = (r, kernel_layout(r, kind, spec, tgt))
        return read[id(r)][1]

    usable = lambda r: layout_of(r) is not None  # noqa: E731
    current = lambda r: (is_current(r, layout_of(r))  # noqa: E731
                         and (layout is None or layout_of(r) == layout))
    return usable, current


def _default_choice(spec: MPGemmSpec, tgt, kind: str, layout: Optional[str]) -> Optional[Choice]:
    """The untuned kernel: the target's default schedule, or with ``layout`` the one that reads
    it (None: no kernel of this target reads ``layout`` for ``spec``)."""
    if layout is None:
        module = schedules.default(kind, spec, tgt)
        return Choice(module, {}, None, module.layout(spec, tgt))
    found = schedules.for_layout(kind, spec, tgt, layout)
    return None if found is None else Choice(found[0], found[1], None, layout)


def checked_knobs(module: ModuleType, knobs: dict) -> dict:
    """``knobs`` for ``module`` if every name is one of its ``KNOBS`` and every value in that
    knob's domain; ``ValueError`` naming the schedule and the knob otherwise."""
    if not isinstance(knobs, dict):
        raise ValueError(f"knobs must be a dict of knob name -> value, got {knobs!r}")
    unknown = set(knobs) - set(module.KNOBS)
    if unknown:
        raise ValueError(f"schedule {_name(module)} has no knob(s) {sorted(unknown)}; "
                         f"its knobs are {sorted(module.KNOBS)}")
    for name, value in knobs.items():
        domain = module.KNOBS[name]
        # `True == 1` in Python: compare types too, so "False" or 1 is not a bool knob's value
        if value is not None and not any(value == d and type(value) is type(d) for d in domain):
            raise ValueError(f"schedule {_name(module)} knob {name}={value!r} is not one of {list(domain)}")
    return dict(knobs)


def kernel_layout(record: dict, kind: str, spec: MPGemmSpec, tgt) -> Optional[str]:
    """The layout the kernel of a tuning record (its ``schedule`` and ``knobs``) reads for
    ``spec``, or None if this lutc cannot build it (unknown schedule, bad knobs, unsupported)."""
    try:
        module = _schedule_module(record["schedule"], kind, spec, tgt)
        return module.layout(spec, tgt, **checked_knobs(module, record["knobs"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def is_current(record: dict, name: Optional[str]) -> bool:
    """Whether ``record`` timed today's kernel of layout ``name`` (None: none this lutc builds):
    its ``layout_version`` (1 where absent) is the layout's version. ``tc16`` v2 changed how
    ``cuda_mma``, ``cuda_stream`` and ``cuda_wgmma`` read x; records of v1 are skipped."""
    return name is not None and record.get("layout_version", LAYOUT_VERSION) == layouts.get(name).version


def record_layout(record: dict, kind: str, spec: MPGemmSpec, tgt) -> Optional[str]:
    """:func:`kernel_layout` of a record that :func:`is_current`, else None."""
    name = kernel_layout(record, kind, spec, tgt)
    return name if is_current(record, name) else None


def build(spec: MPGemmSpec, target: targets.TargetLike = None, schedule: ScheduleLike = None,
          knobs: Optional[dict] = None, cache=_FROM_ENV, tuned: bool = True,
          layout: Optional[str] = None) -> Kernel:
    """Schedule and compile ``spec`` for ``target``; see :func:`compile` and :func:`choose`.

    ``layout``: the weight layout the kernel must read (weights already packed): the fastest
    kernel reading it is built; ``ValueError`` if no kernel of this target reads it for ``spec``.
    """
    facts = targets.facts(target)
    tgt, kind, described = facts.target, facts.kind, facts.described
    choice = choose(spec, tgt, schedule, knobs, tuned, layout)
    if choice is None:
        raise ValueError(f"no lutc kernel for {described.get('kind')} reads weights in layout "
                         f"{layout!r} for {spec}")
    if cache is _FROM_ENV:
        cache = KernelCache.from_env()
    key = KernelCache.key(spec, described, choice.schedule, choice.knobs)
    kernel = cache.load(key, spec) if cache is not None and kind != "cpu-cross" else None
    if kernel is None:
        kernel = _compile(spec, tgt, kind, described, choice.module, choice.knobs)
        if cache is not None and kernel.runnable:
            cache.store(key, kernel)
    kernel.tuned = choice.record
    kernel.origin = choice.origin
    return kernel


#: Serializes writing the TensorIR (front end and schedule), which parses TVMScript with
#: ``ast.parse``: run from two threads at once, CPython 3.11 fails with "AST constructor
#: recursion depth mismatch". Lowering and code generation (``tvm.compile``, nvcc) stay parallel.
_SCRIPT_LOCK = threading.Lock()


def scheduled(spec: MPGemmSpec, tgt, module: ModuleType, knobs: dict, symbol: str = "main") -> tvm.IRModule:
    """The front end's function for ``spec`` under ``module``'s schedule with ``knobs``, named
    ``symbol``: what :func:`build` compiles (and :mod:`lutc.exporter` compiles again under
    another name or for another target)."""
    with _SCRIPT_LOCK:       # templates parse TVMScript too
        if contract.is_template(module):      # writes its own kernel: no front-end function to build
            mod = module.schedule(None, spec, tgt, **knobs).mod
            return mod if symbol == "main" else tvm.IRModule({"main": mod["main"].with_attr("global_symbol", symbol)})
        func = lut_mpgemm(spec)
        if symbol != "main":
            func = func.with_attr("global_symbol", symbol)
        return module.schedule(func, spec, tgt, **knobs).mod


def _compile(spec: MPGemmSpec, tgt, kind: str, described: dict, module: ModuleType, knobs: dict) -> Kernel:
    mod = scheduled(spec, tgt, module, knobs)
    if kind == "cuda":
        ex, source, fn = compile_cuda(mod, tgt, contract.pass_config(module))
    else:
        ex = tvm.compile(mod, target=tgt)
        source = ex.mod.inspect_source("ll")
        fn = ex["main"] if kind == "cpu" else None
    return Kernel(spec, described, "cuda" if kind == "cuda" else "cpu", fn, source,
                  mod.script(), ex, _name(module), knobs, module.layout(spec, tgt, **knobs))


def cuda_binary(kernel: Kernel, arch: Optional[str] = None, fmt: str = "cubin") -> bytes:
    """Compile a CUDA kernel's source with nvcc, without needing a GPU or driver.

    Args:
        arch: e.g. ``"sm_80"``, ``"sm_90a"``; default: the kernel's target arch.
        fmt: ``"ptx"``, ``"cubin"`` or ``"fatbin"``.

    Example:
        >>> k = lutc.compile((1, 256, 512), target="cuda:sm_80")   # doctest: +SKIP
        >>> cubin = lutc.build.cuda_binary(k)                      # doctest: +SKIP
    """
    if kernel.device != "cuda":
        raise ValueError(f"cuda_binary needs a CUDA kernel, this one targets {kernel.target.get('kind')}")
    from tvm.support import nvcc
    arch = arch or targets.facts(kernel.target).cuda_arch
    with targets.cuda_target(arch):
        return bytes(nvcc.compile_cuda(kernel.source, target_format=fmt, arch=arch, compiler="nvcc"))


def precompile(kernel: Kernel) -> Optional[str]:
    """Compile a CUDA kernel's source with nvcc into the nvcc cache (no GPU needed), so that
    building the same kernel on a GPU machine that shares the cache skips nvcc; returns the
    cache file (None when ``LUTC_CACHE=0``)."""
    if kernel.device != "cuda":
        raise ValueError("precompile needs a CUDA kernel")
    arch = targets.facts(kernel.target).cuda_arch
    with targets.cuda_target(arch):
        return nvcc_fatbin(kernel.source, arch)[1]


_CALLBACK_INSTALLED = False


def _install_compile_callback() -> None:
    """Route TVM's CUDA compile callback through :func:`lutc.cache.nvcc_fatbin` (nvcc, not NVRTC:
    NVRTC needs the cuda-bindings package; nvcc is what CUDA machines and our CI have)."""
    global _CALLBACK_INSTALLED
    if _CALLBACK_INSTALLED:
        return
    import tvm_ffi
    import tvm.support.nvcc  # noqa: F401  (registers TVM's own callback first)

    def callback(code, *_):
        tgt = tvm.target.Target.current(allow_none=True)
        return nvcc_fatbin(code, targets.facts(tgt).cuda_arch if tgt is not None else "")[0]

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", callback, override=True)
    _CALLBACK_INSTALLED = True


def compile_cuda(mod: tvm.IRModule, tgt: tvm.target.Target, config: Optional[dict] = None):
    """``(executable, CUDA source, main function or None)`` of a scheduled module: the one place
    that knows TVM's CUDA-compile quirks (nvcc through lutc's cached callback, the device module's
    kind, no function without a driver). Used by :func:`build` and the exporter."""
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    _install_compile_callback()
    with tgt, tvm.transform.PassContext(opt_level=3, config=config or {}):
        ex = tvm.compile(mod, target=tgt)
    device_mods = [m for m in ex.mod.imports if m.kind in ("cuda", "CUDAFallbackModule")] or ex.mod.imports
    source = device_mods[0].inspect_source() if device_mods else ""
    runnable = tvm.runtime.enabled("cuda") and tvm.cuda(0).exist
    return ex, source, (ex["main"] if runnable else None)


def default_table_dtype(spec: MPGemmSpec, target: targets.TargetLike = None) -> str:
    """The table dtype lutc uses when none is given (``lutc.compile``, the torch op,
    ``LUTLinear``, ``lutc export``/``tune``): int8 where an int8-table SIMD kernel would be chosen
    for this spec (CPUs), else float32 (the CUDA kernels use float tables)."""
    facts = targets.facts(target)
    if facts.kind == "cuda":
        return "float32"
    as_int8 = spec.with_(table_dtype="int8")
    simd = schedules.default(facts.kind, as_int8, facts.target)
    return "int8" if simd not in schedules.GENERIC else "float32"


def _schedule_module(schedule: ScheduleLike, kind: str, spec: MPGemmSpec,
                     tgt: tvm.target.Target) -> ModuleType:
    if schedule is None:
        return schedules.default(kind, spec, tgt)
    known = {_name(m): m for m in schedules.CANDIDATES.get(kind, ()) + schedules.ALTERNATIVES.get(kind, ())}
    if isinstance(schedule, str):
        if schedule not in known:
            raise ValueError(f"no {kind} schedule named {schedule!r} in schedules/; choose from {sorted(known)}")
        schedule = known[schedule]
    elif schedule not in known.values():
        raise ValueError(f"schedule {schedule!r} is not a {kind} schedule of schedules/; choose from {sorted(known)}")
    if not schedule.supports(spec, tgt):
        raise ValueError(f"schedule {_name(schedule)} does not support this spec on this target "
                         f"(see its supports(): e.g. SIMD kernels need g=4 and table_dtype='int8')")
    return schedule


def _name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1]
