"""Crops (geometry, normalisation, QC), splits, and crop_partition end to end."""

import json
import platform

import numpy as np
import polars as pl
import pytest
import tifffile

from cellrep_ml.io.crop_store import CropStore
from cellrep_ml.io.schema import CELL_INDEX_SCHEMA, SPLITS
from cellrep_ml.io.screen_config import ScreenConfig
from cellrep_ml.segment import (
    DISTANCE_CHANNEL,
    CropOptions,
    assign_splits,
    crop_cells,
    crop_partition,
)


def _square_labels(shape, boxes):
    labels = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        labels[y0:y1, x0:x1] = i
    return labels


# ---------------------------------------------------------------- geometry


def test_crop_is_centred_on_the_centroid():
    # A 5×5 nucleus centred at (30, 40); a marker pixel at the centre.
    labels = _square_labels((64, 80), [(28, 33, 38, 43)])
    image = np.zeros((1, 64, 80), np.float32)
    image[0, 30, 40] = 5.0
    image[0, 0, 0] = 1.0  # keeps the crop from being constant
    crops = crop_cells(image, labels, crop_size=16, mask_fraction=(0.0, 1.0))
    assert crops.images.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(crops.centroids[0], [0.0, 30.0, 40.0])
    # The centroid lands on pixel crop_size // 2.
    assert np.unravel_index(crops.images[0, 0].argmax(), (16, 16)) == (8, 8)
    assert crops.masks[0].sum() == 25 and crops.masks[0, 8, 8] == 1
    assert not crops.padded[0]


