"""Shared machinery of gazejax's TFDS builders: the tensorflow_datasets import, building array_record files from a
manual folder without TensorFlow (once per data_dir, by process 0 of a multi-host run), and random access to built
examples with a small cache of decoded ones.

Each builder stores its examples with `DatasetInfo(disable_shuffling=True)` and integer keys, so example i of a
split is record i of the source reader's order, and the records' light fields (ids, boxes, fixations, labels) once
more as JSON in `DatasetInfo.metadata["records"][split]`: loading a data set for training then decodes no image
until it is used.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import threading
from typing import Any, Iterator

import numpy as np

log = logging.getLogger("gazejax")

FILE_FORMAT = "array_record"
INSTALL_HINT = "pip install 'gazejax[tfds]' (tensorflow-datasets and array-record; TensorFlow is not needed)"


def import_tfds():
    """The tensorflow_datasets module, or an ImportError that says what to install."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(f"gazejax.data.tfds needs tensorflow-datasets: {INSTALL_HINT}") from err
    return tfds


def to_json(value: Any) -> Any:
    """numpy scalars / arrays / tuples inside `value` -> JSON-serialisable lists and numbers."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@contextlib.contextmanager
def _shuffle_buffer_in_memory() -> Iterator[None]:
    """TFDS's writer buffers a split in memory up to 1 GB and spills bigger ones to disk through tf.io.gfile, which
    imports TensorFlow. Without TF installed, keep up to half of the machine's RAM in memory instead."""
    from tensorflow_datasets.core import shuffle

    old = shuffle.MAX_MEM_BUFFER_SIZE
    if importlib.util.find_spec("tensorflow") is None:
        shuffle.MAX_MEM_BUFFER_SIZE = max(old, _ram_bytes() // 2)
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = old


def _barrier(name: str) -> None:
    """Waits for every process of a jax.distributed run (no-op otherwise; never starts a JAX backend by itself)."""
    import jax

    if jax.distributed.is_initialized() and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def ensure_built(builder: Any, manual_dir: str | None = None) -> Any:
    """Builds `builder` (array_record files under its data_dir) unless it is already built; returns it.

    `manual_dir` is the folder holding the data set's own files (see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS);
    a builder given its source folders directly ignores it. In a multi-process run process 0 builds, the others wait.
    """
    import jax

    tfds = import_tfds()
    if not builder.is_prepared():
        primary = not jax.distributed.is_initialized() or jax.process_index() == 0
        if primary:
            log.info("building TFDS %s/%s in %s", builder.name, builder.builder_config.name
                     if builder.builder_config else "", builder.data_dir)
            config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
            with _shuffle_buffer_in_memory():
                builder.download_and_prepare(download_config=config)
        _barrier(f"gazejax_tfds_{builder.name}")
        if not primary:  # this process's builder predates the files: read what process 0 wrote
            builder.info.read_from_directory(builder.data_dir)
    return builder


def light_records(builder: Any, split: str) -> list[dict]:
    """The JSON rows a gazejax builder stored for `split`, in example order."""
    records = dict(builder.info.metadata or {}).get("records", {})
    if split not in records:
        raise ValueError(f"TFDS {builder.name} in {builder.data_dir} has no split {split!r} "
                         f"(splits: {', '.join(records) or 'none'})")
    rows = records[split]
    return json.loads(rows) if isinstance(rows, str) else list(rows)


@dataclasses.dataclass(kw_only=True)
class StoredArrays:
    """Mixin for a pipeline record whose arrays live in a built data set: example `index` of `reader`."""

    reader: "ExampleReader | None" = None
    index: int = -1

    def stored(self, key: str) -> np.ndarray:
        """Feature `key` of this record's example (decoded once for consecutive reads, read-only)."""
        return self.reader[self.index][key]


class ExampleReader:
    """Random access to one split of a built gazejax TFDS data set, with a small LRU cache of decoded examples (a
    training example reads a record's image and then its labels: one decode). Picklable (Grain worker processes
    reopen the array_record files), thread-safe."""

    def __init__(self, builder_cls: type, data_dir: str, split: str, config: Any = None, cache_size: int = 4):
        self.builder_cls, self.data_dir, self.split, self.config = builder_cls, data_dir, split, config
        self.cache_size = cache_size
        self._source = None
        self._cache: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _open(self):
        if self._source is None:
            kwargs = {"config": self.config} if self.config is not None else {}
            builder = self.builder_cls(data_dir=self.data_dir, file_format=FILE_FORMAT, **kwargs)
            self._source = builder.as_data_source(split=self.split)
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, index: int) -> dict:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            source = self._open()
        example = source[int(index)]
        with self._lock:
            self._cache[index] = example
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return example

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_source=None, _cache=collections.OrderedDict(), _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
