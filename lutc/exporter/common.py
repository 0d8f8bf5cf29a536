"""What the CPU and CUDA exports share: the result record, the kernel's arguments and size
macros, the header's opening lines, the manifest, and how a file that cannot be written is
skipped or refused."""
from __future__ import annotations

import json
import os
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import tvm

import schedules
from schedules import contract

from .. import layouts
from ..build import scheduled
from ..dtypes import nbytes
from ..runtime import Kernel
from ..spec import FORMATS, MPGemmSpec
from ..testing import tolerance
from ..weight_files import FILE_LAYOUTS

PathLike = Union[str, os.PathLike]
#: The C files written beside exported kernels (``lutc/c``).
C_DIR = Path(__file__).parent.parent / "c"
#: lutc dtype name -> DLPack type code and bits, and the C element type a host uses.
DL_TYPES = {"float32": ("kDLFloat", 32), "float16": ("kDLFloat", 16), "bfloat16": ("kDLBfloat", 16),
            "uint8": ("kDLUInt", 8), "int8": ("kDLInt", 8), "int32": ("kDLInt", 32)}
C_ELEMENTS = {"float32": "float", "float16": "uint16_t (IEEE half bits)",
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


def header_intro(kernel: Kernel, name: str, what: str, skipped: dict) -> list:
    """The opening lines both headers share: what is computed, for which target, the kernel's
    own weight layout (from :mod:`lutc.layouts`), and the files that were not written."""
    code = FILE_LAYOUTS.index(kernel.layout)
    lines = [f"/* {name}.h: lutc {version()} {what}. Generated; do not edit.", " *",
             f" * Computes y[M, N] = x[M, K] @ W[N, K]^T, {describe(kernel.spec)}.",
             f" * Target {json.dumps(kernel.target)}; schedule {schedule_text(kernel)}.",
             " *", *comment(layouts.get(kernel.layout).doc(kernel.spec)),
             f" * Weight files: lutc.save_weights(qw, path, layout=\"{kernel.layout}\") writes these tensors",
             f" *   as they are; lutc_weights.h reads them (check w.h.layout == {name.upper()}_LAYOUT_CODE,",
             f" *   {code}, and the shapes against the macros below).", " *"]
    for kind, why in skipped.items():
        lines += comment(textwrap.fill(f"{name}.{kind}: not written: {why}", 94, subsequent_indent="  "))
    return lines + ([" *"] if skipped else [])


def schedule_text(kernel: Kernel) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in sorted(kernel.knobs.items()))
    return f"{kernel.schedule}({knobs})" if knobs else kernel.schedule


def scheduled_again(kernel: Kernel, symbol: str, tgt: tvm.target.Target) -> tvm.IRModule:
    """The kernel's schedule applied again (same spec, schedule and knobs), under ``symbol``."""
    return scheduled(kernel.spec, tgt, schedules.named(kernel.schedule), kernel.knobs, symbol)


def reusable(kernel: Kernel, symbol: str) -> bool:
    """Whether ``kernel.executable`` can be written out as is: compiled under ``symbol`` in this
    process (one loaded from the disk cache is a shared library, which TVM cannot write again)."""
    return symbol == "main" and not kernel.from_cache


def pass_config(kernel: Kernel) -> Optional[dict]:
    """The pass options the kernel's schedule compiles with (``PASS_CONFIG`` of its module)."""
    return contract.pass_config(schedules.named(kernel.schedule))


def arguments(spec: MPGemmSpec, layout: str) -> list:
    """``(name, shape, dtype)`` of the kernel's arguments in call order, the weight tensors as
    ``layout`` stores them (padded shapes included)."""
    weight = layouts.get(layout).shapes(spec)
    return ([("x", (spec.M, spec.K), spec.act_dtype)]
            + [(name, t.shape, t.dtype) for name, t in weight.items()]
            + [("out", (spec.M, spec.N), spec.act_dtype)])


def size_macros(P: str, spec: MPGemmSpec, layout: str, args: list) -> list:
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
             f"#define {P}_TOLERANCE {tolerance(spec)!r} /* max |y - ref| / max |ref| lutc accepts (lutc.testing) */",
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


def manifest(kernel: Kernel, res: Exported) -> dict:
    spec = kernel.spec
    m = {"lutc_version": version(), "name": res.name, "symbol": res.symbol,
         "entry": f"__tvm_ffi_{res.symbol}" if kernel.device == "cpu" else f"{res.name}_launch",
         "device": kernel.device, "spec": spec.key(), "target": kernel.target,
         "schedule": kernel.schedule, "knobs": kernel.knobs, "layout": kernel.layout,
         "layout_version": layouts.get(kernel.layout).version,
         "layout_code": FILE_LAYOUTS.index(kernel.layout),
         "layout_doc": layouts.get(kernel.layout).doc(spec),
         "tolerance": tolerance(spec),
         "args": [{"name": a, "shape": list(s), "dtype": d} for a, s, d in arguments(spec, kernel.layout)],
         "files": {k: p.name for k, p in res.files.items()}, "skipped": res.skipped}
    m.update(res.extra)
    return m


def skip(res: Exported, kind: str, why: str, explicit: bool) -> None:
    if explicit:
        raise RuntimeError(f"cannot write the {kind!r} export: {why}")
    warnings.warn(f"lutc.export: skipped {kind!r}: {why}", stacklevel=3)
    res.skipped[kind] = why


def describe(spec: MPGemmSpec) -> str:
    zp = " with zero points" if spec.zero_point else ""
    gs = "per row" if spec.group_size == -1 else f"group {spec.group_size}"
    return (f"M={spec.M} N={spec.N} K={spec.K}, {spec.format} {spec.wbits}-bit weights ({gs}{zp}, "
            f"{spec.scale_dtype} scales), {spec.act_dtype} x/y, LUT g={spec.g}"
            f"{' symmetrized' if spec.symmetrize else ''} {spec.table_dtype} tables")


def comment(text: str) -> list:
    return [" * " + line if line else " *" for line in text.splitlines()]


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]


def version() -> str:
    from .. import __version__
    return __version__
