"""Stream-K: a persistent grid of ``grid`` blocks sharing out a GEMM's ``tiles x units``
iterations evenly, cutting output tiles along K where a block's share ends (Osama, Merrill,
Cecka, Garland, Owens: "Stream-K: Work-centric Parallel Decomposition for Dense Matrix-Matrix
Multiplication on the GPU", PPoPP 2023).

Why: one block per output tile leaves SMs idle in the last wave. 28672 x 8192 at M = 128 in tiles
of 128 weight rows x 128 tokens is 224 tiles on the H200's 132 SMs: 1.7 waves, the second 70%
full; 8192 x 28672 in such tiles is 64 tiles, half the SMs. Split-K multiplies the tiles by a
whole factor and only moves the ragged wave; stream-K gives every block the same number of
128-weight K units (plus at most one).

The order: iteration ``i`` is tile ``i // units``, K unit ``i % units`` (tile-major, so a block
walks K of one tile, then the next). Block ``c`` takes ``[start(c), start(c + 1))``. A tile one
block does all of is stored by that block. A tile cut between blocks is stored by each block
that touched it as fp32 partial sums, in slot 0 of the block's two workspace slots if it is the
block's first tile and slot 1 if its last (a block's share cuts at most those two), and a second
kernel adds them in block order (deterministic): the block holding the boundary ``f`` that first
enters the tile does it (:func:`fixes`).

These functions take Python ints or TIR expressions alike: the kernels call them on
``blockIdx``, the tests on ints (``tests/test_stream_k.py`` checks every iteration is done once
and every cut tile summed once, over many shapes)."""
from __future__ import annotations


def start(c, iters: int, grid: int):
    """First iteration of block ``c`` (block ``grid`` gives the end): ``c iters / grid`` rounded
    down, so the shares differ by at most one."""
    return c * iters // grid


def owner(i, iters: int, grid: int):
    """The block whose share holds iteration ``i``: the largest ``c`` with ``start(c) <= i``."""
    return ((i + 1) * grid - 1) // iters


def whole(tile, units: int, iters: int, grid: int):
    """Whether one block does all of ``tile``'s units (and stores it itself)."""
    first, last = blocks_of(tile, units, iters, grid)
    return first == last


def slot(c, tile, units: int, tiles: int, iters: int, grid: int):
    """Workspace slot of block ``c``'s partial sums of ``tile``: 0 for the block's first tile,
    1 for a later one (its last: the tiles between are whole). ``(d + tiles - 1) // tiles`` for
    ``d = tile - first`` in ``0 .. tiles - 1`` is 0 or 1 without a comparison, for ints and
    expressions alike."""
    return (tile - start(c, iters, grid) // units + tiles - 1) // tiles


def fixes(f, units: int, iters: int, grid: int):
    """Whether boundary ``f`` (the start of block ``f``, ``1 <= f < grid``) is the first to cut
    its tile ``start(f) // units``, whose partial sums the fix-up kernel's block ``f`` then adds."""
    s = start(f, iters, grid)
    return (s % units != 0) & (blocks_of(s // units, units, iters, grid)[0] == f - 1)


def most_blocks(units: int, iters: int, grid: int) -> int:
    """The most blocks whose shares touch one tile (a bound for the fix-up's partial sums): the
    tile's ``units`` iterations over the shortest share, plus one for a share cut at each end."""
    return -(-units // (iters // grid)) + 1


def blocks_of(tile, units: int, iters: int, grid: int) -> tuple:
    """``(first, last)``: the blocks whose shares touch ``tile``, each one partial sum of it."""
    return owner(tile * units, iters, grid), owner(tile * units + units - 1, iters, grid)
