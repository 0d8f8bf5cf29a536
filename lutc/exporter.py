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
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import tvm

from . import layouts
from . import target as targets
from .build import compile_cuda, scheduled
from .dtypes import nbytes
from .runtime import Kernel
from .spec import FORMATS, MPGemmSpec
from .weight_files import FILE_LAYOUTS

PathLike = Union[str, os.PathLike]
C_DIR = Path(__file__).parent / "c"
CPU_EMIT = ("so", "o", "c")
#: The tvm-ffi / TVM C headers that the generated C code and the headers include.
_HEADERS = {"tvm_ffi": ("dlpack/dlpack.h", "tvm/ffi/c_api.h", "tvm/ffi/extra/c_env_api.h"),
            "tvm": ("tvm/runtime/base.h", "tvm/runtime/c_backend_api.h")}
#: lutc dtype name -> DLPack type code and bits, and the C element type a host uses.
_DL = {"float32": ("kDLFloat", 32), "float16": ("kDLFloat", 16), "bfloat16": ("kDLBfloat", 16),
       "uint8": ("kDLUInt", 8), "int8": ("kDLInt", 8), "int32": ("kDLInt", 32)}
_C_ELEM = {"float32": "float", "float16": "uint16_t (IEEE half bits)",
           "bfloat16": "uint16_t (bfloat16 bits)", "uint8": "uint8_t", "int8": "int8_t",
           "int32": "int32_t"}



@dataclass
class Exported:
    """What :func:`export` wrote: ``files`` maps a kind (``"so"``, ``"h"``, ...) to its path."""

    directory: Path
    name: str
    symbol: str
    files: dict
    manifest: dict
    skipped: dict = field(default_factory=dict)  # kind -> why it was not written
    extra: dict = field(default_factory=dict)    # CUDA: launches and workspace (in the manifest)


def default_name(spec: MPGemmSpec) -> str:
    """A C identifier naming the kernel of ``spec``, e.g. ``lutc_uniform_w2g128_1x4096x4096_f32``."""
    zp = "zp" if spec.zero_point else ""
    act = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[spec.act_dtype]
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
            _skip(result, "c", why, explicit)   # raises before any file is written if "c" was asked for
            emit.discard("c")
    out.mkdir(parents=True, exist_ok=True)
    if cuda:
        _export_cuda(kernel, result, emit, explicit)
    else:
        _export_cpu(kernel, result, emit, explicit)
    shutil.copyfile(C_DIR / "lutc_weights.h", out / "lutc_weights.h")
    result.manifest = _manifest(kernel, result)
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


# ---------------------------------------------------------------------------------------------
# CPU
def _export_cpu(kernel: Kernel, res: Exported, emit: set, explicit: bool) -> None:
    out, name, symbol = res.directory, res.name, res.symbol
    tgt = tvm.target.Target(dict(kernel.target))
    ex = kernel.executable if _reusable(kernel, symbol) else tvm.compile(_scheduled(kernel, symbol, tgt), target=tgt)
    shutil.copyfile(C_DIR / "lutc_backend.c", out / "lutc_backend.c")
    shutil.copyfile(C_DIR / "lutc_backend.h", out / "lutc_backend.h")
    _copy_headers(out / "include")
    if "o" in emit:
        res.files["o"] = out / f"{name}.o"
        ex.mod.write_to_file(str(res.files["o"]))
    if "so" in emit:
        cc = targets.c_compiler(tgt)
        if cc is None:
            _skip(res, "so", f"no C compiler for {tgt.attrs.get('mtriple')} (install its gcc)", explicit)
        else:
            res.files["so"] = _shared_library(ex, cc, out / f"{name}.so")
    if "c" in emit:
        try:
            res.files["c"] = out / f"{name}.c"
            res.files["c"].write_text(_c_source(kernel, symbol))
        except Exception as e:  # noqa: BLE001  (TVM raises its own error types)
            res.files.pop("c")
            _skip(res, "c", f"TVM's C backend cannot emit this schedule ({_first_line(e)}); the "
                  "C target has no vector types: use a schedule that does not vectorize", explicit)
    res.files["h"] = out / f"{name}.h"
    res.files["h"].write_text(_cpu_header(kernel, name, symbol, res.skipped))