def test_crop_near_the_edge_is_zero_padded_and_recorded():
    labels = _square_labels((40, 40), [(0, 6, 0, 6)])  # centroid (2.5, 2.5) -> (2, 2)
    rng = np.random.default_rng(0)
    image = (rng.random((2, 40, 40)) * 100 + 50).astype(np.float32)
    crops = crop_cells(image, labels, crop_size=20, mask_fraction=(0.0, 1.0))
    assert crops.padded[0]
    win = crops.images[0]
    origin = int(np.rint(2.5)) - 10  # window starts 8 px outside the field
    inside = win[:, -origin:, -origin:]
    outside = win[:, : -origin, :]
    assert np.all(outside == 0.0)
    # Normalisation ignored the padding: the in-field part still spans [0, 1].
    np.testing.assert_allclose(inside.min(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(inside.max(axis=(1, 2)), 1.0, atol=1e-6)


def test_minmax_range_and_constant_channel():
    labels = _square_labels((64, 64), [(20, 30, 20, 30), (40, 50, 35, 45)])
    rng = np.random.default_rng(1)
    image = np.stack([rng.random((64, 64)) * 4000, np.full((64, 64), 7.0)]).astype(np.uint16)
    crops = crop_cells(image, labels, crop_size=24)
    x = crops.images
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0].reshape(len(x), -1).min(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(x[:, 0].reshape(len(x), -1).max(1), 1.0, atol=1e-6)
    assert np.all(x[:, 1] == 0.0)  # a constant channel carries no pattern


def test_rescale_area_average_and_resample():
    labels = _square_labels((128, 128), [(56, 72, 56, 72)])
    yy, xx = np.mgrid[:128, :128]
    image = np.stack([(yy + xx).astype(np.float32)])
    big = crop_cells(image, labels, crop_size=64, mask_fraction=(0.0, 1.0))
    small = crop_cells(image, labels, crop_size=64, output_size=16, mask_fraction=(0.0, 1.0))
    assert small.images.shape == (1, 1, 16, 16) and small.masks.shape == (1, 16, 16)
    # Area averaging of 4×4 blocks (the ramp is linear, so block means are exact).
    expected = big.images[0, 0].reshape(16, 4, 16, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(small.images[0, 0], expected, atol=1e-6)
    assert small.masks[0].sum() == 16  # the 16×16 nucleus -> 4×4
    odd = crop_cells(image, labels, crop_size=64, output_size=24, mask_fraction=(0.0, 1.0))
    assert odd.images.shape == (1, 1, 24, 24)
    assert 0.0 <= odd.images.min() and odd.images.max() <= 1.0


def test_marker_clip_below():
    labels = _square_labels((64, 64), [(26, 38, 26, 38)])
    yy, _ = np.mgrid[:64, :64]
    image = np.stack([yy, yy]).astype(np.float32)
    crops = crop_cells(image, labels, crop_size=32, marker_channels=[1],
                       clip_markers_below=0.05, mask_fraction=(0.0, 1.0))
    protein, marker = crops.images[0]
    assert protein.min() == 0.0 and 0 < protein[1].min() < 0.05  # protein untouched
    assert np.all((marker == 0.0) | (marker >= 0.05))
    assert np.count_nonzero((protein > 0) & (protein < 0.05)) > 0


def test_signed_distance_channel():
    labels = _square_labels((80, 80), [(30, 50, 30, 50)])
    image = np.random.default_rng(2).random((1, 80, 80)).astype(np.float32)
    crops = crop_cells(image, labels, crop_size=40, nucleus_distance=True)
    assert crops.images.shape == (1, 2, 40, 40)
    d = crops.images[0, 1]
    mask = crops.masks[0].astype(bool)
    assert d.min() == pytest.approx(-1.0) and d.max() == pytest.approx(1.0)
    assert np.all(d[mask] > 0) and np.all(d[~mask] < 0)
    # Deepest inside at the centre, furthest outside at a corner.
    assert d[20, 20] == d.max() or d[19, 19] == d.max()
    assert d[0, 0] == pytest.approx(-1.0)


def test_qc_mask_fraction_rejects():
    # 2×2 nucleus in a 32 crop: 0.4 % (too small); 30×30 nucleus: 88 %; a 10×10: 9.8 %.
    labels = _square_labels((200, 200), [(50, 52, 50, 52), (100, 130, 100, 130), (20, 30, 150, 160)])
    image = np.random.default_rng(3).random((1, 200, 200)).astype(np.float32)
    crops = crop_cells(image, labels, crop_size=32, mask_fraction=(0.05, 0.8))
    assert crops.rejected == {"mask_fraction_low": 1, "mask_fraction_high": 1}
    assert crops.labels.tolist() == [3]
    assert crops.mask_fraction[0] == pytest.approx(100 / 1024)
    assert crops.areas.tolist() == [100]


def test_3d_crop_keeps_full_z():
    labels = np.zeros((6, 50, 50), np.int32)
    labels[1:5, 20:30, 20:30] = 1
    image = np.random.default_rng(4).random((2, 6, 50, 50)).astype(np.float32)
    crops = crop_cells(image, labels, crop_size=20, nucleus_distance=True)
    assert crops.images.shape == (1, 3, 6, 20, 20)
    assert crops.masks.shape == (1, 6, 20, 20)
    np.testing.assert_allclose(crops.centroids[0], [2.5, 24.5, 24.5])
    assert crops.mask_fraction[0] == pytest.approx(100 / 400)  # Y/X projection
    assert -1.0 <= crops.images[0, 2].min() and crops.images[0, 2].max() <= 1.0


def test_crop_cells_validates_shapes():
    with pytest.raises(ValueError, match="disagree"):
        crop_cells(np.zeros((1, 10, 10)), np.zeros((10, 11), np.int32), crop_size=4)


def test_no_cells_gives_empty_arrays():
    crops = crop_cells(np.ones((2, 30, 30)), np.zeros((30, 30), np.int32), crop_size=16,
                       output_size=8)
    assert len(crops) == 0 and crops.images.shape == (0, 2, 8, 8)


# ---------------------------------------------------------------- splits


def _fields(counts):
    return pl.DataFrame(
        [{"protein": p, "field_id": f"{p}/{i}"} for p, n in counts.items() for i in range(n)]
    )


def test_splits_invariants():
    fields = _fields({"A": 3, "B": 10, "C": 30, "D": 2, "E": 1})
    s = assign_splits(fields, seed=7)
    assert s["field_id"].n_unique() == len(s) == len(fields)  # no field in two splits
    joined = fields.join(s, on="field_id")
    for protein in ["A", "B", "C"]:
        got = set(joined.filter(pl.col("protein") == protein)["split"])
        assert got == set(SPLITS), protein
    c = joined.filter(pl.col("protein") == "C")["split"].value_counts().sort("split")
    assert dict(zip(c["split"], c["count"], strict=True)) == {"train": 24, "val": 3, "test": 3}
    assert set(joined.filter(pl.col("protein") == "D")["split"]) == {"train", "test"}
    assert set(joined.filter(pl.col("protein") == "E")["split"]) == {"train"}


def test_splits_deterministic_and_seeded():
    fields = _fields({"A": 20, "B": 20})
    a = assign_splits(fields, seed=1).sort("field_id")
    b = assign_splits(fields.reverse(), seed=1).sort("field_id")
    c = assign_splits(fields, seed=2).sort("field_id")
    assert a.equals(b)
    assert not a.equals(c)
    # Adding a protein does not move another protein's fields.
    more = assign_splits(pl.concat([fields, _fields({"Z": 5})]), seed=1)
    assert more.filter(~pl.col("field_id").str.starts_with("Z")).sort("field_id").equals(a)


def test_splits_reject_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(_fields({"A": 3}), fractions=(0.5, 0.1, 0.1))


# ---------------------------------------------------------------- options


def test_options_from_config():
    cfg = ScreenConfig.from_dict({
        "dataset": "d", "channels": {"protein": "GFP", "nucleus": "DAPI"},
        "crop_size": 64, "output_size": 32,
        "crops": {"nucleus_distance": True, "mask_fraction": [0.1, 0.9],
                  "segmentation": {"sigma": 1.0}},
    })
    opt = CropOptions.from_config(cfg)
    assert (opt.crop_size, opt.output_size, opt.nucleus_distance) == (64, 32, True)
    assert opt.mask_fraction == (0.1, 0.9) and opt.segmentation == {"sigma": 1.0}
    bad = ScreenConfig.from_dict({"dataset": "d", "channels": {"protein": "G", "nucleus": "D"},
                                  "crops": {"nucleus_distanse": True}})
    with pytest.raises(ValueError, match="nucleus_distanse"):
        CropOptions.from_config(bad)
    typo = ScreenConfig.from_dict({"dataset": "d", "channels": {"protein": "G", "nucleus": "D"},
                                   "crops": {"segmentation": {"sigm": 1.0}}})
    with pytest.raises(ValueError, match="sigm"):
        CropOptions.from_config(typo)


# ---------------------------------------------------------------- end to end


def _write_field(path, nuclei_centres, rng, size=(96, 128)):
    yy, xx = np.mgrid[: size[0], : size[1]]
    nuc = np.full(size, 100.0)
    for cy, cx in nuclei_centres:
        nuc[(yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2] = 3000.0
    nuc += rng.normal(0, 20, size)
    gfp = rng.random(size) * 1000 + (nuc > 1000) * 500
    data = np.stack([gfp, nuc]).clip(0, 65535).astype(np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "Hoechst"]}})


def _field_index(tmp_path, proteins_fields, rng):
    rows = []
    n = 0
    for protein, n_fields in proteins_fields.items():
        for f in range(n_fields):
            n += 1
            centres = [(20 + 25 * (i // 4), 20 + 28 * (i % 4)) for i in range(4 + f % 3)]
            path = tmp_path / f"{protein}_{f}.ome.tif"
            _write_field(path, centres, rng)
            rows.append({
                "field_id": f"demo/HEK/p1/{protein}/{f}", "row": n, "dataset": "demo",
                "cell_line": "HEK", "plate": "p1", "well": protein, "field": f,
                "protein": protein, "path": path.name, "channels": "GFP|Hoechst",
                "abs_paths": [str(path)], "format": "ome-tiff", "size_z": 1,
                "size_y": 96, "size_x": 128, "dtype": "uint16", "signature": "x",
            })
    return pl.DataFrame(rows)


@pytest.fixture()
def screen(tmp_path):
    rng = np.random.default_rng(5)
    index = _field_index(tmp_path, {"P1": 3, "P2": 3}, rng)
    config = ScreenConfig.from_dict({
        "dataset": "demo", "channels": {"protein": "GFP", "nucleus": "Hoechst"},
        "crop_size": 32, "output_size": 16, "min_cells_per_field": 5,
        "crops": {"nucleus_distance": True, "segmentation": {"sigma": 1.0, "min_area": 40}},
    })
    return index, config


def test_crop_partition_end_to_end(tmp_path, screen):
    index, config = screen
    out = tmp_path / "out"
    result = crop_partition(index, config, out, seed=3)

    # Fields with f % 3 == 0 have 4 nuclei (< min_cells_per_field = 5): dropped whole.
    assert result.n_fields == 6 and result.n_fields_kept == 4
    assert result.n_cells == 2 * (5 + 6)
    assert result.rejected["field_too_few_cells"] == 2 * 4
    assert result.cells_per_s > 0 and result.seconds > 0

    cells = pl.read_parquet(result.cells_path)
    assert cells.schema == pl.Schema(CELL_INDEX_SCHEMA)
    assert cells["crop_index"].to_list() == list(range(result.n_cells))
    assert cells["cell_id"].n_unique() == result.n_cells
    # Each field has one split; P1/P2 (3 fields, 2 kept each) get train + test.
    per_field = cells.group_by("protein", "field").agg(pl.col("split").n_unique())
    assert per_field["split"].max() == 1
    for protein in ("P1", "P2"):
        assert set(cells.filter(pl.col("protein") == protein)["split"]) == {"train", "test"}
    assert set(cells["split"]) <= set(SPLITS)

    store = CropStore.open(result.store_path)
    assert len(store) == result.n_cells
    assert store.channel_names == ["GFP", "Hoechst", DISTANCE_CHANNEL]
    x = store[np.arange(len(store))].astype(np.float32)
    assert x.shape == (result.n_cells, 3, 16, 16) and x.dtype == np.float32
    assert 0.0 <= x[:, :2].min() and x[:, :2].max() <= 1.0
    assert -1.0 <= x[:, 2].min() and x[:, 2].max() <= 1.0
    assert store.attrs["crop_size"] == 32 and store.attrs["output_size"] == 16
    # Row i of the index is crop i: its centroid's nucleus is bright in the mask centre.
    masks = store.masks(np.arange(len(store)))
    assert np.all(masks[:, 8, 8] == 1)

    qc = json.loads((out / "qc.json").read_text())
    assert qc["rejected"] == result.rejected and qc["n_cells"] == result.n_cells

    again = crop_partition(index, config, out, seed=3)
    assert pl.read_parquet(again.cells_path).equals(cells)  # deterministic, overwrites


def test_crop_partition_workers_match_serial(tmp_path, screen):
    index, config = screen
    serial = crop_partition(index, config, tmp_path / "a")
    parallel = crop_partition(index, config, tmp_path / "b", workers=2)
    assert pl.read_parquet(serial.cells_path).equals(pl.read_parquet(parallel.cells_path))
    a = CropStore.open(serial.store_path)
    b = CropStore.open(parallel.store_path)
    np.testing.assert_array_equal(a[np.arange(len(a))], b[np.arange(len(b))])


def test_crop_partition_trims_the_heap_every_few_fields(tmp_path, screen, monkeypatch):
    """The heap is handed back every _TRIM_EVERY fields (memory stays flat on big
    screens), and a trim changes nothing in the output."""
    import cellrep_ml.segment.pipeline as pipeline

    index, config = screen
    reference = crop_partition(index, config, tmp_path / "a")
    trims = []
    real_trim = pipeline._trim_heap
    monkeypatch.setattr(pipeline, "_TRIM_EVERY", 2)
    monkeypatch.setattr(pipeline, "_trim_heap", lambda: trims.append(1) or real_trim())
    trimmed = crop_partition(index, config, tmp_path / "b")
    assert len(trims) == len(index) // 2 == 3
    if platform.libc_ver()[0] == "glibc":
        assert pipeline._libc() is not None  # the trim is real, not a no-op
    assert pl.read_parquet(trimmed.cells_path).equals(pl.read_parquet(reference.cells_path))


def test_crop_partition_bad_fractions_fail_before_work(tmp_path, screen):
    index, config = screen
    with pytest.raises(ValueError, match="fractions"):
        crop_partition(index, config, tmp_path / "out", split_fractions=(0.9, 0.2, 0.1))
    assert not (tmp_path / "out" / "crops.zarr").exists()


def test_crop_partition_missing_file_fails_with_row(tmp_path, screen):
    index, config = screen
    broken = index.with_columns(
        pl.when(pl.col("row") == 2).then(pl.lit([str(tmp_path / "gone.ome.tif")]))
        .otherwise(pl.col("abs_paths")).alias("abs_paths")
    )
    out = tmp_path / "out"
    with pytest.raises(Exception, match="gone.ome.tif"):
        crop_partition(broken, config, out)
    assert not (out / "crops.zarr").exists() and not (out / "cells.parquet").exists()


def test_crop_partition_refuses_a_folder_holding_other_files(tmp_path, screen):
    # The partition folder is swapped whole, so anything else in it would be lost.
    index, config = screen
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt"):
        crop_partition(index, config, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_crop_partition_3d(tmp_path):
    shape = (16, 64, 64)
    grids = np.indices(shape)
    nuc = np.full(shape, 100.0)
    for c in [(8, 20, 20), (8, 44, 40)]:
        nuc[sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True)) <= 36] = 3000.0
    gfp = np.random.default_rng(6).random(shape) * 1000
    path = tmp_path / "f.ome.tif"
    tifffile.imwrite(path, np.stack([gfp, nuc]).astype(np.uint16), ome=True,
                     metadata={"axes": "CZYX", "Channel": {"Name": ["GFP", "Hoechst"]}})
    index = pl.DataFrame([{
        "field_id": "d/L/p/w/0", "row": 1, "dataset": "d", "cell_line": "L", "plate": "p",
        "well": "w", "field": 0, "protein": "P", "path": path.name, "channels": "GFP|Hoechst",
        "abs_paths": [str(path)], "format": "ome-tiff", "size_z": 16, "size_y": 64,
        "size_x": 64, "dtype": "uint16", "signature": "x",
    }])
    config = ScreenConfig.from_dict({
        "dataset": "d", "dims": 3, "channels": {"protein": "GFP", "nucleus": "Hoechst"},
        "crop_size": 24, "crops": {"segmentation": {"sigma": 1.0, "min_area": 50}},
    })
    result = crop_partition(index, config, tmp_path / "out")
    assert result.n_cells == 2
    store = CropStore.open(result.store_path)
    assert store.shape == (2, 2, 16, 24, 24)
    cells = pl.read_parquet(result.cells_path).sort("centroid_y")
    np.testing.assert_allclose(cells["centroid_z"], 8.0, atol=0.01)
    np.testing.assert_allclose(cells["centroid_y"], [20.0, 44.0], atol=0.01)


def test_cli_unknown_dataset(tmp_path):
    from click.testing import CliRunner

    from cellrep_ml.cli import main

    out = CliRunner().invoke(main, ["crops", "nope", "--home", str(tmp_path)])
    assert out.exit_code == 2
    assert "nope" in out.output


def test_pipeline_hands_the_segmented_pixels_to_the_crops():
    """process_field lets segmentation pass its foreground listing to the crops; the
    result must be the public functions' result, in 2D and 3D."""
    from cellrep_ml.segment import segment_nuclei
    from cellrep_ml.segment._nuclei import Foreground, _segment
    from cellrep_ml.segment.crops import _crop_cells

    rng = np.random.default_rng(8)
    for shape in [(160, 200), (6, 90, 100)]:
        centres = [tuple(rng.uniform(min(10, s / 3), s - min(10, s / 3)) for s in shape)
                   for _ in range(14)]
        grids = np.indices(shape)
        nuc = np.zeros(shape)
        for c in centres:
            nuc[sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True)) <= 49] = 3000.0
        nuc += rng.normal(100, 20, shape)
        image = np.stack([rng.random(shape) * 500, nuc]).astype(np.float32)
        kwargs = {"sigma": 1.0, "method": "otsu", "min_area": 20, "max_area": None,
                  "exclude_border": True, "split_touching": True, "min_distance": None}
        labels, rejected, fg = _segment(image[1], **kwargs)
        want_labels, want_rejected = segment_nuclei(image[1], sigma=1.0, min_area=20,
                                                    return_rejected=True)
        np.testing.assert_array_equal(labels, want_labels)
        assert rejected == want_rejected and labels.max() >= 5
        ref = Foreground.of(labels)
        for got, want in zip(fg, ref, strict=True):
            if isinstance(want, tuple):
                for a, b in zip(got, want, strict=True):
                    np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_array_equal(got, want)
        options = {"crop_size": 32, "nucleus_distance": True, "mask_fraction": (0.05, 0.6)}
        a, b = _crop_cells(image, labels, fg, **options), crop_cells(image, labels, **options)
        for name in ("images", "masks", "labels", "centroids", "areas", "mask_fraction", "padded"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.rejected == b.rejected


@pytest.mark.parametrize("shape", [(2, 40, 50), (3, 4, 30, 33), (1, 9, 70)])
def test_windows_equal_cuts_from_a_zero_padded_field(shape):
    """Windows reaching outside the field (every side and corner, and fields smaller than
    a window) hold 0 there, as if cut from the field padded with zeros."""
    from cellrep_ml.segment.crops import _windows

    rng = np.random.default_rng(4)
    arr = rng.integers(1, 1000, shape).astype(np.uint16)
    size, pad = 16, 40
    padded = np.pad(arr, ((0, 0),) * (arr.ndim - 2) + ((pad, pad), (pad, pad)))
    ny, nx = shape[-2:]
    origin = np.stack([rng.integers(-size - 2, ny + 2, 300), rng.integers(-size - 2, nx + 2, 300)], axis=1)
    got = _windows(arr, origin, size)
    assert got.shape == (300, *shape[:-2], size, size) and got.flags.c_contiguous
    for i, (y, x) in enumerate(origin):
        want = padded[..., y + pad:y + pad + size, x + pad:x + pad + size]
        np.testing.assert_array_equal(got[i], want)
