import numpy as np

from cellrep_ml.viz import composite_rgb, crop_gallery, qc_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_composite_colours_by_role():
    crop = np.zeros((2, 4, 4), np.float32)
    crop[0, 0, 0] = 1.0  # protein only
    crop[1, 3, 3] = 1.0  # nucleus only
    rgb = composite_rgb(crop, ["protein", "nucleus"])
    assert rgb.shape == (4, 4, 3)
    assert rgb[0, 0, 1] > rgb[0, 0, 0] and rgb[0, 0, 1] > rgb[0, 0, 2]  # green
    assert rgb[3, 3, 2] > rgb[3, 3, 0] and rgb[3, 3, 2] > rgb[3, 3, 1]  # blue
    assert rgb[1, 1].sum() == 0


def test_composite_projects_3d_and_clips():
    crop = np.zeros((1, 3, 4, 4), np.float32)
    crop[0, 2, 1, 1] = 5.0
    rgb = composite_rgb(crop, ["protein"])
    assert rgb.shape == (4, 4, 3) and rgb.max() <= 1.0 and rgb[1, 1, 1] == 1.0


def test_pngs():
    crops = {"a": np.random.default_rng(0).random((3, 2, 8, 8)), "b": np.zeros((1, 2, 8, 8))}
    assert crop_gallery(crops, ["protein", "nucleus"], per_group=4).startswith(PNG_MAGIC)
    assert qc_figure({"border": 3}, 10, np.arange(10)).startswith(PNG_MAGIC)
