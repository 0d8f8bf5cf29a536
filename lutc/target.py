"""Targets: short names and TVM target dicts, resolved to a ``tvm.target.Target``.

=================  =============================================================================
name               target
=================  =============================================================================
``None``/"host"    the CPU this process runs on (LLVM's host CPU model: AVX2/AVX-512 as present)
"llvm", "x86"      same as "host" on an x86-64 machine; generic x86-64-v3 (AVX2) elsewhere
"arm", "aarch64"   64-bit Arm Linux with NEON and dot-product (cross-compiled on x86)
"arm-i8mm"         the same on an Armv8.6+ core with ``i8mm`` (Neoverse V2, Graviton4): ``usdot``
"cuda"             the visible NVIDIA GPU's architecture, else ``sm_90a`` (H100/H200)
"cuda:sm_80"       an explicit CUDA architecture
a dict/Target      passed to TVM as it is (``{"kind": "llvm", "mcpu": "skylake-avx512"}``)
=================  =============================================================================

CUDA targets carry the limits meta-schedule and the schedules read (threads, shared memory,
warp size, registers); without them TVM fails with "missing attribute `max_threads_per_block`".
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import tvm
from tvm.target import codegen

from .cpu_arch import machine

TargetLike = Union[None, str, dict, tvm.target.Target]
#: Explicit caches of facts that hold for the life of the process, read once: targets resolved
#: from names (the same ``Target`` object each time), the hardware :func:`device_name` names and
#: each target's :class:`Facts`.
_RESOLVED: dict = {}
_DEVICES: dict = {}
_FACTS: dict = {}

_ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1",
        "mattr": ["+neon", "+dotprod", "+fullfp16"]}
#: "arm" on an Armv8.6+ core: the same triple and features, and ``i8mm``
_ARM_I8MM = {**_ARM, "mcpu": "neoverse-v2", "mattr": [*_ARM["mattr"], "+i8mm"]}
#: The CUDA architecture of a target that names none (and of "cuda" without a visible GPU).
DEFAULT_CUDA_ARCH = "sm_90a"
_CUDA_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                "thread_warp_size": 32, "registers_per_block": 65536, "max_num_threads": 1024}


def resolve(target: TargetLike = None) -> tvm.target.Target:
    """Turn a short name, dict or Target into a ``tvm.target.Target``.

    Example:
        >>> resolve("arm").attrs["mtriple"]
        'aarch64-linux-gnu'
        >>> resolve("cuda:sm_80").attrs["arch"]
        'sm_80'
    """
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict):
        return tvm.target.Target(target)
    if target is not None and not isinstance(target, str):
        raise TypeError(f"target must be a name, a dict or a tvm.target.Target, got {type(target).__name__}")
    name = "host" if target is None else target.lower()
    if name not in _RESOLVED:
        _RESOLVED[name] = _from_name(name, target)
    return _RESOLVED[name]


def _from_name(name: str, given) -> tvm.target.Target:
    """The target a lower-case short name stands for (:func:`resolve`)."""
    if name == "host":
        return tvm.target.Target(host_cpu())
    if name in ("llvm", "x86", "cpu"):
        return tvm.target.Target(host_cpu() if _host_is_x86() else {"kind": "llvm", "mcpu": "x86-64-v3"})
    if name in ("arm", "aarch64", "neon"):
        return tvm.target.Target(dict(_ARM))
    if name == "arm-i8mm":
        return tvm.target.Target(dict(_ARM_I8MM))
    if name == "cuda" or name.startswith("cuda:"):
        arch = name.split(":", 1)[1] if ":" in name else _visible_cuda_arch() or DEFAULT_CUDA_ARCH
        return cuda_target(arch)
    raise ValueError(f"unknown target {given!r}: use 'host', 'llvm'/'x86', 'arm', 'arm-i8mm', 'cuda', "
                     "'cuda:sm_XX', or a TVM target dict")


def cuda_target(arch: str = DEFAULT_CUDA_ARCH) -> tvm.target.Target:
    """A CUDA target for ``arch`` with its limits spelled out, host code for this CPU."""
    return tvm.target.Target({"kind": "cuda", "arch": arch, **_CUDA_LIMITS}, host=host_cpu())


def host_cpu() -> dict:
    """The LLVM target of this machine's CPU (its model name decides AVX2/AVX-512)."""
    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}


def kind(target: tvm.target.Target) -> str:
    """``"cuda"``, ``"cpu"`` (runs in this process) or ``"cpu-cross"`` (another architecture)."""
    if target.kind.name == "cuda":
        return "cuda"
    if target.kind.name in ("llvm", "c"):
        triple = str(target.attrs.get("mtriple", "") or "")
        if triple and not _same_arch(triple):
            return "cpu-cross"
        return "cpu"
    raise ValueError(f"unsupported target kind {target.kind.name!r}: lutc builds llvm (CPU) and cuda")


