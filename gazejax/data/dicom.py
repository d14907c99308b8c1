"""Read a single-frame grayscale DICOM (chest radiograph) as a display-ready float32 image in [0, 1].

Pipeline (DICOM PS3.3 C.11, in the standard's order): stored values -> Modality LUT or Rescale Slope/Intercept
(`pydicom.pixels.apply_modality_lut`) -> VOI LUT or Window Center/Width (`apply_voi_lut`, first view by default) ->
scale to [0, 1] -> invert MONOCHROME1 (whose low values are bright).

Scaling to [0, 1]:
  - a window maps onto the output range pydicom gives it: [0, 2**BitsStored - 1] for unsigned data (signed:
    symmetric about 0), passed through Rescale Slope/Intercept when present, or [0, 2**n - 1] with n the Modality
    LUT's bit depth; the windowed image therefore spans [0, 1] exactly;
  - a VOI LUT Sequence maps onto the min..max of its own entries (LUT descriptors often claim 16 bits for 12-bit
    data, so the entries are the honest range);
  - without any VOI the (modality-LUT'd) values are min-max scaled per image (`no_voi="minmax"`, what the EGD-CXR
    and MT-UNet code do with `image / max`) or by the stored bit depth (`no_voi="bits"`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, apply_voi_lut

from gazejax.data.errors import DataError

# Transfer syntaxes whose pixel data needs a decoder plugin pydicom does not bundle (pydicom 3 "pixels" backends).
_JPEG_HINT = "pylibjpeg and pylibjpeg-libjpeg (`pip install pylibjpeg pylibjpeg-libjpeg`) or python-gdcm"
_J2K_HINT = "pylibjpeg and pylibjpeg-openjpeg (`pip install pylibjpeg pylibjpeg-openjpeg`) or python-gdcm"
_PLUGIN_HINTS = {
    "1.2.840.10008.1.2.4.50": _JPEG_HINT,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _JPEG_HINT,  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": _JPEG_HINT,  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": _JPEG_HINT,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _JPEG_HINT,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _JPEG_HINT,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _J2K_HINT,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _J2K_HINT,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _J2K_HINT,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _J2K_HINT,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _J2K_HINT,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (`pip install pylibjpeg pylibjpeg-rle`) or numpy",  # RLE Lossless
}


def _open(path: str | os.PathLike, pixels: bool) -> pydicom.Dataset:
    """pydicom.dcmread with one-line DataErrors for missing or non-DICOM files."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such DICOM file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: not a readable DICOM file ({err})") from err


def _pixels(ds: pydicom.Dataset, path: str | os.PathLike) -> np.ndarray:
    """Stored pixel values [H, W]; a decoding failure names the transfer syntax and the plugin to install."""
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM has no Pixel Data element")
    uid = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises RuntimeError/NotImplementedError/ValueError depending on the backend
        name = getattr(uid, "name", "unknown")
        if uid is not None and uid.is_compressed:
            hint = _PLUGIN_HINTS.get(str(uid), "a pydicom pixel-data plugin (pylibjpeg or python-gdcm)")
            raise DataError(f"{path}: cannot decode pixel data in transfer syntax '{name}' ({uid}); "
                            f"install {hint} ({type(err).__name__}: {err})") from err
        raise DataError(f"{path}: cannot read pixel data ({type(err).__name__}: {err})") from err
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: photometric interpretation '{photometric}' is not grayscale MONOCHROME1/2")
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-frame 2D image, got pixel array of shape {arr.shape}")
    return arr


def _bit_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Range of the values entering the VOI stage: stored bit depth (or Modality LUT depth), rescaled."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = -float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _to_unit(arr: np.ndarray, ds: pydicom.Dataset, voi_index: int, no_voi: str, path: Any) -> np.ndarray:
    """Modality LUT + VOI applied and scaled to [0, 1] (before any MONOCHROME1 inversion)."""
    values = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence"):
        entries, first = (int(v) for v in ds.VOILUTSequence[voi_index].LUTDescriptor[:2])
        domain = np.arange(first, first + (entries or 65536))  # pydicom parses US/OW LUT data for us
        lut = apply_voi(domain, ds, index=voi_index)
        lo, hi = float(np.min(lut)), float(np.max(lut))
        values = apply_voi(values, ds, index=voi_index)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        lo, hi = _bit_range(ds)
        try:
            values = apply_voi_lut(values, ds, index=voi_index, prefer_lut=False)
        except ValueError as err:
            raise DataError(f"{path}: invalid VOI window ({err})") from err
    elif no_voi == "bits":
        lo, hi = _bit_range(ds)
    elif no_voi == "minmax":
        lo, hi = float(np.min(values)), float(np.max(values))
    else:
        raise ValueError(f"no_voi must be 'minmax' or 'bits', got {no_voi!r}")
    values = np.asarray(values, dtype=np.float64)
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(scaled, 0.0, 1.0)


def _header_meta(ds: pydicom.Dataset) -> dict[str, Any]:
    spacing = None  # some files carry a placeholder 0\0 PixelSpacing: fall back to the detector's spacing
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = [float(s) for s in ds.get(key, None) or []]
        if len(value) == 2 and min(value) > 0:
            spacing = tuple(value)
            break
    return {
        "rows": int(ds.Rows),
        "cols": int(ds.Columns),
        "pixel_spacing": spacing,  # (row, col) mm, or None
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "view_position": str(ds.get("ViewPosition", "")),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else "",
    }


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Header facts without decoding pixels: rows, cols, pixel_spacing (row, col mm or None), photometric, ..."""
    ds = _open(path, pixels=False)
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: DICOM header lacks Rows/Columns")
    return _header_meta(ds)


def read_with_meta(path: str | os.PathLike, *, voi_index: int = 0,
                   no_voi: str = "minmax") -> tuple[np.ndarray, dict[str, Any]]:
    """Display-ready image float32 [H, W] in [0, 1] (lungs dark, bone bright) and its header meta dict.

    meta: rows, cols, pixel_spacing ((row, col) mm or None), photometric, view_position, transfer_syntax.
    `voi_index` picks one of several windows/VOI LUTs; `no_voi` scales images without VOI ("minmax" or "bits").
    """
    ds = _open(path, pixels=True)
    arr = _pixels(ds, path)
    image = _to_unit(arr, ds, voi_index, no_voi, path)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        image = 1.0 - image  # MONOCHROME1: minimum stored value is displayed white
    return image.astype(np.float32), _header_meta(ds)


def read(path: str | os.PathLike, *, voi_index: int = 0, no_voi: str = "minmax") -> np.ndarray:
    """Display-ready DICOM image float32 [H, W] in [0, 1]; see `read_with_meta`."""
    return read_with_meta(path, voi_index=voi_index, no_voi=no_voi)[0]
