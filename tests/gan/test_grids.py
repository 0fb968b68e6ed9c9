"""gan/grids.py: exact pixel mapping, grid layout, PNG round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gan import grids


def test_pixel_mapping_matches_hand_values():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.2, 0.25, 0.5, 1.0, 1.5, float("nan")])
    # (x+1)*127.5 = -255, 0, 63.75, 127.5, 153.0000004, 159.375, 191.25, 255, 318.75, nan -> rint, clamp
    want = [0, 0, 64, 128, 153, 159, 191, 255, 255, 0]
    got = grids.images_to_uint8(x.view(1, 1, 1, 10))  # (1, 1, 10, 3)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[0, 0, :, 0], want)
    np.testing.assert_array_equal(got[0, 0, :, 0], got[0, 0, :, 2])  # grayscale repeated to RGB


def test_make_grid_array_layout_by_hand():
    a = torch.tensor([[[-1.0, 1.0], [0.0, -0.5]]])  # (1, 2, 2) -> 0 255 / 128 64
    b = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    grid = grids.make_grid_array(torch.stack([a, b]), nrow=2, padding=1)
    want = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 255, 0, 255, 255, 0],
            [0, 128, 64, 0, 255, 255, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(grid, np.repeat(want[:, :, None], 3, axis=2))


def test_make_grid_array_rgb_default_nrow_and_empty_cells():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 4, 5, generator=g) * 2 - 1
    grid = grids.make_grid_array(images, padding=2)  # nrow = ceil(sqrt(3)) = 2 -> 2 x 2 cells, last empty
    assert grid.shape == (2 * (4 + 2) + 2, 2 * (5 + 2) + 2, 3)
    u8 = grids.images_to_uint8(images)
    np.testing.assert_array_equal(grid[2:6, 2:7], u8[0])
    np.testing.assert_array_equal(grid[2:6, 9:14], u8[1])
    np.testing.assert_array_equal(grid[8:12, 2:7], u8[2])
    assert (grid[8:12, 9:14] == 0).all()
    # channel order kept: red of image 0 at (0, 0) = mapping of images[0, 0, 0, 0]
    assert grid[2, 2, 0] == np.clip(np.rint((images[0, 0, 0, 0].double().item() + 1) * 127.5), 0, 255)


def test_grid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        grids.make_grid_array(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        grids.make_grid_array(torch.zeros(4, 4))


def test_save_image_grid_png_round_trip_is_exact(tmp_path):
    images = torch.linspace(-1, 1, 2 * 3 * 6 * 6).view(2, 3, 6, 6)
    path = grids.save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=1, min_cell=0)
    with Image.open(path) as im:
        back = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(back, grids.make_grid_array(images, nrow=1))
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temp file left behind
    with pytest.raises(ValueError, match=r"\.png"):
        grids.save_image_grid(images, tmp_path / "grid.jpg")
