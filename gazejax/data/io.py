"""File helpers every writer shares: atomic writes (a unique temporary file in the target folder, then a rename, so
a reader, a second process or an interrupted run never sees a partial file) and the default cache folder of a data
root."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np

CACHE_HOME = "~/.cache/gazejax"


@contextlib.contextmanager
def _renamed_onto(tmp: str, path: str) -> Iterator[None]:
    """Renames `tmp` onto `path` when the block ends without an exception, removes `tmp` otherwise."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[Any]:
    """Opens a temporary file beside `path` for writing and renames it onto `path` when the block ends without an
    exception (the temporary file is removed otherwise)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    with _renamed_onto(tmp, path), os.fdopen(fd, mode) as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """`atomic_file` for writers that take a path and choose the format by its suffix (e.g. nibabel's .nii.gz):
    yields a temporary path beside `path` with the same suffix."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, dot, suffix = name.partition(".")
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{dot}{suffix}")
    with _renamed_onto(tmp, path):
        yield tmp


def write_text(path: str, text: str) -> str:
    with atomic_file(path) as f:
        f.write(text)
    return path


def write_json(path: str, obj: Any, indent: int | None = 2, **kwargs: Any) -> str:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=indent, **kwargs)
    return path


def save_npy(path: str, array: np.ndarray) -> str:
    """np.save, atomically: processes of a multi-host run sharing one cache folder may write the same file at once."""
    with atomic_file(path, "wb") as f:
        np.save(f, array)
    return path


def npy_intact(path: str, shape: tuple[int, ...] | None = None) -> bool:
    """True when `path` is a whole .npy file: a readable header whose array (of `shape`, when given) fills the rest
    of the file exactly. A cache file cut short by a crash or a full disk reads False, so it is rebuilt."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)(f)
            data_start = f.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return False
    array_shape, _, dtype = header
    if shape is not None and tuple(array_shape) != tuple(shape):
        return False
    return size - data_start == int(np.prod(array_shape)) * np.dtype(dtype).itemsize


def cache_dir(configured: str, kind: str, root: str) -> str:
    """`configured` when set, else ~/.cache/gazejax/<kind>_<sha1 of root's absolute path, 12 hex digits>."""
    if configured:
        return configured
    digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser(CACHE_HOME), f"{kind}_{digest}")
