"""Build: a spec and a target, through a schedule, to a compiled :class:`~lutc.runtime.Kernel`.

The chain is front end (:func:`lutc.frontend.lut_mpgemm`) -> schedule (``schedules/``, the
target's default unless one is named) -> ``tvm.compile`` -> :class:`Kernel`.

CUDA without a GPU: on a machine with no CUDA driver, ``tvm.compile`` quietly keeps the CUDA
source only (a ``CUDAFallbackModule``). :func:`cuda_binary` compiles that source with nvcc to
PTX or a cubin, so machines without a GPU (CI) still prove the code builds.

Kernel cache: lutc compiles CUDA source with nvcc through a disk cache keyed by the source, the
architecture and the nvcc version (``$LUTC_CACHE_DIR``, default ``~/.cache/lutc``). A machine
without a GPU can fill it ahead of time (:func:`precompile`), so the GPU machine skips nvcc.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence, Union

import tvm

import schedules

from . import target as targets
from .cache import KernelCache
from .frontend import lut_mpgemm
from .runtime import Kernel
from .spec import MPGemmSpec
from .tuner.records import best_for, log_for

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
        >>> bool(((y - ref).abs().max() / ref.abs().max()) < 3e-2)   # int8 tables
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
    M, N, K = (int(v) for v in shape)
    if table_dtype is None:
        table_dtype = _default_table_dtype(MPGemmSpec(M, N, K, **fields), targets.resolve(target))
    return MPGemmSpec(M, N, K, table_dtype=table_dtype, **fields)


def build(spec: MPGemmSpec, target: targets.TargetLike = None, schedule: ScheduleLike = None,
          knobs: Optional[dict] = None, cache=_FROM_ENV, tuned: bool = True,
          layout: Optional[str] = None) -> Kernel:
    """Schedule and compile ``spec`` for ``target``; see :func:`compile`.

    ``layout``: the weight layout the kernel must read. A tuned or default schedule that reads
    another is replaced, before anything is compiled, by the target's generic schedule (which
    reads ``bitplane``: same math, slower); a schedule named here that reads another raises.
    """
    tgt = targets.resolve(target)
    kind = targets.kind(tgt)
    described = targets.describe(tgt)
    named = schedule is not None
    record = None
    if schedule is None and knobs is None and tuned:
        record = best_for(log_for(kind, described), spec.key(), described, targets.device_name(tgt))
        if record is not None:
            schedule, knobs = record["schedule"], record["knobs"]
    module = _schedule_module(schedule, kind, spec, tgt)
    knobs = dict(knobs or {})
    unknown = set(knobs) - set(module.KNOBS)
    if unknown:
        raise ValueError(f"schedule {_name(module)} has no knob(s) {sorted(unknown)}; "
                         f"its knobs are {sorted(module.KNOBS)}")
    if layout is not None and module.layout(spec, tgt, **knobs) != layout:
        if named:
            raise ValueError(f"schedule {_name(module)} reads weights in layout "
                             f"{module.layout(spec, tgt, **knobs)!r}, not {layout!r}")
        module, knobs, record = next(m for m in schedules.CANDIDATES[kind] if m in schedules.GENERIC), {}, None
    if cache is _FROM_ENV:
        cache = KernelCache.from_env()
    key = KernelCache.key(spec, described, _name(module), knobs)
    kernel = cache.load(key, spec) if cache is not None and kind != "cpu-cross" else None
    if kernel is None:
        kernel = _compile(spec, tgt, kind, described, module, knobs)
        if cache is not None and kernel.runnable:
            cache.store(key, kernel)
    kernel.tuned = record
    return kernel


#: Serializes writing the TensorIR (front end and schedule), which parses TVMScript with
#: ``ast.parse``: run from two threads at once, CPython 3.11 fails with "AST constructor
#: recursion depth mismatch". Lowering and code generation (``tvm.compile``, nvcc) stay parallel.
_SCRIPT_LOCK = threading.Lock()


def scheduled(spec: MPGemmSpec, tgt, module: ModuleType, knobs: dict, symbol: str = "main") -> tvm.IRModule:
    """The front end's function for ``spec`` under ``module``'s schedule with ``knobs``, named
    ``symbol``: what :func:`build` compiles (and :mod:`lutc.exporter` compiles again under
    another name or for another target)."""
    with _SCRIPT_LOCK:
        func = lut_mpgemm(spec)
        if symbol != "main":
            func = func.with_attr("global_symbol", symbol)
        return module.schedule(func, spec, tgt, **knobs).mod


def _compile(spec: MPGemmSpec, tgt, kind: str, described: dict, module: ModuleType, knobs: dict) -> Kernel:
    mod = scheduled(spec, tgt, module, knobs)
    if kind == "cuda":
        ex, source, fn = _compile_cuda(mod, tgt, getattr(module, "PASS_CONFIG", None))
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
    arch = arch or kernel.target.get("arch", "sm_90a")
    with targets.cuda_target(arch):
        return bytes(nvcc.compile_cuda(kernel.source, target_format=fmt, arch=arch, compiler="nvcc"))


def precompile(kernel: Kernel) -> Path:
    """Compile a CUDA kernel's source with nvcc into the kernel cache (no GPU needed), so that
    building the same kernel on a GPU machine that shares the cache skips nvcc."""
    if kernel.device != "cuda":
        raise ValueError("precompile needs a CUDA kernel")
    arch = kernel.target.get("arch", "sm_90a")
    with targets.cuda_target(arch):
        _cached_fatbin(kernel.source, arch)
    return _cache_path(kernel.source, arch)


def cache_dir() -> Path:
    return Path(os.environ.get("LUTC_CACHE_DIR", Path.home() / ".cache" / "lutc"))


_NVCC_VERSION: Optional[str] = None


def _cache_path(code: str, arch: str) -> Path:
    global _NVCC_VERSION
    if _NVCC_VERSION is None:
        try:
            _NVCC_VERSION = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
        except OSError:
            _NVCC_VERSION = "no nvcc"
    key = hashlib.sha256("\0".join((code, arch, _NVCC_VERSION)).encode()).hexdigest()[:32]
    return cache_dir() / f"{key}.fatbin"


def _cached_fatbin(code: str, arch: str) -> bytearray:
    """nvcc's fatbin for ``code`` (the current target scope gives the arch), through the cache."""
    from tvm.support import nvcc
    path = _cache_path(code, arch)
    if path.exists():
        return bytearray(path.read_bytes())
    binary = nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(binary))
        tmp.replace(path)
    except OSError:  # a read-only cache still compiles
        pass
    return binary


