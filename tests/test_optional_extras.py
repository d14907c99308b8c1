"""The package without its optional extras: every module outside gazejax.data.tfds imports when
tensorflow-datasets is absent (`pip install -e .`, the README's main-job install, has no tfds extra)."""
from __future__ import annotations

import subprocess
import sys

CHECK = r"""
import importlib, pkgutil, sys
sys.modules["tensorflow_datasets"] = None  # an import of it now raises ImportError, as on a machine without it
import gazejax
failed = []
for info in pkgutil.walk_packages(gazejax.__path__, "gazejax."):
    name = info.name
    if name.startswith("gazejax.data.tfds") or name.endswith("__main__"):
        continue
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed.append(f"{name}: {e}")
    except Exception:  # noqa: BLE001 - e.g. two CLI modules defining one absl flag: not this test's concern
        pass
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_outside_the_tfds_builders_imports_without_tensorflow_datasets():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
