"""CUDA export: the kernels' CUDA C source with ``NAME_launch()`` (grid, block and workspace read
from the lowered TIR), the TVM module where a GPU compiled it, and the header."""
from __future__ import annotations

import importlib
import re
from typing import Optional

import numpy as np
import tvm

from .. import target as targets
from ..build import compile_cuda
from ..runtime import Kernel
from .common import (C_ELEMENTS, Exported, arguments, header_intro, pass_config, reusable, scheduled_again,
                     size_macros, skip)


def export_cuda(kernel: Kernel, res: Exported, emit: set, explicit: bool) -> None:
    out, name, symbol, spec = res.directory, res.name, res.symbol, kernel.spec
    tgt = tvm.target.Target(dict(kernel.target), host=targets.host_cpu())
    mod = scheduled_again(kernel, symbol, tgt)
    config = pass_config(kernel)   # cuda_lut/cuda_mma lower with StorageRewrite off, as build did
    if reusable(kernel, symbol):
        ex, source = kernel.executable, kernel.source
    else:
        ex, source, _ = compile_cuda(mod, tgt, config)
    launches, workspace = cuda_launches(mod, tgt, config)
    signatures = cuda_signatures(source)
    res.extra.update(launches=launches, workspace=workspace)
    if "cu" in emit:
        res.files["cu"] = out / f"{name}.cu"
        res.files["cu"].write_text(linkable(source) + "\n" + cuda_launcher(
            name, arguments(spec, kernel.layout), launches, workspace, signatures))
    if "so" in emit:
        if kernel.runnable:
            res.files["so"] = out / f"{name}.so"
            ex.export_library(str(res.files["so"]))
        else:
            skip(res, "so", "no GPU in this process: TVM kept CUDA source only; export the .so "
                  "on a machine with a GPU, or build NAME.cu with nvcc", explicit)
    res.files["h"] = out / f"{name}.h"
    res.files["h"].write_text(cuda_header(kernel, name, symbol, launches, workspace, res.skipped))


def linkable(source: str) -> str:
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

    walk(host.body, visit)
    offset = 0
    for buf in workspace:
        buf["offset"] = offset
        offset += (buf["bytes"] + 255) // 256 * 256
    return launches, workspace


def walk(stmt, visit) -> None:
    visit(stmt)
    if type(stmt).__name__ == "SeqStmt":
        for s in stmt.seq:
            walk(s, visit)
    for fld in ("body", "then_case", "else_case"):
        child = getattr(stmt, fld, None)
        if isinstance(child, tvm.tirx.Stmt):
            walk(child, visit)


def cuda_signatures(source: str) -> dict:
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


def cuda_launcher(name: str, args: list, launches: list, workspace: list, sigs: dict) -> str:
    ws = {w["name"]: w for w in workspace}
    param_names = {a for a, _, _ in args} | {"y"}  # the PrimFunc names a non-float32 output y
    lines = ["", f"// ---- {name}_launch: written by lutc export from the lowered TIR ----",
             f'extern "C" unsigned long long {name}_workspace_bytes(void) {{ return {workspace_total(workspace)}ULL; }}',
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


def cuda_header(kernel: Kernel, name: str, symbol: str, launches: list, workspace: list,
                 skipped: dict) -> str:
    spec, args = kernel.spec, arguments(kernel.spec, kernel.layout)
    P = name.upper()
    lines = header_intro(kernel, name, "CUDA kernel export", skipped) + [
             " * Arguments of NAME_launch (device pointers; compact row-major, 256-byte aligned as",
             " * cudaMalloc returns them):"]
    lines += [f" *   {a}  {C_ELEMENTS[d]} [{', '.join(map(str, s))}]" for a, s, d in args]
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
              " *", f" * Build: nvcc -c -arch={targets.facts(kernel.target).cuda_arch} {name}.cu "
              "(or -shared -Xcompiler -fPIC)", " */",
              f"#ifndef {P}_H_", f"#define {P}_H_", ""]
    lines += size_macros(P, spec, kernel.layout, args)
    lines += [f"#define {P}_WORKSPACE_BYTES {workspace_total(workspace)}ULL", f"#define {P}_NUM_LAUNCHES {len(launches)}",
              "", "#ifdef __cplusplus", 'extern "C" {', "#endif",
              f"unsigned long long {name}_workspace_bytes(void);",
              "/* Returns 0 or the cudaError_t of the launches. zeros is ignored without zero points. */",
              f"int {name}_launch(const void* x, const void* planes, const void* scales, const void* zeros,",
              "    void* out, void* workspace, void* stream /* cudaStream_t */);",
              "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {P}_H_ */", ""]
    return "\n".join(lines)


def workspace_total(workspace: list) -> int:
    return max([w["offset"] + w["bytes"] for w in workspace], default=0)
