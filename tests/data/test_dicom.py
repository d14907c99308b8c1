"""Tests of gazejax.data.dicom (real radiograph RG1_UNCI from pydicom-data, hand-built DICOMs whose display values
follow from the DICOM LINEAR window / rescale / VOI LUT formulas) and gazejax.data.geometry (resize transforms
against brute-force resampling and rendered dots)."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from gazejax.data import dicom
from gazejax.data.errors import DataError
from gazejax.data.geometry import ResizeTransform, halve_dicom_resolution

pydicom_data = pytest.importorskip("pydicom.data")


def _write(path, stored, photometric="MONOCHROME2", bits=12, syntax=ExplicitVRLittleEndian, encapsulated=None,
           **attrs):
    """A DICOM of `stored` values; `encapsulated` replaces the pixel bytes with compressed-syntax fragments."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, bits, bits - 1
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, photometric
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes() if encapsulated is None else encapsulate(encapsulated)
    if encapsulated is not None:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


def test_rg1_unci_upright_lungs_dark():
    path = pydicom_data.get_testdata_file("RG1_UNCI.dcm")
    img, meta = dicom.read_with_meta(path)
    assert img.dtype == np.float32 and img.shape == (1955, 1841) and meta["photometric"] == "MONOCHROME1"
    assert (meta["rows"], meta["cols"]) == img.shape and meta["pixel_spacing"] is None  # file has 0\0 spacing
    assert 0.0 <= img.min() and img.max() <= 1.0
    # regions read off /tmp/rg1.png (rows, cols): lung fields, spine/mediastinum column, abdomen below diaphragm
    lungs = np.mean([img[500:1000, 300:650].mean(), img[500:1000, 1150:1500].mean()])
    spine, abdomen = img[400:1200, 850:1000].mean(), img[1650:1850, 300:1500].mean()
    assert lungs < spine - 0.2  # lungs dark, bone bright: MONOCHROME1 was inverted
    assert lungs < abdomen - 0.2  # dense abdomen at the bottom: upright, not flipped
    assert img[:150, :200].mean() < abdomen - 0.4  # air above the shoulders in the top corners
    # independent truth: MONOCHROME1 display = 1 - LINEAR window (15000 / 30000) onto [0, 2**15 - 1]
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = 1 - np.clip((stored - 14999.5) / 29999 + 0.5, 0, 1)
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_window_and_monochrome1(tmp_path):
    c, w = 1500.0, 1000.0
    m2 = dicom.read(_write(tmp_path / "m2.dcm", RAMP, WindowCenter=c, WindowWidth=w))
    m1 = dicom.read(_write(tmp_path / "m1.dcm", RAMP, "MONOCHROME1", WindowCenter=c, WindowWidth=w))
    expected = np.clip((RAMP - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(m2, expected, atol=1e-6)
    np.testing.assert_allclose(m1, 1 - expected, atol=1e-6)
    assert m1[0, 0] == 1.0 and m2[0, 0] == 0.0  # MONOCHROME1: lowest stored value displays white


def test_rescale_then_window(tmp_path):
    # HU-like rescale: value = 2 * stored - 1000; window in rescaled units
    path = _write(tmp_path / "r.dcm", RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=2000,
                  WindowWidth=4001)
    value = 2.0 * RAMP - 1000
    np.testing.assert_allclose(dicom.read(path), np.clip((value - 1999.5) / 4000 + 0.5, 0, 1), atol=1e-6)


def test_no_voi_scaling(tmp_path):
    stored = (RAMP // 16 + 100).astype(np.uint16)  # 100..355 in 12-bit storage
    path = _write(tmp_path / "n.dcm", stored)
    np.testing.assert_allclose(dicom.read(path), (stored - 100.0) / 255.0, atol=1e-6)
    np.testing.assert_allclose(dicom.read(path, no_voi="bits"), stored / 4095.0, atol=1e-6)


def test_voi_lut_sequence(tmp_path):
    stored = np.arange(256, dtype=np.uint16).reshape(16, 16)
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    table = (np.arange(256) ** 2 // 64).astype(np.uint16)  # 0..1016: a 16-bit descriptor with 10-bit entries
    lut.add_new(0x00283006, "US", table.tolist())  # LUT Data
    path = _write(tmp_path / "lut.dcm", stored, bits=8, VOILUTSequence=[lut])
    np.testing.assert_allclose(dicom.read(path), table[stored] / table.max(), atol=1e-6)


def test_compressed_without_plugin_names_plugin(tmp_path):
    path = _write(tmp_path / "j2k.dcm", RAMP[:8, :8], syntax=JPEG2000Lossless,
                  encapsulated=[b"\x00\x01not a jpeg 2000 codestream"])
    with pytest.raises(DataError) as err:
        dicom.read(path)
    message = str(err.value)
    assert "j2k.dcm" in message and "pylibjpeg-openjpeg" in message and "JPEG 2000" in message
    assert "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such DICOM file"):
        dicom.read(tmp_path / "missing.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(DataError, match="junk.dcm"):
        dicom.read(tmp_path / "junk.dcm")
    with pytest.raises(DataError, match="photometric"):
        dicom.read(_write(tmp_path / "rgbish.dcm", RAMP, "PALETTE COLOR"))
    header = dicom.read_header(_write(tmp_path / "h.dcm", RAMP, ImagerPixelSpacing=[0.2, 0.3]))
    assert header["rows"] == 16 and header["pixel_spacing"] == (0.2, 0.3)


# ----------------------------------------------------------------------------------------------- geometry


def _brute_area(image, out_shape):
    """Cell means by explicit overlap weights (independent of the cumulative-sum implementation)."""
    mats = []
    for n, m in zip(image.shape, out_shape):
        s, mat = n / m, np.zeros((m, n))
        for j in range(m):
            for i in range(n):
                mat[j, i] = max(0.0, min(i + 1, (j + 1) * s) - max(i, j * s)) / s
        mats.append(mat)
    return mats[0] @ image @ mats[1].T


@pytest.mark.parametrize("in_shape,out_shape,pad", [((30, 22), (7, 9), "symmetric"), ((17, 40), (5, 6), "end"),
                                                    ((24, 24), (8, 8), "symmetric")])
def test_area_resample_matches_brute_force(in_shape, out_shape, pad):
    image = np.random.default_rng(0).random(in_shape)
    t = ResizeTransform.fit(in_shape, out_shape, pad=pad)
    hc, wc = t.canvas_shape
    assert abs(hc / wc - out_shape[0] / out_shape[1]) <= 1 / min(hc, wc) and hc >= in_shape[0] and wc >= in_shape[1]
    canvas = np.zeros(t.canvas_shape)
    canvas[t.pad_before[0]:t.pad_before[0] + in_shape[0], t.pad_before[1]:t.pad_before[1] + in_shape[1]] = image
    np.testing.assert_allclose(t.apply(image), _brute_area(canvas, out_shape), atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: ResizeTransform.fit((97, 61), (20, 16), pad="symmetric"),
    lambda: ResizeTransform.fit((61, 97), (16, 20), pad="end"),
    lambda: ResizeTransform.pad_to((90, 70), (96, 80), (48, 40)),
    lambda: halve_dicom_resolution((150, 130), factor=2, multiple=8, method="area"),
])
def test_dot_survives_resize_within_half_pixel(make):
    t = make()
    rng = np.random.default_rng(1)
    h, w = t.in_shape
    for _ in range(25):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        image = np.zeros((h, w), np.float32)
        image[y, x] = 1.0
        out = t.apply(image)
        row, col = np.unravel_index(np.argmax(out), out.shape)
        mx, my = t.map_points(np.array([[x, y]]))[0]
        assert abs(mx - col) <= 0.5 + 1e-6 and abs(my - row) <= 0.5 + 1e-6
    pts = rng.uniform(0, 60, (10, 2))
    np.testing.assert_allclose(t.unmap_points(t.map_points(pts)), pts, atol=1e-4)


def test_blob_centroid_maps_exactly():
    t = ResizeTransform.fit((123, 101), (31, 29), pad="symmetric")
    yy, xx = np.mgrid[0:123, 0:101]
    x0, y0 = 47.3, 70.8
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 6.0**2))
    out = t.apply(blob)
    oy, ox = np.mgrid[0:out.shape[0], 0:out.shape[1]]
    centroid = np.array([(out * ox).sum(), (out * oy).sum()]) / out.sum()
    np.testing.assert_allclose(centroid, t.map_points(np.array([[x0, y0]]))[0], atol=0.02)


def test_halve_presets_and_stride():
    gg = halve_dicom_resolution((3056, 2544))  # GG-CAM: pad to 3072x2560, then halve
    assert gg.canvas_shape == (3072, 2560) and gg.out_shape == (1536, 1280) and gg.pad_before == (0, 0)
    assert halve_dicom_resolution((3056, 2544), factor=5).out_shape == (640, 512)  # MT-UNet d=5
    t = halve_dicom_resolution((50, 45), factor=3, multiple=4, pad="symmetric")
    assert t.canvas_shape == (60, 48) and t.pad_before == (5, 1)
    image = np.random.default_rng(2).random((50, 45)).astype(np.float32)
    out = t.apply(image)
    # stride keeps canvas pixel (3j, 3i): original pixel (3j - 5, 3i - 1); maps exactly onto (i, j)
    for x, y in [(2, 1), (5, 7), (44, 49)]:
        mx, my = t.map_points(np.array([[x, y]]))[0]
        assert out[int(round(my)), int(round(mx))] == image[y, x] and mx == pytest.approx(round(mx))
    scale, offset = t.as_affine()
    np.testing.assert_allclose(scale, [1 / 3, 1 / 3])
    np.testing.assert_allclose(offset, [5 / 3, 1 / 3])


def test_affine_order_and_mask():
    t = ResizeTransform.pad_to((40, 30), (40, 40), (20, 20))  # symmetric: 5 columns left, cell 2
    (sy, sx), (oy, ox) = t.as_affine()
    assert (sy, sx) == (0.5, 0.5) and oy == pytest.approx(0.5 / 2 - 0.5) and ox == pytest.approx(5.5 / 2 - 0.5)
    assert np.allclose(t.as_affine("xy")[1], [ox, oy])
    mask = np.zeros((40, 30), bool)
    mask[10:20, 5:15] = True  # canvas rows 10..19, cols 10..19 -> output rows 5..9, cols 5..9
    expected = np.zeros((20, 20), bool)
    expected[5:10, 5:10] = True
    np.testing.assert_array_equal(t.map_mask(mask), expected)
    with pytest.raises(ValueError, match="does not fit"):
        ResizeTransform((40, 30), (30, 30), (10, 10))