def _shared_library(ex, cc: str, path: Path) -> Path:
    # The backend goes inside the library, so tvm-ffi alone can run it (no libtvm_runtime).
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "lutc_backend.o"
        subprocess.run([cc, "-O2", "-fPIC", "-pthread", "-c", str(C_DIR / "lutc_backend.c"),
                        "-o", str(obj)], check=True, capture_output=True, text=True)
        from tvm.support import cc as tvm_cc
        fcompile = None if cc == _host_cc() else tvm_cc.cross_compiler(cc)
        ex.export_library(str(path), addons=[str(obj)], fcompile=fcompile)
    return path


def _c_source(kernel: Kernel, symbol: str) -> str:
    c = tvm.target.Target({"kind": "c"})
    src = tvm.compile(_scheduled(kernel, symbol, c), target=c).mod.inspect_source()
    prelude = [
        f"/* {symbol}: lutc {_version()} kernel for {_describe(kernel.spec)}, as C source (TVM's",
        " * \"c\" target). Compile with the include/ directory of the export on the include path;",
        " * link lutc_backend.c built with -DLUTC_STANDALONE (or libtvm_runtime + libtvm_ffi).",
        " * Single-threaded: TVM's C backend emits parallel loops as serial loops. */",
        # Several exported C kernels may be linked together: give the module context a
        # per-kernel name (only a tvm-ffi loader of a .so built from this file would look for it).
        f"#define __tvm_ffi__library_ctx __tvm_ffi__library_ctx_{symbol}",
    ]
    if symbol != "main":
        # TVM's C backend adds an entry alias __tvm_ffi_main calling __tvm_ffi_<symbol>; rename
        # it, or two renamed kernels would still both define __tvm_ffi_main.
        prelude.append(f"#define __tvm_ffi_main __tvm_ffi_main_alias_{symbol}")
    if re.search(r"\bhalf\b", src):
        prelude += ["/* TVM's C backend spells float16 `half`; gcc >= 12 and clang have _Float16 on",
                    " * x86-64 and aarch64. Define LUTC_HALF_TYPE to use another 16-bit float type. */",
                    "#ifndef LUTC_HALF_TYPE", "#define LUTC_HALF_TYPE _Float16", "#endif",
                    "typedef LUTC_HALF_TYPE half;"]
    return "\n".join(prelude) + "\n" + src


def _header_intro(kernel: Kernel, name: str, what: str, skipped: dict) -> list:
    """The opening lines both headers share: what is computed, for which target, the kernel's
    own weight layout (from :mod:`lutc.layouts`), and the files that were not written."""
    code = FILE_LAYOUTS.index(kernel.layout)
    lines = [f"/* {name}.h: lutc {_version()} {what}. Generated; do not edit.", " *",
             f" * Computes y[M, N] = x[M, K] @ W[N, K]^T, {_describe(kernel.spec)}.",
             f" * Target {json.dumps(kernel.target)}; schedule {_schedule_text(kernel)}.",
             " *", *_comment(layouts.get(kernel.layout).doc(kernel.spec)),
             f" * Weight files: lutc.save_weights(qw, path, layout=\"{kernel.layout}\") writes these tensors",
             f" *   as they are; lutc_weights.h reads them (check w.h.layout == {name.upper()}_LAYOUT_CODE,",
             f" *   {code}, and the shapes against the macros below).", " *"]
    for kind, why in skipped.items():
        lines += _comment(textwrap.fill(f"{name}.{kind}: not written: {why}", 94, subsequent_indent="  "))
    return lines + ([" *"] if skipped else [])


