"""Run the exported kernel.so through tvm-ffi alone (numpy + apache-tvm-ffi; no lutc, no TVM).

    python examples/c_host/run_so.py OUT [bound]

Reads OUT/kernel.json (the export's manifest), loads the library with ``tvm_ffi.load_module``,
reads OUT/weights.lutcw (saved in the kernel's layout) with the few lines of
:func:`read_weights` (the format of ``lutc_weights.h``), runs the kernel on OUT/x.bin and
compares with OUT/ref.bin (default bound: the manifest's ``tolerance``, lutc's bound for the
kernel's spec, relative to max |y|). Exits 1
on a mismatch. The tests run it in a process where importing lutc or tvm fails.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import tvm_ffi

HEADER = struct.Struct("<8s31q")  # lutc_weights.h: magic + 31 int64 fields
PLANES_DTYPES = {8: np.uint8, 32: np.int32}


def aligned(a: np.ndarray) -> np.ndarray:
    """A 64-byte-aligned copy (the kernel assumes aligned buffers and does not check)."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def read_weights(path) -> tuple:
    """``(layout code, {"planes", "scales"[, "zeros"]: array})`` of a version-2 weight file
    (the field order of lutc_weights_header; checks left to the kernel and lutc.load_weights)."""
    data = Path(path).read_bytes()
    magic, *h = HEADER.unpack_from(data)
    if magic != b"LUTCWGT\0" or h[0] != 2:
        raise SystemExit(f"{path}: not a lutc weight file of version 2")
    zp, sbits = h[9], h[10]
    sdt = np.float16 if sbits == 16 else np.float32
    layout, planes_bits, planes_ndim = h[22], h[23], h[24]

    def arr(off, nbytes, dtype, shape):
        return np.frombuffer(data, np.uint8, nbytes, off).view(dtype).reshape(shape)

    scales_shape = tuple(h[18:18 + h[17]])
    w = {"planes": arr(h[11], h[12], PLANES_DTYPES[planes_bits], tuple(h[25:25 + planes_ndim])),
         "scales": arr(h[13], h[14], sdt, scales_shape)}
    if zp:
        w["zeros"] = arr(h[15], h[16], sdt, scales_shape)
    return layout, w


def main() -> int:
    out = Path(sys.argv[1])
    manifest = json.loads((out / "kernel.json").read_text())
    if len(sys.argv) < 3 and "tolerance" not in manifest:
        sys.exit("kernel.json has no 'tolerance' (exported by an older lutc): export again, or pass the bound")
    bound = float(sys.argv[2]) if len(sys.argv) > 2 else manifest["tolerance"]
    fn = tvm_ffi.load_module(str(out / manifest["files"]["so"]))[manifest["symbol"]]
    shapes = {a["name"]: tuple(a["shape"]) for a in manifest["args"]}
    layout, arrays = read_weights(out / "weights.lutcw")
    if layout != manifest["layout_code"]:
        raise SystemExit(f"weights.lutcw has layout code {layout}; the kernel reads {manifest['layout']} "
                         f"({manifest['layout_code']})")
    arrays["x"] = np.fromfile(out / "x.bin", np.float32).reshape(shapes["x"])
    arrays["out"] = np.full(shapes["out"], np.nan, np.float32)  # poisoned
    args = [aligned(arrays[a["name"]]) for a in manifest["args"]]
    fn(*[tvm_ffi.from_dlpack(a) for a in args])
    y, ref = args[-1].astype(np.float64), np.fromfile(out / "ref.bin", np.float64).reshape(shapes["out"])
    err = float(np.abs(y - ref).max() / np.abs(ref).max()) if np.isfinite(y).all() else float("inf")
    ok = err <= bound
    leaked = [m for m in ("lutc", "tvm") if sys.modules.get(m) is not None]
    print(f"run_so (tvm-ffi {tvm_ffi.__version__}): max relative error {err:.3e} (bound {bound:.0e}): "
          f"{'OK' if ok else 'MISMATCH'}; modules lutc/tvm loaded: {leaked or 'none'}")
    return 0 if ok and not leaked else 1


if __name__ == "__main__":
    sys.exit(main())
