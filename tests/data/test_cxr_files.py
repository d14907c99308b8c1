"""Tests of gazejax.data.cxr.files: a training DICOM reads bit-identical to the cached training image, PNG / JPEG
files read at their bit depth (values and resize checked against hand-made block means), a real radiograph from
pydicom-data reads, broken files give one-line DataErrors naming the file, and image listing."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import cxr_san as cxr_config
from gazejax.data.cxr import files
from gazejax.data.cxr import pipeline as cxr_pipeline
from gazejax.data.errors import DataError


def _spec(size) -> dict:
    return {"kind": "image", "image_size": list(size), "pad": "symmetric", "dicom": {"voi_index": 0,
                                                                                     "no_voi": "minmax"}}


def _blocks(image: np.ndarray, d: int) -> np.ndarray:
    """Mean of d x d blocks: the area resample of an integer factor, computed independently."""
    h, w = image.shape
    return image.reshape(h // d, d, w // d, d).mean(axis=(1, 3))


def _synthetic_config(tmp_path, image_size):
    c = cxr_config.get_config("method=backbone")
    c.data.image_size = image_size
    c.data.cache_dir = str(tmp_path / "cache")
    c.data.synthetic.update({"dir": str(tmp_path / "data"), "images": 4, "seed": 2, "size": (80, 64)})
    return c


@pytest.mark.parametrize("size", [(48, 40), (32, 32)])
def test_training_dicom_reads_bit_identical_to_the_cached_training_image(tmp_path, size):
    config = _synthetic_config(tmp_path, size)
    cases, _, raw = cxr_pipeline.load_cases(config, with_raw=True)  # what training reads (cache written here)
    spec = files.preprocessing_spec(config)
    assert spec["image_size"] == list(size) and json.loads(json.dumps(spec)) == spec
    for case in cases:
        path = raw[case.dicom_id].image_path
        image = files.read_image(path, spec)
        assert image.dtype == np.float32 and image.shape == size
        np.testing.assert_array_equal(image, case.image())  # bit for bit
        assert 0.0 <= image.min() and image.max() <= 1.0


def test_preprocessing_spec_states_the_training_pipeline():
    c = cxr_config.get_config("")
    spec = files.preprocessing_spec(c)
    assert spec["kind"] == "image" and spec["image_size"] == [int(s) for s in c.data.image_size]
    assert spec["pad"] == "symmetric" and spec["dicom"] == {"voi_index": 0, "no_voi": "minmax"}
    assert spec["range"] == [0, 1] and spec["channels"] == 1


def _gradient(h, w, top) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return np.round((rows * 3 + cols) / (3 * (h - 1) + w - 1) * top)


def test_png_8bit_and_16bit_scale_by_bit_depth_and_resize_like_training(tmp_path):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (64, 48)).astype(np.uint8)
    a16 = rng.integers(0, 65536, (64, 48)).astype(np.uint16)
    a16[0, 0] = 65535
    Image.fromarray(a8).save(tmp_path / "g8.png")
    Image.fromarray(a16).save(tmp_path / "g16.PNG")  # upper-case suffix
    got8 = files.read_image(str(tmp_path / "g8.png"), _spec((32, 24)))
    got16 = files.read_image(str(tmp_path / "g16.PNG"), _spec((32, 24)))
    np.testing.assert_allclose(got8, _blocks(a8 / 255.0, 2), atol=1e-6)
    np.testing.assert_allclose(got16, _blocks(a16 / 65535.0, 2), atol=1e-6)
    assert got8.dtype == got16.dtype == np.float32
    full = files.read_image(str(tmp_path / "g16.PNG"), _spec((64, 48)))
    assert full[0, 0] == 1.0  # 16-bit white is 1, not 65535 / 255


def test_png_is_padded_symmetrically_to_the_target_aspect(tmp_path):
    a = np.full((64, 32), 200, np.uint8)
    Image.fromarray(a).save(tmp_path / "tall.png")
    got = files.read_image(str(tmp_path / "tall.png"), _spec((32, 32)))
    canvas = np.pad(a / 255.0, ((0, 0), (16, 16)))  # 16 zero columns on each side, then halve
    np.testing.assert_allclose(got, _blocks(canvas, 2), atol=1e-6)
    assert got[:, :8].max() == 0.0 and got[:, 24:].max() == 0.0


def test_colour_and_palette_images_read_as_luminance(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 7, np.uint8)])).save(tmp_path / "c_alpha.png")
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255.0  # ITU-R 601-2
    for name in ("c.png", "c_alpha.png"):
        got = files.read_image(str(tmp_path / name), _spec((32, 32)))
        np.testing.assert_allclose(got, luma, atol=1.0 / 255)
    grey = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "grey_rgb.png")  # R = G = B: exactly the grey values
    np.testing.assert_allclose(files.read_image(str(tmp_path / "grey_rgb.png"), _spec((32, 32))), grey / 255.0,
                               atol=1e-6)
    Image.fromarray(grey).convert("P").save(tmp_path / "pal.png")
    np.testing.assert_allclose(files.read_image(str(tmp_path / "pal.png"), _spec((32, 32))), grey / 255.0,
                               atol=1e-6)


def test_jpeg_reads_close_to_its_source(tmp_path):
    smooth = _gradient(64, 64, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "g.jpg", quality=100)
    Image.fromarray(np.dstack([smooth] * 3)).save(tmp_path / "c.JPEG", quality=100)
    for name in ("g.jpg", "c.JPEG"):
        got = files.read_image(str(tmp_path / name), _spec((32, 32)))
        np.testing.assert_allclose(got, _blocks(smooth / 255.0, 2), atol=3.0 / 255)  # lossy, at quality 100


def test_real_radiograph_from_pydicom_data(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    import pydicom

    from gazejax.data.geometry import ResizeTransform

    source = pydicom_data.get_testdata_file("RG1_UNCI.dcm")
    path = tmp_path / "RG1.DCM"  # upper-case suffix
    shutil.copy(source, path)
    got = files.read_image(str(path), _spec((64, 64)))
    stored = pydicom.dcmread(source).pixel_array.astype(np.float64)
    display = 1 - np.clip((stored - 14999.5) / 29999 + 0.5, 0, 1)  # MONOCHROME1 LINEAR window 15000 / 30000
    expected = ResizeTransform.fit(display.shape, (64, 64)).apply(display)
    assert got.shape == (64, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert files.list_images(str(tmp_path)) == [str(path)]


def _assert_one_line_error(path, match):
    with pytest.raises(DataError) as err:
        files.read_image(str(path), _spec((32, 32)))
    message = str(err.value)
    assert str(path) in message and "\n" not in message and match in message


def test_broken_files_are_one_line_data_errors_naming_the_file(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (64, 64)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    _assert_one_line_error(tmp_path / "cut.png", "truncated")
    (tmp_path / "text.jpg").write_bytes(b"not an image\nsecond line\n")
    _assert_one_line_error(tmp_path / "text.jpg", "not a readable image")
    (tmp_path / "png.dcm").write_bytes(data)  # a PNG named .dcm
    _assert_one_line_error(tmp_path / "png.dcm", "DICOM")
    _assert_one_line_error(tmp_path / "missing.png", "no such")


def test_truncated_dicom_is_a_data_error(tmp_path):
    config = _synthetic_config(tmp_path, (32, 32))
    root, mimic = cxr_pipeline.resolve_roots(config)
    dicoms = sorted(os.path.join(d, n) for d, _, names in os.walk(mimic) for n in names if n.endswith(".dcm"))
    data = open(dicoms[0], "rb").read()
    for cut, name in ((len(data) // 2, "half.dcm"), (200, "header.dcm")):
        (tmp_path / name).write_bytes(data[:cut])
        with pytest.raises(DataError) as err:
            files.read_image(str(tmp_path / name), _spec((32, 32)))
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


def test_list_images_walks_folders_sorted_and_names_bad_paths(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    wanted = ["a.PNG", "b/deep/x.dicom", "b/y.Dcm", "c.jpeg", "d.jpg"]
    for name in wanted + ["notes.txt", "noext", "b/deep/scan", ".hidden/h.png", "._a.png"]:
        (tmp_path / name).write_bytes(b"")
    assert files.list_images(str(tmp_path)) == sorted(str(tmp_path / n) for n in wanted)
    assert files.list_images(str(tmp_path / "c.jpeg")) == [str(tmp_path / "c.jpeg")]
    for bad, match in ((tmp_path / "noext", "not an image file"), (tmp_path / "notes.txt", "not an image file"),
                       (tmp_path / "nowhere", "no such file or folder")):
        with pytest.raises(DataError, match=match) as err:
            files.list_images(str(bad))
        assert str(bad) in str(err.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme").write_bytes(b"")
    with pytest.raises(DataError, match="no image files") as err:
        files.list_images(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(err.value)


def test_map_to_source_undoes_the_padding_and_resize(tmp_path):
    """A map over the model input, mapped back to the original file: the input itself returns (close to) the
    original image, and a hot cell lands where that part of the original went (before, overlays were drawn on
    the padded, squashed model input)."""
    yy, xx = np.mgrid[0:96, 0:48]
    smooth = 0.5 + 0.4 * np.sin(yy / 15.0) * np.cos(xx / 11.0)
    Image.fromarray(np.round(255 * smooth).astype(np.uint8)).save(tmp_path / "tall.png")
    image, source, tf = files.read_image_and_source(str(tmp_path / "tall.png"), _spec((32, 32)))
    np.testing.assert_array_equal(image, files.read_image(str(tmp_path / "tall.png"), _spec((32, 32))))
    assert source.shape == (96, 48) and tf.pad_before == (0, 24)  # 24 zero columns each side, then / 3
    back = files.map_to_source(image, tf)
    assert back.shape == (96, 48)
    assert np.corrcoef(back.ravel(), source.ravel())[0, 1] > 0.98 and np.abs(back - source)[3:-3, 3:-3].max() < 0.06
    heat = np.zeros((4, 4), np.float32)
    heat[0, 1] = 1.0  # grid cell (0, 1) = input rows 0-7, cols 8-15 = canvas cols 24-47 = original cols 0-23
    peak = np.unravel_index(np.argmax(files.map_to_source(heat, tf)), (96, 48))
    assert peak[0] < 24 and peak[1] < 24