def _cpu_header(kernel: Kernel, name: str, symbol: str, skipped: dict) -> str:
    spec, args = kernel.spec, _args(kernel.spec, kernel.layout)
    P = name.upper()
    objects = f"{name}.o" if "c" in skipped else f"{name}.o (or {name}.c)"
    lines = _header_intro(kernel, name, "kernel export", skipped) + [
        " * Arguments, in order (compact row-major, 64-byte-aligned buffers; dtypes as DLPack):"]
    lines += [f" *   {a}  {_C_ELEM[d]} [{', '.join(map(str, s))}]" for a, s, d in args]
    lines += [
        " *",
        f" * Entry (tvm-ffi safe call): int __tvm_ffi_{symbol}(void* self, const TVMFFIAny* args,",
        " *   int32_t num_args, TVMFFIAny* ret): args are DLTensor* (type index kTVMFFIDLTensorPtr)",
        " *   in the order above, self and ret unused; returns 0, or -1 after reporting the failed",
        " *   check through TVMFFIErrorSetRaisedFromCStrParts. " + f"{name}_run() below wraps it.",
        f" *   In a shared library loaded by tvm-ffi the function is named \"{symbol}\".",
        " *",
        " * Backend: the LLVM-built object (.o/.so) calls the runtime through three weak function",
        " *   pointers, __TVMBackendParallelLaunch, __TVMBackendAllocWorkspace and",
        " *   __TVMBackendFreeWorkspace; lutc_backend.c fills them at start-up (a pthreads pool and",
        " *   aligned malloc), or assign your own after start-up. The C source (.c) calls",
        " *   TVMBackendAllocWorkspace/TVMBackendFreeWorkspace as functions: build lutc_backend.c",
        " *   with -DLUTC_STANDALONE, which also defines TVMFFIErrorSetRaisedFromCStrParts and",
        " *   lutc_last_error() for hosts without libtvm_ffi.",
        " *",
        f" * Build (static C host): cc -O2 -I<export dir>/include host.c {objects} lutc_backend.c",
        " *   -DLUTC_STANDALONE -pthread -lm",
        " */",
        f"#ifndef {P}_H_", f"#define {P}_H_", "",
        "#include <stdint.h>", "#include <string.h>",
        "#include <tvm/ffi/c_api.h> /* TVMFFIAny, DLTensor (include/ of the export) */", "",
    ]
    lines += _size_macros(P, spec, kernel.layout, args)
    lines += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif",
              f"int __tvm_ffi_{symbol}(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* ret);",
              "#ifdef __cplusplus", "}", "#endif", "",
              "/* y = x @ W^T on raw CPU pointers (the argument order above, weights in layout",
              f" * {kernel.layout}; zeros is ignored without zero points). Returns 0, or -1 on a failed check. */",
              f"static inline int {name}_run(const void* x, const void* planes, const void* scales,",
              "                              const void* zeros, void* out) {"]
    ptrs = {"x": "(void*)x", "planes": "(void*)planes", "scales": "(void*)scales",
            "zeros": "(void*)zeros", "out": "out"}
    lines.append("  (void)zeros;")
    for i, (a, shape, dtype) in enumerate(args):
        lines.append(f"  static int64_t shape{i}[{len(shape)}] = {{{', '.join(map(str, shape))}}};")
    lines += [f"  DLTensor t[{len(args)}];", f"  TVMFFIAny a[{len(args)}], ret;",
              "  memset(t, 0, sizeof t); memset(a, 0, sizeof a); memset(&ret, 0, sizeof ret);"]
    for i, (a, shape, dtype) in enumerate(args):
        code, bits = _DL[dtype]
        lines += [f"  t[{i}].data = {ptrs[a]}; t[{i}].device.device_type = kDLCPU; t[{i}].ndim = {len(shape)};",
                  f"  t[{i}].dtype.code = {code}; t[{i}].dtype.bits = {bits}; t[{i}].dtype.lanes = 1;"
                  f" t[{i}].shape = shape{i};",
                  f"  a[{i}].type_index = kTVMFFIDLTensorPtr; a[{i}].v_ptr = &t[{i}];"]
    lines += [f"  return __tvm_ffi_{symbol}(NULL, a, {len(args)}, &ret);", "}", "",
              f"#endif /* {P}_H_ */", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CUDA
def _export_cuda(kernel: Kernel, res: Exported, emit: set, explicit: bool) -> None:
    out, name, symbol, spec = res.directory, res.name, res.symbol, kernel.spec
    tgt = tvm.target.Target(dict(kernel.target), host=targets.host_cpu())
    mod = _scheduled(kernel, symbol, tgt)
    config = _pass_config(kernel)   # cuda_lut/cuda_mma lower with StorageRewrite off, as build did
    if _reusable(kernel, symbol):
        ex, source = kernel.executable, kernel.source
    else:
        ex, source, _ = compile_cuda(mod, tgt, config)
    launches, workspace = cuda_launches(mod, tgt, config)
    signatures = _cuda_signatures(source)
    res.extra.update(launches=launches, workspace=workspace)
    if "cu" in emit:
        res.files["cu"] = out / f"{name}.cu"
        res.files["cu"].write_text(_linkable(source) + "\n" + _cuda_launcher(
            name, _args(spec, kernel.layout), launches, workspace, signatures))
    if "so" in emit:
        if kernel.runnable:
            res.files["so"] = out / f"{name}.so"
            ex.export_library(str(res.files["so"]))
        else:
            _skip(res, "so", "no GPU in this process: TVM kept CUDA source only; export the .so "
                  "on a machine with a GPU, or build NAME.cu with nvcc", explicit)
    res.files["h"] = out / f"{name}.h"
    res.files["h"].write_text(_cuda_header(kernel, name, symbol, launches, workspace, res.skipped))


def _linkable(source: str) -> str:
    """Make TVM's CUDA helper functions ``inline``, so several exported .cu files link together.

    TVM's CUDA preamble defines host/device helpers (``max(half, half)``, ``make_half4``, ...)
    with external linkage; two exported kernels in one program would define them twice.
    ``inline`` lets the linker merge the identical copies. Kernels (``extern "C" __global__``)
    are untouched: give each export its own ``symbol`` so their names differ.
    """
    return re.sub(r"^((?:__host__\s+)?__device__(?:\s+__host__)?\s+[\w:<>]+\s+\w+\()",
                  r"inline \1", source, flags=re.M)


def cuda_launches(mod: tvm.IRModule, tgt: tvm.target.Target, config: Optional[dict] = None) -> tuple:
    """The kernel launches and workspace buffers of a scheduled CUDA module, from its lowered TIR.

    Lowers ``mod`` through TVM's default TIR pipeline up to the host/device split and reads the
    host function: each ``call_ffi_kernel`` gives a kernel's name, buffer arguments and launch
    extents, each global ``AllocBuffer`` a workspace buffer (the table stages' intermediates).
    ``config``: the schedule's ``PASS_CONFIG`` (the pass options its kernel was compiled with).

    Returns ``(launches, workspace)``: ``launches`` is a list of dicts ``name, args, grid, block,
    dyn_shared_bytes``; ``workspace`` a list of dicts ``name, dtype, elements, bytes, offset``
    (offsets 256-byte aligned, into one device buffer).
    """
    build_mod = importlib.import_module("tvm.tirx.build")
    bound = tvm.tirx.transform.BindTarget(tgt)(mod)
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(tgt)
    with tgt, tvm.transform.PassContext(opt_level=3, config=config or {}):
        host_mod, device_mods = build_mod.split_host_device_mods(pipeline(bound))
    params = {}
    for dmod in device_mods.values():
        for gv, func in dmod.functions.items():
            params[str(func.attrs["global_symbol"])] = [str(p) for p in func.attrs["tirx.kernel_launch_params"]]
    (host,) = list(host_mod.functions.values())
    launches, workspace = [], []

    def visit(stmt):
        kind = type(stmt).__name__
        if kind == "AllocBuffer" and stmt.buffer.scope() == "global":
            b = stmt.buffer
            elems = int(np.prod([int(s) for s in b.shape]))
            workspace.append({"name": str(b.name), "dtype": str(b.dtype), "elements": elems,
                              "bytes": elems * tvm.DataType(str(b.dtype)).bits // 8})
        if kind == "Evaluate" and type(stmt.value).__name__ == "Call" and \
                str(stmt.value.op.name) == "tirx.call_ffi_kernel":
            args = list(stmt.value.args)
            kname = str(args[0].value)
            tags = params[kname]
            bufs, extents = args[1:len(args) - len(tags)], args[len(args) - len(tags):]
            launch = {"name": kname, "args": [str(a).removesuffix(".data") for a in bufs],
                      "grid": [1, 1, 1], "block": [1, 1, 1], "dyn_shared_bytes": 0}
            for tag, ext in zip(tags, extents):
                value = int(ext)
                if tag.startswith("blockIdx."):
                    launch["grid"]["xyz".index(tag[-1])] = value
                elif tag.startswith("threadIdx."):
                    launch["block"]["xyz".index(tag[-1])] = value
                elif "dyn_shared_memory" in tag:
                    launch["dyn_shared_bytes"] = value
            launches.append(launch)

    _walk(host.body, visit)
    offset = 0
    for buf in workspace:
        buf["offset"] = offset
        offset += (buf["bytes"] + 255) // 256 * 256
    return launches, workspace


def _walk(stmt, visit) -> None:
    visit(stmt)
    if type(stmt).__name__ == "SeqStmt":
        for s in stmt.seq:
            _walk(s, visit)
    for fld in ("body", "then_case", "else_case"):
        child = getattr(stmt, fld, None)
        if isinstance(child, tvm.tirx.Stmt):
            _walk(child, visit)


def _cuda_signatures(source: str) -> dict:
    """kernel name -> [(C type, parameter name)] from the ``__global__`` definitions."""
    sigs = {}
    for m in re.finditer(r'__global__\s+void\s+(?:__launch_bounds__\([\d, ]+\)\s+)?(\w+)\(([^)]*)\)', source):
        params = []
        for decl in m.group(2).split(","):
            words = decl.replace("__restrict__", " ").split()
            pname, ctype = words[-1], " ".join(words[:-1])
            while pname.startswith("*"):
                pname, ctype = pname[1:], ctype + "*"
            params.append((ctype, pname))
        sigs[m.group(1)] = params
    return sigs


def _cuda_launcher(name: str, args: list, launches: list, workspace: list, sigs: dict) -> str:
    ws = {w["name"]: w for w in workspace}
    param_names = {a for a, _, _ in args} | {"y"}  # the PrimFunc names a non-float32 output y
    lines = ["", f"// ---- {name}_launch: written by lutc export from the lowered TIR ----",
             f'extern "C" unsigned long long {name}_workspace_bytes(void) {{ return {_ws_total(workspace)}ULL; }}',
             "",
             f'extern "C" int {name}_launch(const void* x, const void* planes, const void* scales,',
             "    const void* zeros, void* out, void* workspace, void* stream) {",
             "  char* ws = (char*)workspace;",
             "  cudaStream_t s = (cudaStream_t)stream;",
             "  (void)ws; (void)zeros;"]
    for launch in launches:
        sig = sigs.get(launch["name"])
        if sig is None or len(sig) != len(launch["args"]):
            raise RuntimeError(f"cannot match kernel {launch['name']} of the lowered TIR to the CUDA "
                               "source; export the .cu by hand")
        exprs = []
        for (ctype, _), arg in zip(sig, launch["args"]):
            if arg in ws:
                exprs.append(f"({ctype})(ws + {ws[arg]['offset']})")
            elif arg in param_names:
                exprs.append(f"({ctype}){'out' if arg == 'y' else arg}")
            else:
                raise RuntimeError(f"kernel {launch['name']} takes {arg!r}, neither an argument nor "
                                   "a workspace buffer")
        g, b = launch["grid"], launch["block"]
        if launch["dyn_shared_bytes"] > 48 * 1024:    # past the default limit: opt in per kernel
            lines.append(f"  if (cudaFuncSetAttribute({launch['name']}, cudaFuncAttributeMaxDynamicSharedMemorySize, "
                         f"{launch['dyn_shared_bytes']}) != cudaSuccess) return (int)cudaGetLastError();")
        lines.append(f"  {launch['name']}<<<dim3({g[0]}, {g[1]}, {g[2]}), dim3({b[0]}, {b[1]}, {b[2]}), "
                     f"{launch['dyn_shared_bytes']}, s>>>({', '.join(exprs)});")
    lines += ["  return (int)cudaGetLastError();", "}", ""]
    return "\n".join(lines)


def _cuda_header(kernel: Kernel, name: str, symbol: str, launches: list, workspace: list,
                 skipped: dict) -> str:
    spec, args = kernel.spec, _args(kernel.spec, kernel.layout)
    P = name.upper()
    lines = _header_intro(kernel, name, "CUDA kernel export", skipped) + [
             " * Arguments of NAME_launch (device pointers; compact row-major, 256-byte aligned as",
             " * cudaMalloc returns them):"]
    lines += [f" *   {a}  {_C_ELEM[d]} [{', '.join(map(str, s))}]" for a, s, d in args]
    lines += [" *   workspace  device buffer of " + f"{P}_WORKSPACE_BYTES bytes (intermediates below)",
              " *   stream     cudaStream_t; the launches are asynchronous on it",
              " *", f" * {name}_launch() in {name}.cu runs these kernels in order on the stream:",
              " *   kernel                 grid            block           dyn smem  arguments"]
    for L in launches:
        lines.append(f" *   {L['name']:<22} {str(tuple(L['grid'])):<15} {str(tuple(L['block'])):<15} "
                     f"{L['dyn_shared_bytes']:<9} {', '.join(L['args'])}")
    lines += [" *", " * Workspace buffers (offsets into workspace):" + ("" if workspace else " none")]
    for w in workspace:
        lines.append(f" *   {w['name']:<14} {w['dtype']:<8} [{w['elements']}]  offset {w['offset']}")
    lines += [" * Kernel parameters (types, names) are those of the __global__ functions in the .cu.",
              " *", f" * Build: nvcc -c -arch={kernel.target.get('arch', 'sm_90a')} {name}.cu "
              "(or -shared -Xcompiler -fPIC)", " */",
              f"#ifndef {P}_H_", f"#define {P}_H_", ""]
    lines += _size_macros(P, spec, kernel.layout, args)
    lines += [f"#define {P}_WORKSPACE_BYTES {_ws_total(workspace)}ULL", f"#define {P}_NUM_LAUNCHES {len(launches)}",
              "", "#ifdef __cplusplus", 'extern "C" {', "#endif",
              f"unsigned long long {name}_workspace_bytes(void);",
              "/* Returns 0 or the cudaError_t of the launches. zeros is ignored without zero points. */",
              f"int {name}_launch(const void* x, const void* planes, const void* scales, const void* zeros,",
              "    void* out, void* workspace, void* stream /* cudaStream_t */);",
              "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {P}_H_ */", ""]
    return "\n".join(lines)


def _schedule_text(kernel: Kernel) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in sorted(kernel.knobs.items()))
    return f"{kernel.schedule}({knobs})" if knobs else kernel.schedule


def _ws_total(workspace: list) -> int:
    return max([w["offset"] + w["bytes"] for w in workspace], default=0)


# ---------------------------------------------------------------------------------------------
# shared helpers
def _scheduled(kernel: Kernel, symbol: str, tgt: tvm.target.Target) -> tvm.IRModule:
    """The kernel's schedule applied again (same spec, schedule and knobs), under ``symbol``."""
    module = importlib.import_module(f"schedules.{kernel.schedule}")
    return scheduled(kernel.spec, tgt, module, kernel.knobs, symbol)


def _reusable(kernel: Kernel, symbol: str) -> bool:
    """Whether ``kernel.executable`` can be written out as is: compiled under ``symbol`` in this
    process (one loaded from the disk cache is a shared library, which TVM cannot write again)."""
    return symbol == "main" and not kernel.from_cache


def _pass_config(kernel: Kernel) -> Optional[dict]:
    """The pass options the kernel's schedule compiles with (``PASS_CONFIG`` of its module)."""
    return getattr(importlib.import_module(f"schedules.{kernel.schedule}"), "PASS_CONFIG", None)


def _args(spec: MPGemmSpec, layout: str) -> list:
    """``(name, shape, dtype)`` of the kernel's arguments in call order, the weight tensors as
    ``layout`` stores them (padded shapes included)."""
    weight = layouts.get(layout).shapes(spec)
    return ([("x", (spec.M, spec.K), spec.act_dtype)]
            + [(name, t.shape, t.dtype) for name, t in weight.items()]
            + [("out", (spec.M, spec.N), spec.act_dtype)])


def _size_macros(P: str, spec: MPGemmSpec, layout: str, args: list) -> list:
    """Sizes, the layout and each argument's shape and bytes as ``#define``s."""
    lay = layouts.get(layout)
    planes_dtype = lay.shapes(spec)["planes"].dtype
    lines = [f"#define {P}_M {spec.M}", f"#define {P}_N {spec.N}", f"#define {P}_K {spec.K}",
             f"#define {P}_WBITS {spec.wbits}", f"#define {P}_PLANES {spec.planes}",
             f'#define {P}_FORMAT "{spec.format}"', f"#define {P}_FORMAT_CODE {FORMATS.index(spec.format)}",
             f"#define {P}_GROUP_SIZE {spec.group_size}", f"#define {P}_GROUPS {spec.groups}",
             f"#define {P}_ZERO_POINT {int(spec.zero_point)}",
             f'#define {P}_ACT_DTYPE "{spec.act_dtype}"', f'#define {P}_SCALE_DTYPE "{spec.scale_dtype}"',
             f'#define {P}_TABLE_DTYPE "{spec.table_dtype}"',
             f'#define {P}_LAYOUT "{layout}"',
             f"#define {P}_LAYOUT_CODE {FILE_LAYOUTS.index(layout)} /* lutc_weights.h: LUTC_LAYOUT_{layout.upper()} */",
             f"#define {P}_LAYOUT_VERSION {lay.version}",
             f"#define {P}_LAYOUT_ROWS {lay.rows} /* rows per tile, N padded to a multiple (0: untiled) */",
             f"#define {P}_N_PADDED {lay.tiles(spec) * lay.rows if lay.rows else spec.N}",
             f'#define {P}_PLANES_DTYPE "{planes_dtype}"', f"#define {P}_PLANES_BITS {nbytes(planes_dtype) * 8}",
             f"#define {P}_NUM_ARGS {len(args)}"]
    for a, shape, dtype in args:
        A = f"{P}_{a.upper()}"
        lines += [f"#define {A}_NDIM {len(shape)}", f"#define {A}_SHAPE {{{', '.join(map(str, shape))}}}",
                  f"#define {A}_BYTES {int(np.prod(shape)) * nbytes(dtype)}"]
    if not spec.zero_point:
        lines += [f"#define {P}_ZEROS_NDIM 0", f"#define {P}_ZEROS_BYTES 0"]
    return lines


def _manifest(kernel: Kernel, res: Exported) -> dict:
    spec = kernel.spec
    m = {"lutc_version": _version(), "name": res.name, "symbol": res.symbol,
         "entry": f"__tvm_ffi_{res.symbol}" if kernel.device == "cpu" else f"{res.name}_launch",
         "device": kernel.device, "spec": spec.key(), "target": kernel.target,
         "schedule": kernel.schedule, "knobs": kernel.knobs, "layout": kernel.layout,
         "layout_version": layouts.get(kernel.layout).version,
         "layout_code": FILE_LAYOUTS.index(kernel.layout),
         "layout_doc": layouts.get(kernel.layout).doc(spec),
         "args": [{"name": a, "shape": list(s), "dtype": d} for a, s, d in _args(spec, kernel.layout)],
         "files": {k: p.name for k, p in res.files.items()}, "skipped": res.skipped}
    m.update(res.extra)
    return m


def _copy_headers(dest: Path) -> None:
    roots = {"tvm_ffi": Path(importlib.import_module("tvm_ffi").__file__).parent / "include",
             "tvm": Path(tvm.__file__).parent / "include"}
    for pkg, headers in _HEADERS.items():
        for h in headers:
            (dest / h).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(roots[pkg] / h, dest / h)


def _host_cc() -> Optional[str]:
    return targets.c_compiler(targets.resolve("host"))


def _skip(res: Exported, kind: str, why: str, explicit: bool) -> None:
    if explicit:
        raise RuntimeError(f"cannot write the {kind!r} export: {why}")
    warnings.warn(f"lutc.export: skipped {kind!r}: {why}", stacklevel=3)
    res.skipped[kind] = why


def _describe(spec: MPGemmSpec) -> str:
    zp = " with zero points" if spec.zero_point else ""
    gs = "per row" if spec.group_size == -1 else f"group {spec.group_size}"
    return (f"M={spec.M} N={spec.N} K={spec.K}, {spec.format} {spec.wbits}-bit weights ({gs}{zp}, "
            f"{spec.scale_dtype} scales), {spec.act_dtype} x/y, LUT g={spec.g}"
            f"{' symmetrized' if spec.symmetrize else ''} {spec.table_dtype} tables")


def _comment(text: str) -> list:
    return [" * " + line if line else " *" for line in text.splitlines()]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]


def _version() -> str:
    from . import __version__
    return __version__


__all__ = ["export", "Exported", "default_name", "c_source_limitation", "cuda_launches"]
