"""Dtype names (the vocabulary of :mod:`lutc.spec`) and their torch dtypes, in one place.

    >>> torch_dtype("float16")
    torch.float16
    >>> dtype_name(torch.bfloat16)
    'bfloat16'
"""
from __future__ import annotations

import torch

#: name -> torch dtype, for every dtype a spec or a packed tensor may name.
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32}
_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (``"float16"`` -> ``torch.float16``)."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; lutc knows {sorted(TORCH_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The name lutc uses for a torch dtype (``torch.float16`` -> ``"float16"``)."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise TypeError(f"lutc has no name for dtype {dtype}") from None


#: The float dtypes' short names: C symbols and suffixes (``lutc_..._f16``), PTX's type names.
SHORT_NAMES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def short_name(name: str) -> str:
    """``"float16"`` -> ``"f16"`` (:data:`SHORT_NAMES`); ``ValueError`` for other dtypes."""
    try:
        return SHORT_NAMES[name]
    except KeyError:
        raise ValueError(f"no short name for dtype {name!r}; lutc has them for {sorted(SHORT_NAMES)}") from None


def nbytes(name: str) -> int:
    """Bytes per element of the dtype called ``name``."""
    return torch_dtype(name).itemsize
