"""Routing grids a person can read: every layer's map in one cell size, step, layer and subject labels drawn."""

import numpy as np
import torch

from anystory.visualize import labelled_routing_grid, routing_grid

YELLOW, BLUE = [253, 231, 37], [68, 1, 84]


def _maps(sizes: list[tuple[int, int]], subjects: int = 1) -> list[torch.Tensor]:
    """One step of the UNet's layers at their own resolutions (SDXL: 1/32, 1/16 and 1/8 of the latent side)."""
    return [torch.zeros(1, subjects + 1, h, w) for h, w in sizes]


def test_layers_of_different_sizes_fill_cells_of_one_size_without_gaps():
    maps = _maps([(2, 3), (4, 6), (8, 12)])  # a 3:2 image: every layer 3:2 at its own scale
    for m in maps:
        m[0, 0] = 1  # the subject everywhere: every cell yellow
    grid = routing_grid([maps], cell=8, rows=3, gap=0)
    assert grid.shape == (24, 12, 3)  # 3 cells of 8 x 12 (the maps' aspect), one column
    assert (grid == YELLOW).all()  # no white left between or around the layers' cells


def test_labelled_grid_keeps_the_tiles_and_draws_step_layer_and_subject_labels():
    steps = [_maps([(4, 4)] * 11, subjects=2) for _ in range(3)]
    plain = routing_grid(steps, steps=[0, 2], cell=8, rows=4, gap=2)
    grid = labelled_routing_grid(steps, [0, 2], ["subject 0", "subject 1"], cell=8, rows=4, gap=2)
    top, left = grid.shape[0] - plain.shape[0], grid.shape[1] - plain.shape[1]
    assert top > 10 and left > 10  # a margin above and left for the text
    assert np.array_equal(grid[top:, left:], plain)  # the tiles themselves are unchanged
    dark = lambda a: (a.astype(int).sum(-1) < 3 * 160)  # noqa: E731 - text pixels (the margin is white)
    header, names = grid[:top, left:], grid[top:, :left]
    assert dark(header).sum() > 50 and dark(names).sum() > 50
    # the text follows the labels given: other step numbers draw another header, other names another margin
    other = labelled_routing_grid(steps, [1, 2], ["subject 0", "person"], cell=8, rows=4, gap=2)
    panel = plain.shape[1] // 2
    assert not np.array_equal(other[:top, left : left + panel], grid[:top, left : left + panel])  # step 1 vs 0
    assert np.array_equal(other[:top, -panel:], grid[:top, -panel:])  # step 2 in both
    assert not np.array_equal(other[top:, :left], grid[top:, :left])
    # each column of cells carries its layer range (0-3, 4-7, 8-10): the layer line differs across columns
    line = grid[top // 2 : top - 2, left : left + panel]
    cols = [dark(line[:, c * 8 : (c + 1) * 8]) for c in range(3)]
    assert all(c.any() for c in cols) and not np.array_equal(cols[0], cols[1])