#: The LLVM features of a CPU target that decide which kernels build (``schedules.x86``,
#: ``schedules.dot_mac``): what :attr:`Facts.features` holds where the target has them.
LLVM_FEATURES = ("avx2", "avx512bw", "avx512vnni", "avx512vbmi", "amx-tile", "amx-int8", "neon", "dotprod", "i8mm", "sve")
#: LLVM CPU names whose cores run 512-bit integer instructions as two 256-bit halves (AMD Zen 4):
#: :attr:`Facts.half_rate_512`.
HALF_RATE_512_CPUS = ("znver4",)
#: SIMD family of each CPU architecture (as :func:`lutc.cpu_arch.machine` spells it).
_SIMD = {"x86_64": "x86", "i686": "x86", "aarch64": "aarch64"}


@dataclass(frozen=True)
class Facts:
    """What lutc asks of a target, resolved once (:func:`facts`): the TVM target, its kind
    (:func:`kind`), its JSON identity for logs and caches (:func:`describe`), the hardware
    measurements on it are taken on (:func:`device_name`), and what the schedules ask: the SIMD
    family of a CPU target (``"x86"``, ``"aarch64"``, else None), its :data:`LLVM_FEATURES`,
    whether its cores run 512-bit integer instructions at half rate (:data:`HALF_RATE_512_CPUS`),
    and a CUDA target's architecture (``"sm_90a"``; "" for a CPU)."""
    target: tvm.target.Target
    kind: str
    described: dict = field(compare=False)
    device: str
    simd: Optional[str] = None
    features: frozenset = frozenset()
    cuda_arch: str = ""
    half_rate_512: bool = False

    def has(self, *features: str) -> bool:
        """Whether the target has every one of the LLVM ``features`` (:data:`LLVM_FEATURES`).

        Example:
            >>> facts("arm").has("neon", "dotprod"), facts("arm").has("avx2")
            (True, False)
        """
        unknown = set(features) - set(LLVM_FEATURES)
        if unknown:
            raise ValueError(f"unknown CPU features {sorted(unknown)}: lutc reads {LLVM_FEATURES}")
        return set(features) <= self.features


def facts(target: TargetLike = None) -> Facts:
    """The :class:`Facts` of ``target`` (a name, dict or Target: :func:`resolve`), cached per
    target for the process: a ``lutc.compile`` asks for them once.

    Example:
        >>> f = facts("cuda:sm_80")
        >>> f.kind, f.described["arch"], f is facts("cuda:sm_80")
        ('cuda', 'sm_80', True)
    """
    tgt = resolve(target)
    key = str(tgt)
    if key not in _FACTS:
        _FACTS[key] = _read_facts(tgt)
    return _FACTS[key]


def forget_facts() -> None:
    """Empty the caches of :func:`facts`, :func:`device_name` and :func:`resolve` (targets named
    "host", "cuda", ...): for a test that makes this process look like another machine; the facts
    of a real host never change."""
    _FACTS.clear()
    _DEVICES.clear()
    _RESOLVED.clear()


def _read_facts(tgt: tvm.target.Target) -> Facts:
    """The :class:`Facts` of a resolved target, read from TVM, LLVM and the machine."""
    k = kind(tgt)
    if k == "cuda":
        arch = str(tgt.attrs.get("arch", "") or DEFAULT_CUDA_ARCH)
        return Facts(tgt, k, describe(tgt), device_name(tgt), cuda_arch=arch)
    simd = _SIMD.get(machine(str(tgt.attrs.get("mtriple", "") or "")))
    features = frozenset(f for f in LLVM_FEATURES if codegen.llvm_cpu_has_features([f], tgt))
    half_rate = str(tgt.attrs.get("mcpu", "") or "") in HALF_RATE_512_CPUS
    return Facts(tgt, k, describe(tgt), device_name(tgt), simd=simd, features=features, half_rate_512=half_rate)


def describe(target: tvm.target.Target) -> dict:
    """A JSON-ready identity of the target (its TVM export, host excluded), for logs and caches."""
    return {k: _plain(v) for k, v in dict(target.export()).items() if k != "host"}


def _plain(v):
    """TVM containers (Array, Map, String) as plain JSON values."""
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    if isinstance(v, str):
        return str(v)
    if hasattr(v, "items"):
        return {str(k): _plain(x) for k, x in v.items()}
    if hasattr(v, "__iter__"):
        return [_plain(x) for x in v]
    return str(v)


