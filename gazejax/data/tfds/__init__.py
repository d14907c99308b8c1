"""TFDS builders for BraTS 2020, EGD-CXR and REFLACX (array_record files, random access, no TensorFlow needed).

  python -m gazejax.data.tfds build brats2020 --manual_dir=DIR --data_dir=DIR
  python -m gazejax.data.tfds build egd_cxr --manual_dir=DIR --data_dir=DIR --image_size=512,416

`data_source(name, data_dir)` opens a built data set with `tfds.data_source` ({split: random-access source} that
Grain's MapDataset.source takes). Training configs read them with `config.data.source="tfds"` through
`gazejax.data.brats.pipeline.tfds_records` and `gazejax.data.tfds.cxr.prepare_records`. Importing this package
does not import tensorflow_datasets; the builder modules do.
"""
from __future__ import annotations

import importlib
from typing import Any

NAMES = ("brats2020", "egd_cxr", "reflacx")
_MODULES = {"brats2020": "brats2020", "egd_cxr": "cxr", "reflacx": "cxr"}


def builder_class(name: str) -> type:
    """The builder class of `name` (one of NAMES), registering it with TFDS."""
    base = name.split("/", 1)[0]
    if base not in NAMES:
        raise ValueError(f"unknown gazejax TFDS data set {base!r}; known: {', '.join(NAMES)}")
    module = importlib.import_module(f"gazejax.data.tfds.{_MODULES[base]}")
    return module.BUILDERS[base]


def data_source(name: str, data_dir: str, split: str | None = None) -> Any:
    """`tfds.data_source` of a built gazejax data set: name "brats2020", or "egd_cxr/<config>" / "reflacx/<config>"
    (config names like "512x416_symmetric", see `gazejax.data.tfds.cxr.make_config`). Without `split`, a dict of
    every split's source. Each source supports len() and [i] -> dict of numpy arrays / bytes."""
    from gazejax.data.tfds import common

    tfds = common.import_tfds()
    builder_class(name)  # registers the builder so TFDS knows the name
    return tfds.data_source(name, data_dir=data_dir, split=split, try_gcs=False)
