"""Fault injection for `gazejax.models.convert.load_state_dict`: bad weight files give one line naming the file
(and the tensor), never a traceback from numpy/zipfile/torch, never executed code, and never touch the file."""
from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest

from gazejax.models import convert


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _check_one_line_error(path, match: str) -> None:
    before = _digest(path)
    with pytest.raises(ValueError) as info:
        convert.load_state_dict(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert match in message, message
    assert _digest(path) == before  # the input is never altered


def test_nan_and_inf_tensors_are_refused_by_name(tmp_path):
    good = {"conv1.weight": np.ones((2, 2), np.float32), "fc.bias": np.zeros(3, np.float32)}
    for bad_value, name in ((np.nan, "fc.bias"), (np.inf, "conv1.weight")):
        weights = {k: v.copy() for k, v in good.items()}
        weights[name].flat[0] = bad_value
        path = tmp_path / f"bad_{name}.npz"
        np.savez(path, **weights)
        _check_one_line_error(path, f"tensor {name!r} has 1 NaN/Inf values")
    np.savez(tmp_path / "good.npz", **good)
    assert set(convert.load_state_dict(str(tmp_path / "good.npz"))) == set(good)


def test_truncated_npz_is_one_line(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, a=np.ones((64, 64), np.float32), b=np.ones(10, np.float32))
    data = open(path, "rb").read()
    for cut in (len(data) // 2, 10):
        part = tmp_path / f"cut{cut}.npz"
        part.write_bytes(data[:cut])
        _check_one_line_error(part, "unreadable .npz checkpoint")


def test_object_arrays_in_npz_are_not_unpickled(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    _check_one_line_error(path, "unreadable .npz checkpoint")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="checkpoint file not found"):
        convert.load_state_dict(str(tmp_path / "none.npz"))
    (tmp_path / "w.ckpt").write_bytes(b"x")
    _check_one_line_error(tmp_path / "w.ckpt", "unsupported checkpoint type '.ckpt'")


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_pth_with_code_is_refused_without_running_it(tmp_path):
    pytest.importorskip("torch")
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": _RunsCode(str(marker))}, f)
    _check_one_line_error(path, "refused")
    assert not os.path.exists(marker)


def test_pth_without_torch_says_so(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    (tmp_path / "w.pth").write_bytes(b"not read")
    _check_one_line_error(tmp_path / "w.pth", "needs PyTorch")
