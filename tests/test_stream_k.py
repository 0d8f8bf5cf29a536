"""Stream-K's bookkeeping (``schedules.stream_k``), run on ints the way ``cuda_wgmma``'s two
kernels run it on block indices: every (tile, K unit) done once, every tile stored once, whole
or as the sum of its partial sums, and no two partial sums in one workspace slot."""
import numpy as np
import pytest

from schedules import stream_k


def run(tiles: int, units: int, grid: int, seed: int = 0):
    """The kernels' stores for unit values ``v[tile, unit]``: what the main kernel writes to
    ``out`` and the workspace, then what the fix-up adds; returns ``(out, expected)``."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((tiles, units))
    iters = tiles * units
    out = np.full(tiles, np.nan)
    psum = np.full((grid, 2), np.nan)
    done = np.zeros((tiles, units), int)
    for c in range(grid):                      # the main kernel: block c's K loop
        first = stream_k.start(c, iters, grid)
        count = stream_k.start(c + 1, iters, grid) - first
        acc = 0.0
        for u in range(count):
            tile, unit = (first + u) // units, (first + u) % units
            acc += v[tile, unit]
            done[tile, unit] += 1
            if unit == units - 1 or u == count - 1:           # the tile's last unit here
                if stream_k.whole(tile, units, iters, grid):
                    assert np.isnan(out[tile])
                    out[tile] = acc
                else:
                    s = stream_k.slot(c, tile, units, tiles, iters, grid)
                    assert s in (0, 1) and np.isnan(psum[c, s]), (c, tile, s)
                    psum[c, s] = acc
                acc = 0.0
    assert (done == 1).all()
    for f in range(1, grid):                   # the fix-up kernel's block f - 1
        if stream_k.fixes(f, units, iters, grid):
            tile = stream_k.start(f, iters, grid) // units
            c0, c1 = stream_k.blocks_of(tile, units, iters, grid)
            assert c0 == f - 1 and c1 > c0 and np.isnan(out[tile])
            assert c1 - c0 + 1 <= stream_k.most_blocks(units, iters, grid)
            out[tile] = sum(psum[c, stream_k.slot(c, tile, units, tiles, iters, grid)] for c in range(c0, c1 + 1))
    return out, v.sum(1)


@pytest.mark.parametrize("tiles, units, grid", [
    (224, 64, 132), (64, 224, 132), (12, 112, 78), (448, 64, 132), (1, 100, 78), (3, 5, 15),
    (132, 64, 132), (264, 10, 132), (7, 3, 20), (1792, 64, 114), (130, 1, 129), (5, 50, 114)])
def test_every_unit_once_and_every_tile_summed_once(tiles, units, grid):
    out, expected = run(tiles, units, grid)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_random_partitions():
    rng = np.random.default_rng(1)
    for trial in range(300):
        tiles, units = int(rng.integers(1, 300)), int(rng.integers(1, 130))
        grid = int(rng.integers(2, min(200, tiles * units) + 1)) if tiles * units >= 2 else 1
        out, expected = run(tiles, units, grid, seed=trial)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12, err_msg=f"{tiles} {units} {grid}")


def test_shares_differ_by_at_most_one():
    for iters, grid in ((14336, 132), (1344, 78), (1000, 999)):
        sizes = {stream_k.start(c + 1, iters, grid) - stream_k.start(c, iters, grid) for c in range(grid)}
        assert sizes <= {iters // grid, iters // grid + 1}
        assert all(stream_k.owner(stream_k.start(c, iters, grid), iters, grid) == c for c in range(grid))
