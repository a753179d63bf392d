"""Every image reader on small files made here, and every way a file can be bad."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from cellrep_ml.errors import (
    BlankImageError,
    ChannelError,
    ImageReadError,
    ImageShapeError,
    UnsupportedDtypeError,
)
from cellrep_ml.io.readers import detect_format, probe_field, read_field

RNG = np.random.default_rng(0)


def _img(*shape, dtype=np.uint16) -> np.ndarray:
    hi = 250 if dtype == np.uint8 else 4000
    return RNG.integers(1, hi, size=shape).astype(dtype)


def _row(*paths: Path, channels: str = "", row: int = 5) -> dict:
    return {"abs_paths": [str(p) for p in paths], "channels": channels, "row": row}


def write_ome_zarr(path: Path, data: np.ndarray, axes: str, labels: list[str] | None,
                   *, zarr_format: int = 2) -> Path:
    """An NGFF image group written by hand: 0.4 metadata (v2) or 0.5 under "ome" (v3)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    arr = group.create_array("0", shape=data.shape, dtype=data.dtype,
                             chunks=(1,) * (data.ndim - 2) + data.shape[-2:])
    arr[...] = data
    kinds = {"c": "channel", "z": "space", "y": "space", "x": "space", "t": "time"}
    multiscales = [{
        "version": "0.4",
        "axes": [{"name": a, "type": kinds[a]} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * data.ndim}]}],
    }]
    meta = {"multiscales": multiscales}
    if labels is not None:
        meta["omero"] = {"channels": [{"label": name} for name in labels]}
    if zarr_format == 2:
        group.attrs.update(meta)
    else:
        multiscales[0]["version"] = "0.5"
        group.attrs.update({"ome": {"version": "0.5", **meta}})
    return path


# --------------------------------------------------------------------------- OME-TIFF


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_ome_tiff_cyx_channels_by_name(tmp_path, compression):
    data = _img(3, 24, 32)
    path = tmp_path / "f.ome.tif"
    tifffile.imwrite(path, data, compression=compression,
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DNA", "ER"]}})
    row = _row(path)  # no manifest channels: the OME-XML names them
    info = probe_field(row)
    assert (info.format, info.size_z, info.size_y, info.size_x, info.dtype) == \
        ("ome-tiff", 1, 24, 32, "uint16")
    assert info.channels == ("GFP", "DNA", "ER")
    got = read_field(row, ["ER", "GFP"])
    assert got.shape == (2, 24, 32)
    np.testing.assert_array_equal(got, data[[2, 0]])


@pytest.mark.parametrize("axes", ["CZYX", "ZCYX"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_ome_tiff_3d_either_axis_order(tmp_path, axes, compression):
    czyx = _img(2, 4, 16, 20)
    stored = czyx if axes == "CZYX" else czyx.transpose(1, 0, 2, 3)
    path = tmp_path / "f.ome.tiff"
    tifffile.imwrite(path, stored, compression=compression,
                     metadata={"axes": axes, "Channel": {"Name": ["GFP", "DNA"]}})
    info = probe_field(_row(path))
    assert (info.size_z, info.size_y, info.size_x) == (4, 16, 20)
    got = read_field(_row(path), ["DNA", "GFP"])
    assert got.shape == (2, 4, 16, 20)
    np.testing.assert_array_equal(got, czyx[::-1])


def test_ome_tiff_single_channel_yx(tmp_path):
    data = _img(16, 20, dtype=np.uint8)
    path = tmp_path / "f.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": "YX", "Channel": {"Name": ["GFP"]}})
    got = read_field(_row(path), ["GFP"])
    assert got.shape == (1, 16, 20) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], data)


# --------------------------------------------------------------------------- plain TIFF


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_plain_tiff_stack_named_by_manifest(tmp_path, compression):
    data = _img(3, 16, 20)
    path = tmp_path / "f.tif"
    # minisblack: pages of planes; the default (planar RGB) is covered by the 4-D test.
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack")
    row = _row(path, channels="GFP|DNA|ER")
    info = probe_field(row)
    assert info.format == "tiff" and info.channels == ("GFP", "DNA", "ER")
    np.testing.assert_array_equal(read_field(row, ["DNA"]), data[[1]])
    np.testing.assert_array_equal(read_field(row, ["GFP", "DNA", "ER"]), data)