def device_name(target: tvm.target.Target) -> str:
    """The hardware a measurement was taken on: GPU name and capability, or CPU model and
    its SIMD features (what decides which kernel is fastest). Cross targets: the triple."""
    k = kind(target)
    key = (k, str(target.attrs.get("arch", "") or target.attrs.get("mtriple", "") or ""))
    if key not in _DEVICES:
        _DEVICES[key] = _device_name(target, k)
    return _DEVICES[key]


def _device_name(target: tvm.target.Target, k: str) -> str:
    if k == "cuda":
        try:
            import torch
            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                return f"{torch.cuda.get_device_name()} | sm_{major}{minor}"
        except Exception:  # no torch/driver: name the target only
            pass
        return f"cuda | {target.attrs.get('arch', '')}"
    if k == "cpu-cross":
        return f"cross | {target.attrs.get('mtriple')}"
    flags = set(_cpuinfo("flags", "Features").split())
    simd = sorted(f for f in flags if f.startswith(("avx", "amx", "asimd", "sve", "neon", "fma")))
    return f"{cpu_model()} | {','.join(simd)}"


#: The SIMD features (``/proc/cpuinfo`` names, as :func:`device_name` lists them) that decide
#: which CPU kernels build and which is fastest: a tuning record transfers between CPUs that
#: agree on all of them.
ISA_FEATURES = ("avx2", "avx512bw", "avx512_vnni", "avx512vbmi", "asimd", "asimddp", "sve")


def transferable(target: tvm.target.Target) -> Callable[[dict], bool]:
    """The test whether a tuning record measured on another target may stand in for ``target``'s
    own (``lutc.tuner.records.nearest_for``): a GPU of the same architecture (an H100 record for
    an H200); a CPU whose :data:`ISA_FEATURES` are this one's (another model name, e.g. LLVM's
    ``rocketlake`` and ``znver5`` both with AVX-512 VNNI). The record's kernel must still build
    here, which the caller checks. This target's facts are read once, not per record.

    Example:
        >>> rec = {"target": {"kind": "cuda", "arch": "sm_90a"}, "device": "NVIDIA H100 | sm_90"}
        >>> transferable(resolve("cuda:sm_90a"))(rec), transferable(resolve("cuda:sm_80"))(rec)
        (True, False)
    """
    if kind(target) == "cuda":
        arch = str(target.attrs.get("arch", ""))
        return lambda r: (r.get("target") or {}).get("kind") == "cuda" and (r.get("target") or {}).get("arch") == arch
    if kind(target) != "cpu":
        return lambda r: False
    ours = _isa(device_name(target))
    return lambda r: (r.get("target") or {}).get("kind") == "llvm" and _isa(str(r.get("device", ""))) == ours


def _isa(device: str) -> set:
    """The :data:`ISA_FEATURES` among a :func:`device_name`'s feature list."""
    return set(device.split(" | ", 1)[-1].split(",")) & set(ISA_FEATURES)


def cpu_threads() -> int:
    """Threads lutc's CPU kernels run on: TVM's pool, which reads ``TVM_NUM_THREADS`` when it
    starts (lutc sets it on import from ``LUTC_NUM_THREADS``, else the cores this process may run
    on). A CPU tuning record names it beside the device (``"threads"``): which knobs win depends on
    it (``dot_mac``'s ``splits``).

    Example:
        >>> cpu_threads() >= 1
        True
    """
    return int(os.environ.get("TVM_NUM_THREADS") or len(os.sched_getaffinity(0)))


def cpu_model() -> str:
    """This machine's CPU model (``/proc/cpuinfo``), else what ``platform`` knows of it.

    Example:
        >>> isinstance(cpu_model(), str) and len(cpu_model()) > 0
        True
    """
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpuinfo(*keys: str) -> str:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``keys`` ("" if none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _host_is_x86() -> bool:
    return machine() == "x86_64"


def _same_arch(triple: str) -> bool:
    return machine(triple) == machine()


def _visible_cuda_arch() -> Optional[str]:
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"sm_{major}{minor}" + ("a" if major >= 9 else "")
    except Exception:  # torch missing or no driver: fall back to the default arch
        pass
    return None


def c_compiler(target: tvm.target.Target) -> Optional[str]:
    """The C compiler that builds and links code for ``target``: ``<triple>-gcc`` for a cross
    target (None where it is not installed), else ``$CC`` or gcc/cc of this machine.

    Example:
        >>> c_compiler(resolve("host")) is not None      # gcc or cc: the CI machine has one
        True
    """
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and kind(target) == "cpu-cross":
        return shutil.which(f"{triple}-gcc")
    return shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
