r"""Export compiled kernels for other runtimes, and packed weights for their hosts.

:func:`export` (also ``lutc.export`` and the ``lutc export`` command) writes any kernel
:func:`lutc.compile` builds, each with the packed-weight layout it reads (``kernel.layout``,
:mod:`lutc.layouts`): the x86 SIMD LUT kernel (``ptiles64``/``tiles128``) and ``dot_mac``
(``dot16``), the NEON kernels of ``target="arm"`` (``tiles32``, ``dot4``; cross-compiled), the
CUDA kernels ``cuda_lut`` (``warp32``), ``cuda_stream``, ``cuda_wgmma`` and ``cuda_mma`` (``tc16``), and the generic schedules
(``bitplane``). For a :class:`~lutc.runtime.Kernel` it writes:

=================  ==============================================================================
file               what
=================  ==============================================================================
``NAME.so``        CPU: the kernel as a shared library loadable through tvm-ffi, from Python
                   (``tvm_ffi.load_module(path)[symbol]``) or C++ (``ffi::Module::LoadFromFile``),
                   without lutc or TVM: ``lutc_backend.c`` is linked in and provides the thread
                   pool and workspace that libtvm_runtime would. CUDA (only where a GPU compiled
                   it): the TVM module with its device code (loading needs libtvm_runtime_cuda).
``NAME.o``         CPU: the same code as a relocatable object for static linking (LLVM, this
                   target's ISA; a cross-compiled kernel's object is for its target).
``NAME.c``         CPU, generic schedules only: the kernel as plain C source (TVM's "c" target),
                   single-threaded (TVM's C backend emits parallel loops as serial ones). Not
                   written for the SIMD kernels (x86, NEON, dot_mac): they are vectorized with
                   LLVM intrinsics (``vpshufb``, ``tbl``, ``vpdpbusd``) that the C target cannot
                   express; the header and manifest say so (``NAME.c: not written: ...``).
``NAME.cu``        CUDA: the kernels' CUDA C source plus ``NAME_launch()``, a host function that
                   launches them in order on a stream (grid/block read from the lowered TIR).
``NAME.h``         the kernel's packed-weight layout byte by byte (:meth:`lutc.layouts.Layout.doc`),
                   the argument order/shapes/dtypes, the entry symbol, the backend hooks a host
                   must provide (CPU) or the launch configuration and workspace (CUDA), sizes,
                   padded shapes and the layout as macros (``NAME_LAYOUT "ptiles64"``,
                   ``NAME_LAYOUT_CODE``, ``NAME_PLANES_SHAPE``...), and ``NAME_run()`` (CPU) on raw
                   pointers.
``NAME.json``      the same facts for programs: spec, target, schedule, layout, files, launches.
``lutc_backend.c`` CPU: the TVM backend services (thread pool, workspace, error hook), and
                   ``lutc_backend.h``, their declarations for a host (e.g. its own parallel launcher).
``lutc_weights.h`` a C reader for the weight files of :func:`lutc.save_weights`.
``include/``       CPU: the tvm-ffi/DLPack C headers the generated code includes.
=================  ==============================================================================

**The CPU ABI.** The entry point is TVM-FFI's safe call,
``int __tvm_ffi_SYMBOL(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* ret)``
(``SYMBOL`` is ``main`` unless ``symbol=`` renames it: give each kernel its own symbol to link
several into one program). ``args`` are ``DLTensor*`` (type index ``kTVMFFIDLTensorPtr``) in the
order ``x, planes, scales[, zeros], out`` of :mod:`lutc.frontend`, the weight tensors in the
kernel's layout (tiled layouts pad ``N`` to whole tiles); every buffer is compact row-major and
64-byte aligned (the kernel checks shapes, dtypes, device and strides, not alignment). It
returns 0, or -1 after reporting the failed check through ``TVMFFIErrorSetRaisedFromCStrParts``.
The object calls the runtime through three weak function pointers,
``__TVMBackendParallelLaunch``, ``__TVMBackendAllocWorkspace`` and ``__TVMBackendFreeWorkspace``,
which ``lutc_backend.c`` fills at start-up (a host may assign its own; libtvm_runtime, where
loaded, fills them with its own).

**Weight files** (:func:`~lutc.weight_files.save_weights`, ``lutc_weights.h``) are
:mod:`lutc.weight_files`'s; a kernel header names its weight layout by the same code.

Example (the default kernel of this CPU):

    >>> import lutc, tempfile
    >>> kernel = lutc.compile((1, 64, 256), wbits=2, group_size=64)
    >>> out = lutc.export(kernel, tempfile.mkdtemp(), name="k")
    >>> out.manifest["layout"] == kernel.layout, "c" in out.files
    (True, False)
    >>> sorted(out.files)
    ['h', 'json', 'o', 'so']

The package: this module (:func:`export`, the entry, and what it checks), :mod:`.cpu` and
:mod:`.cuda` (each target's files), :mod:`.common` (what both write: arguments, size macros,
header opening, manifest).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterable, Optional

from ..dtypes import short_name
from ..runtime import Kernel
from ..spec import MPGemmSpec
from .common import C_DIR, Exported, PathLike, manifest, skip
from .cpu import export_cpu
from .cuda import cuda_launches, export_cuda

CPU_EMIT = ("so", "o", "c")


def default_name(spec: MPGemmSpec) -> str:
    """A C identifier naming the kernel of ``spec``, e.g. ``lutc_uniform_w2g128_1x4096x4096_f32``."""
    zp = "zp" if spec.zero_point else ""
    act = short_name(spec.act_dtype)
    gs = "row" if spec.group_size == -1 else spec.group_size
    return f"lutc_{spec.format}_w{spec.wbits}g{gs}{zp}_{spec.M}x{spec.N}x{spec.K}_{act}"


def export(kernel: Kernel, directory: PathLike, name: Optional[str] = None, symbol: str = "main",
           emit: Optional[Iterable[str]] = None) -> Exported:
    """Write ``kernel`` for other runtimes into ``directory`` (module docstring).

    Args:
        kernel: from :func:`lutc.compile` / :func:`lutc.build`, in any layout.
        directory: created if missing; existing files of the same name are replaced.
        name: file stem and C prefix (default :func:`default_name`).
        symbol: the entry's global symbol: ``__tvm_ffi_<symbol>`` in C, ``module[symbol]`` in
            tvm-ffi, CUDA kernels ``<symbol>_kernel[_i]``. The default ``"main"`` writes
            ``kernel.executable`` itself (unless it was loaded from the disk cache); another
            symbol recompiles the same schedule under it.
        emit: which of ``"so"``, ``"o"``, ``"c"`` (CPU) / ``"cu"``, ``"so"`` (CUDA) to write;
            default all that apply (a CUDA ``.so`` only where this process has a GPU, a ``.c``
            only for kernels without LLVM intrinsics). Naming one that cannot be written raises
            ``RuntimeError``; by default it is skipped, with the reason in ``Exported.skipped``,
            the header and the manifest. The header and manifest are always written.

    Example:
        >>> import lutc, tempfile
        >>> kernel = lutc.compile((1, 64, 256), wbits=2, group_size=64, table_dtype="float32")
        >>> res = lutc.export(kernel, tempfile.mkdtemp(), name="k")
        >>> kernel.layout, sorted(res.files)
        ('bitplane', ['c', 'h', 'json', 'o', 'so'])
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a lutc Kernel (lutc.compile), got {type(kernel).__name__}")
    name = name or default_name(kernel.spec)
    for what, value in (("name", name), ("symbol", symbol)):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"{what} must be a C identifier, got {value!r}")
    cuda = kernel.device == "cuda"
    allowed = ("cu", "so") if cuda else CPU_EMIT
    explicit = emit is not None
    emit = set(emit) if explicit else set(allowed)
    unknown = emit - set(allowed)
    if unknown:
        raise ValueError(f"emit: {sorted(unknown)} cannot be written for a "
                         f"{'CUDA' if cuda else 'CPU'} kernel; choose from {list(allowed)}")
    out = Path(directory)
    result = Exported(out, name, symbol, {}, {})
    if not cuda and "c" in emit:
        why = c_source_limitation(kernel)
        if why:
            skip(result, "c", why, explicit)   # raises before any file is written if "c" was asked for
            emit.discard("c")
    out.mkdir(parents=True, exist_ok=True)
    if cuda:
        export_cuda(kernel, result, emit, explicit)
    else:
        export_cpu(kernel, result, emit, explicit)
    shutil.copyfile(C_DIR / "lutc_weights.h", out / "lutc_weights.h")
    result.manifest = manifest(kernel, result)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result.manifest, indent=2) + "\n")
    result.files["json"] = path
    return result


def c_source_limitation(kernel: Kernel) -> Optional[str]:
    """Why TVM's C target cannot write ``kernel`` as C source, or None if it can.

    The SIMD kernels call LLVM intrinsics (table shuffles, dot products) on vector types; TVM's
    "c" target has neither, so their ``.c`` is not written (link the ``.o`` instead).

    Example:
        >>> import lutc
        >>> c_source_limitation(lutc.compile((1, 64, 256), group_size=64, target="arm"))[:40]
        'the arm kernel calls LLVM intrinsics (ll'
    """
    intrinsics = sorted(set(re.findall(r'call_llvm_(?:pure_)?intrin\("[^"]*",\s*"([\w.]+)"', kernel.script)))
    if not intrinsics:
        return None
    return (f"the {kernel.schedule} kernel calls LLVM intrinsics ({', '.join(intrinsics)}) on vector "
            "types, which TVM's C target cannot express: link the .o (or .so) instead")


__all__ = ["export", "Exported", "default_name", "c_source_limitation", "cuda_launches"]