def test_plain_tiff_with_one_name_is_a_z_stack(tmp_path):
    data = _img(5, 16, 20)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    row = _row(path, channels="GFP")
    assert probe_field(row).size_z == 5
    np.testing.assert_array_equal(read_field(row, ["GFP"])[0], data)


@pytest.mark.filterwarnings("ignore:.*stored as RGB with separate component planes")
def test_plain_tiff_4d_is_czyx(tmp_path):
    data = _img(2, 3, 16, 20)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, data)  # tifffile guesses planar RGB: its S axis is no channel here
    got = read_field(_row(path, channels="GFP|DNA"), ["DNA", "GFP"])
    np.testing.assert_array_equal(got, data[::-1])


def test_float32_and_big_endian_are_accepted(tmp_path):
    data = RNG.random((2, 8, 8)).astype(">f4")
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, data, byteorder=">")
    got = read_field(_row(path, channels="a|b"), ["b"])
    assert got.dtype == np.dtype("float32") and got.dtype.isnative
    np.testing.assert_array_equal(got[0], data[1].astype(np.float32))


# --------------------------------------------------------------------------- one file per channel


def test_per_channel_png_uint8_and_uint16(tmp_path):
    gfp, dna = _img(16, 20, dtype=np.uint8), _img(16, 20, dtype=np.uint8)
    Image.fromarray(gfp).save(tmp_path / "gfp.png")
    Image.fromarray(dna).save(tmp_path / "dna.png")
    row = _row(tmp_path / "gfp.png", tmp_path / "dna.png", channels="GFP|DNA")
    info = probe_field(row)
    assert (info.format, info.size_y, info.size_x, info.dtype) == ("png", 16, 20, "uint8")
    got = read_field(row, ["DNA", "GFP"])
    np.testing.assert_array_equal(got, np.stack([dna, gfp]))

    deep = _img(16, 20)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    got16 = read_field(_row(tmp_path / "deep.png", channels="GFP"), ["GFP"])
    assert got16.dtype == np.uint16
    np.testing.assert_array_equal(got16[0], deep)


def test_rgb_file_with_one_coloured_band_takes_that_band(tmp_path):
    green = _img(16, 20, dtype=np.uint8)
    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[..., 1] = green
    Image.fromarray(rgb).save(tmp_path / "green.png")
    gray = _img(16, 20, dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "blue.png")
    row = _row(tmp_path / "green.png", tmp_path / "blue.png", channels="protein|nucleus")
    got = read_field(row, ["protein", "nucleus"])
    np.testing.assert_array_equal(got[0], green)
    np.testing.assert_array_equal(got[1], gray)


