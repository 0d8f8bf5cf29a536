"""Packed weights as plain files, for hosts that run an exported kernel without Python.

Weight files (:func:`save_weights`, :func:`load_weights`, ``lutc/c/lutc_weights.h``), version 2:
a 256-byte header (magic ``LUTCWGT\0``, then the 31 little-endian int64 fields of
:data:`HEADER_FIELDS`) and the tensors ``planes, scales[, zeros]`` as raw little-endian arrays
at 64-byte-aligned offsets, in the layout the weight is in (no repacking: save in
``kernel.layout`` and a host passes the arrays to the kernel as they are). The header names the
layout by its index in :data:`FILE_LAYOUTS` (the ``NAME_LAYOUT_CODE`` of a kernel header; a
fixed list, only ever appended to) and gives the planes' element bits (8: uint8, 32: int32) and
shape, the scales' shape (zeros, where present, have the scales' shape), the format fields and
byte offsets. Version-1 files (bitplane only) are still read. :func:`load_weights` checks every
field against the file and the layout before reading, and names the field it refuses.

Example:
    >>> import os, tempfile, torch, lutc
    >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64)
    >>> path = save_weights(qw, os.path.join(tempfile.mkdtemp(), "w.lutcw"), layout="tiles64")
    >>> back = load_weights(path)
    >>> back.layout, bool((back.dequantize() == qw.dequantize()).all())
    ('tiles64', True)
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from . import layouts
from .dtypes import dtype_name, nbytes, torch_dtype
from .formats import PackedWeights, check_layout, repack
from .spec import FORMATS, SCALE_DTYPES, MPGemmSpec, SpecError

PathLike = Union[str, os.PathLike]

#: Layout codes of weight files (header field ``layout``) and kernel headers
#: (``NAME_LAYOUT_CODE``): a fixed list, only ever appended to, spelled again as the
#: ``LUTC_LAYOUT_*`` codes of ``lutc_weights.h``. Code 0 is ``bitplane``, what version-1 files hold.
FILE_LAYOUTS = ("bitplane", "tiles32", "tiles64", "tiles128", "ptiles32", "ptiles64", "dot4", "dot16",
                "warp32", "tc16", "gtiles32")

_MAGIC = b"LUTCWGT\0"
_FILE_VERSION = 2
_READS = (1, 2)                  # file versions load_weights (and lutc_weights.h) read
_HEADER = struct.Struct("<8s31q")  # 256 bytes; field order of lutc_weights_header in lutc_weights.h
_MAX_SCALES_NDIM, _MAX_PLANES_NDIM = 4, 5
#: The weight file header's 31 int64 fields, in order (struct lutc_weights_header of
#: lutc_weights.h names them alike). Fields 21 on were reserved (zero) in version 1: zero there
#: reads as scales_shape[3] = 0 and layout 0, bitplane.
HEADER_FIELDS = ("file_version", "layout_version", "format", "wbits", "planes", "N", "K",
                 "group_size", "groups", "zero_point", "scale_bits", "planes_offset", "planes_bytes",
                 "scales_offset", "scales_bytes", "zeros_offset", "zeros_bytes", "scales_ndim",
                 *(f"scales_shape[{i}]" for i in range(_MAX_SCALES_NDIM)),
                 "layout", "planes_bits", "planes_ndim",
                 *(f"planes_shape[{i}]" for i in range(_MAX_PLANES_NDIM)), "reserved")
#: scale_bits -> scale dtype
_SCALE_DTYPES = {nbytes(d) * 8: d for d in SCALE_DTYPES}
_TENSORS = ("planes", "scales", "zeros")


def save_weights(qw: PackedWeights, path: PathLike, layout: Optional[str] = None) -> Path:
    """Write ``qw`` to ``path`` (read in C by ``lutc_weights.h``) plus ``path + ".json"``.

    The file (version 2, module docstring) holds the tensors in ``qw``'s own layout, or in
    ``layout`` when given (repacked first, e.g. ``layout=kernel.layout`` for an exported
    kernel): a 256-byte header (magic, versions, format, layout code, shapes, dtypes, offsets;
    see ``lutc/c/lutc_weights.h``) followed by ``planes``, ``scales`` and ``zeros`` as raw
    little-endian arrays at 64-byte-aligned offsets. The JSON repeats the metadata, with the
    layout's byte order, for programs that read the raw arrays themselves.

    Example:
        >>> import torch, lutc, tempfile, os
        >>> qw = lutc.quantize(torch.randn(64, 256), wbits=2, group_size=64, zero_point=True)
        >>> path = save_weights(qw, os.path.join(tempfile.mkdtemp(), "w.lutcw"), layout="ptiles64")
        >>> back = load_weights(path)
        >>> back.layout, torch.equal(back.dequantize(), qw.dequantize())
        ('ptiles64', True)
    """
    if not isinstance(qw, PackedWeights):
        raise TypeError(f"qw must be lutc.PackedWeights, got {type(qw).__name__}")
    check_layout(qw.layout, qw.layout_version)  # refuses a layout this lutc does not read
    if qw.perm is not None:   # a host would have to gather x's features; the file format has no field
        raise ValueError("this weight has a column order (act-order, PackedWeights.perm), which weight "
                         "files do not store yet")
    if layout is not None:
        qw = repack(qw, layout)
    tensors = [t.detach().cpu().contiguous() for t in qw.tensors()]
    for name, t, limit in zip(_TENSORS, tensors, (_MAX_PLANES_NDIM, _MAX_SCALES_NDIM, _MAX_SCALES_NDIM)):
        if t.dim() > limit:   # a future layout of higher rank needs a new file version
            raise ValueError(f"weight files hold {name} of at most {limit} dimensions; layout "
                             f"{qw.layout!r} has {t.dim()}")
    blobs = [t.numpy().tobytes() for t in tensors]  # little-endian on every host lutc runs on
    offsets, pos = [], _HEADER.size
    for blob in blobs:
        pos = (pos + 63) // 64 * 64
        offsets.append(pos)
        pos += len(blob)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(_HEADER.pack(_MAGIC, *_header_fields(qw, tensors, offsets, blobs)))
        for off, blob in zip(offsets, blobs):
            f.write(b"\0" * (off - f.tell()))
            f.write(blob)
    spec = qw.weight_spec()
    meta = {k: v for k, v in qw.state().items() if not isinstance(v, torch.Tensor)}
    meta.update(file_version=_FILE_VERSION, layout_code=FILE_LAYOUTS.index(qw.layout),
                planes=spec.planes, groups=spec.groups,
                tensors={n: {"offset": o, "bytes": len(b), "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
                         for n, o, b, t in zip(_TENSORS, offsets, blobs, tensors)},
                layout_doc=layouts.get(qw.layout).doc(spec))
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _header_fields(qw: PackedWeights, tensors: list, offsets: list, blobs: list) -> list:
    """The 31 int64 header fields of ``qw`` (version 2), in :data:`HEADER_FIELDS` order."""
    spec = qw.weight_spec()
    planes, scales = tensors[0], tensors[1]
    h = dict(file_version=_FILE_VERSION, layout_version=qw.layout_version,
             format=FORMATS.index(qw.format), wbits=qw.wbits, planes=spec.planes, N=qw.N, K=qw.K,
             group_size=qw.group_size, groups=spec.groups, zero_point=int(qw.zero_point),
             scale_bits=nbytes(qw.scale_dtype) * 8, layout=FILE_LAYOUTS.index(qw.layout),
             planes_bits=planes.element_size() * 8, planes_ndim=planes.dim(), scales_ndim=scales.dim())
    for name, off, blob in zip(_TENSORS, offsets, blobs):
        h[f"{name}_offset"], h[f"{name}_bytes"] = off, len(blob)
    for name, t in (("planes", planes), ("scales", scales)):
        h.update({f"{name}_shape[{i}]": n for i, n in enumerate(t.shape)})
    return [h.get(f, 0) for f in HEADER_FIELDS]


def load_weights(path: PathLike) -> PackedWeights:
    """Read a file of :func:`save_weights` (version 2, or 1) back, in the layout it holds.

    Every header field is checked before any tensor is read: the magic, the file and layout
    versions, the format, layout and dtype codes, the shapes against the layout's for the
    header's ``N``, ``K`` and groups, and each tensor's bytes against the file's length. A
    damaged or foreign file raises ``ValueError`` naming the file and the field.

    Example:
        >>> import torch, lutc, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "w.lutcw")
        >>> _ = save_weights(lutc.quantize(torch.randn(64, 256), wbits=4), path, layout="tiles64")
        >>> qw = load_weights(path)
        >>> qw.layout, qw.planes.shape
        ('tiles64', torch.Size([1, 64, 4, 32]))
    """
    data = Path(path).read_bytes()
    h = _read_header(path, data)
    spec, layout = _header_weight(path, h)
    expected = layout.shapes(spec)
    _check_tensor_fields(path, h, expected, len(data))
    buf = bytearray(data)   # one writable copy for torch.frombuffer; each tensor clones its part

    def tensor(name):
        t = expected[name]
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=h[f"{name}_bytes"], offset=h[f"{name}_offset"])
        return raw.view(torch_dtype(t.dtype)).reshape(t.shape).clone()

    return PackedWeights(format=spec.format, wbits=spec.wbits, N=spec.N, K=spec.K,
                         group_size=spec.group_size, zero_point=spec.zero_point,
                         scale_dtype=spec.scale_dtype, planes=tensor("planes"), scales=tensor("scales"),
                         zeros=tensor("zeros") if spec.zero_point else None,
                         layout=layout.name, layout_version=layout.version)


def _read_header(path, data: bytes) -> dict:
    """The header fields of ``data`` by name; version-1 files get their implied layout fields."""
    if data[:8] != _MAGIC:
        raise ValueError(f"{path} is not a lutc weight file: it does not start with {_MAGIC!r}")
    if len(data) < _HEADER.size:
        raise ValueError(f"{path}: file is truncated: the header needs bytes 0..{_HEADER.size}, the "
                         f"file has {len(data)} bytes")
    h = dict(zip(HEADER_FIELDS, _HEADER.unpack_from(data)[1:]))
    if h["file_version"] not in _READS:
        raise ValueError(f"{path}: field file_version is {h['file_version']}; this lutc reads weight "
                         f"files of versions {', '.join(map(str, _READS))}")
    if h["file_version"] == 1:   # bitplane only: the planes fields were not written
        h.update(layout=FILE_LAYOUTS.index(layouts.BITPLANE), planes_bits=8, planes_ndim=None)
    return h


def _header_weight(path, h: dict) -> tuple:
    """The weight's :class:`MPGemmSpec` (M = 1) and layout the header describes, each field checked."""
    def bad(name, why):
        return ValueError(f"{path}: field {name} is {h[name]}; {why}")

    if not 0 <= h["layout"] < len(FILE_LAYOUTS):
        raise bad("layout", f"layout codes are 0..{len(FILE_LAYOUTS) - 1} ({', '.join(FILE_LAYOUTS)})")
    layout = layouts.get(FILE_LAYOUTS[h["layout"]])
    if h["layout_version"] != layout.version:
        raise bad("layout_version", f"layout {layout.name!r} v{h['layout_version']}: this lutc reads "
                  f"v{layout.version}")
    if not 0 <= h["format"] < len(FORMATS):
        raise bad("format", f"format codes are 0..{len(FORMATS) - 1} ({', '.join(FORMATS)})")
    if h["wbits"] not in (1, 2, 3, 4):
        raise bad("wbits", "weights have 1-4 bits")
    if h["zero_point"] not in (0, 1):
        raise bad("zero_point", "it is 0 or 1")
    if h["scale_bits"] not in _SCALE_DTYPES:
        raise bad("scale_bits", f"scales are {' or '.join(map(str, sorted(_SCALE_DTYPES)))}-bit floats")
    try:
        spec = MPGemmSpec.of_weight(h["N"], h["K"], dict(
            wbits=h["wbits"], format=FORMATS[h["format"]], group_size=h["group_size"],
            zero_point=bool(h["zero_point"]), scale_dtype=_SCALE_DTYPES[h["scale_bits"]]))
        layout.check(spec)
    except SpecError as e:
        raise ValueError(f"{path}: the fields N, K, wbits, format, group_size, zero_point describe "
                         f"no weight lutc packs: {e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: layout {layout.name!r} cannot hold this weight: {e}") from None
    for name in ("planes", "groups"):
        if h[name] != getattr(spec, name):
            raise bad(name, f"a {spec.format} w{spec.wbits} weight of K={spec.K}, group_size="
                      f"{spec.group_size} has {getattr(spec, name)}")
    return spec, layout


