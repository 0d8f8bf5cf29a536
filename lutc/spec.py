"""The workload: one mixed-precision GEMM ``y[M, N] = x[M, K] @ W[N, K]^T`` with low-bit ``W``.

An :class:`MPGemmSpec` names everything that changes the generated code: the shape, the weight
format (bit width, grouping, zero points), the activation dtype, and the LUT knobs of the
algorithm itself (activation group ``g``, table symmetrization, table dtype). Schedules,
tuning logs and kernel caches are keyed by it, so it is a frozen, hashable value with a
canonical dict form (:meth:`MPGemmSpec.key`).

This module imports neither TVM nor torch: it is the vocabulary every other layer shares.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Mapping, Optional

FORMATS = ("uniform", "bcq", "ternary")
ACT_DTYPES = ("float32", "float16", "bfloat16")
#: float32 tables (exact to float rounding) or int8 tables with a scale per block (bound (4) of
#: lutc.frontend). No kernel stores float16 tables, so none is offered.
TABLE_DTYPES = ("float32", "int8")
SCALE_DTYPES = ("float32", "float16")
GROUP_SIZES = (32, 64, 128, -1)
#: Bits per weight (bit planes) lutc packs and builds.
BIT_WIDTHS = (1, 2, 3, 4)
ACT_GROUPS = (2, 4)
#: Longest run of activations summed before a (float) scale is applied; see ``MPGemmSpec.block``.
MAX_BLOCK = 128
#: Version of the packed-weight layout this lutc reads and writes (see ``lutc.formats``).
LAYOUT_VERSION = 1


_INT_FIELDS = ("M", "N", "K", "wbits", "group_size", "g")
#: What describes a packed weight besides its shape ``N x K``: the fields a ``PackedWeights``, a
#: weight file's header, a ``LUTLinear`` and a Hugging Face config hold, and that a kernel must be
#: built for. :meth:`MPGemmSpec.of_weight` turns them into a workload.
WEIGHT_FIELDS = ("format", "wbits", "group_size", "zero_point", "scale_dtype")


class SpecError(ValueError):
    """A workload that lutc does not support, with the reason in the message."""


@dataclass(frozen=True)
class MPGemmSpec:
    """One low-bit GEMM workload and the LUT-algorithm choices for it.

    Attributes:
        M, N, K: ``x`` is ``[M, K]``, the weight is ``[N, K]``, ``y`` is ``[M, N]``.
        wbits: bit planes per weight, 1-4 (``ternary`` always uses 2 planes).
        format: ``"uniform"`` integer codes with group scales (and zero points),
            ``"bcq"`` binary-coding quantization (one alpha per plane per group), or
            ``"ternary"`` {-1, 0, +1} with one scale per tensor (BitNet b1.58).
        group_size: weights sharing one scale along K: 32, 64, 128, or -1 (the whole row);
            default 128, and -1 for ternary.
        zero_point: uniform format only: a per-group zero point (asymmetric quantization).
        act_dtype: dtype of ``x`` and ``y``.
        scale_dtype: dtype of the stored scales/zero points/alphas.
        g: activations per table group (the table has ``2**g`` entries).
        symmetrize: keep ``2**(g-1)`` table entries and recover the rest by negation.
        table_dtype: dtype of the stored table; ``"int8"`` quantizes it with one scale per
            (row of x, block of at most 128 activations: see :attr:`block`).

    Example:
        >>> spec = MPGemmSpec(1, 4096, 4096, wbits=2, group_size=128)
        >>> spec.groups, spec.table_entries
        (32, 8)
    """

    M: int
    N: int
    K: int
    wbits: int = 2
    format: str = "uniform"
    group_size: Optional[int] = None
    zero_point: bool = False
    act_dtype: str = "float32"
    scale_dtype: str = "float16"
    g: int = 4
    symmetrize: bool = True
    table_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:   # numpy and other integral types become int; floats, bools, tensors stay, and fail
            v = getattr(self, name)
            if isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v) is not int:
                object.__setattr__(self, name, int(v))
        if self.group_size is None:  # the format's natural grouping
            object.__setattr__(self, "group_size", -1 if self.format == "ternary" else 128)
        validate(self)

    # --- derived sizes (pure functions of the fields) ---
    @property
    def planes(self) -> int:
        """Number of one-bit weight planes the kernel looks up."""
        return 2 if self.format == "ternary" else self.wbits

    @property
    def group(self) -> int:
        """Effective group size along K (``-1`` resolved to ``K``)."""
        return self.K if self.group_size == -1 else self.group_size

    @property
    def groups(self) -> int:
        """Weight groups per row (scales per row)."""
        return self.K // self.group

    @property
    def block(self) -> int:
        """Activations per partial sum (and per int8 table scale).

        The weight group, split into slices of at most ``MAX_BLOCK`` when longer, so whole-row
        groups sum in short runs. With int8 tables, SIMD kernels add a block's lookups in int16:
        each lookup is at most 127 in magnitude and a group adds ``plane_weight`` of them
        (shifted planes), so ``block / g`` groups must keep ``127 * plane_weight * block / g``
        within 32767; e.g. 4-bit uniform codes (weight 15) get blocks of 64.
        """
        limit = min(self.group, MAX_BLOCK)
        if self.table_dtype == "int8":
            limit = min(limit, self.g * (32767 // (127 * self.plane_weight)))
        return next(b for b in range(limit, 0, -1) if self.group % b == 0 and b % self.g == 0)

    def plane_coef(self, i: int) -> float:
        """The factor of a group's scale that multiplies bit plane ``i``'s signed lookups
        (``sigma_i`` in {-1, +1}), the one statement of each format's epilogue: ``2^(i-1)``
        for uniform codes (``q - c = sum_i 2^(i-1) sigma_i``, ``c`` = :attr:`code_center`),
        ``1/2`` for ternary (``t = (sigma_0 + sigma_1) / 2``), 1 for bcq (each plane has its
        own alpha). The front end, the reference, the kernels and the error bounds ask here.

        Example:
            >>> [MPGemmSpec(1, 64, 128, wbits=3).plane_coef(i) for i in range(3)]
            [0.5, 1.0, 2.0]
        """
        return {"uniform": 2.0 ** (i - 1), "ternary": 0.5, "bcq": 1.0}[self.format]

    @property
    def plane_weight(self) -> int:
        """Sum of the integer weights an int16 accumulator gives one group's plane lookups:
        ``2^b - 1`` for uniform codes (planes shifted by ``i``), 2 for ternary (two planes of
        equal weight), 1 for BCQ (one accumulator per plane: alphas are not integers)."""
        return {"uniform": 2 ** self.wbits - 1, "ternary": 2, "bcq": 1}[self.format]

    @property
    def code_center(self) -> float:
        """The constant ``c`` of codes without zero points, ``w = (q - c) s``: ``(2^b - 1) / 2``
        for uniform codes (the midpoint, which makes bit plane ``i`` worth ``+-2^(i-1)``: the
        front end's epilogue and table symmetrization rest on it), 1 for ternary codes 0..2.
        Every kernel and reference asks here.

        Example:
            >>> MPGemmSpec(1, 64, 128, wbits=4).code_center, MPGemmSpec(1, 64, 128, format="ternary").code_center
            (7.5, 1.0)
        """
        return 1.0 if self.format == "ternary" else (2 ** self.wbits - 1) / 2

    @property
    def blocks(self) -> int:
        """Partial sums per row: ``K / block``."""
        return self.K // self.block

    @property
    def table_groups(self) -> int:
        """Activation groups of ``g`` along K: tables per row of ``x``."""
        return self.K // self.g

    @property
    def table_entries(self) -> int:
        """Entries stored per table: ``2**g``, or half of that when symmetrized."""
        return 2 ** (self.g - 1) if self.symmetrize else 2 ** self.g

    @property
    def needs_act_sum(self) -> bool:
        """Whether the epilogue needs per-group activation sums (zero points)."""
        return self.format == "uniform" and self.zero_point

    def key(self) -> dict:
        """Canonical, JSON-ready identity of the workload (tuning logs, caches)."""
        return dataclasses.asdict(self)

    def with_(self, **changes) -> "MPGemmSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def of_weight(cls, N: int, K: int, weight, M: int = 1, **knobs) -> "MPGemmSpec":
        """The workload of an ``N x K`` packed weight described by ``weight`` (an object with the
        :data:`WEIGHT_FIELDS` as attributes, or a mapping of them; a field a mapping leaves out
        takes its default) for ``M`` rows of x and the other fields in ``knobs`` (``act_dtype``,
        ``g``, ``symmetrize``, ``table_dtype``): the one translation from a weight's
        description to a spec. Raises :class:`SpecError` naming the field lutc cannot build.

        Example:
            >>> MPGemmSpec.of_weight(4096, 11008, {"wbits": 4, "zero_point": True}, M=16).groups
            86
        """
        if isinstance(weight, Mapping):
            unknown = set(weight) - set(WEIGHT_FIELDS)
            if unknown:
                raise SpecError(f"unknown weight field(s) {sorted(unknown)}: a weight is described by {WEIGHT_FIELDS}")
            fields = {f: weight[f] for f in WEIGHT_FIELDS if f in weight}
        else:
            fields = {f: getattr(weight, f) for f in WEIGHT_FIELDS}
        return cls(M, N, K, **fields, **knobs)


def validate(spec: MPGemmSpec) -> None:
    """Raise :class:`SpecError` naming the first field that lutc cannot build."""
    for name in _INT_FIELDS:
        v = getattr(spec, name)
        what = "a positive int" if name in ("M", "N", "K") else "an int"
        if not isinstance(v, int) or isinstance(v, bool) or (name in ("M", "N", "K") and v <= 0):
            raise SpecError(f"{name} must be {what}, got {v!r}" + ("" if isinstance(v, int) and not isinstance(v, bool)
                                                                 else f" ({type(v).__name__})"))
    for name in ("zero_point", "symmetrize"):
        if not isinstance(getattr(spec, name), bool):
            raise SpecError(f"{name} must be True or False, got {getattr(spec, name)!r}")
    _one_of("format", spec.format, FORMATS)
    _one_of("act_dtype", spec.act_dtype, ACT_DTYPES)
    _one_of("scale_dtype", spec.scale_dtype, SCALE_DTYPES)
    _one_of("table_dtype", spec.table_dtype, TABLE_DTYPES)
    _one_of("group_size", spec.group_size, GROUP_SIZES)
    _one_of("g", spec.g, ACT_GROUPS)
    if spec.format == "ternary":
        if spec.wbits != 2:
            raise SpecError(f"ternary weights are stored as 2 bit planes: wbits must be 2, got {spec.wbits}")
        if spec.group_size != -1:
            raise SpecError("ternary weights have one scale per tensor: group_size must be -1, "
                            f"got {spec.group_size}")
    elif spec.wbits not in BIT_WIDTHS:
        raise SpecError(f"wbits must be 1, 2, 3 or 4, got {spec.wbits!r}")
    if spec.zero_point and spec.format != "uniform":
        raise SpecError(f"zero_point applies to the uniform format only, not {spec.format!r}")
    if spec.K % 8:
        raise SpecError(f"K must be a multiple of 8 (weights are packed 8 per byte), got K={spec.K}")
    if spec.K % spec.group:
        raise SpecError(f"K={spec.K} is not a multiple of group_size={spec.group_size}")
    if spec.group % spec.g:
        raise SpecError(f"group_size={spec.group} is not a multiple of g={spec.g}")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise SpecError(f"{name} must be one of {list(allowed)}, got {value!r}")
