"""CPU export: the kernel as a shared library (the TVM backend services linked in), a relocatable
object, plain C source where TVM's C target can write it, and its header with ``NAME_run()``."""
from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import tvm

from .. import target as targets
from ..runtime import Kernel
from .common import (C_DIR, C_ELEMENTS, DL_TYPES, Exported, arguments, describe, first_line, header_intro,
                     reusable, scheduled_again, size_macros, skip, version)

#: The tvm-ffi / TVM C headers that the generated C code and the headers include.
HEADERS = {"tvm_ffi": ("dlpack/dlpack.h", "tvm/ffi/c_api.h", "tvm/ffi/extra/c_env_api.h"),
           "tvm": ("tvm/runtime/base.h", "tvm/runtime/c_backend_api.h")}


def export_cpu(kernel: Kernel, res: Exported, emit: set, explicit: bool) -> None:
    out, name, symbol = res.directory, res.name, res.symbol
    tgt = tvm.target.Target(dict(kernel.target))
    ex = kernel.executable if reusable(kernel, symbol) else tvm.compile(scheduled_again(kernel, symbol, tgt), target=tgt)
    shutil.copyfile(C_DIR / "lutc_backend.c", out / "lutc_backend.c")
    shutil.copyfile(C_DIR / "lutc_backend.h", out / "lutc_backend.h")
    copy_headers(out / "include")
    if "o" in emit:
        res.files["o"] = out / f"{name}.o"
        ex.mod.write_to_file(str(res.files["o"]))
    if "so" in emit:
        cc = targets.c_compiler(tgt)
        if cc is None:
            skip(res, "so", f"no C compiler for {tgt.attrs.get('mtriple')} (install its gcc)", explicit)
        else:
            res.files["so"] = shared_library(ex, cc, out / f"{name}.so")
    if "c" in emit:
        try:
            res.files["c"] = out / f"{name}.c"
            res.files["c"].write_text(c_source(kernel, symbol))
        except Exception as e:  # noqa: BLE001  (TVM raises its own error types)
            res.files.pop("c")
            skip(res, "c", f"TVM's C backend cannot emit this schedule ({first_line(e)}); the "
                  "C target has no vector types: use a schedule that does not vectorize", explicit)
    res.files["h"] = out / f"{name}.h"
    res.files["h"].write_text(cpu_header(kernel, name, symbol, res.skipped))


def shared_library(ex, cc: str, path: Path) -> Path:
    # The backend goes inside the library, so tvm-ffi alone can run it (no libtvm_runtime).
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "lutc_backend.o"
        subprocess.run([cc, "-O2", "-fPIC", "-pthread", "-c", str(C_DIR / "lutc_backend.c"),
                        "-o", str(obj)], check=True, capture_output=True, text=True)
        from tvm.support import cc as tvm_cc
        fcompile = None if cc == host_cc() else tvm_cc.cross_compiler(cc)
        ex.export_library(str(path), addons=[str(obj)], fcompile=fcompile)
    return path


def c_source(kernel: Kernel, symbol: str) -> str:
    c = tvm.target.Target({"kind": "c"})
    src = tvm.compile(scheduled_again(kernel, symbol, c), target=c).mod.inspect_source()
    prelude = [
        f"/* {symbol}: lutc {version()} kernel for {describe(kernel.spec)}, as C source (TVM's",
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


def cpu_header(kernel: Kernel, name: str, symbol: str, skipped: dict) -> str:
    spec, args = kernel.spec, arguments(kernel.spec, kernel.layout)
    P = name.upper()
    objects = f"{name}.o" if "c" in skipped else f"{name}.o (or {name}.c)"
    lines = header_intro(kernel, name, "kernel export", skipped) + [
        " * Arguments, in order (compact row-major, 64-byte-aligned buffers; dtypes as DLPack):"]
    lines += [f" *   {a}  {C_ELEMENTS[d]} [{', '.join(map(str, s))}]" for a, s, d in args]
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
    lines += size_macros(P, spec, kernel.layout, args)
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
        code, bits = DL_TYPES[dtype]
        lines += [f"  t[{i}].data = {ptrs[a]}; t[{i}].device.device_type = kDLCPU; t[{i}].ndim = {len(shape)};",
                  f"  t[{i}].dtype.code = {code}; t[{i}].dtype.bits = {bits}; t[{i}].dtype.lanes = 1;"
                  f" t[{i}].shape = shape{i};",
                  f"  a[{i}].type_index = kTVMFFIDLTensorPtr; a[{i}].v_ptr = &t[{i}];"]
    lines += [f"  return __tvm_ffi_{symbol}(NULL, a, {len(args)}, &ret);", "}", "",
              f"#endif /* {P}_H_ */", ""]
    return "\n".join(lines)


def copy_headers(dest: Path) -> None:
    roots = {"tvm_ffi": Path(importlib.import_module("tvm_ffi").__file__).parent / "include",
             "tvm": Path(tvm.__file__).parent / "include"}
    for pkg, headers in HEADERS.items():
        for h in headers:
            (dest / h).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(roots[pkg] / h, dest / h)


def host_cc() -> Optional[str]:
    return targets.c_compiler(targets.resolve("host"))
