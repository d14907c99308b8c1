"""The exported model folder: round trip, refusal to overwrite, atomic replacement, one-line errors for damage."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from gazejax.engine import model_dir

VARIABLES = {"params": {"conv": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}},
             "batch_stats": {"bn": {"mean": np.ones(3, np.float32)}}}
CONFIG = {"method_family": "san_aab", "method": "ours", "data": {"crop_size": [32, 32, 32]}}


def _write(path, overwrite=False, meta=None):
    return model_dir.write(str(path), VARIABLES, json.dumps(CONFIG), meta or {"stage": "train"}, "# card\n",
                           overwrite=overwrite)


def test_round_trip_keeps_values_dtypes_and_config(tmp_path):
    out = _write(tmp_path / "m")
    config, meta, variables = model_dir.read(out)
    assert meta == {"stage": "train", "format": model_dir.FORMAT}
    assert config.data.crop_size == [32, 32, 32] and config.method == "ours"
    np.testing.assert_array_equal(variables["params"]["conv"]["kernel"], VARIABLES["params"]["conv"]["kernel"])
    assert variables["batch_stats"]["bn"]["mean"].dtype == np.float32
    assert sorted(os.listdir(out)) == ["MODEL_CARD.md", "config.json", "model.json", "weights"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folder left


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    out = _write(tmp_path / "m", meta={"stage": "first"})
    with pytest.raises(FileExistsError, match="already exists.*--overwrite"):
        _write(tmp_path / "m", meta={"stage": "second"})
    assert model_dir.read_meta(out)["stage"] == "first"
    _write(tmp_path / "m", overwrite=True, meta={"stage": "second"})
    assert model_dir.read_meta(out)["stage"] == "second"
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_failed_write_leaves_the_old_export_intact(tmp_path, monkeypatch):
    out = _write(tmp_path / "m", meta={"stage": "first"})

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    from gazejax.data import io  # the config / card writes fail as on a full disk

    monkeypatch.setattr(io, "write_text", fail)
    with pytest.raises(OSError, match="No space"):
        _write(tmp_path / "m", overwrite=True, meta={"stage": "second"})
    assert model_dir.read_meta(out)["stage"] == "first"
    assert sorted(os.listdir(tmp_path)) == ["m"]


@pytest.mark.parametrize("damage, message", [
    ("no_folder", "no such model folder"),
    ("no_weights", "missing weights"),
    ("cut_json", "model.json: unreadable"),
    ("old_format", "format 'gazejax-model/0'"),
    ("cut_array", "unreadable weights"),
])
def test_damaged_folders_fail_in_one_line_naming_the_file(tmp_path, damage, message):
    out = _write(tmp_path / "m")
    if damage == "no_folder":
        out = str(tmp_path / "absent")
    elif damage == "no_weights":
        shutil.rmtree(os.path.join(out, "weights"))
    elif damage == "cut_json":
        with open(os.path.join(out, "model.json"), "w") as f:
            f.write('{"format": "gazejax-mo')
    elif damage == "old_format":
        with open(os.path.join(out, "model.json"), "w") as f:
            json.dump({"format": "gazejax-model/0"}, f)
    else:
        for dirpath, _, names in os.walk(os.path.join(out, "weights")):
            for name in names:
                if os.path.basename(dirpath) == "d":  # the array data files
                    with open(os.path.join(dirpath, name), "r+b") as f:
                        f.truncate(8)
    with pytest.raises(model_dir.ModelDirError, match=message) as err:
        model_dir.read(out)
    assert "\n" not in str(err.value) and (str(tmp_path) in str(err.value))
