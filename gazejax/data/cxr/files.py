"""New chest X-ray files for `gazejax.predict`: find the images under a path and turn each into the model input
exactly as training's image cache does (`gazejax.data.cxr.records`), so a training DICOM gives the cached image.

DICOMs are read by `gazejax.data.dicom.read` (Modality LUT, VOI, MONOCHROME1 inversion; the cache's defaults);
PNG and JPEG files by Pillow: 8-bit grey / 255, 16-bit grey / 65535, colour and palette images as their luminance.
The image is then padded to the target aspect and area-resampled (`geometry.ResizeTransform.fit`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from gazejax.data import dicom
from gazejax.data.errors import DataError
from gazejax.data.geometry import ResizeTransform

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = DICOM_SUFFIXES + (".png", ".jpg", ".jpeg")  # matched case-insensitively
PAD = "symmetric"  # `records.prepare_records`'s default, which `pipeline.load_cases` keeps
RESIZE = "area"  # `ResizeTransform.fit`'s default resampling
DICOM_OPTIONS = {"voi_index": 0, "no_voi": "minmax"}  # `dicom.read`'s defaults, which the cache uses
_WHITE = {"L": 255.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I": 65535.0}  # grey mode -> white


def is_image(path: str) -> bool:
    """Whether `path`'s suffix is one of `IMAGE_SUFFIXES` (case-insensitive; a file without suffix is not)."""
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def list_images(path: str) -> list[str]:
    """The image files at `path`: the file itself, or every image under the folder (recursively, hidden files and
    folders skipped), sorted. A file of another kind, a missing path or a folder without images is a DataError."""
    if os.path.isfile(path):
        if not is_image(path):
            raise DataError(f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or folder")
    found = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(folder, n) for n in names if not n.startswith(".") and is_image(n)]
    if not found:
        raise DataError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return sorted(found)


def preprocessing_spec(config) -> dict[str, Any]:
    """How training turns a source radiograph into the model input, as JSON-able data (`read_image` applies it):
    read (`dicom` options, or Pillow), scale to `range`, pad (`pad`) to the aspect of `image_size` [H, W] and
    area-resample (`resize`) to it; `channels` 1 ([H, W, 1] batches)."""
    return {"kind": "image", "image_size": [int(s) for s in config.data.image_size], "pad": PAD, "resize": RESIZE,
            "dicom": dict(DICOM_OPTIONS), "range": [0, 1], "channels": 1, "dtype": "float32"}


def read_source(path: str, dicom_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """The file's full-resolution display image float32 [h, w] in [0, 1] (before any resize)."""
    if os.path.splitext(path)[1].lower() in DICOM_SUFFIXES:
        options = dict(DICOM_OPTIONS, **dict(dicom_options or {}))
        try:
            return dicom.read(path, voi_index=int(options["voi_index"]), no_voi=str(options["no_voi"]))
        except DataError:
            raise
        except Exception as err:  # pydicom's parser raises many types (struct.error, KeyError, ...) on bad files
            raise DataError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    return _read_bitmap(path)


def _read_bitmap(path: str) -> np.ndarray:
    """PNG / JPEG -> float32 [h, w] in [0, 1]: grey as stored over its bit depth, anything else as luminance."""
    from PIL import Image, ImageOps

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.load()  # Pillow decodes lazily: a truncated file fails here
            img = ImageOps.exif_transpose(img)  # a camera JPEG's stored orientation, as viewers show it
            if img.mode not in _WHITE:
                img = img.convert("L")  # RGB(A), palette, bilevel, LA, CMYK: ITU-R 601-2 luminance
            white = _WHITE[img.mode]
            values = np.asarray(img, dtype=np.float64)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable image file ({type(err).__name__}: {err})") from err
    if values.ndim != 2:
        raise DataError(f"{path}: expected a single grey image, got pixel array of shape {values.shape}")
    return np.clip(values / white, 0.0, 1.0).astype(np.float32)


def read_image(path: str, spec: Mapping[str, Any]) -> np.ndarray:
    """The model input of one file, float32 [H, W] in [0, 1] with (H, W) = spec["image_size"]: `read_source`, then
    `ResizeTransform.fit(..., pad=spec["pad"]).apply` as the training cache does (bit-identical for its DICOMs)."""
    return read_image_and_source(path, spec)[0]


def read_image_and_source(path: str, spec: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, ResizeTransform]:
    """(model input as `read_image`, the full-resolution `read_source` image, the `ResizeTransform` between them)."""
    image = read_source(path, spec.get("dicom"))
    size = tuple(int(s) for s in spec["image_size"])
    tf = ResizeTransform.fit(image.shape, size, pad=str(spec.get("pad", PAD)), method=str(spec.get("resize", RESIZE)))
    return tf.apply(image), image, tf


def map_to_source(heat: np.ndarray, tf: ResizeTransform) -> np.ndarray:
    """A map over the model input (any grid [h, w] covering it) -> float32 [*tf.in_shape] over the original image:
    bilinearly resized to the input size, then sampled at every original pixel's position in the input
    (`tf.as_affine`, so the padding is cut off and the aspect ratio restored)."""
    from scipy import ndimage

    from gazejax.analysis.maps import resize_maps

    up = resize_maps(np.asarray(heat, np.float32)[None], tuple(tf.out_shape))[0]
    scale, offset = tf.as_affine("yx")
    rows = np.arange(tf.in_shape[0]) * scale[0] + offset[0]
    cols = np.arange(tf.in_shape[1]) * scale[1] + offset[1]
    coords = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    return ndimage.map_coordinates(up, coords, order=1, mode="nearest").astype(np.float32)
