"""Decoded-volume / resized-image caches cut short (a crash or a full disk mid-write) are detected and rebuilt from
the sources, giving the same arrays as an intact cache."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from gazejax.data import io
from gazejax.data.brats import reader as brats
from gazejax.data.brats import records
from gazejax.data.cxr import records as cxr_records
from gazejax.data.synthetic import brats as synth
from gazejax.data.synthetic.cxr import generate_egd_cxr


def _truncate(path: str, keep: int) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:keep])


def test_npy_intact(tmp_path):
    path = str(tmp_path / "a.npy")
    io.save_npy(path, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    assert io.npy_intact(path) and io.npy_intact(path, (2, 3, 4)) and not io.npy_intact(path, (2, 3, 5))
    _truncate(path, os.path.getsize(path) - 1)
    assert not io.npy_intact(path)
    _truncate(path, 20)  # inside the header
    assert not io.npy_intact(path) and not io.npy_intact(str(tmp_path / "missing.npy"))


@pytest.mark.parametrize("victim", ["_image.npy", "_seg.npy", ".json"])
def test_truncated_brats_cache_is_decoded_again(tmp_path, caplog, victim):
    root = synth.generate(str(tmp_path / "set"), cases=1, seed=1, shape=(20, 24, 16), gaze_share=1.0)
    case = brats.list_cases(root)[0]
    cache = str(tmp_path / "cache")
    first = records.prepare_case(case, cache, None, "expert", 2.0, {})
    image, seg = np.array(first.image()), np.array(first.seg())
    path = os.path.join(cache, "cases", os.path.basename(case) + victim)
    _truncate(path, os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        again = records.prepare_case(case, cache, None, "expert", 2.0, {})
    np.testing.assert_array_equal(np.array(again.image()), image)
    np.testing.assert_array_equal(np.array(again.seg()), seg)
    if victim != ".json":
        assert any("truncated" in r.getMessage() for r in caplog.records)


def test_truncated_cxr_cache_is_read_again(tmp_path):
    root, mimic = generate_egd_cxr(str(tmp_path / "egd"), images=3, seed=1, size=(80, 64))
    cache = str(tmp_path / "cache")
    first = cxr_records.prepare_records("egd_cxr", root, mimic, cache, (32, 32))
    want = [np.array(c.image()) for c in first]
    _truncate(first[1].image_file, 100)
    again = cxr_records.prepare_records("egd_cxr", root, mimic, cache, (32, 32))
    for case, image in zip(again, want):
        np.testing.assert_array_equal(np.array(case.image()), image)