_CALLBACK_INSTALLED = False


def _install_compile_callback() -> None:
    """Route TVM's CUDA compile callback through :func:`_cached_fatbin` (nvcc, not NVRTC:
    NVRTC needs the cuda-bindings package; nvcc is what CUDA machines and our CI have)."""
    global _CALLBACK_INSTALLED
    if _CALLBACK_INSTALLED:
        return
    import tvm_ffi
    import tvm.support.nvcc  # noqa: F401  (registers TVM's own callback first)

    def callback(code, *_):
        tgt = tvm.target.Target.current(allow_none=True)
        return _cached_fatbin(code, str(tgt.attrs.get("arch", "")) if tgt is not None else "")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", callback, override=True)
    _CALLBACK_INSTALLED = True


def _compile_cuda(mod: tvm.IRModule, tgt: tvm.target.Target, config: Optional[dict] = None):
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    _install_compile_callback()
    with tgt, tvm.transform.PassContext(opt_level=3, config=config or {}):
        ex = tvm.compile(mod, target=tgt)
    device_mods = [m for m in ex.mod.imports if m.kind in ("cuda", "CUDAFallbackModule")] or ex.mod.imports
    source = device_mods[0].inspect_source() if device_mods else ""
    runnable = tvm.runtime.enabled("cuda") and tvm.cuda(0).exist
    return ex, source, (ex["main"] if runnable else None)


def _default_table_dtype(spec: MPGemmSpec, tgt: tvm.target.Target) -> str:
    """int8 where an int8-table SIMD kernel would be chosen for this spec (CPUs), else float32
    (the CUDA kernels use float tables)."""
    if targets.kind(tgt) == "cuda":
        return "float32"
    as_int8 = spec.with_(table_dtype="int8")
    simd = schedules.default(targets.kind(tgt), as_int8, tgt)
    return "int8" if simd not in schedules.GENERIC else "float32"


def _schedule_module(schedule: ScheduleLike, kind: str, spec: MPGemmSpec,
                     tgt: tvm.target.Target) -> ModuleType:
    if schedule is None:
        return schedules.default(kind, spec, tgt)
    if isinstance(schedule, str):
        import importlib
        try:
            schedule = importlib.import_module(f"schedules.{schedule}")
        except ModuleNotFoundError:
            raise ValueError(f"no schedule named {schedule!r} in schedules/") from None
    if not schedule.supports(spec, tgt):
        raise ValueError(f"schedule {_name(schedule)} does not support this spec on this target "
                         f"(see its supports(): e.g. SIMD kernels need g=4 and table_dtype='int8')")
    return schedule


def _name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1]