def test_rgb_jpeg_with_colour_mix_becomes_luminance(tmp_path):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[:8] = 10  # not blank
    path = tmp_path / "mix.jpg"
    Image.fromarray(rgb).save(path, quality=100)
    got = read_field(_row(path, channels="ER"), ["ER"])
    assert got.shape == (1, 16, 24) and got.dtype == np.uint8
    decoded = np.asarray(Image.open(path)).astype(float)
    expected = np.rint(decoded @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_array_equal(got[0], expected)
    # Independent check on the colour area: 0.299*200 + 0.587*100 + 0.114*50 = 124.2.
    assert abs(float(got[0, 12:, 4:20].mean()) - 124.2) < 2


def test_one_rgb_file_named_band_by_band(tmp_path):
    rgb = _img(16, 20, 3, dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    got = read_field(_row(tmp_path / "rgb.png", channels="r|g|b"), ["b", "r"])
    np.testing.assert_array_equal(got, np.stack([rgb[..., 2], rgb[..., 0]]))


def test_per_channel_tiff_3d(tmp_path):
    a, b = _img(3, 16, 20), _img(3, 16, 20)
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="minisblack")
    tifffile.imwrite(tmp_path / "b.tif", b, compression="zlib", photometric="minisblack")
    row = _row(tmp_path / "a.tif", tmp_path / "b.tif", channels="GFP|DNA")
    assert probe_field(row).size_z == 3
    np.testing.assert_array_equal(read_field(row, ["DNA", "GFP"]), np.stack([b, a]))


# --------------------------------------------------------------------------- OME-Zarr


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_2d(tmp_path, zarr_format):
    data = _img(3, 16, 20)
    path = write_ome_zarr(tmp_path / "f.zarr", data, "cyx", ["GFP", "DNA", "ER"],
                          zarr_format=zarr_format)
    assert detect_format([path]) == "ome-zarr"
    info = probe_field(_row(path))
    assert (info.format, info.size_z, info.channels) == ("ome-zarr", 1, ("GFP", "DNA", "ER"))
    np.testing.assert_array_equal(read_field(_row(path), ["ER", "GFP"]), data[[2, 0]])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_tczyx_3d(tmp_path, zarr_format):
    czyx = _img(2, 5, 16, 20)
    path = write_ome_zarr(tmp_path / "f.zarr", czyx[np.newaxis], "tczyx", ["GFP", "DNA"],
                          zarr_format=zarr_format)
    got = read_field(_row(path), ["DNA"])
    assert got.shape == (1, 5, 16, 20)
    np.testing.assert_array_equal(got[0], czyx[1])


def test_ome_zarr_without_labels_uses_manifest_names(tmp_path):
    data = _img(2, 8, 8)
    path = write_ome_zarr(tmp_path / "f.zarr", data, "cyx", None)
    np.testing.assert_array_equal(read_field(_row(path, channels="a|b"), ["b"]), data[[1]])


def test_readers_are_thread_safe(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    data = _img(2, 64, 64)
    path = tmp_path / "f.ome.tif"
    tifffile.imwrite(path, data, compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DNA"]}})
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: read_field(_row(path), ["DNA", "GFP"]), range(32)))
    for out in outs:
        np.testing.assert_array_equal(out, data[::-1])


# --------------------------------------------------------------------------- bad inputs


def _assert_names(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(err.value)
    assert "manifest row 5" in msg, msg
    assert str(path) in msg, msg
    assert "expected" in msg, msg
    for w in words:
        assert w in msg, msg


def test_missing_file(tmp_path):
    path = tmp_path / "gone.tif"
    with pytest.raises(ImageReadError) as err:
        read_field(_row(path, channels="GFP"), ["GFP"])
    _assert_names(err, path, "not found")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_cut_in_half(tmp_path, compression):
    path = tmp_path / "cut.ome.tif"
    tifffile.imwrite(path, _img(3, 32, 32), compression=compression,
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DNA", "ER"]}})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError) as err:
        read_field(_row(path), ["GFP"])
    _assert_names(err, path, "truncated")


def test_plain_tiff_cut_in_half(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _img(2, 32, 32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError) as err:
        read_field(_row(path, channels="GFP|DNA"), ["GFP"])
    _assert_names(err, path, "truncated")


def test_png_cut_in_half(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_img(64, 64, dtype=np.uint8)).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError) as err:
        read_field(_row(path, channels="GFP"), ["GFP"])
    _assert_names(err, path, "a readable png file")


def test_not_an_image(tmp_path):
    path = tmp_path / "junk.tif"
    path.write_bytes(b"this is not a tiff")
    with pytest.raises(ImageReadError) as err:
        probe_field(_row(path, channels="GFP"))
    _assert_names(err, path, "not a readable TIFF")


def test_wrong_dimensionality_time_series(tmp_path):
    path = tmp_path / "t.ome.tif"
    tifffile.imwrite(path, _img(3, 2, 16, 16),
                     metadata={"axes": "TCYX", "Channel": {"Name": ["GFP", "DNA"]}})
    with pytest.raises(ImageShapeError) as err:
        probe_field(_row(path))
    _assert_names(err, path, "wrong dimensionality", "TCYX")


def test_per_channel_file_with_several_channels(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _img(16, 16))
    tifffile.imwrite(tmp_path / "b.ome.tif", _img(2, 16, 16),
                     metadata={"axes": "CYX", "Channel": {"Name": ["x", "y"]}})
    with pytest.raises(ImageShapeError) as err:
        probe_field(_row(tmp_path / "a.tif", tmp_path / "b.ome.tif", channels="GFP|DNA"))
    _assert_names(err, tmp_path / "b.ome.tif", "several channels", "(Y, X) or (Z, Y, X)")


def test_per_channel_file_with_too_many_axes(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", _img(16, 16))
    tifffile.imwrite(tmp_path / "b.tif", _img(3, 2, 16, 16))
    with pytest.raises(ImageShapeError) as err:
        probe_field(_row(tmp_path / "a.tif", tmp_path / "b.tif", channels="GFP|DNA"))
    _assert_names(err, tmp_path / "b.tif", "wrong dimensionality", "(3, 2, 16, 16)")


def test_missing_channel_lists_available(tmp_path):
    path = tmp_path / "f.ome.tif"
    tifffile.imwrite(path, _img(2, 16, 16),
                     metadata={"axes": "CYX", "Channel": {"Name": ["GFP", "DNA"]}})
    with pytest.raises(ChannelError) as err:
        read_field(_row(path), ["GFP", "Hoechst"])
    _assert_names(err, path, "'Hoechst'", "['GFP', 'DNA']")


def test_channel_count_mismatch_with_manifest(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, _img(3, 16, 16), photometric="minisblack")
    with pytest.raises(ChannelError) as err:
        probe_field(_row(path, channels="GFP|DNA"))
    _assert_names(err, path, "3 channel(s) in the file but 2")


def test_inconsistent_sizes_between_channel_files(tmp_path):
    Image.fromarray(_img(16, 20, dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(_img(16, 24, dtype=np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ImageShapeError) as err:
        probe_field(_row(tmp_path / "a.png", tmp_path / "b.png", channels="GFP|DNA"))
    _assert_names(err, tmp_path / "b.png", "differ in size", "(1, 16, 20)", "(1, 16, 24)")


@pytest.mark.parametrize("dtype, name", [(np.int64, "int64"), (np.complex64, "complex64"),
                                         (np.bool_, "bool"), (np.float64, "float64")])
def test_unsupported_dtype_is_named(tmp_path, dtype, name):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, np.ones((2, 8, 8), dtype=dtype))
    with pytest.raises(UnsupportedDtypeError) as err:
        probe_field(_row(path, channels="GFP|DNA"))
    _assert_names(err, path, name, "uint8 / uint16 / float32")


def test_unsupported_dtype_in_zarr(tmp_path):
    path = write_ome_zarr(tmp_path / "f.zarr", np.ones((1, 8, 8), np.int32), "cyx", ["GFP"])
    with pytest.raises(UnsupportedDtypeError) as err:
        probe_field(_row(path))
    _assert_names(err, path, "int32")


def test_blank_image(tmp_path):
    data = np.full((2, 16, 16), 7, np.uint16)
    data[1, 3, 3] = 9  # the ER channel varies but is not requested
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, data[[0, 0, 1]], photometric="minisblack")
    row = _row(path, channels="GFP|DNA|ER")
    with pytest.raises(BlankImageError) as err:
        read_field(row, ["GFP", "DNA"])
    _assert_names(err, path, "blank", "constant value 7")
    assert read_field(row, ["GFP", "ER"]).shape == (2, 16, 16)
    assert read_field(row, ["GFP"], check_blank=False).shape == (1, 16, 16)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "f.bmp"
    path.write_bytes(b"BM")
    with pytest.raises(ImageReadError) as err:
        probe_field(_row(path, channels="GFP"))
    assert "unsupported file type" in str(err.value) and ".bmp" in str(err.value)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_corrupt_chunk(tmp_path, zarr_format):
    path = write_ome_zarr(tmp_path / "f.zarr", _img(2, 16, 16), "cyx", ["GFP", "DNA"],
                          zarr_format=zarr_format)
    chunks = sorted(p for p in (path / "0").rglob("*")
                    if p.is_file() and p.name not in (".zarray", ".zattrs", "zarr.json"))
    assert len(chunks) == 2  # one chunk per channel
    chunks[1].write_bytes(b"\x00garbage" * 3)
    row = _row(path)
    np.testing.assert_array_equal(read_field(row, ["GFP"]).shape, (1, 16, 16))  # untouched
    with pytest.raises(ImageReadError) as err:
        read_field(row, ["DNA"])
    _assert_names(err, path, "cannot decode pixels", "a readable ome-zarr file")


def test_ome_zarr_without_multiscales(tmp_path):
    group = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(ImageReadError) as err:
        probe_field(_row(tmp_path / "f.zarr"))
    _assert_names(err, tmp_path / "f.zarr", "no NGFF multiscales")
