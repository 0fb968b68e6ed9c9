"""What a newcomer sees first: sample grids large enough to look at, and evaluate.py's coherence report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate as evaluate_cli
from gan import grids
from gan.models import Generator
from gan.pretrained import export_generator


@pytest.mark.parametrize(("side", "scale"), [(32, 2), (28, 3), (16, 4), (64, 1), (128, 1)])
def test_saved_grids_enlarge_small_images_by_exact_pixel_replicas(tmp_path, side, scale):
    images = torch.rand(6, 3, side, side, generator=torch.Generator().manual_seed(side)) * 2 - 1
    path = grids.save_image_grid(images, tmp_path / "grid.png")  # 3 per row, 2 rows
    grid = np.asarray(Image.open(path))
    cell = side * scale  # at least grids.GRID_MIN_CELL = 64 pixels, a whole multiple of the side
    assert cell >= 64 and grid.shape == (2 + 2 * (cell + 2), 2 + 3 * (cell + 2), 3)
    u8 = np.clip(np.rint((images.double().numpy() + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    for i in range(6):
        top, left = 2 + (i // 3) * (cell + 2), 2 + (i % 3) * (cell + 2)
        panel = grid[top : top + cell, left : left + cell]
        for dy in range(scale):  # every pixel of the image fills a scale x scale block, nothing interpolated
            for dx in range(scale):
                np.testing.assert_array_equal(panel[dy::scale, dx::scale], u8[i])
    # one image per file (sample.py --out, for metrics) keeps its own size
    alone = grids.save_image_grid(images[:1], tmp_path / "one.png", padding=0, min_cell=0)
    np.testing.assert_array_equal(np.asarray(Image.open(alone)), u8[0])


@pytest.mark.slow
def test_evaluate_coherence_names_no_feature_extractor_and_gives_real_and_chance_levels(tmp_path, tiny_cfg, capsys):
    torch.manual_seed(0)
    export = export_generator(tmp_path / "export", Generator(tiny_cfg.model), tiny_cfg)
    assert evaluate_cli.main(["--checkpoint", str(export), "--metrics", "coherence", "--num", "8"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # stderr, no terminal: the generation's progress as plain lines, then every score with its sample count
    err = captured.err.splitlines()
    assert "generating 8 samples: 8/8 images (100%)" in err and "\r" not in captured.err
    assert (
        f"coherence of 8 samples: {result['coherence']:.4g} (real data 1.000, chance 0.012; docs/coherence.md)" in err
    )
    assert f"shape_iou of 8 samples: {result['shape_iou']:.4g}" in err
    assert result["feature_extractor"] is None  # the coherence score reads pixels, through no network
    # the levels the demo prints: real data 1.000, chance 0.012 at 32x32 RGB (docs/coherence.md)
    assert result["coherence_levels"] == {"real_data": 1.0, "chance": 0.0117}
    assert 0.0 <= result["coherence"] <= 1.0