def _check_tensor_fields(path, h: dict, expected: dict, size: int) -> None:
    """Each tensor's element bits, shape, bytes and place in a file of ``size`` bytes."""
    planes_bits = nbytes(expected["planes"].dtype) * 8
    if h["planes_bits"] != planes_bits:
        raise ValueError(f"{path}: field planes_bits is {h['planes_bits']}; layout "
                         f"{FILE_LAYOUTS[h['layout']]!r} stores {expected['planes'].dtype} planes ({planes_bits})")
    for name, limit in (("planes", _MAX_PLANES_NDIM), ("scales", _MAX_SCALES_NDIM)):
        ndim = h[f"{name}_ndim"]
        if ndim is None:   # version 1: implied by the layout
            continue
        shape = tuple(h[f"{name}_shape[{i}]"] for i in range(ndim)) if 0 < ndim <= limit else None
        if shape != expected[name].shape:
            got = f"{name}_ndim {ndim}, {name}_shape {list(shape) if shape else '?'}"
            raise ValueError(f"{path}: fields {got}; layout {FILE_LAYOUTS[h['layout']]!r} of this weight "
                             f"stores {name} {list(expected[name].shape)}")
    if "zeros" not in expected and (h["zeros_offset"] or h["zeros_bytes"]):
        raise ValueError(f"{path}: fields zeros_offset, zeros_bytes are {h['zeros_offset']}, "
                         f"{h['zeros_bytes']}; a weight without zero points has no zeros (0, 0)")
    for name, t in expected.items():
        off, n = h[f"{name}_offset"], h[f"{name}_bytes"]
        want = int(np.prod(t.shape)) * nbytes(t.dtype)
        if n != want:
            raise ValueError(f"{path}: field {name}_bytes is {n}; {name} {t.dtype} "
                             f"{list(t.shape)} take {want} bytes")
        if off < _HEADER.size:
            raise ValueError(f"{path}: field {name}_offset is {off}; tensors start after the "
                             f"{_HEADER.size}-byte header")
        if off + n > size:
            raise ValueError(f"{path}: file is truncated: {name} need bytes {off}..{off + n}, the "
                             f"file has {size} bytes")


__all__ = ["save_weights", "load_weights", "FILE_LAYOUTS", "HEADER_FIELDS"]
